"""The network's shape (SPEC section 1) and the validation of NV-WaveNet's weight arguments."""
import pytest
import torch

from nvwavenet import NVWaveNet, layer_dilations, receptive_field
from nvwavenet.testing import random_nv_wavenet_args


def test_dilation_pattern_matches_spec_example():
    assert layer_dilations(6, 4) == [1, 2, 4, 1, 2, 4]
    assert layer_dilations(4, 2) == [1, 2, 1, 2]
    assert layer_dilations(3, 1) == [1, 1, 1]
    assert layer_dilations(20, 512) == [2 ** (i % 10) for i in range(20)]


def test_receptive_field_is_one_plus_sum_of_dilations():
    assert receptive_field(6, 4) == 1 + 7 + 7
    assert receptive_field(1, 1) == 2
    assert receptive_field(20, 512) == 1 + 2 * 1023


@pytest.mark.parametrize("n_layers, max_dilation", [(0, 4), (3, 3), (3, 0), (2.0, 4), (True, 2)])
def test_bad_layer_count_or_dilation_is_named(n_layers, max_dilation):
    with pytest.raises(ValueError, match="n_layers|max_dilation"):
        layer_dilations(n_layers, max_dilation)


def test_trailing_conv_dimension_and_l_residual_layers_are_accepted():
    args = random_nv_wavenet_args(8, 16, 32, 4, 2, seed=1)
    squeezed = NVWaveNet(**args)
    conv_shaped = dict(args)
    for name in ("res_weights", "skip_weights"):
        conv_shaped[name] = [w.unsqueeze(-1) for w in args[name]]
    for name in ("conv_out_weight", "conv_end_weight"):
        conv_shaped[name] = args[name].unsqueeze(-1)
    conv_shaped["res_weights"] = conv_shaped["res_weights"] + [torch.randn(8, 8, 1)]
    conv_shaped["res_biases"] = args["res_biases"] + [torch.randn(8)]
    unsqueezed = NVWaveNet(**conv_shaped)
    for name in ("res_w", "skip_w", "out_w", "end_w"):
        assert torch.equal(getattr(squeezed.weights, name), getattr(unsqueezed.weights, name))
    assert (unsqueezed.A, unsqueezed.R, unsqueezed.S, unsqueezed.num_layers) == (32, 8, 16, 4)


def _with(**changes):
    args = random_nv_wavenet_args(8, 16, 32, 4, 2, seed=2)
    args.update(changes)
    return args


@pytest.mark.parametrize("changes, error, argument", [
    (dict(embedding_prev=torch.randn(32, 9)), ValueError, "embedding_prev"),
    (dict(embedding_curr=torch.randn(32)), ValueError, "embedding_curr"),
    (dict(conv_out_weight=torch.randn(32, 15)), ValueError, "conv_out_weight"),
    (dict(conv_end_weight=torch.randn(31, 32)), ValueError, "conv_end_weight"),
    (dict(dilate_weights=[torch.randn(16, 8, 2)] * 3 + [torch.randn(16, 8, 3)]), ValueError, r"dilate_weights\[3\]"),
    (dict(dilate_biases=[torch.randn(16)] * 3), ValueError, "dilate_biases"),
    (dict(res_weights=[torch.randn(8, 8)] * 2), ValueError, "res_weights"),
    (dict(res_biases=[torch.randn(8)] * 2 + [torch.randn(7)]), ValueError, r"res_biases\[2\]"),
    (dict(skip_weights=[torch.randn(16, 8)] * 3 + [torch.randn(17, 8)]), ValueError, r"skip_weights\[3\]"),
    (dict(skip_biases=[torch.randn(16)] * 3 + [torch.randn(15)]), ValueError, r"skip_biases\[3\]"),
    (dict(max_dilation=3), ValueError, "max_dilation"),
    (dict(max_dilation=2.0), TypeError, "max_dilation"),
    (dict(use_embed_tanh=1), TypeError, "use_embed_tanh"),
    (dict(embedding_curr=torch.randint(0, 3, (32, 8))), TypeError, "embedding_curr"),
    (dict(conv_end_weight=torch.full((32, 32), float("nan"))), ValueError, "conv_end_weight"),
    (dict(dilate_weights=torch.randn(16)), TypeError, "dilate_weights"),  # (L, 2R, R, 2) stacked is accepted
    (dict(conv_out_bias=torch.randn(31)), ValueError, "conv_out_bias"),
])
def test_each_bad_weight_argument_is_named(changes, error, argument):
    with pytest.raises(error, match=argument):
        NVWaveNet(**_with(**changes))


def test_bad_network_dtype_is_named():
    with pytest.raises(TypeError, match="dtype"):
        NVWaveNet(**_with(), dtype=torch.float64)
