"""NV-WaveNet's timing tool beside ours (issue 24), the parts a CPU can check: the vendored sources
take their CUDA 13 patch, and scripts/nv_wavenet_compare.py turns a measured JSON into the ratio
table (best successful NV-WaveNet run per row, the ratio, the issue's targets). Building the tool
takes minutes of nvcc on two cores, so that is left to scripts/build_nv_wavenet_perf.sh."""
from __future__ import annotations

import argparse
import importlib.util
import json
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
VENDORED = ROOT / "third_party" / "nv-wavenet"
_spec = importlib.util.spec_from_file_location("nv_wavenet_compare", ROOT / "scripts" / "nv_wavenet_compare.py")
compare = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(compare)


@pytest.mark.skipif(shutil.which("patch") is None, reason="needs patch(1)")
def test_the_cuda13_patch_applies_to_the_vendored_sources(tmp_path):
    for source in [*VENDORED.glob("*.cu"), *VENDORED.glob("*.cuh")]:
        shutil.copy(source, tmp_path)
    assert "attributes.memoryType" in (tmp_path / "nv_wavenet_conversions.cuh").read_text()
    for patch in sorted((VENDORED / "patches").glob("*.patch")):
        subprocess.run(["patch", "--quiet", "--forward", "-d", str(tmp_path), "-p1", "-i", str(patch)], check=True)
    patched = (tmp_path / "nv_wavenet_conversions.cuh").read_text()
    assert "attributes.type == cudaMemoryTypeDevice" in patched and "memoryType" not in patched
    assert (VENDORED / "LICENSE.TXT").read_text().count("Redistribution and use in source and binary forms") == 1


def run(dtype, batch, mode, per_block, rate=None, error=None):
    row = {"dtype": dtype, "batch": batch, "mode": mode, "per_block": per_block, "samples": 512, "command": "-"}
    return {**row, "error": error} if error else {**row, "samples_per_s": rate}


def test_the_table_takes_the_best_successful_run_and_applies_the_targets(tmp_path):
    record = {
        "gpu": "Some GPU 80GB", "date": "2026-12-06", "commit": "abc1234", "command": "nv_wavenet_compare.py measure",
        "size": compare.SIZE,
        "nv_wavenet": [run("float16", 1, "DUAL_BLOCK", 1, 50_000.0), run("float16", 1, "SINGLE_BLOCK", 1, 40_000.0),
                       run("float16", 1, "PERSISTENT", 1, error="rc -6: assertion"),
                       run("float32", 8, "DUAL_BLOCK", 4, 300_000.0)],
        "nvwavenet": [{"dtype": "float16", "batch": 1, "samples": 16384, "samples_per_s": 160_000.0, "watts": None,
                       "ran": "ran CLUSTER (table)"},
                      {"dtype": "float32", "batch": 8, "samples": 4096, "samples_per_s": 420_000.0, "watts": None,
                       "ran": "ran SINGLE_BLOCK (table)"}],
    }
    lines = compare.table(record).splitlines()
    row = {tuple(cells[:2]): cells for cells in ([c.strip() for c in line.strip("|").split("|")] for line in lines[2:])}
    assert row["float16", "1"][4:] == ["50,000", "DUAL_BLOCK, 1", "3.20x", ">= 2.5x and >= 150,000 samples/s", "yes"]
    assert row["float32", "8"][4:] == ["300,000", "DUAL_BLOCK, 4", "1.40x", ">= 1.5x", "no"]
    assert row["float32", "1"][2] == "not measured" and row["float32", "1"][-1] == "-"
    assert len(row) == len(compare.PRECISIONS) * len(compare.BATCHES)

    measured, results = tmp_path / "compare.json", tmp_path / "RESULTS.md"
    measured.write_text(json.dumps(record))
    results.write_text("# Benchmark results\n")
    for _ in range(2):  # the second run replaces the section it wrote
        compare.write_results(argparse.Namespace(measured=measured, results=results))
    text = results.read_text()
    assert text.count("<!-- vs-nv-wavenet-some-gpu-80gb:begin -->") == 1 and "| float16 | 1 | 160,000 |" in text
    assert "of which 1 failed or were refused (PERSISTENT: rc -6: assertion)" in text
