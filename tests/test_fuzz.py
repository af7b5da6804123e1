"""Property-based fuzzing of every public entry point and file reader (issue 20).

Each property draws hostile inputs on purpose (crafted WAV headers, damaged safetensors and JSON,
states with huge positions or NaN queues, zero-stride tensors of absurd sizes, numpy and
big-endian arrays, wrong widths, non-finite and absurd CLI options) and allows exactly what the
project documents: success with a sane result, or a ValueError / TypeError / RuntimeError whose
message names the argument, field or file (for the CLI: exit code 2, one line on stderr, no
traceback). Anything else fails: another exception (MemoryError, RecursionError, KeyError,
SafetensorError...), a call past its time bound, or a crashed process.

Bounds: hypothesis runs derandomized (the same cases every run, so CI is reproducible) with a
fixed ``max_examples`` per property; the whole file takes a few minutes on 2 cores. Calls that can
reach the compiled engine run in a child process (``python tests/test_fuzz.py PROPERTY``) under a
watchdog, so a segfault, an abort or a hang in C++ fails that property instead of killing pytest;
the last case started is written to a file so a crash names it. Memory is bounded by a soft
address-space limit (not under AddressSanitizer, whose shadow memory needs the address space).
The number of cases tried is reported at the end of the run.

``scripts/sanitize_cpu.sh`` runs this file, and the CPU engine's tests, against a build with
AddressSanitizer and UBSan.
"""
from __future__ import annotations

import contextlib
import faulthandler
import io
import json
import math
import os
import re
import resource
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

import nvwavenet
from nvwavenet import NVWaveNet, Impl, build_check
from nvwavenet.audio import AudioConfig, read_wav, write_wav
from nvwavenet.checkpoint import load_model, save_model
from nvwavenet.cli import main as cli_main
from nvwavenet.mel import MelConfig, MelSpectrogram, load_mel_npy
from nvwavenet.model import WaveNet
from nvwavenet.state import concat_states, copy_state, load_state, move_to_position, save_state, select_streams
from nvwavenet.testing import compare_with_reference, random_cond_input, random_nv_wavenet_args
from nvwavenet.vocoder import Vocoder

DOCUMENTED = (ValueError, TypeError, RuntimeError)
UNDER_ASAN = "asan" in os.environ.get("LD_PRELOAD", "")
# A case that takes longer than this (seconds) counts as a hang; the largest legitimate cases
# (a tiny training run, a 0.3 s vocoding) take about a second.
CASE_SECONDS = 20.0 if UNDER_ASAN else 10.0
# Address space a case may add to what the process already maps: absurd sizes must be refused,
# not attempted.
MEMORY_HEADROOM = 6 << 30

TRIED: Counter = Counter()  # cases per property
OUTCOMES: Counter = Counter()  # calls accepted and refused, so a run shows it is not all refusals
CASE_LOG = os.environ.get("NVWAVENET_FUZZ_CASE_LOG")


def fuzz(max_examples: int):
    """Hypothesis settings of this file: the same cases every run, no deadline (the per-case time
    bound is CASE_SECONDS), no example database written into the checkout, and no shrinking: every
    case is described in its failure message already, and shrinking replays a case that hangs
    dozens of times."""
    return settings(max_examples=max_examples, deadline=None, derandomize=True, database=None,
                    suppress_health_check=list(HealthCheck), print_blob=False,
                    phases=[Phase.explicit, Phase.generate])


# --- the harness -----------------------------------------------------------------------------------

class Hang(AssertionError):
    pass


@contextlib.contextmanager
def bounded(what: str, seconds: float = CASE_SECONDS):
    """Fail with Hang when the body runs past ``seconds``: interrupted by SIGALRM where Python code
    runs, and checked afterwards for a C call that SIGALRM cannot interrupt."""
    def interrupt(signum, frame):
        raise Hang(f"{what}: still running after {seconds} s")

    previous = signal.signal(signal.SIGALRM, interrupt)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    start = time.monotonic()
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
    if time.monotonic() - start > seconds:
        raise Hang(f"{what}: took {time.monotonic() - start:.1f} s, more than {seconds} s")


def case(name: str, description) -> None:
    """Count a case; in a child process, also record it, so that a crash names the case."""
    TRIED[name] += 1
    if CASE_LOG:
        Path(CASE_LOG).write_text(f"{name}: {description!r}\n"[:4000])
        # Compiled code ignores SIGALRM: past twice the bound, dump every thread's stack and exit.
        faulthandler.dump_traceback_later(2 * CASE_SECONDS, exit=True)


def attempt(what: str, call, *names: str, errors=DOCUMENTED):
    """``call()``'s result, or the documented exception it raised (returned, not raised), after
    checking that its message names one of ``names``. Any other exception fails the case."""
    try:
        with bounded(what):
            result = call()
        OUTCOMES["accepted"] += 1
        return result
    except Hang:
        raise
    except errors as error:
        OUTCOMES["refused"] += 1
        message = str(error)
        assert message.strip(), f"{what}: {type(error).__name__} with an empty message"
        assert any(name in message for name in names), (
            f"{what}: {type(error).__name__} does not name any of {names}: {message}")
        return error
    except Exception as error:
        raise AssertionError(f"{what}: undocumented {type(error).__name__} escaped: {error}") from error


def refused(outcome) -> bool:
    return isinstance(outcome, Exception)


@pytest.fixture(scope="module", autouse=True)
def report_and_limit_memory(terminal_summary):
    """Bound the address space while the fuzz cases run, and report how many were tried (at the
    end of the run: written here, the line broke pytest's progress line)."""
    start = time.monotonic()
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    if not UNDER_ASAN:
        resource.setrlimit(resource.RLIMIT_AS, (min(hard, _mapped_bytes() + MEMORY_HEADROOM), hard))
    yield
    resource.setrlimit(resource.RLIMIT_AS, (soft, hard))
    per_property = ", ".join(f"{name} {count}" for name, count in sorted(TRIED.items()))
    terminal_summary.append(f"fuzz: {sum(TRIED.values())} cases in {time.monotonic() - start:.0f} s, "
                            f"{OUTCOMES['accepted']} calls accepted and {OUTCOMES['refused']} refused ({per_property})")


def _mapped_bytes() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmSize:"):
            return int(line.split()[1]) * 1024
    return 0


CHILD_PROPERTIES: dict = {}


def in_child(seconds: float):
    """Run the property in a child process under a watchdog: a crash or a hang in compiled code
    fails the test with the last case started, instead of taking pytest down."""
    def wrap(prop):
        CHILD_PROPERTIES[prop.__name__] = (prop, seconds)

        def test(tmp_path):
            log = tmp_path / "last_case.txt"
            env = {**os.environ, "NVWAVENET_FUZZ_CASE_LOG": str(log),
                   "PYTHONPATH": str(Path(nvwavenet.__file__).resolve().parents[1])}
            limit = None if UNDER_ASAN else _limit_child_memory
            try:
                result = subprocess.run([sys.executable, __file__, prop.__name__], capture_output=True, text=True,
                                        env=env, timeout=seconds + 30, preexec_fn=limit)
            except subprocess.TimeoutExpired as timeout:
                pytest.fail(f"{prop.__name__}: the child hung; last case: "
                            f"{log.read_text() if log.exists() else 'none'}\n{timeout.stderr}")
            counted = [line.split() for line in result.stdout.splitlines() if line.startswith("fuzz-cases ")]
            if counted:
                cases, accepted, refused_calls = map(int, counted[-1][1:])
                TRIED[prop.__name__.removeprefix("test_")] += cases
                OUTCOMES.update(accepted=accepted, refused=refused_calls)
            if result.returncode != 0:
                how = (f"killed by signal {-result.returncode}" if result.returncode < 0
                       else f"exit code {result.returncode}")
                pytest.fail(f"{prop.__name__}: the child failed ({how}); last case: "
                            f"{log.read_text() if log.exists() else 'none'}\n"
                            f"{result.stdout[-6000:]}\n{result.stderr[-6000:]}", pytrace=False)

        test.__name__ = prop.__name__
        test.__doc__ = prop.__doc__
        return test
    return wrap


def _limit_child_memory():
    resource.setrlimit(resource.RLIMIT_AS, (8 << 30, resource.RLIM_INFINITY))


# --- hostile values --------------------------------------------------------------------------------

R, S, A, L, MAX_DILATION = 8, 16, 16, 3, 2
BASE_ARGS = random_nv_wavenet_args(R, S, A, L, MAX_DILATION, seed=1)
HUGE = 2**40


def tensor_variants(value: torch.Tensor):
    """``(label, variant, canonical)`` for a valid float tensor: ``canonical`` is the float64
    tensor the variant stands for when it is valid input, else None."""
    array = value.numpy()
    canonical = value.double()
    expanded_row = value.reshape(-1)[:1].expand(value.shape)
    nan = value.clone()
    nan.view(-1)[value.numel() // 2] = float("nan")
    inf = value.clone()
    inf.view(-1)[0] = float("inf")
    return [
        ("numpy", array, canonical),
        ("numpy big-endian", array.astype(array.dtype.newbyteorder(">")), canonical),
        ("numpy float16", array.astype(np.float16), torch.from_numpy(array.astype(np.float16)).double()),
        # Accepted as every numpy array is; torch cannot wrap negative strides itself.
        ("numpy negative strides", np.ascontiguousarray(array[::-1])[::-1], canonical),
        ("numpy negative strides, 2^40 rows", np.broadcast_to(array.reshape(-1)[:2], (HUGE, 2))[:, ::-1], None),
        ("float64", value.double(), canonical),
        ("nested lists", value.tolist(), canonical),
        ("non-contiguous", value.double().t().contiguous().t() if value.dim() == 2 else value.double(), canonical),
        ("zero-stride expanded", expanded_row, expanded_row.double()),
        ("expanded to 2^40 rows", value.reshape(-1)[:1].expand(HUGE, *value.shape[1:]), None),
        ("transposed", value.t() if value.dim() == 2 and value.shape[0] != value.shape[1] else value[..., :-1], None),
        ("flattened", value.reshape(-1), None if value.dim() > 1 else canonical),
        ("extra dimension", value[None], None),
        ("one fewer row", value[:-1], None),
        ("int32", value.int(), None),
        ("bool", value > 0, None),
        ("complex", value.to(torch.complex64), None),
        ("NaN", nan, None),
        ("inf", inf, None),
        ("empty", torch.empty(0), None),
        ("string", "weights", None),
        ("None", None, None),
    ]


def _tensor_variant(draw, value):
    return draw(st.sampled_from(tensor_variants(value)))


def _arg_variant(draw, name: str):
    """``(label, hostile value, canonical or None)`` for NVWaveNet argument ``name``."""
    value = BASE_ARGS[name]
    if name == "max_dilation":
        return draw(st.sampled_from([
            ("numpy int64", np.int64(value), value), ("numpy int32", np.int32(value), value), ("float", 2.0, None),
            ("bool", True, None), ("zero", 0, None), ("not a power of two", 3, None), ("negative", -2, None),
            ("2^62", 2**62, None), ("string", "2", None), ("None", None, None)]))
    if name == "use_embed_tanh":
        return draw(st.sampled_from([("False", False, False), ("numpy bool", np.bool_(True), True),
                                     ("int", 1, None), ("None", None, None), ("string", "yes", None)]))
    if isinstance(value, list):
        kind = draw(st.sampled_from(["entry", "tuple", "drop", "extra", "stacked", "empty", "not a list"]))
        if kind == "entry":
            index = draw(st.integers(0, len(value) - 1))
            label, variant, canonical = _tensor_variant(draw, value[index])
            listed = list(value)
            listed[index] = variant
            return (f"[{index}] {label}", listed,
                    None if canonical is None else [canonical if i == index else v.double() for i, v in enumerate(value)])
        if kind == "tuple":
            return ("tuple", tuple(value), [v.double() for v in value])
        if kind == "drop":
            return ("one layer fewer", value[:-1], None)
        if kind == "extra":
            return ("one layer more", value + value[:1], None)
        if kind == "stacked":
            return ("one stacked tensor", torch.stack(value), None)
        return ("empty list", [], None) if kind == "empty" else ("not a list", 3, None)
    return _tensor_variant(draw, value)


# --- NVWaveNet(...) --------------------------------------------------------------------------------

@fuzz(200)
@given(st.data())
def test_nv_wavenet_arguments(data):
    """One argument replaced by a hostile variant: valid variants (numpy, big-endian, float16,
    float64, nested lists, strided, numpy integer scalars) build the same network; the others are
    refused naming the argument."""
    name = data.draw(st.sampled_from([k for k in BASE_ARGS]))
    label, variant, canonical = _arg_variant(data.draw, name)
    case("nv_wavenet_arguments", (name, label))
    outcome = attempt(f"NVWaveNet({name}={label})", lambda: NVWaveNet(**{**BASE_ARGS, name: variant}), name)
    if canonical is not None:
        assert not refused(outcome), f"NVWaveNet({name}={label}) refused valid input: {outcome}"
    if refused(outcome):
        return
    expected = NVWaveNet(**{**BASE_ARGS, name: canonical}) if canonical is not None else None
    if expected is not None:
        for field in ("embed_prev", "embed_curr", "dilate_w", "dilate_b", "res_w", "res_b", "skip_w", "skip_b",
                      "out_w", "end_w"):
            assert torch.equal(getattr(outcome.weights, field), getattr(expected.weights, field)), (name, label, field)


def test_wrong_width_names_both_arguments():
    """When two arguments disagree, the message names both (issue 20: an embedding_curr of the
    wrong width was reported as embedding_prev's fault)."""
    case("wrong_width", "embedding_curr")
    args = {**BASE_ARGS, "embedding_curr": BASE_ARGS["embedding_curr"][:, :-1]}
    with pytest.raises(ValueError) as error:
        NVWaveNet(**args)
    assert "embedding_curr" in str(error.value) and "embedding_prev" in str(error.value), str(error.value)


# --- infer, the state helpers and the engine (in a child process) --------------------------------

NET = None


def _net() -> NVWaveNet:
    global NET
    if NET is None:
        NET = NVWaveNet(**BASE_ARGS, num_threads=2)
    return NET


def _cond_variant(draw, batch, samples):
    cond = random_cond_input(R, batch, L, samples, seed=draw(st.integers(0, 9)))
    one_sample = random_cond_input(R, 1, L, 1)
    nan = cond.clone()
    if samples:
        nan[draw(st.integers(0, 2 * R - 1)), draw(st.integers(0, batch - 1)), 0, draw(st.integers(0, samples - 1))] = math.nan
    options = [
        ("contiguous", cond, cond),
        ("float16", cond.half(), cond.half()),
        ("channels last in memory", cond.permute(3, 1, 2, 0).contiguous().permute(3, 1, 2, 0), cond),
        ("time step 2", torch.repeat_interleave(cond, 2, dim=3)[..., ::2], cond),
        ("zero-stride batch", cond[:, :1].expand(-1, batch, -1, -1), cond[:, :1].expand(-1, batch, -1, -1).contiguous()),
        ("expanded to 10^9 streams", one_sample.expand(-1, 10**9, -1, -1), None),
        ("expanded to 10^12 samples", one_sample.expand(-1, 1, -1, 10**12), None),
        ("NaN", nan, None),
        ("inf", cond.masked_fill(cond > 2.5, math.inf), "inf"),
        ("float64", cond.double(), None),
        ("int", cond.int(), None),
        ("numpy", cond.numpy(), None),
        ("3-D", cond[:, :, 0], None),
        ("wrong channels", cond[:-2], None),
        ("wrong layers", cond[:, :, :-1], None),
        ("no streams", cond[:, :0], None),
    ]
    return draw(st.sampled_from(options))


def _state_variant(draw, net, batch):
    state = net.init_state(batch)
    state["queues"].normal_()
    label = draw(st.sampled_from([
        "fresh", "position 2^63-1", "position 2^63-3", "position -1", "NaN queues", "inf queues",
        "float64 queues", "non-contiguous queues", "history out of range", "history int64", "wrong batch",
        "missing key", "extra key", "position float", "queues a list", "not a dict"]))
    if label.startswith("position 2^63"):
        state["position"].fill_(2**63 - int(label[-1]))
    elif label == "position -1":
        state["position"].fill_(-1)
    elif label == "NaN queues":
        state["queues"][0, 0, 0] = math.nan
    elif label == "inf queues":
        state["queues"][-1, -1, -1] = math.inf
    elif label == "float64 queues":
        state["queues"] = state["queues"].double()
    elif label == "non-contiguous queues":
        state["queues"] = state["queues"].transpose(1, 2).contiguous().transpose(1, 2)
    elif label == "history out of range":
        state["history"][0, 1] = A + 3
    elif label == "history int64":
        state["history"] = state["history"].long()
    elif label == "wrong batch":
        state = net.init_state(batch + 1)
    elif label == "missing key":
        del state["history"]
    elif label == "extra key":
        state["extra"] = torch.zeros(1)
    elif label == "position float":
        state["position"] = torch.tensor(3.0)
    elif label == "queues a list":
        state["queues"] = state["queues"].tolist()
    elif label == "not a dict":
        state = list(state.values())
    return label, state


@in_child(seconds=120)
@fuzz(150)
@given(st.data())
def test_infer(data):
    """infer with hostile conditioning, selectors, teacher forcing, priming, state and flags: a
    valid call gives int32 classes in range that do not depend on the memory layout of its
    inputs; everything else is refused naming the argument."""
    net = _net()
    batch, samples = data.draw(st.integers(1, 3)), data.draw(st.integers(0, 12))
    cond_label, cond, plain = _cond_variant(data.draw, batch, samples)
    kwargs = {}
    names = ["cond_input"]
    extra = data.draw(st.sampled_from(["none", "selectors", "teacher_forcing", "prime", "state", "implementation",
                                       "return_logits", "generator"]))
    u = torch.rand(batch, samples, generator=torch.Generator().manual_seed(0))
    kwargs["selectors"] = u
    label = ""
    if extra == "selectors":
        label, kwargs["selectors"] = data.draw(st.sampled_from([
            ("equal to 1", torch.ones(batch, samples)), ("negative", -u), ("NaN", u * math.nan),
            ("float64", u.double()), ("int", (u * 10).int()), ("wrong shape", u.t()), ("numpy", u.numpy()),
            ("expanded", u[:1].expand(batch, samples))]))
    elif extra in ("teacher_forcing", "prime"):
        classes = torch.randint(0, A, (batch, samples), generator=torch.Generator().manual_seed(1))
        label, kwargs[extra] = data.draw(st.sampled_from([
            ("valid", classes), ("int64 strided", classes.long().t().contiguous().t()), ("out of range", classes + A),
            ("negative", classes - A), ("float", classes.float()), ("bool", classes > 3), ("one step more",
                                                                                          torch.zeros(batch, samples + 1, dtype=torch.int32)),
            ("numpy", classes.numpy())]))
    elif extra == "state":
        label, kwargs["state"] = _state_variant(data.draw, net, batch)
    elif extra == "implementation":
        label = data.draw(st.sampled_from(["PERSISTENT", "int 1", "string", "None"]))
        implementation = {"PERSISTENT": Impl.PERSISTENT, "int 1": 1, "string": "auto", "None": None}[label]
    elif extra == "return_logits":
        label = data.draw(st.sampled_from(["True", "1", "None"]))
        kwargs["return_logits"] = {"True": True, "1": 1, "None": None}[label]
    elif extra == "generator":
        del kwargs["selectors"]
        label = data.draw(st.sampled_from(["seeded", "not a generator"]))
        kwargs["generator"] = torch.Generator().manual_seed(3) if label == "seeded" else 3
    if extra != "implementation":
        implementation = Impl.AUTO
    names.append(extra)
    case("infer", (batch, samples, cond_label, extra, label))
    names += ["state", "position"] if extra == "state" else []
    outcome = attempt(f"infer(cond {cond_label}, {extra} {label})",
                      lambda: net.infer(cond, implementation, **kwargs), *names)
    if plain is not None and extra == "none":
        assert not refused(outcome), f"infer refused valid conditioning ({cond_label}): {outcome}"
    if refused(outcome):
        return
    classes = outcome[0] if isinstance(outcome, tuple) else outcome
    assert classes.dtype == torch.int32 and tuple(classes.shape) == (batch, samples), (cond_label, classes.shape)
    assert bool(((classes >= 0) & (classes < A)).all())
    if isinstance(plain, torch.Tensor) and extra in ("none", "selectors", "teacher_forcing", "prime"):
        again = net.infer(plain.contiguous(), **kwargs)
        assert torch.equal(classes, again), f"the output depends on the layout of cond_input ({cond_label})"


@in_child(seconds=120)
@fuzz(40)
@given(R=st.integers(1, 20), S=st.integers(1, 40), A=st.integers(2, 40), L=st.integers(1, 5),
       log_dilation=st.integers(0, 3), batch=st.integers(1, 5), samples=st.integers(1, 24),
       dtype=st.sampled_from([torch.float32, torch.float16, torch.bfloat16]), threads=st.sampled_from([1, 2, None]),
       seed=st.integers(0, 2**16))
def test_engine_matches_reference_at_awkward_sizes(R, S, A, L, log_dilation, batch, samples, dtype, threads, seed):
    """The CPU engine against the float64 reference (SPEC section 4) at sizes no kernel block
    divides (R, S, A of 1 to 40), any thread count, every weight precision."""
    case("engine_sizes", (R, S, A, L, 2**log_dilation, batch, samples, dtype, threads))
    # Head biases: a tiny network without them can output all-zero logits, whose relative error is 0/0.
    net = NVWaveNet(**random_nv_wavenet_args(R, S, A, L, 2**log_dilation, seed=seed, with_head_biases=True),
                    dtype=dtype, num_threads=threads)
    cond = random_cond_input(R, batch, L, samples, seed=seed)
    with bounded("compare_with_reference"):
        compare_with_reference(net, cond, seed=seed)


@in_child(seconds=90)
@fuzz(60)
@given(st.data())
def test_state_helpers(data):
    """copy_state, select_streams, reset_streams, concat_states and move_to_position with hostile
    states and stream indices: documented errors, or states that generation accepts."""
    net = _net()
    batch = data.draw(st.integers(1, 3))
    label, state = _state_variant(data.draw, net, batch)
    streams_label, streams = data.draw(st.sampled_from([
        ("0", 0), ("all", list(range(batch))), ("numpy int64", np.int64(0)), ("tensor", torch.tensor([0])),
        ("out of range", batch), ("negative", -1), ("float", 0.5), ("bool", True), ("string", "0"), ("None", None),
        ("2^70", 2**70), ("empty", [])]))
    position = data.draw(st.sampled_from([0, 5, 2**62, -1, np.int64(7), 2.0, 2**64]))
    helper = data.draw(st.sampled_from(["copy", "select", "reset", "concat", "move"]))
    case("state_helpers", (label, helper, streams_label, position))
    calls = {
        "copy": lambda: copy_state(state),
        "select": lambda: select_streams(state, streams),
        "reset": lambda: net.reset_streams(state, streams),
        "concat": lambda: concat_states([state, net.init_state(1)], net.weights.dilations),
        "move": lambda: move_to_position(state, position, net.weights.dilations),
    }
    outcome = attempt(f"{helper} state ({label}, streams {streams_label}, position {position})", calls[helper],
                      "state", "streams", "position", "states[")
    if refused(outcome) or helper == "reset":
        return
    new = outcome
    cond = random_cond_input(R, new["queues"].shape[0], L, 4)
    attempt(f"infer after {helper} ({label})", lambda: net.infer(cond, state=new), "state", "position")


def _safetensors_header(blob: bytes) -> tuple[dict, bytes]:
    size = struct.unpack("<Q", blob[:8])[0]
    return json.loads(blob[8:8 + size]), blob[8 + size:]


def _with_header(header: dict, body: bytes) -> bytes:
    text = json.dumps(header).encode()
    return struct.pack("<Q", len(text)) + text + body


# Damage that no reader may accept (a flipped byte in the data, or a scalar's "larger" shape, may still load).
ALWAYS_REFUSED_DAMAGE = ("overlapping", "offsets past the end", "shape 2^40")


def damage_safetensors(draw, blob: bytes) -> tuple[str, bytes]:
    """A damaged copy of safetensors ``blob``, with what was done to it."""
    header, body = _safetensors_header(blob)
    names = sorted(k for k in header if k != "__metadata__")
    name = draw(st.sampled_from(names))
    kind = draw(st.sampled_from(["truncated", "flipped byte", "dtype I32", "dtype F64", "dtype BOOL", "overlapping",
                                 "offsets past the end", "shape larger", "shape 2^40", "header size huge",
                                 "header not JSON", "deep nesting", "empty file", "metadata not strings"]))
    entry = header[name]
    if kind == "truncated":
        return kind, blob[:draw(st.integers(0, len(blob) - 1))]
    if kind == "flipped byte":
        at = draw(st.integers(0, len(blob) - 1))
        return kind, blob[:at] + bytes([blob[at] ^ 0xFF]) + blob[at + 1:]
    if kind.startswith("dtype"):
        entry["dtype"] = kind.split()[1]
        if kind == "dtype F64":  # twice the bytes: shrink the shape so the sizes still agree
            entry["shape"] = [math.prod(entry["shape"]) // 2] if math.prod(entry["shape"]) % 2 == 0 else entry["shape"]
        if kind == "dtype BOOL":
            entry["shape"] = [math.prod(entry["shape"]) * 4]
    elif kind == "overlapping":  # shifted onto its neighbour's bytes, its own size kept
        begin, end = entry["data_offsets"]
        shift = draw(st.integers(1, max(1, end - begin)))
        shift = shift if end + shift <= len(body) else -shift
        entry["data_offsets"] = [begin + shift, end + shift]
    elif kind == "offsets past the end":
        entry["data_offsets"] = [entry["data_offsets"][0], len(body) + 4096]
    elif kind == "shape larger":
        entry["shape"] = [d + 1 for d in entry["shape"]]
    elif kind == "shape 2^40":
        entry["shape"] = [HUGE] + entry["shape"][1:]
    elif kind == "header size huge":
        return kind, struct.pack("<Q", 2**62) + blob[8:]
    elif kind == "header not JSON":
        return kind, struct.pack("<Q", 4) + b"{{{{" + body
    elif kind == "deep nesting":
        text = b"[" * 100000 + b"]" * 100000
        return kind, struct.pack("<Q", len(text)) + text + body
    elif kind == "empty file":
        return kind, b""
    elif kind == "metadata not strings":
        header["__metadata__"] = {"step": 3}
    return kind, _with_header(header, body)


@in_child(seconds=90)
@fuzz(60)
@given(st.data())
def test_state_files(data):
    """save_state and load_state: a round trip is exact; a damaged file, a folder, a missing
    folder are refused naming the path; a loaded state either generates or is refused."""
    net = _net()
    batch = data.draw(st.integers(1, 2))
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "state.safetensors"
        state = net.init_state(batch)
        net.infer(random_cond_input(R, batch, L, 5), state=state)
        save_state(state, path)
        target = data.draw(st.sampled_from(["damaged", "round trip", "missing folder", "onto a folder",
                                            "NaN queues", "huge position"]))
        if target == "round trip":
            case("state_files", target)
            loaded = load_state(path)
            assert all(torch.equal(loaded[k], state[k]) for k in state)
            return
        if target in ("missing folder", "onto a folder"):
            case("state_files", target)
            where = Path(folder) / "missing" / "s.safetensors" if target == "missing folder" else Path(folder)
            attempt(f"save_state onto {target}", lambda: save_state(state, where), str(where),
                    errors=DOCUMENTED + (OSError,))
            return
        if target == "NaN queues":
            state["queues"][0, 0, 0] = math.nan
        if target == "huge position":
            state["position"].fill_(2**63 - 2)
        if target in ("NaN queues", "huge position"):
            with contextlib.suppress(*DOCUMENTED):  # refusing to save it is as good
                save_state(state, path)
            label = target
        else:
            label, damaged = damage_safetensors(data.draw, path.read_bytes())
            path.write_bytes(damaged)
        case("state_files", label)
        outcome = attempt(f"load_state ({label})", lambda: load_state(path), str(path))
        if label in ALWAYS_REFUSED_DAMAGE:
            assert refused(outcome), f"load_state ({label}) loaded"
        if not refused(outcome) and outcome["queues"].shape[0] == batch:
            attempt(f"infer from a loaded state ({label})",
                    lambda: net.infer(random_cond_input(R, batch, L, 3), state=outcome), "state", str(path))


def test_unaligned_state_is_refused():
    """A state whose tensors start at an odd address (what safetensors gives for a file with an
    unpadded header) is refused naming the tensor: the engine reads it as int32 and float32 in
    place, which UBSan reported as misaligned loads (scripts/sanitize_cpu.sh)."""
    case("unaligned_state", "history at an odd address")
    net = _net()
    state = net.init_state(1)
    raw = torch.zeros(state["history"].numel() * 4 + 1, dtype=torch.uint8)
    unaligned = torch.frombuffer(memoryview(raw.numpy())[1:], dtype=torch.int32).view(1, 2)
    unaligned.fill_(A // 2)
    state["history"] = unaligned
    with pytest.raises(TypeError, match=r"state\['history'\].*unaligned"):
        net.infer(random_cond_input(R, 1, L, 3), state=state)


def test_unpadded_state_file_loads(tmp_path):
    """A state file whose header is not padded to 8 bytes (its tensors at odd offsets) loads as
    aligned copies, and generation goes on from it exactly as from the state it was saved from."""
    case("unaligned_state", "unpadded header")
    net = _net()
    state = net.init_state(2)
    net.infer(random_cond_input(R, 2, L, 5, seed=4), state=state)
    path = tmp_path / "state.safetensors"
    save_state(state, path)
    header, body = _safetensors_header(path.read_bytes())
    text = json.dumps(header).encode()
    text += b" " * ((1 - len(text)) % 4)  # the data starts at 8 + len(text), an odd address
    path.write_bytes(struct.pack("<Q", len(text)) + text + body)
    loaded = load_state(path)
    assert all(loaded[key].data_ptr() % loaded[key].element_size() == 0 for key in loaded)
    assert all(torch.equal(loaded[key], state[key]) for key in state)
    cond = random_cond_input(R, 2, L, 6, seed=5)
    selectors = torch.rand(2, 6, generator=torch.Generator().manual_seed(6))
    expected = net.infer(cond, selectors=selectors, state=copy_state(state))
    assert torch.equal(net.infer(cond, selectors=selectors, state=loaded), expected)


# --- read_wav --------------------------------------------------------------------------------------

def wav_bytes(*, format_tag=1, channels=1, rate=8000, bits=16, data=b"", declared=None, block_align=None,
              byte_rate=None, extra=b"", fmt_size=16) -> bytes:
    """A WAV file, every header field as given (consistent defaults derived from the others)."""
    block_align = channels * bits // 8 if block_align is None else block_align
    byte_rate = rate * block_align if byte_rate is None else byte_rate
    fmt = struct.pack("<HHIIHH", format_tag, channels, rate & 0xFFFFFFFF, byte_rate & 0xFFFFFFFF,
                      block_align & 0xFFFF, bits)
    fmt += b"\0" * (fmt_size - 16) if fmt_size >= 16 else b""
    fmt = fmt[:fmt_size]
    body = (b"WAVE" + b"fmt " + struct.pack("<I", fmt_size) + fmt + extra
            + b"data" + struct.pack("<I", (len(data) if declared is None else declared) & 0xFFFFFFFF) + data)
    return b"RIFF" + struct.pack("<I", len(body)) + body


@st.composite
def crafted_wavs(draw):
    bits = draw(st.sampled_from([8, 16, 24, 32, 64, 0, 7, 12, 65535]))
    format_tag = draw(st.sampled_from([1, 3, 0xFFFE, 2, 0]))
    channels = draw(st.sampled_from([1, 2, 0, 3, 65535]))
    rate = draw(st.sampled_from([8000, 44100, 1, 0, 2**31 - 1, 2**32 - 1, 3, 1000003]))
    frames = draw(st.integers(0, 400))
    data = draw(st.binary(min_size=0, max_size=64)) * (frames // 8 + 1)
    data = data[:max(channels, 1) * max(bits // 8, 1) * frames]
    declared = draw(st.sampled_from([None, None, 0, 2**32 - 1, len(data) + 1, 7]))
    # 1 (for float32) and 65535 give no numpy dtype.
    block_align = draw(st.sampled_from([None, None, 0, 1, 65535]))
    # The last two skip past the data chunk.
    extra = draw(st.sampled_from([b"", b"LIST\x04\0\0\0abcd", b"junk\x02\0\0\0ab", b"LIST\x00\0\0\x80",
                                  b"fact\xff\xff\xff\xffabcd"]))
    fmt_size = draw(st.sampled_from([16, 16, 18, 40, 14, 0]))
    blob = wav_bytes(format_tag=format_tag, channels=channels, rate=rate, bits=bits, data=data, declared=declared,
                     block_align=block_align, extra=extra, fmt_size=fmt_size)
    # Cut inside the data chunk's samples, or before the data chunk.
    cut = draw(st.sampled_from([None, None, None, len(blob) - len(data) // 2, len(blob) - 1,
                                len(blob) - len(data) - 8]))
    description = dict(bits=bits, format_tag=format_tag, channels=channels, rate=rate, frames=frames,
                       declared=declared, block_align=block_align, extra=extra[:4], fmt_size=fmt_size, cut=cut)
    return description, blob if cut is None else blob[:cut]


@fuzz(250)
@given(crafted_wavs(), st.sampled_from([None, 8000, 22050]), st.booleans())
def test_read_wav_crafted_headers(tmp_path_factory, wav, sample_rate, mix_to_mono):
    """Crafted WAV headers (absurd rates and sizes, truncated chunks, odd formats): read_wav
    refuses them naming the file, or returns finite float32 mono audio no longer than the file
    holds, in bounded time and memory."""
    description, blob = wav
    case("read_wav", (description, sample_rate))
    path = tmp_path_factory.mktemp("wav") / "crafted.wav"
    path.write_bytes(blob)
    outcome = attempt(f"read_wav({description}, {sample_rate})",
                      lambda: read_wav(path, sample_rate, mix_to_mono=mix_to_mono), str(path))
    if refused(outcome):
        return
    audio, rate = outcome
    assert audio.dtype == np.float32 and audio.ndim == 1 and bool(np.isfinite(audio).all())
    assert rate == (sample_rate or rate)
    # The file holds at most len(blob) samples; resampling changes that by the ratio of the rates.
    assert audio.size <= len(blob) * max(1, sample_rate or 1) + 64, (audio.size, len(blob))


WAV_RATES = [1, 8000, 768000, 2**29, 2**30, 2**31 - 1, 2**31, 2**32 - 1, 2**32, 2**40, 2**64, 0, -1, True, 8000.0,
             np.int64(8000), np.int64(2**40), "8000", None]


@fuzz(120)
@given(st.sampled_from(WAV_RATES), st.integers(1, 3), st.sampled_from(["int16", "int32", "float32"]))
def test_write_wav_rates(tmp_path_factory, rate, channels, sample_format):
    """write_wav refuses a rate its header cannot hold (the rate and the bytes per second are
    32-bit fields) naming sample_rate, and what it writes reads back at that rate."""
    case("write_wav", (rate, channels, sample_format))
    path = tmp_path_factory.mktemp("write") / "x.wav"
    audio = np.zeros((channels, 8), np.float32)
    outcome = attempt(f"write_wav(rate={rate!r}, {channels} channels, {sample_format})",
                      lambda: write_wav(path, audio, rate, sample_format=sample_format), "sample_rate")
    fits = (isinstance(rate, (int, np.integer)) and not isinstance(rate, bool) and rate >= 1
            and rate * channels * {"int16": 2, "int32": 4, "float32": 4}[sample_format] < 2**32)
    assert refused(outcome) != fits, (rate, channels, sample_format, outcome)
    if fits:
        assert struct.unpack("<I", path.read_bytes()[24:28])[0] == rate


def npy_bytes(shape, descr: str, data: bytes, *, version=(1, 0), fortran_order=False) -> bytes:
    """A .npy file whose header says ``shape`` and ``descr``, followed by ``data`` as it is."""
    out = io.BytesIO()
    header = {"descr": descr, "fortran_order": fortran_order, "shape": shape}
    (np.lib.format.write_array_header_1_0 if version == (1, 0) else np.lib.format.write_array_header_2_0)(out, header)
    return out.getvalue() + data


@fuzz(150)
@given(st.sampled_from([(10, 4), (10, 10**15), (10, 2**62), (2**40, 2**40), (10, 0), (11, 4), (10,), (10, 4, 1), ()]),
       st.sampled_from(["<f4", ">f4", "<f8", "<f2", "<i4", "|b1", "<c8", "|O", "<U3"]),
       st.sampled_from(["exact", "short", "none", "extra"]), st.sampled_from([(1, 0), (2, 0)]), st.booleans())
def test_mel_npy_headers(shape, descr, data_kind, version, fortran_order):
    """Crafted .npy headers (absurd shapes, other dtypes, data cut short): load_mel_npy refuses them
    naming the source before allocating what the header declares, or returns float32 mel frames."""
    case("mel_npy", (shape, descr, data_kind, version, fortran_order))
    declared = math.prod(shape) * np.dtype(descr).itemsize
    size = {"exact": declared, "short": declared // 2, "none": 0, "extra": declared + 8}[data_kind]
    blob = npy_bytes(shape, descr, b"\0" * min(size, 4096), version=version, fortran_order=fortran_order)
    outcome = attempt(f"load_mel_npy({shape}, {descr}, {data_kind})",
                      lambda: load_mel_npy(io.BytesIO(blob), 10, "crafted.npy"), "crafted.npy")
    valid = (len(shape) == 2 and shape[0] == 10 and 0 < shape[1] and descr[1] == "f" and data_kind in ("exact", "extra")
             and declared <= 4096)
    assert refused(outcome) != valid, (shape, descr, data_kind, outcome)
    if valid:
        assert outcome.dtype == torch.float32 and tuple(outcome.shape) == shape


# --- the mel front end -----------------------------------------------------------------------------

MEL_FIELDS = {"sample_rate": 8000, "n_fft": 256, "hop_length": 64, "win_length": 256, "n_mels": 10, "fmin": 0.0,
              "fmax": 4000.0, "clamp_min": 1e-5}
HOSTILE_NUMBERS = [0, -1, 1, 3, 2**31, 2**40, 2**63, 10**30, 0.5, math.nan, math.inf, -math.inf, 1e308, True,
                   "256", None, [256], {"a": 1}, np.int64(256), np.float32(100.0)]


@fuzz(200)
@given(st.sampled_from(sorted(MEL_FIELDS)), st.sampled_from(HOSTILE_NUMBERS), st.sampled_from(["1-D", "batch", "short",
                                                                                                  "int16", "NaN",
                                                                                                  "numpy", "3-D"]))
def test_mel_front_end(field, value, audio_kind):
    """MelConfig and MelSpectrogram with one hostile field (absurd sizes refused before allocating,
    naming the field), then hostile audio."""
    case("mel", (field, value, audio_kind))
    # A field that conflicts with another (fmax above a low sample_rate's Nyquist) may be named
    # instead of the one changed.
    config = attempt(f"MelConfig({field}={value!r})", lambda: MelConfig(**{**MEL_FIELDS, field: value}), *MEL_FIELDS)
    if refused(config):
        return
    front_end = attempt(f"MelSpectrogram({field}={value!r})", lambda: MelSpectrogram(config), field)
    if refused(front_end):
        return
    g = torch.Generator().manual_seed(0)
    audio = torch.rand(2000, generator=g) * 2 - 1
    audio = {"1-D": audio, "batch": audio.expand(3, -1), "short": audio[:3], "int16": (audio * 3e4).short(),
             "NaN": audio.masked_fill(audio > 0.99, math.nan), "numpy": audio.numpy(), "3-D": audio[None, None]}[audio_kind]
    mel = attempt(f"mel of {audio_kind} audio ({field}={value!r})", lambda: front_end(audio), "audio")
    if not refused(mel):
        assert bool(torch.isfinite(mel).all()) and mel.shape[-2] == config.n_mels


# --- checkpoints and the vocoder -------------------------------------------------------------------

TINY_MODEL = dict(n_in_channels=A, n_layers=L, max_dilation=MAX_DILATION, n_residual_channels=R, n_skip_channels=S,
                  n_out_channels=A, n_cond_channels=10, upsamp_window=256, upsamp_stride=64)
TINY_MEL = MelConfig(sample_rate=8000, n_fft=256, hop_length=64, win_length=256, n_mels=10, fmin=0.0, fmax=4000.0)


def _tiny_checkpoint(folder: Path) -> Path:
    torch.manual_seed(0)
    return save_model(folder / "ckpt", WaveNet(**TINY_MODEL), AudioConfig(8000, A, TINY_MEL))


def nested(depth: int):
    value = 1
    for _ in range(depth):
        value = [value]
    return value


def hostile_json_value(draw):
    return draw(st.sampled_from([
        ("huge", 2**40), ("2^63", 2**63), ("negative", -1), ("zero", 0), ("float", 2.5), ("NaN", math.nan),
        ("string", "big"), ("null", None), ("bool", True), ("list", [1]), ("deep nesting", nested(100000)),
        ("object", {"a": 1})]))


def _dump_json(value) -> str:
    # json.dumps itself recurses: deep nesting is written by hand.
    def write(v):
        return "[" + write(v[0]) + "]" if isinstance(v, list) and len(v) == 1 and isinstance(v[0], list) else json.dumps(v)
    sys.setrecursionlimit(max(sys.getrecursionlimit(), 10000))
    try:
        return json.dumps(value)
    except RecursionError:
        pass
    depth, inner = 0, value
    while isinstance(inner, list) and len(inner) == 1 and isinstance(inner[0], list):
        depth, inner = depth + 1, inner[0]
    return "[" * depth + json.dumps(inner) + "]" * depth


def _config_with(config: dict, where: tuple, value) -> str:
    """``config`` as JSON text with the field at path ``where`` replaced by ``value`` (or removed
    when ``value`` is the string "<removed>"), deep nesting included."""
    marker = "__FUZZ_VALUE__"
    edited = json.loads(json.dumps(config))
    target = edited
    for key in where[:-1]:
        target = target[key]
    if value == "<removed>":
        target.pop(where[-1], None)
        return json.dumps(edited)
    target[where[-1]] = marker
    return json.dumps(edited).replace(json.dumps(marker), _dump_json(value))


@in_child(seconds=120)
@fuzz(80)
@given(st.data())
def test_checkpoints(data):
    """A checkpoint whose config.json or model.safetensors is damaged: load_model and
    Vocoder.from_checkpoint refuse it naming the file or field, before allocating for an absurd
    size; what loads vocodes a short mel."""
    with tempfile.TemporaryDirectory() as folder:
        path = _tiny_checkpoint(Path(folder))
        config = json.loads((path / "config.json").read_text())
        part = data.draw(st.sampled_from(["config", "weights"]))
        if part == "config":
            section = data.draw(st.sampled_from(["model", "audio", "mel", "top"]))
            fields = {"model": list(config["model"]), "audio": ["sample_rate", "quantization_channels"],
                      "mel": sorted(config["audio"]["mel"]), "top": ["format", "version", "model_type", "step"]}[section]
            field = data.draw(st.sampled_from(fields))
            where = {"model": ("model", field), "audio": ("audio", field), "mel": ("audio", "mel", field),
                     "top": (field,)}[section]
            label, value = data.draw(st.sampled_from([("removed", "<removed>")])) if data.draw(
                st.booleans()) and section != "top" else hostile_json_value(data.draw)
            (path / "config.json").write_text(_config_with(config, where, value))
            description, names = (where, label), [field, "config.json"]
        else:
            label, damaged = damage_safetensors(data.draw, (path / "model.safetensors").read_bytes())
            (path / "model.safetensors").write_bytes(damaged)
            description, names = label, ["model.safetensors"]
        case("checkpoints", description)
        vocoder = attempt(f"Vocoder.from_checkpoint ({description})", lambda: Vocoder.from_checkpoint(path), *names)
        # Only version 1 (an int: JSON true is no version) is read; damaged offsets never load.
        if (part == "config" and where == ("version",)) or (part == "weights" and label in ALWAYS_REFUSED_DAMAGE):
            assert refused(vocoder), f"Vocoder.from_checkpoint ({description}) loaded"
        if refused(vocoder):
            return
        mel = torch.randn(vocoder.audio_config.mel.n_mels, 2)
        audio = attempt(f"vocoding with a loaded checkpoint ({description})", lambda: vocoder(mel), "mel")
        if not refused(audio):
            assert bool(torch.isfinite(audio).all()) and bool((audio.abs() <= 1).all())


NV_WAVENET_CONFIG = {
    "train_config": {"output_directory": "checkpoints", "epochs": 100000, "learning_rate": 1e-3, "iters_per_checkpoint": 1000,
                     "batch_size": 8, "seed": 1234, "checkpoint_path": ""},
    "data_config": {"training_files": "train_files.txt", "segment_length": 16000, "mu_quantization": A,
                    "filter_length": 256, "hop_length": 64, "win_length": 256, "sampling_rate": 8000},
    "dist_config": {"dist_backend": "nccl", "dist_url": "tcp://localhost:54321"},
    "wavenet_config": {key: value for key, value in TINY_MODEL.items()},
}


@in_child(seconds=120)
@fuzz(60)
@given(st.data())
def test_vocoder(data):
    """Vocoder.from_nv_wavenet with hostile config fields and state dicts, then vocoding and
    streaming hostile mels: documented errors naming the argument, or finite audio of the right shape."""
    torch.manual_seed(0)
    model = WaveNet(**TINY_MODEL)
    state_dict = model.state_dict()
    config = json.loads(json.dumps(NV_WAVENET_CONFIG))
    target = data.draw(st.sampled_from(["config", "state_dict", "mel", "stream", "seed"]))
    if target == "config":
        section = data.draw(st.sampled_from(["wavenet_config", "data_config"]))
        field = data.draw(st.sampled_from(sorted(config[section])))
        label, value = hostile_json_value(data.draw)
        text = _config_with(config, (section, field), value)
        case("vocoder", (section, field, label))
        with tempfile.TemporaryDirectory() as folder:
            config_path = Path(folder) / "config.json"
            config_path.write_text(text)
            outcome = attempt(f"from_nv_wavenet ({field}={label})",
                              lambda: Vocoder.from_nv_wavenet(state_dict, config_path), "config", field)
        if not refused(outcome):
            attempt("vocoding", lambda: outcome(torch.randn(outcome.audio_config.mel.n_mels, 2)), "mel")
        return
    if target == "state_dict":
        key = data.draw(st.sampled_from(sorted(state_dict)))
        label, value = data.draw(st.sampled_from([
            ("NaN", state_dict[key] * math.nan), ("int32", state_dict[key].int()), ("numpy", state_dict[key].numpy()),
            ("missing", None), ("wrong shape", state_dict[key][..., :1]), ("float64", state_dict[key].double())]))
        hostile = {k: v for k, v in state_dict.items() if k != key or value is not None}
        if value is not None:
            hostile[key] = value
        case("vocoder", (key, label))
        outcome = attempt(f"from_nv_wavenet ({key} {label})",
                          lambda: Vocoder.from_nv_wavenet(hostile, NV_WAVENET_CONFIG), "state_dict", key)
        if not refused(outcome):
            audio = outcome(torch.randn(10, 2))
            assert bool(torch.isfinite(audio).all())
        return
    vocoder = Vocoder(model, AudioConfig(8000, A, TINY_MEL))
    mel = torch.randn(10, 3, generator=torch.Generator().manual_seed(2))
    label, hostile = data.draw(st.sampled_from([
        ("valid", mel), ("batched", mel.expand(2, -1, -1)), ("numpy", mel.numpy()),
        ("numpy big-endian", mel.numpy().astype(">f4")), ("float64", mel.double()), ("no frames", mel[:, :0]),
        ("wrong bands", mel[:-1]), ("NaN", mel * math.nan), ("int", mel.int()), ("1-D", mel[0]),
        ("4-D", mel[None, None]), ("expanded to 10^12 frames", mel[:, :1].expand(-1, 10**12)),
        ("expanded to 10^9 streams", mel[None].expand(10**9, -1, -1)), ("string", "mel"), ("None", None)]))
    seed = data.draw(st.sampled_from([0, 2**63, -1, 2**64, 1.5, "1", np.int64(4)])) if target == "seed" else 0
    case("vocoder", (target, label, seed))
    if target == "stream":
        outcome = attempt(f"stream({label})", lambda: list(vocoder.stream([hostile, hostile], seed=seed)),
                          "mel chunk", "mel")
    else:
        outcome = attempt(f"vocoder({label}, seed={seed!r})", lambda: vocoder(hostile, seed=seed), "mel", "seed")
    if refused(outcome):
        return
    pieces = outcome if isinstance(outcome, list) else [outcome]
    for audio in pieces:
        assert bool(torch.isfinite(audio).all()) and bool((audio.abs() <= 1).all())
    frames = np.shape(hostile)[-1]
    if target == "stream":
        joined = torch.cat(pieces, dim=-1)
        assert joined.shape[-1] == 2 * frames * 64 and joined.dim() == np.ndim(hostile) - 1, joined.shape
    else:
        assert outcome.shape[-1] == frames * 64 and outcome.dim() == np.ndim(hostile) - 1, outcome.shape


# --- escapes this suite found, each fixed and now drawn by the property above too -------------------

def test_layer_count_names_both():
    case("escapes", "layer count")
    with pytest.raises(ValueError) as error:
        NVWaveNet(**{**BASE_ARGS, "dilate_weights": BASE_ARGS["dilate_weights"][:-1]})
    assert "dilate_weights" in str(error.value), str(error.value)


@pytest.mark.parametrize("extra, cut", [(b"LIST\x00\0\0\x80", None), (b"fact\xff\xff\xff\xffabcd", None),
                                        (b"junk\x03\0\0\0abc", None)])
def test_wav_without_a_data_chunk(tmp_path, extra, cut):
    case("escapes", ("no data chunk", extra, cut))
    blob = wav_bytes(data=b"\0\1" * 100, extra=extra)
    path = tmp_path / "no_data.wav"
    path.write_bytes(blob[:cut])
    with pytest.raises(ValueError, match="no_data.wav"):
        read_wav(path)


@pytest.mark.parametrize("format_tag, channels, bits, block_align", [(1, 3, 64, 65535), (3, 1, 32, 1)])
def test_wav_scipy_cannot_read(tmp_path, format_tag, channels, bits, block_align):
    case("escapes", ("block align", block_align))
    path = tmp_path / "wide.wav"
    path.write_bytes(wav_bytes(format_tag=format_tag, channels=channels, bits=bits, block_align=block_align,
                               data=b"\0" * 600))
    with pytest.raises(ValueError, match="wide.wav"):
        read_wav(path, 22050)


@pytest.mark.parametrize("clamp_min", [1e308, 10**30])
def test_clamp_min_beyond_float32(clamp_min):
    case("escapes", ("clamp_min", clamp_min))
    with pytest.raises(ValueError, match="clamp_min"):
        MelSpectrogram(MelConfig(**{**MEL_FIELDS, "clamp_min": clamp_min}))(torch.rand(2000))


def test_checkpoint_model_type_not_a_string(tmp_path):
    case("escapes", "model_type")
    path = _tiny_checkpoint(tmp_path)
    config = json.loads((path / "config.json").read_text())
    (path / "config.json").write_text(json.dumps({**config, "model_type": ["WaveNet"]}))
    with pytest.raises(ValueError, match="config.json"):
        load_model(path)


def test_nv_wavenet_state_dict_nan_names_the_key():
    case("escapes", "state dict NaN")
    torch.manual_seed(0)
    state_dict = WaveNet(**TINY_MODEL).state_dict()
    state_dict["conv_out.conv.weight"] = state_dict["conv_out.conv.weight"] * math.nan
    with pytest.raises(ValueError, match="conv_out.conv.weight"):
        Vocoder.from_nv_wavenet(state_dict, NV_WAVENET_CONFIG)


def test_expanded_weight_refused_before_allocating():
    case("escapes", "expanded weight")
    biases = list(BASE_ARGS["dilate_biases"])
    biases[0] = biases[0][:1].expand(HUGE)
    with pytest.raises(ValueError, match="dilate_biases"):
        NVWaveNet(**{**BASE_ARGS, "dilate_biases": biases})


@pytest.mark.parametrize("where", [("quantization_channels",), ("mel", "n_mels"), ("mel", "hop_length")])
def test_checkpoint_audio_disagreeing_with_the_model(tmp_path, where):
    case("escapes", where)
    path = _tiny_checkpoint(tmp_path)
    config = json.loads((path / "config.json").read_text())
    (config["audio"] if len(where) == 1 else config["audio"]["mel"]).pop(where[-1])
    (path / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="config.json") as error:
        Vocoder.from_checkpoint(path)
    assert where[-1] in str(error.value), str(error.value)


def test_stream_of_expanded_chunks():
    case("escapes", "stream expanded")
    torch.manual_seed(0)
    vocoder = Vocoder(WaveNet(**TINY_MODEL), AudioConfig(8000, A, TINY_MEL))
    chunk = torch.randn(1, 10, 1).expand(10**9, -1, -1)
    with pytest.raises(ValueError, match="mel chunk"):
        next(iter(vocoder.stream([chunk])))


def test_negative_stride_numpy_weights_are_accepted():
    case("escapes", "negative strides")
    flipped = {name: np.ascontiguousarray(value.numpy()[::-1])[::-1] for name, value in BASE_ARGS.items()
               if isinstance(value, torch.Tensor)}
    assert all(any(stride < 0 for stride in array.strides) for array in flipped.values())
    net, expected = NVWaveNet(**{**BASE_ARGS, **flipped}), NVWaveNet(**BASE_ARGS)
    assert torch.equal(net.weights.embed_prev, expected.weights.embed_prev)
    assert torch.equal(net.weights.end_w, expected.weights.end_w)


def test_checkpoint_with_overlapping_offsets_is_refused(tmp_path):
    case("escapes", "overlapping model checkpoint")
    path = _tiny_checkpoint(tmp_path)
    header, body = _safetensors_header((path / "model.safetensors").read_bytes())
    first, second = sorted((k for k in header if k != "__metadata__"), key=lambda k: header[k]["data_offsets"])[:2]
    size = header[second]["data_offsets"][1] - header[second]["data_offsets"][0]
    header[second]["data_offsets"] = [header[first]["data_offsets"][0], header[first]["data_offsets"][0] + size]
    (path / "model.safetensors").write_bytes(_with_header(header, body))
    with pytest.raises(ValueError, match="model.safetensors: .*tensor '.*': data_offsets .* overlap"):
        Vocoder.from_checkpoint(path)


def test_checkpoint_version_true_is_refused(tmp_path):
    case("escapes", "version true")
    path = _tiny_checkpoint(tmp_path)
    config = json.loads((path / "config.json").read_text())
    (path / "config.json").write_text(json.dumps({**config, "version": True}))
    with pytest.raises(ValueError, match="config.json: checkpoint version True, this nvwavenet reads 1"):
        load_model(path)


@pytest.mark.parametrize("rate", [2**32, 2**32 - 1, 2**40])
def test_write_wav_sample_rate_beyond_a_wav_header(tmp_path, rate):
    case("escapes", ("write_wav rate", rate))
    with pytest.raises(ValueError, match="sample_rate"):
        write_wav(tmp_path / "x.wav", np.zeros(4, np.float32), rate)
    assert not (tmp_path / "x.wav").exists()


def test_npy_header_declaring_a_huge_shape(tmp_path):
    case("escapes", "npy huge shape")
    path = tmp_path / "huge.npy"
    path.write_bytes(npy_bytes((10, 10**15), "<f4", b"\0" * 160))
    started = time.perf_counter()
    with pytest.raises(ValueError, match=re.escape(f"{path}: its .npy header declares shape (10, {10**15}) of "
                                                   "float32 (40000000000000000 bytes), the file holds 160 bytes")):
        load_mel_npy(path, 10, str(path))
    with pytest.raises(ValueError, match="body: its .npy header declares"):  # the server's POST body
        load_mel_npy(io.BytesIO(path.read_bytes()), 10, "body")
    assert time.perf_counter() - started < 1


# --- the command line ------------------------------------------------------------------------------

def cli(argv: list[str]) -> tuple[int, str]:
    """``nvwavenet ARGV`` in this process: (exit code, stderr). An exception escaping main() is
    what a user would see as a traceback: it fails the case."""
    stderr, stdout = io.StringIO(), io.StringIO()
    try:
        with contextlib.redirect_stderr(stderr), contextlib.redirect_stdout(stdout), bounded(f"nvwavenet {argv}", 60):
            code = cli_main(argv)
    except SystemExit as stop:  # argparse's usage errors
        code = stop.code
    except Hang:
        raise
    except BaseException as error:
        raise AssertionError(f"nvwavenet {argv}: {type(error).__name__} escaped as a traceback: {error}") from error
    OUTCOMES["accepted" if code == 0 else "refused"] += 1
    return code, stderr.getvalue()


def assert_cli_outcome(argv, code, stderr):
    if code == 0:
        return
    assert code == 2, f"nvwavenet {argv}: exit code {code}\n{stderr}"
    assert "Traceback" not in stderr, stderr
    # Python's warnings (scipy's about a chunk it skips, nvwavenet's about a converted input) are
    # reports, not the error: "file:line: SomeWarning: message" and the source line under it.
    lines = [line for line in stderr.splitlines() if line.strip() and not re.search(r":\d+: \w*Warning: ", line)
             and not line.startswith("  ")]
    # argparse's own errors print the usage first; the project's are one line.
    if lines and lines[0].startswith("usage:"):
        lines = [line for line in lines if not line.startswith(" ") and not line.startswith("usage:")]
    assert len(lines) == 1, f"nvwavenet {argv}: expected one line on stderr, got:\n{stderr}"


CLI_NUMBERS = ["nan", "inf", "-inf", "-1", "0", "1e308", "99999999999999999999", "2.5", "abc", ""]
TINY_TRAIN = ["--sample-rate", "8000", "--batch-size", "1", "--layers", "2", "--max-dilation", "2", "--residual", "4",
              "--skip", "8", "--classes", "16", "--n-mels", "8", "--n-fft", "64", "--hop", "16", "--window-hops", "2",
              "--quiet"]
TRAINED: dict = {}


def _trained(folder: Path) -> tuple[Path, Path]:
    """A folder of one clean WAV and a training checkpoint of one step made from it, once per process."""
    if not TRAINED:
        kept = Path(tempfile.mkdtemp(prefix="nvwavenet-fuzz-"))
        (kept / "clean").mkdir()
        tone = np.sin(np.arange(4000) * 0.05) * 0.5
        nvwavenet.audio.write_wav(kept / "clean" / "tone.wav", tone.astype(np.float32), 8000)
        code, stderr = cli(["train", str(kept / "clean"), "--out", str(kept / "trained"), "--steps", "1", *TINY_TRAIN])
        assert code == 0, stderr
        TRAINED.update(data=kept / "clean", checkpoint=kept / "trained")
    copy = folder / "resume"
    shutil.copytree(TRAINED["checkpoint"], copy)
    return TRAINED["data"], copy


@in_child(seconds=200)
@fuzz(50)
@given(st.data())
def test_cli(data):
    """Every subcommand with hostile files and options, as main() runs them: exit 0, or exit 2
    with one line on stderr and no traceback."""
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        checkpoint = _tiny_checkpoint(root)
        wav_description, blob = data.draw(crafted_wavs())
        (root / "data").mkdir()
        (root / "data" / "crafted.wav").write_bytes(blob)
        mel = np.random.default_rng(0).normal(size=(10, 3)).astype(np.float32)
        mels = {"mel.npy": mel, "big-endian.npy": mel.astype(">f4"), "int.npy": mel.astype(np.int32),
                "nan.npy": mel * np.nan, "3d.npy": mel[None], "wide.npy": np.zeros((10, 10**6), np.float32)[:, :3]}
        for name, array in mels.items():
            np.save(root / name, array)
        (root / "truncated.npy").write_bytes((root / "mel.npy").read_bytes()[:60])
        command = data.draw(st.sampled_from(["vocode", "train", "resume", "analyze", "analyze-checkpoint", "info",
                                             "demo", "bench"]))
        option_value = data.draw(st.sampled_from(CLI_NUMBERS))
        if command == "vocode":
            source = data.draw(st.sampled_from([*mels, "truncated.npy", "data/crafted.wav", "missing.npy", "data"]))
            option = data.draw(st.sampled_from(["--batch-size", "--seed", "--dtype", "--impl", "--device", None]))
            out = data.draw(st.sampled_from(["out", "out/one.wav", "mel.npy"]))
            argv = ["vocode", str(root / source), "--checkpoint", str(checkpoint), "--out", str(root / out), "--quiet"]
            description = (source, option, option_value, out)
        elif command == "train":
            option = data.draw(st.sampled_from(["--lr", "--steps", "--batch-size", "--sample-rate", "--n-fft", "--hop",
                                                "--n-mels", "--classes", "--residual", "--layers", "--max-dilation",
                                                "--window-hops", "--checkpoint-every", None]))
            argv = ["train", str(root / "data"), "--out", str(root / "trained"), "--sample-rate", "8000", "--steps",
                    "1", "--batch-size", "1", "--layers", "2", "--max-dilation", "2", "--residual", "4", "--skip",
                    "8", "--classes", "16", "--n-mels", "8", "--n-fft", "64", "--hop", "16", "--window-hops", "2",
                    "--quiet"]
            description = (wav_description, option, option_value)
        elif command == "resume":
            clean, resume = _trained(root)
            option = data.draw(st.sampled_from(["--lr", "--steps", "--layers", "--batch-size", None]))
            damaged = data.draw(st.sampled_from(["training.json", "training.safetensors", "model.safetensors",
                                                 "config.json", "nothing"]))
            if damaged.endswith(".json"):
                values = json.loads((resume / damaged).read_text())
                key = data.draw(st.sampled_from(sorted(values)))
                label, value = (("removed", "<removed>") if data.draw(st.booleans())
                                else hostile_json_value(data.draw))
                (resume / damaged).write_text(_config_with(values, (key,), value))
                description = (damaged, key, label, option, option_value)
            elif damaged.endswith(".safetensors"):
                label, blob = damage_safetensors(data.draw, (resume / damaged).read_bytes())
                (resume / damaged).write_bytes(blob)
                description = (damaged, label, option, option_value)
            else:
                description = (damaged, option, option_value)
            argv = ["train", str(clean), "--out", str(resume), "--resume", "--steps", "2", "--quiet"]
        elif command == "analyze":
            option = data.draw(st.sampled_from(["--sample-rate", None]))
            argv = ["analyze", str(root / "data")]
            description = (wav_description, option, option_value)
        elif command == "analyze-checkpoint":
            option = None
            field = data.draw(st.sampled_from(sorted(TINY_MODEL)))
            label, value = hostile_json_value(data.draw)
            config = json.loads((checkpoint / "config.json").read_text())
            (checkpoint / "config.json").write_text(_config_with(config, ("model", field), value))
            argv = ["analyze", str(checkpoint)]
            description = (field, label)
        else:
            option = None
            argv = {"info": ["info"], "demo": ["demo", "--seconds", option_value, "--out", str(root / "demo")],
                    "bench": ["bench", "--device", option_value or "tpu"]}[command]
            if command == "demo" and option_value not in ("nan", "inf", "-inf", "-1", "0", "abc", ""):
                argv += ["--steps", "-1"]  # a valid length would run the whole demo
            description = option_value
        if option is not None:
            argv += [option, option_value]
        case("cli", (command, description))
        code, stderr = cli(argv)
        assert_cli_outcome(argv, code, stderr)


@pytest.mark.parametrize("argv", [
    ["vocode", "missing.npy", "--checkpoint", "missing"],
    ["train", "missing", "--out", "x", "--lr", "nan"],
    ["analyze", "missing"],
    ["demo", "--seconds", "nan"],
    ["bench", "--device", "tpu"],
    ["info", "--no-such-option"],
])
def test_cli_subprocess(argv, tmp_path):
    """The exit code and stderr as the shell sees them, one hostile case per subcommand."""
    case("cli_subprocess", argv)
    result = subprocess.run([sys.executable, "-m", "nvwavenet", *argv], capture_output=True, text=True, cwd=tmp_path,
                            env=build_check.python_env(), timeout=120)
    assert result.returncode == 2, result.stderr
    assert_cli_outcome(argv, result.returncode, result.stderr)


if __name__ == "__main__":
    # The child process of an in_child property: run it, bounded by a watchdog that dumps every
    # thread's stack and exits when it hangs (SIGALRM cannot interrupt compiled code).
    prop, seconds = CHILD_PROPERTIES[sys.argv[1]]
    faulthandler.dump_traceback_later(seconds, exit=True)
    try:
        prop()
    finally:
        print(f"fuzz-cases {sum(TRIED.values())} {OUTCOMES['accepted']} {OUTCOMES['refused']}", flush=True)
