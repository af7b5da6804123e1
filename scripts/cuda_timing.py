"""Samples per second of each CUDA variant at the performance-target configuration (R64/S256/A256,
L=20, max_dilation 512), for filling nvwavenet/autotune.py's table and checking the targets:

    one stream, float16: >= 150k samples/s; one stream, float32: >= 100k;
    many streams, float16: >= 10M samples/s in aggregate at the best batch.

Conditioning is one stream's, broadcast to the batch with a zero stride (the kernels take any
strides), so that large batches fit in memory; every stream still reads its own addresses.
Times each call with the host clock around infer() (which waits for the kernel), after a warm-up,
median of --repeats. Prints one table.
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch

from nvwavenet import Impl, NVWaveNet
from nvwavenet.testing import random_cond_input, random_nv_wavenet_args

TARGET = dict(n_residual=64, n_skip=256, n_classes=256, n_layers=20, max_dilation=512)


def time_one(net, variant, batch, samples, repeats):
    cond = random_cond_input(64, 1, 20, samples, device="cuda", dtype=torch.float16).expand(-1, batch, -1, -1)
    u = torch.rand(batch, samples, device="cuda")
    try:
        net.infer(cond[..., :64], variant, selectors=u[:, :64])  # warm-up: module load, weight packing
    except ValueError as error:
        return None, str(error).split(": ", 2)[-1]
    seconds = []
    for _ in range(repeats):
        torch.cuda.synchronize()
        start = time.perf_counter()
        net.infer(cond, variant, selectors=u)
        seconds.append(time.perf_counter() - start)
    return batch * samples / statistics.median(seconds), net.last_implementation.name


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--samples", type=int, default=4096, help="steps per timed call at batch 1")
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8, 64, 512, 2048])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit(f"{__file__}: needs a CUDA GPU")
    nets = {dtype: NVWaveNet(**random_nv_wavenet_args(**TARGET), dtype=dtype)
            for dtype in (torch.float32, torch.float16)}
    print(f"{torch.cuda.get_device_name()}  R64/S256/A256 L=20 max_dilation=512")
    print(f"{'variant':<13} {'dtype':<8} {'batch':>6} {'samples/s':>14} {'per stream':>12} {'x 24 kHz':>9}  note")
    for batch in args.batches:
        samples = max(64, args.samples // batch)
        for dtype, net in nets.items():
            for variant in (Impl.CLUSTER, Impl.PERSISTENT, Impl.DUAL_BLOCK, Impl.SINGLE_BLOCK, Impl.AUTO):
                rate, note = time_one(net, variant, batch, samples, args.repeats)
                name = str(dtype).replace("torch.", "")
                if rate is None:
                    print(f"{variant.name:<13} {name:<8} {batch:>6} {'-':>14} {'-':>12} {'-':>9}  {note}")
                else:
                    note = f"ran {note}" if variant is Impl.AUTO else ""
                    print(f"{variant.name:<13} {name:<8} {batch:>6} {rate:>14,.0f} {rate / batch:>12,.0f} "
                          f"{rate / batch / 24000:>9.2f}  {note}", flush=True)


if __name__ == "__main__":
    main()
