"""What ``Impl.AUTO`` runs on a CUDA device, and with which batch tile: the one place for that rule.

Two sources, in this order:

1. **A measured table**, ``nvwavenet/autotune_table.json``, written on a GPU by
   ``python scripts/cuda_timing.py --write-table`` (never by hand): samples/s of each variant per
   precision, network size and batch, with the GPU's name, the date, the command and the commit.
   When it holds rows for the running GPU's name, AUTO takes the variant with the most samples/s
   at the measured batch nearest to the call's (on a log scale), for the call's precision and,
   where measured, its network size; only among the variants the table lists as ``passed`` (the
   script records a variant as passed only after its CUDA tests passed on that GPU), so a kernel
   no GPU has checked is never chosen.
2. **The provisional rule** otherwise (no table, another GPU, or no row for this precision),
   from the kernels' design estimates (the top comment of each ``csrc/cuda/*.cuh``):
   the latency variants while their stream groups all run at once, ``PERSISTENT`` (weights on
   chip across one cluster per stream) then ``DUAL_BLOCK`` (two blocks per stream); otherwise
   ``SINGLE_BLOCK``, which always runs, with the smallest tile (1, 2, 4 or 8 streams per block)
   that runs the batch in one wave of blocks, one per multiprocessor (8 when none does). It never
   picks ``TENSOR_CORE`` (or any variant not in ``AUTO_ORDER``).

Either way AUTO only picks a variant whose plan for this very call is runnable (sizes built,
shared memory, co-residency on this device), so a wrong guess costs speed, never an error.
:func:`decide` says which source it used (``NVWaveNet.last_auto_rule``).
"""
from __future__ import annotations

import dataclasses
import datetime
import json
import math
import xml.etree.ElementTree as ElementTree
from collections.abc import Mapping
from pathlib import Path

__all__ = ["AUTO_ORDER", "SINGLE_BLOCK_TILES", "TABLE_PATH", "Decision", "choose_variant", "decide",
           "candidates", "load_table", "write_table", "passed_variants", "single_block_tile", "streams_per_block"]

# Variant names (nvwavenet.Impl member names) in order of preference, each with how many waves
# of its co-resident stream groups it may take before the next one is preferred.
AUTO_ORDER: tuple[tuple[str, int], ...] = (
    ("PERSISTENT", 1),
    ("DUAL_BLOCK", 1),
    ("SINGLE_BLOCK", 0),  # 0: no limit, the fallback
)

# SINGLE_BLOCK's tiles (streams per block), smallest first: a block per stream reads the weights
# for one stream, a larger tile reuses each weight read for all of its streams.
SINGLE_BLOCK_TILES = (1, 2, 4, 8)

TABLE_PATH = Path(__file__).with_name("autotune_table.json")
_TABLE_KEYS = ("gpu", "date", "command", "commit", "passed", "rows")
_ROW_KEYS = ("variant", "dtype", "size", "batch", "samples_per_s")


@dataclasses.dataclass(frozen=True)
class Decision:
    variant: str
    rule: str  # "table <file> (<gpu>, <date>, batch <b>)" or "provisional"


def single_block_tile(batch: int, multiprocessors: int) -> int:
    """Streams per SINGLE_BLOCK block for this batch: the smallest tile whose blocks all run at
    once, one per multiprocessor (its 512-thread blocks take a whole SM), else the largest. Smaller
    tiles give more multiprocessors work, and a second wave of blocks would double the time."""
    return next((tile for tile in SINGLE_BLOCK_TILES if -(-batch // tile) <= multiprocessors), SINGLE_BLOCK_TILES[-1])


def streams_per_block(variant: str, batch: int, multiprocessors: int) -> int:
    """``Params.streams_per_block`` for ``variant``: SINGLE_BLOCK's tile; 0 for the others
    (TENSOR_CORE's plan then picks the largest tile that still gives every multiprocessor a block)."""
    return single_block_tile(batch, multiprocessors) if variant == "SINGLE_BLOCK" else 0


_LOADED: dict[tuple[Path, int, int], dict] = {}  # AUTO reads the table on every call: parse it once


def load_table(path: Path | str = TABLE_PATH) -> dict | None:
    """The measured table at ``path``, or None when there is none. A file that is not a table
    written by ``scripts/cuda_timing.py`` is a ValueError naming it."""
    path = Path(path)
    if not path.is_file():
        return None
    stat = path.stat()
    key = (path.resolve(), stat.st_mtime_ns, stat.st_size)
    if key not in _LOADED:
        _LOADED[key] = _parse_table(path)
    return _LOADED[key]


def _parse_table(path: Path) -> dict:
    try:
        table = json.loads(path.read_text())
        missing = [key for key in _TABLE_KEYS if key not in table]
        missing += sorted({key for row in table["rows"] for key in _ROW_KEYS if key not in row})
    except (ValueError, TypeError, KeyError) as error:
        raise ValueError(f"{path}: not an autotune table written by scripts/cuda_timing.py ({error})") from None
    if missing:
        raise ValueError(f"{path}: not an autotune table written by scripts/cuda_timing.py "
                         f"(missing {', '.join(missing)})")
    return table


def write_table(path: Path | str, *, gpu: str, command: str, commit: str, passed: list[str],
                rows: list[dict]) -> dict:
    """Writes the table :func:`load_table` reads (``scripts/cuda_timing.py --write-table`` on a GPU;
    tests with made-up rows) and returns it. ``rows`` are dicts with ``_ROW_KEYS``."""
    for row in rows:
        missing = [key for key in _ROW_KEYS if key not in row]
        if missing:
            raise ValueError(f"rows: every row needs {', '.join(_ROW_KEYS)}; one lacks {', '.join(missing)}")
    table = {"gpu": gpu, "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
             "command": command, "commit": commit, "passed": sorted(passed), "rows": rows}
    Path(path).write_text(json.dumps(table, indent=1) + "\n")
    return table


def passed_variants(junit_xml: Path | str, names: list[str]) -> list[str]:
    """The variant names with at least one test that ran and passed in pytest's JUnit XML report
    of the GPU tests (``pytest -m cuda tests/test_cuda.py --junitxml=...``) and none that failed.
    A test belongs to a variant when its name carries the variant's name (a parameter id such as
    ``[TENSOR_CORE-...]`` or the test's own name, compared without case)."""
    seen: dict[str, set[str]] = {}
    for case in ElementTree.parse(junit_xml).getroot().iter("testcase"):
        test = case.get("name", "").upper()
        status = ("failed" if case.find("failure") is not None or case.find("error") is not None
                  else "skipped" if case.find("skipped") is not None else "passed")
        for name in names:
            if name in test:
                seen.setdefault(name, set()).add(status)
    return sorted(name for name, statuses in seen.items() if "passed" in statuses and "failed" not in statuses)


def _rows_for(table: dict | None, gpu: str, dtype: str, size: tuple[int, int, int]) -> list[dict]:
    """The table's rows that apply: this GPU and precision, passed variants, this size if measured."""
    if table is None or table["gpu"] != gpu:
        return []
    rows = [row for row in table["rows"] if row["dtype"] == dtype and row["variant"] in table["passed"]]
    same_size = [row for row in rows if tuple(row["size"]) == tuple(size)]
    return same_size or rows


def candidates(table: dict | None, gpu: str, dtype: str, size: tuple[int, int, int]) -> list[str]:
    """The variants AUTO may pick for this call (the ones worth planning)."""
    rows = _rows_for(table, gpu, dtype, size)
    if rows:
        return sorted({row["variant"] for row in rows} | {name for name, _ in AUTO_ORDER})
    return [name for name, _ in AUTO_ORDER]


def choose_variant(batch: int, plans: Mapping[str, dict]) -> str:
    """The provisional rule: the variant name AUTO runs, given each concrete variant's plan.

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
    runnable = [name for name, plan in plans.items() if plan["runnable"] and name in dict(AUTO_ORDER)]
    if runnable:  # every runnable variant would need more waves than allowed: take the fallback order
        return next(name for name, _ in AUTO_ORDER if name in runnable)
    reasons = "; ".join(f"{name}: {plan['reason']}" for name, plan in plans.items())
    raise ValueError(f"implementation: no CUDA variant can run this configuration ({reasons})")


def decide(batch: int, plans: Mapping[str, dict], *, gpu: str, dtype: str, size: tuple[int, int, int],
           table: dict | None) -> Decision:
    """What AUTO runs: the table's fastest runnable variant at the nearest measured batch when the
    table applies to this GPU and precision, else :func:`choose_variant`."""
    rows = [row for row in _rows_for(table, gpu, dtype, size)
            if plans.get(row["variant"], {}).get("runnable")]
    if rows:
        nearest = min({row["batch"] for row in rows}, key=lambda b: (abs(math.log(b / batch)), b))
        best = max((row for row in rows if row["batch"] == nearest), key=lambda row: row["samples_per_s"])
        return Decision(best["variant"], f"table {TABLE_PATH.name} ({table['gpu']}, {table['date']}, "
                                         f"batch {nearest})")
    return Decision(choose_variant(batch, {name: plans[name] for name, _ in AUTO_ORDER if name in plans}),
                    "provisional")
