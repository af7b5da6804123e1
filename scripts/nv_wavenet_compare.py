"""nvwavenet beside NV-WaveNet's own timing tool, on one GPU in one lease, at the issue-24 targets'
sizes (R64/S256/A256, L=20, max_dilation 512; batch 1, 8, 64, 256; float16 and float32).

    python scripts/nv_wavenet_compare.py measure --perf build/nv-wavenet/nv_wavenet_perf --out DIR/compare.json
    python scripts/nv_wavenet_compare.py write-results DIR/compare.json [--results benchmarks/RESULTS.md]

``measure`` (needs the GPU) runs NV-WaveNet's ``nv_wavenet_perf`` (scripts/build_nv_wavenet_perf.sh)
over its modes (1 single block, 2 dual block, 3 persistent, 4 many-block) and batch-per-block
values (1, 2, 4 where they divide the batch), as its README says its best figure must be found,
and keeps every run; then times nvwavenet through ``Impl.AUTO`` (scripts/cuda_timing.py's
``time_one``: host clock around ``infer``, median of repeats). It rewrites the JSON after every
measurement, so a step cut short keeps what it measured.

``write-results`` (no GPU) formats a measured JSON into RESULTS.md's section for that GPU: per
precision and batch, nvwavenet's samples/s (aggregate), NV-WaveNet's best run and its mode, the
ratio and the issue's target. Nothing in the table is typed by hand.

What each tool times: nv_wavenet_perf prints ``num_samples / elapsed ms`` (per stream, "kHz")
between CUDA events around ``run_chunks`` (2048-sample chunks, class outputs copied to the host
after each; run_chunks passes dumpActivations=true to its kernels, as shipped), its weights and
conditioning already on the GPU; the aggregate is that times the batch.
nvwavenet's figure is batch x samples over the wall time of one ``infer`` call (the kernel and its
launch, conditioning already on the GPU, outputs on the GPU).
"""
from __future__ import annotations

import argparse
import datetime
import importlib.util
import json
import re
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BATCHES = (1, 8, 64, 256)
PRECISIONS = {"float16": 16, "float32": 32}
SIZE = dict(n_residual=64, n_skip=256, n_classes=256, n_layers=20, max_dilation=512)
MODES = {1: "SINGLE_BLOCK", 2: "DUAL_BLOCK", 3: "PERSISTENT", 4: "MANYBLOCK"}
# Issue 24's targets: samples/s at batch 1 and the ratio to NV-WaveNet's best.
FLOOR = {("float16", 1): 150_000, ("float32", 1): 100_000}
RATIO = {1: 2.5}  # other batches: 1.5


def samples_for(batch: int) -> int:
    """Steps per stream per timed run: about 0.1-0.3 s at NV-WaveNet's H200 rates (issue 24), and
    samples x L x batch x 2R x 4 below 2^31: nv_wavenet_perf sizes its conditioning in an int."""
    return 16384 if batch == 1 else max(512, 32768 // batch)


def per_block_options(batch: int) -> list[int]:
    return [c for c in (1, 2, 4) if batch % c == 0]


def run_perf(perf: Path, precision: int, batch: int, mode: int, per_block: int, timeout: float) -> dict:
    samples = samples_for(batch)
    command = [str(perf), "-l", str(SIZE["n_layers"]), "-r", str(SIZE["n_residual"]), "-s", str(SIZE["n_skip"]),
               "-a", str(SIZE["n_classes"]), "-d", str(SIZE["max_dilation"]), "-b", str(batch), "-c", str(per_block),
               "-n", str(samples), "-m", str(mode), "-p", str(precision)]
    row = {"dtype": f"float{precision}", "batch": batch, "mode": MODES[mode], "per_block": per_block,
           "samples": samples, "command": " ".join(command[1:])}
    try:
        result = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {**row, "error": f"timed out after {timeout:.0f} s"}
    match = re.search(r"Sample rate: ([0-9.]+) kHz", result.stdout)
    if result.returncode != 0 or match is None or float(match.group(1)) <= 0:
        tail = (result.stdout + result.stderr).strip().splitlines()[-1:] or [""]
        return {**row, "error": f"rc {result.returncode}: {tail[0][:200]}"}
    per_stream = float(match.group(1)) * 1000
    return {**row, "samples_per_s": per_stream * batch}


def load_cuda_timing():
    spec = importlib.util.spec_from_file_location("cuda_timing", ROOT / "scripts" / "cuda_timing.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def measure(args) -> int:
    import torch

    from nvwavenet import Impl, NVWaveNet
    from nvwavenet.testing import random_nv_wavenet_args

    if not torch.cuda.is_available():
        raise SystemExit(f"{__file__}: needs a CUDA GPU")
    cuda_timing = load_cuda_timing()
    if not args.perf.is_file():
        raise SystemExit(f"{__file__}: --perf {args.perf} does not exist (bash scripts/build_nv_wavenet_perf.sh)")
    record = {"gpu": torch.cuda.get_device_name(), "date": datetime.date.today().isoformat(),
              "commit": cuda_timing.commit(), "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
              "size": SIZE, "nv_wavenet": [], "nvwavenet": []}

    def save():
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(record, indent=1))

    # First every row's run in the mode NV-WaveNet's own AUTO takes for S = 4R (dual block, one
    # stream per block), then the rest of the search: a budget cut short narrows the search
    # instead of losing rows.
    runs = [(precision, batch, mode, per_block) for precision in PRECISIONS.values() for batch in BATCHES
            for mode in MODES for per_block in per_block_options(batch)]
    runs.sort(key=lambda run: (run[2:] != (2, 1),))
    deadline = time.monotonic() + args.budget
    for precision, batch, mode, per_block in runs:
        left = deadline - time.monotonic() - args.reserve
        if left < 5:
            print(f"out of time for NV-WaveNet fp{precision} b{batch} mode {mode} c{per_block}", flush=True)
            continue
        row = run_perf(args.perf, precision, batch, mode, per_block, min(20.0, left))
        record["nv_wavenet"].append(row)
        save()
        print(json.dumps(row), flush=True)
    for name in PRECISIONS:
        net = NVWaveNet(**random_nv_wavenet_args(**SIZE), dtype=getattr(torch, name))
        for batch in BATCHES:
            rate, watts, note = cuda_timing.time_one(net, Impl.AUTO, batch, samples_for(batch), args.repeats)
            row = {"dtype": name, "batch": batch, "samples": samples_for(batch), "samples_per_s": rate,
                   "watts": watts, "ran": note}
            record["nvwavenet"].append(row)
            save()
            print(json.dumps(row), flush=True)
    return 0


def table(record: dict) -> str:
    lines = ["| precision | batch | nvwavenet AUTO, samples/s | AUTO ran | NV-WaveNet best, samples/s | its mode, "
             "streams per block | ratio | target | met |", "|---|---|---|---|---|---|---|---|---|"]
    for name in PRECISIONS:
        for batch in BATCHES:
            ours = next((r for r in record["nvwavenet"] if r["dtype"] == name and r["batch"] == batch), None)
            runs = [r for r in record["nv_wavenet"] if r["dtype"] == name and r["batch"] == batch and "error" not in r]
            best = max(runs, key=lambda r: r["samples_per_s"], default=None)
            ours_rate = ours["samples_per_s"] if ours else None
            ratio = ours_rate / best["samples_per_s"] if ours_rate and best else None
            need = RATIO.get(batch, 1.5)
            floor = FLOOR.get((name, batch))
            target = f">= {need}x" + (f" and >= {floor:,} samples/s" if floor else "")
            met = "-" if ratio is None else ("yes" if ratio >= need and (floor is None or ours_rate >= floor) else "no")
            cells = [name, str(batch), f"{ours_rate:,.0f}" if ours_rate else "not measured",
                     (ours or {}).get("ran") or "-",
                     f"{best['samples_per_s']:,.0f}" if best else "no run",
                     f"{best['mode']}, {best['per_block']}" if best else "-",
                     f"{ratio:.2f}x" if ratio else "-", target, met]
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def best_aggregate(record: dict) -> str:
    runs = [r for r in record["nvwavenet"] if r["dtype"] == "float16" and r["samples_per_s"]]
    if not runs:
        return "Best float16 aggregate: not measured (target >= 30,000,000 samples/s)."
    best = max(runs, key=lambda r: r["samples_per_s"])
    return (f"Best float16 aggregate of nvwavenet: {best['samples_per_s']:,.0f} samples/s at batch {best['batch']} "
            f"(target >= 30,000,000 at the best batch; only batches {', '.join(map(str, BATCHES))} were timed here).")


def write_results(args) -> int:
    sys.path.insert(0, str(ROOT))
    from nvwavenet.bench import update_results

    record = json.loads(args.measured.read_text())
    failed = [r for r in record["nv_wavenet"] if "error" in r]
    slug = re.sub(r"[^a-z0-9]+", "-", record["gpu"].lower()).strip("-")
    body = "\n".join([
        f"## nvwavenet beside NV-WaveNet, {record['gpu']}",
        "",
        f"{record['date']} at commit {record['commit']}, one lease, R64/S256/A256 L=20 max_dilation 512. "
        f"Command: `{record['command']}` (scripts/gpu_check.sh); NV-WaveNet's figures are its own "
        "nv_wavenet_perf (third_party/nv-wavenet, the best of its modes and streams per block), nvwavenet's "
        "go through `Impl.AUTO`. Written by `scripts/nv_wavenet_compare.py write-results` from the measured JSON.",
        "",
        table(record),
        "",
        best_aggregate(record),
        "",
        f"NV-WaveNet runs: {len(record['nv_wavenet'])}, of which {len(failed)} failed or were refused "
        f"({'; '.join(sorted({r['mode'] + ': ' + r['error'] for r in failed}))[:600] or 'none'}).",
    ])
    update_results(args.results, f"vs-nv-wavenet-{slug}", body)
    print(body)
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("measure", help="time both on this GPU (writes --out)")
    run.add_argument("--perf", type=Path, default=ROOT / "build" / "nv-wavenet" / "nv_wavenet_perf")
    run.add_argument("--out", type=Path, required=True)
    run.add_argument("--repeats", type=int, default=3)
    run.add_argument("--budget", type=float, default=240, help="seconds for the whole measurement")
    run.add_argument("--reserve", type=float, default=60, help="seconds of --budget kept for nvwavenet's runs")
    write = commands.add_parser("write-results", help="format a measured JSON into RESULTS.md")
    write.add_argument("measured", type=Path)
    write.add_argument("--results", type=Path, default=ROOT / "benchmarks" / "RESULTS.md")
    args = parser.parse_args()
    return measure(args) if args.command == "measure" else write_results(args)


if __name__ == "__main__":
    sys.exit(main())
