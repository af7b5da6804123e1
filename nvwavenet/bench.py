"""Timing WaveNet generation, side by side with what a PyTorch user would otherwise run.

The pieces every benchmark uses (engines behind one interface, calibrated timing with medians,
the real-time factor, tables, CSV, RESULTS.md sections), and the quick suite:
``python -m nvwavenet.bench`` (under a minute).

Engines, each generating ``n`` samples for ``batch`` streams in chunks through a resumable state
(so conditioning memory stays bounded however long the run):

- ``nvwavenet-cpu-<dtype>``: ``NVWaveNet.infer`` on CPU tensors (the compiled CPU engine), with
  the weights stored in ``dtype``;
- ``nvwavenet-<variant>-<dtype>``: ``NVWaveNet.infer`` with one CUDA kernel variant;
- ``pytorch-eager``: the queue-based reference step (:func:`nvwavenet.reference.step`) in float32;
- ``pytorch-cuda-graph``: that same step captured once in a CUDA graph and replayed per sample;
- ``pytorch-compiled``: that same step through ``torch.compile`` (the CPU's counterpart of the graph);
- ``pytorch-naive``: :func:`nvwavenet.reference.naive`, recomputing the receptive field per sample.
"""
from __future__ import annotations

import argparse
import csv
import dataclasses
import datetime
import os
import platform
import re
import statistics
import textwrap
import time
from collections.abc import Callable
from pathlib import Path

import torch

from . import engines, reference
from ._version import __version__
from .inference import Impl, NVWaveNet
from .sampling import select_classes
from .testing import random_cond_input, random_nv_wavenet_args

SAMPLE_RATES = (16000, 22050, 24000, 48000)
BASELINES = ("pytorch-eager", "pytorch-cuda-graph", "pytorch-compiled", "pytorch-naive")
# Conditioning held per engine call; longer runs reuse the chunk through the resumable state.
CHUNK_BYTES = 256 * 2 ** 20


@dataclasses.dataclass(frozen=True)
class Config:
    name: str
    R: int
    S: int
    A: int
    L: int
    max_dilation: int

    def __str__(self) -> str:
        return f"R{self.R}/S{self.S}/A{self.A} L={self.L} dil={self.max_dilation}"


CONFIGS = {
    "deep-voice": Config("deep-voice", 32, 128, 256, 20, 512),
    "nv-wavenet-recipe": Config("nv-wavenet-recipe", 64, 256, 256, 16, 128),
    "r64-l20": Config("r64-l20", 64, 256, 256, 20, 512),
    "r128-l24": Config("r128-l24", 128, 256, 256, 24, 512),
}


def default_device() -> torch.device:
    """The GPU when PyTorch sees one, else the CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def device_name(device: torch.device) -> str:
    """The GPU's name, or the CPU's model and core count."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as info:
            found = re.search(r"^model name\s*:\s*(.+)$", info.read(), re.MULTILINE)
            model = found.group(1).strip() if found else model
    except OSError:
        pass
    return f"{model}, {os.cpu_count()} cores"


def environment(device: torch.device) -> dict:
    return {
        "date": datetime.date.today().isoformat(),
        "device": device_name(device),
        "torch": torch.__version__,
        "cuda": torch.version.cuda or "-",
        "nvwavenet": __version__,
        "python": platform.python_version(),
    }


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(run: Callable[[int], None], samples: int, device: torch.device) -> float:
    """Seconds that ``run(samples)`` takes: CUDA events on a GPU, a synchronised clock otherwise."""
    if device.type == "cuda":
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        synchronize(device)
        start.record()
        run(samples)
        end.record()
        end.synchronize()
        return start.elapsed_time(end) / 1e3
    begin = time.perf_counter()
    run(samples)
    return time.perf_counter() - begin


def measure(run: Callable[[int], None], device: torch.device, *, seconds: float, repeats: int,
            max_samples: int) -> tuple[int, float]:
    """``(samples, median seconds)``: the sample count is calibrated so one run takes about
    ``seconds``; the first runs double as warm-up (module load, packing, graph capture)."""
    samples = 4
    elapsed = timed(run, samples, device)
    while elapsed < seconds / 8 and samples < max_samples:
        samples = min(max_samples, samples * 4)
        elapsed = timed(run, samples, device)
    samples = max(1, min(max_samples, int(samples * seconds / max(elapsed, 1e-9))))
    return samples, statistics.median(timed(run, samples, device) for _ in range(repeats))


class ReferenceStepLoop:
    """The reference step (:func:`nvwavenet.reference.step`) plus sampling, one call per sample,
    with position, queue slots, conditioning and selectors read through tensors, so that one
    captured or compiled step serves every position without a host value changing between steps.
    """

    def __init__(self, net: NVWaveNet, cond_chunk: torch.Tensor, u_chunk: torch.Tensor):
        device = cond_chunk.device
        self.prepared = reference.prepare(net.weights, torch.float32, device)
        self.offsets, self.dilations = reference.slot_table(net.weights, device)
        self.cond_steps = cond_chunk.permute(3, 2, 1, 0).float().contiguous()  # (chunk, L, batch, 2R)
        self.u_steps = u_chunk.t().contiguous()  # (chunk, batch)
        self.state = reference.init_state(net.weights, cond_chunk.shape[1], dtype=torch.float32, device=device)
        self.history = self.state["history"].long()
        self.position = torch.zeros(1, dtype=torch.long, device=device)
        self.index = torch.zeros(1, dtype=torch.long, device=device)
        self.drawn = torch.zeros(cond_chunk.shape[1], dtype=torch.long, device=device)

    def _step(self) -> None:
        slots = self.offsets + self.position % self.dilations
        cond_t = self.cond_steps.index_select(0, self.index).squeeze(0)
        logits = reference.step(self.prepared, self.state["queues"], self.history, cond_t, slots)
        self.drawn.copy_(select_classes(logits, self.u_steps.index_select(0, self.index).squeeze(0)))
        self.history.copy_(torch.stack([self.history[:, 1], self.drawn], dim=1))
        self.position += 1
        self.index.copy_((self.index + 1) % self.cond_steps.shape[0])


class CudaGraphStep(ReferenceStepLoop):
    """The reference step captured once in a CUDA graph, replayed once per sample.

    What a careful PyTorch user gets on a GPU without custom kernels: no Python or launch overhead
    per op, but still one kernel per matrix product.
    """

    def __init__(self, net: NVWaveNet, cond_chunk: torch.Tensor, u_chunk: torch.Tensor):
        super().__init__(net, cond_chunk, u_chunk)
        device = cond_chunk.device
        side = torch.cuda.Stream(device)
        side.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(side):  # warm-up outside capture, as CUDA graphs require
            for _ in range(3):
                self._step()
        torch.cuda.current_stream(device).wait_stream(side)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self._step()

    def __call__(self, samples: int) -> None:
        for _ in range(samples):
            self.graph.replay()


class CompiledStep(ReferenceStepLoop):
    """The reference step through ``torch.compile`` (Inductor, static shapes), called once per sample.

    What a PyTorch user reaches for on a CPU, where there are no CUDA graphs: fused element-wise
    work and no Python per op. Compiled once per network and batch, in the constructor, so that the
    compile time (seconds) stays out of the timing as the CUDA graph's capture does. Dynamic shapes
    are off: Inductor's dynamic-shape CPU code measured several times slower than eager here.
    """

    def __init__(self, net: NVWaveNet, cond_chunk: torch.Tensor, u_chunk: torch.Tensor):
        super().__init__(net, cond_chunk, u_chunk)
        # Every runner is a new network or batch; starting Dynamo afresh keeps its per-function
        # recompile limit from silently sending later runners back to eager.
        torch._dynamo.reset()
        self.compiled = torch.compile(self._step, dynamic=False)
        for _ in range(2):
            self.compiled()

    def __call__(self, samples: int) -> None:
        for _ in range(samples):
            self.compiled()


def make_runner(engine: str, net: NVWaveNet, cond_chunk: torch.Tensor,
                u_chunk: torch.Tensor) -> Callable[[int], None]:
    """``run(n)`` generating ``n`` samples per stream with ``engine``, in chunks of the given
    conditioning (reused chunk after chunk, so memory stays bounded)."""
    batch, chunk = cond_chunk.shape[1], cond_chunk.shape[3]
    device = cond_chunk.device
    if engine == "pytorch-cuda-graph":
        return CudaGraphStep(net, cond_chunk, u_chunk)
    if engine == "pytorch-compiled":
        return CompiledStep(net, cond_chunk, u_chunk)
    if engine == "pytorch-naive":
        def generate(n):
            reference.naive(net.weights, cond_chunk[..., :n], u_chunk[:, :n], dtype=torch.float32)
    elif engine == "pytorch-eager":
        state = reference.init_state(net.weights, batch, dtype=torch.float32, device=device)

        def generate(n):
            reference.incremental(net.weights, cond_chunk[..., :n], u_chunk[:, :n], state=state,
                                  dtype=torch.float32)
    else:
        variant = engine.split("-")[1]
        impl = Impl.AUTO if variant == "cpu" else Impl[variant.upper()]
        state = net.init_state(batch, device)

        def generate(n):
            net.infer(cond_chunk[..., :n], impl, selectors=u_chunk[:, :n], state=state)

    def run(samples: int) -> None:
        done = 0
        while done < samples:
            n = min(chunk, samples - done)
            generate(n)
            done += n
    return run


def engines_for(device: torch.device) -> list[tuple[str, torch.dtype]]:
    """The nvwavenet engines that exist for ``device``, with the network precision each runs;
    without the compiled module a RuntimeError that says why, before any baseline is timed."""
    engines.require_compiled("benchmarking the nvwavenet engines")
    if not engines.has_extension():  # NVWAVENET_ALLOW_REFERENCE=1: the baselines alone, none mislabelled
        return []
    variants = ("cpu",) if device.type == "cpu" else ("single_block", "dual_block", "persistent")
    return [(f"nvwavenet-{variant}-{str(dtype).replace('torch.', '')}", dtype)
            for variant in variants for dtype in (torch.float16, torch.float32)]


def baselines_for(device: torch.device) -> list[str]:
    """What a PyTorch user would run instead on ``device``: the eager loop, the same step made
    cheaper per call (a CUDA graph on a GPU, ``torch.compile`` on a CPU), and naive recomputation."""
    faster_step = "pytorch-cuda-graph" if device.type == "cuda" else "pytorch-compiled"
    return ["pytorch-eager", faster_step, "pytorch-naive"]


@dataclasses.dataclass
class Row:
    config: str
    engine: str
    batch: int
    samples: int
    seconds: float
    peak_memory_mb: float | None
    note: str = ""
    ratio_to_best_baseline: float | None = None

    @property
    def aggregate(self) -> float:
        return self.batch * self.samples / self.seconds if self.seconds else 0.0

    @property
    def per_stream(self) -> float:
        return self.samples / self.seconds if self.seconds else 0.0

    def real_time_factor(self, rate: int) -> float:
        """Seconds of audio per second of compute, per stream (above 1: faster than real time)."""
        return self.per_stream / rate


def run_one(config: Config, engine: str, dtype: torch.dtype, batch: int, device: torch.device, *,
            seconds: float, repeats: int, chunk: int, seed: int = 0) -> Row:
    """One measured row; an engine that cannot run the configuration gives a row with a note.

    ``chunk`` samples of conditioning per call at most, fewer where that would exceed CHUNK_BYTES.
    """
    net = NVWaveNet(**random_nv_wavenet_args(config.R, config.S, config.A, config.L, config.max_dilation,
                                             seed=seed), dtype=dtype)
    cond_dtype = torch.float16 if dtype != torch.float32 else torch.float32
    bytes_per_step = 2 * config.R * batch * config.L * (2 if cond_dtype == torch.float16 else 4)
    chunk = max(16, min(chunk, CHUNK_BYTES // bytes_per_step))
    cond = random_cond_input(config.R, batch, config.L, chunk, seed=seed + 1, dtype=cond_dtype, device=device)
    u = torch.rand(batch, chunk, generator=torch.Generator().manual_seed(seed + 2)).to(device)
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    try:
        run = make_runner(engine, net, cond, u)
        samples, elapsed = measure(run, device, seconds=seconds, repeats=repeats, max_samples=1 << 22)
    except (ValueError, RuntimeError) as error:
        return Row(config.name, engine, batch, 0, 0.0, None, note=str(error).splitlines()[0][:120])
    peak = torch.cuda.max_memory_allocated(device) / 2 ** 20 if device.type == "cuda" else None
    return Row(config.name, engine, batch, samples, elapsed, peak)


def add_ratios(rows: list[Row]) -> None:
    """Each row's aggregate rate over the best baseline's at the same configuration and batch."""
    best: dict[tuple[str, int], float] = {}
    for row in rows:
        if row.engine in BASELINES and row.seconds:
            key = (row.config, row.batch)
            best[key] = max(best.get(key, 0.0), row.aggregate)
    for row in rows:
        reference_rate = best.get((row.config, row.batch))
        row.ratio_to_best_baseline = row.aggregate / reference_rate if reference_rate and row.seconds else None


COLUMNS = ["config", "engine", "batch", "samples/s per stream", "samples/s aggregate",
           *[f"RTF@{rate / 1000:g}k" for rate in SAMPLE_RATES], "peak MiB", "x best baseline"]


def row_cells(row: Row) -> list[str]:
    if not row.seconds:
        return [row.config, row.engine, str(row.batch), f"n/a: {row.note}", "", *[""] * len(SAMPLE_RATES), "", ""]
    return [
        row.config, row.engine, str(row.batch), f"{row.per_stream:,.0f}", f"{row.aggregate:,.0f}",
        *[f"{row.real_time_factor(rate):.3g}" for rate in SAMPLE_RATES],
        "-" if row.peak_memory_mb is None else f"{row.peak_memory_mb:,.0f}",
        "-" if row.ratio_to_best_baseline is None else f"{row.ratio_to_best_baseline:.2f}",
    ]


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cells) + " |" for cells in rows]
    return "\n".join(lines)


def text_table(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(str(c)) for c in column) for column in zip(header, *rows)]
    fmt = lambda cells: "  ".join(str(c).rjust(w) for c, w in zip(cells, widths))
    return "\n".join([fmt(header), fmt(["-" * w for w in widths]), *map(fmt, rows)])


def write_csv(path: Path, header: list[str], rows: list[list]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)


def update_results(path: Path, section: str, body: str) -> None:
    """Replace (or append) the part of RESULTS.md between this section's markers."""
    begin, end = f"<!-- {section}:begin -->", f"<!-- {section}:end -->"
    block = f"{begin}\n{body.strip()}\n{end}"
    text = path.read_text() if path.exists() else "# Benchmark results\n\nWritten by the benchmark scripts; do not edit by hand.\n"
    if begin in text and end in text:
        text = text[:text.index(begin)] + block + text[text.index(end) + len(end):]
    else:
        text = text.rstrip() + "\n\n" + block + "\n"
    path.write_text(text)


def add_results_option(parser, default: Path) -> None:
    """The benchmarks' ``--results`` option: the RESULTS.md whose sections they rewrite."""
    parser.add_argument("--results", type=Path, default=default,
                        help="RESULTS.md to update with this run's section ('-' prints only)")


def write_results(target: Path, sections: dict) -> None:
    """Rewrite each ``{section: body}`` in ``target`` and say so; a target of ``-`` leaves every file alone."""
    if str(target) == "-":
        return
    for section, body in sections.items():
        update_results(target, section, body)
    print(f"updated {target}")


def save_figure(figure, path: Path, dpi: int = 120) -> None:
    """Lay out, write and release a matplotlib figure."""
    import matplotlib.pyplot as plt

    figure.tight_layout()
    figure.savefig(path, dpi=dpi)
    plt.close(figure)


def caption(text: str, width: int = 110) -> str:
    """``text`` wrapped for a plot title."""
    return "\n".join(textwrap.wrap(text, width))


def environment_line(env: dict, command: str) -> str:
    return (f"{env['date']} on {env['device']}; torch {env['torch']} (CUDA {env['cuda']}), "
            f"nvwavenet {env['nvwavenet']}, Python {env['python']}. Command: `{command}`")


def quick(device: torch.device | None = None) -> list[Row]:
    """The quick suite: R64/S256/A256 L=20 at batch 1 and 16, each nvwavenet engine on the device
    against the eager PyTorch loop; a short calibration keeps it under a minute."""
    device = device or default_device()
    config = CONFIGS["r64-l20"]
    rows = []
    for batch in (1, 16):
        for engine, dtype in [*engines_for(device), ("pytorch-eager", torch.float32)]:
            rows.append(run_one(config, engine, dtype, batch, device, seconds=0.5, repeats=3, chunk=512))
    add_ratios(rows)
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m nvwavenet.bench", description=quick.__doc__)
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    args = parser.parse_args(argv)
    device = torch.device(args.device) if args.device else default_device()
    rows = quick(device)
    env = environment(device)
    print(f"nvwavenet quick benchmark, {CONFIGS['r64-l20']}: {env['date']}, {env['device']}, torch {env['torch']}")
    print(text_table(COLUMNS, [row_cells(row) for row in rows]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
