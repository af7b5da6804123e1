import pytest

from nvwavenet import build_check, engines


def pytest_runtest_setup(item):
    """A test marked ``extension`` fails with the diagnosis when nvwavenet._C did not load (a green
    run of skips hid a shadowed build), and skips only where NVWAVENET_ALLOW_REFERENCE=1 says the
    build is left out on purpose."""
    if item.get_closest_marker("extension") and not engines.has_extension():
        if build_check.reference_allowed():
            pytest.skip("nvwavenet._C is not built (NVWAVENET_ALLOW_REFERENCE=1)")
        pytest.fail(engines.MISSING_BUILD.message(), pytrace=False)


_SUMMARY = pytest.StashKey[list]()


def pytest_configure(config):
    config.stash[_SUMMARY] = []


@pytest.fixture(scope="session")
def terminal_summary(request) -> list:
    """Lines to print in pytest's terminal summary, after every test (the fuzz suite's count of
    cases): written while tests run, they land inside the progress line."""
    return request.config.stash[_SUMMARY]


def pytest_terminal_summary(terminalreporter, config):
    for line in config.stash.get(_SUMMARY, []):
        terminalreporter.write_line(line)


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
