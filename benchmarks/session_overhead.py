"""What a one-step call costs beyond the engine's own step, on the CPU (issue 27: ``Session.step``
should cost at most 1.2x the engine's step).

An R64/S256/A256, L=20, max-dilation-512 network (random weights; speed does not depend on
training), float32, one sample per call, at each batch:

- engine: the compiled call alone, ``_C.generate_cpu(params)`` on Params filled once;
- Session.step: the whole call a streaming caller makes, ``session.step(slots, cond, selectors)``;
- infer: ``NVWaveNet.infer(cond, selectors=..., state=state)`` (full value checks every call).

The three are timed in rotation (one call each, over and over), so load from other jobs on the
machine falls on all three alike; each figure is the median over ``--calls`` calls.

    python benchmarks/session_overhead.py [--calls 400] [--batches 1 32]
"""
from __future__ import annotations

import argparse
import os
import shlex
import statistics
import sys
import time
from pathlib import Path

import torch

from nvwavenet import NVWaveNet, bench, engines
from nvwavenet.session import Session
from nvwavenet.testing import random_cond_input, random_nv_wavenet_args

HERE = Path(__file__).resolve().parent
R, S, A, L, MAX_DILATION = 64, 256, 256, 20, 512


def time_calls(calls: dict, count: int) -> tuple[dict, dict]:
    """Each callable in ``calls``, run in rotation ``count`` times (after a warm-up of a tenth as
    many): the median seconds per call of each, and the median over rotations of each one's time
    over the first's in the same rotation (a ratio that load changing during the run moves less)."""
    times = {name: [] for name in calls}
    for i in range(count + count // 10):
        for name, call in calls.items():
            start = time.perf_counter()
            call()
            if i >= count // 10:
                times[name].append(time.perf_counter() - start)
    first = next(iter(calls))
    ratios = {name: statistics.median(t / t0 for t, t0 in zip(values, times[first])) for name, values in times.items()}
    return {name: statistics.median(values) for name, values in times.items()}, ratios


def measure(net: NVWaveNet, batch: int, count: int) -> dict:
    cond = random_cond_input(R, batch, L, 1, seed=batch)
    u = torch.rand(batch, 1, generator=torch.Generator().manual_seed(batch))
    session = Session(net, batch)
    slots = [session.admit() for _ in range(batch)]
    session.step(slots, cond, u)  # fills session._params for this call shape
    params, isa = session._params, engines.cpu_isa()
    C = engines.extension()
    state = net.init_state(batch)
    return time_calls({
        "engine": lambda: C.generate_cpu(params, isa),
        "session": lambda: session.step(slots, cond, u),
        "infer": lambda: net.infer(cond, selectors=u, state=state),
    }, count)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calls", type=int, default=400, help="timed calls of each kind per batch (median)")
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 32])
    bench.add_results_option(parser, HERE / "RESULTS.md")
    args = parser.parse_args(argv)
    command = " ".join(["python benchmarks/session_overhead.py", shlex.join(sys.argv[1:] if argv is None else argv)]).strip()
    env = bench.environment(torch.device("cpu"))
    net = NVWaveNet(**random_nv_wavenet_args(R, S, A, L, MAX_DILATION, seed=0))
    load_before = os.getloadavg()
    rows = []
    for batch in args.batches:
        t, ratio = measure(net, batch, args.calls)
        rows.append([str(batch), f"{t['engine'] * 1e6:,.1f}", f"{t['session'] * 1e6:,.1f}",
                     f"{ratio['session']:.2f}x", f"{t['infer'] * 1e6:,.1f}", f"{ratio['infer']:.2f}x"])
        print(rows[-1], flush=True)
    load_after = os.getloadavg()
    header = ["batch", "engine step, µs", "Session.step, µs", "Session / engine", "infer(state=), µs", "infer / engine"]
    description = (f"R{R}/S{S}/A{A} L={L} max dilation {MAX_DILATION}, float32, CPU engine ({engines.cpu_isa()}, "
                   f"default threads), one sample per call; median of {args.calls} calls of each kind, timed in "
                   "rotation; the ratios are medians over rotations of a call's time over the engine's in the "
                   "same rotation. engine: the compiled call alone on Params filled once; Session.step: the "
                   "whole call; infer: `NVWaveNet.infer(cond, selectors=u, state=state)`. Load average "
                   f"{' '.join(f'{x:.2f}' for x in load_before)} before, "
                   f"{' '.join(f'{x:.2f}' for x in load_after)} after (other jobs share the machine).")
    print(description)
    print(bench.text_table(header, rows))
    bench.write_results(args.results, {
        "session-overhead-cpu": f"## Session overhead, CPU\n\n{description}\n{bench.environment_line(env, command)}"
                                f"\n\n{bench.markdown_table(header, rows)}"})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
