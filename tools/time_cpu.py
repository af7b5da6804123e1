"""Times the compiled CPU engine against the eager PyTorch loop, on random weights.

    PYTHONPATH=. python tools/time_cpu.py --R 64 --S 256 --batch 1 --samples 16000 --repeats 7

Prints the median samples/s (all streams together) over the repeats, each one full
``NVWaveNet.infer`` call (or, with ``--chunk N``, calls of N samples through a state, as a
streaming caller makes them; ``--torch-between`` adds, before each call and outside the timing,
the matrix product a vocoder's conditioning makes, so that PyTorch's OpenMP threads compete with
the engine as they do in streaming), and, unless ``--no-eager``, the eager float32 loop
(``reference.incremental``) on a shorter run with the ratio. The load average is printed too:
on a shared machine, timings taken under load are not comparable with those taken idle.
"""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import time

import torch

import nvwavenet
from nvwavenet import NVWaveNet, reference
from nvwavenet.testing import random_cond_input, random_nv_wavenet_args


def seconds_of(run) -> float:
    start = time.perf_counter()
    run()
    return time.perf_counter() - start


def rate(run, streams: int, samples: int, repeats: int) -> list[float]:
    """Samples/s of each repeat; ``run()`` returns the seconds to count."""
    return [streams * samples / run() for _ in range(repeats)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--R", type=int, default=64)
    parser.add_argument("--S", type=int, default=256)
    parser.add_argument("--A", type=int, default=256)
    parser.add_argument("--L", type=int, default=20)
    parser.add_argument("--max-dilation", type=int, default=512)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--samples", type=int, default=16000)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--threads", type=int, default=None, help="CPU engine threads (default: automatic)")
    parser.add_argument("--dtype", choices=["float32", "float16", "bfloat16"], default="float32",
                        help="weight precision (NVWaveNet's dtype)")
    parser.add_argument("--chunk", type=int, default=None, help="samples per call, through a state (default: one call)")
    parser.add_argument("--torch-between", action="store_true",
                        help="a PyTorch product of conditioning size (2RL x 80 by 80 x chunk) before each call")
    parser.add_argument("--eager-samples", type=int, default=200)
    parser.add_argument("--no-eager", action="store_true")
    args = parser.parse_args()

    net = NVWaveNet(**random_nv_wavenet_args(args.R, args.S, args.A, args.L, args.max_dilation),
                    num_threads=args.threads, dtype=getattr(torch, args.dtype))
    cond = random_cond_input(args.R, args.batch, args.L, args.samples)
    net.infer(cond[..., :100])  # packs the weights, starts the threads
    chunk = args.chunk or args.samples
    mel_projection, mel = torch.randn(2 * args.R * args.L, 80), torch.randn(80, chunk)

    def generate() -> float:
        """Seconds in the engine only (the PyTorch products are not counted)."""
        state = net.init_state(args.batch)
        engine_seconds = 0.0
        for start in range(0, args.samples, chunk):
            if args.torch_between:
                torch.mm(mel_projection, mel)
            engine_seconds += seconds_of(lambda: net.infer(cond[..., start:start + chunk], state=state))
        return engine_seconds

    engine = rate(generate, args.batch, args.samples, args.repeats)
    info = nvwavenet.build_info()
    print(f"{platform.processor() or platform.machine()}, {info['cpu_threads']} CPUs, isa {info['cpu_isa']}, "
          f"threads {args.threads or 'automatic'}, load average {os.getloadavg()[0]:.2f}")
    print(f"R{args.R}/S{args.S}/A{args.A} L={args.L} max_dilation={args.max_dilation} batch={args.batch} "
          f"{args.dtype} weights, threads {args.threads or 'automatic'}, {chunk} samples per call"
          f"{', PyTorch product before each' if args.torch_between else ''}: "
          f"engine median {statistics.median(engine):,.0f} samples/s "
          f"(repeats: {', '.join(f'{r:,.0f}' for r in engine)})")
    if args.no_eager:
        return
    short = cond[..., :args.eager_samples]
    u = torch.rand(args.batch, args.eager_samples)
    eager = rate(lambda: seconds_of(lambda: reference.incremental(net.weights, short, u, dtype=torch.float32)),
                 args.batch, args.eager_samples, 3)
    print(f"eager PyTorch float32 loop median {statistics.median(eager):,.0f} samples/s; "
          f"engine / eager = {statistics.median(engine) / statistics.median(eager):.0f}x")


if __name__ == "__main__":
    main()
