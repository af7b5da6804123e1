"""CLUSTER_FOLD's order of computation (scripts/fold_replay.py, FoldedReplay: the fold inside each
layer block, W_cur x at a block's first layer, x leaving a block through W_res) against
``reference.incremental`` in float64, over chunked calls carrying the state: the fold is an exact
rewrite of SPEC section 1, whatever the split into layer blocks. No GPU, no compiled module."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

from nvwavenet import NVWaveNet, reference
from nvwavenet.testing import generate_in_chunks, random_cond_input, random_nv_wavenet_args

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "fold_replay.py"
_spec = importlib.util.spec_from_file_location("fold_replay", SCRIPT)
fold_replay = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(fold_replay)

LAYERS = 7


def setup(seed=0):
    net = NVWaveNet(**random_nv_wavenet_args(16, 32, 128, LAYERS, 4, seed=seed))
    cond = random_cond_input(16, 3, LAYERS, 9, seed=seed + 1).double()
    u = torch.rand(3, 9, generator=torch.Generator().manual_seed(seed + 2))
    return net.weights, cond, u


@pytest.mark.parametrize("layer_blocks", [1, 3, LAYERS])
def test_folded_block_order_equals_the_reference_over_chunked_calls(layer_blocks):
    weights, cond, u = setup(layer_blocks)
    state = reference.init_state(weights, 3)
    samples, logits = reference.incremental(weights, cond, u, return_logits=True, state=state)
    replay = fold_replay.FoldedReplay(weights, fold_replay.layer_split(LAYERS, layer_blocks))
    got, got_logits, got_state = generate_in_chunks(replay, cond, u, [4, 1, 4])
    assert torch.equal(got, samples)
    assert float((got_logits - logits).norm() / logits.norm()) < 1e-12
    assert float((got_state["queues"] - state["queues"]).abs().max()) < 1e-12
    assert torch.equal(got_state["history"], state["history"])
    assert int(got_state["position"]) == int(state["position"]) == 9


def test_the_folded_bias_matters():
    """The comparison above can fail: without g_l (the fold of b_res) the replay is off."""
    weights, cond, u = setup()
    samples, logits = reference.incremental(weights, cond, u, return_logits=True)
    replay = fold_replay.FoldedReplay(weights, fold_replay.layer_split(LAYERS, 2))
    replay.fold_b = torch.zeros_like(replay.fold_b)
    _, wrong = replay.infer(cond, selectors=u, teacher_forcing=samples, return_logits=True)
    assert float((wrong - logits).norm() / logits.norm()) > 1e-3


def test_the_split_is_the_planners_and_checked():
    assert fold_replay.layer_split(20, 7) == [3] * 6 + [2]
    assert fold_replay.layer_split(20, 10) == [2] * 10
    weights, _, _ = setup()
    with pytest.raises(ValueError, match="layers_per_block"):
        fold_replay.FoldedReplay(weights, [3, 3])
