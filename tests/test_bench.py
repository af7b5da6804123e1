"""The benchmark machinery and scripts run end to end (tiny sizes; the figures come from real runs)."""
import csv
import runpy
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import nvwavenet
from nvwavenet import bench, reference
from nvwavenet.testing import random_cond_input, random_nv_wavenet_args

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
TINY = bench.Config("tiny", 8, 16, 32, 4, 2)


def test_rows_measure_and_compare_with_the_best_baseline():
    cpu = torch.device("cpu")
    rows = [bench.run_one(TINY, engine, torch.float32, 2, cpu, seconds=0.02, repeats=1, chunk=64)
            for engine in ("nvwavenet-cpu-float32", "pytorch-eager", "pytorch-naive")]
    bench.add_ratios(rows)
    for row in rows:
        assert row.seconds > 0 and row.samples > 0 and row.aggregate == pytest.approx(2 * row.per_stream)
        assert row.real_time_factor(16000) == pytest.approx(row.per_stream / 16000)
    assert max(r.ratio_to_best_baseline for r in rows[1:]) == pytest.approx(1.0)
    assert len(bench.row_cells(rows[0])) == len(bench.COLUMNS)


def test_results_sections_are_replaced_not_duplicated(tmp_path):
    results = tmp_path / "RESULTS.md"
    bench.update_results(results, "throughput-cpu", "first")
    bench.update_results(results, "throughput-cuda", "gpu")
    bench.update_results(results, "throughput-cpu", "second")
    text = results.read_text()
    assert "second" in text and "first" not in text and text.count("throughput-cpu:begin") == 1 and "gpu" in text


def test_write_results_writes_every_section_and_a_dash_writes_nothing(tmp_path, monkeypatch, capsys):
    results = tmp_path / "RESULTS.md"
    bench.write_results(results, {"serve-load-cpu": "load", "serve-admission-cpu": "admission"})
    text = results.read_text()
    assert "serve-load-cpu:begin -->\nload" in text and "serve-admission-cpu:begin -->\nadmission" in text
    assert capsys.readouterr().out == f"updated {results}\n"
    monkeypatch.chdir(tmp_path)
    bench.write_results(Path("-"), {"serve-load-cpu": "other"})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["RESULTS.md"] and results.read_text() == text
    assert capsys.readouterr().out == ""


def test_compiled_baseline_is_the_reference_step():
    """``pytorch-compiled`` runs the reference's arithmetic, not a cheaper stand-in: after 16 steps
    its samples and queues are the float32 reference's."""
    net = nvwavenet.NVWaveNet(**random_nv_wavenet_args(TINY.R, TINY.S, TINY.A, TINY.L, TINY.max_dilation, seed=3))
    cond = random_cond_input(TINY.R, 2, TINY.L, 16, seed=4)
    u = torch.rand(2, 16, generator=torch.Generator().manual_seed(5))
    compiled = bench.CompiledStep(net, cond, u)  # compiles and runs 2 steps
    compiled(14)
    state = reference.init_state(net.weights, 2, dtype=torch.float32)
    samples = reference.incremental(net.weights, cond, u, state=state, dtype=torch.float32)
    assert torch.equal(compiled.history, samples[:, -2:].long())
    assert int(compiled.position) == 16
    torch.testing.assert_close(compiled.state["queues"], state["queues"], rtol=1e-5, atol=1e-5)


def test_throughput_script_writes_table_csv_plot(tmp_path):
    script = runpy.run_path(str(BENCHMARKS / "throughput.py"))
    # Without the compiled baseline, whose compile per batch (seconds) the test above covers once.
    rows = script["measure_all"]([TINY], [1, 2], torch.device("cpu"), 0.02, 1, 32, log=lambda line: None,
                                 baselines=["pytorch-eager", "pytorch-naive"])
    assert {row.engine for row in rows} == {"nvwavenet-cpu-float32", "nvwavenet-cpu-float16", "pytorch-eager",
                                            "pytorch-naive"}
    script["plot"](rows, [TINY], tmp_path / "t.png", "tiny")
    assert (tmp_path / "t.png").stat().st_size > 10_000


def test_naive_vs_fast_script_runs(tmp_path):
    env = {"PYTHONPATH": str(Path(nvwavenet.__file__).resolve().parents[1]), "PATH": ""}
    subprocess.run([sys.executable, str(BENCHMARKS / "naive_vs_fast.py"), "--device", "cpu", "--max-depth", "3",
                    "--R", "8", "--S", "16", "--A", "32", "--seconds", "0.02", "--repeats", "1",
                    "--out", str(tmp_path), "--results", str(tmp_path / "RESULTS.md")], check=True, env=env,
                   capture_output=True, timeout=120)
    with open(tmp_path / "naive-vs-fast-cpu.csv") as handle:
        table = list(csv.DictReader(handle))
    assert [int(r["L (per block)"]) for r in table if r["engine"] == "pytorch-naive"] == [1, 2, 3]
    assert "naive-vs-fast-cpu:begin" in (tmp_path / "RESULTS.md").read_text()
    assert (tmp_path / "naive-vs-fast-cpu.png").exists()


def test_streaming_script_runs(tmp_path):
    env = {"PYTHONPATH": str(Path(nvwavenet.__file__).resolve().parents[1]), "PATH": ""}
    result = subprocess.run([sys.executable, str(BENCHMARKS / "streaming.py"), "--device", "cpu", "--seconds", "0.1",
                             "--repeats", "1", "--throughput-repeats", "1", "--minutes", "0.01", "0.02",
                             "--results", str(tmp_path / "RESULTS.md")], env=env, capture_output=True, text=True,
                            timeout=180)
    assert result.returncode == 0, result.stderr[-2000:]
    section = (tmp_path / "RESULTS.md").read_text()
    assert "streaming-cpu:begin" in section and "time to first audio" in section and "one-shot, median of 1" in section
