"""Per-frame conditioning: equal to the training model's, and bitwise the same however chunked."""
import pytest
import torch

from nvwavenet.conditioning import FrameConditioner
from nvwavenet.model import WaveNet


def _model(window, stride, seed=0):
    torch.manual_seed(seed)
    return WaveNet(n_in_channels=32, n_layers=3, max_dilation=2, n_residual_channels=4, n_skip_channels=8,
                   n_out_channels=32, n_cond_channels=6, upsamp_window=window, upsamp_stride=stride)


@pytest.mark.parametrize("window, stride", [(16, 4), (12, 5), (4, 4), (7, 2)])
def test_matches_the_training_model(window, stride):
    model = _model(window, stride)
    frames = torch.randn(2, 6, 15)
    conditioner = FrameConditioner(model)
    cond = conditioner(torch.cat([conditioner.start(2), frames], dim=2))
    with torch.no_grad():
        expected = model.get_cond_input(frames, 15 * stride)
    assert cond.shape == expected.shape == (8, 2, 3, 15 * stride)
    torch.testing.assert_close(cond, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("chunks", [[1] * 15, [4, 4, 7], [14, 1], [2, 0, 13]])
def test_bitwise_identical_however_chunked(chunks):
    model = _model(16, 4, seed=1)
    frames = torch.randn(3, 6, 15)
    conditioner = FrameConditioner(model)
    whole = conditioner(torch.cat([conditioner.start(3), frames], dim=2))
    history, parts, start = conditioner.start(3), [], 0
    for size in chunks:
        window = torch.cat([history, frames[:, :, start:start + size]], dim=2)
        parts.append(conditioner(window))
        history = window[:, :, window.shape[2] - conditioner.context:]
        start += size
    assert torch.equal(torch.cat(parts, dim=3), whole)


def test_bad_frames_and_windows_are_named():
    conditioner = FrameConditioner(_model(16, 4))
    with pytest.raises(ValueError, match="mel.*6 mel bands"):
        conditioner.as_frames(torch.zeros(1, 5, 3))
    with pytest.raises(TypeError, match="mel"):
        conditioner.as_frames(torch.zeros(1, 6, 3, dtype=torch.long))
    with pytest.raises(ValueError, match="upsamp_window"):
        FrameConditioner(_model(3, 4))
    # NaN frames gave NaN conditioning, which the engines sampled from without an error.
    with pytest.raises(ValueError, match="mel chunk 2: expected finite values, got 1 NaN or infinite"):
        conditioner.as_frames(torch.tensor([float("nan")] + [0.0] * 17).view(1, 6, 3), "mel chunk 2")
    with pytest.raises(ValueError, match="frames: expected at least the 3 frames of context"):
        conditioner(torch.zeros(1, 6, 2))
    with pytest.raises(TypeError, match="model: expected a nvwavenet.model.WaveNet, got NoneType"):
        FrameConditioner(None)


# The compiled float32 path (csrc/conditioning.h): batch-, order- and thread-invariant.
compiled = pytest.mark.skipif(not FrameConditioner(_model(16, 4))._compiled, reason="needs the compiled module")


def _odd_model(seed=2):
    """Sizes that fill no block of 8 exactly: 2R * L = 30 output rows, C * H = 35 upsampling rows."""
    torch.manual_seed(seed)
    return WaveNet(n_in_channels=32, n_layers=3, max_dilation=2, n_residual_channels=5, n_skip_channels=8,
                   n_out_channels=32, n_cond_channels=7, upsamp_window=13, upsamp_stride=5)


def _windows(conditioner, batch, frames, seed):
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(batch, conditioner.n_channels, conditioner.context + frames, generator=generator)


@compiled
# Hops of 70, 44 and 20 samples end on a slab of 6, 44 and 20: the projection's tiles of 1, 3 and 2
# vectors (and 4 before them).
@pytest.mark.parametrize("make", [lambda: _model(16, 4, seed=3), _odd_model, lambda: _model(140, 70, seed=5),
                                  lambda: _model(88, 44, seed=6), lambda: _model(40, 20, seed=7)])
def test_compiled_matches_float64_within_float32_tolerance(make):
    model = make()
    conditioner, exact = FrameConditioner(model), FrameConditioner(model, dtype=torch.float64)
    window = _windows(conditioner, 3, 9, seed=4)
    cond = conditioner(window)
    expected = exact(window.double())
    assert cond.dtype == torch.float32 and cond.shape == expected.shape
    # Each output sums C * (context + 1) upsampling and C projection products of float32 values.
    torch.testing.assert_close(cond.double(), expected, rtol=1e-5, atol=1e-5 * expected.abs().max().item())


@compiled
def test_the_same_whatever_the_threads():
    model = _odd_model()
    window = _windows(FrameConditioner(model), 5, 6, seed=5)
    results = []
    before = torch.get_num_threads()
    try:
        for threads in (1, 2, 0, 7):  # 0: every CPU; 7: more threads than items on a 2-core machine
            for torch_threads in (1, 2):
                torch.set_num_threads(torch_threads)
                results.append(FrameConditioner(model, num_threads=threads)(window))
    finally:
        torch.set_num_threads(before)
    assert all(torch.equal(result, results[0]) for result in results)


@compiled
def test_a_stream_is_the_same_alone_and_anywhere_in_a_batch_of_32():
    conditioner = FrameConditioner(_odd_model())
    own = _windows(conditioner, 1, 4, seed=6)
    alone = conditioner(own)
    others = _windows(conditioner, 31, 4, seed=7)
    for position in range(32):
        batch = torch.cat([others[:position], own, others[position:]])
        assert torch.equal(conditioner(batch)[:, position:position + 1], alone), position


@compiled
def test_counts_condition_each_stream_as_its_own_call():
    conditioner = FrameConditioner(_odd_model())
    window = _windows(conditioner, 4, 5, seed=8)
    counts = [5, 0, 2, 3]
    cond = conditioner(window, counts)
    for b, count in enumerate(counts):
        own = conditioner(window[b:b + 1, :, :conditioner.context + count])
        assert torch.equal(cond[:, b:b + 1, :, :count * conditioner.hop], own)
    # Into a reused buffer (which held other values): the same numbers.
    buffer = torch.full((cond.numel() + 7,), float("nan"))
    again = conditioner(window, counts, buffer=buffer)
    assert again.untyped_storage().data_ptr() == buffer.untyped_storage().data_ptr()
    for b, count in enumerate(counts):
        assert torch.equal(again[:, b, :, :count * conditioner.hop], cond[:, b, :, :count * conditioner.hop])
    with pytest.raises(ValueError, match=r"counts: expected 4 frame counts in \[0, 5\]"):
        conditioner(window, [6, 0, 0, 0])
