"""The larger matrix of the host build (tests/test_cuda_host.py runs a small one in CI): every CUDA
variant x float32/float16/bfloat16 x R32/R64 x the shapes below, each compared with the float64
reference as SPEC section 4 says (nvwavenet.testing.compare_with_reference) under the in-order
schedule and, with --seeds, random block and thread schedules. With --aborts N, each cluster
variant also runs N aborted calls (1 ns wait limit, a random block starved, a random schedule and
tile): each must stop with the kernel's status report, never an emulation error (a deadlock, an
st.async landing in a block that exited: the abort drain's byte counts).

    python scripts/cuda_host_matrix.py [--samples T] [--seeds 0 1 2] [--variants CLUSTER ...] [--aborts N]

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
TILES = {Impl.SINGLE_BLOCK: [0, 2, 4, 8], Impl.TENSOR_CORE: [8, 16], Impl.CLUSTER_BATCHED: [0, 2, 4, 8]}
CLUSTER_KERNELS = (Impl.PERSISTENT, Impl.CLUSTER, Impl.CLUSTER_BATCHED, Impl.CLUSTER_SKIP_BLOCKS)
# Emulated devices per variant (0: 227 KB per block, 1: 64 KB). CLUSTER_SKIP_BLOCKS splits W_skip
# off the layer blocks on device 0 at R64 float32 (rows [124, 128) in a skip block) and on device 1
# at R32 float32 (several skip blocks, uneven rows); its aborted calls run there, in float32.
DEVICES = {Impl.CLUSTER_SKIP_BLOCKS: [0, 1]}
ABORT_SETUP = {Impl.CLUSTER_SKIP_BLOCKS: (torch.float32, 1)}  # (weights, device); else float16 on device 0


def aborted_call(host, variant, run: int) -> tuple[str, str]:
    """One call that must stop at a wait (1 ns limit, a starved block): (outcome, text)."""
    g = torch.Generator().manual_seed(run)
    tile = int(TILES.get(variant, [0])[torch.randint(0, len(TILES.get(variant, [0])), (1,), generator=g)])
    batch = int(torch.randint(1, 6, (1,), generator=g))
    layers = int(torch.randint(1, 13, (1,), generator=g))
    dtype, device = ABORT_SETUP.get(variant, (torch.float16, 0))
    net = NVWaveNet(**random_nv_wavenet_args(32, 128, 256, layers, 2, seed=run), dtype=dtype)
    cond = random_cond_input(32, batch, layers, 6, seed=run)
    probe = cuda_host.HostNet(net, host, variant, streams_per_block=tile, device=device)  # for the plan's grid
    probe.infer(cond[..., :1], selectors=torch.rand(batch, 1, generator=g))
    starved = int(torch.randint(0, probe.last_plan["grid_blocks"], (1,), generator=g))
    runner = cuda_host.HostNet(net, host, variant, seed=run + 1, spin_timeout_ns=1, starve_block=starved,
                               streams_per_block=tile, device=device)
    label = (f"batch {batch} L{layers} tile {tile or 'auto'} starved block {starved} of "
             f"{probe.last_plan['blocks_per_group']} per cluster, schedule {run + 1}")
    try:
        runner.infer(cond, selectors=torch.rand(batch, 6, generator=g))
    except host.EmulationError as error:
        return "FAILED", f"{label}: {str(error).splitlines()[0][:300]}"
    except RuntimeError as error:
        if "kernel stopped" in str(error):
            return "aborted", label
        return "FAILED", f"{label}: {str(error).splitlines()[0][:300]}"
    return "finished", label  # the starved block got to run before any wait gave up


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--samples", type=int, default=8)
    parser.add_argument("--seeds", type=int, nargs="*", default=[0])
    parser.add_argument("--variants", nargs="*", default=[v.name for v in
                                                          (Impl.SINGLE_BLOCK, Impl.DUAL_BLOCK, Impl.PERSISTENT,
                                                           Impl.CLUSTER, Impl.TENSOR_CORE, Impl.CLUSTER_ROLES,
                                                           Impl.CLUSTER_FOLD, Impl.CLUSTER_BATCHED,
                                                           Impl.CLUSTER_SKIP_BLOCKS)])
    parser.add_argument("--aborts", type=int, default=0, help="aborted calls per cluster variant")
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
                    for tile, seed, device in ((tile, seed, device) for tile in TILES.get(variant, [0])
                                               for seed in args.seeds for device in DEVICES.get(variant, [0])):
                        label = (f"{name} {dtype_name} R{R} batch {batch} L{layers} max_dilation {max_dilation} "
                                 f"tile {tile or 'auto'} schedule {seed}" + (f" device {device}" if device else ""))
                        start = time.time()
                        runner = cuda_host.HostNet(net, host, variant, seed=seed, streams_per_block=tile,
                                                   device=device)
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
        for run in range(args.aborts if variant in CLUSTER_KERNELS else 0):
            outcome, text = aborted_call(host, variant, run)
            summary[name][outcome] += 1
            print(f"{outcome:8s} {name} abort: {text}", flush=True)
    print()
    for name, counts in summary.items():
        print(f"{name:15s} " + ", ".join(f"{n} {k}" for k, n in sorted(counts.items())))
    return 1 if any(counts["FAILED"] for counts in summary.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
