"""The larger matrix of the host build (tests/test_cuda_host.py runs a small one in CI): every CUDA
variant x float32/float16/bfloat16 x R32/R64 x the shapes below, each compared with the float64
reference as SPEC section 4 says (nvwavenet.testing.compare_with_reference) under the in-order
schedule and, with --seeds, random block and thread schedules.

    python scripts/cuda_host_matrix.py [--samples T] [--seeds 0 1 2] [--variants CLUSTER ...]

Prints one line per case (figures, or why it failed or was refused) and a summary per variant;
exits non-zero if any case failed.
"""
from __future__ import annotations

import argparse
import importlib.util
import sys
import time
from collections import defaultdict
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
_spec = importlib.util.spec_from_file_location("cuda_host", ROOT / "scripts" / "cuda_host.py")
cuda_host = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(cuda_host)

from nvwavenet import Impl, NVWaveNet  # noqa: E402
from nvwavenet.testing import compare_with_reference, random_cond_input, random_nv_wavenet_args  # noqa: E402

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
SIZES = [(32, 128, 256), (64, 128, 256)]
# (batch, layers, max_dilation): batch 1, 3, 8, 17 (partial tiles of 2, 4, 8 and 16), L 1 to 30,
# max_dilation 1 to 512.
SHAPES = [(1, 20, 512), (3, 2, 1), (8, 16, 128), (17, 1, 1), (3, 30, 512)]
TILES = {Impl.SINGLE_BLOCK: [0, 2, 4, 8], Impl.TENSOR_CORE: [8, 16]}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--samples", type=int, default=8)
    parser.add_argument("--seeds", type=int, nargs="*", default=[0])
    parser.add_argument("--variants", nargs="*", default=[v.name for v in
                                                          (Impl.SINGLE_BLOCK, Impl.DUAL_BLOCK, Impl.PERSISTENT,
                                                           Impl.CLUSTER, Impl.TENSOR_CORE, Impl.CLUSTER_ROLES,
                                                           Impl.CLUSTER_FOLD)])
    args = parser.parse_args()
    host = cuda_host.load()
    summary = defaultdict(lambda: defaultdict(int))
    for name in args.variants:
        variant = Impl[name]
        for (R, S, A) in SIZES:
            for dtype_name, dtype in DTYPES.items():
                for batch, layers, max_dilation in SHAPES:
                    net = NVWaveNet(**random_nv_wavenet_args(R, S, A, layers, max_dilation, seed=layers), dtype=dtype)
                    cond = random_cond_input(R, batch, layers, args.samples, seed=batch)
                    for tile in TILES.get(variant, [0]):
                        for seed in args.seeds:
                            label = (f"{name} {dtype_name} R{R} batch {batch} L{layers} max_dilation {max_dilation} "
                                     f"tile {tile or 'auto'} schedule {seed}")
                            start = time.time()
                            runner = cuda_host.HostNet(net, host, variant, seed=seed, streams_per_block=tile)
                            try:
                                figures = compare_with_reference(runner, cond, variant, seed=seed)
                                outcome = "passed"
                                text = (f"rel L2 {figures['logits_rel_l2']:.3g}, "
                                        f"{figures['boundary_mismatches']} boundary mismatches")
                            except ValueError as error:
                                if "cannot run this configuration" not in str(error):
                                    raise
                                outcome, text = "refused", str(error).split(": ", 2)[-1]
                            except (AssertionError, RuntimeError) as error:
                                outcome, text = "FAILED", str(error).splitlines()[0][:300]
                            summary[name][outcome] += 1
                            print(f"{outcome:8s} {label} ({time.time() - start:.1f} s): {text}", flush=True)
    print()
    for name, counts in summary.items():
        print(f"{name:13s} " + ", ".join(f"{n} {k}" for k, n in sorted(counts.items())))
    return 1 if any(counts["FAILED"] for counts in summary.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
