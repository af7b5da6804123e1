"""Why ``nvwavenet._C`` did not load, and what may run without it.

The usual cause is not a missing build but a shadowed one: from a clone's root, ``python -m
nvwavenet``, ``python -c`` and ``python -m pytest`` put the current directory first on
``sys.path``, so ``import nvwavenet`` finds the source tree (never built) before the installed
package. Without the compiled module only the float32 PyTorch reference can generate, many times
slower, so the entry points that promise the fast engines refuse, naming the file that was imported,
the installed build it hides and the fixes, unless ``NVWAVENET_ALLOW_REFERENCE=1`` asks for the
reference (then a warning says so, once).
"""
from __future__ import annotations

import dataclasses
import importlib.machinery
import importlib.metadata
import os
import sys
import warnings
from pathlib import Path

__all__ = ["ALLOW_REFERENCE_ENV", "MissingBuild", "diagnose", "reference_allowed", "require", "python_env"]

ALLOW_REFERENCE_ENV = "NVWAVENET_ALLOW_REFERENCE"
PACKAGE_DIR = Path(__file__).resolve().parent


def _has_build(folder: Path) -> bool:
    return any((folder / f"_C{suffix}").is_file() for suffix in importlib.machinery.EXTENSION_SUFFIXES)


def _installed_builds(package_dir: Path) -> list[Path]:
    """Other ``nvwavenet`` package folders holding a compiled module: on ``sys.path``, and those the
    installed distributions' records name (an install whose folder is reached another way)."""
    found: list[Path] = []

    def add(folder: Path) -> None:
        folder = folder.resolve()
        if folder != package_dir and folder not in found and _has_build(folder):
            found.append(folder)

    for entry in sys.path:
        add(Path(entry or os.getcwd()) / "nvwavenet")
    try:
        for dist in importlib.metadata.distributions(name="nvwavenet"):
            for file in dist.files or []:
                if file.name.startswith("_C.") and file.parent.name == "nvwavenet":
                    add(Path(dist.locate_file(file)).parent)
    except Exception:  # a damaged record of some install must not hide the diagnosis itself
        pass
    return found


@dataclasses.dataclass(frozen=True)
class MissingBuild:
    """Why ``nvwavenet._C`` could not be imported."""

    imported_from: Path               # the nvwavenet package folder Python imported
    built_here: bool                  # that folder holds a compiled module, which failed to load
    load_error: str                   # the ImportError's text
    installed: tuple[Path, ...]       # other nvwavenet folders with a compiled module

    @property
    def shadowed(self) -> bool:
        return not self.built_here and bool(self.installed)

    def message(self) -> str:
        """One line (the command line prints it as its one error line)."""
        source = f"nvwavenet was imported from {self.imported_from / '__init__.py'}"
        if self.built_here:
            return (f"nvwavenet's compiled module nvwavenet._C failed to load ({self.load_error}); {source}. "
                    "Rebuild it for this Python and PyTorch: `pip install -e .` in the source tree, or reinstall "
                    "the package.")
        if self.shadowed:
            others = ", ".join(str(path) for path in self.installed)
            where = ("the current directory, which Python searches first"
                     if self.imported_from.parent == Path.cwd().resolve() else "an earlier sys.path entry")
            return (f"nvwavenet's compiled module nvwavenet._C is not available: {source}, a source tree without "
                    f"a build, found in {where}; it shadows the installed build in {others}. Fix: build this tree "
                    "with `pip install -e .`, or run from another directory so that the installed build is "
                    f"imported. ({ALLOW_REFERENCE_ENV}=1 runs the far slower float32 PyTorch reference instead.)")
        return (f"nvwavenet's compiled module nvwavenet._C is not available: {source}, a source tree that was "
                "never built, and no installed build was found on sys.path. Fix: `pip install -e .` in that tree "
                "(or `python setup.py build_ext --inplace`). "
                f"({ALLOW_REFERENCE_ENV}=1 runs the far slower float32 PyTorch reference instead.)")


def diagnose(error: ImportError, package_dir: Path = PACKAGE_DIR) -> MissingBuild:
    """Called on the ImportError of ``from nvwavenet import _C``."""
    built_here = _has_build(package_dir)
    return MissingBuild(package_dir, built_here, str(error),
                        () if built_here else tuple(_installed_builds(package_dir)))


def reference_allowed() -> bool:
    """``NVWAVENET_ALLOW_REFERENCE=1``: the user accepts the float32 reference without the build."""
    return os.environ.get(ALLOW_REFERENCE_ENV, "").strip() == "1"


_warned = False


def require(missing: MissingBuild | None, what: str) -> None:
    """Returns when ``what`` may run: with the compiled module, or, without it, when the reference
    was asked for (warned about once per process). Else a RuntimeError with the diagnosis."""
    global _warned
    if missing is None:
        return
    if not reference_allowed():
        raise RuntimeError(f"{what} needs the compiled engines. {missing.message()}")
    if not _warned:
        _warned = True
        warnings.warn(f"{ALLOW_REFERENCE_ENV}=1: {what} runs the float32 PyTorch reference, far slower than "
                      f"the compiled engine. {missing.message()}", RuntimeWarning, stacklevel=3)


def python_env(env: dict | None = None) -> dict:
    """An environment (``os.environ`` by default) for a child ``python -m nvwavenet`` or ``python -c``
    that imports this same nvwavenet whatever its current directory: the folder holding this package
    goes first on PYTHONPATH, and PYTHONSAFEPATH=1 (Python 3.11+) keeps the child from putting its
    current directory, say a clone's root, before it."""
    env = dict(os.environ if env is None else env)
    paths = [str(PACKAGE_DIR.parent), *[p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]]
    return {**env, "PYTHONPATH": os.pathsep.join(paths), "PYTHONSAFEPATH": "1"}
