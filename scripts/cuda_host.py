"""The host build of the CUDA kernels: csrc/cuda's own sources (launch.cu and every per-variant,
per-precision .cu file) compiled by g++ as C++ with the emulation layer of csrc/cuda/host
force-included, as the Python module ``nvwavenet_cuda_host`` (not part of the shipped
nvwavenet._C), and :class:`HostNet`, which runs an NVWaveNet's generation through it. R32 and
R64 sizes only, so that it builds quickly.

The module is cached under build/cuda_host/<hash of the sources and flags>/, so the tests of one
run (and later runs on unchanged sources) build it once.

    python scripts/cuda_host.py [--jobs N] [--source-root DIR]

builds and prints the module's path. ``load()`` builds if needed and imports it.
"""
from __future__ import annotations

import argparse
import concurrent.futures
import hashlib
import importlib.util
import os
import shutil
import subprocess
import sys
import sysconfig
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MODULE = "nvwavenet_cuda_host"
SIZES = "X(32, 128, 256) X(64, 128, 256)"
KERNEL_FLAGS = ["-std=c++17", "-O2", "-fPIC", "-fvisibility=hidden", "-fno-extern-tls-init", "-DNVWAVENET_HOST_BUILD",
                f"-DNVWAVENET_FOR_EACH_SIZE(X)={SIZES}", "-Wall", "-Wno-unknown-pragmas", "-Wno-unused-function"]


def _sources(root: Path) -> list[Path]:
    cuda = root / "csrc" / "cuda"
    return sorted(cuda.glob("*.cu"))


def _inputs(root: Path) -> list[Path]:
    """Every file the build reads."""
    cuda = root / "csrc" / "cuda"
    files = [*cuda.glob("*.cu"), *cuda.glob("*.cuh"), *cuda.glob("*.h"), *(cuda / "host").rglob("*.h"),
             *(cuda / "host").glob("*.cpp"), root / "csrc" / "nvwavenet.h", root / "csrc" / "params_check.h",
             root / "csrc" / "sizes.h"]
    return sorted(files)


def _compiler() -> str:
    return os.environ.get("CXX", "g++")


def cache_key(root: Path) -> str:
    import pybind11

    digest = hashlib.sha256()
    for path in _inputs(root):
        digest.update(str(path.relative_to(root)).encode())
        digest.update(path.read_bytes())
    version = subprocess.run([_compiler(), "--version"], capture_output=True, text=True, check=True).stdout
    for part in (version, " ".join(KERNEL_FLAGS), sysconfig.get_config_var("EXT_SUFFIX"), pybind11.__version__,
                 sys.version):
        digest.update(part.encode())
    return digest.hexdigest()[:16]


def build(source_root: Path | None = None, jobs: int | None = None, out_dir: Path | None = None,
          verbose: bool = False) -> Path:
    """The path of the built module for the sources under ``source_root`` (default: this checkout),
    building it when no cached copy exists. Raises subprocess.CalledProcessError with the
    compiler's output on a compile error."""
    import pybind11

    root = (source_root or ROOT).resolve()
    target_dir = (out_dir or ROOT / "build" / "cuda_host") / cache_key(root)
    target = target_dir / (MODULE + sysconfig.get_config_var("EXT_SUFFIX"))
    if target.exists():
        return target
    host = root / "csrc" / "cuda" / "host"
    jobs = jobs or int(os.environ.get("NVWAVENET_BUILD_JOBS", os.cpu_count() or 1))
    work = Path(tempfile.mkdtemp(prefix="cuda_host_", dir=target_dir.parent if target_dir.parent.exists() else None))
    try:
        kernel = [_compiler(), *KERNEL_FLAGS, "-I", str(host / "include"), "-include", str(host / "emu.h")]
        commands = [[*kernel, "-x", "c++", "-c", str(src), "-o", str(work / (src.stem + ".o"))]
                    for src in _sources(root)]
        commands.append([*kernel, "-c", str(host / "emu.cpp"), "-o", str(work / "emu.o")])
        commands.append([_compiler(), "-std=c++17", "-O2", "-fPIC", "-fvisibility=hidden",
                         "-I", pybind11.get_include(), "-I", sysconfig.get_paths()["include"],
                         "-c", str(host / "module.cpp"), "-o", str(work / "module.o")])

        def run(command):
            if verbose:
                print(" ".join(command), flush=True)
            done = subprocess.run(command, capture_output=True, text=True)
            if done.returncode != 0:
                raise subprocess.CalledProcessError(done.returncode, command, done.stdout, done.stderr)
            return done.stderr

        # The slowest compiles (TENSOR_CORE, then the cluster kernels) first.
        commands.sort(key=lambda c: (0 if "tensor_core" in c[-3] else 1 if "cluster" in c[-3] or "persistent" in c[-3]
                                     else 2))
        with concurrent.futures.ThreadPoolExecutor(max(1, jobs)) as pool:
            for warnings in pool.map(run, commands):
                if warnings and verbose:
                    print(warnings, file=sys.stderr)
        linked = work / target.name
        run([_compiler(), "-shared", "-o", str(linked), *map(str, sorted(work.glob("*.o"))), "-lpthread"])
        target_dir.mkdir(parents=True, exist_ok=True)
        os.replace(linked, target)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return target


def load(source_root: Path | None = None, jobs: int | None = None):
    """Builds (if needed) and imports the module."""
    import nvwavenet._C  # noqa: F401  (the module takes its Params type)

    path = build(source_root, jobs)
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
    ``starve_block``: a block (grid index) that runs only when every other block is stuck."""

    def __init__(self, net, module, variant, *, seed: int = 0, streams_per_block: int = 0,
                 spin_timeout_ns: int | None = None, starve_block: int = -1):
        import torch
        from nvwavenet import engines

        self.net, self.module, self.variant, self.seed = net, module, variant, seed
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
        p.device, p.spin_timeout_ns = 0, self.spin_timeout_ns
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
        plan = self.module.plan(p, int(self.variant))
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
    parser.add_argument("-v", "--verbose", action="store_true")
    args = parser.parse_args()
    print(build(args.source_root, args.jobs, args.out_dir, args.verbose))


if __name__ == "__main__":
    main()
