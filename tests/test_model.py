"""The training model's forward equals teacher-forced inference of its export (SPEC section 1)."""
import pytest
import torch

from nvwavenet import Impl, NVWaveNet, reference
from nvwavenet.model import WaveNet

SIZES = [  # A, L, max_dilation, R, S, cond channels, window, stride
    dict(n_in_channels=64, n_layers=6, max_dilation=4, n_residual_channels=8, n_skip_channels=16,
         n_out_channels=64, n_cond_channels=5, upsamp_window=8, upsamp_stride=4),
    dict(n_in_channels=256, n_layers=10, max_dilation=32, n_residual_channels=16, n_skip_channels=32,
         n_out_channels=256, n_cond_channels=8, upsamp_window=32, upsamp_stride=16),
    dict(n_in_channels=16, n_layers=1, max_dilation=1, n_residual_channels=4, n_skip_channels=4,
         n_out_channels=16, n_cond_channels=3, upsamp_window=2, upsamp_stride=2),
]


def _model_and_data(size, seed, dtype, batch=2, samples=150):
    torch.manual_seed(seed)
    model = WaveNet(**size).to(dtype)
    # Training leaves biases non-zero; the default init makes some zero, which would hide mistakes.
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(0.1 * torch.randn_like(parameter))
    frames = samples // size["upsamp_stride"] + 2
    features = torch.randn(batch, size["n_cond_channels"], frames, dtype=dtype)
    classes = torch.randint(0, size["n_out_channels"], (batch, samples))
    return model, features, classes


def _forward_and_export(size, seed, dtype):
    """The training model's logits on random data, the conditioning it computes for the same
    frames, and its export: the two sides of SPEC section 1's identity."""
    model, features, classes = _model_and_data(size, seed, dtype)
    with torch.no_grad():
        logits = model(features, classes)
        cond = model.get_cond_input(features, classes.shape[1])
    return NVWaveNet(**model.export_weights()), cond, classes, logits


@pytest.mark.parametrize("size", SIZES)
def test_forward_equals_teacher_forced_reference_in_float64(size):
    net, cond, classes, logits = _forward_and_export(size, seed=1, dtype=torch.float64)
    u = torch.rand(classes.shape)
    _, inferred = reference.incremental(net.weights, cond, u, teacher_forcing=classes, return_logits=True)
    assert logits.shape == inferred.shape == (2, size["n_out_channels"], classes.shape[1])
    assert (logits - inferred).abs().max() < 1e-9


@pytest.mark.parametrize("size", SIZES)
def test_forward_equals_nvwavenet_cpu_path_in_float32(size):
    net, cond, classes, logits = _forward_and_export(size, seed=2, dtype=torch.float32)
    _, inferred = net.infer(cond, Impl.AUTO, teacher_forcing=classes, return_logits=True)
    assert ((logits - inferred).norm() / logits.norm()) < 1e-4


def test_logits_at_t_do_not_see_sample_t():
    model, features, classes = _model_and_data(SIZES[0], seed=3, dtype=torch.float64)
    changed = classes.clone()
    changed[:, 40] = (changed[:, 40] + 1) % 64
    with torch.no_grad():
        before, after = model(features, classes), model(features, changed)
    assert torch.equal(before[..., :41], after[..., :41])
    assert not torch.equal(before[..., 41], after[..., 41])


def test_cond_input_layout_and_length():
    model, features, _ = _model_and_data(SIZES[0], seed=4, dtype=torch.float32)
    cond = model.get_cond_input(features)
    assert cond.shape == (16, 2, 6, model.upsampled_length(features.shape[2]))
    assert model.get_cond_input(features, 10).shape == (16, 2, 6, 10)


def test_state_dict_uses_nv_wavenet_module_names():
    names = set(WaveNet(**SIZES[0]).state_dict())
    for name in ("upsample.weight", "cond_layers.conv.weight", "dilate_layers.5.conv.weight",
                 "res_layers.4.conv.bias", "skip_layers.5.conv.weight", "embed.weight",
                 "conv_out.conv.weight", "conv_end.conv.weight"):
        assert name in names
    assert "res_layers.5.conv.weight" not in names and "conv_out.conv.bias" not in names


def test_export_is_detached_and_validated():
    model = WaveNet(**SIZES[0])
    exported = model.export_weights()
    assert not exported["embedding_curr"].requires_grad
    assert exported["embedding_prev"].abs().sum() == 0 and exported["use_embed_tanh"] is False
    assert len(exported["res_weights"]) == 5 and len(exported["dilate_weights"]) == 6


def test_model_errors_name_the_argument():
    with pytest.raises(ValueError, match="n_residual_channels"):
        WaveNet(**{**SIZES[0], "n_residual_channels": 0})
    with pytest.raises(ValueError, match="max_dilation"):
        WaveNet(**{**SIZES[0], "max_dilation": 6})
    with pytest.raises(ValueError, match="n_in_channels"):
        WaveNet(**{**SIZES[0], "n_in_channels": 32}).export_weights()
    model, features, classes = _model_and_data(SIZES[0], seed=5, dtype=torch.float32)
    with pytest.raises(ValueError, match="features"):
        model(features[:, :4], classes)
    with pytest.raises(ValueError, match="features"):
        model(features[..., :2], classes)
    with pytest.raises(ValueError, match="samples"):
        model(features, classes[0])
    with pytest.raises(ValueError, match=r"samples: expected the batch of features \(2\), got 1"):
        model(features, classes[:1])
    with pytest.raises(TypeError, match="features: expected a float tensor"):
        model(features.tolist(), classes)
