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

``GET /v1/model``: the model's sizes, sample rate, hop, mel bands and the server's limits.
``GET /healthz``: 200 ``{"status": "ok"}``, 503 ``{"status": "shutting down"}`` while draining.
``GET /metrics``: Prometheus text: active streams, samples generated and samples/s, queued mel
frames and audio chunks, streams per engine call, first-audio latency, streams by outcome.

WebSocket close codes
---------------------
==== ======================================================================================
1000 the utterance is complete (after the ``end`` message)
1001 the server is shutting down: refused at connection, or cut after the shutdown grace period
1009 a message larger than ``max_pending_frames`` frames
1011 the engine failed on this stream's batch
1013 all ``--max-streams`` slots are in use: try again later
4400 a bad request: a bad query value (``n_mels`` other than the model's among them), a binary
     message that is not whole float32 frames, NaN or infinity, a text message other than ``end``
4408 the client read no audio for ``send_timeout`` seconds, or sent nothing for ``idle_timeout``
==== ======================================================================================

HTTP statuses of ``POST /v1/vocode``: 200 WAV; 400 not a float ``(n_mels, frames)`` ``.npy``,
NaN/inf or a bad query value; 413 more than ``max_request_frames`` frames (or a body that large);
503 all slots in use or shutting down (with ``Retry-After``). Every error body is
``{"detail": message}``. Each close reason and error message says what was wrong.
"""
from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import io
import json
import numbers
import signal
import time
from collections import deque

import numpy as np
import torch
import uvicorn
from fastapi import FastAPI, Request, WebSocket
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from starlette.websockets import WebSocketDisconnect

from .audio import to_pcm, write_wav
from .mel import load_mel_npy
from .scheduler import Scheduler, SchedulerClosed, SchedulerFull
from .validation import check_int
from .vocoder import Vocoder

__all__ = ["ServeSettings", "create_app", "serve", "uvicorn_config", "CLOSE_CODES"]

CLOSE_NORMAL, CLOSE_GOING_AWAY, CLOSE_TOO_BIG, CLOSE_ERROR, CLOSE_TRY_LATER = 1000, 1001, 1009, 1011, 1013
CLOSE_BAD_REQUEST, CLOSE_TIMEOUT = 4400, 4408
CLOSE_CODES = {CLOSE_NORMAL: "utterance complete", CLOSE_GOING_AWAY: "server shutting down",
               CLOSE_TOO_BIG: "message too big", CLOSE_ERROR: "engine error",
               CLOSE_TRY_LATER: "all stream slots in use", CLOSE_BAD_REQUEST: "bad request",
               CLOSE_TIMEOUT: "client timed out"}
FORMATS = {"pcm16": "int16", "float32": "float32"}  # wire name: write_wav/to_pcm sample format
# A close may itself wait on a client that does not read: it gets this long, then the socket goes.
CLOSE_WAIT_SECONDS = 2.0


@dataclasses.dataclass(frozen=True)
class ServeSettings:
    """The server's limits. ``chunk_frames``: frames per engine call at most (latency against
    batching); ``max_pending_frames``: mel frames queued per stream (also the largest message);
    ``max_ready_chunks``: audio chunks generated per stream and not yet sent; ``send_timeout``:
    seconds a client may leave audio unread; ``idle_timeout``: seconds a streaming client may send
    nothing; ``shutdown_grace``: seconds open streams get to finish once shutdown starts."""

    max_streams: int = 64
    chunk_frames: int = 4
    max_pending_frames: int = 256
    max_ready_chunks: int = 4
    max_request_frames: int = 20000
    send_timeout: float = 30.0
    idle_timeout: float = 60.0
    shutdown_grace: float = 10.0

    def __post_init__(self):
        for name in ("max_streams", "chunk_frames", "max_pending_frames", "max_ready_chunks", "max_request_frames"):
            check_int(name, getattr(self, name))
        for name in ("send_timeout", "idle_timeout", "shutdown_grace"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, numbers.Real) or not 0 <= value < float("inf"):
                raise ValueError(f"{name}: expected a finite number of seconds >= 0, got {value!r}")


class _Close(Exception):
    """End the connection with this WebSocket close code and reason."""

    def __init__(self, code: int, reason: str):
        super().__init__(reason)
        self.code, self.reason = code, reason[:120]  # a close reason holds at most 123 bytes


class _Metrics:
    def __init__(self, scheduler: Scheduler):
        self.registry = registry = CollectorRegistry()
        Gauge("nvwavenet_active_streams", "Streams holding a slot", registry=registry).set_function(
            lambda: scheduler.active)
        Gauge("nvwavenet_queued_frames", "Mel frames received and not yet vocoded, all streams",
              registry=registry).set_function(lambda: scheduler.queue_depths()[0])
        Gauge("nvwavenet_queued_audio_chunks", "Audio chunks generated and not yet sent, all streams",
              registry=registry).set_function(lambda: scheduler.queue_depths()[1])
        Gauge("nvwavenet_max_streams", "Stream slots (--max-streams)", registry=registry).set(scheduler.max_streams)
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
    """The app's state: the scheduler, its metrics, and whether shutdown has begun."""

    def __init__(self, vocoder: Vocoder, settings: ServeSettings):
        self.vocoder, self.settings = vocoder, settings
        self.scheduler = Scheduler(vocoder, max_streams=settings.max_streams, chunk_frames=settings.chunk_frames,
                                   max_pending_frames=settings.max_pending_frames,
                                   max_ready_chunks=settings.max_ready_chunks)
        self.metrics = _Metrics(self.scheduler)
        self.n_mels = vocoder.audio_config.mel.n_mels

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
                "limits": dataclasses.asdict(self.settings), "formats": list(FORMATS),
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
    await websocket.accept()
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
        stream = service.scheduler.open(seed, _waker(asyncio.get_running_loop(), audio_ready, room))
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
    if close is not None:
        await _close(websocket, *close)


async def _vocode_once(service: _Service, request: Request) -> Response:
    settings, metrics = service.settings, service.metrics

    def refuse(status: int, message: str, outcome: str, **headers) -> JSONResponse:
        metrics.outcomes.labels(outcome).inc()
        return JSONResponse({"detail": message}, status_code=status, headers=headers)

    try:
        seed, sample_format = _stream_options(request.query_params)
    except ValueError as error:
        return refuse(400, str(error), "bad_input")
    # The largest body a mel of max_request_frames frames makes, in float64, with a header.
    limit = 8 * service.n_mels * settings.max_request_frames + 4096
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        return refuse(413, f"body of {declared} bytes: at most {settings.max_request_frames} frames "
                           f"(max_request_frames)", "bad_input")
    body = bytearray()
    async for piece in request.stream():
        body += piece
        if len(body) > limit:
            return refuse(413, f"body over {limit} bytes: at most {settings.max_request_frames} frames "
                               "(max_request_frames)", "bad_input")
    try:
        mel = load_mel_npy(io.BytesIO(bytes(body)), service.n_mels, "body")
    except ValueError as error:
        return refuse(400, str(error), "bad_input")
    if mel.shape[1] > settings.max_request_frames:
        return refuse(413, f"body: {mel.shape[1]} frames, at most {settings.max_request_frames} "
                           "(max_request_frames)", "bad_input")
    audio_ready = asyncio.Event()
    try:
        stream = service.scheduler.open(seed, _waker(asyncio.get_running_loop(), audio_ready))
    except SchedulerClosed as error:
        return refuse(503, str(error), "refused_shutdown", **{"Retry-After": "1"})
    except SchedulerFull as error:
        return refuse(503, str(error), "refused_full", **{"Retry-After": "1"})
    pieces, sent, started = [], 0, time.monotonic()
    try:
        while True:
            audio_ready.clear()
            if stream.closed:
                status = 503 if service.draining else 500
                return refuse(status, stream.error or "closed", "shutdown" if service.draining else "error")
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
                await audio_ready.wait()
    finally:
        stream.cancel("request ended")
    metrics.outcomes.labels("finished").inc()
    wav = io.BytesIO()
    write_wav(wav, torch.cat(pieces).numpy(), service.vocoder.sample_rate, sample_format=FORMATS[sample_format])
    return Response(wav.getvalue(), media_type="audio/wav")


def create_app(vocoder: Vocoder, settings: ServeSettings | None = None) -> FastAPI:
    """The ASGI app serving ``vocoder``: uvicorn (``serve``), Ray Serve or any ASGI server runs it.
    ``app.state.service.drain()`` starts a graceful shutdown."""
    if not isinstance(vocoder, Vocoder):
        raise TypeError(f"vocoder: expected an nvwavenet.vocoder.Vocoder, got {type(vocoder).__name__}")
    settings = settings if settings is not None else ServeSettings()
    service = _Service(vocoder, settings)

    @contextlib.asynccontextmanager
    async def lifespan(_app):
        service.scheduler.start()
        yield
        service.scheduler.stop(timeout=5)

    app = FastAPI(title="nvwavenet", description=__doc__, lifespan=lifespan)
    app.state.service = service

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
        return Response(generate_latest(service.metrics.registry), media_type=CONTENT_TYPE_LATEST)

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
          log_level: str = "info") -> int:
    """Run the app on uvicorn until SIGTERM or SIGINT, then shut down gracefully; returns 0.

    The first signal starts the drain (new connections are refused with 1001 or 503, open
    streams get ``shutdown_grace`` seconds to end), then uvicorn stops; a second SIGINT stops at once.
    """
    app = create_app(vocoder, settings)
    _GracefulServer(uvicorn_config(app, host=host, port=port, log_level=log_level), app.state.service).run()
    return 0


def uvicorn_config(app: FastAPI, **kwargs) -> uvicorn.Config:
    """uvicorn's configuration for an app of :func:`create_app` (``kwargs``: host, port, ...)."""
    service = app.state.service
    # uvicorn refuses much larger messages itself (1009) before the app reads them into memory;
    # the app's own check (the limit in frames) gives the reason for the rest.
    max_size = 4 * service.n_mels * service.settings.max_pending_frames + 4096
    return uvicorn.Config(app, ws_max_size=max_size, timeout_graceful_shutdown=5, **kwargs)
