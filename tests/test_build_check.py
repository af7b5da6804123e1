"""A clone's root shadowing the installed build (nvwavenet.build_check): every entry point either
runs the compiled engine or stops with the diagnosis before any work.

The clone is simulated: a folder holding a copy of the package's sources without the compiled
module (what a fresh clone's root is), run as the current directory, with this test run's own
nvwavenet, which has the build, on PYTHONPATH (the installed build it shadows).
"""
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import nvwavenet
from nvwavenet import build_check, engines

pytestmark = pytest.mark.extension

PACKAGE = Path(nvwavenet.__file__).resolve().parent
TESTS = Path(__file__).resolve().parent


@pytest.fixture(scope="module")
def clone(tmp_path_factory):
    root = tmp_path_factory.mktemp("clone")
    shutil.copytree(PACKAGE, root / "nvwavenet", ignore=shutil.ignore_patterns("_C*", "__pycache__"))
    (root / "tests").mkdir()
    shutil.copy(TESTS.parent / "pyproject.toml", root / "pyproject.toml")  # the markers
    for name in ("conftest.py", "test_cpu_engine.py"):
        shutil.copy(TESTS / name, root / "tests" / name)
    return root


def run_in(clone, *args, env=None, timeout=120):
    """``python ARGS`` from the clone's root, the installed build on PYTHONPATH, as a user runs it."""
    base = {k: v for k, v in os.environ.items() if k not in (build_check.ALLOW_REFERENCE_ENV, "PYTHONSAFEPATH")}
    base["PYTHONPATH"] = str(PACKAGE.parent)
    return subprocess.run([sys.executable, *args], cwd=clone, capture_output=True, text=True, timeout=timeout,
                          env={**base, **(env or {})})


def assert_diagnosis(text, clone):
    assert f"nvwavenet was imported from {clone / 'nvwavenet' / '__init__.py'}" in text, text
    assert "a source tree without a build" in text and f"shadows the installed build in {PACKAGE}" in text, text
    assert "`pip install -e .`" in text and "run from another directory" in text, text


INFER = ("import nvwavenet; from nvwavenet.testing import random_cond_input, random_nv_wavenet_args; "
         "net = nvwavenet.NVWaveNet(**random_nv_wavenet_args(8, 16, 32, 2, 2)); "
         "print(net.infer(random_cond_input(8, 1, 2, 20)).shape, net.last_auto_rule)")


def test_library_call_refuses_then_runs_the_reference_when_asked(clone):
    refused = run_in(clone, "-c", INFER)
    assert refused.returncode == 1 and "RuntimeError: NVWaveNet.infer on the CPU needs the compiled engines" \
        in refused.stderr, refused.stderr
    assert_diagnosis(refused.stderr, clone)
    allowed = run_in(clone, "-W", "always", "-c", INFER, env={build_check.ALLOW_REFERENCE_ENV: "1"})
    assert allowed.returncode == 0, allowed.stderr
    assert "torch.Size([1, 20])" in allowed.stdout and "float32 PyTorch reference" in allowed.stdout
    assert allowed.stderr.count("RuntimeWarning") == 1 and "far slower" in allowed.stderr


@pytest.mark.parametrize("argv", [["demo", "--steps", "1", "--seconds", "0.1", "--out", "demo-out"],
                                  ["serve", "no-such-checkpoint"],
                                  ["vocode", "x.npy", "--checkpoint", "no-such-checkpoint"]])
def test_commands_stop_before_any_work(clone, argv):
    result = run_in(clone, "-m", "nvwavenet", *argv)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"nvwavenet {argv[0]}: error: nvwavenet {argv[0]} needs the "
                                                   "compiled engines."), result.stderr
    assert_diagnosis(lines[0], clone)
    assert not (clone / "demo-out").exists()


def test_info_says_shadowed_and_python_env_finds_the_build(clone):
    result = run_in(clone, "-m", "nvwavenet", "info")
    assert result.returncode == 0 and "compiled module: shadowed: " in result.stdout, result.stdout
    assert_diagnosis(result.stdout, clone)
    # What the scripts and tests that start `python -m nvwavenet` use: the build, from any directory.
    fixed = subprocess.run([sys.executable, "-m", "nvwavenet", "info"], cwd=clone, capture_output=True, text=True,
                           env=build_check.python_env(), timeout=120)
    assert fixed.returncode == 0 and "compiled module: loaded" in fixed.stdout, fixed.stderr


def test_pytest_from_the_clone_fails_instead_of_skipping(clone):
    result = run_in(clone, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/test_cpu_engine.py",
                    "-k", "test_runs_the_compiled_engine", timeout=300)
    # An error in the test's setup (the conftest's hook), not a skip.
    assert result.returncode == 1 and "1 error" in result.stdout and "skipped" not in result.stdout, result.stdout
    assert_diagnosis(result.stdout, clone)


def test_diagnosis_of_a_tree_never_built(tmp_path, monkeypatch):
    """No installed build anywhere: the message says so and gives the build command."""
    (tmp_path / "nvwavenet").mkdir()
    monkeypatch.setattr(sys, "path", [str(tmp_path)])
    missing = build_check.diagnose(ImportError("cannot import name '_C'"), (tmp_path / "nvwavenet").resolve())
    assert (missing.shadowed, missing.built_here, missing.installed) == (False, False, ())
    assert "a source tree that was never built, and no installed build was found" in missing.message()
    assert "`pip install -e .`" in missing.message()
    assert engines.MISSING_BUILD is None  # this run has the build: nothing to diagnose
