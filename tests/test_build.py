"""The installed build holds what the machine that built it could build (set by .ci/run)."""
import os

import nvwavenet


def test_build_has_what_ci_expects():
    expected = {part for part in os.environ.get("NVWAVENET_EXPECT_BUILD", "").split(",") if part}
    info = nvwavenet.build_info()
    if "extension" in expected:
        assert info["extension"], f"nvwavenet._C did not load: {info.get('error')}"
    if "cuda" in expected:
        assert info["cuda"], "nvcc was found but no CUDA kernels were compiled"
        assert info["cuda_archs"] and info["sizes"] and "float32" in info["precisions"]
