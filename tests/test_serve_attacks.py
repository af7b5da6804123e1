"""``nvwavenet serve`` attacked as a hostile client would, over loopback, on a real server process
(``python -m nvwavenet serve`` with httptools installed, which uvicorn would pick on its own): stalled
uploads, silent sockets, an endless request line, abandoned POSTs, cross-site handshakes and POSTs,
slot hogs. Each attack is bounded (tens of sockets, seconds), and after each the server's memory
has stayed bounded, ``/healthz`` answers within 3 s, and the attacker got the documented status.
"""
from __future__ import annotations

import asyncio
import contextlib
import io
import os
import re
import socket
import threading
import time

import numpy as np
import pytest
import torch

pytest.importorskip("fastapi")
pytest.importorskip("websockets")
import httpx  # noqa: E402
from websockets.asyncio.client import connect  # noqa: E402
from websockets.exceptions import InvalidStatus  # noqa: E402

from nvwavenet.audio import AudioConfig  # noqa: E402
from nvwavenet.checkpoint import save_model  # noqa: E402
from nvwavenet.client import Client  # noqa: E402
from nvwavenet.model import WaveNet  # noqa: E402
from nvwavenet.testing import serve_process  # noqa: E402
from test_serve import MEL, MELS, WAVENET_CONFIG, expect_close, frames_bytes, metric, wait_for  # noqa: E402

SLOTS, MAX_CONNECTIONS, HEADER_TIMEOUT, BODY_TIMEOUT, IDLE_TIMEOUT = 8, 120, 1.0, 2.0, 1.5
REQUEST_FRAMES = 80000  # a body of up to 8 * MELS * REQUEST_FRAMES + 4096 bytes (6.4 MB) is allowed
ALLOWED = "https://app.example"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """(process, base URL, log lines): one server for every attack, each attack leaving it idle."""
    torch.manual_seed(0)
    checkpoint = save_model(tmp_path_factory.mktemp("attacks") / "ckpt", WaveNet(**WAVENET_CONFIG).eval(),
                            AudioConfig(8000, 64, MEL))
    with serve_process(
            checkpoint, "--max-streams", str(SLOTS), "--admit", "all", "--capacity", str(SLOTS),
            "--max-request-frames", str(REQUEST_FRAMES), "--max-connections", str(MAX_CONNECTIONS),
            "--header-timeout", str(HEADER_TIMEOUT), "--body-timeout", str(BODY_TIMEOUT),
            "--idle-timeout", str(IDLE_TIMEOUT), "--allow-origin", ALLOWED, "--shutdown-grace", "0") as served:
        yield served.process, served.url, served.lines
    log = served.log()
    assert "Traceback" not in log and "ClientDisconnect" not in log, log[-3000:]


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as status:
        return next(int(line.split()[1]) / 1024 for line in status if line.startswith("VmRSS:"))


def port(base: str) -> int:
    return int(base.rsplit(":", 1)[1])


def healthy_within(base: str, seconds: float = 3.0) -> None:
    """/healthz answers 200 within ``seconds`` (retrying a connection refused at the cap)."""
    deadline = time.monotonic() + seconds
    while True:
        try:
            if httpx.get(base + "/healthz", timeout=max(0.1, deadline - time.monotonic())).status_code == 200:
                return
        except httpx.TransportError:
            pass
        assert time.monotonic() < deadline, f"/healthz did not answer within {seconds} s"
        time.sleep(0.05)


def idle(base: str) -> None:
    wait_for(lambda: metric(base, "nvwavenet_active_streams") == 0, 10, "every slot free")


def raw(base: str) -> socket.socket:
    return socket.create_connection(("127.0.0.1", port(base)), timeout=10)


def read_status(sock: socket.socket) -> int | None:
    """The HTTP status the server answered on ``sock``, or None if it closed without one."""
    data = b""
    with contextlib.suppress(OSError):
        while b"\r\n" not in data and (piece := sock.recv(4096)):
            data += piece
    found = re.match(rb"HTTP/1\.1 (\d+)", data)
    return int(found.group(1)) if found else None


def test_startup_names_the_checkpoint_and_every_limit(server):
    _, _, lines = server
    text = "".join(lines)
    assert re.search(r"checkpoint .*ckpt: R8/S16/A64 L4", text), text
    for option in ("--max-connections 120", "--header-timeout 1", "--body-timeout 2", "--idle-timeout 1.5",
                   "--max-streams 8", "--max-request-frames 80000", "--max-header-bytes 16384"):
        assert option in text, option
    assert "origins https://app.example allowed; docs off; auth none; TLS off" in text


def test_stalled_uploads_hold_no_more_than_their_slots(server):
    """40 POSTs that send 5 MB of a 6 MB body and stall (the body read first, 40 of them held 200 MB):
    8 take the slots (a bounded body each), 32 are refused before a byte of their body is read;
    the 8 get 408 after --body-timeout."""
    process, base, _ = server
    before = rss_mb(process.pid)
    size = 6 * 2**20
    head = (f"POST /v1/vocode HTTP/1.1\r\nHost: x\r\nContent-Length: {size}\r\n\r\n").encode()
    part = b"\x93NUMPY" + b"\0" * (5 * 2**20)
    socks = [raw(base) for _ in range(40)]

    def upload(sock):
        with contextlib.suppress(OSError):  # a refused upload's connection is closed under it
            sock.sendall(head + part)

    threads = [threading.Thread(target=upload, args=(sock,)) for sock in socks]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(20)
    healthy_within(base)
    grown = rss_mb(process.pid) - before
    statuses = [read_status(sock) for sock in socks]
    for sock in socks:
        sock.close()
    assert grown < 100, f"server RSS grew {grown:.0f} MB"
    assert statuses.count(503) == 40 - SLOTS and statuses.count(408) == SLOTS, statuses
    idle(base)
    assert metric(base, 'nvwavenet_streams_total{outcome="timeout"}') >= SLOTS
    healthy_within(base)


def test_silent_sockets_are_capped_and_closed(server):
    """More sockets than --max-connections that send nothing: those over the cap are answered 503
    at once, the rest closed after --header-timeout; the process never holds more descriptors
    than the cap allows."""
    process, base, _ = server
    socks = [raw(base) for _ in range(MAX_CONNECTIONS + 40)]
    fds = len(os.listdir(f"/proc/{process.pid}/fd"))
    started = time.monotonic()
    statuses = [read_status(sock) for sock in socks]  # 503, or closed without a word at the deadline
    elapsed = time.monotonic() - started
    for sock in socks:
        sock.close()
    assert statuses.count(503) >= 40 and set(statuses) <= {503, None}, statuses
    assert elapsed < HEADER_TIMEOUT + 3, f"silent sockets were held {elapsed:.1f} s"
    assert fds < MAX_CONNECTIONS + 64, fds
    healthy_within(base)
    assert metric(base, "nvwavenet_refused_connections_total") >= 40


def test_an_endless_request_line_is_cut_off(server):
    """httptools (installed here, as ray installs it) bounds no request line; the server pins h11,
    which answers 400 past --max-header-bytes."""
    pytest.importorskip("httptools")
    process, base, _ = server
    before = rss_mb(process.pid)

    def endless() -> int:
        sock, sent = raw(base), 0
        sock.sendall(b"GET /")
        with contextlib.suppress(OSError):
            while sent < 200 * 2**20:
                sent += sock.send(b"a" * 65536)
        sock.close()
        return sent

    sent = [0, 0]
    threads = [threading.Thread(target=lambda i=i: sent.__setitem__(i, endless())) for i in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert max(sent) < 16 * 2**20, f"the server read {max(sent)} bytes of one request line"
    assert rss_mb(process.pid) - before < 100
    healthy_within(base)


def test_an_abandoned_post_frees_its_slot_at_the_next_turn(server):
    process, base, _ = server
    idle(base)
    body = io.BytesIO()
    np.save(body, np.random.default_rng(0).standard_normal((MELS, 20000)).astype(np.float32) - 2)
    sock = raw(base)
    sock.sendall(f"POST /v1/vocode HTTP/1.1\r\nHost: x\r\nContent-Length: {len(body.getvalue())}\r\n\r\n".encode()
                 + body.getvalue())
    wait_for(lambda: metric(base, "nvwavenet_samples_total") > 0, 10, "generation started")
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\1\0\0\0\0\0\0\0")  # a reset, as a crash gives
    sock.close()
    started = time.monotonic()
    idle(base)
    assert time.monotonic() - started < 2
    generated = metric(base, "nvwavenet_samples_total")
    time.sleep(0.5)
    assert metric(base, "nvwavenet_samples_total") == generated, "the abandoned request went on"
    assert generated < 20000 * 32
    assert metric(base, 'nvwavenet_streams_total{outcome="disconnected"}') == 1
    healthy_within(base)


def test_cross_site_requests_are_refused(server):
    _, base, _ = server
    mel = torch.randn(MELS, 6) - 2.0
    body = io.BytesIO()
    np.save(body, mel.numpy())

    async def handshakes():
        with pytest.raises(InvalidStatus) as refused:
            async with connect(base.replace("http", "ws") + "/v1/stream", origin="http://evil.example"):
                pass
        assert refused.value.response.status_code == 403
        async with connect(base.replace("http", "ws") + "/v1/stream", origin=ALLOWED) as websocket:
            await websocket.send(frames_bytes(mel))
            await websocket.send('{"type": "end"}')
            await expect_close(websocket, 1000, "utterance complete")

    asyncio.run(handshakes())
    # A page's form or fetch "simple request": text/plain needs no CORS preflight.
    response = httpx.post(base + "/v1/vocode", content=body.getvalue(),
                          headers={"Origin": "http://evil.example", "Content-Type": "text/plain"})
    assert response.status_code == 403 and "cross-site request" in response.json()["detail"]
    assert httpx.post(base + "/v1/vocode", content=body.getvalue(), headers={"Origin": ALLOWED}).status_code == 200
    assert httpx.post(base + "/v1/vocode", content=body.getvalue()).status_code == 200  # no Origin: not a browser
    assert metric(base, 'nvwavenet_streams_total{outcome="refused_origin"}') == 2
    healthy_within(base)


def test_slot_hogs_are_closed_after_the_idle_timeout(server):
    """Every slot taken by clients that send a frame and then nothing: each closed with 4408 after
    --idle-timeout, and a new client is served."""
    _, base, _ = server
    idle(base)
    mel = torch.randn(MELS, 8) - 2.0

    async def scenario():
        hogs = [await connect(base.replace("http", "ws") + "/v1/stream") for _ in range(SLOTS)]
        for hog in hogs:
            await hog.send(frames_bytes(mel[:, :1]))
        await asyncio.to_thread(wait_for, lambda: metric(base, "nvwavenet_active_streams") == SLOTS)
        started = time.monotonic()
        await asyncio.gather(*(expect_close(hog, 4408, r"no message for 1\.5 s", seconds=10) for hog in hogs))
        assert time.monotonic() - started < IDLE_TIMEOUT + 3
        audio = [chunk async for chunk in Client(base).astream([mel])]
        assert sum(chunk.shape[0] for chunk in audio) == 8 * 32

    asyncio.run(scenario())
    healthy_within(base)
