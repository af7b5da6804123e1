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
from nvwavenet.cli import main

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
    # A WAV at another rate, in stereo, is read as training reads its data: resampled, mixed to mono.
    write_tone(tmp_path / "stereo16k.wav", rate=16000, channels=2)
    result = run("vocode", str(tmp_path / "stereo16k.wav"), "--checkpoint", str(checkpoint), "--out",
                 str(tmp_path / "out"))
    assert result.returncode == 0, result.stderr
    assert "at 8000 Hz" in result.stdout
    rate, audio = scipy.io.wavfile.read(tmp_path / "out" / "stereo16k.wav")
    assert rate == 8000 and audio.ndim == 1 and abs(len(audio) - 4000) <= 32  # 0.5 s, within a hop
    analysis = run("analyze", str(checkpoint))
    assert analysis.returncode == 0 and "receptive field" in analysis.stdout
    dataset = run("analyze", str(checkpoint.parent / "data"), "--plots", str(tmp_path / "plots"))
    assert dataset.returncode == 0 and "correlation length" in dataset.stdout
    assert (tmp_path / "plots" / "autocorrelation.png").exists()


def test_user_errors_are_one_line(checkpoint, tmp_path):
    write_tone(tmp_path / "fast.wav", rate=16000)
    np.save(tmp_path / "wrong_bands.npy", np.zeros((7, 5), dtype=np.float32))
    other = tmp_path / "other"
    (tmp_path / "data").mkdir()
    write_tone(tmp_path / "data" / "a.wav")
    vocode = ["vocode", "--checkpoint", str(checkpoint), "--out", str(tmp_path / "o"), "--quiet"]
    assert_user_error(run(*vocode, str(tmp_path / "missing.npy")), "missing.npy", "no such file")
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


def one_line_error(capsys, *argv):
    """``main`` in this process (a subprocess costs seconds): exit code 2 and one line on stderr. A
    traceback would be an exception here, failing the test."""
    code = main([str(a) for a in argv])
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1, lines
    return lines[0]


def test_vocode_inputs_that_were_tracebacks_or_garbage_wavs(checkpoint, tmp_path, capsys):
    mel = np.random.default_rng(0).standard_normal((10, 4)).astype(np.float32)
    np.save(tmp_path / "nan.npy", np.where(np.arange(4) == 2, np.nan, mel))
    np.save(tmp_path / "no_frames.npy", mel[:, :0])
    np.save(tmp_path / "integers.npy", mel.astype(np.int64))
    (tmp_path / "empty.npy").write_bytes(b"")
    write_tone(tmp_path / "cut.wav")
    (tmp_path / "cut.wav").write_bytes((tmp_path / "cut.wav").read_bytes()[:40])
    scipy.io.wavfile.write(tmp_path / "nan.wav", 8000, np.full(800, np.nan, dtype=np.float32))
    write_tone(tmp_path / "short.wav", seconds=0.005)
    out = tmp_path / "out"
    vocode = ["vocode", "--checkpoint", checkpoint, "--out", out, "--quiet"]
    cases = {"nan.npy": "expected finite values",  # vocoded into a garbage WAV, exit 0
             "no_frames.npy": "frames >= 1), got (10, 0)",  # an empty WAV, exit 0
             "integers.npy": "expected float mel frames, got dtype int64",
             "empty.npy": "not a readable .npy array",  # EOFError traceback
             "cut.wav": "its header is cut short",  # struct.error traceback
             "nan.wav": "expected finite values",  # a garbage WAV, exit 0
             "short.wav": "expected more than n_fft // 2 = 64 samples, got 40"}  # named no file
    for name, message in cases.items():
        line = one_line_error(capsys, *vocode, tmp_path / name)
        assert f"{name}: " in line and message in line, line
    np.save(tmp_path / "utterance.npy", mel)
    (tmp_path / "other").mkdir()
    np.save(tmp_path / "other" / "utterance.npy", mel)
    # Both went to out/utterance.wav, the second overwriting the first.
    line = one_line_error(capsys, *vocode, tmp_path / "utterance.npy", tmp_path / "other" / "utterance.npy")
    assert "both would be written to" in line and "utterance.wav" in line
    # A negative batch size wrote nothing and exited 0; 0 failed in range().
    assert "--batch-size: expected an integer >= 1, got -1" in one_line_error(
        capsys, *vocode, "--batch-size", "-1", tmp_path / "utterance.npy")
    assert not out.exists()
    # A file as the output folder was a FileExistsError traceback.
    assert "--out: " in one_line_error(capsys, *vocode[:-3], "--out", tmp_path / "nan.npy", tmp_path / "utterance.npy")
    # A .wav in a folder not yet there failed after vocoding; now the folder is made, like an --out folder.
    assert main(["vocode", str(tmp_path / "utterance.npy"), "--checkpoint", str(checkpoint), "--quiet",
                 "--out", str(tmp_path / "new" / "one.wav")]) == 0
    assert scipy.io.wavfile.read(tmp_path / "new" / "one.wav")[1].shape == (4 * 32,)


def test_train_and_analyze_mistakes_are_found_before_the_work(checkpoint, tmp_path, capsys):
    data = checkpoint.parent / "data"
    (tmp_path / "a_file").write_text("")
    # A FileExistsError traceback at the first checkpoint, after the training steps.
    assert "--out: " in one_line_error(capsys, "train", data, "--out", tmp_path / "a_file", *TINY_TRAIN)
    # A model whose upsampling window is shorter than its hop trained fine; the vocoder refused it.
    wide_hop = [a if a != "32" else "256" for a in TINY_TRAIN]  # --hop 32 -> 256 > --n-fft 128
    assert "--hop: expected at most --n-fft (128), got 256" in one_line_error(
        capsys, "train", data, "--out", tmp_path / "wide", *wide_hop)
    assert "--device: expected cpu or cuda, got 'gpu'" in one_line_error(
        capsys, "train", data, "--out", tmp_path / "ckpt", "--device", "gpu", *TINY_TRAIN)
    # A training state without its step: a KeyError traceback on --resume.
    damaged = tmp_path / "damaged"
    damaged.mkdir()
    for name in ("config.json", "model.safetensors", "training.safetensors"):
        (damaged / name).write_bytes((checkpoint / name).read_bytes())
    (damaged / "training.json").write_text("{}")
    assert "training.json: expected nvwavenet's training state" in one_line_error(
        capsys, "train", data, "--out", damaged, "--resume", *TINY_TRAIN)
    # An empty WAV in a dataset was a ZeroDivisionError traceback from the spectrum.
    (tmp_path / "dataset").mkdir()
    write_tone(tmp_path / "dataset" / "a.wav")
    write_tone(tmp_path / "dataset" / "empty.wav", seconds=0)
    assert "empty.wav: empty audio" in one_line_error(capsys, "analyze", tmp_path / "dataset")
    (tmp_path / "dataset" / "empty.wav").unlink()
    assert "--plots: " in one_line_error(capsys, "analyze", tmp_path / "dataset", "--plots", tmp_path / "a_file")
    # The demo failed inside numpy for a length that is no length, and with a FileExistsError for --out a file.
    assert "--seconds: expected a positive number of seconds, got -1.0" in one_line_error(
        capsys, "demo", "--seconds", "-1", "--out", tmp_path / "demo")
    assert "--out: " in one_line_error(capsys, "demo", "--out", tmp_path / "a_file")
