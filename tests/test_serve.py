"""``nvwavenet serve`` with real clients over loopback: a uvicorn server on 127.0.0.1 (an ephemeral
port) in a thread, or as ``python -m nvwavenet serve`` in a subprocess for the signal tests.

The key property: each stream's audio is bit for bit ``Vocoder(mel, seed=seed)`` for that stream
alone, whatever runs beside it and however its frames are cut into messages. Then every bad input,
the stream limit, a dropped connection, a client that never reads, and graceful shutdown.
"""
from __future__ import annotations

import asyncio
import contextlib
import io
import json
import random
import re
import signal
import socket
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
import torch

pytest.importorskip("fastapi")
pytest.importorskip("websockets")
import httpx  # noqa: E402
import uvicorn  # noqa: E402
from websockets.asyncio.client import connect  # noqa: E402
from websockets.exceptions import ConnectionClosed  # noqa: E402

from nvwavenet import cli  # noqa: E402
from nvwavenet.audio import AudioConfig, to_pcm  # noqa: E402
from nvwavenet.checkpoint import save_model  # noqa: E402
from nvwavenet.client import Client, ServerError  # noqa: E402
from nvwavenet.mel import MelConfig  # noqa: E402
from nvwavenet.model import WaveNet  # noqa: E402
from nvwavenet.server import ServeSettings, create_app, uvicorn_config  # noqa: E402
from nvwavenet.session import Session  # noqa: E402
from nvwavenet.vocoder import Vocoder  # noqa: E402

MELS = 10
MEL = MelConfig(sample_rate=8000, n_fft=256, hop_length=32, win_length=256, n_mels=MELS, fmin=0.0, fmax=4000.0)
# A receptive field of 31 samples with 4 frames of conditioning context: a stream that reset or
# mixed up its state or history differs within a frame.
WAVENET_CONFIG = dict(n_in_channels=64, n_layers=4, max_dilation=8, n_residual_channels=8, n_skip_channels=16,
                      n_out_channels=64, n_cond_channels=MELS, upsamp_window=128, upsamp_stride=32)


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return WaveNet(**WAVENET_CONFIG).eval()


@pytest.fixture(scope="module")
def vocoder(model):
    return Vocoder(model, AudioConfig(8000, 64, MEL))


@pytest.fixture(scope="module")
def checkpoint(model, tmp_path_factory):
    return save_model(tmp_path_factory.mktemp("serve") / "ckpt", model, AudioConfig(8000, 64, MEL))


@contextlib.contextmanager
def running(vocoder, socket_buffer: int | None = None, **settings):
    """A server in a thread of this process; yields (base URL, app). ``socket_buffer``: the kernel's
    send and receive buffers of its connections, in bytes (else loopback lets them grow to MBs)."""
    app = create_app(vocoder, ServeSettings(**settings))
    sock = socket.socket()
    if socket_buffer:
        for option in (socket.SO_RCVBUF, socket.SO_SNDBUF):
            sock.setsockopt(socket.SOL_SOCKET, option, socket_buffer)
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn_config(app, log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "the server did not start"
        time.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}", app
    finally:
        server.should_exit = True
        thread.join(15)
        sock.close()
        assert not thread.is_alive(), "the server did not stop"


def ws_url(base: str, **query) -> str:
    return base.replace("http://", "ws://") + "/v1/stream?" + "&".join(f"{k}={v}" for k, v in query.items())


def frames_bytes(mel) -> bytes:
    return np.ascontiguousarray(np.asarray(mel, dtype=np.float32).T).tobytes()


def metric(base: str, name: str) -> float:
    text = httpx.get(base + "/metrics").text
    return sum(float(m.group(1)) for m in re.finditer(rf"^{re.escape(name)} (\S+)$", text, re.M))


def wait_for(condition, seconds: float = 10.0, what: str = "condition") -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def random_chunks(mel: torch.Tensor, rng: random.Random) -> list[torch.Tensor]:
    chunks, start = [], 0
    while start < mel.shape[1]:
        size = rng.randint(1, 9)
        chunks.append(mel[:, start:start + size])
        start += size
    return chunks


async def expect_close(websocket, code: int, reason: str, seconds: float = 10.0) -> None:
    """Read until the server closes; its code and reason must be these."""
    with pytest.raises(ConnectionClosed) as closed:
        async with asyncio.timeout(seconds):
            while True:
                await websocket.recv()
    assert closed.value.rcvd is not None, "closed without a close frame"
    assert closed.value.rcvd.code == code, closed.value.rcvd
    assert re.search(reason, closed.value.rcvd.reason), closed.value.rcvd.reason


# -- the key property ------------------------------------------------------------------------------

def test_concurrent_streams_equal_the_vocoder_alone(vocoder):
    """24 clients at once, lengths 1 to 60 frames cut into random messages, each its own seed and
    format; streams sit out turns and rejoin whenever their next frames are late."""
    rng = random.Random(1)
    cases = [(torch.randn(MELS, rng.randint(1, 60)) - 2.0, rng.randint(-2**40, 2**40), rng.choice(["float32", "pcm16"]))
             for _ in range(24)]
    with running(vocoder, max_streams=32, chunk_frames=3, max_pending_frames=12) as (base, _):
        client = Client(base)

        async def one(mel, seed, sample_format):
            async def trickle():  # frames arrive over time, as a TTS model makes them
                for chunk in random_chunks(mel, random.Random(seed)):
                    await asyncio.sleep(random.Random(seed + chunk.shape[1]).random() * 0.01)
                    yield chunk
            return np.concatenate([chunk async for chunk in client.astream(trickle(), seed=seed,
                                                                             sample_format=sample_format)])

        async def everyone():
            return await asyncio.gather(*(one(*case) for case in cases))

        results = asyncio.run(everyone())
        calls = metric(base, "nvwavenet_batch_streams_count")
        alone = metric(base, 'nvwavenet_batch_streams_bucket{le="1.0"}')
    for (mel, seed, sample_format), audio in zip(cases, results):
        expected = vocoder(mel, seed=seed).numpy()
        if sample_format == "pcm16":
            expected = to_pcm(expected, "int16")
        assert audio.dtype == expected.dtype and np.array_equal(audio, expected), (seed, mel.shape)
    assert alone < calls, "no engine call batched more than one stream"


def test_one_shot_post_and_vocode_server_cli(vocoder, tmp_path):
    mel = torch.randn(MELS, 45) - 2.0
    with running(vocoder) as (base, _):
        client = Client(base)
        assert np.array_equal(client.vocode(mel.numpy(), seed=7), vocoder(mel, seed=7).numpy())
        pcm = client.vocode(mel.numpy(), seed=7, sample_format="pcm16")
        assert np.array_equal(pcm, to_pcm(vocoder(mel, seed=7).numpy(), "int16"))
        np.save(tmp_path / "a.npy", mel.numpy())
        assert cli.main(["vocode", str(tmp_path / "a.npy"), "--server", base, "--seed", "7",
                         "--out", str(tmp_path / "out"), "--quiet"]) == 0
        assert cli.main(["vocode", str(tmp_path / "a.npy"), "--checkpoint", "unused", "--server", base,
                         "--seed", "7", "--out", str(tmp_path / "local.wav"), "--quiet"]) == 0
    assert (tmp_path / "out" / "a.wav").read_bytes() == (tmp_path / "local.wav").read_bytes()
    from nvwavenet.audio import read_wav
    written, rate = read_wav(tmp_path / "out" / "a.wav")
    assert rate == 8000 and np.array_equal(written, to_pcm(vocoder(mel, seed=7).numpy(), "int16") / 32768.0)


def test_model_info_health_and_metrics(vocoder):
    with running(vocoder, max_streams=5) as (base, _):
        info = httpx.get(base + "/v1/model").json()
        assert (info["n_mels"], info["hop_length"], info["sample_rate"], info["limits"]["max_streams"]) == (MELS, 32, 8000, 5)
        assert info["close_codes"]["1013"] == "all stream slots in use"
        assert httpx.get(base + "/healthz").json() == {"status": "ok", "active_streams": 0}
        Client(base).vocode(torch.randn(MELS, 8).numpy())
        text = httpx.get(base + "/metrics").text
        for name in ("nvwavenet_active_streams", "nvwavenet_samples_total", "nvwavenet_samples_per_second",
                     "nvwavenet_queued_frames", "nvwavenet_queued_audio_chunks", "nvwavenet_first_audio_seconds_bucket"):
            assert name in text, name
        assert metric(base, "nvwavenet_samples_total") == 8 * 32
        assert metric(base, 'nvwavenet_streams_total{outcome="finished"}') == 1
        assert metric(base, "nvwavenet_first_audio_seconds_count") == 1


# -- bad input -------------------------------------------------------------------------------------

BAD_STREAMS = {
    "partial frame": ({}, [b"\0" * (4 * MELS + 4)], 4400, r"108|44 bytes: expected whole frames of 10 float32"),
    "wrong width": ({"n_mels": 9}, [], 4400, r"n_mels: the model takes mel frames of 10 bands, the client sends 9"),
    "NaN": ({}, [frames_bytes(np.full((MELS, 3), np.nan))], 4400, r"frames: expected finite values"),
    "infinity": ({}, [frames_bytes(np.full((MELS, 2), -np.inf))], 4400, r"frames: expected finite values"),
    "unknown text": ({}, ['{"type": "stop"}'], 4400, r"expected \{\"type\": \"end\"\}"),
    "not JSON": ({}, ["end"], 4400, r"expected \{\"type\": \"end\"\}"),
    "bad seed": ({"seed": "x"}, [], 4400, r"seed: expected an integer, got 'x'"),
    "seed out of range": ({"seed": 2**64}, [], 4400, r"seed: expected an integer in"),
    "bad format": ({"format": "mp3"}, [], 4400, r"format: expected pcm16 or float32, got 'mp3'"),
    "oversize message": ({}, [frames_bytes(np.zeros((MELS, 17)))], 1009, r"at most 16 frames a message"),
}


def test_bad_streams_get_their_close_code_and_the_others_go_on(vocoder):
    mel = torch.randn(MELS, 40) - 2.0
    with running(vocoder, max_pending_frames=16) as (base, _):
        async def bad(query, messages, code, reason):
            async with connect(ws_url(base, **query)) as websocket:
                for message in messages:
                    await websocket.send(message)
                await expect_close(websocket, code, reason)

        async def good():
            chunks = [chunk async for chunk in Client(base).astream([mel[:, i:i + 4] for i in range(0, 40, 4)], seed=3)]
            return np.concatenate(chunks)

        async def together():
            return await asyncio.gather(good(), *(bad(*case) for case in BAD_STREAMS.values()))

        audio = asyncio.run(together())[0]
        assert np.array_equal(audio, vocoder(mel, seed=3).numpy())
        assert metric(base, 'nvwavenet_streams_total{outcome="bad_input"}') == len(BAD_STREAMS)
        wait_for(lambda: metric(base, "nvwavenet_active_streams") == 0, what="every slot freed")
        # uvicorn itself refuses a message far over the limit before reading it into memory.
        async def huge():
            async with connect(ws_url(base), max_size=None) as websocket:
                await websocket.send(b"\0" * (4 * MELS * 16 + 8192))
                await expect_close(websocket, 1009, r"")
        asyncio.run(huge())


def npy_bytes(array) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()


@pytest.mark.parametrize("body, query, status, detail", [
    (b"not an array", "", 400, r"body: not a readable \.npy array"),
    (npy_bytes(np.zeros((MELS, 4), dtype=np.int32)), "", 400, r"expected float mel frames, got dtype int32"),
    (npy_bytes(np.zeros((MELS + 1, 4), dtype=np.float32)), "", 400, r"expected a mel of shape \(10 bands"),
    (npy_bytes(np.zeros((MELS, 0), dtype=np.float32)), "", 400, r"expected a mel of shape"),
    (npy_bytes(np.full((MELS, 4), np.nan, dtype=np.float32)), "", 400, r"NaN or infinite"),
    (npy_bytes(np.zeros((MELS, 4), dtype=np.float32)), "?seed=1.5", 400, r"seed: expected an integer"),
    (npy_bytes(np.zeros((MELS, 4), dtype=np.float32)), "?format=wav", 400, r"format: expected pcm16 or float32"),
    (npy_bytes(np.zeros((MELS, 101), dtype=np.float32)), "", 413, r"101 frames, at most 100"),
    (b"\0" * (8 * MELS * 100 + 5000), "", 413, r"at most 100 frames"),
], ids=["not npy", "int", "width", "empty", "NaN", "seed", "format", "too many frames", "oversize body"])
def test_bad_posts_get_their_status(vocoder, body, query, status, detail):
    with running(vocoder, max_request_frames=100) as (base, _):
        response = httpx.post(base + "/v1/vocode" + query, content=body)
        assert response.status_code == status and re.search(detail, response.json()["detail"]), response.text
        assert httpx.get(base + "/healthz").json()["active_streams"] == 0


# -- limits ----------------------------------------------------------------------------------------

def test_beyond_max_streams_is_refused_never_a_hang(vocoder):
    mel = torch.randn(MELS, 12) - 2.0
    with running(vocoder, max_streams=2) as (base, _):
        async def scenario():
            holders = [await connect(ws_url(base)) for _ in range(2)]
            for holder in holders:
                await holder.send(frames_bytes(mel[:, :2]))
            await asyncio.to_thread(wait_for, lambda: metric(base, "nvwavenet_active_streams") == 2)

            async def refused():
                async with connect(ws_url(base)) as websocket:
                    await expect_close(websocket, 1013, r"all 2 stream slots are in use", seconds=20)

            await asyncio.gather(*(refused() for _ in range(20)))  # 10x --max-streams at once
            response = await asyncio.to_thread(httpx.post, base + "/v1/vocode", content=npy_bytes(mel.numpy()))
            assert response.status_code == 503 and response.headers["retry-after"] == "1"
            assert "slots are in use" in response.json()["detail"]
            # The held streams were not disturbed: they finish with their audio.
            for holder in holders:
                await holder.send(frames_bytes(mel[:, 2:]))
                await holder.send(json.dumps({"type": "end"}))
            for holder in holders:
                audio = []
                while isinstance(message := await holder.recv(), bytes):
                    audio.append(np.frombuffer(message, "<i2"))
                assert json.loads(message) == {"type": "end", "frames": 12, "samples": 12 * 32}
                assert np.array_equal(np.concatenate(audio), to_pcm(vocoder(mel, seed=0).numpy(), "int16"))
                await holder.close()

        asyncio.run(scenario())
        assert metric(base, 'nvwavenet_streams_total{outcome="refused_full"}') == 21
        Client(base).vocode(mel.numpy())  # the slots are free again


def test_dropped_connection_frees_its_slot_at_once(vocoder):
    mel = torch.randn(MELS, 30) - 2.0
    with running(vocoder, max_streams=1) as (base, _):
        async def drop():
            websocket = await connect(ws_url(base))
            await websocket.send(frames_bytes(mel[:, :10]))
            await websocket.send(frames_bytes(mel[:, 10:15])[:-3])  # cut mid-frame, then the connection goes
            websocket.transport.abort()

        asyncio.run(drop())
        wait_for(lambda: metric(base, "nvwavenet_active_streams") == 0, seconds=2, what="the slot freed")
        assert np.array_equal(Client(base).vocode(mel.numpy(), seed=1), vocoder(mel, seed=1).numpy())


def test_a_client_that_never_reads_is_held_back_and_bounded(vocoder):
    """Its stream stalls with frames still waiting (the server neither generates nor buffers audio
    it cannot send, nor reads frames it has no room for), its queues stay at their limits, another
    stream runs meanwhile, and after send_timeout its slot is freed. The server's socket buffers
    are kept small, so that what holds the stream back is the server's own flow control."""
    mel = torch.randn(MELS, 40) - 2.0
    limits = dict(max_pending_frames=64, max_ready_chunks=2, send_timeout=6.0)
    with running(vocoder, socket_buffer=8192, **limits) as (base, _):
        async def scenario():
            sock = socket.socket()
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # before connecting: a small window
            sock.connect(("127.0.0.1", int(base.rsplit(":", 1)[1])))
            websocket = await connect(ws_url(base, format="float32"), sock=sock, max_queue=1)
            message = frames_bytes(torch.zeros(MELS, 64))

            async def flood():
                for _ in range(2000):  # 4 M samples of audio if nothing held it back
                    await websocket.send(message)

            flooding = asyncio.create_task(flood())
            previous, stalled_at, deadline = -1.0, metric(base, "nvwavenet_samples_total"), time.monotonic() + 30
            while stalled_at != previous:  # what the kernel's buffers took is vocoded, then nothing more
                assert time.monotonic() < deadline, "the stream never stalled"
                await asyncio.sleep(0.5)
                previous, stalled_at = stalled_at, metric(base, "nvwavenet_samples_total")
            # The client's library and the kernel may hold what it sent; the server took little of it.
            assert stalled_at < 2000 * 64 * 32 / 20, "the server vocoded what it could not send"
            flooding.cancel()
            assert metric(base, "nvwavenet_active_streams") == 1
            assert 0 < metric(base, "nvwavenet_queued_frames") <= limits["max_pending_frames"]
            assert metric(base, "nvwavenet_queued_audio_chunks") <= limits["max_ready_chunks"]
            other = [chunk async for chunk in Client(base).astream([mel], seed=2)]
            assert np.array_equal(np.concatenate(other), vocoder(mel, seed=2).numpy())
            await asyncio.to_thread(wait_for, lambda: metric(base, "nvwavenet_active_streams") == 0,
                                    limits["send_timeout"] + 5, "the stalled stream closed")
            websocket.transport.abort()

        asyncio.run(scenario())
        assert metric(base, 'nvwavenet_streams_total{outcome="timeout"}') == 1


def test_an_engine_failure_closes_its_streams_with_1011_and_the_server_goes_on(vocoder, monkeypatch):
    mel = torch.randn(MELS, 12) - 2.0
    with running(vocoder) as (base, _):
        client = Client(base)
        with monkeypatch.context() as patch:
            def fail(*args, **kwargs):
                raise RuntimeError("out of memory")
            patch.setattr(Session, "step", fail)  # the scheduler's engine calls
            with pytest.raises(ServerError, match="1011: engine error: RuntimeError: out of memory"):
                list(client.stream([mel]))
            with pytest.raises(ServerError, match="500: engine error: RuntimeError: out of memory"):
                client.vocode(mel.numpy())
        assert np.array_equal(client.vocode(mel.numpy(), seed=4), vocoder(mel, seed=4).numpy())
        assert metric(base, 'nvwavenet_streams_total{outcome="error"}') == 2


# -- shutdown --------------------------------------------------------------------------------------

@contextlib.contextmanager
def serve_process(checkpoint, *args):
    process = subprocess.Popen([sys.executable, "-m", "nvwavenet", "serve", str(checkpoint), "--port", "0", *args],
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines = []
    try:
        for line in process.stdout:
            lines.append(line)
            if found := re.search(r"Uvicorn running on http://127\.0\.0\.1:(\d+)", line):
                break
        else:
            raise AssertionError("the server did not start:\n" + "".join(lines))
        yield process, f"http://127.0.0.1:{found.group(1)}", lines
    finally:
        if process.poll() is None:
            process.kill()
        process.wait(10)


def test_sigterm_finishes_open_streams_refuses_new_ones_and_exits_0(vocoder, checkpoint):
    mel = torch.randn(MELS, 24) - 2.0
    with serve_process(checkpoint, "--shutdown-grace", "10") as (process, base, lines):
        async def scenario():
            finishing, abandoned = await connect(ws_url(base, seed=5)), await connect(ws_url(base))
            await finishing.send(frames_bytes(mel[:, :10]))
            await abandoned.send(frames_bytes(mel[:, :10]))
            await asyncio.to_thread(wait_for, lambda: metric(base, "nvwavenet_active_streams") == 2)
            process.send_signal(signal.SIGTERM)
            await asyncio.to_thread(wait_for, lambda: httpx.get(base + "/healthz").status_code == 503)
            async with connect(ws_url(base)) as late:
                await expect_close(late, 1001, r"shutting down and takes no new streams")
            response = await asyncio.to_thread(httpx.post, base + "/v1/vocode", content=npy_bytes(mel.numpy()))
            assert response.status_code == 503 and "shutting down" in response.json()["detail"]
            # Within the grace period a stream may still end, and gets all its audio.
            await finishing.send(frames_bytes(mel[:, 10:]))
            await finishing.send(json.dumps({"type": "end"}))
            audio = []
            while isinstance(message := await finishing.recv(), bytes):
                audio.append(np.frombuffer(message, "<i2"))
            assert np.array_equal(np.concatenate(audio), to_pcm(vocoder(mel, seed=5).numpy(), "int16"))
            await expect_close(finishing, 1000, "utterance complete")
            # One that never ends is closed with the reason once the grace period is over.
            await expect_close(abandoned, 1001, r"did not end within the 10 s grace period", seconds=30)

        asyncio.run(scenario())
        assert process.wait(20) == 0, "".join(lines) + process.stdout.read()


def test_sigint_with_nothing_open_exits_0(checkpoint):
    with serve_process(checkpoint) as (process, base, lines):
        assert httpx.get(base + "/healthz").status_code == 200
        process.send_signal(signal.SIGINT)
        assert process.wait(20) == 0, "".join(lines) + process.stdout.read()


@pytest.mark.parametrize("args, message", [
    (["serve", "no-such-checkpoint"], r"no-such-checkpoint"),
    (["serve", "CKPT", "--max-streams", "0"], r"--max-streams: expected an integer >= 1, got 0"),
    (["serve", "CKPT", "--chunk-frames", "-1"], r"--chunk-frames: expected an integer >= 1"),
    (["serve", "CKPT", "--shutdown-grace", "nan"], r"--shutdown-grace: expected a finite number"),
    (["vocode", "x.npy"], r"--checkpoint: required unless --server is given"),
    (["vocode", "IN", "--server", "http://127.0.0.1:9"], r"http://127\.0\.0\.1:9: "),
    (["vocode", "IN", "--server", "ftp://x"], r"url: expected the server's http://host:port"),
], ids=["checkpoint", "max-streams", "chunk-frames", "grace", "no checkpoint", "no server", "bad url"])
def test_cli_errors(checkpoint, tmp_path, capsys, args, message):
    np.save(tmp_path / "in.npy", np.zeros((MELS, 3), dtype=np.float32))
    args = [str(checkpoint) if a == "CKPT" else str(tmp_path / "in.npy") if a == "IN" else a for a in args]
    assert cli.main(args + (["--out", str(tmp_path / "out")] if args[0] == "vocode" else [])) == 2
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1 and re.search(message, error), error


# -- Ray Serve -------------------------------------------------------------------------------------

@pytest.mark.slow
def test_ray_serve_deployment_serves_the_same_audio(model, vocoder, checkpoint):
    """The same app as a Ray Serve deployment on a local Ray instance (about 30 s on 2 cores); skipped
    without ``pip install "nvwavenet[ray]"``, which the test extra leaves out (ray is about 240 MB)."""
    ray = pytest.importorskip("ray")
    from ray import serve

    from nvwavenet.ray_serve import build_app

    with pytest.raises(ValueError, match="unknown arguments \\['colour'\\]"):
        build_app({"checkpoint": str(checkpoint), "colour": "red"})
    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        serve.run(build_app({"checkpoint": str(checkpoint), "max_streams": "4", "chunk_frames": "3"}), route_prefix="/")
        client = Client(f"http://127.0.0.1:{port}")
        mel = torch.randn(MELS, 21) - 2.0
        assert np.array_equal(client.vocode(mel.numpy(), seed=3), vocoder(mel, seed=3).numpy())
        streamed = np.concatenate(list(client.stream([mel[:, :8], mel[:, 8:]], seed=4)))
        assert np.array_equal(streamed, vocoder(mel, seed=4).numpy())
        assert client.model_info()["limits"]["max_streams"] == 4
    finally:
        serve.shutdown()
        ray.shutdown()
