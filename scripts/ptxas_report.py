"""Registers, spills, stack and static shared memory of every CUDA kernel, from ptxas -v.

    python scripts/ptxas_report.py [--arch 90] [--jobs 2]

Compiles each csrc/cuda/*.cu instantiation file with the flags CMakeLists.txt uses (no GPU
needed) and prints one row per kernel. Spills (local memory) or a register count at the cap of
the kernel's launch bounds are what to look at first.
"""
from __future__ import annotations

import argparse
import concurrent.futures
import re
import subprocess
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CUDA_DIR = ROOT / "csrc" / "cuda"
# The last template argument: SINGLE_BLOCK's tile (Li8E) or the cluster kernel's hand-off (Lb1E: CLUSTER).
KERNEL = re.compile(r"(single_block|dual_block|persistent)_kernelILi(\d+)ELi(\d+)ELi(\d+)E(\w+?)(?:L([ib])(\d+)E)?EEv")
TYPES = {"f": "float32", "6__half": "float16", "13__nv_bfloat16": "bfloat16"}


def report(source: Path, arch: str) -> list[tuple]:
    with tempfile.TemporaryDirectory() as tmp:
        result = subprocess.run(
            ["nvcc", "-std=c++17", f"-arch=sm_{arch}", "--use_fast_math", "-lineinfo", f"-I{CUDA_DIR}", "-c",
             str(source), "-o", str(Path(tmp) / "out.o"), "-Xptxas", "-v"],
            capture_output=True, text=True, check=True)
    rows, kernel, frame = [], None, None
    for line in result.stderr.splitlines():
        if match := re.search(r"Compiling entry function '(\S+)'", line):
            kernel = KERNEL.search(match.group(1))
        elif (match := re.search(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads", line)):
            frame = match.groups()
        elif kernel and (match := re.search(r"Used (\d+) registers.*?(?:(\d+) bytes smem)?$", line)):
            variant, R, S, A, weight, kind, last = kernel.groups()
            tile = last if kind == "i" else "1"
            if kind == "b" and last == "1":
                variant = "cluster"
            rows.append((variant, f"R{R}/S{S}/A{A}", TYPES.get(weight, weight), tile, match.group(1),
                         frame[0], frame[1], match.group(2) or "0"))
            kernel = None
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", default="90")
    parser.add_argument("--jobs", type=int, default=2)
    args = parser.parse_args()
    sources = sorted(p for p in CUDA_DIR.glob("*_*.cu"))
    with concurrent.futures.ThreadPoolExecutor(args.jobs) as pool:
        rows = [row for rows in pool.map(lambda s: report(s, args.arch), sources) for row in rows]
    header = ("variant", "size", "weights", "tile", "registers", "stack B", "spill B", "static smem B")
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    for row in [header, *sorted(rows)]:
        print("  ".join(str(cell).ljust(width) for cell, width in zip(row, widths)))


if __name__ == "__main__":
    main()
