"""NVWaveNet.infer on the CPU: results per SPEC section 4, and every misuse named (SPEC section 2)."""
import pytest
import torch

import nvwavenet
from nvwavenet import Impl, NVWaveNet
from nvwavenet.testing import compare_with_reference, random_cond_input, random_nv_wavenet_args


@pytest.fixture(scope="module")
def net():
    return NVWaveNet(**random_nv_wavenet_args(8, 16, 32, 5, 4, seed=1))


def test_public_surface():
    assert [i.name for i in Impl] == ["AUTO", "SINGLE_BLOCK", "DUAL_BLOCK", "PERSISTENT", "CLUSTER", "TENSOR_CORE",
                                      "CLUSTER_FOLD", "CLUSTER_BATCHED", "CLUSTER_ROLES",
                                      "CLUSTER_SKIP_BLOCKS"]
    info = nvwavenet.build_info()
    for key in ("cuda", "cuda_archs", "sizes", "precisions", "version"):
        assert key in info
    assert isinstance(info["cuda"], bool) and info["version"] == nvwavenet.__version__


@pytest.mark.parametrize("batch, samples", [(1, 1), (3, 40), (8, 17)])
def test_cpu_path_matches_reference(batch, samples):
    net = NVWaveNet(**random_nv_wavenet_args(16, 32, 64, 7, 8, seed=batch))
    report = compare_with_reference(net, random_cond_input(16, batch, 7, samples, seed=samples))
    assert report["logits_rel_l2"] < 1e-5


def test_any_strides_and_float16_conditioning(net):
    cond = random_cond_input(8, 4, 5, 30, seed=2)
    u = torch.rand(4, 30)
    expected = net.infer(cond, selectors=u)
    strided = cond.permute(3, 1, 2, 0).contiguous().permute(3, 1, 2, 0)
    assert not strided.is_contiguous()
    assert torch.equal(net.infer(strided, selectors=u), expected)
    every_other = torch.zeros(16, 4, 5, 60)[..., ::2]
    every_other.copy_(cond)
    assert torch.equal(net.infer(every_other, selectors=u), expected)
    compare_with_reference(net, cond.half())


def test_output_type_shape_and_device(net):
    out = net.infer(random_cond_input(8, 2, 5, 9, seed=3), Impl.AUTO)
    assert out.dtype == torch.int32 and out.shape == (2, 9) and out.device.type == "cpu"
    assert net.infer(random_cond_input(8, 2, 5, 0, seed=3)).shape == (2, 0)


@pytest.mark.parametrize("impl", list(Impl))
def test_every_impl_runs_the_cpu_path_on_cpu_tensors(net, impl):
    cond = random_cond_input(8, 2, 5, 12, seed=4)
    u = torch.rand(2, 12)
    assert torch.equal(net.infer(cond, impl, selectors=u), net.infer(cond, Impl.AUTO, selectors=u))


CALLS = [  # (description, kwargs for infer, error, pattern naming the argument)
    ("not a tensor", dict(cond_input=[[1.0]]), TypeError, "cond_input"),
    ("float64", dict(cond_input=torch.zeros(16, 1, 5, 4, dtype=torch.float64)), TypeError, "cond_input.*float64"),
    ("3-D", dict(cond_input=torch.zeros(16, 5, 4)), ValueError, "cond_input.*4 dimensions"),
    ("wrong channels", dict(cond_input=torch.zeros(15, 1, 5, 4)), ValueError, "cond_input.*16 channels"),
    ("wrong layers", dict(cond_input=torch.zeros(16, 1, 4, 4)), ValueError, "cond_input.*5 layers"),
    ("empty batch", dict(cond_input=torch.zeros(16, 0, 5, 4)), ValueError, "cond_input.*batch"),
    ("impl as str", dict(implementation="AUTO"), TypeError, "implementation"),
    ("selectors shape", dict(selectors=torch.rand(2, 4)), ValueError, "selectors.*shape"),
    ("selectors range", dict(selectors=torch.full((1, 4), 1.0)), ValueError, r"selectors.*\[0, 1\)"),
    ("selectors int", dict(selectors=torch.zeros(1, 4, dtype=torch.int64)), TypeError, "selectors"),
    ("generator type", dict(generator=1234), TypeError, "generator"),
    ("teacher float", dict(teacher_forcing=torch.zeros(1, 4)), TypeError, "teacher_forcing"),
    ("teacher range", dict(teacher_forcing=torch.full((1, 4), 32)), ValueError, r"teacher_forcing.*\[0, 32\)"),
    ("teacher shape", dict(teacher_forcing=torch.zeros(1, 5, dtype=torch.long)), ValueError, "teacher_forcing"),
    ("return_logits", dict(return_logits=1), TypeError, "return_logits"),
    ("state type", dict(state={"queues": 1}), TypeError, "state"),
]


@pytest.mark.parametrize("description, kwargs, error, pattern", CALLS, ids=[c[0] for c in CALLS])
def test_misuse_is_named(net, description, kwargs, error, pattern):
    call = dict(cond_input=torch.zeros(16, 1, 5, 4))
    call.update(kwargs)
    with pytest.raises(error, match=pattern):
        net.infer(**call)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_nan_conditioning_is_refused_before_anything_runs(net, dtype):
    cond = random_cond_input(8, 3, 5, 20, seed=5, dtype=dtype)
    cond[3, 2, 1, 9] = cond[9, 1, 4, 12] = cond[0, 0, 0, 9] = float("nan")
    state = net.init_state(3)
    before = {key: value.clone() for key, value in state.items()}
    with pytest.raises(ValueError, match=r"cond_input: .*NaN at 3 .*earliest at stream 0, sample 9"):
        net.infer(cond, state=state)
    assert all(torch.equal(state[key], before[key]) for key in state)
    assert net.infer(cond[..., :9]).shape == (3, 9)  # the steps before the first NaN are fine


def test_infinite_conditioning_follows_the_reference(net):
    # tanh and sigmoid take +-inf to their limits: the logits stay finite and match the reference.
    cond = random_cond_input(8, 2, 5, 16, seed=6)
    cond[0, 0, 1, 3] = cond[9, 1, 2, 5] = float("inf")
    cond[2, 1, 0, 7] = cond[12, 0, 4, 9] = float("-inf")
    assert compare_with_reference(net, cond)["logits_rel_l2"] < 1e-5


def test_state_for_another_batch_is_refused(net):
    with pytest.raises(ValueError, match=r"state\['queues'\]"):
        net.infer(torch.zeros(16, 2, 5, 4), state=net.init_state(3))
    with pytest.raises(ValueError, match="batch_size"):
        net.init_state(0)



@pytest.mark.extension
def test_last_auto_rule_says_which_cpu_path_ran():
    """On the CPU, where ``implementation`` chooses nothing, ``last_auto_rule`` still says what ran."""
    from nvwavenet.inference import CPU_ENGINE_RULE

    net = NVWaveNet(**random_nv_wavenet_args(8, 16, 32, 2, 2))
    assert net.last_auto_rule is None
    net.infer(random_cond_input(8, 1, 2, 4), Impl.SINGLE_BLOCK)
    assert net.last_auto_rule == CPU_ENGINE_RULE and net.last_implementation is None


def _engine_alone(net, cond, u, state, teacher=None, logits=False):
    """The CPU engine called directly on the whole-batch state (engines.make_params), as infer did
    before it ran through a session: what infer must still give, bit for bit."""
    from nvwavenet import engines

    batch, samples = u.shape
    cpu = engines.CpuWeights.pack(net.weights, net.dtype)
    out = torch.full((batch, samples), -1, dtype=torch.int32)
    logit_out = torch.full((batch, net.A, samples), float("nan")) if logits else None
    p = engines.make_params(net.weights, cpu.packed, cond, u, out, state, teacher=teacher, logits=logit_out,
                            cpu_blocked=cpu.blocked)
    engines.extension().generate_cpu(p, engines.requested_cpu_isa())
    state["position"].fill_(int(state["position"]) + samples)
    return (out, logit_out) if logits else out


@pytest.mark.extension
def test_infer_runs_through_a_session_on_the_callers_state(net, monkeypatch):
    """infer's engine call is Session._run, on the caller's own state tensors (updated in place, not
    copied), and gives what the engine gives on the whole-batch state, bit for bit: teacher
    forcing, logits, prime, float16 conditioning with any strides, a state carried across calls."""
    from nvwavenet.session import Session

    runs = []
    run = Session._run

    def spy(session, *args):
        runs.append((session._params.queues, session._params.history))
        return run(session, *args)

    monkeypatch.setattr(Session, "_run", spy)
    g = torch.Generator().manual_seed(8)
    cond = random_cond_input(8, 3, 5, 30, seed=8)
    u = torch.rand(3, 30, generator=g)
    teacher = torch.randint(0, 32, (3, 30), generator=g, dtype=torch.int32)
    state, alone = net.init_state(3), net.init_state(3)
    addresses = (state["queues"].data_ptr(), state["history"].data_ptr())
    for first, last, forced in ((0, 7, False), (7, 7, False), (7, 19, True), (19, 30, False)):
        kwargs = dict(teacher_forcing=teacher[:, first:last]) if forced else {}
        got = net.infer(cond[..., first:last], selectors=u[:, first:last], state=state, return_logits=True, **kwargs)
        expected = _engine_alone(net, cond[..., first:last], u[:, first:last], alone,
                                 teacher[:, first:last] if forced else None, logits=True)
        assert all(torch.equal(a, b) for a, b in zip(got, expected)) and not got[1].isnan().any()
        assert all(torch.equal(state[key], alone[key]) for key in state)
    assert runs == [addresses] * 3  # the empty call runs no engine
    assert (state["queues"].data_ptr(), state["history"].data_ptr()) == addresses
    half = cond.half().permute(3, 1, 2, 0).contiguous().permute(3, 1, 2, 0)
    strided_u = u.t().contiguous().t()
    assert torch.equal(net.infer(half, selectors=strided_u),
                       _engine_alone(net, half, strided_u, net.init_state(3)))
    primed = net.infer(cond, selectors=u, prime=teacher[:, :12])
    alone = net.init_state(3)
    _engine_alone(net, cond[..., :12], u[:, :12], alone, teacher[:, :12])
    assert torch.equal(primed[:, :12], teacher[:, :12])
    assert torch.equal(primed[:, 12:], _engine_alone(net, cond[..., 12:], u[:, 12:], alone))


@pytest.mark.extension
def test_infer_from_another_thread_meanwhile_runs_on_a_session_of_its_own(net):
    """A session is one caller's at a time: while one call holds the network's session, another
    (from another thread) gets its own, with the same results."""
    cond = random_cond_input(8, 2, 5, 10, seed=9)
    u = torch.rand(2, 10, generator=torch.Generator().manual_seed(9))
    expected = net.infer(cond, selectors=u, return_logits=True)
    session = net._sessions[torch.device("cpu")]
    with net._session_lock:
        got = net.infer(cond, selectors=u, return_logits=True)
    assert all(torch.equal(a, b) for a, b in zip(got, expected))
    assert net._sessions[torch.device("cpu")] is session


@pytest.mark.extension
def test_a_network_is_freed_when_dropped_after_infer():
    """The session infer keeps on the network does not keep the network (and its packed weights)
    alive: without a cycle, dropping the last reference frees it at once."""
    import weakref

    net = NVWaveNet(**random_nv_wavenet_args(8, 16, 32, 2, 2))
    net.infer(random_cond_input(8, 1, 2, 3))
    ref = weakref.ref(net)
    del net
    assert ref() is None
