"""Samples per second of each CUDA variant at the performance-target configuration (R64/S256/A256,
L=20, max_dilation 512), float32 and float16, batch 1 to 4096, with the old variants beside the
new, and AUTO's choice; samples/s per watt where ``nvidia-smi`` reads the board power.

    python scripts/cuda_timing.py [--batches 1 8 64 256 1024 4096] [--write-table PATH --passed-from JUNIT.xml]

Targets (issue 18): float16 >= 30M samples/s in aggregate at the best batch, float32 >= 15M;
at batch 64 and 256 >= 1.5x NV-WaveNet's figures on the same GPU.

Conditioning is one stream's, broadcast to the batch with a zero stride (the kernels take any
strides), so that large batches fit in memory; every stream still reads its own addresses.
Times each call with the host clock around infer() (which waits for the kernel), after a warm-up,
median of --repeats. Prints one table.

``--write-table`` writes what AUTO reads (``nvwavenet/autotune.py``): this GPU's name, the date,
this command, the commit, and samples/s per variant, precision and batch, for the variants whose
CUDA tests passed in ``--passed-from`` (pytest's JUnit XML of tests/test_cuda.py, which
scripts/gpu_check.sh writes). Only a GPU run writes it; nobody types its numbers.
"""
from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

from nvwavenet import Impl, NVWaveNet, autotune
from nvwavenet.testing import random_cond_input, random_nv_wavenet_args

ROOT = Path(__file__).resolve().parents[1]
TARGET = dict(n_residual=64, n_skip=256, n_classes=256, n_layers=20, max_dilation=512)
# CLUSTER_BATCHED with the streams per cluster its plan picks (1 where that keeps every cluster slot
# busy, so at small batches it times CLUSTER's kernel again).
# CLUSTER_SKIP_BLOCKS: the one cluster variant that runs float32 at this size (16 blocks).
VARIANTS = (Impl.CLUSTER_ROLES, Impl.CLUSTER, Impl.CLUSTER_FOLD, Impl.CLUSTER_BATCHED, Impl.CLUSTER_SKIP_BLOCKS,
            Impl.PERSISTENT, Impl.DUAL_BLOCK, Impl.SINGLE_BLOCK, Impl.TENSOR_CORE)


class PowerMeter:
    """Mean board power (W) over a region, from ``nvidia-smi -lms 100``; None where it reads none."""

    def __enter__(self):
        self.watts = None
        try:
            self._process = subprocess.Popen(
                ["nvidia-smi", "--query-gpu=power.draw", "--format=csv,noheader,nounits", "-lms", "100",
                 f"--id={torch.cuda.current_device()}"], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        except OSError:
            self._process = None
        time.sleep(0.15)  # its first reading
        return self

    def __exit__(self, *exc):
        if self._process is None:
            return
        self._process.terminate()
        text, _ = self._process.communicate(timeout=10)
        readings = []
        for line in text.split():
            try:
                readings.append(float(line))
            except ValueError:  # "[N/A]" on boards that do not report power
                pass
        self.watts = statistics.mean(readings) if readings else None


def time_one(net, variant, batch, samples, repeats):
    """(samples/s, watts or None, note): note is AUTO's choice or a refusal's reason."""
    cond = random_cond_input(64, 1, 20, samples, device="cuda", dtype=torch.float16).expand(-1, batch, -1, -1)
    u = torch.rand(batch, samples, device="cuda")
    try:
        net.infer(cond[..., :64], variant, selectors=u[:, :64])  # warm-up: module load, weight packing
    except ValueError as error:
        return None, None, str(error).split(": ", 2)[-1]
    seconds = []
    with PowerMeter() as power:
        for _ in range(repeats):
            torch.cuda.synchronize()
            start = time.perf_counter()
            net.infer(cond, variant, selectors=u)
            seconds.append(time.perf_counter() - start)
    note = f"ran {net.last_implementation.name} ({net.last_auto_rule})" if variant is Impl.AUTO else ""
    return batch * samples / statistics.median(seconds), power.watts, note


def commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                              check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--samples", type=int, default=4096, help="steps per timed call at batch 1")
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8, 64, 256, 1024, 4096])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--write-table", type=Path, help="write the measured table AUTO follows to this path")
    parser.add_argument("--passed-from", type=Path,
                        help="JUnit XML of `pytest -m cuda tests/test_cuda.py` (needed by --write-table)")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit(f"{__file__}: needs a CUDA GPU")
    if args.write_table and not args.passed_from:
        raise SystemExit(f"{__file__}: --write-table needs --passed-from, the JUnit XML of the CUDA tests")
    nets = {dtype: NVWaveNet(**random_nv_wavenet_args(**TARGET), dtype=dtype)
            for dtype in (torch.float32, torch.float16)}
    gpu = torch.cuda.get_device_name()
    print(f"{gpu}  R64/S256/A256 L=20 max_dilation=512")
    print(f"{'variant':<19} {'dtype':<8} {'batch':>6} {'samples/s':>14} {'per stream':>12} {'x 24 kHz':>9} "
          f"{'per W':>9}  note")
    rows = []
    for batch in args.batches:
        samples = max(64, args.samples // batch)
        for dtype, net in nets.items():
            name = str(dtype).replace("torch.", "")
            for variant in (*VARIANTS, Impl.AUTO):
                rate, watts, note = time_one(net, variant, batch, samples, args.repeats)
                if rate is None:
                    print(f"{variant.name:<19} {name:<8} {batch:>6} {'-':>14} {'-':>12} {'-':>9} {'-':>9}  {note}")
                    continue
                per_watt = f"{rate / watts:>9,.0f}" if watts else f"{'-':>9}"
                print(f"{variant.name:<19} {name:<8} {batch:>6} {rate:>14,.0f} {rate / batch:>12,.0f} "
                      f"{rate / batch / 24000:>9.2f} {per_watt}  {note}", flush=True)
                if variant is not Impl.AUTO:
                    rows.append({"variant": variant.name, "dtype": name, "size": [64, 256, 256], "batch": batch,
                                 "samples_per_s": rate, "watts": watts})
    if args.write_table:
        # No test report (the tests did not finish): the figures are kept, but AUTO may pick none of them.
        passed = (autotune.passed_variants(args.passed_from, [v.name for v in VARIANTS])
                  if args.passed_from.is_file() else [])
        autotune.write_table(args.write_table, gpu=gpu, command=" ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
                             commit=commit(), passed=passed, rows=rows)
        print(f"wrote {args.write_table} (variants that passed the CUDA tests: {', '.join(passed) or 'none'})")


if __name__ == "__main__":
    main()
