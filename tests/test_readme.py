"""Every code block of README.md runs as written, in the order a reader meets them.

Python blocks run in one session (a block may use what an earlier one made, as a reader's
interpreter would); the commands of bash blocks run as a shell would, from the same folder:
``nvwavenet`` commands through the command line's ``main`` (``serve`` as a server process for the
client block that follows it), ``python -c`` in a child process. Three things differ from a
reader's run, each because the test cannot do it otherwise: ``pip install`` and ``pytest`` are
skipped (this run is the installed package's test suite), the demo trains 2 steps of a 0.5 s
tone instead of its default (minutes), and NV-WaveNet's own training run, whose files a block
reads, is stood in for by its config.json (tests/nv_wavenet_configs) and a checkpoint of
nvwavenet's WaveNet, which has NV-WaveNet's module names.
"""
from __future__ import annotations

import contextlib
import json
import re
import shlex
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from nvwavenet import build_check, cli
from nvwavenet.nv_wavenet_files import read_nv_wavenet_config

pytestmark = pytest.mark.extension

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
NV_WAVENET_CONFIG = Path(__file__).parent / "nv_wavenet_configs" / "config_03f6957_master.json"
SHORT_DEMO = ["--steps", "2", "--seconds", "0.5"]
DEFAULT_URL = "127.0.0.1:8000"


def code_blocks(text: str) -> list[tuple[str, int, str]]:
    """``(language, line number, code)`` of every fenced block, in order."""
    return [(found.group(1), text[:found.start()].count("\n") + 2, found.group(2))
            for found in re.finditer(r"^```(\w*)\n(.*?)^```", text, flags=re.S | re.M)]


def shell_commands(code: str) -> list[str]:
    """The commands of a bash block: backslash continuations joined, comments dropped, ``&&`` split."""
    commands = []
    for line in code.replace("\\\n", " ").splitlines():
        words = shlex.split(line, comments=True)
        while words:
            end = words.index("&&") if "&&" in words else len(words)
            commands.append(shlex.join(words[:end]))
            words = words[end + 1:]
    return commands


def free_port(preferred: int) -> int:
    for port in (preferred, 0):
        with socket.socket() as s, contextlib.suppress(OSError):
            s.bind(("127.0.0.1", port))
            return s.getsockname()[1]
    raise RuntimeError("no free port")


@contextlib.contextmanager
def server(argv: list[str], port: int):
    """``nvwavenet serve ...`` as its own process (this nvwavenet), until the block is done."""
    process = subprocess.Popen([sys.executable, "-m", "nvwavenet", *argv, "--port", str(port)],
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                               env=build_check.python_env())
    lines = []
    try:
        for line in process.stdout:
            lines.append(line)
            if "Uvicorn running on" in line:
                break
        else:
            raise AssertionError("the README's server did not start:\n" + "".join(lines))
        yield
    finally:
        process.terminate()
        process.wait(timeout=60)


def nv_wavenet_run(folder: Path) -> None:
    """What NV-WaveNet's train.py leaves: its config.json and a pickled checkpoint
    ``{'model': module, 'iteration': N}`` (here a module with NV-WaveNet's names: nvwavenet's WaveNet)."""
    shutil.copy(NV_WAVENET_CONFIG, folder / "config.json")
    model, _ = read_nv_wavenet_config(json.loads(NV_WAVENET_CONFIG.read_text()))
    (folder / "checkpoints").mkdir()
    torch.save({"model": model, "iteration": 10000}, folder / "checkpoints" / "wavenet_10000")


def test_every_code_block_runs_as_written(tmp_path, monkeypatch, capsys):
    pytest.importorskip("fastapi", reason="the README's serving example needs the serve extra")
    monkeypatch.chdir(tmp_path)
    nv_wavenet_run(tmp_path)
    blocks = code_blocks(README.read_text())
    assert [language for language, _, _ in blocks].count("python") >= 5, "the README's examples went missing"
    session: dict = {"__name__": "__readme__"}
    ran: list[str] = []
    with contextlib.ExitStack() as servers:
        url = DEFAULT_URL
        for language, line, code in blocks:
            where = f"README.md:{line}"
            if language == "python":
                exec(compile(code.replace(DEFAULT_URL, url), where, "exec"), session)  # noqa: S102
                ran.append(f"{where} python")
                continue
            assert language == "bash", f"{where}: a code block needs a language the test runs (python or bash)"
            for command in shell_commands(code):
                words = shlex.split(command)
                if words[0] in ("pip", "pytest"):
                    continue
                if words[:2] == ["nvwavenet", "serve"]:
                    port = free_port(int(DEFAULT_URL.split(":")[1]))
                    url = f"127.0.0.1:{port}"
                    servers.enter_context(server(words[1:], port))
                elif words[0] == "nvwavenet":
                    argv = words[1:] + (SHORT_DEMO if words[1] == "demo" else [])
                    assert cli.main(argv) == 0, f"{where}: {command}\n{capsys.readouterr().err}"
                else:
                    result = subprocess.run(command, shell=True, capture_output=True, text=True,
                                            env=build_check.python_env(), timeout=300)
                    assert result.returncode == 0, f"{where}: {command}\n{result.stderr}"
                ran.append(f"{where} {words[0]} {words[1] if len(words) > 1 else ''}")
    # What the blocks left behind, as the README says.
    assert (tmp_path / "nvwavenet-demo" / "checkpoint" / "model.safetensors").is_file()
    assert (tmp_path / "speech.wav").stat().st_size > 44 and (tmp_path / "wavenet_state.pt").is_file()
    assert session["waveform"].size > 0 and tuple(session["logits"].shape) == (2, 256, 2048)
    assert len(ran) >= 10, ran
