"""Fences and spills of the cluster kernels, from their SASS (no GPU needed).

    python scripts/sass_check.py [--arch 90] [--size 64 256 256] [--weights __half]

Compiles PERSISTENT, CLUSTER, CLUSTER_ROLES, CLUSTER_FOLD, CLUSTER_BATCHED (k = 2, 4, 8) and
CLUSTER_SKIP_BLOCKS (csrc/cuda/persistent.cuh) for one size and weight type to a cubin, disassembles it with cuobjdump
(the pip package nvidia-cuda-cuobjdump provides one), and prints, per kernel, the device-scope
fences (MEMBAR.*.GPU), L1 invalidates (CCTL.IVALL), cluster barriers, st.async stores (STAS) and
mbarrier operations (SYNCS.*), and ptxas' registers and spills.

The claim checked for CLUSTER, CLUSTER_ROLES, CLUSTER_FOLD, each CLUSTER_BATCHED kernel and
CLUSTER_SKIP_BLOCKS (the same hand-offs): their per-step code holds no device-scope fence and no L1 invalidate. Those
instructions may only appear (a) next to the two cluster barriers of the whole call
(cluster.sync() before the first step and before exit, UCGABAR_ARV/WAIT) and (b) in the
out-of-line timeout report (report_timeout, common.cuh), which runs once a wait has given up. Exit
status 1 when the claim fails.
"""
from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CUDA_DIR = ROOT / "csrc" / "cuda"
FENCE = re.compile(r"\b(MEMBAR\.\w+\.GPU|MEMBAR\.SC\.GPU|CCTL\.IVALL)\b")
INSTRUCTION = re.compile(r"/\*([0-9a-f]{4,})\*/\s+(.*?)\s*;")


def find_tool(name: str) -> str | None:
    """`name` on the PATH, else from the pip wheels nvidia-cuda-cuobjdump / nvidia-cuda-nvdisasm."""
    found = shutil.which(name)
    if found:
        return found
    try:
        import nvidia
    except ImportError:
        return None
    for base in nvidia.__path__:
        for candidate in Path(base).glob(f"*/bin/{name}"):
            if os.access(candidate, os.X_OK):
                return str(candidate)
    return None


def compile_cubin(out_dir: Path, arch: str, size: tuple[int, int, int], weights: str) -> tuple[Path, str]:
    """The cubin of PERSISTENT, CLUSTER, CLUSTER_ROLES, CLUSTER_FOLD, CLUSTER_BATCHED and
    CLUSTER_SKIP_BLOCKS for one size, and ptxas -v's report."""
    source = out_dir / "cluster_kernels.cu"
    R, S, A = size
    source.write_text(f'#include "persistent.cuh"\nnamespace nvwavenet::gpu {{\n'
                      f"template struct Persistent<{R}, {S}, {A}, {weights}>;\n"
                      f"template struct Cluster<{R}, {S}, {A}, {weights}>;\n"
                      f"template struct ClusterRoles<{R}, {S}, {A}, {weights}>;\n"
                      f"template struct ClusterFold<{R}, {S}, {A}, {weights}>;\n"
                      f"template struct ClusterBatched<{R}, {S}, {A}, {weights}>;\n"
                      f"template struct ClusterSkipBlocks<{R}, {S}, {A}, {weights}>;\n}}\n")
    cubin = out_dir / "cluster_kernels.cubin"
    result = subprocess.run(["nvcc", "-std=c++17", f"-arch=sm_{arch}", "--use_fast_math", f"-I{CUDA_DIR}", "-cubin",
                             "-o", str(cubin), str(source), "-Xptxas", "-v"],
                            capture_output=True, text=True, check=True)
    return cubin, result.stderr


def kernel_name(mangled: str) -> str:
    """The variant of a persistent_kernel instantiation, from its last five template arguments
    (kMbarrier, kRoles, kFold, KS: streams per cluster, CLUSTER being CLUSTER_BATCHED's KS = 1,
    kSkipBlocks)."""
    match = re.search(r"Lb([01])ELb([01])ELb([01])ELi(\d+)ELb([01])EE", mangled)
    if not match:
        raise ValueError(f"not a persistent_kernel<..., kMbarrier, kRoles, kFold, KS, kSkipBlocks> name: {mangled}")
    mbarrier, roles, fold, streams, skip_blocks = match.groups()
    if skip_blocks == "1":
        return "CLUSTER_SKIP_BLOCKS"
    if fold == "1":
        return "CLUSTER_FOLD"
    if roles == "1":
        return "CLUSTER_ROLES"
    if mbarrier == "0":
        return "PERSISTENT"
    return "CLUSTER" if streams == "1" else f"CLUSTER_BATCHED k={streams}"


def kernels(sass: str) -> dict[str, list[tuple[int, str]]]:
    """Mangled kernel name -> [(address, instruction)], from cuobjdump -sass."""
    out: dict[str, list[tuple[int, str]]] = {}
    current = None
    for line in sass.splitlines():
        if match := re.search(r"Function : (\S+)", line):
            current = out.setdefault(match.group(1), [])
        elif current is not None and (match := INSTRUCTION.search(line)):
            current.append((int(match.group(1), 16), match.group(2)))
    return out


def fence_sites(code: list[tuple[int, str]]) -> dict[str, list[int]]:
    """Fences and invalidates by where they are: beside a cluster barrier, in a subroutine (code
    after the kernel's last EXIT, reached by CALL), or anywhere else (the step loop)."""
    last_exit = max((i for i, (_, text) in enumerate(code) if text.startswith("EXIT")), default=len(code))
    cluster_barriers = [i for i, (_, text) in enumerate(code) if "UCGABAR" in text]
    sites: dict[str, list[int]] = {"cluster barrier": [], "subroutine": [], "step code": []}
    for i, (address, text) in enumerate(code):
        if not FENCE.search(text):
            continue
        if i > last_exit:
            sites["subroutine"].append(address)
        elif any(abs(i - j) <= 4 for j in cluster_barriers):
            sites["cluster barrier"].append(address)
        else:
            sites["step code"].append(address)
    return sites


def subroutine_is_the_timeout_report(code: list[tuple[int, str]], address: int) -> bool:
    """Whether the subroutine holding `address` is report_timeout: the only one with a CAS on the
    status code (atomicCAS) before its fence."""
    start = max(i for i, (a, _) in enumerate(code) if a <= address)
    while start > 0 and not code[start - 1][1].startswith(("RET", "EXIT", "BRA")):
        start -= 1
    end = start
    while end < len(code) and not code[end][1].startswith("RET"):
        end += 1
    return any(text.startswith(("ATOM", "@")) and "ATOM" in text and ".CAS" in text for _, text in code[start:end])


def summarise(name: str, code: list[tuple[int, str]]) -> dict:
    count = lambda pattern: sum(1 for _, text in code if re.search(pattern, text))  # noqa: E731
    return {"kernel": kernel_name(name), "instructions": len(code),
            "fences": fence_sites(code), "cluster barriers": count(r"UCGABAR_ARV"), "st.async": count(r"^STAS"),
            "mbarrier": count(r"^SYNCS"), "ld/red acquire-release": count(r"^(RED|ATOM)\S*\.STRONG\.GPU")}


def check_cluster_kernel(code: list[tuple[int, str]]) -> list[str]:
    """What is wrong with CLUSTER's (or CLUSTER_ROLES's, CLUSTER_FOLD's, CLUSTER_BATCHED's,
    CLUSTER_SKIP_BLOCKS's) SASS (empty: the claim holds)."""
    problems = []
    sites = fence_sites(code)
    if sites["step code"]:
        problems.append(f"fences/invalidates in the step code at {[hex(a) for a in sites['step code']]}")
    for address in sites["subroutine"]:
        if not subroutine_is_the_timeout_report(code, address):
            problems.append(f"a fence at {hex(address)} in a subroutine that is not report_timeout")
    barriers = sum(1 for _, text in code if "UCGABAR_ARV" in text)
    if barriers != 2:
        problems.append(f"{barriers} cluster barrier arrivals, expected 2 (before the first step and before exit)")
    if not any(text.startswith("STAS") for _, text in code):
        problems.append("no st.async (STAS): the hand-offs are not the mbarrier ones")
    return problems


def ptxas_rows(report: str) -> list[str]:
    rows, kernel = [], None
    for line in report.splitlines():
        if match := re.search(r"Function properties for (\S*persistent_kernel\S*)", line):
            kernel = kernel_name(match.group(1))
        elif kernel and (match := re.search(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill", line)):
            frame = match.groups()
        elif kernel and (match := re.search(r"Used (\d+) registers", line)):
            rows.append(f"{kernel}: {match.group(1)} registers, stack {frame[0]} B, spill stores {frame[1]} B, "
                        f"spill loads {frame[2]} B")
            kernel = None
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", default="90")
    parser.add_argument("--size", type=int, nargs=3, default=[64, 256, 256])
    parser.add_argument("--weights", default="__half", choices=["float", "__half", "__nv_bfloat16"])
    args = parser.parse_args()
    cuobjdump = find_tool("cuobjdump")
    if cuobjdump is None or shutil.which("nvcc") is None:
        print("needs nvcc and cuobjdump (pip install nvidia-cuda-cuobjdump)", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory() as tmp:
        cubin, report = compile_cubin(Path(tmp), args.arch, tuple(args.size), args.weights)
        sass = subprocess.run([cuobjdump, "-sass", str(cubin)], capture_output=True, text=True, check=True).stdout
    print(f"R{args.size[0]}/S{args.size[1]}/A{args.size[2]} {args.weights}, sm_{args.arch}")
    for row in ptxas_rows(report):
        print("  ptxas:", row)
    failed = False
    for name, code in sorted(kernels(sass).items()):
        if "persistent_kernel" not in name:
            continue
        summary = summarise(name, code)
        print(f"  {summary['kernel']}: {summary}")
        if summary["kernel"] != "PERSISTENT":
            problems = check_cluster_kernel(code)
            print(f"  {summary['kernel']} step code fence-free:", "yes" if not problems else f"NO: {problems}")
            failed = failed or bool(problems)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
