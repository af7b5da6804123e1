"""Throughput of every nvwavenet engine next to what a PyTorch user would otherwise run.

For each configuration and batch size: samples/s per stream and in aggregate, the real-time factor
at 16, 22.05, 24 and 48 kHz, peak GPU memory, and the ratio to the best baseline measured in the
same run (eager PyTorch loop; the same step in a CUDA graph on a GPU, through torch.compile on a
CPU, compiled once per configuration and batch; the naive recomputation where it finishes in
reasonable time). Writes a table, a CSV, a PNG (samples/s against batch, log-log) and
this device's section of benchmarks/RESULTS.md.

    python benchmarks/throughput.py                 # every configuration, batch 1 .. 256
    python benchmarks/throughput.py --quick         # one configuration, batch 1, 8, 64
"""
from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

import torch

from nvwavenet import bench

HERE = Path(__file__).resolve().parent
# Naive generation is skipped at a batch where 4 samples would take longer than this (seconds).
NAIVE_BUDGET_SECONDS = 5.0


def measure_all(configs, batches, device, seconds, repeats, chunk, log=print, baselines=None) -> list[bench.Row]:
    baselines = bench.baselines_for(device) if baselines is None else baselines
    rows = []
    for config in configs:
        naive_rate = None
        for batch in batches:
            for engine, dtype in [*bench.engines_for(device), *((b, torch.float32) for b in baselines)]:
                if engine == "pytorch-naive" and naive_rate and 4 * batch / naive_rate > NAIVE_BUDGET_SECONDS:
                    rows.append(bench.Row(config.name, engine, batch, 0, 0.0, None,
                                          note=f"skipped: 4 samples would take ~{4 * batch / naive_rate:,.0f} s"))
                    continue
                row = bench.run_one(config, engine, dtype, batch, device, seconds=seconds, repeats=repeats,
                                    chunk=chunk)
                if engine == "pytorch-naive" and row.seconds:
                    naive_rate = row.aggregate
                rows.append(row)
                log(bench.text_table(bench.COLUMNS, [bench.row_cells(row)]).splitlines()[-1])
    bench.add_ratios(rows)
    return rows


def plot(rows: list[bench.Row], configs: list[bench.Config], path: Path, title: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, len(configs), figsize=(5 * len(configs), 4.2), squeeze=False)
    for axis, config in zip(axes[0], configs):
        for engine in dict.fromkeys(row.engine for row in rows):
            points = [(r.batch, r.aggregate) for r in rows
                      if r.config == config.name and r.engine == engine and r.seconds]
            if points:
                style = "--" if engine in bench.BASELINES else "-"
                axis.plot(*zip(*points), style, marker="o", markersize=3, label=engine)
        axis.set(xscale="log", yscale="log", xlabel="batch (streams)", ylabel="samples/s (aggregate)",
                 title=str(config))
        axis.grid(True, which="both", alpha=0.3)
    axes[0][0].legend(fontsize=7)
    figure.suptitle(bench.caption(title), fontsize=9)
    bench.save_figure(figure, path)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default=str(bench.default_device()))
    parser.add_argument("--configs", nargs="+", choices=list(bench.CONFIGS), default=list(bench.CONFIGS))
    parser.add_argument("--batches", nargs="+", type=int, default=[2 ** k for k in range(9)])
    parser.add_argument("--seconds", type=float, default=0.5, help="target duration of one timed run")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per row; the median is reported")
    parser.add_argument("--chunk", type=int, default=2048, help="samples of conditioning per call")
    parser.add_argument("--quick", action="store_true", help="r64-l20 only, batch 1, 8 and 64")
    parser.add_argument("--out", type=Path, default=HERE / "out", help="folder for the CSV and PNG")
    bench.add_results_option(parser, HERE / "RESULTS.md")
    args = parser.parse_args(argv)
    if args.quick:
        args.configs, args.batches = ["r64-l20"], [1, 8, 64]
    device = torch.device(args.device)
    env = bench.environment(device)
    command = "python benchmarks/throughput.py " + shlex.join(sys.argv[1:] if argv is None else argv)
    print(f"throughput on {env['device']}, {env['date']}, torch {env['torch']}")

    configs = [bench.CONFIGS[name] for name in args.configs]
    rows = measure_all(configs, args.batches, device, args.seconds, args.repeats, args.chunk)
    cells = [bench.row_cells(row) for row in rows]
    print()
    print(bench.text_table(bench.COLUMNS, cells))
    stem = f"throughput-{device.type}"
    bench.write_csv(args.out / f"{stem}.csv", bench.COLUMNS, cells)
    plot(rows, configs, args.out / f"{stem}.png", bench.environment_line(env, command))
    print(f"\nwrote {args.out / (stem + '.csv')} and {args.out / (stem + '.png')}")
    bench.write_results(args.results, {stem: f"## Throughput, {device.type.upper()}\n\n"
                                             f"{bench.environment_line(env, command)}\n\n"
                                             f"{bench.markdown_table(bench.COLUMNS, cells)}"})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
