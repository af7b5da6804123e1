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
