"""The host build of the CUDA kernels: csrc/cuda's own sources (launch.cu and every per-variant,
per-precision .cu file) compiled by g++ as C++ with the emulation layer of csrc/cuda/host
force-included, as the Python module ``nvwavenet_cuda_host`` (not part of the shipped
nvwavenet._C), and :class:`HostNet`, which runs an NVWaveNet's generation through it. R32 and
R64 sizes only (SIZES), so that it builds quickly; ``sizes`` builds others (e.g. the target network,
``"X(64, 256, 256)"``, to see its plans).

The module is cached under build/cuda_host/<hash of the sources and flags>/, so the tests of one
run (and later runs on unchanged sources) build it once.

    python scripts/cuda_host.py [--jobs N] [--source-root DIR] [--sizes "X(64, 256, 256)"]

builds and prints the module's path. ``load()`` builds if needed and imports it.
"""
from __future__ import annotations

import argparse
import concurrent.futures
import hashlib
import importlib.util
import os
import re
import subprocess
import sys
import sysconfig
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MODULE = "nvwavenet_cuda_host"
SIZES = "X(32, 128, 256) X(64, 128, 256)"
# -fno-extern-tls-init: `__shared__` is thread_local (emu.h) and never dynamically initialised, so
# no TLS init call (a null weak symbol under -fPIC) is emitted. g++ ignores nvcc's `#pragma unroll N`,
# which leaves N's constant unused.
def kernel_flags(sizes: str = SIZES) -> list[str]:
    return ["-std=c++17", "-O2", "-fPIC", "-fvisibility=hidden", "-fno-extern-tls-init", "-DNVWAVENET_HOST_BUILD",
            f"-DNVWAVENET_FOR_EACH_SIZE(X)={sizes}", "-Wall", "-Wno-unknown-pragmas", "-Wno-unused-function",
            "-Wno-unused-variable"]


def compiler() -> str:
    return os.environ.get("CXX", "g++")


_INCLUDE = re.compile(r'^\s*#\s*include\s+"([^"]+)"', re.MULTILINE)


def _closure(path: Path) -> list[Path]:
    """`path` and every project file it includes with quoted includes, transitively."""
    seen, todo = [], [path]
    while todo:
        file = todo.pop()
        if file in seen:
            continue
        seen.append(file)
        todo += [(file.parent / name).resolve() for name in _INCLUDE.findall(file.read_text())
                 if (file.parent / name).exists()]
    return sorted(seen)


def _digest(parts) -> str:
    digest = hashlib.sha256()
    for part in parts:
        digest.update(part if isinstance(part, bytes) else str(part).encode())
    return digest.hexdigest()[:16]


def build(source_root: Path | None = None, jobs: int | None = None, out_dir: Path | None = None,
          verbose: bool = False, sizes: str = SIZES) -> Path:
    """The path of the built module for the sources under ``source_root`` (default: this checkout).
    Each object is cached under a hash of its flags and of every file it includes, so a change to
    one kernel recompiles only that kernel's files. Raises subprocess.CalledProcessError with the
    compiler's output on a compile error."""
    import pybind11

    root = (source_root or ROOT).resolve()
    cache = (out_dir or ROOT / "build" / "cuda_host").resolve()
    host = root / "csrc" / "cuda" / "host"
    emu = host / "emu.h"
    version = subprocess.run([compiler(), "--version"], capture_output=True, text=True, check=True).stdout
    flags = kernel_flags(sizes)
    kernel = [compiler(), *flags, "-I", str(host / "include"), "-include", str(emu)]
    python = [compiler(), "-std=c++17", "-O2", "-fPIC", "-fvisibility=hidden", "-I", pybind11.get_include(),
              "-I", sysconfig.get_paths()["include"]]
    units = [(src, [*kernel, "-x", "c++"], True) for src in sorted((root / "csrc" / "cuda").glob("*.cu"))]
    units += [(host / "emu.cpp", kernel, True), (host / "module.cpp", python, False)]
    objects, commands = [], []
    for src, flags, emulated in units:
        # An emulated unit also reads the whole emulation layer (force-included, and the CUDA
        # headers it stands in for).
        files = _closure(src.resolve()) + (sorted(p.resolve() for p in host.rglob("*.h")) if emulated else [])
        # Independent of where the sources are (the mutants script builds copies elsewhere).
        key = _digest([version, emulated, " ".join(flags), pybind11.__version__, sys.version,
                       *(part for f in files for part in (f.relative_to(root), f.read_bytes()))])
        obj = cache / "objects" / f"{src.stem}-{key}.o"
        objects.append(obj)
        if not obj.exists():
            commands.append((obj, [*flags, "-c", str(src), "-o"]))
    target = cache / _digest([o.name for o in objects]) / (MODULE + sysconfig.get_config_var("EXT_SUFFIX"))
    if target.exists():
        return target
    (cache / "objects").mkdir(parents=True, exist_ok=True)
    jobs = jobs or int(os.environ.get("NVWAVENET_BUILD_JOBS", os.cpu_count() or 1))

    def run(command):
        if verbose:
            print(" ".join(command), flush=True)
        done = subprocess.run(command, capture_output=True, text=True)
        if done.returncode != 0:
            raise subprocess.CalledProcessError(done.returncode, command, done.stdout, done.stderr)

    def compile_one(item):
        obj, command = item
        partial = obj.with_suffix(f".{os.getpid()}.tmp")
        run([*command, str(partial)])
        os.replace(partial, obj)

    # The slowest compiles (TENSOR_CORE, the cluster kernels) first.
    commands.sort(key=lambda c: 0 if "tensor_core" in c[0].name else 1 if re.match("(cluster|persistent)", c[0].name)
                  else 2)
    with concurrent.futures.ThreadPoolExecutor(max(1, jobs)) as pool:
        list(pool.map(compile_one, commands))
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_suffix(f".{os.getpid()}.tmp")
    run([compiler(), "-shared", "-o", str(partial), *map(str, objects), "-lpthread"])
    os.replace(partial, target)
    return target


def load(source_root: Path | None = None, jobs: int | None = None, sizes: str = SIZES):
    """Builds (if needed) and imports the module."""
    import nvwavenet._C  # noqa: F401  (the module takes its Params type)

    path = build(source_root, jobs, sizes=sizes)
    spec = importlib.util.spec_from_file_location(MODULE, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class HostNet:
    """An NVWaveNet whose ``infer`` runs a CUDA variant's kernel in the host build, on CPU tensors,
    through launch.cu's generate() exactly as the CUDA engine calls it (engines.run_cuda): Params
    from engines.make_params, the plan's workspace, the state updated in place. Enough of
    NVWaveNet's interface for nvwavenet.testing's compare_with_reference and generate_in_chunks.

    ``seed``: 0 runs blocks and threads in order, any other value a random schedule from it.
    ``streams_per_block``: the tile (0: the one autotune picks for the batch on 132 SMs).
    ``starve_block``: a block (grid index) that runs only when every other block is stuck.
    ``device``: the emulated device, 0 (an H100's 227 KB of shared memory per block) or 1 (64 KB)."""

    def __init__(self, net, module, variant, *, seed: int = 0, streams_per_block: int = 0,
                 spin_timeout_ns: int | None = None, starve_block: int = -1, device: int = 0):
        import torch
        from nvwavenet import engines

        self.net, self.module, self.variant, self.seed, self.device = net, module, variant, seed, device
        self.starve_block = starve_block
        self.weights, self.dtype, self.A = net.weights, net.dtype, net.A
        self.streams_per_block = streams_per_block
        self.spin_timeout_ns = engines.spin_timeout_ns() if spin_timeout_ns is None else spin_timeout_ns
        self.packed = engines.PackedWeights.pack(net.weights, torch.device("cpu"), net.dtype)
        self.last_plan = None

    def init_state(self, batch: int, device="cpu") -> dict:
        return self.net.init_state(batch, device)

    def params(self, cond_input, selectors, samples, state, teacher=None, logits=None):
        from nvwavenet import autotune, engines

        p = engines.make_params(self.weights, self.packed, cond_input, selectors, samples, state,
                                teacher=teacher, logits=logits)
        p.device, p.spin_timeout_ns = self.device, self.spin_timeout_ns
        p.streams_per_block = (self.streams_per_block or
                               autotune.streams_per_block(self.variant.name, p.batch, 132))
        return p

    def infer(self, cond_input, implementation=None, *, selectors, teacher_forcing=None,
              return_logits: bool = False, state: dict | None = None):
        import torch

        batch, samples = cond_input.shape[1], cond_input.shape[3]
        state = self.init_state(batch) if state is None else state
        out = torch.full((batch, samples), -1, dtype=torch.int32)
        logits = torch.full((batch, self.A, samples), float("nan")) if return_logits else None
        # Params holds raw pointers: these tensors must outlive the call.
        teacher = None if teacher_forcing is None else teacher_forcing.to(torch.int32).contiguous()
        cond = cond_input.contiguous()
        u = selectors.to(torch.float32).contiguous()
        p = self.params(cond, u, out, state, teacher, logits)
        try:
            plan = self.module.plan(p, int(self.variant))
        except TypeError as error:
            raise RuntimeError("the host build does not accept nvwavenet._C's Params: both must be built with the "
                               "same pybind11 (and from the same csrc/nvwavenet.h)") from error
        if not plan["runnable"]:
            raise ValueError(f"implementation: Impl.{self.variant.name} cannot run this configuration on the "
                             f"emulated sm_90: {plan['reason']}")
        self.last_plan = plan
        if samples:
            workspace = torch.empty(plan["workspace_bytes"], dtype=torch.uint8)
            p.workspace, p.workspace_bytes = workspace.data_ptr(), workspace.numel()
            self.module.generate(p, int(self.variant), self.seed, starve_block=self.starve_block)
        state["position"].fill_(int(state["position"]) + samples)
        return (out, logits) if return_logits else out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=None)
    parser.add_argument("--source-root", type=Path, default=None)
    parser.add_argument("--out-dir", type=Path, default=None)
    parser.add_argument("--sizes", default=SIZES, help=f"the (R, S, A) built (default {SIZES!r})")
    parser.add_argument("-v", "--verbose", action="store_true")
    args = parser.parse_args()
    print(build(args.source_root, args.jobs, args.out_dir, args.verbose, args.sizes))


if __name__ == "__main__":
    main()
