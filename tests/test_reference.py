"""The float64 reference: naive and queue-based generation agree, and sampling follows the SPEC."""
import pytest
import torch

from nvwavenet import NVWaveNet, Impl, reference
from nvwavenet.sampling import select_classes
from nvwavenet.testing import random_cond_input, random_nv_wavenet_args

CONFIGS = [  # R, S, A, L, max_dilation
    (4, 8, 16, 1, 1),
    (8, 16, 32, 6, 4),
    (16, 24, 64, 7, 8),
    (5, 7, 3, 3, 2),
]


def _net(config, seed, **kwargs):
    return NVWaveNet(**random_nv_wavenet_args(*config, seed=seed, **kwargs))


@pytest.mark.parametrize("config", CONFIGS)
@pytest.mark.parametrize("use_embed_tanh", [True, False])
def test_naive_equals_incremental(config, use_embed_tanh):
    net = _net(config, seed=hash(config) % 1000, use_embed_tanh=use_embed_tanh, with_head_biases=True)
    R, L = config[0], config[3]
    cond = random_cond_input(R, 3, L, 3 * net.receptive_field + 5, seed=7, dtype=torch.float64)
    u = torch.rand(3, cond.shape[3], generator=torch.Generator().manual_seed(8))
    fast, fast_logits = reference.incremental(net.weights, cond, u, return_logits=True)
    slow, slow_logits = reference.naive(net.weights, cond, u, return_logits=True)
    assert torch.equal(fast, slow)
    assert (fast_logits - slow_logits).abs().max() < 1e-10
    assert fast.dtype == torch.int32 and fast_logits.shape == (3, net.A, cond.shape[3])


@pytest.mark.parametrize("algorithm", [reference.incremental, reference.naive])
def test_free_running_equals_teacher_forced_on_its_own_output(algorithm):
    net = _net(CONFIGS[1], seed=3)
    cond = random_cond_input(8, 2, 6, 40, seed=4, dtype=torch.float64)
    u = torch.rand(2, 40, generator=torch.Generator().manual_seed(5))
    free, free_logits = algorithm(net.weights, cond, u, return_logits=True)
    forced, forced_logits = algorithm(net.weights, cond, u, teacher_forcing=free, return_logits=True)
    assert torch.equal(free, forced)
    assert torch.equal(free_logits, forced_logits)


def test_teacher_forcing_feeds_the_given_samples_back():
    net = _net(CONFIGS[1], seed=6)
    cond = random_cond_input(8, 2, 6, 30, seed=7, dtype=torch.float64)
    u = torch.rand(2, 30, generator=torch.Generator().manual_seed(8))
    teacher = torch.randint(0, net.A, (2, 30), generator=torch.Generator().manual_seed(9))
    _, forced_logits = reference.incremental(net.weights, cond, u, teacher_forcing=teacher, return_logits=True)
    _, free_logits = reference.incremental(net.weights, cond, u, return_logits=True)
    # The first step sees only the initial history, later ones see the teacher's samples.
    assert torch.equal(forced_logits[..., 0], free_logits[..., 0])
    assert not torch.allclose(forced_logits[..., 5:], free_logits[..., 5:])


@pytest.mark.parametrize("chunks", [[1] * 12, [2, 3, 5, 2], [11, 1], [12]])
def test_chunked_generation_through_state_equals_one_call(chunks):
    net = _net(CONFIGS[2], seed=10)
    cond = random_cond_input(16, 2, 7, 12, seed=11, dtype=torch.float64)
    u = torch.rand(2, 12, generator=torch.Generator().manual_seed(12))
    whole = reference.incremental(net.weights, cond, u)
    state, start, parts = reference.init_state(net.weights, 2), 0, []
    for size in chunks:
        parts.append(reference.incremental(net.weights, cond[..., start:start + size], u[:, start:start + size],
                                           state=state))
        start += size
    assert torch.equal(torch.cat(parts, dim=1), whole)
    assert int(state["position"]) == 12


def test_select_classes_picks_the_smallest_class_whose_cdf_exceeds_u():
    probabilities = torch.tensor([0.1, 0.2, 0.3, 0.4], dtype=torch.float64)
    logits = probabilities.log().expand(7, 4)
    u = torch.tensor([0.0, 0.0999, 0.1001, 0.2999, 0.3001, 0.5999, 0.9999], dtype=torch.float64)
    assert select_classes(logits, u).tolist() == [0, 0, 1, 1, 2, 2, 3]


def test_select_classes_falls_back_to_the_last_class_when_rounding_leaves_none():
    # 41 equal float32 probabilities sum to 0.99999994 < 1; a u above that has no class.
    logits = torch.zeros(1, 41)
    last = torch.cumsum(torch.softmax(logits, -1), -1)[0, -1]
    assert last < 1
    u = torch.tensor([torch.nextafter(last, torch.tensor(1.0)).item()])
    assert select_classes(logits, u).item() == 40


def test_selectors_reach_the_sample_through_the_whole_network():
    # A zero conv_end and a bias make the logits known exactly: p = (0.1, 0.2, 0.3, 0.4).
    args = random_nv_wavenet_args(4, 8, 4, 3, 2, seed=13)
    args["conv_end_weight"] = torch.zeros(4, 4)
    args["conv_end_bias"] = torch.tensor([0.1, 0.2, 0.3, 0.4]).log()
    net = NVWaveNet(**args)
    u = torch.tensor([[0.05, 0.15, 0.31, 0.65, 0.9999999, 0.0]])
    cond = random_cond_input(4, 1, 3, 6, seed=14)
    expected = [0, 1, 2, 3, 3, 0]
    assert net.infer(cond, Impl.AUTO, selectors=u).tolist() == [expected]
    assert reference.incremental(net.weights, cond.double(), u).tolist() == [expected]


def test_seeded_generator_is_deterministic_and_seed_sensitive():
    net = _net(CONFIGS[1], seed=15)
    cond = random_cond_input(8, 2, 6, 50, seed=16)
    run = lambda seed: net.infer(cond, Impl.AUTO, generator=torch.Generator().manual_seed(seed))
    assert torch.equal(run(1), run(1))
    assert not torch.equal(run(1), run(2))
