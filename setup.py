"""Builds nvwavenet._C with CMake and ninja (see CMakeLists.txt); everything else is pure Python.

Environment:
  NVWAVENET_CUDA=0          skip the CUDA kernels even when nvcc is found
  NVWAVENET_CUDA_ARCHS=90   CUDA architectures (default: the visible GPUs', else 90)
  NVWAVENET_BUILD_JOBS=N    parallel compile jobs (default: the CPU count)
  NVWAVENET_TRACE=1         time one step of the cluster kernels (%globaltimer, printed per call)
  NVWAVENET_SANITIZE=address,undefined
                            compile the C++ with these -fsanitize= checks (scripts/sanitize_cpu.sh)
"""
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

ROOT = Path(__file__).parent.resolve()


def package_version() -> str:
    text = (ROOT / "nvwavenet" / "_version.py").read_text()
    return re.search(r'__version__ = "([^"]+)"', text).group(1)


def cuda_archs() -> str:
    """The requested architectures, else the visible GPUs' (via nvidia-smi), else 90 (Hopper)."""
    requested = os.environ.get("NVWAVENET_CUDA_ARCHS", "").strip()
    if requested:
        return ";".join(a for a in re.split(r"[;, ]+", requested) if a)
    if shutil.which("nvidia-smi"):
        try:
            listed = subprocess.run(["nvidia-smi", "--query-gpu=compute_cap", "--format=csv,noheader"],
                                    capture_output=True, text=True, timeout=30, check=True).stdout
            archs = sorted({line.strip().replace(".", "") for line in listed.splitlines() if line.strip()})
            if archs:
                return ";".join(archs)
        except (subprocess.SubprocessError, OSError):
            pass
    return "90"


def forget_foreign_cmake_cache(build_dir: Path) -> None:
    """Remove a CMake cache made for another source folder (a checkout copied or moved with its
    build/ folder), which CMake would otherwise refuse to reuse."""
    cache = build_dir / "CMakeCache.txt"
    if cache.is_file() and f"CMAKE_HOME_DIRECTORY:INTERNAL={ROOT}\n" not in cache.read_text():
        cache.unlink()
        shutil.rmtree(build_dir / "CMakeFiles", ignore_errors=True)


class CMakeExtension(Extension):
    def __init__(self, name: str):
        super().__init__(name, sources=[])


class CMakeBuild(build_ext):
    def build_extension(self, ext: CMakeExtension) -> None:
        import pybind11

        output_dir = Path(self.get_ext_fullpath(ext.name)).parent.resolve()
        build_dir = Path(self.build_temp).resolve() / ext.name
        build_dir.mkdir(parents=True, exist_ok=True)
        forget_foreign_cmake_cache(build_dir)
        configure = [
            "cmake", str(ROOT), "-G", "Ninja",
            f"-DCMAKE_LIBRARY_OUTPUT_DIRECTORY={output_dir}",
            f"-DCMAKE_BUILD_TYPE={'Debug' if self.debug else 'Release'}",
            f"-DPython_EXECUTABLE={sys.executable}",
            f"-Dpybind11_DIR={pybind11.get_cmake_dir()}",
            f"-DNVWAVENET_VERSION={package_version()}",
            f"-DNVWAVENET_CUDA={'OFF' if os.environ.get('NVWAVENET_CUDA') == '0' else 'ON'}",
            f"-DNVWAVENET_CUDA_ARCHS={cuda_archs()}",
            f"-DNVWAVENET_TRACE={'ON' if os.environ.get('NVWAVENET_TRACE') == '1' else 'OFF'}",
            # Always passed, also when empty, so that a cached sanitized configuration is undone.
            f"-DNVWAVENET_SANITIZE={os.environ.get('NVWAVENET_SANITIZE', '').strip()}",
        ]
        # The ninja of this build, named on every configure: a cache from an earlier `pip install`
        # remembers the ninja of that install's temporary build environment, which pip has deleted.
        ninja = shutil.which("ninja")
        if ninja:
            configure.append(f"-DCMAKE_MAKE_PROGRAM={ninja}")
        jobs = os.environ.get("NVWAVENET_BUILD_JOBS", str(os.cpu_count() or 1))
        subprocess.run(configure, cwd=build_dir, check=True)
        subprocess.run(["cmake", "--build", ".", "--parallel", jobs], cwd=build_dir, check=True)


setup(
    version=package_version(),
    ext_modules=[CMakeExtension("nvwavenet._C")],
    cmdclass={"build_ext": CMakeBuild},
)
