"""What ``Impl.AUTO`` runs on a CUDA device, and with which batch tile: the one place for that rule.

PROVISIONAL: no CUDA kernel has been timed yet, so the rule below comes from the kernels' design
estimates (the top comment of each ``csrc/cuda/*.cuh``), not from measurements. It is meant to be
replaced by figures from ``benchmarks/throughput.py`` on the target GPU; edit ``AUTO_ORDER`` and
``SINGLE_BLOCK_TILE_FROM`` (and this paragraph) when they exist. Whatever the table says, AUTO
only ever picks a variant whose plan for this very call is runnable (sizes built, shared memory,
co-residency on this device), so a wrong guess costs speed, never an error.

The rule, in words:

1. The latency variants first, while their stream groups all run at once: ``PERSISTENT`` (weights
   on chip across one cluster per stream) while the batch fits in the clusters the GPU holds at
   once, then ``DUAL_BLOCK`` (two blocks per stream) while it fits in the pairs the GPU holds at
   once. Beyond that they would run in waves and lose their edge.
2. Otherwise ``SINGLE_BLOCK``, which always runs: one stream per block while the batch is no larger
   than the number of multiprocessors (every stream gets its own SM), tiles of 8 streams per block
   beyond that (each weight read from L2 serves 8 streams).
"""
from __future__ import annotations

from collections.abc import Mapping

__all__ = ["AUTO_ORDER", "SINGLE_BLOCK_TILE_FROM", "choose_variant", "single_block_tile"]

# Variant names (nvwavenet.Impl member names) in order of preference, each with how many waves
# of its co-resident stream groups it may take before the next one is preferred.
AUTO_ORDER: tuple[tuple[str, int], ...] = (
    ("PERSISTENT", 1),
    ("DUAL_BLOCK", 1),
    ("SINGLE_BLOCK", 0),  # 0: no limit, the fallback
)

# SINGLE_BLOCK uses tiles of 8 streams once the batch exceeds this many times the SM count.
SINGLE_BLOCK_TILE_FROM = 1


def single_block_tile(batch: int, multiprocessors: int) -> int:
    """Streams per SINGLE_BLOCK block (1 or 8, the tiles built) for this batch."""
    return 1 if batch <= SINGLE_BLOCK_TILE_FROM * multiprocessors else 8


def choose_variant(batch: int, plans: Mapping[str, dict]) -> str:
    """The variant name AUTO runs, given each concrete variant's plan for this call.

    ``plans`` maps ``"SINGLE_BLOCK"``, ``"DUAL_BLOCK"``, ``"PERSISTENT"`` to the dicts of
    ``nvwavenet._C.cuda_plan`` (keys ``runnable``, ``reason``, ``co_resident_groups``, ...).
    Raises ValueError, with every variant's reason, when none can run.
    """
    for name, waves in AUTO_ORDER:
        plan = plans.get(name)
        if plan is None or not plan["runnable"]:
            continue
        if waves == 0 or batch <= waves * plan["co_resident_groups"]:
            return name
    runnable = [name for name, plan in plans.items() if plan["runnable"]]
    if runnable:  # every runnable variant would need more waves than allowed: take the fallback order
        return next(name for name, _ in AUTO_ORDER if name in runnable)
    reasons = "; ".join(f"{name}: {plan['reason']}" for name, plan in plans.items())
    raise ValueError(f"implementation: no CUDA variant can run this configuration ({reasons})")
