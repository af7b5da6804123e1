"""``nvwavenet serve``: a streaming vocoder server (FastAPI on uvicorn) over a :class:`~nvwavenet.scheduler.Scheduler`.

Every connected stream is batched into one engine call per turn, and each stream's audio is bit
for bit what :class:`~nvwavenet.vocoder.Vocoder` gives for its mel and seed alone.

Endpoints
---------
``WS /v1/stream?seed=S&format=F&n_mels=M``
    One utterance per connection. ``seed``: the sampling seed (an integer, default 0), as
    ``Vocoder(mel, seed=S)`` takes it; ``format``: ``pcm16`` (little-endian int16, the default)
    or ``float32`` (little-endian, in [-1, 1]) for the audio sent back; ``n_mels``: the bands
    of the frames the client sends (checked against the model's; recommended, since binary
    frames do not carry their width).

    Client to server: binary messages of mel frames, float32 little-endian, frame after frame
    (``mel.T`` of a ``(n_mels, frames)`` mel, C order): a multiple of ``4 * n_mels`` bytes, any
    number of frames up to ``max_pending_frames``; then the text message ``{"type": "end"}``.
    Server to client: binary audio messages as soon as they are generated (``hop`` samples per
    frame, in order), then the text message ``{"type": "end", "frames": F, "samples": N}`` and
    a close with code 1000. A client sending faster than the engine vocodes is slowed down (the
    server stops reading until its queue has room); one that stops reading stalls only itself.

``POST /v1/vocode?seed=S&format=F``
    Body: a ``.npy`` float array ``(n_mels, frames)``. Response: a WAV (``pcm16`` or ``float32``).

``GET /v1/model``: the model's sizes, sample rate, hop, mel bands, audio config (its mel front
end, so that a client can compute mels from audio as ``Vocoder`` does), the server's limits, and
its real-time capacity (streams, samples/s, how it was found, the admission policy, utilisation).
``GET /healthz``: 200 ``{"status": "ok"}``, 503 ``{"status": "shutting down"}`` while draining.
``GET /metrics``: Prometheus text: active streams, samples generated and samples/s, queued mel
frames and audio chunks, streams per engine call, first-audio latency, streams by outcome
(``finished``, ``bad_input``, ``timeout``, ``disconnected``, ``error``, ``shutdown``,
``refused_full``, ``refused_shutdown``, ``refused_origin``, ``refused_auth``), connections refused
over ``--max-connections``, the capacity and utilisation (active / capacity streams).

Admission
---------
Under ``--admit realtime`` (the default) a stream is admitted only while fewer than the server's
real-time capacity are active (measured at startup for the model on its device, or
``--capacity``; at least one); under ``--admit all`` up to ``--max-streams``, each stream slower
as more join. A stream beyond either is refused at once: 1013, or 503 with ``Retry-After``.

Before any work
---------------
At most ``--max-connections`` connections are open (more are answered 503 and closed); a
request's line and headers must arrive within ``--header-timeout`` seconds and hold at most
``--max-header-bytes`` (uvicorn's h11 parser, pinned: httptools bounds no request line). A
``POST`` takes its stream slot before its body is read (so that no more bodies than slots are ever
held, each at most the largest allowed request), and the body must arrive within
``--body-timeout``. A ``POST`` whose client goes away is cancelled and frees its slot at the next
engine turn. Cross-site requests (an ``Origin`` not given with ``--allow-origin``) get 403, and
with ``--token-file`` every route but ``/healthz`` needs ``Authorization: Bearer TOKEN`` (401
otherwise); a WebSocket refused so gets that HTTP status at its handshake.

WebSocket close codes
---------------------
==== ======================================================================================
1000 the utterance is complete (after the ``end`` message)
1001 the server is shutting down: refused at connection, or cut after the shutdown grace period
1009 a message larger than ``max_pending_frames`` frames
1011 the engine failed on this stream's batch
1013 all ``--max-streams`` slots are in use, or the real-time capacity is reached: try again later
4400 a bad request: a bad query value (``n_mels`` other than the model's among them), a binary
     message that is not whole float32 frames, NaN or infinity, a text message other than ``end``
4408 the client read no audio for ``send_timeout`` seconds, or sent nothing for ``idle_timeout``
==== ======================================================================================

HTTP statuses of ``POST /v1/vocode``: 200 WAV; 400 not a float ``(n_mels, frames)`` ``.npy`` (a
header declaring more data than the body holds among them), NaN/inf or a bad query value; 401
no or a wrong bearer token; 403 a cross-site request; 408 the body did not arrive within
``--body-timeout``; 413 more than ``max_request_frames`` frames (or a body that large); 500 the
engine failed; 503 all slots in use, at real-time capacity, shutting down (with ``Retry-After``),
or ``--max-connections`` open. Every error body is ``{"detail": message}``. Each close reason and
error message says what was wrong. One log line per stream records its id, frames, samples,
outcome, close code or status, and duration; logged URLs and reasons are cut to 200 characters.
"""
from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import io
import hmac
import ipaddress
import json
import logging
import math
import numbers
import re
import resource
import signal
import statistics
import time
from collections import deque

import numpy as np
import torch
import uvicorn
from fastapi import FastAPI, Request, WebSocket
from fastapi.responses import JSONResponse, Response
from prometheus_client import (CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram,
                               disable_created_metrics, generate_latest)
from starlette.requests import ClientDisconnect
from starlette.websockets import WebSocketDisconnect

from .audio import to_pcm, write_wav
from .mel import load_mel_npy, read_npy_header
from .scheduler import Scheduler, SchedulerClosed, SchedulerFull
from .validation import check_int
from .vocoder import Vocoder

__all__ = ["ServeSettings", "Capacity", "measure_capacity", "create_app", "serve", "uvicorn_config", "CLOSE_CODES",
           "read_token"]

CLOSE_NORMAL, CLOSE_GOING_AWAY, CLOSE_TOO_BIG, CLOSE_ERROR, CLOSE_TRY_LATER = 1000, 1001, 1009, 1011, 1013
CLOSE_BAD_REQUEST, CLOSE_TIMEOUT = 4400, 4408
CLOSE_CODES = {CLOSE_NORMAL: "utterance complete", CLOSE_GOING_AWAY: "server shutting down",
               CLOSE_TOO_BIG: "message too big", CLOSE_ERROR: "engine error",
               CLOSE_TRY_LATER: "all stream slots in use, or at real-time capacity",
               CLOSE_BAD_REQUEST: "bad request",
               CLOSE_TIMEOUT: "client timed out"}
FORMATS = {"pcm16": "int16", "float32": "float32"}  # wire name: write_wav/to_pcm sample format
# A close may itself wait on a client that does not read: it gets this long, then the socket goes.
CLOSE_WAIT_SECONDS = 2.0
ADMIT_POLICIES = ("realtime", "all")
# Logged strings (a URL with a 5,000-digit seed, a client's reason) are cut to this many characters.
LOG_CHARS = 200
# File descriptors the process needs besides its connections (the checkpoint, the log, PyTorch's).
SPARE_FDS = 64
log = logging.getLogger("uvicorn.error.nvwavenet")


@dataclasses.dataclass(frozen=True)
class ServeSettings:
    """The server's limits (each one an option of ``nvwavenet serve``, shown in its ``--help``).

    Streams: ``max_streams`` slots; ``chunk_frames`` frames at most per engine call (latency
    against batching); ``max_pending_frames`` mel frames queued per stream (also the largest
    message); ``max_ready_chunks`` audio chunks generated per stream and not yet sent;
    ``max_request_frames`` frames of one ``POST`` at most. Admission: ``admit`` ``"realtime"`` takes
    a new stream only while the ``capacity`` (streams served in real time at once, measured at
    startup unless given) is not reached, ``"all"`` up to ``max_streams``. Connections:
    ``max_connections`` open at once (more are answered 503 and closed); ``max_header_bytes`` of a
    request line and headers. Timeouts in seconds (0: none): ``header_timeout`` for a request's
    line and headers; ``body_timeout`` for a ``POST`` body, counted once its slot is granted;
    ``send_timeout`` for a client to read audio; ``idle_timeout`` for a streaming client to send
    anything; ``shutdown_grace`` for open streams once shutdown starts. Cross-site requests:
    ``allow_origins``, the browser origins (``https://app.example``) whose pages may use the
    server (a request without an ``Origin`` header, i.e. not from a browser, is served); ``docs``
    serves ``/docs``, ``/redoc`` and ``/openapi.json``."""

    max_streams: int = 64
    chunk_frames: int = 4
    max_pending_frames: int = 256
    max_ready_chunks: int = 4
    max_request_frames: int = 20000
    admit: str = "realtime"
    capacity: int | None = None
    max_connections: int = 512
    max_header_bytes: int = 16384
    header_timeout: float = 10.0
    body_timeout: float = 30.0
    send_timeout: float = 30.0
    idle_timeout: float = 60.0
    shutdown_grace: float = 10.0
    allow_origins: tuple[str, ...] = ()
    docs: bool = False

    def __post_init__(self):
        for name in ("max_streams", "chunk_frames", "max_pending_frames", "max_ready_chunks", "max_request_frames",
                     "max_connections", "max_header_bytes"):
            check_int(name, getattr(self, name))
        if self.capacity is not None:
            check_int("capacity", self.capacity)
        for name in ("header_timeout", "body_timeout", "send_timeout", "idle_timeout", "shutdown_grace"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, numbers.Real) or not 0 <= value < float("inf"):
                raise ValueError(f"{name}: expected a finite number of seconds >= 0, got {value!r}")
        if self.admit not in ADMIT_POLICIES:
            raise ValueError(f"admit: expected {' or '.join(ADMIT_POLICIES)}, got {self.admit!r}")
        if isinstance(self.allow_origins, str) or not all(isinstance(o, str) for o in self.allow_origins):
            raise TypeError(f"allow_origins: expected a tuple of origins such as 'https://app.example', "
                            f"got {self.allow_origins!r}")
        origins = tuple(o.rstrip("/") for o in self.allow_origins)
        for origin in origins:  # what a browser sends: scheme://host[:port], or "null" (file://, sandboxes)
            if origin != "null" and not re.fullmatch(r"https?://[^/\s?#]+", origin):
                raise ValueError(f"allow_origins (--allow-origin): expected origins such as https://app.example or "
                                 f"http://localhost:3000, got {origin!r}")
        object.__setattr__(self, "allow_origins", origins)


class _Close(Exception):
    """End the connection with this WebSocket close code and reason."""

    def __init__(self, code: int, reason: str):
        super().__init__(reason)
        self.code, self.reason = code, reason[:120]  # a close reason holds at most 123 bytes


@dataclasses.dataclass(frozen=True)
class Capacity:
    """How many streams the loaded model serves in real time at once on its device: ``streams``,
    the engine's ``samples_per_second`` at that batch, and ``source`` (how it was found)."""

    streams: int
    samples_per_second: float
    source: str


TURNS, TURN_SECONDS = 16, 0.3  # the most turns timed per batch, and the time that is enough


def measure_capacity(vocoder: Vocoder, chunk_frames: int, max_streams: int, budget_seconds: float = 5.0) -> Capacity:
    """Real-time capacity, measured briefly: ``Vocoder.stream`` (the conditioning and engine call of
    one scheduler turn) at batches 1, 2, 4, ... of ``chunk_frames``-frame chunks, until a batch no
    longer keeps up with real time, ``max_streams`` is reached or ``budget_seconds`` are spent. The
    capacity is the largest batch that kept up, or, past it, the streams the first slower batch's
    rate covers in real time (it is at least the last batch that kept up)."""
    sample_rate, hop, n_mels = vocoder.sample_rate, vocoder.hop_length, vocoder.audio_config.mel.n_mels
    generator = torch.Generator().manual_seed(0)
    started, streams, rate, batch = time.monotonic(), 0, 0.0, 1
    while True:
        mel = torch.randn(batch, n_mels, (TURNS + 1) * chunk_frames, generator=generator) - 5.0
        chunks = iter(vocoder.stream(torch.split(mel, chunk_frames, dim=2)))
        next(chunks)  # the first call warms caches and plans up
        times, begin = [], time.perf_counter()
        for _ in chunks:  # a few turns (enough to span TURN_SECONDS), their median: a loaded machine has spikes
            if vocoder.device.type == "cuda":
                torch.cuda.synchronize(vocoder.device)
            times.append(time.perf_counter() - begin)
            begin += times[-1]
            if sum(times) > TURN_SECONDS and len(times) >= 3:
                break
        batch_rate = batch * chunk_frames * hop / statistics.median(times)
        if batch_rate < batch * sample_rate:  # this batch is slower than real time
            covered = int(batch_rate // sample_rate)  # < batch
            if covered > streams or not streams:
                streams, rate = covered, batch_rate
            break
        streams, rate = batch, batch_rate
        if batch >= max_streams or time.monotonic() - started > budget_seconds:
            break
        batch = min(2 * batch, max_streams)
    return Capacity(min(streams, max_streams), rate,
                    f"measured at startup in {time.monotonic() - started:.1f} s (batches up to {batch}, "
                    f"{chunk_frames}-frame chunks)")


class _Metrics:
    def __init__(self, scheduler: Scheduler, capacity: Capacity):
        self.registry = registry = CollectorRegistry()
        Gauge("nvwavenet_active_streams", "Streams holding a slot", registry=registry).set_function(
            lambda: scheduler.active)
        Gauge("nvwavenet_queued_frames", "Mel frames received and not yet vocoded, all streams",
              registry=registry).set_function(lambda: scheduler.queue_depths()[0])
        Gauge("nvwavenet_queued_audio_chunks", "Audio chunks generated and not yet sent, all streams",
              registry=registry).set_function(lambda: scheduler.queue_depths()[1])
        Gauge("nvwavenet_max_streams", "Stream slots (--max-streams)", registry=registry).set(scheduler.max_streams)
        Gauge("nvwavenet_torch_threads", "PyTorch's threads in this process (the conditioning's)",
              registry=registry).set_function(torch.get_num_threads)
        Gauge("nvwavenet_capacity_streams", "Streams the model serves in real time at once on this device",
              registry=registry).set(capacity.streams)
        Gauge("nvwavenet_capacity_samples_per_second", "The engine's samples/s at the capacity's batch",
              registry=registry).set(capacity.samples_per_second)
        Gauge("nvwavenet_utilisation", "Active streams / real-time capacity streams (above 1: oversubscribed)",
              registry=registry).set_function(lambda: scheduler.active / max(capacity.streams, 1))
        self.refused_connections = Counter("nvwavenet_refused_connections",
                                           "Connections closed at once: --max-connections were open", registry=registry)
        seconds = Gauge("nvwavenet_scheduler_seconds", "Seconds the engine loop spent, summed: in turns, in engine "
                        "calls, in conditioning (the rest of a turn is host overhead)", ["part"], registry=registry)
        for part in scheduler.seconds:
            seconds.labels(part).set_function(lambda part=part: scheduler.seconds[part])
        self.samples = Counter("nvwavenet_samples", "Audio samples generated", registry=registry)
        Gauge("nvwavenet_samples_per_second", "Samples generated per second over the last 10 s",
              registry=registry).set_function(self._rate)
        self.batch = Histogram("nvwavenet_batch_streams", "Streams per engine call", registry=registry,
                               buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512))
        self.first_audio = Histogram("nvwavenet_first_audio_seconds",
                                     "From a stream's first mel frame received to its first audio sent",
                                     registry=registry,
                                     buckets=(0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 1, 2.5, 5))
        self.outcomes = Counter("nvwavenet_streams", "Streams and one-shot requests by outcome", ["outcome"],
                                registry=registry)
        self._recent: deque[tuple[float, int]] = deque()
        scheduler.on_turn = self._on_turn

    WINDOW = 10.0

    def _on_turn(self, streams: int, samples: int) -> None:
        self.samples.inc(samples)
        self.batch.observe(streams)
        now = time.monotonic()
        self._recent.append((now, samples))
        while self._recent and self._recent[0][0] < now - self.WINDOW:
            self._recent.popleft()

    def _rate(self) -> float:
        now = time.monotonic()
        return sum(samples for at, samples in list(self._recent) if at >= now - self.WINDOW) / self.WINDOW


class _Service:
    """The app's state: the scheduler, its metrics, its capacity, and whether shutdown has begun."""

    def __init__(self, vocoder: Vocoder, settings: ServeSettings, token: str | None = None):
        self.vocoder, self.settings, self.token = vocoder, settings, token
        self.scheduler = Scheduler(vocoder, max_streams=settings.max_streams, chunk_frames=settings.chunk_frames,
                                   max_pending_frames=settings.max_pending_frames,
                                   max_ready_chunks=settings.max_ready_chunks)
        if settings.capacity is not None:
            rate = settings.capacity * vocoder.sample_rate
            self.capacity = Capacity(settings.capacity, float(rate), "given (--capacity)")
        else:
            self.capacity = measure_capacity(vocoder, settings.chunk_frames, settings.max_streams)
        self.metrics = _Metrics(self.scheduler, self.capacity)
        self.n_mels = vocoder.audio_config.mel.n_mels

    async def exposition(self) -> bytes:
        """The body of ``/metrics`` (a Ray Serve replica puts every replica's series in it)."""
        return generate_latest(self.metrics.registry)

    @property
    def admit_limit(self) -> int:
        """Streams admitted at once: the real-time capacity under ``admit="realtime"`` (at least one:
        a model slower than real time still serves one stream at a time), else ``max_streams``."""
        if self.settings.admit == "realtime":
            return max(1, min(self.capacity.streams, self.settings.max_streams))
        return self.settings.max_streams

    def open_stream(self, seed: int, wake):
        """A scheduler stream, or SchedulerFull (at capacity under ``admit="realtime"``, or every
        slot taken) or SchedulerClosed."""
        at_capacity = self.admit_limit < self.settings.max_streams and self.scheduler.active >= self.admit_limit
        if at_capacity and not self.scheduler.closing:  # while closing, open() refuses with that reason
            raise SchedulerFull(f"at real-time capacity: {self.admit_limit} streams at once (the model serves "
                                f"{self.capacity.streams} in real time on this device; --admit realtime); try again later")
        return self.scheduler.open(seed, wake)

    @property
    def draining(self) -> bool:
        return self.scheduler.closing

    async def drain(self) -> None:
        """Stop taking streams; give the open ones ``shutdown_grace`` seconds to finish, then close
        the rest (their clients get 1001 and the reason)."""
        self.scheduler.close()
        deadline = time.monotonic() + self.settings.shutdown_grace
        while self.scheduler.active and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        for stream in self.scheduler.streams():
            stream.cancel(f"server shutting down: the stream did not end within the {self.settings.shutdown_grace:g} s "
                          "grace period")
            stream._wake()

    def model_info(self) -> dict:
        vocoder, net = self.vocoder, self.vocoder.net
        return {"sample_rate": vocoder.sample_rate, "hop_length": vocoder.hop_length, "n_mels": self.n_mels,
                "quantization_channels": vocoder.audio_config.quantization_channels,
                "model": vocoder.config, "R": net.R, "S": net.S, "A": net.A, "layers": net.num_layers,
                "receptive_field": net.receptive_field, "device": str(vocoder.device), "dtype": str(net.dtype),
                "audio_config": vocoder.audio_config.to_dict(),
                "limits": dataclasses.asdict(self.settings), "formats": list(FORMATS),
                "capacity": {**dataclasses.asdict(self.capacity), "admit": self.settings.admit,
                             "admit_limit": self.admit_limit,
                             "utilisation": self.scheduler.active / max(self.capacity.streams, 1)},
                "close_codes": {str(code): meaning for code, meaning in CLOSE_CODES.items()}}


def _query(params, name: str, default, parse, expected: str):
    raw = params.get(name)
    if raw is None:
        return default
    try:
        return parse(raw)
    except (ValueError, KeyError):
        raise ValueError(f"{name}: expected {expected}, got {raw!r}") from None


def _stream_options(params) -> tuple[int, str]:
    seed = _query(params, "seed", 0, int, "an integer")
    if not -2**63 <= seed < 2**64:
        raise ValueError(f"seed: expected an integer in [-2^63, 2^64), got {seed}")
    sample_format = _query(params, "format", "pcm16", lambda f: (f, FORMATS[f])[0], " or ".join(FORMATS))
    return seed, sample_format


def _frames_from_bytes(data: bytes, n_mels: int) -> torch.Tensor:
    """A binary message as mel frames ``(n_mels, k)``, or a ValueError saying what it is instead."""
    frame_bytes = 4 * n_mels
    if not data or len(data) % frame_bytes:
        raise ValueError(f"binary message of {len(data)} bytes: expected whole frames of {n_mels} float32 mel bands "
                         f"({frame_bytes} bytes each)")
    return torch.from_numpy(np.frombuffer(data, dtype="<f4").astype(np.float32).reshape(-1, n_mels).T)


def _encode(chunk: torch.Tensor, sample_format: str) -> bytes:
    return to_pcm(chunk.numpy(), FORMATS[sample_format]).astype(f"<{'i2' if sample_format == 'pcm16' else 'f4'}").tobytes()


async def _close(websocket: WebSocket, code: int, reason: str) -> None:
    try:
        await asyncio.wait_for(websocket.close(code, reason[:120]), CLOSE_WAIT_SECONDS)
    except (asyncio.TimeoutError, RuntimeError, OSError, WebSocketDisconnect):
        pass  # already gone, or not reading: uvicorn drops the socket when the handler returns


def _waker(loop: asyncio.AbstractEventLoop, *events: asyncio.Event):
    def wake() -> None:  # from the engine thread
        for event in events:
            try:
                loop.call_soon_threadsafe(event.set)
            except RuntimeError:  # the loop has closed: nobody is waiting any more
                pass
    return wake


async def _stream_session(service: _Service, websocket: WebSocket) -> None:
    settings, metrics = service.settings, service.metrics
    try:
        await websocket.accept()
    except (RuntimeError, WebSocketDisconnect, OSError):  # the client left during the handshake
        metrics.outcomes.labels("disconnected").inc()
        return
    try:
        seed, sample_format = _stream_options(websocket.query_params)
        # Frames carry no width of their own: a client sending 64 bands to an 80-band model would
        # have every 5 of its frames read as 4. It says what it sends, and is refused if that is wrong.
        n_mels = _query(websocket.query_params, "n_mels", service.n_mels, int, "an integer")
        if n_mels != service.n_mels:
            raise ValueError(f"n_mels: the model takes mel frames of {service.n_mels} bands, the client sends {n_mels}")
    except ValueError as error:
        metrics.outcomes.labels("bad_input").inc()
        return await _close(websocket, CLOSE_BAD_REQUEST, str(error))
    audio_ready, room = asyncio.Event(), asyncio.Event()
    try:
        stream = service.open_stream(seed, _waker(asyncio.get_running_loop(), audio_ready, room))
    except SchedulerClosed as error:
        metrics.outcomes.labels("refused_shutdown").inc()
        return await _close(websocket, CLOSE_GOING_AWAY, str(error))
    except SchedulerFull as error:
        metrics.outcomes.labels("refused_full").inc()
        return await _close(websocket, CLOSE_TRY_LATER, str(error))
    first_frame_at: list[float] = []

    async def receive() -> str:
        while True:
            try:
                message = await asyncio.wait_for(websocket.receive(), settings.idle_timeout or None)
            except asyncio.TimeoutError:
                raise _Close(CLOSE_TIMEOUT, f"no message for {settings.idle_timeout:g} s (idle_timeout)") from None
            if message["type"] == "websocket.disconnect":
                return "disconnected"
            if message.get("bytes") is not None:
                data = message["bytes"]
                if len(data) > 4 * service.n_mels * settings.max_pending_frames:
                    raise _Close(CLOSE_TOO_BIG, f"message of {len(data)} bytes: at most {settings.max_pending_frames} "
                                                "frames a message")
                try:
                    frames = _frames_from_bytes(data, service.n_mels)
                except ValueError as error:
                    raise _Close(CLOSE_BAD_REQUEST, str(error)) from None
                while stream.room < frames.shape[1] and not stream.closed:  # backpressure: stop reading
                    room.clear()
                    if stream.room < frames.shape[1] and not stream.closed:
                        await room.wait()
                if stream.closed:
                    return "closed"
                try:
                    stream.put(frames)
                except (ValueError, TypeError) as error:
                    raise _Close(CLOSE_BAD_REQUEST, str(error)) from None
                except RuntimeError:  # closed meanwhile (shutdown): the sender says why
                    return "closed"
                if not first_frame_at:
                    first_frame_at.append(time.monotonic())
            else:
                text = message.get("text") or ""
                try:
                    is_end = json.loads(text) == {"type": "end"}
                except json.JSONDecodeError:
                    is_end = False
                if not is_end:
                    raise _Close(CLOSE_BAD_REQUEST, f'text message {text[:40]!r}: expected {{"type": "end"}}')
                stream.end()
                return "ended"

    async def send() -> None:
        while True:
            audio_ready.clear()
            chunks = stream.take_audio()
            for chunk in chunks:
                try:
                    await asyncio.wait_for(websocket.send_bytes(_encode(chunk, sample_format)),
                                           settings.send_timeout or None)
                except asyncio.TimeoutError:
                    raise _Close(CLOSE_TIMEOUT, f"audio unread for {settings.send_timeout:g} s (send_timeout)") from None
                if first_frame_at and len(first_frame_at) == 1:
                    metrics.first_audio.observe(time.monotonic() - first_frame_at[0])
                    first_frame_at.append(0.0)
            if stream.closed:
                raise _Close(CLOSE_GOING_AWAY if service.draining else CLOSE_ERROR, stream.error or "closed")
            if stream.done:
                await websocket.send_text(json.dumps({"type": "end", "frames": stream.frames_in,
                                                      "samples": stream.samples_out}))
                return
            if not chunks:
                await audio_ready.wait()

    receiver, sender = asyncio.create_task(receive()), asyncio.create_task(send())
    outcome, close = "finished", (CLOSE_NORMAL, "utterance complete")
    try:
        done, _ = await asyncio.wait({receiver, sender}, return_when=asyncio.FIRST_COMPLETED)
        if receiver in done and not receiver.exception() and receiver.result() in ("ended", "closed"):
            await asyncio.wait({sender})  # it sends the rest, or says why the stream was closed
            done = {sender}
        for task in (receiver, sender):
            if task in done and task.exception() is not None:
                error = task.exception()
                if isinstance(error, _Close):
                    close = (error.code, error.reason)
                    outcome = {CLOSE_TIMEOUT: "timeout", CLOSE_GOING_AWAY: "shutdown", CLOSE_ERROR: "error"}.get(
                        error.code, "bad_input")
                else:  # the client went away under a send
                    close, outcome = None, "disconnected"
                break
        else:
            if receiver in done and receiver.result() == "disconnected":
                close, outcome = None, "disconnected"
    finally:
        for task in (receiver, sender):
            task.cancel()
        stream.cancel("connection ended")
        metrics.outcomes.labels(outcome).inc()
        _log_stream("ws", stream, outcome, "none" if close is None else close[0],
                    "" if close is None or close[0] == CLOSE_NORMAL else close[1])
    if close is not None:
        await _close(websocket, *close)


def _log_stream(kind: str, stream, outcome: str, code, reason: str = "") -> None:
    """The one log line of a stream (``kind`` ws or post), once it has ended."""
    log.info("stream %d %s: %d frames, %d samples, %s (%s), %.2f s%s", stream.id, kind, stream.frames_in,
             stream.samples_out, outcome, code, time.monotonic() - stream.opened_at,
             f": {reason[:LOG_CHARS]}" if reason else "")


class _Refusal(Exception):
    """Answer the request with this HTTP status and ``{"detail": message}``, counted as ``outcome``."""

    def __init__(self, status: int, message: str, outcome: str = "bad_input"):
        super().__init__(message)
        self.status, self.message, self.outcome = status, message, outcome


def _mel_from_npy(body: bytes, n_mels: int) -> torch.Tensor:
    """A POST body as a mel, or a ValueError naming what it is instead. The header is checked against
    the bytes that follow it before numpy allocates anything: a header may declare any shape."""
    if not body.startswith(b"\x93NUMPY"):
        raise ValueError(f"body: expected a .npy file (np.save of a float (n_mels, frames) array, which starts "
                         f"with the bytes \\x93NUMPY), got {len(body)} bytes starting with {body[:16]!r}")
    source = io.BytesIO(body)
    try:
        shape, dtype = read_npy_header(source)
    except ValueError as error:
        raise ValueError(f"body: not a readable .npy array ({error})") from None
    if dtype.hasobject:
        raise ValueError(f"body: expected float mel frames, got dtype {dtype} (Python objects are never loaded)")
    declared = math.prod(shape) * dtype.itemsize
    if declared != len(body) - source.tell():
        raise ValueError(f"body: its .npy header declares shape {shape} of {dtype} ({declared} bytes), but "
                         f"{len(body) - source.tell()} bytes follow the header")
    return load_mel_npy(io.BytesIO(body), n_mels, "body")


async def _read_body(request: Request, limit: int, seconds: float) -> bytes:
    body = bytearray()
    try:
        async with asyncio.timeout(seconds or None):
            async for piece in request.stream():
                body += piece
                if len(body) > limit:
                    raise _Refusal(413, f"body over {limit} bytes: more than the largest request allows "
                                        "(--max-request-frames)")
    except TimeoutError:
        raise _Refusal(408, f"body not received within {seconds:g} s (--body-timeout)", "timeout") from None
    return bytes(body)


async def _vocode_once(service: _Service, request: Request) -> Response:
    """``POST /v1/vocode``. A slot is taken before the body is read, so that no more bodies than
    slots are ever held, each at most the largest allowed request."""
    settings, metrics = service.settings, service.metrics
    try:
        seed, sample_format = _stream_options(request.query_params)
    except ValueError as error:
        metrics.outcomes.labels("bad_input").inc()
        return JSONResponse({"detail": str(error)}, status_code=400)
    # The largest body a mel of max_request_frames frames makes, in float64, with a header.
    limit = 8 * service.n_mels * settings.max_request_frames + 4096
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        metrics.outcomes.labels("bad_input").inc()
        return JSONResponse({"detail": f"body of {declared[:40]} bytes: at most {settings.max_request_frames} frames "
                                       f"(--max-request-frames)"}, status_code=413)
    audio_ready = asyncio.Event()
    try:
        stream = service.open_stream(seed, _waker(asyncio.get_running_loop(), audio_ready))
    except (SchedulerClosed, SchedulerFull) as error:
        outcome = "refused_shutdown" if isinstance(error, SchedulerClosed) else "refused_full"
        metrics.outcomes.labels(outcome).inc()
        return JSONResponse({"detail": str(error)}, status_code=503, headers={"Retry-After": "1"})
    outcome, status, disconnected = "finished", 200, None
    try:
        try:
            body = await _read_body(request, limit, settings.body_timeout)
            mel = _mel_from_npy(body, service.n_mels)
        except (ValueError, MemoryError) as error:
            raise _Refusal(400, str(error) if isinstance(error, ValueError)
                           else "body: its .npy header declares more than this machine can hold") from None
        if mel.shape[1] > settings.max_request_frames:
            raise _Refusal(413, f"body: {mel.shape[1]} frames, at most {settings.max_request_frames} "
                                "(--max-request-frames)")
        # The body is read: what uvicorn sends next is the client's disconnect, if it goes away.
        disconnected = asyncio.create_task(request.receive())
        pieces, sent, started = [], 0, time.monotonic()
        while True:
            audio_ready.clear()
            if stream.closed:
                raise _Refusal(503 if service.draining else 500, stream.error or "closed",
                               "shutdown" if service.draining else "error")
            if sent < mel.shape[1] and stream.room:
                count = min(stream.room, mel.shape[1] - sent)
                try:
                    stream.put(mel[:, sent:sent + count])
                except RuntimeError:  # closed meanwhile: the check above says why
                    continue
                sent += count
                if sent == mel.shape[1]:
                    stream.end()
            chunks = stream.take_audio()
            if chunks and not pieces:
                metrics.first_audio.observe(time.monotonic() - started)
            pieces += chunks
            if stream.done and not stream.closed:
                break
            if not chunks and not (sent < mel.shape[1] and stream.room):
                waiting = asyncio.ensure_future(audio_ready.wait())
                await asyncio.wait({waiting, disconnected}, return_when=asyncio.FIRST_COMPLETED)
                waiting.cancel()
                if disconnected.done():
                    raise ClientDisconnect()
        wav = io.BytesIO()
        write_wav(wav, torch.cat(pieces).numpy(), service.vocoder.sample_rate, sample_format=FORMATS[sample_format])
        return Response(wav.getvalue(), media_type="audio/wav")
    except _Refusal as refusal:
        outcome, status = refusal.outcome, refusal.status
        headers = {"Retry-After": "1"} if status == 503 else {}
        return JSONResponse({"detail": refusal.message}, status_code=status, headers=headers)
    except ClientDisconnect:  # nobody to answer: the slot is freed below, at the engine's next turn
        outcome, status = "disconnected", "none"
        return Response(status_code=499)
    finally:
        if disconnected is not None:
            disconnected.cancel()
        stream.cancel("request ended")
        metrics.outcomes.labels(outcome).inc()
        _log_stream("post", stream, outcome, status)


class _Guard:
    """ASGI middleware in front of every route: cross-site requests (an ``Origin`` header that is not
    in ``allow_origins``) get 403, and with a token every route but ``/healthz`` needs
    ``Authorization: Bearer TOKEN`` (else 401). A refused WebSocket gets the HTTP status at its
    handshake, before the app accepts it."""

    def __init__(self, app, service: _Service):
        self.app, self.service = app, service

    def _problem(self, scope) -> tuple[int, str, str] | None:
        headers = dict(scope.get("headers") or [])
        origin = headers.get(b"origin")
        if origin is not None and origin.decode("latin-1").rstrip("/") not in self.service.settings.allow_origins:
            return 403, (f"cross-site request from origin {origin.decode('latin-1')[:80]!r} refused: only "
                         "origins given with --allow-origin may use this server"), "refused_origin"
        token = self.service.token
        if token is not None and scope.get("path") != "/healthz":
            given = headers.get(b"authorization", b"")
            if not hmac.compare_digest(given, b"Bearer " + token.encode()):
                return 401, "missing or wrong bearer token (Authorization: Bearer TOKEN)", "refused_auth"
        return None

    async def __call__(self, scope, receive, send):
        problem = self._problem(scope) if scope["type"] in ("http", "websocket") else None
        if problem is None:
            return await self.app(scope, receive, send)
        status, detail, outcome = problem
        self.service.metrics.outcomes.labels(outcome).inc()
        log.warning("%s %s refused (%d): %s", scope["type"], scope.get("path", "")[:LOG_CHARS], status, detail)
        body = json.dumps({"detail": detail}).encode()
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
        if status == 401:
            headers.append((b"www-authenticate", b"Bearer"))
        if scope["type"] == "http":
            await send({"type": "http.response.start", "status": status, "headers": headers})
            await send({"type": "http.response.body", "body": body})
        elif "websocket.http.response" in scope.get("extensions", {}):
            await send({"type": "websocket.http.response.start", "status": status, "headers": headers})
            await send({"type": "websocket.http.response.body", "body": body})
        else:  # the ASGI server answers 403
            await send({"type": "websocket.close", "code": 1008, "reason": detail[:120]})


def read_token(path) -> str:
    """The bearer token in the file at ``path`` (one line, surrounding whitespace ignored)."""
    try:
        with open(path, encoding="utf-8") as file:
            token = file.read().strip()
    except (OSError, UnicodeDecodeError) as error:
        raise ValueError(f"--token-file: cannot read {path}: {error}") from None
    if len(token) < 16 or any(c.isspace() for c in token):
        raise ValueError(f"--token-file: {path} must hold one token of 16 or more characters without spaces")
    return token


def create_app(vocoder: Vocoder, settings: ServeSettings | None = None, *, token: str | None = None) -> FastAPI:
    """The ASGI app serving ``vocoder``: uvicorn (``serve``), Ray Serve or any ASGI server runs it.
    ``token``: the bearer token every route but ``/healthz`` requires (None: no authentication).
    ``app.state.service.drain()`` starts a graceful shutdown."""
    if not isinstance(vocoder, Vocoder):
        raise TypeError(f"vocoder: expected an nvwavenet.vocoder.Vocoder, got {type(vocoder).__name__}")
    settings = settings if settings is not None else ServeSettings()
    disable_created_metrics()  # one *_created series per counter and histogram: noise to a scraper
    service = _Service(vocoder, settings, token)

    @contextlib.asynccontextmanager
    async def lifespan(_app):
        service.scheduler.start()
        yield
        service.scheduler.stop(timeout=5)

    docs = {} if settings.docs else {"docs_url": None, "redoc_url": None, "openapi_url": None}
    app = FastAPI(title="nvwavenet", description=__doc__, lifespan=lifespan, **docs)
    app.state.service = service
    app.add_middleware(_Guard, service=service)

    @app.websocket("/v1/stream")
    async def stream_endpoint(websocket: WebSocket):
        await _stream_session(service, websocket)

    @app.post("/v1/vocode")
    async def vocode_endpoint(request: Request):
        return await _vocode_once(service, request)

    @app.get("/v1/model")
    async def model_endpoint():
        return service.model_info()

    @app.get("/healthz")
    async def health_endpoint():
        if service.draining:
            return JSONResponse({"status": "shutting down", "active_streams": service.scheduler.active}, 503)
        return {"status": "ok", "active_streams": service.scheduler.active}

    @app.get("/metrics")
    async def metrics_endpoint():
        return Response(await service.exposition(), media_type=CONTENT_TYPE_LATEST)

    return app


class _GracefulServer(uvicorn.Server):
    """uvicorn's Server, whose first SIGTERM or SIGINT drains the app before uvicorn's own shutdown,
    and which does not re-raise the signal afterwards (uvicorn does, which would end the process
    by the signal instead of exit status 0)."""

    def __init__(self, config: uvicorn.Config, service: _Service):
        super().__init__(config)
        self.service = service
        self.draining: asyncio.Task | None = None

    def handle_exit(self, sig, frame) -> None:
        if self.draining is None:
            self.draining = asyncio.get_event_loop().create_task(self._drain())
        elif sig == signal.SIGINT:  # a second Ctrl+C: stop now
            self.should_exit = self.force_exit = True

    async def _drain(self) -> None:
        await self.service.drain()
        self.should_exit = True


def serve(vocoder: Vocoder, settings: ServeSettings | None = None, *, host: str = "127.0.0.1", port: int = 8000,
          log_level: str = "info", token: str | None = None, ssl_certfile: str | None = None,
          ssl_keyfile: str | None = None, checkpoint: str | None = None) -> int:
    """Run the app on uvicorn until SIGTERM or SIGINT, then shut down gracefully; returns 0.

    The first signal starts the drain (new connections are refused with 1001 or 503, open
    streams get ``shutdown_grace`` seconds to end), then uvicorn stops; a second SIGINT stops at once.
    ``token``: the bearer token clients must send; ``ssl_certfile``/``ssl_keyfile``: serve HTTPS
    and WSS; ``checkpoint``: what was loaded, for the startup log.
    """
    if (ssl_certfile is None) != (ssl_keyfile is None):
        raise ValueError("--ssl-certfile and --ssl-keyfile: give both, or neither")
    app = create_app(vocoder, settings, token=token)
    config = uvicorn_config(app, host=host, port=port, log_level=log_level, ssl_certfile=ssl_certfile,
                            ssl_keyfile=ssl_keyfile)
    for line in startup_lines(app.state.service, host, checkpoint, tls=ssl_certfile is not None):
        (log.warning if line.startswith(UNAUTHENTICATED) else log.info)("%s", line)
    _GracefulServer(config, app.state.service).run()
    return 0


UNAUTHENTICATED = "NO AUTHENTICATION"


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # a name: it may resolve to anything
        return False


def startup_lines(service: _Service, host: str, checkpoint: str | None, tls: bool) -> list[str]:
    """What the server says it runs with before it listens: the model, every limit, the capacity,
    and a warning when it listens beyond this machine without authentication."""
    s, net, capacity = service.settings, service.vocoder.net, service.capacity
    lines = [f"checkpoint {checkpoint or '(in-process model)'}: R{net.R}/S{net.S}/A{net.A} L{net.num_layers}, "
             f"{service.vocoder.sample_rate} Hz, hop {service.vocoder.hop_length}, {service.n_mels} mels, "
             f"{service.vocoder.device}, {net.dtype}",
             f"capacity: {capacity.streams} streams in real time, {capacity.samples_per_second:,.0f} samples/s "
             f"({capacity.source}); --admit {s.admit}: at most {service.admit_limit} streams at once",
             "limits: " + ", ".join(f"--{name.replace('_', '-')} {value:g}" if isinstance(value, float)
                                    else f"--{name.replace('_', '-')} {value}"
                                    for name, value in dataclasses.asdict(s).items()
                                    if name not in ("admit", "capacity", "allow_origins", "docs")),
             f"cross-site: {'origins ' + ', '.join(s.allow_origins) if s.allow_origins else 'no browser origin'} "
             f"allowed; docs {'on' if s.docs else 'off'}; auth {'bearer token' if service.token else 'none'}; "
             f"TLS {'on' if tls else 'off'}"]
    if not _loopback(host) and service.token is None:
        lines.append(f"{UNAUTHENTICATED}: listening on {host}, beyond this machine: anyone who can "
                     "reach this port can use the server's CPU/GPU time; give --token-file (and --ssl-certfile/"
                     "--ssl-keyfile for TLS), or listen on 127.0.0.1 behind a proxy that authenticates")
    return lines


class _TruncateArgs(logging.Filter):
    """Cut long string arguments of uvicorn's log records (URLs with their query, reasons)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple):
            record.args = tuple(a[:LOG_CHARS] + "..." if isinstance(a, str) and len(a) > LOG_CHARS else a
                                for a in record.args)
        return True


def _protocol_class(service: _Service):
    """uvicorn's h11 protocol (pinned: httptools, which ``ray[serve]`` installs and uvicorn would
    pick silently, bounds no request line) with a cap on open connections and a header timeout."""
    import h11
    from uvicorn.protocols.http.h11_impl import H11Protocol

    settings = service.settings

    class BoundedH11Protocol(H11Protocol):
        _header_timer = None

        def connection_made(self, transport) -> None:
            super().connection_made(transport)
            if len(self.connections) > settings.max_connections:
                service.metrics.refused_connections.inc()
                body = json.dumps({"detail": f"{settings.max_connections} connections are open "
                                             "(--max-connections); try again later"}).encode()
                transport.write(b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\n"
                                b"retry-after: 1\r\nconnection: close\r\ncontent-length: "
                                + str(len(body)).encode() + b"\r\n\r\n" + body)
                transport.close()
                return
            self._arm_header_timer()

        def on_response_complete(self) -> None:
            super().on_response_complete()
            if not self.transport.is_closing():
                self._arm_header_timer()  # the next request's headers get the same time

        def _arm_header_timer(self) -> None:
            if self._header_timer is not None:
                self._header_timer.cancel()
            if settings.header_timeout:
                self._header_timer = self.loop.call_later(settings.header_timeout, self._header_deadline)

        def _header_deadline(self) -> None:
            self._header_timer = None
            # Still waiting for a request's headers (not upgraded to a WebSocket, not in a request).
            if (not self.transport.is_closing() and self.transport.get_protocol() is self
                    and self.conn.their_state is h11.IDLE):
                self.transport.close()

        def connection_lost(self, exc) -> None:
            if self._header_timer is not None:
                self._header_timer.cancel()
            super().connection_lost(exc)

    return BoundedH11Protocol


def _raise_fd_limit(service: _Service) -> None:
    """Each connection holds a file descriptor: the soft limit is raised to what --max-connections
    needs when the hard limit allows, else the server refuses to start rather than run out of them
    under load (where uvicorn logs "Too many open files" in a loop and /healthz stops answering)."""
    needed = service.settings.max_connections + SPARE_FDS
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < needed:
        if hard != resource.RLIM_INFINITY and hard < needed:
            raise ValueError(f"--max-connections: {service.settings.max_connections} connections need {needed} file "
                             f"descriptors, but this process may open {hard} (ulimit -Hn); give at most "
                             f"{hard - SPARE_FDS}")
        resource.setrlimit(resource.RLIMIT_NOFILE, (needed, hard))


def uvicorn_config(app: FastAPI, **kwargs) -> uvicorn.Config:
    """uvicorn's configuration for an app of :func:`create_app` (``kwargs``: host, port, ...)."""
    service = app.state.service
    _raise_fd_limit(service)
    # uvicorn refuses much larger messages itself (1009) before the app reads them into memory;
    # the app's own check (the limit in frames) gives the reason for the rest. A few messages are
    # queued per connection at most (uvicorn's default of 32 would hold 32 of the largest).
    max_size = 4 * service.n_mels * service.settings.max_pending_frames + 4096
    config = uvicorn.Config(app, http=_protocol_class(service), ws_max_size=max_size, ws_max_queue=4,
                            h11_max_incomplete_event_size=service.settings.max_header_bytes,
                            timeout_graceful_shutdown=5, **kwargs)
    for name in ("uvicorn.access", "uvicorn.error"):
        logger = logging.getLogger(name)
        if not any(isinstance(f, _TruncateArgs) for f in logger.filters):
            logger.addFilter(_TruncateArgs())
    return config
