"""The compiled CPU engine (csrc/cpu/) against the float64 reference, SPEC section 4.

Fresh random weights at every size; sampled classes, teacher-forced logits, free-running replay
and output poisoning are checked by ``compare_with_reference``. The engine also promises more
than the SPEC asks, tested here exactly: its results do not depend on the thread count, on the
batch a stream runs in, or on how generation is chunked.
"""
from __future__ import annotations

import os
import signal
import time

import pytest
import torch

import nvwavenet
from nvwavenet import NVWaveNet, engines
from nvwavenet.testing import compare_with_reference, generate_in_chunks, random_cond_input, random_nv_wavenet_args

pytestmark = pytest.mark.extension

# The sizes the CUDA kernels are built for, and odd ones: the CPU engine has no size list.
LISTED_SIZES = [(32, 128, 256), (64, 128, 256), (64, 256, 256), (128, 256, 256), (256, 256, 256)]
ODD_SIZES = [(5, 7, 3), (1, 3, 2), (13, 24, 40), (24, 9, 17)]


def make_net(R, S, A, L=4, max_dilation=4, *, seed=0, num_threads=None, dtype=torch.float32, **kwargs):
    return NVWaveNet(**random_nv_wavenet_args(R, S, A, L, max_dilation, seed=seed, **kwargs),
                     num_threads=num_threads, dtype=dtype)


@pytest.mark.parametrize("batch", [1, 3, 8])
@pytest.mark.parametrize("sizes", LISTED_SIZES + ODD_SIZES, ids=lambda s: "R%d-S%d-A%d" % s)
def test_matches_reference(sizes, batch):
    R, S, A = sizes
    net = make_net(R, S, A, seed=R + S + A + batch, with_head_biases=True)
    cond = random_cond_input(R, batch, net.num_layers, 24, seed=batch)
    report = compare_with_reference(net, cond)
    assert report["positions"] == batch * 24


@pytest.mark.parametrize("layers, max_dilation", [(1, 1), (2, 1), (3, 2), (7, 8), (20, 512)])
def test_layers_and_dilations(layers, max_dilation):
    net = make_net(16, 24, 32, layers, max_dilation, seed=layers, use_embed_tanh=layers % 2 == 0)
    compare_with_reference(net, random_cond_input(16, 2, layers, 40, seed=layers))


def test_no_embedding_prev_and_no_tanh():
    net = make_net(8, 16, 16, 3, 2, use_embed_tanh=False, zero_embedding_prev=True)
    compare_with_reference(net, random_cond_input(8, 2, 3, 32))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("sizes", [(64, 256, 256), (5, 7, 3)], ids=lambda s: "R%d-S%d-A%d" % s)
def test_reduced_precision_weights(sizes, dtype, monkeypatch):
    """Matrices stored in 16 bits, widened in registers: SPEC section 4's tolerance for dtype."""
    R, S, A = sizes
    net = make_net(R, S, A, dtype=dtype)
    cond = random_cond_input(R, 3, net.num_layers, 24)
    report = compare_with_reference(net, cond)
    assert report["logits_rel_l2"] > 1e-5  # the weights really were rounded
    monkeypatch.setenv("NVWAVENET_CPU_ISA", "generic")
    compare_with_reference(net, cond)


def test_float16_conditioning():
    net = make_net(24, 32, 40, 3, 2)
    cond = random_cond_input(24, 3, 3, 32, dtype=torch.float16)
    compare_with_reference(net, cond)


@pytest.mark.parametrize("layout", ["time_major", "sliced"])
def test_non_contiguous_conditioning(layout):
    R, batch, L, T = 16, 3, 3, 30
    net = make_net(R, 24, 32, L, 2)
    if layout == "time_major":  # channels contiguous, time the outermost dimension
        cond = random_cond_input(R, batch, L, T).permute(3, 1, 2, 0).contiguous().permute(3, 1, 2, 0)
    else:  # every other step and every other stream of a larger tensor
        cond = random_cond_input(R, 2 * batch, L, 2 * T)[:, ::2, :, ::2]
    assert not cond.is_contiguous()
    compare_with_reference(net, cond)
    assert torch.equal(net.infer(cond, selectors=torch.rand(batch, T, generator=torch.Generator().manual_seed(0))),
                       net.infer(cond.contiguous(), selectors=torch.rand(batch, T, generator=torch.Generator().manual_seed(0))))


@pytest.mark.parametrize("isa", ["auto", "generic"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=str)
def test_vectorised_staging_equals_scalar(dtype, isa, monkeypatch):
    """Time-contiguous conditioning is staged 16 steps x 8 channels at a time by a vectorised
    transpose; the same values one step apart in memory go through the scalar loop. R = 20 leaves
    a last block of 4 channels, and 40 steps a last stage of 8."""
    monkeypatch.setenv("NVWAVENET_CPU_ISA", isa)
    R, batch, L, T = 20, 2, 3, 40
    net = make_net(R, 24, 32, L, 2)
    strided = random_cond_input(R, batch, L, 2 * T, dtype=dtype)[..., ::2]
    u = torch.rand(batch, T, generator=torch.Generator().manual_seed(9))
    scalar = net.infer(strided, selectors=u, return_logits=True)
    vectorised = net.infer(strided.contiguous(), selectors=u, return_logits=True)
    assert torch.equal(scalar[0], vectorised[0]) and torch.equal(scalar[1], vectorised[1])


@pytest.mark.parametrize("batch", [1, 3])
@pytest.mark.parametrize("chunks", [[1] * 12 + [48], [2, 3, 5, 7, 11, 13, 19], [59, 1], [17, 0, 43]],
                         ids=["ones", "primes", "uneven", "empty"])
def test_chunked_equals_one_call(chunks, batch):
    net = make_net(16, 32, 48, 5, 4)
    cond = random_cond_input(16, batch, 5, 60)
    u = torch.rand(batch, 60, generator=torch.Generator().manual_seed(1))
    whole = generate_in_chunks(net, cond, u, [60])
    pieces = generate_in_chunks(net, cond, u, chunks)
    assert torch.equal(whole[0], pieces[0])
    assert torch.equal(whole[1], pieces[1])
    for key in ("queues", "history", "position"):
        assert torch.equal(whole[2][key], pieces[2][key]), key
    assert int(pieces[2]["position"]) == 60


def test_chunked_teacher_forcing_and_state():
    net = make_net(8, 16, 24, 4, 4)
    cond = random_cond_input(8, 2, 4, 40)
    u = torch.rand(2, 40, generator=torch.Generator().manual_seed(2))
    teacher = torch.randint(0, 24, (2, 40), generator=torch.Generator().manual_seed(3))
    whole = generate_in_chunks(net, cond, u, [40], teacher_forcing=teacher)
    pieces = generate_in_chunks(net, cond, u, [9, 1, 30], teacher_forcing=teacher)
    assert torch.equal(whole[0], pieces[0]) and torch.equal(whole[1], pieces[1])
    # Teacher forcing feeds the given classes back: the history ends with the teacher's last two.
    assert torch.equal(pieces[2]["history"], teacher[:, -2:].to(torch.int32))


def test_independent_of_threads_and_batch():
    """The default-threaded batch-1 call is long enough to switch between one thread and a split;
    explicit splits (more threads than this machine may have cores) run a shorter prefix."""
    R, L, T, prefix = 24, 4, 700, 120
    cond = random_cond_input(R, 3, L, T)
    u = torch.rand(3, T, generator=torch.Generator().manual_seed(4))
    samples, logits = make_net(R, 32, 40, L, 4, num_threads=1).infer(cond[:, :1], selectors=u[:1],
                                                                      return_logits=True)
    auto = make_net(R, 32, 40, L, 4).infer(cond[:, :1], selectors=u[:1], return_logits=True)
    assert torch.equal(auto[0], samples) and torch.equal(auto[1], logits)
    for threads in (2, 3, 5):
        split = make_net(R, 32, 40, L, 4, num_threads=threads).infer(
            cond[:, :1, :, :prefix], selectors=u[:1, :prefix], return_logits=True)
        assert torch.equal(split[0], samples[:, :prefix]), threads
        assert torch.equal(split[1], logits[..., :prefix]), threads
    batched, batched_logits = make_net(R, 32, 40, L, 4).infer(cond, selectors=u, return_logits=True)
    for b in range(3):
        alone, alone_logits = make_net(R, 32, 40, L, 4, num_threads=1).infer(
            cond[:, b:b + 1], selectors=u[b:b + 1], return_logits=True)
        assert torch.equal(batched[b:b + 1], alone) and torch.equal(batched_logits[b:b + 1], alone_logits)


def test_groups_of_streams_run_one_after_another_unchanged():
    """Past about 8 streams a thread, the engine cuts the batch into groups that one thread runs
    one after another (1, 2 and 3 threads cut 21 streams differently); no stream may notice."""
    R, L, T = 16, 3, 60
    cond = random_cond_input(R, 21, L, T, seed=7)
    u = torch.rand(21, T, generator=torch.Generator().manual_seed(8))
    runs = [make_net(R, 16, 24, L, 4, num_threads=threads).infer(cond, selectors=u, return_logits=True)
            for threads in (1, 2, 3)]
    for samples, logits in runs[1:]:
        assert torch.equal(samples, runs[0][0]) and torch.equal(logits, runs[0][1])
    for b in (0, 10, 20):
        alone = make_net(R, 16, 24, L, 4, num_threads=1).infer(cond[:, b:b + 1], selectors=u[b:b + 1],
                                                               return_logits=True)
        assert torch.equal(alone[0], runs[0][0][b:b + 1]) and torch.equal(alone[1], runs[0][1][b:b + 1])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_nan_scan_finds_the_earliest_nan_like_torch(dtype):
    """The engine's threads look for NaN before a CPU call (engines.find_nan_cpu); it must name the
    same (stream, sample) as the PyTorch search, whatever the strides, block edges and threads."""
    from nvwavenet.inputs import find_nan_torch

    g = torch.Generator().manual_seed(9)
    layouts = {"contiguous": lambda c: c,
               "time outermost": lambda c: c.permute(3, 1, 2, 0).contiguous().permute(3, 1, 2, 0),
               "every other step": lambda c: torch.zeros(8, 5, 3, 400, dtype=dtype)[..., ::2].copy_(c)}
    clean = random_cond_input(4, 5, 3, 200, seed=9, dtype=dtype)
    for name, layout in layouts.items():
        assert engines.find_nan_cpu(layout(clean)) is None
        # 63, 64 and 127 sit at the edges of the scan's 64-step blocks; two NaNs share a sample.
        for places in ([(0, 0, 0, 0)], [(7, 4, 2, 199)], [(3, 2, 1, 64), (5, 1, 0, 64)], [(1, 3, 2, 63), (2, 0, 1, 127)],
                       [tuple(int(torch.randint(n, (1,), generator=g)) for n in (8, 5, 3, 200)) for _ in range(3)]):
            poisoned = clean.clone()
            for place in places:
                poisoned[place] = float("nan")
            expected = find_nan_torch(poisoned)
            assert expected is not None
            for threads in (1, 2, 3):
                assert engines.find_nan_cpu(layout(poisoned), threads) == expected, (name, places, threads)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_forked_child_gets_its_own_threads():
    """A fork()ed child (a DataLoader worker, say) has none of the parent's pool threads."""
    net = make_net(16, 16, 16, 3, 2, num_threads=2)
    cond = random_cond_input(16, 1, 3, 50)
    u = torch.rand(1, 50, generator=torch.Generator().manual_seed(6))
    parent = net.infer(cond, selectors=u)
    pid = os.fork()
    if pid == 0:  # the child: report through the exit status only
        os._exit(0 if torch.equal(net.infer(cond, selectors=u), parent) else 3)
    deadline = time.monotonic() + 60
    while (status := os.waitpid(pid, os.WNOHANG))[0] == 0:
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            pytest.fail("the forked child hung")
        time.sleep(0.01)
    assert os.waitstatus_to_exitcode(status[1]) == 0


def test_runs_the_compiled_engine(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("the CPU path ran the PyTorch reference")

    monkeypatch.setattr(nvwavenet.inference.reference, "incremental", refuse)
    net = make_net(8, 8, 8, 2, 2)
    assert net.infer(random_cond_input(8, 1, 2, 5)).shape == (1, 5)


def test_a_call_does_not_build_build_info(monkeypatch):
    """build_info() lists everything compiled; a call needs only the module and the instruction set."""
    net = make_net(8, 8, 8, 2, 2)
    cond, u = random_cond_input(8, 1, 2, 5), torch.rand(1, 5)
    expected = net.infer(cond, selectors=u)

    def refuse():
        raise AssertionError("build_info() built on a generation call")

    monkeypatch.setattr(engines.extension(), "build_info", refuse)
    assert torch.equal(net.infer(cond, selectors=u), expected)
    monkeypatch.setenv("NVWAVENET_CPU_ISA", "generic")
    assert net.infer(cond, selectors=u).shape == (1, 5)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
def test_avx512_equals_avx2_bit_for_bit(dtype, monkeypatch):
    """The AVX-512 products pair up 8-row blocks in one register but add each row's products in
    the AVX2 kernel's order: the same bits at every batch (tiles of 1 to 4 streams, several tiles,
    odd block counts going through the AVX2 kernel). With test_matches_reference running the best
    instruction set, this is also what keeps the AVX2 kernel tested on an AVX-512 machine."""
    if engines.extension().build_info()["cpu_isa"] != "avx512":
        pytest.skip("this CPU (or build) has no AVX-512")
    for R, S, A in [(64, 256, 256), (13, 24, 40), (24, 9, 17)]:
        net = make_net(R, S, A, dtype=dtype, seed=R, with_head_biases=True)
        for batch in (1, 2, 5, 9):
            cond = random_cond_input(R, batch, net.num_layers, 12, seed=batch)
            u = torch.rand(batch, 12, generator=torch.Generator().manual_seed(batch))
            results = {}
            for isa in ("avx512", "avx2+fma"):
                monkeypatch.setenv("NVWAVENET_CPU_ISA", isa)
                results[isa] = net.infer(cond, selectors=u, return_logits=True)
            assert torch.equal(results["avx512"][0], results["avx2+fma"][0]), (R, S, A, batch)
            assert torch.equal(results["avx512"][1], results["avx2+fma"][1]), (R, S, A, batch)


def test_build_info():
    info = nvwavenet.build_info()
    assert info["cpu_isa"] in ("avx512", "avx2+fma", "generic")
    assert info["cpu_threads"] >= 1


@pytest.mark.parametrize("sizes", [(64, 256, 256), (5, 7, 3)], ids=lambda s: "R%d-S%d-A%d" % s)
def test_generic_fallback(monkeypatch, sizes):
    R, S, A = sizes
    net = make_net(R, S, A)
    cond = random_cond_input(R, 3, net.num_layers, 24)
    u = torch.rand(3, 24, generator=torch.Generator().manual_seed(5))
    fast = net.infer(cond, selectors=u, return_logits=True)[1]
    monkeypatch.setenv("NVWAVENET_CPU_ISA", "generic")
    assert nvwavenet.build_info()["cpu_isa"] == "generic"
    compare_with_reference(net, cond)
    portable = net.infer(cond, selectors=u, return_logits=True)[1]
    assert float((fast - portable).norm() / fast.norm()) < 1e-5


def test_zero_samples():
    net = make_net(8, 8, 8, 2, 2)
    state = net.init_state(2)
    before = {key: value.clone() for key, value in state.items()}
    out, logits = net.infer(random_cond_input(8, 2, 2, 0), return_logits=True, state=state)
    assert out.shape == (2, 0) and logits.shape == (2, 8, 0)
    assert all(torch.equal(state[key], before[key]) for key in state)


# --- errors -----------------------------------------------------------------------------------

def test_error_unknown_isa(monkeypatch):
    monkeypatch.setenv("NVWAVENET_CPU_ISA", "avx9")
    with pytest.raises(ValueError, match="NVWAVENET_CPU_ISA: expected one of auto, avx512, avx2\\+fma, generic, got 'avx9'"):
        make_net(8, 8, 8, 2, 2).infer(random_cond_input(8, 1, 2, 3))
    C = engines.extension()
    p, keep = engine_params(make_net(8, 8, 8, 2, 2), random_cond_input(8, 1, 2, 3))
    with pytest.raises(ValueError, match="isa: expected 'auto', 'avx512', 'avx2\\+fma' or 'generic', got 'avx9'"):
        C.generate_cpu(p, "avx9")


def test_error_num_threads():
    with pytest.raises(ValueError, match="num_threads"):
        make_net(8, 8, 8, 2, 2, num_threads=0)


def test_error_state_dtype():
    net = make_net(8, 8, 8, 2, 2)
    state = net.init_state(1)
    state["queues"] = state["queues"].double()
    with pytest.raises(TypeError, match="state\\['queues'\\]"):
        net.infer(random_cond_input(8, 1, 2, 3), state=state)


def test_error_history_out_of_range():
    net = make_net(8, 8, 8, 2, 2)
    state = net.init_state(1)
    state["history"][0, 1] = 8
    with pytest.raises(ValueError, match="history.*expected classes in \\[0, 8\\).*8"):
        net.infer(random_cond_input(8, 1, 2, 3), state=state)


def engine_params(net, cond, **overrides):
    """Params for a direct _C.generate_cpu call, and the tensors they point into."""
    batch, samples = cond.shape[1], cond.shape[3]
    cpu = engines.CpuWeights.pack(net.weights, net.dtype)
    keep = {"cpu": cpu, "cond": cond, "u": torch.rand(batch, samples),
            "out": torch.empty(batch, samples, dtype=torch.int32), "state": net.init_state(batch)}
    p = engines.make_params(net.weights, cpu.packed, cond, keep["u"], keep["out"], keep["state"],
                            cpu_blocked=cpu.blocked)
    for name, value in overrides.items():
        setattr(p, name, value)
    return p, keep


def test_errors_in_params():
    net = make_net(8, 8, 8, 2, 2)
    cond = random_cond_input(8, 1, 2, 3)
    C = engines.extension()
    p, keep = engine_params(net, cond)
    C.generate_cpu(p)  # the unmodified params run
    cases = {
        "cpu_weights: null": {"cpu_weights": 0},
        "cpu_weights_bytes: expected": {"cpu_weights_bytes": 64},
        "packed for R=8 S=8 A=8 L=2 weight_dtype=0, but params has R=8 S=8 A=16": {
            "A": 16, "cpu_weights_bytes": C.cpu_packed_bytes(engine_params(make_net(8, 8, 16, 2, 2), cond)[0])},
        "weight_dtype=0, but params has R=8 S=8 A=8 L=2 weight_dtype=1": {
            "weight_dtype": C.DType.float16, "cpu_weights_bytes": C.cpu_packed_bytes(engine_params(make_net(8, 8, 8, 2, 2, dtype=torch.float16), cond)[0])},
        "max_dilation: expected a power of two": {"max_dilation": 3},
        "num_samples: expected >= 0": {"num_samples": -1},
        "position: 9223372036854775806 \\+ 3 samples would overflow int64": {"position": 2**63 - 2},
        "num_threads: expected >= 0": {"num_threads": -2},
        "queues: expected a host pointer, got null": {"queues": 0},
        "selectors: expected a host pointer, got null": {"selectors": 0},
        "L: expected 1 to 65536, got 0": {"L": 0},
    }
    for message, overrides in cases.items():
        bad, keep = engine_params(net, cond, **overrides)
        with pytest.raises(ValueError, match=message):
            C.generate_cpu(bad)
    teacher = torch.tensor([[0, 9, 0]], dtype=torch.int32)
    bad, keep = engine_params(net, cond, teacher=teacher.data_ptr(), teacher_stride_batch=3, teacher_stride_time=1)
    with pytest.raises(ValueError, match="teacher: expected classes in \\[0, 8\\), got 9"):
        C.generate_cpu(bad)
    with pytest.raises(ValueError, match="cpu_weights: expected a buffer of"):
        C.pack_cpu_weights(p, keep["cpu"].blocked.data_ptr(), 100)
