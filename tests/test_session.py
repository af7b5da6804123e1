"""Sessions: a pool of stream states addressed by slot, every stream at its own position
(``Params.slots`` / ``Params.positions``), on the CPU engine and the float64 reference."""
import random

import pytest
import torch

from nvwavenet import NVWaveNet, mu_law_decode, reference
from nvwavenet.engines import extension
from nvwavenet.session import Session
from nvwavenet.state import new_state
from nvwavenet.testing import random_cond_input, random_nv_wavenet_args

R, L, T = 8, 6, 48


@pytest.fixture(scope="module")
def net():
    return NVWaveNet(**random_nv_wavenet_args(R, 16, 32, L, 4, seed=11))


def _streams(count, seed):
    """Per stream: its conditioning (2R, 1, L, T) and selectors (1, T)."""
    g = torch.Generator().manual_seed(seed)
    return [(random_cond_input(R, 1, L, T, seed=seed * 100 + i), torch.rand(1, T, generator=g)) for i in range(count)]


def _run_schedule(session, streams, rng):
    """Runs every stream to T through ``session`` in turns: each turn a random subset of the running
    streams, in random order, takes a random number of steps together; streams join (admit) at
    random turns and leave (release) when done. Returns each stream's samples."""
    waiting = list(range(len(streams)))
    running: dict[int, tuple[int, int]] = {}  # stream -> (slot, steps done)
    out = [[] for _ in streams]
    while waiting or running:
        if waiting and (not running or rng.random() < 0.4) and session.free:
            stream = waiting.pop(0)
            running[stream] = (session.admit(), 0)
        members = [s for s in running if rng.random() < 0.7] or [next(iter(running))]
        rng.shuffle(members)
        n = min(rng.randint(1, 7), *(T - running[s][1] for s in members))
        slots = [running[s][0] for s in members]
        cond = torch.cat([streams[s][0][..., running[s][1]:running[s][1] + n] for s in members], dim=1)
        u = torch.cat([streams[s][1][:, running[s][1]:running[s][1] + n] for s in members])
        untouched = {slot: (session._queues[slot].clone(), session._history[slot].clone())
                     for slot in session.slots if slot not in slots}
        classes = session.step(slots, cond, u)
        for i, s in enumerate(members):
            out[s].append(classes[i].clone())
            slot, done = running[s]
            running[s] = (slot, done + n)
            assert session.position(slot) == done + n
            if done + n == T:
                session.release(slot)
                del running[s]
        for slot, (queues, history) in untouched.items():
            assert torch.equal(session._queues[slot], queues) and torch.equal(session._history[slot], history)
    return [torch.cat(parts) for parts in out]


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("threads", [1, None])
def test_streams_at_their_own_positions_equal_each_stream_alone(net, seed, threads):
    net = NVWaveNet(**random_nv_wavenet_args(R, 16, 32, L, 4, seed=11), num_threads=threads)
    streams = _streams(6, seed)
    session = Session(net, 4)
    got = _run_schedule(session, streams, random.Random(seed))
    for i, (cond, u) in enumerate(streams):
        assert torch.equal(got[i], net.infer(cond, selectors=u)[0]), f"stream {i}"
    assert session.free == 4 and session.slots == []


def test_logits_and_audio_of_a_step(net):
    (cond_a, u_a), (cond_b, u_b) = _streams(2, 5)
    session = Session(net, 3)
    a, b = session.admit(), session.admit()
    classes, logits, audio = session.step([b, a], torch.cat([cond_b, cond_a], dim=1), torch.cat([u_b, u_a]),
                                          logits=True, audio=True)
    alone, alone_logits = net.infer(cond_a, selectors=u_a, return_logits=True)
    assert torch.equal(classes[1], alone[0]) and torch.equal(logits[1], alone_logits[0])
    assert torch.equal(audio, mu_law_decode(classes, net.A))


def test_the_engine_matches_the_float64_reference_on_a_pool(net):
    """Streams at positions 0, 5 and 11 in rows 3, 0, 2 of a pool (row 1 idle), teacher-forced with
    the engine's own samples: the reference's logits within SPEC's float32 tolerance, and the rows
    of both pools equal to float32 rounding; the idle row untouched."""
    streams = _streams(3, 7)
    session = Session(net, 4)
    ref_pool = new_state(net.weights, 4, dtype=torch.float64)
    slots = [session.admit() for _ in range(4)]
    order, starts = [slots[3], slots[0], slots[2]], [0, 5, 11]
    for (cond, u), slot, start in zip(streams, order, starts):  # bring each stream to its position
        if start:
            drawn = session.step([slot], cond[..., :start], u[:, :start]).clone()
            reference.incremental_pool(net.weights, ref_pool, [slot], [0], cond[..., :start].double(), u[:, :start],
                                       teacher_forcing=drawn)
    n = 9
    cond = torch.cat([c[..., s:s + n] for (c, _), s in zip(streams, starts)], dim=1)
    u = torch.cat([v[:, s:s + n] for (_, v), s in zip(streams, starts)])
    classes, logits = session.step(order, cond, u, logits=True)
    ref_classes, ref_logits = reference.incremental_pool(net.weights, ref_pool, order, starts, cond.double(), u,
                                                         teacher_forcing=classes, return_logits=True)
    assert float((logits.double() - ref_logits).norm() / ref_logits.norm()) < 1e-4
    assert torch.allclose(session._queues.double(), ref_pool["queues"], atol=1e-4)
    assert torch.equal(session._history, ref_pool["history"])
    assert not bool(session._queues[slots[1]].any())


def test_the_reference_pool_equals_each_stream_alone(net):
    streams = _streams(2, 9)
    pool = new_state(net.weights, 3, dtype=torch.float64)
    first = reference.incremental_pool(net.weights, pool, [2], [0], streams[0][0][..., :4].double(), streams[0][1][:, :4])
    both_cond = torch.cat([streams[0][0][..., 4:10], streams[1][0][..., :6]], dim=1).double()
    both = reference.incremental_pool(net.weights, pool, [2, 0], [4, 0], both_cond,
                                      torch.cat([streams[0][1][:, 4:10], streams[1][1][:, :6]]))
    for i, got in enumerate([torch.cat([first[0], both[0]]), both[1]]):
        alone = reference.incremental(net.weights, streams[i][0][..., :got.numel()].double(),
                                      streams[i][1][:, :got.numel()])
        assert torch.equal(got, alone[0])


def test_session_misuse_names_the_argument(net):
    with pytest.raises(TypeError, match="net"):
        Session("net", 2)
    with pytest.raises(ValueError, match="max_streams"):
        Session(net, 0)
    with pytest.raises(ValueError, match="device"):
        Session(net, 1, device="meta")
    with pytest.raises(TypeError, match="dtype"):
        Session(net, 1, dtype=torch.int32)
    session = Session(net, 2)
    a = session.admit()
    session.admit()
    with pytest.raises(RuntimeError, match="max_streams=2"):
        session.admit()
    cond, u = _streams(1, 3)[0]
    with pytest.raises(ValueError, match=r"slots\[1\]: slot 5"):
        session.step([a, 5], torch.cat([cond, cond], dim=1), torch.cat([u, u]))
    with pytest.raises(ValueError, match="distinct"):
        session.step([a, a], torch.cat([cond, cond], dim=1), torch.cat([u, u]))
    with pytest.raises(TypeError, match="slots"):
        session.step(a, cond, u)
    with pytest.raises(ValueError, match="cond: expected shape"):
        session.step([a], cond[:R], u)
    with pytest.raises(TypeError, match="cond: expected dtype"):
        session.step([a], cond.double(), u)
    with pytest.raises(ValueError, match="selectors"):
        session.step([a], cond, u.double())
    with pytest.raises(ValueError, match="selectors"):
        session.step([a], cond, u[:, :3])
    session.release(a)
    with pytest.raises(ValueError, match="slot: slot 0 is not admitted"):
        session.release(a)
    with pytest.raises(ValueError, match="slot"):
        session.position(a)
    with pytest.raises(TypeError, match="slot"):
        session.release("0")
    assert session.admit() == a and session.position(a) == 0


def _raw_params(net, session, batch, samples):
    cond = random_cond_input(R, batch, L, samples)
    u = torch.rand(batch, samples)
    out = torch.empty(batch, samples, dtype=torch.int32)
    p = session._params
    p.batch, p.num_samples = batch, samples
    from nvwavenet.engines import set_cond
    set_cond(p, cond)
    p.selectors, (p.selectors_stride_batch, p.selectors_stride_time) = u.data_ptr(), u.stride()
    p.samples, (p.samples_stride_batch, p.samples_stride_time) = out.data_ptr(), out.stride()
    return p, (cond, u, out)


@pytest.mark.parametrize("slots, positions, message", [
    ([0, 3], [0, 0], r"slots: expected pool rows in \[0, 3\), got 3"),
    ([-1, 0], [0, 0], r"slots: expected pool rows in \[0, 3\), got -1"),
    ([1, 1], [0, 0], "slots: expected distinct pool rows, got row 1 twice"),
    ([0, 1], [0, -2], "positions: expected >= 0, got -2"),
    ([0, 1], [0, 2**63 - 2], "positions: 9223372036854775806 \\+ 4 samples would overflow int64"),
])
def test_the_engine_refuses_bad_slots_and_positions(net, slots, positions, message):
    session = Session(net, 3)
    p, keep = _raw_params(net, session, 2, 4)
    slot_array = torch.tensor(slots, dtype=torch.int32)
    position_array = torch.tensor(positions, dtype=torch.int64)
    p.slots, p.positions = slot_array.data_ptr(), position_array.data_ptr()
    before = session._queues.clone()
    with pytest.raises(ValueError, match=message):
        extension().generate_cpu(p, "auto")
    assert torch.equal(session._queues, before)


def test_the_engine_refuses_a_pool_smaller_than_the_batch_without_slots(net):
    session = Session(net, 2)
    p, keep = _raw_params(net, session, 3, 2)
    with pytest.raises(ValueError, match="pool_rows: expected at least batch = 3"):
        extension().generate_cpu(p, "auto")


def test_state_values_are_checked_where_they_enter_not_per_call(net, monkeypatch):
    import nvwavenet.state as state_module

    scans = []
    check_finite = state_module.check_finite
    monkeypatch.setattr(state_module, "check_finite", lambda *args: (scans.append(1), check_finite(*args)))
    cond, u = _streams(1, 4)[0]
    state = net.init_state(1)
    for start in range(0, 12, 4):  # the engines' own writes leave the state known good
        net.infer(cond[..., start:start + 4], selectors=u[:, start:start + 4], state=state)
    assert scans == []
    state["queues"][0, 0, 0] = float("nan")  # a PyTorch write: checked again where it enters
    with pytest.raises(ValueError, match=r"state\['queues'\]"):
        net.infer(cond[..., 12:16], selectors=u[:, 12:16], state=state)
    assert scans == [1]


def test_the_compiled_variant_table_is_impls():
    from nvwavenet.engines import CUDA_VARIANTS, Impl

    assert extension().build_info()["variants"] == CUDA_VARIANTS
    assert CUDA_VARIANTS == {v.name: v.value for v in Impl if v != Impl.AUTO}


def test_streams_with_fewer_steps_share_a_call(net):
    """Per-stream steps: each stream equals itself alone and its position advances by its own steps."""
    n = 6
    streams = _streams(3, 12)
    # Zero steps past each stream's end fill the window of a call; no stream runs them.
    padded = [(torch.cat([c, torch.zeros_like(c[..., :n])], dim=3), torch.cat([v, torch.zeros_like(v[:, :n])], dim=1))
              for c, v in streams]
    session = Session(net, 3)
    slots = [session.admit() for _ in streams]
    done, out, rng = [0, 0, 0], [[], [], []], random.Random(3)
    while min(done) < T:
        steps = [min(rng.randint(0, n), T - d) for d in done]
        cond = torch.cat([c[..., d:d + n] for (c, _), d in zip(padded, done)], dim=1)
        u = torch.cat([v[:, d:d + n] for (_, v), d in zip(padded, done)])
        classes = session.step(slots, cond, u, steps=steps)
        for i, k in enumerate(steps):
            out[i].append(classes[i, :k].clone())
            done[i] += k
            assert session.position(slots[i]) == done[i]
    for i, (cond, u) in enumerate(streams):
        assert torch.equal(torch.cat(out[i]), net.infer(cond, selectors=u)[0]), f"stream {i}"


def test_outputs_past_a_streams_steps_are_untouched(net):
    (cond, u), = _streams(1, 13)
    session = Session(net, 2)
    a, b = session.admit(), session.admit()
    both_cond, both_u = torch.cat([cond[..., :5], cond[..., :5]], dim=1), torch.cat([u[:, :5], u[:, :5]])
    classes = session.step([a, b], both_cond, both_u)
    classes.fill_(-7)
    session.step([a, b], both_cond, both_u, steps=[5, 2])
    assert bool((classes[1, 2:] == -7).all()) and bool((classes[0] >= 0).all())
    assert session.position(a) == 10 and session.position(b) == 7
    with pytest.raises(ValueError, match=r"steps: expected values in \[0, num_samples = 5\], got 6"):
        session.step([a, b], both_cond, both_u, steps=[6, 0])
    with pytest.raises(TypeError, match="steps: expected one step count"):
        session.step([a, b], both_cond, both_u, steps=[1.5, 0])
    with pytest.raises(ValueError, match="steps: expected 2 step counts"):
        session.step([a, b], both_cond, both_u, steps=[1])
    assert session.position(a) == 10 and session.position(b) == 7


@pytest.mark.skipif(not extension().build_info()["cuda"], reason="nvwavenet was built without CUDA kernels")
def test_a_status_block_read_back_after_the_kernel_becomes_the_kernels_error():
    import struct

    from nvwavenet.engines import STATUS_BYTES, cuda_status_error

    ok = torch.zeros(STATUS_BYTES, dtype=torch.uint8)
    assert cuda_status_error(ok, "DUAL_BLOCK") is None
    timeout = torch.frombuffer(bytearray(struct.pack("<iiiiqQQ", 1, 1, 1, 3, 17, 4, 5)), dtype=torch.uint8)
    message = cuda_status_error(timeout, "DUAL_BLOCK")
    assert message.startswith("nvwavenet DUAL_BLOCK kernel stopped: block 3, the residual block waiting")
    assert "at step 17" in message


def test_a_stream_moves_between_a_session_and_the_whole_batch_state_api(net, tmp_path):
    from nvwavenet.state import load_state, save_state

    (cond, u), = _streams(1, 14)
    session = Session(net, 2)
    slot = session.admit()
    first = session.step([slot], cond[..., :9], u[:, :9]).clone()
    save_state(session.export(slot), tmp_path / "stream.safetensors")
    state = load_state(tmp_path / "stream.safetensors")
    rest = net.infer(cond[..., 9:20], selectors=u[:, 9:20], state=state)
    other = Session(net, 3)
    other.admit()
    moved = other.admit(session.export(slot))
    assert other.position(moved) == 9
    tail = other.step([moved], cond[..., 9:], u[:, 9:])
    alone = net.infer(cond, selectors=u)[0]
    assert torch.equal(torch.cat([first[0], rest[0]]), alone[:20])
    assert torch.equal(torch.cat([first[0], tail[0]]), alone)
    assert int(state["position"]) == 20
    with pytest.raises(ValueError, match=r"state\['queues'\]: expected shape"):
        other.admit(net.init_state(2))
    bad = session.export(slot)
    bad["history"][0, 0] = net.A
    with pytest.raises(ValueError, match=r"state\['history'\]"):
        other.admit(bad)
    assert other.free == 1


def test_float16_conditioning_with_any_strides(net):
    (cond, u), = _streams(1, 15)
    half = cond.half()
    strided = half.permute(3, 1, 2, 0).contiguous().permute(3, 1, 2, 0)  # time-major in memory
    session = Session(net, 1)
    slot = session.admit()
    got = session.step([slot], strided, u.t().contiguous().t()).clone()
    assert torch.equal(got, net.infer(half, selectors=u))


def test_kept_outputs_are_bounded_in_count_and_bytes(net):
    """A session keeps outputs for later calls of the same shape, but not without bound: after calls
    of many slot sets and lengths, with logits (batch x A x samples float32), the buffers still
    alive are at most OUTPUTS_KEPT and OUTPUT_BYTES_KEPT bytes beyond the latest call's."""
    import itertools
    import weakref

    from nvwavenet.session import OUTPUT_BYTES_KEPT, OUTPUTS_KEPT

    session = Session(net, 4)
    slots = [session.admit() for _ in range(4)]
    alive = []  # weak references to every buffer a call returned; the caller keeps none

    def call(members, samples):
        cond = torch.zeros(2 * R, len(members), L, samples)
        classes, logits = session.step(list(members), cond, torch.zeros(len(members), samples), logits=True)
        alive.extend((weakref.ref(classes), weakref.ref(logits)))
        return classes.nbytes + logits.nbytes

    # Every ordered set of the 4 slots (64), two lengths each: 128 call shapes.
    for size in range(1, 5):
        for members in itertools.permutations(slots, size):
            for samples in (1, 2):
                call(members, samples)
    live = [ref() for ref in alive if ref() is not None]
    assert len(live) <= 2 * OUTPUTS_KEPT
    # Large logits: (1 x 32 x 70000) float32 is 8.96 MB a call.
    big = 70_000
    for i in range(2 * OUTPUT_BYTES_KEPT // (net.A * big * 4) + 2):
        last = call([slots[i % 4]], big + i)
    live_bytes = sum(ref().nbytes for ref in alive if ref() is not None)
    assert live_bytes <= OUTPUT_BYTES_KEPT + last
    # The steady state keeps its buffers: the same call shape gets the same tensors back.
    first = session.step([slots[0]], torch.zeros(2 * R, 1, L, 3), torch.zeros(1, 3))
    assert session.step([slots[0]], torch.zeros(2 * R, 1, L, 3), torch.zeros(1, 3)) is first
