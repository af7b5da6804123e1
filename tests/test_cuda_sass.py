"""The step code of CLUSTER, CLUSTER_ROLES, CLUSTER_FOLD, CLUSTER_BATCHED and CLUSTER_SKIP_BLOCKS
holds no device-scope fence or L1
invalidate, and no cluster kernel spills: checked on the SASS that nvcc + cuobjdump make for sm_90
(no GPU needed; skipped without nvcc or cuobjdump, e.g. `pip install nvidia-cuda-cuobjdump`).
scripts/sass_check.py prints the same facts for any size and weight type."""
from __future__ import annotations

import importlib.util
import shutil
import subprocess
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "sass_check.py"
_spec = importlib.util.spec_from_file_location("sass_check", SCRIPT)
sass_check = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(sass_check)

CUOBJDUMP = sass_check.find_tool("cuobjdump")
pytestmark = pytest.mark.skipif(shutil.which("nvcc") is None or CUOBJDUMP is None,
                                reason="needs nvcc and cuobjdump (pip install nvidia-cuda-cuobjdump)")


@pytest.mark.slow
def test_cluster_step_code_has_no_device_fence_and_no_kernel_spills(tmp_path):
    cubin, report = sass_check.compile_cubin(tmp_path, "90", (64, 256, 256), "float")
    sass = subprocess.run([CUOBJDUMP, "-sass", str(cubin)], capture_output=True, text=True, check=True).stdout
    code = {sass_check.kernel_name(name): instructions
            for name, instructions in sass_check.kernels(sass).items() if "persistent_kernel" in name}
    batched = {f"CLUSTER_BATCHED k={k}" for k in (2, 4, 8)}
    assert set(code) == {"CLUSTER", "PERSISTENT", "CLUSTER_ROLES", "CLUSTER_FOLD", "CLUSTER_SKIP_BLOCKS"} | batched
    for variant in {"CLUSTER", "CLUSTER_ROLES", "CLUSTER_FOLD", "CLUSTER_SKIP_BLOCKS"} | batched:
        assert sass_check.check_cluster_kernel(code[variant]) == [], variant
    # The checker can fail: PERSISTENT's flag hand-offs put fences in its step code.
    assert sass_check.fence_sites(code["PERSISTENT"])["step code"]
    rows = sass_check.ptxas_rows(report)
    assert len(rows) == 8 and all("spill stores 0 B, spill loads 0 B" in row for row in rows), rows
