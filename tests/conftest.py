import pytest


@pytest.fixture
def interrupt_training(monkeypatch):
    """``interrupt_training(n)``: Ctrl-C arrives during the n-th training step (from 1) of
    ``nvwavenet.training.train``, as a user's would."""
    from nvwavenet import training

    loss_sum = training._masked_loss_sum

    def at(step: int) -> None:
        calls = []

        def interrupted(*args):
            calls.append(1)
            if len(calls) == step:
                raise KeyboardInterrupt
            return loss_sum(*args)

        monkeypatch.setattr(training, "_masked_loss_sum", interrupted)

    return at
