"""The Fast WaveNet paper's timing experiment: seconds per generated sample against depth.

A model of 2 blocks of L layers (dilations 1, 2, ..., 2^(L-1), twice), L = 1 .. 15, batch 1:
naive generation (recomputing the receptive field, O(2^L) per sample), the queue-based PyTorch loop
(O(L)), and nvwavenet's engines on this device. Medians over repeats; a CSV, a PNG (log scale)
and this device's section of benchmarks/RESULTS.md.

    python benchmarks/naive_vs_fast.py
"""
from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

import torch

from nvwavenet import bench, receptive_field

HERE = Path(__file__).resolve().parent
HEADER = ["L (per block)", "layers", "receptive field", "engine", "seconds per sample", "samples timed"]


def measure_depth(config: bench.Config, engines, device, args) -> list[tuple[str, float, int]]:
    results = []
    for engine, dtype in engines:
        row = bench.run_one(config, engine, dtype, 1, device, seconds=args.seconds, repeats=args.repeats,
                            chunk=256)
        results.append((engine, row.seconds / row.samples if row.seconds else float("nan"), row.samples))
    return results


def formatted(row: list) -> list[str]:
    return [f"{c:.3g}" if isinstance(c, float) else str(c) for c in row]


def plot(table, path: Path, title: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(6.5, 4.5))
    for engine in dict.fromkeys(row[3] for row in table):
        points = [(row[0], row[4]) for row in table if row[3] == engine and row[4] == row[4]]
        axis.plot(*zip(*points), "--" if engine.startswith("pytorch") else "-", marker="o", markersize=3,
                  label=engine)
    axis.set(yscale="log", xlabel="L (layers per block, 2 blocks)", ylabel="seconds per generated sample")
    axis.grid(True, which="both", alpha=0.3)
    axis.legend(fontsize=7)
    axis.set_title(bench.caption(title, 95), fontsize=7)
    bench.save_figure(figure, path)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default=str(bench.default_device()))
    parser.add_argument("--max-depth", type=int, default=15)
    parser.add_argument("--R", type=int, default=32)
    parser.add_argument("--S", type=int, default=128)
    parser.add_argument("--A", type=int, default=256)
    parser.add_argument("--seconds", type=float, default=0.3, help="target duration of one timed run")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--naive-limit", type=float, default=2.0,
                        help="stop naive generation once one sample takes longer than this (seconds)")
    parser.add_argument("--out", type=Path, default=HERE / "out")
    bench.add_results_option(parser, HERE / "RESULTS.md")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    env = bench.environment(device)
    command = "python benchmarks/naive_vs_fast.py " + shlex.join(sys.argv[1:] if argv is None else argv)
    engines = [("pytorch-naive", torch.float32), ("pytorch-eager", torch.float32), *bench.engines_for(device)]
    print(f"naive vs fast on {env['device']}, {env['date']}, R{args.R}/S{args.S}/A{args.A}, batch 1")

    table, naive_stopped_at = [], None
    for depth in range(1, args.max_depth + 1):
        active = [e for e in engines if not (e[0] == "pytorch-naive" and naive_stopped_at)]
        # Two blocks of `depth` layers: dilations 1 .. 2^(depth - 1), twice.
        config = bench.Config(f"2x{depth}", args.R, args.S, args.A, 2 * depth, 2 ** (depth - 1))
        for engine, per_sample, samples in measure_depth(config, active, device, args):
            row = [depth, config.L, receptive_field(config.L, config.max_dilation), engine, per_sample, samples]
            table.append(row)
            print(bench.text_table(HEADER, [formatted(row)]).splitlines()[-1])
            if engine == "pytorch-naive" and per_sample > args.naive_limit:
                naive_stopped_at = depth
    notes = []
    if naive_stopped_at:
        notes.append(f"Naive generation stopped after L={naive_stopped_at}: one sample took over "
                     f"{args.naive_limit:g} s on this device.")
    cells = [formatted(row) for row in table]
    print()
    print(bench.text_table(HEADER, cells))
    for note in notes:
        print(note)
    stem = f"naive-vs-fast-{device.type}"
    bench.write_csv(args.out / f"{stem}.csv", HEADER, table)
    plot(table, args.out / f"{stem}.png", bench.environment_line(env, command))
    print(f"wrote {args.out / (stem + '.csv')} and {args.out / (stem + '.png')}")
    body = (f"## Naive vs fast generation (Fast WaveNet timing experiment), {device.type.upper()}\n\n"
            f"R{args.R}/S{args.S}/A{args.A}, 2 blocks of L layers, batch 1. "
            f"{bench.environment_line(env, command)}\n\n" + "\n".join(notes) + "\n\n"
            + bench.markdown_table(HEADER, cells))
    bench.write_results(args.results, {stem: body})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
