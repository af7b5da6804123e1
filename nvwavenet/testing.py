"""Random networks and inputs at realistic scales, for tests, benchmarks and untrained baselines,
and the checks that every engine's tests share.

SPEC section 4: weights ~ N(0, 1/fan_in) and conditioning of unit scale, never zeros, so that a
wrong index or an unwritten output cannot hide. :func:`compare_with_reference` is that section's
check of one path against the float64 reference; :func:`generate_in_chunks` generates through a
resumed state, for the tests that chunked calls equal one call. :func:`serve_process` runs
``nvwavenet serve`` as a user would, for the tests and benchmarks that need a real server process.
"""
from __future__ import annotations

import contextlib
import re
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass

import torch

__all__ = ["random_nv_wavenet_args", "random_cond_input", "generate_in_chunks", "compare_with_reference",
           "ServeProcess", "serve_process"]


def _normal(generator, *shape, fan_in: int) -> torch.Tensor:
    return torch.randn(*shape, generator=generator, dtype=torch.float64) / fan_in ** 0.5


def random_nv_wavenet_args(n_residual: int = 64, n_skip: int = 256, n_classes: int = 256,
                           n_layers: int = 20, max_dilation: int = 512, *, seed: int = 0,
                           use_embed_tanh: bool = True, zero_embedding_prev: bool = False,
                           with_head_biases: bool = False, dtype=torch.float32) -> dict:
    """Keyword arguments for ``NVWaveNet(**args)`` with N(0, 1/fan_in) weights.

    ``res_weights`` has L - 1 entries, as NV-WaveNet's exporter writes it.
    """
    g = torch.Generator().manual_seed(seed)
    R, S, A, L = n_residual, n_skip, n_classes, n_layers
    args = {
        # Embeddings are looked up, not multiplied: unit scale keeps x_0 at unit scale.
        "embedding_prev": (torch.zeros(A, R, dtype=torch.float64) if zero_embedding_prev
                           else _normal(g, A, R, fan_in=2)),
        "embedding_curr": _normal(g, A, R, fan_in=2),
        "conv_out_weight": _normal(g, A, S, fan_in=S),
        "conv_end_weight": _normal(g, A, A, fan_in=A),
        "dilate_weights": [_normal(g, 2 * R, R, 2, fan_in=2 * R) for _ in range(L)],
        "dilate_biases": [_normal(g, 2 * R, fan_in=2 * R) for _ in range(L)],
        "max_dilation": max_dilation,
        "res_weights": [_normal(g, R, R, fan_in=R) for _ in range(L - 1)],
        "res_biases": [_normal(g, R, fan_in=R) for _ in range(L - 1)],
        "skip_weights": [_normal(g, S, R, fan_in=R) for _ in range(L)],
        "skip_biases": [_normal(g, S, fan_in=R) for _ in range(L)],
        "use_embed_tanh": use_embed_tanh,
    }
    if with_head_biases:
        args["conv_out_bias"] = _normal(g, A, fan_in=S)
        args["conv_end_bias"] = _normal(g, A, fan_in=A)
    return {k: ([t.to(dtype) for t in v] if isinstance(v, list)
                else v.to(dtype) if isinstance(v, torch.Tensor) else v) for k, v in args.items()}


def random_cond_input(n_residual: int, batch: int, n_layers: int, samples: int, *, seed: int = 0,
                      dtype=torch.float32, device="cpu") -> torch.Tensor:
    """Unit-scale conditioning ``(2R, batch, L, samples)``."""
    g = torch.Generator().manual_seed(seed)
    cond = torch.randn(2 * n_residual, batch, n_layers, samples, generator=g, dtype=torch.float32)
    return cond.to(device=device, dtype=dtype)


def generate_in_chunks(net, cond_input: torch.Tensor, selectors: torch.Tensor, chunks, implementation=None, *,
                       teacher_forcing: torch.Tensor | None = None, state: dict | None = None):
    """``net.infer`` on consecutive pieces of ``cond_input`` (time steps) of the lengths in ``chunks``,
    each resuming from the state the previous one left: ``(samples, logits, state)``, the pieces
    joined along time. For the tests that chunked generation equals one call, bit for bit.

    ``selectors`` and ``teacher_forcing`` are cut like ``cond_input``; ``state`` defaults to a fresh
    one on ``cond_input``'s device.
    """
    from .inference import Impl

    implementation = Impl.AUTO if implementation is None else implementation
    state = net.init_state(cond_input.shape[1], cond_input.device) if state is None else state
    samples, logits, start = [], [], 0
    for length in chunks:
        part = slice(start, start + length)
        out, part_logits = net.infer(
            cond_input[..., part], implementation, selectors=selectors[:, part], return_logits=True, state=state,
            teacher_forcing=None if teacher_forcing is None else teacher_forcing[:, part])
        samples.append(out)
        logits.append(part_logits)
        start += length
    return torch.cat(samples, dim=1), torch.cat(logits, dim=2), state


# SPEC section 4 tolerances per precision: relative L2 of teacher-forced logits, and how close to a
# CDF boundary u_t must lie for a differing class to count as rounding rather than a bug.
TOLERANCES = {torch.float32: 1e-4, torch.float16: 1e-2, torch.bfloat16: 3e-2}


def compare_with_reference(net, cond_input: torch.Tensor, implementation=None, *, seed: int = 0,
                           tolerance: float | None = None) -> dict:
    """Check one path of ``net`` against the float64 reference, as SPEC section 4 defines it.

    1. Teacher-forced with the reference's own samples and the same ``u_t``, the path's logits are
       within ``tolerance`` relative L2 of the reference's, and its classes equal the reference's
       except where ``u_t`` lies within ``tolerance`` of a CDF boundary (counted, not hidden).
    2. Free-running, the path's sequence is what the same path gives teacher-forced with it.
    3. Every output element was written (``infer`` poisons its outputs before the run).

    Raises AssertionError on a failure; returns the figures for reporting.
    """
    from . import reference
    from .inference import Impl
    from .sampling import distance_to_cdf_boundary

    implementation = Impl.AUTO if implementation is None else implementation
    tolerance = TOLERANCES[net.dtype] if tolerance is None else tolerance
    device = cond_input.device
    batch, samples = cond_input.shape[1], cond_input.shape[3]
    g = torch.Generator().manual_seed(seed)
    u = torch.rand(batch, samples, generator=g)
    ref_samples, ref_logits = reference.incremental(net.weights, cond_input.cpu().double(), u,
                                                    return_logits=True)

    forced, logits = net.infer(cond_input, implementation, selectors=u.to(device),
                               teacher_forcing=ref_samples.to(device), return_logits=True)
    forced, logits = forced.cpu(), logits.cpu().double()
    assert bool(torch.isfinite(logits).all()), "some logits were not written (NaN poison left)"
    assert bool(((forced >= 0) & (forced < net.A)).all()), "some samples were not written or out of range"
    rel_l2 = float((logits - ref_logits).norm() / ref_logits.norm())
    assert rel_l2 <= tolerance, f"teacher-forced logits: relative L2 {rel_l2:.3g} > {tolerance:g}"

    differ = forced != ref_samples
    margin = distance_to_cdf_boundary(ref_logits.transpose(1, 2), u)
    unexplained = differ & (margin > tolerance)
    assert not bool(unexplained.any()), (
        f"{int(unexplained.sum())} sampled classes differ from the reference with u_t farther than "
        f"{tolerance:g} from any CDF boundary, first at (stream, step) {unexplained.nonzero()[0].tolist()}")

    free = net.infer(cond_input, implementation, selectors=u.to(device))
    replay = net.infer(cond_input, implementation, selectors=u.to(device), teacher_forcing=free)
    assert torch.equal(free, replay), "free-running samples differ from the same path teacher-forced with them"
    return {"logits_rel_l2": rel_l2, "boundary_mismatches": int(differ.sum()),
            "positions": batch * samples}


@dataclass
class ServeProcess:
    """A running ``nvwavenet serve`` (from :func:`serve_process`): its process, its base URL
    (``http://127.0.0.1:PORT``) and every line it has written so far (stdout and stderr)."""

    process: subprocess.Popen
    url: str
    lines: list[str]
    _reader: threading.Thread

    def log(self) -> str:
        """Everything it has written; once it has exited, up to its last line."""
        if self.process.poll() is not None:
            self._reader.join(5)
        return "".join(self.lines)


@contextlib.contextmanager
def serve_process(checkpoint, *args: str, stop_timeout: float = 20.0) -> Iterator[ServeProcess]:
    """``python -m nvwavenet serve CHECKPOINT --port 0 ARGS...`` (this nvwavenet, whatever the current
    directory), once it logs "Uvicorn running on"; an AssertionError with its output if it exits before.

    Its output is read on in a thread (into :attr:`ServeProcess.lines`), so that a full pipe never
    blocks the server. On leaving, a server still running is terminated (a graceful shutdown,
    whose log the caller can still check), and killed if it has not exited ``stop_timeout`` later.
    """
    from . import build_check

    process = subprocess.Popen([sys.executable, "-m", "nvwavenet", "serve", str(checkpoint), "--port", "0", *args],
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                               env=build_check.python_env())
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(process.stdout), daemon=True)
    try:
        for line in process.stdout:
            lines.append(line)
            if found := re.search(r"Uvicorn running on (http://127\.0\.0\.1:\d+)", line):
                break
        else:
            raise AssertionError(f"the server did not start (exit code {process.wait()}):\n" + "".join(lines))
        reader.start()
        yield ServeProcess(process, found.group(1), lines, reader)
    finally:
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(stop_timeout)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        if reader.is_alive():
            reader.join(5)
        process.stdout.close()
