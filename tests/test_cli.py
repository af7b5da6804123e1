"""The command line as a user drives it: subprocesses, exit codes, one-line errors."""
import argparse
import json
import os
import shlex
import shutil
import subprocess
import sys

import numpy as np
import pytest
import scipy.io.wavfile

import nvwavenet
from nvwavenet.build_check import python_env
from nvwavenet.cli import _finite_float, _positive_float, build_parser, main

TINY_TRAIN = ["--sample-rate", "8000", "--steps", "3", "--batch-size", "2", "--layers", "3", "--max-dilation", "2",
              "--residual", "8", "--skip", "16", "--classes", "64", "--n-mels", "10", "--n-fft", "128", "--hop", "32",
              "--window-hops", "4", "--quiet"]


def run(*args, cwd=None, timeout=300, env=None):
    """``python -m nvwavenet ARGS`` with this nvwavenet, whatever ``cwd`` is."""
    return subprocess.run([sys.executable, "-m", "nvwavenet", *args], capture_output=True, text=True, cwd=cwd,
                          env=python_env(env), timeout=timeout)


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
    # The report's command vocodes with the checkpoint the demo trained, as written.
    command = shlex.split(report.splitlines()[-1])
    assert command[:2] == ["nvwavenet", "vocode"] and (tmp_path / "checkpoint" / "config.json").is_file()
    assert main([*command[1:], "--quiet"]) == 0
    vocoded = tmp_path / "vocoded" / "original-mel.wav"
    rate, audio = scipy.io.wavfile.read(vocoded)
    assert rate == 8000 and len(audio) == np.load(tmp_path / "original-mel.npy").shape[1] * 64


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
    assert "--seconds: expected a positive number, got -1" in one_line_error(
        capsys, "demo", "--seconds", "-1", "--out", tmp_path / "demo")
    assert "--out: " in one_line_error(capsys, "demo", "--out", tmp_path / "a_file")


def _required_arguments(subparser):
    """Placeholder values for the required arguments of ``subparser``: enough to reach option parsing."""
    argv = []
    for action in subparser._actions:
        if not action.option_strings and action.dest != "help":
            argv.append("x")
        elif action.required:
            argv += [action.option_strings[0], "x"]
    return argv


def _subparsers():
    parser = build_parser()
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return commands.choices


def test_every_float_option_refuses_non_finite_values_at_parse_time(capsys):
    checked = []
    for name, subparser in _subparsers().items():
        for action in subparser._actions:
            # float would take "inf" and "nan", int a negative count: every number goes through a checked type.
            assert action.type not in (float, int), (name, action.option_strings)
            if action.type not in (_finite_float, _positive_float):
                continue
            for value in ("inf", "-inf", "nan", "1e999"):
                line = one_line_error(capsys, name, *_required_arguments(subparser), f"{action.option_strings[0]}={value}")
                assert f"{action.option_strings[0]}: expected a finite number" in line, line
            checked.append(f"{name} {action.option_strings[0]}")
    assert {"train --lr", "demo --seconds"} <= set(checked)
    assert "--lr: expected a positive number, got 0" in one_line_error(capsys, "train", "x", "--out", "y", "--lr", "0")


def test_every_help_shows_the_defaults(capsys):
    for name, subparser in _subparsers().items():
        assert main([name, "--help"]) == 0
        text = " ".join(capsys.readouterr().out.split())  # argparse wraps lines
        for action in subparser._actions:
            if action.option_strings and not any(action.default is v for v in (None, False, argparse.SUPPRESS)):
                assert f"default: {action.default}" in text, (name, action.option_strings)
    assert main(["train", "--help"]) == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "total training steps" in text and "(default: 16; with --resume: the checkpoint's)" in text


def test_train_keeps_a_checkpoint_unless_told_and_resume_takes_its_settings(checkpoint, tmp_path, capsys):
    data, ckpt = checkpoint.parent / "data", tmp_path / "ckpt"
    shutil.copytree(checkpoint, ckpt)
    before = {p.name: p.read_bytes() for p in ckpt.iterdir()}
    # A 3-layer model was silently replaced by a new one, exit 0.
    line = one_line_error(capsys, "train", data, "--out", ckpt, *TINY_TRAIN)
    assert "--out: " in line and "holds a checkpoint already" in line and "--resume" in line and "--overwrite" in line
    assert {p.name: p.read_bytes() for p in ckpt.iterdir()} == before
    # --resume on a folder without a checkpoint started from step 0.
    assert "--resume: no checkpoint in" in one_line_error(capsys, "train", data, "--out", tmp_path / "none", "--resume")
    # A flag that contradicts the checkpoint; --steps at or below its step.
    line = one_line_error(capsys, "train", data, "--out", ckpt, "--resume", "--steps", "5", "--layers", "4")
    assert "--layers 4: the checkpoint in" in line and "--layers 3" in line
    line = one_line_error(capsys, "train", data, "--out", ckpt, "--resume", "--steps", "3")
    assert "--steps 3: " in line and "at step 3 already" in line
    assert {p.name: p.read_bytes() for p in ckpt.iterdir()} == before
    # Only --steps (and a flag that agrees) given: everything else comes from the checkpoint.
    assert main(["train", str(data), "--out", str(ckpt), "--resume", "--steps", "4", "--layers", "3", "--quiet"]) == 0
    training = json.loads((ckpt / "training.json").read_text())
    assert training["step"] == 4 and training["batch_size"] == 2 and training["targets_per_window"] == 4 * 32
    assert json.loads((ckpt / "config.json").read_text())["model"] == json.loads(before["config.json"])["model"]
    # --overwrite replaces it with the model the flags describe.
    assert main(["train", str(data), "--out", str(ckpt), "--overwrite", *TINY_TRAIN, "--layers", "2"]) == 0
    assert json.loads((ckpt / "config.json").read_text())["model"]["n_layers"] == 2


def test_ctrl_c_during_training_says_which_step_was_saved(checkpoint, tmp_path, capsys, interrupt_training):
    interrupt_training(4)
    out = tmp_path / "ckpt"
    argv = ["train", str(checkpoint.parent / "data"), "--out", str(out), *TINY_TRAIN, "--steps", "9",
            "--checkpoint-every", "2"]
    argv.remove("--quiet")  # with the progress bar, which the message must not land on
    assert main(argv) == 130
    lines = capsys.readouterr().err.replace("\r", "\n").splitlines()
    assert lines[-1] == (f"nvwavenet train: interrupted after 3 steps; {out} holds the checkpoint of step 2; run "
                         "the same command with --resume to continue from it")
    assert lines[-2].startswith("training:"), lines[-2]  # the bar, closed: its line ends before the message
    assert json.loads((out / "training.json").read_text())["step"] == 2


def test_vocode_several_inputs_need_an_out_folder(checkpoint, tmp_path, capsys):
    mel = np.random.default_rng(1).standard_normal((10, 3)).astype(np.float32)
    for name in ("a", "b"):
        np.save(tmp_path / f"{name}.npy", mel)
    inputs = [tmp_path / "a.npy", tmp_path / "b.npy"]
    # It made a folder named two.wav.
    line = one_line_error(capsys, "vocode", *inputs, "--checkpoint", checkpoint, "--out", tmp_path / "out" / "two.wav")
    assert "--out: " in line and "2 inputs need a folder" in line
    assert not (tmp_path / "out").exists()
    (tmp_path / "file").write_text("")
    assert "--out: " in one_line_error(capsys, "vocode", *inputs, "--checkpoint", checkpoint, "--out", tmp_path / "file")
    # A WAV vocoded into its own folder, or onto itself, replaced the recording.
    write_tone(tmp_path / "voice.wav")
    recording = (tmp_path / "voice.wav").read_bytes()
    for out in (tmp_path, tmp_path / "voice.wav"):
        line = one_line_error(capsys, "vocode", tmp_path / "voice.wav", "--checkpoint", checkpoint, "--out", out)
        assert "would overwrite the input" in line and "voice.wav" in line
    assert (tmp_path / "voice.wav").read_bytes() == recording


def test_errors_name_the_argument_the_user_typed(checkpoint, tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert one_line_error(capsys, "train", tmp_path / "empty", "--out", tmp_path / "c", *TINY_TRAIN).startswith(
        "nvwavenet train: error: DATA: no .wav files under")
    assert one_line_error(capsys, "vocode", "a.npy", "--checkpoint", tmp_path / "empty").startswith(
        "nvwavenet vocode: error: --checkpoint: no nvwavenet checkpoint at")
    assert one_line_error(capsys, "analyze", tmp_path / "empty").startswith(
        "nvwavenet analyze: error: PATH: no .wav files under")


def test_converted_inputs_are_mentioned_once(checkpoint, tmp_path, capsys):
    for name in ("a", "b"):
        write_tone(tmp_path / f"{name}.wav", rate=11025, channels=2)
    assert main(["vocode", str(tmp_path / "a.wav"), str(tmp_path / "b.wav"), "--checkpoint", str(checkpoint),
                 "--out", str(tmp_path / "out"), "--quiet"]) == 0
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert lines == ["nvwavenet vocode: note: WAV input converted: 2 channels mixed to mono and 11025 Hz resampled "
                     "to 8000 Hz (said once; other inputs may be converted too)"]


def test_importing_nvwavenet_makes_pytorchs_openmp_threads_sleep_unless_told_otherwise():
    """Spinning OpenMP threads slowed training 6 to 12 times on a busy 2-core machine (README)."""
    def policy(code, **env):
        base = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
        result = subprocess.run([sys.executable, "-c", code + "; import os; print(os.environ.get('OMP_WAIT_POLICY'))"],
                                capture_output=True, text=True, env={**python_env(base), **env})
        assert result.returncode == 0, result.stderr
        return result.stdout.split()[-1]

    assert policy("import nvwavenet") == "PASSIVE"
    assert policy("import nvwavenet", OMP_WAIT_POLICY="ACTIVE") == "ACTIVE"  # the user's setting wins
    assert policy("import torch, nvwavenet") == "None"  # too late to matter: libgomp has read it
