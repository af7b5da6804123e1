"""The command line as a user drives it: subprocesses, exit codes, one-line errors."""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import scipy.io.wavfile

import nvwavenet

PACKAGE_ROOT = str(Path(nvwavenet.__file__).resolve().parents[1])
TINY_TRAIN = ["--sample-rate", "8000", "--steps", "3", "--batch-size", "2", "--layers", "3", "--max-dilation", "2",
              "--residual", "8", "--skip", "16", "--classes", "64", "--n-mels", "10", "--n-fft", "128", "--hop", "32",
              "--window-hops", "4", "--quiet"]


def run(*args, cwd=None, timeout=300):
    env = {**os.environ, "PYTHONPATH": PACKAGE_ROOT}
    return subprocess.run([sys.executable, "-m", "nvwavenet", *args], capture_output=True, text=True, cwd=cwd,
                          env=env, timeout=timeout)


def assert_user_error(result, *fragments):
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


def write_tone(path, rate=8000, seconds=0.5, channels=1):
    t = np.arange(int(rate * seconds)) / rate
    tone = (0.4 * np.sin(2 * np.pi * 220 * t) * 32767).astype(np.int16)
    scipy.io.wavfile.write(path, rate, np.stack([tone] * channels, axis=1) if channels > 1 else tone)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    (root / "data").mkdir()
    write_tone(root / "data" / "a.wav")
    write_tone(root / "data" / "b.wav", seconds=0.7)
    result = run("train", str(root / "data"), "--out", str(root / "ckpt"), *TINY_TRAIN)
    assert result.returncode == 0, result.stderr
    return root / "ckpt"


def test_help_of_every_command():
    for command in ("demo", "vocode", "train", "analyze", "bench", "info"):
        result = run(command, "--help")
        assert result.returncode == 0 and "usage: nvwavenet " + command in result.stdout


def test_info_reports_the_build():
    result = run("info")
    assert result.returncode == 0 and f"nvwavenet {nvwavenet.__version__}" in result.stdout
    assert "cpu_isa" in result.stdout


def test_demo_end_to_end_with_a_short_budget(tmp_path):
    result = run("demo", "--out", str(tmp_path), "--steps", "20", "--seconds", "0.5")
    assert result.returncode == 0, result.stderr
    for name in ("original.wav", "generated-cpu-engine.wav", "untrained.wav", "demo.png", "report.txt"):
        assert (tmp_path / name).stat().st_size > 0
    report = (tmp_path / "report.txt").read_text()
    assert "log-mel distance to the original" in report and "cpu engine (float32)" in report
    assert "relative L2" in report


def test_train_vocode_analyze_round_trip(checkpoint, tmp_path):
    config = json.loads((checkpoint / "config.json").read_text())
    assert config["model"]["n_residual_channels"] == 8
    mel = np.random.default_rng(0).standard_normal((10, 12)).astype(np.float32)
    np.save(tmp_path / "utterance.npy", mel)
    write_tone(tmp_path / "speech.wav")
    result = run("vocode", str(tmp_path / "utterance.npy"), str(tmp_path / "speech.wav"), "--checkpoint",
                 str(checkpoint), "--out", str(tmp_path / "out"), "--quiet")
    assert result.returncode == 0, result.stderr
    rate, audio = scipy.io.wavfile.read(tmp_path / "out" / "utterance.wav")
    assert rate == 8000 and len(audio) == 12 * 32
    assert (tmp_path / "out" / "speech.wav").exists()
    analysis = run("analyze", str(checkpoint))
    assert analysis.returncode == 0 and "receptive field" in analysis.stdout
    dataset = run("analyze", str(checkpoint.parent / "data"), "--plots", str(tmp_path / "plots"))
    assert dataset.returncode == 0 and "correlation length" in dataset.stdout
    assert (tmp_path / "plots" / "autocorrelation.png").exists()


def test_user_errors_are_one_line(checkpoint, tmp_path):
    write_tone(tmp_path / "fast.wav", rate=16000)
    write_tone(tmp_path / "stereo.wav", channels=2)
    np.save(tmp_path / "wrong_bands.npy", np.zeros((7, 5), dtype=np.float32))
    other = tmp_path / "other"
    (tmp_path / "data").mkdir()
    write_tone(tmp_path / "data" / "a.wav")
    vocode = ["vocode", "--checkpoint", str(checkpoint), "--out", str(tmp_path / "o"), "--quiet"]
    assert_user_error(run(*vocode, str(tmp_path / "missing.npy")), "missing.npy", "no such file")
    assert_user_error(run(*vocode, str(tmp_path / "fast.wav")), "fast.wav", "16000 Hz", "8000 Hz")
    assert_user_error(run(*vocode, str(tmp_path / "stereo.wav")), "stereo.wav", "2 channels")
    assert_user_error(run(*vocode, str(tmp_path / "wrong_bands.npy")), "wrong_bands.npy", "10 bands")
    assert_user_error(run("vocode", str(tmp_path / "fast.wav"), "--checkpoint", str(tmp_path / "nothing")),
                      "no nvwavenet checkpoint")
    if not __import__("torch").cuda.is_available():
        assert_user_error(run(*vocode, "--device", "cuda", str(tmp_path / "fast.wav")), "cuda", "no CUDA GPU")
    # A checkpoint of another configuration cannot resume training here.
    assert run("train", str(tmp_path / "data"), "--out", str(other), *TINY_TRAIN).returncode == 0
    changed = [a if a != "8" else "12" for a in TINY_TRAIN]  # --residual 8 -> 12
    assert_user_error(run("train", str(tmp_path / "data"), "--out", str(other), "--resume", *changed),
                      "checkpoint")
    assert_user_error(run("analyze", str(tmp_path / "nowhere")), "nowhere")
    (tmp_path / "no_audio").mkdir()
    assert_user_error(run("analyze", str(tmp_path / "no_audio")), "no_audio", "no .wav files")
