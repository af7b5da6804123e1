"""Registers, spills, stack and static shared memory of every CUDA kernel, from ptxas -v, and with
--sass the instructions that matter in its machine code (cuobjdump -sass).

    python scripts/ptxas_report.py [--arch 90] [--jobs 2] [--sass] [--only tensor_core]

Compiles each csrc/cuda/*.cu instantiation file with the flags CMakeLists.txt uses (no GPU
needed) and prints one row per kernel. Spills (local memory) or a register count at the cap of
the kernel's launch bounds are what to look at first. --sass adds, per kernel, the tensor-core
instructions (HMMA: mma.sync; HGMMA would be wgmma) and the local-memory loads and stores (LDL,
STL) in its code; it needs cuobjdump and nvdisasm on the PATH (the CUDA toolkit, or the pip
packages nvidia-cuda-cuobjdump and nvidia-cuda-nvdisasm, whose bin folder is searched too).
"""
from __future__ import annotations

import argparse
import concurrent.futures
import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

from sass_check import kernel_name  # (scripts/, beside this file)

ROOT = Path(__file__).resolve().parents[1]
CUDA_DIR = ROOT / "csrc" / "cuda"
KERNEL = re.compile(r"(single_block|dual_block|persistent|tensor_core)_kernelILi(\d+)ELi(\d+)ELi(\d+)E(\w+?)((?:L[ib]\d+E)*)EEv")
TYPES = {"f": "float32", "6__half": "float16", "13__nv_bfloat16": "bfloat16"}


def sass_tool_path() -> str | None:
    """PATH with the pip CUDA packages' bin folder added, when cuobjdump is found there or on PATH."""
    path = os.environ.get("PATH", "")
    try:
        import nvidia

        path = os.pathsep.join([*(str(Path(p) / "cu13" / "bin") for p in nvidia.__path__), path])
    except ImportError:
        pass
    return path if shutil.which("cuobjdump", path=path) and shutil.which("nvdisasm", path=path) else None


def sass_counts(obj: Path, path: str) -> dict[str, dict[str, int]]:
    """Per kernel (mangled name): how many HMMA, HGMMA, LDL and STL instructions its code has."""
    text = subprocess.run(["cuobjdump", "-sass", str(obj)], capture_output=True, text=True, check=True,
                          env={**os.environ, "PATH": path}).stdout
    counts, name = {}, None
    for line in text.splitlines():
        if match := re.search(r"Function : (\S+)", line):
            name = match.group(1)
            counts[name] = dict.fromkeys(("HMMA", "HGMMA", "LDL", "STL"), 0)
        elif name:
            for op in counts[name]:
                if re.search(rf"\b{op}\b", line):
                    counts[name][op] += 1
    return counts


def report(source: Path, arch: str, sass_path: str | None) -> list[tuple]:
    with tempfile.TemporaryDirectory() as tmp:
        obj = Path(tmp) / "out.o"
        result = subprocess.run(
            ["nvcc", "-std=c++17", f"-arch=sm_{arch}", "--use_fast_math", "-lineinfo", f"-I{CUDA_DIR}", "-c",
             str(source), "-o", str(obj), "-Xptxas", "-v"],
            capture_output=True, text=True, check=True)
        sass = sass_counts(obj, sass_path) if sass_path else {}
    rows, kernel, frame, mangled = [], None, None, None
    for line in result.stderr.splitlines():
        if match := re.search(r"Compiling entry function '(\S+)'", line):
            mangled = match.group(1)
            kernel = KERNEL.search(mangled)
        elif (match := re.search(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads", line)):
            frame = match.groups()
        elif kernel and (match := re.search(r"Used (\d+) registers.*?(?:(\d+) bytes smem)?$", line)):
            variant, R, S, A, weight, trailing = kernel.groups()
            # The integer template argument after the weight type: SINGLE_BLOCK's tile (Li8E) or
            # the persistent kernel's streams per cluster; TENSOR_CORE chooses its tile at run time.
            ints = re.findall(r"Li(\d+)E", trailing)
            tile = ints[0] if ints else ("run time" if variant == "tensor_core" else "1")
            if variant == "persistent":  # which variant of it its flags make (PERSISTENT, CLUSTER, ...)
                variant = kernel_name(mangled).split()[0].lower()
            counts = sass.get(mangled)
            rows.append((variant, f"R{R}/S{S}/A{A}", TYPES.get(weight, weight), tile, match.group(1),
                         frame[0], frame[1], match.group(2) or "0",
                         *((counts["HMMA"], counts["HGMMA"], counts["LDL"] + counts["STL"]) if sass_path else ())))
            kernel = None
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", default="90")
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--sass", action="store_true", help="count HMMA/HGMMA and LDL/STL in each kernel's SASS")
    parser.add_argument("--only", default="", help="only the .cu files whose name starts with this")
    args = parser.parse_args()
    sass_path = sass_tool_path() if args.sass else None
    if args.sass and not sass_path:
        raise SystemExit(f"{__file__}: --sass needs cuobjdump and nvdisasm (pip install nvidia-cuda-cuobjdump "
                         "nvidia-cuda-nvdisasm)")
    sources = sorted(p for p in CUDA_DIR.glob("*_*.cu") if p.name.startswith(args.only))
    with concurrent.futures.ThreadPoolExecutor(args.jobs) as pool:
        rows = [row for rows in pool.map(lambda s: report(s, args.arch, sass_path), sources) for row in rows]
    header = ("variant", "size", "weights", "tile", "registers", "stack B", "spill B", "static smem B",
              *(("HMMA", "HGMMA", "LDL+STL") if sass_path else ()))
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    for row in [header, *sorted(rows)]:
        print("  ".join(str(cell).ljust(width) for cell, width in zip(row, widths)))


if __name__ == "__main__":
    main()
