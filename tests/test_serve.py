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
import ssl
import subprocess
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

from nvwavenet import build_check, cli  # noqa: E402
from nvwavenet.audio import AudioConfig, to_pcm  # noqa: E402
from nvwavenet.checkpoint import save_model  # noqa: E402
from nvwavenet.client import Client, ServerError  # noqa: E402
from nvwavenet.mel import MelConfig  # noqa: E402
from nvwavenet.model import WaveNet  # noqa: E402
from nvwavenet.server import (ServeSettings, create_app, measure_capacity, read_token,  # noqa: E402
                              startup_lines, uvicorn_config)
from nvwavenet.session import Session  # noqa: E402
from nvwavenet.testing import serve_process  # noqa: E402
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
def running(vocoder, socket_buffer: int | None = None, token: str | None = None, tls: tuple | None = None,
            **settings):
    """A server in a thread of this process; yields (base URL, app). ``socket_buffer``: the kernel's
    send and receive buffers of its connections, in bytes (else loopback lets them grow to MBs);
    ``token``: its bearer token; ``tls``: (certificate, key) files to serve https."""
    # Admission by real-time capacity has its own tests: elsewhere it would make refusals depend on
    # how loaded the machine is, and the startup measurement would be repeated for every server.
    app = create_app(vocoder, ServeSettings(**{"admit": "all", "capacity": 64, **settings}), token=token)
    sock = socket.socket()
    if socket_buffer:
        for option in (socket.SO_RCVBUF, socket.SO_SNDBUF):
            sock.setsockopt(socket.SOL_SOCKET, option, socket_buffer)
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn_config(app, log_level="warning", **(
        {} if tls is None else {"ssl_certfile": str(tls[0]), "ssl_keyfile": str(tls[1])})))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "the server did not start"
        time.sleep(0.01)
    try:
        yield f"{'https' if tls else 'http'}://127.0.0.1:{sock.getsockname()[1]}", app
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


def test_vocode_server_takes_the_inputs_of_local_vocode_and_writes_the_same_bytes(vocoder, checkpoint, tmp_path):
    """WAVs (mel computed on the client with the server model's front end) and .npy mels; several
    inputs as local ``--batch-size 1`` vocodes them (input i with seed + i)."""
    from nvwavenet.audio import write_wav
    rng = np.random.default_rng(5)
    write_wav(tmp_path / "speech.wav", (0.3 * rng.standard_normal(8000 // 4)).astype(np.float32), 8000)
    write_wav(tmp_path / "resampled.wav", (0.3 * rng.standard_normal(11025 // 5)).astype(np.float32), 11025)
    np.save(tmp_path / "mel.npy", (torch.randn(MELS, 13) - 2.0).numpy())
    inputs = [str(tmp_path / name) for name in ("speech.wav", "resampled.wav", "mel.npy")]
    with running(vocoder) as (base, _):
        assert cli.main(["vocode", *inputs, "--server", base, "--seed", "3", "--out", str(tmp_path / "served"),
                         "--quiet"]) == 0
    assert cli.main(["vocode", *inputs, "--checkpoint", str(checkpoint), "--seed", "3", "--batch-size", "1",
                     "--out", str(tmp_path / "local"), "--quiet"]) == 0
    for name in ("speech", "resampled", "mel"):
        served, local = (tmp_path / "served" / f"{name}.wav").read_bytes(), (tmp_path / "local" / f"{name}.wav").read_bytes()
        assert len(served) > 800 and served == local, name


def test_model_info_health_and_metrics(vocoder):
    with running(vocoder, max_streams=5) as (base, _):
        info = httpx.get(base + "/v1/model").json()
        assert (info["n_mels"], info["hop_length"], info["sample_rate"], info["limits"]["max_streams"]) == (MELS, 32, 8000, 5)
        assert info["close_codes"]["1013"] == "all stream slots in use, or at real-time capacity"
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


def npy_header(shape, descr="<f4", data=b"\0" * 64) -> bytes:
    """A .npy file whose header declares ``shape``, followed by ``data`` whatever it declares."""
    buffer = io.BytesIO()
    np.lib.format.write_array_header_1_0(buffer, {"descr": descr, "fortran_order": False, "shape": shape})
    return buffer.getvalue() + data


@pytest.mark.parametrize("body, query, status, detail", [
    (b"not an array", "", 400, r"body: expected a \.npy file .* starting with b'not an array'"),
    (b"\x93NUMPY\x01\x00\xff\xff{", "", 400, r"body: not a readable \.npy array"),
    (npy_header((MELS, 10**15)), "", 400, r"declares shape \(10, 1000000000000000\) of float32 \(4000+ bytes\), but "
                                          r"64 bytes follow"),
    (npy_header((MELS, 4), "|O"), "", 400, r"Python objects are never loaded"),
    (npy_bytes(np.zeros((MELS, 4), dtype=np.int32)), "", 400, r"expected float mel frames, got dtype int32"),
    (npy_bytes(np.zeros((MELS + 1, 4), dtype=np.float32)), "", 400, r"expected a mel of shape \(10 bands"),
    (npy_bytes(np.zeros((MELS, 0), dtype=np.float32)), "", 400, r"expected a mel of shape"),
    (npy_bytes(np.full((MELS, 4), np.nan, dtype=np.float32)), "", 400, r"NaN or infinite"),
    (npy_bytes(np.zeros((MELS, 4), dtype=np.float32)), "?seed=1.5", 400, r"seed: expected an integer"),
    (npy_bytes(np.zeros((MELS, 4), dtype=np.float32)), "?format=wav", 400, r"format: expected pcm16 or float32"),
    (npy_bytes(np.zeros((MELS, 101), dtype=np.float32)), "", 413, r"101 frames, at most 100"),
    (b"\0" * (8 * MELS * 100 + 5000), "", 413, r"at most 100 frames"),
], ids=["not npy", "bad header", "huge shape", "pickle", "int", "width", "empty", "NaN", "seed", "format", "too many frames", "oversize body"])
def test_bad_posts_get_their_status(vocoder, body, query, status, detail):
    with running(vocoder, max_request_frames=100) as (base, _):
        response = httpx.post(base + "/v1/vocode" + query, content=body)
        assert response.status_code == status and re.search(detail, response.json()["detail"]), response.text
        assert httpx.get(base + "/healthz").json()["active_streams"] == 0
        assert metric(base, 'nvwavenet_streams_total{outcome="bad_input"}') == 1


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


def test_at_real_time_capacity_a_new_stream_is_refused_with_retry_after(vocoder):
    mel = torch.randn(MELS, 12) - 2.0
    with running(vocoder, admit="realtime", capacity=2, max_streams=8) as (base, _):
        assert httpx.get(base + "/v1/model").json()["capacity"] == {
            "streams": 2, "samples_per_second": 16000.0, "source": "given (--capacity)", "admit": "realtime",
            "admit_limit": 2, "utilisation": 0.0}

        async def scenario():
            holders = [await connect(ws_url(base)) for _ in range(2)]
            for holder in holders:
                await holder.send(frames_bytes(mel[:, :2]))
            await asyncio.to_thread(wait_for, lambda: metric(base, "nvwavenet_active_streams") == 2)
            assert metric(base, "nvwavenet_utilisation") == 1.0
            async with connect(ws_url(base)) as websocket:
                await expect_close(websocket, 1013, r"at real-time capacity: 2 streams")
            response = await asyncio.to_thread(httpx.post, base + "/v1/vocode", content=npy_bytes(mel.numpy()))
            assert response.status_code == 503 and response.headers["retry-after"] == "1"
            assert "real-time capacity" in response.json()["detail"]
            for holder in holders:
                await holder.close()

        asyncio.run(scenario())
        wait_for(lambda: metric(base, "nvwavenet_active_streams") == 0)
        Client(base).vocode(mel.numpy())  # below capacity again: served


def test_capacity_is_measured_for_the_model_on_its_device(vocoder):
    capacity = measure_capacity(vocoder, chunk_frames=4, max_streams=4)
    assert 0 <= capacity.streams <= 4 and capacity.samples_per_second > 0
    assert capacity.streams == 0 or capacity.samples_per_second >= capacity.streams * 8000
    assert "measured at startup" in capacity.source


def test_token_auth_tls_and_docs(vocoder, tmp_path):
    token = "s3cret-token-0123456789"
    (tmp_path / "token").write_text(token + "\n")
    assert read_token(tmp_path / "token") == token
    (tmp_path / "short").write_text("abc")
    with pytest.raises(ValueError, match="16 or more characters"):
        read_token(tmp_path / "short")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(cert),
                    "-days", "1", "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"],
                   check=True, capture_output=True)
    mel = torch.randn(MELS, 9) - 2.0
    trust = ssl.create_default_context(cafile=str(cert))
    with running(vocoder, token=token, tls=(cert, key)) as (base, _):
        assert base.startswith("https://")
        assert httpx.get(base + "/healthz", verify=trust).status_code == 200  # a load balancer's probe
        response = httpx.get(base + "/v1/model", verify=trust)
        assert response.status_code == 401 and response.headers["www-authenticate"] == "Bearer"
        assert httpx.get(base + "/metrics", verify=trust, headers={"Authorization": "Bearer wrong"}).status_code == 401
        with pytest.raises(ServerError, match="401"):
            Client(base, verify=trust).vocode(mel.numpy())
        client = Client(base, token=token, verify=trust)
        assert np.array_equal(client.vocode(mel.numpy(), seed=2), vocoder(mel, seed=2).numpy())
        assert np.array_equal(np.concatenate(list(client.stream([mel], seed=2))), vocoder(mel, seed=2).numpy())
        with pytest.raises(ServerError, match="401: missing or wrong bearer token"):
            list(Client(base, verify=trust).stream([mel]))
        assert httpx.get(base + "/docs", verify=trust, headers={"Authorization": f"Bearer {token}"}).status_code == 404
    with running(vocoder, docs=True) as (base, _):
        assert httpx.get(base + "/openapi.json").status_code == 200


def test_startup_warns_when_listening_beyond_loopback_without_auth(vocoder):
    service = create_app(vocoder, ServeSettings(capacity=4)).state.service
    assert not any("NO AUTHENTICATION" in line for line in startup_lines(service, "127.0.0.1", "ckpt", False))
    assert not any("NO AUTHENTICATION" in line for line in startup_lines(service, "::1", "ckpt", False))
    assert any("NO AUTHENTICATION: listening on 0.0.0.0" in line
               for line in startup_lines(service, "0.0.0.0", "ckpt", False))
    service.token = "x" * 16
    assert not any("NO AUTHENTICATION" in line for line in startup_lines(service, "0.0.0.0", "ckpt", True))


# -- shutdown --------------------------------------------------------------------------------------

def _port_no_process_takes_meanwhile() -> int:
    """A free loopback port outside the ranges other processes take ports from on their own: the
    kernel's ephemeral range and Ray's worker ports (10002-19999). A port probed with bind(0) and
    handed to serve.start was taken first by one of the processes Ray starts (CI, 2026-12-06:
    "Failed to bind to address")."""
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as ports:
            ephemeral = range(*(int(bound) + add for bound, add in zip(ports.read().split(), (0, 1))))
    except OSError:
        ephemeral = range(32768, 61000)
    for port in random.Random().sample(range(20000, 32768), 500):
        if port in ephemeral:
            continue
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise AssertionError("no free loopback port in 20000-32767 outside the ephemeral range")


def test_sigterm_finishes_open_streams_refuses_new_ones_and_exits_0(vocoder, checkpoint):
    mel = torch.randn(MELS, 24) - 2.0
    # --admit all: the capacity measured at startup on a loaded machine must not refuse these streams.
    with serve_process(checkpoint, "--admit", "all", "--shutdown-grace", "10") as server:
        process, base = server.process, server.url

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
        assert process.wait(20) == 0, server.log()


def test_sigint_with_nothing_open_exits_0(checkpoint):
    with serve_process(checkpoint, "--admit", "all") as server:
        assert httpx.get(server.url + "/healthz").status_code == 200
        server.process.send_signal(signal.SIGINT)
        assert server.process.wait(20) == 0, server.log()


@pytest.mark.parametrize("args, message", [
    (["serve", "no-such-checkpoint"], r"no-such-checkpoint"),
    (["serve", "CKPT", "--max-streams", "0"], r"--max-streams: expected an integer >= 1, got 0"),
    (["serve", "CKPT", "--chunk-frames", "-1"], r"--chunk-frames: expected an integer >= 1"),
    (["serve", "CKPT", "--shutdown-grace", "nan"], r"--shutdown-grace: expected a finite number"),
    (["serve", "CKPT", "--header-timeout", "-1"], r"--header-timeout: expected a number of seconds >= 0"),
    (["serve", "CKPT", "--allow-origin", "app.example"], r"allow_origins \(--allow-origin\): expected origins such as https://app"),
    (["serve", "CKPT", "--token-file", "/no/such/token"], r"--token-file: cannot read /no/such/token"),
    (["vocode", "x.npy"], r"--checkpoint: required unless --server is given"),
    (["vocode", "x.npy", "--checkpoint", "CKPT", "--token-file", "t"], r"--token-file: a server's token, for --server"),
    (["vocode", "IN", "--server", "http://127.0.0.1:9"], r"http://127\.0\.0\.1:9: "),
    (["vocode", "IN", "--server", "ftp://x"], r"url: expected the server's http://host:port"),
], ids=["checkpoint", "max-streams", "chunk-frames", "grace", "header-timeout", "origin", "token file", "no checkpoint", "token without server", "no server",
    "bad url"])
def test_cli_errors(checkpoint, tmp_path, capsys, args, message):
    np.save(tmp_path / "in.npy", np.zeros((MELS, 3), dtype=np.float32))
    args = [str(checkpoint) if a == "CKPT" else str(tmp_path / "in.npy") if a == "IN" else a for a in args]
    assert cli.main(args + (["--out", str(tmp_path / "out")] if args[0] == "vocode" else [])) == 2
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1 and re.search(message, error), error


# -- Ray Serve -------------------------------------------------------------------------------------

def series(text: str, name: str) -> list[tuple[dict, float]]:
    """Every sample of ``name`` in a Prometheus text: (labels, value)."""
    found = []
    for labels, value in re.findall(rf"^{re.escape(name)}(?:{{(.*?)}})? (\S+)$", text, re.M):
        found.append((dict(re.findall(r'(\w+)="([^"]*)"', labels)), float(value)))
    return found


@pytest.mark.slow
def test_ray_serve_refuses_never_hangs_sums_metrics_drains_and_is_bit_exact(model, vocoder, checkpoint, tmp_path,
                                                                         monkeypatch):
    """The app as a Ray Serve deployment on a local Ray instance, 2 replicas of 4 slots at 1 and 2
    PyTorch threads: 20 streams at once are each served bit for bit or refused (1013/503), none
    hangs; /metrics sums over replicas; an oversize message is refused as standalone; deleting the
    application drains an open stream with 1001. About a minute on 2 cores; skipped without
    ``pip install "nvwavenet[ray]"``."""
    ray = pytest.importorskip("ray")
    from ray import serve

    from nvwavenet.ray_serve import build_app

    with pytest.raises(ValueError, match="unknown arguments \\['colour'\\]"):
        build_app({"checkpoint": str(checkpoint), "colour": "red"})
    with pytest.raises(ValueError, match="admit: expected realtime or all"):
        build_app({"checkpoint": str(checkpoint), "admit": "some"})
    with pytest.raises(ValueError, match="torch_threads: expected a positive integer or a comma list"):
        build_app({"checkpoint": str(checkpoint), "torch_threads": "1,x"})
    # Ray's workers put the driver's current directory first on sys.path: from a clone's root (as CI
    # runs pytest) the replicas would import the source tree, which has no build, instead of the
    # installed nvwavenet, and refuse to start (build_check's message, in Ray's controller log). So
    # the driver runs elsewhere, and the workers find the nvwavenet this test imported as a child
    # process would (build_check.python_env), installed or built in place.
    monkeypatch.chdir(tmp_path)
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": {"PYTHONPATH": build_check.python_env()["PYTHONPATH"]}})
    port = _port_no_process_takes_meanwhile()
    base = f"http://127.0.0.1:{port}"
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        serve.run(build_app({"checkpoint": str(checkpoint), "replicas": "2", "torch_threads": "1,2",
                             "max_streams": "4", "admit": "all", "capacity": "4", "chunk_frames": "3",
                             "max_pending_frames": "16", "shutdown_grace": "2"}), name="voc", route_prefix="/")
        client = Client(base, timeout=30)
        mels = [torch.randn(MELS, 9 + i % 4) - 2.0 for i in range(20)]

        async def one(seed):
            async def slowly():
                for start in range(0, mels[seed].shape[1], 4):
                    yield mels[seed][:, start:start + 4]
                    await asyncio.sleep(0.3)
            try:
                return np.concatenate([chunk async for chunk in client.astream(slowly(), seed=seed)])
            except ServerError as refused:
                return refused

        async def everyone():
            return await asyncio.gather(*(asyncio.wait_for(one(seed), 60) for seed in range(20)))

        results = asyncio.run(everyone())  # a hang would end in TimeoutError here
        served = {seed: audio for seed, audio in enumerate(results) if isinstance(audio, np.ndarray)}
        refused = [result for result in results if isinstance(result, ServerError)]
        assert len(served) + len(refused) == 20 and len(served) >= 2 and refused, results
        assert all(error.code in (1013, 503) for error in refused), refused
        text = httpx.get(base + "/metrics").text
        threads = series(text, "nvwavenet_torch_threads")
        assert sorted(value for _, value in threads) == [1.0, 2.0], threads  # two replicas, labelled apart
        assert len({labels["replica"] for labels, _ in threads}) == 2
        wait_for(lambda: sum(v for labels, v in series(httpx.get(base + "/metrics").text, "nvwavenet_streams_total")
                             if labels["outcome"] == "finished") == len(served), 10, "every replica's count")
        mismatched = [seed for seed, audio in served.items()
                      if not np.array_equal(audio, vocoder(mels[seed], seed=seed).numpy())]
        if mismatched and torch.get_num_threads() != 1:
            # Conditioning on the CPU varies with PyTorch's thread count until issue 27's
            # thread-invariant conditioning lands; at one thread every stream must already match.
            pytest.xfail(f"issue 27: streams {mismatched} differ from Vocoder alone at another thread count")
        assert not mismatched

        async def limits_and_drain():
            async with connect(ws_url(base), max_size=None) as websocket:  # Ray's proxy passes 16 MiB
                await websocket.send(frames_bytes(np.zeros((MELS, 17))))
                await expect_close(websocket, 1009, r"at most 16 frames a message")
            async with connect(ws_url(base)) as websocket:
                await websocket.send(frames_bytes(mels[0][:, :2]))
                assert isinstance(await asyncio.wait_for(websocket.recv(), 10), bytes)
                deleting = asyncio.create_task(asyncio.to_thread(serve.delete, "voc"))
                await expect_close(websocket, 1001, r"did not end within the 2 s grace period", seconds=30)
                await deleting

        asyncio.run(limits_and_drain())
    finally:
        serve.shutdown()
        ray.shutdown()
