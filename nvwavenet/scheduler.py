"""Continuous batching of vocoder streams: one engine loop per device, streams joining and leaving
a running batch at chunk boundaries.

Each turn the loop takes every stream that has mel frames waiting and room for more audio, each
with as many frames as it has waiting (at most ``chunk_frames``; one for a stream's first chunk, so
that a stream joining a busy batch gets its first audio after one short call). Their conditioning
is one batched call (:class:`~nvwavenet.conditioning.FrameConditioner` with per-stream counts);
the joining streams then share one engine call, and the others one more, each stream running its
own number of steps (on CUDA, whose kernels run one step count per call, streams with equal counts
share a call); each stream gets its audio as soon as its call returns. A slow sender shrinks only
its own part of the call, not everyone's.

Every stream's audio is bit for bit what :class:`~nvwavenet.vocoder.Vocoder` gives for its mel and
seed alone, whatever else runs in the batch and however its frames arrive:

- the conditioning of each stream depends on its own frames only, whichever streams share the
  call, where it sits and how many threads run it (``tests/test_conditioning.py``);
- each stream draws its selectors from its own generator seeded as ``Vocoder`` seeds one, in time
  order, so consecutive draws equal one draw for the whole utterance;
- each stream's generation state is its own row (slot) of one :class:`~nvwavenet.session.Session`,
  at its own position: a call names the slots it runs, and no row moves or is touched by a call
  that does not name it, so streams join, sit a turn out, run in another group and leave without
  anyone's state being cut out, copied or re-joined; and the engine's result for a stream does
  not depend on the batch it runs in (``tests/test_session.py``).

:attr:`Scheduler.seconds` sums the time of turns, of engine calls and of conditioning; the rest of
a turn is the scheduler's own host overhead.

The scheduler is thread-based and knows nothing of networking: a :class:`Stream`'s producer calls
:meth:`Stream.put` and :meth:`Stream.end`, its consumer :meth:`Stream.take_audio`, and ``wake``
(called from the engine thread) says when either may go on. Queues are bounded both ways:
``put`` refuses frames beyond ``max_pending_frames`` (the producer waits for :attr:`Stream.room`),
and a stream whose consumer has ``max_ready_chunks`` chunks not yet taken is left out of the
batch until it takes them, so a slow reader cannot grow memory.
"""
from __future__ import annotations

import itertools
import threading
import time
from collections import deque
from collections.abc import Callable

import torch

from .sampling import draw_selectors
from .session import Session
from .validation import check_int
from .vocoder import Vocoder, _seed_generator

__all__ = ["Scheduler", "Stream", "SchedulerFull", "SchedulerClosed"]


class SchedulerFull(RuntimeError):
    """Every one of ``max_streams`` slots is taken."""


class SchedulerClosed(RuntimeError):
    """The scheduler is shutting down and takes no new streams."""


class Stream:
    """One utterance in a :class:`Scheduler`. Thread-safe; made by :meth:`Scheduler.open`."""

    def __init__(self, scheduler: Scheduler, stream_id: int, seed: int, wake: Callable[[], None]):
        self.id = stream_id
        self.seed = seed
        self._scheduler = scheduler
        self._lock = scheduler._lock
        self._wake = wake
        self._generator = _seed_generator(seed)
        vocoder = scheduler.vocoder
        self._history = vocoder.conditioner.start(1)
        self._slot: int | None = None  # its row of the scheduler's Session, from its first turn on
        self._pending: deque[torch.Tensor] = deque()  # (1, n_mels, k) chunks as put
        self.pending_frames = 0
        self._in_flight = False  # frames taken by the engine loop, audio not yet delivered
        self._ready: deque[torch.Tensor] = deque()  # audio chunks generated, not yet taken
        self.ended = False  # no more frames will come
        self.finished = False  # every frame's audio has been generated
        self.closed = False  # cancelled, or failed: ``error`` says why
        self.error: str | None = None
        self.frames_in = 0
        self.samples_out = 0
        self.opened_at = time.monotonic()
        self.first_audio_at: float | None = None

    @property
    def room(self) -> int:
        """Frames :meth:`put` takes now."""
        return self._scheduler.max_pending_frames - self.pending_frames

    def put(self, frames) -> None:
        """Queue mel frames ``(n_mels, k)``; a ValueError or TypeError names what is wrong with them
        (width, dtype, NaN or infinity, more than :attr:`room`)."""
        frames = self._scheduler.vocoder.conditioner.as_frames(
            frames.unsqueeze(0) if isinstance(frames, torch.Tensor) and frames.dim() == 2 else frames, "frames")
        count = frames.shape[2]
        with self._lock:
            if self.ended or self.closed:
                raise RuntimeError(f"stream {self.id}: frames after its end")
            if count > self.room:
                raise ValueError(f"frames: {count} frames, but the stream has room for {self.room} "
                                 f"(at most {self._scheduler.max_pending_frames} wait at once)")
            if count:
                self._pending.append(frames)
                self.pending_frames += count
                self.frames_in += count
                self._scheduler._work.notify()

    def end(self) -> None:
        """No more frames: the stream finishes once the queued ones are vocoded."""
        with self._lock:
            self.ended = True
            self._scheduler._work.notify()
            if not self.pending_frames and not self._in_flight:
                self._scheduler._finish(self)

    def cancel(self, reason: str = "cancelled") -> None:
        """Leave at once (e.g. the client went away): the slot is free when this returns."""
        with self._lock:
            if not self.closed and not self.finished:
                self.closed, self.error = True, reason
                self._pending.clear()
                self.pending_frames = 0
                self._ready.clear()
                self._scheduler._remove(self)

    def take_audio(self) -> list[torch.Tensor]:
        """The audio chunks generated since the last call (float ``(samples,)`` each, in order)."""
        with self._lock:
            chunks = list(self._ready)
            self._ready.clear()
            if chunks:
                self._scheduler._work.notify()  # room for more audio
            return chunks

    @property
    def done(self) -> bool:
        """Nothing more will come: finished (and every chunk taken) or closed."""
        with self._lock:
            return self.closed or (self.finished and not self._ready)

    def _take_frames(self, n: int) -> torch.Tensor:
        parts, needed = [], n
        while needed:
            head = self._pending.popleft()
            if head.shape[2] > needed:
                self._pending.appendleft(head[:, :, needed:])
                head = head[:, :, :needed]
            parts.append(head)
            needed -= head.shape[2]
        self.pending_frames -= n
        return torch.cat(parts, dim=2) if len(parts) > 1 else parts[0]


class Scheduler:
    """The engine loop of one device for a :class:`~nvwavenet.vocoder.Vocoder`.

    ``max_streams`` streams at most at once (:meth:`open` raises :class:`SchedulerFull` beyond);
    ``chunk_frames`` frames at most per stream and turn; ``max_pending_frames`` frames queued per
    stream; ``max_ready_chunks`` audio chunks generated and not yet taken per stream. A turn
    holds the conditioning of ``max_streams * chunk_frames`` frames at most (2R * L * hop floats
    each), the largest part of the server's memory. ``join_frames``: a turn's engine calls run
    this many frames each while a stream can still open, and streams that opened meanwhile get
    their first frame between two of them (shorter calls cost the engine some speed, so longer
    ones trade a joiner's wait for throughput).
    """

    def __init__(self, vocoder: Vocoder, *, max_streams: int = 64, chunk_frames: int = 4,
                 max_pending_frames: int = 256, max_ready_chunks: int = 4, join_frames: int = 1):
        if not isinstance(vocoder, Vocoder):
            raise TypeError(f"vocoder: expected an nvwavenet.vocoder.Vocoder, got {type(vocoder).__name__}")
        self.vocoder = vocoder
        self.max_streams = check_int("max_streams", max_streams)
        self.chunk_frames = check_int("chunk_frames", chunk_frames)
        self.max_pending_frames = check_int("max_pending_frames", max_pending_frames)
        self.max_ready_chunks = check_int("max_ready_chunks", max_ready_chunks)
        self.join_frames = check_int("join_frames", join_frames)
        self._lock = threading.RLock()
        self._work = threading.Condition(self._lock)
        self._streams: dict[int, Stream] = {}
        self._ids = itertools.count()
        self._closing = False
        self._thread: threading.Thread | None = None
        # Every stream's generation state, a row each. Rows are admitted and released on the engine
        # thread only (between calls), so that no row is reset while a call runs.
        self._session = Session(vocoder.net, self.max_streams, device=vocoder.device, dtype=vocoder.net.dtype,
                                implementation=vocoder.implementation)
        self._owners: dict[int, Stream] = {}  # admitted row -> its stream; rows of streams that left are freed at the next turn
        self.samples_generated = 0
        self.engine_calls = 0
        self.turns = 0
        # Seconds spent, summed over turns: in whole turns, in the engine's calls, in conditioning.
        # A turn's host overhead is what it spends in neither (state, selectors, audio, bookkeeping).
        self.seconds = {"turn": 0.0, "engine": 0.0, "conditioning": 0.0}
        self._cond_buffer = torch.empty(0)  # the turns' conditioning, reused (the engine is done with it by the next)
        self.on_turn: Callable[[int, int], None] | None = None  # (streams, samples), for metrics

    # -- admission -----------------------------------------------------------------------------
    def open(self, seed: int = 0, wake: Callable[[], None] = lambda: None) -> Stream:
        """A new stream, or :class:`SchedulerFull` / :class:`SchedulerClosed` (no slot is taken)."""
        with self._lock:
            if self._closing:
                raise SchedulerClosed("the server is shutting down and takes no new streams")
            if len(self._streams) >= self.max_streams:
                raise SchedulerFull(f"all {self.max_streams} stream slots are in use (--max-streams)")
            stream = Stream(self, next(self._ids), seed, wake)
            self._streams[stream.id] = stream
            return stream

    @property
    def active(self) -> int:
        with self._lock:
            return len(self._streams)

    @property
    def closing(self) -> bool:
        return self._closing

    def queue_depths(self) -> tuple[int, int]:
        """(mel frames waiting, audio chunks waiting to be taken) over every stream."""
        with self._lock:
            streams = list(self._streams.values())
            return sum(s.pending_frames for s in streams), sum(len(s._ready) for s in streams)

    def streams(self) -> list[Stream]:
        with self._lock:
            return list(self._streams.values())

    # -- the loop ------------------------------------------------------------------------------
    def start(self) -> None:
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="nvwavenet-engine", daemon=True)
                self._thread.start()

    def close(self) -> None:
        """Take no new streams; the loop goes on for the streams already open."""
        with self._lock:
            self._closing = True
            self._work.notify()

    def stop(self, timeout: float | None = None) -> None:
        """Close every stream still open and end the loop."""
        self.close()
        for stream in self.streams():
            stream.cancel("server stopped")
        with self._lock:
            thread, self._thread = self._thread, None
            self._work.notify()
        if thread is not None:
            thread.join(timeout)

    def _ready_streams(self) -> list[Stream]:
        return [s for s in self._streams.values()
                if s.pending_frames and len(s._ready) < self.max_ready_chunks]

    def _run(self) -> None:
        while True:
            with self._lock:
                while self._thread is threading.current_thread() and not (ready := self._ready_streams()):
                    self._work.wait()
                if self._thread is not threading.current_thread():
                    return
                started = time.perf_counter()
                # Each stream takes what it has, up to chunk_frames (a slow sender shrinks only its
                # own call); a stream's first chunk is one frame, so that a stream joining a busy
                # batch hears its first audio after one short call, not a full chunk of everyone.
                counts = [min(self.chunk_frames if s.samples_out else 1, s.pending_frames) for s in ready]
                frames = [s._take_frames(n) for s, n in zip(ready, counts)]
                for stream in ready:
                    stream._in_flight = True
                    stream._wake()  # room for more frames
            self._release_rows()
            # First chunks go first, then the rest, largest count first (the order _groups cuts
            # runs of equal counts from).
            by_count: dict[int, list[int]] = {}
            for index, n in enumerate(counts):
                by_count.setdefault(n, []).append(index)
            joining = [i for i in range(len(ready)) if not ready[i].samples_out]
            rest = [i for n in sorted(by_count, reverse=True) for i in by_count[n] if ready[i].samples_out]
            for part in (joining, rest):
                if part:
                    self._turn([ready[i] for i in part], [frames[i] for i in part], [counts[i] for i in part])
            with self._lock:
                self.turns += 1
                self.seconds["turn"] += time.perf_counter() - started

    def _turn(self, streams: list[Stream], frames: list[torch.Tensor], counts: list[int], reuse: bool = True) -> None:
        """Conditions ``streams`` in one call, then generates and delivers them by groups of equal
        count. ``reuse``: into the loop's conditioning buffer (not for joiners run in the middle of
        a call that still reads it)."""
        try:
            cond = self._condition(streams, frames, counts, reuse)
        except Exception as error:  # noqa: BLE001 - a failed call must not end the loop for every other stream
            self._fail(streams, f"engine error: {type(error).__name__}: {error}")
            return
        for first, last in self._groups(counts):
            group = streams[first:last]
            try:
                audio = self._generate(group, cond[:, first:last, :, :max(counts[first:last]) * self.vocoder.hop_length],
                                       counts[first:last])
            except Exception as error:  # noqa: BLE001
                self._fail(group, f"engine error: {type(error).__name__}: {error}")
                continue
            self._deliver(group, audio)

    def _groups(self, counts: list[int]) -> list[tuple[int, int]]:
        """The ``[first, last)`` ranges of streams that share an engine call. On the CPU the engine
        runs each stream its own number of steps (``Session.step``'s ``steps``), so all of them:
        a turn's streams in one call at its whole batch, the engine's fastest per sample. The CUDA
        kernels run one step count per call: there, runs of equal counts."""
        if self.vocoder.device.type == "cpu":
            return [(0, len(counts))]
        bounds = [i for i in range(1, len(counts)) if counts[i] != counts[i - 1]]
        return list(zip([0, *bounds], [*bounds, len(counts)]))

    def _condition(self, streams: list[Stream], frames: list[torch.Tensor], counts: list[int],
                   reuse: bool) -> torch.Tensor:
        """The conditioning of every stream's new frames, in one call: ``(2R, streams, L, max(counts) * hop)``,
        stream ``i``'s first ``counts[i] * hop`` samples defined; each stream's history moves on."""
        conditioner = self.vocoder.conditioner
        context, widest = conditioner.context, max(counts)
        window = frames[0].new_zeros(len(streams), conditioner.n_channels, context + widest)
        for index, (stream, chunk) in enumerate(zip(streams, frames)):
            window[index, :, :context] = stream._history[0]
            window[index, :, context:context + chunk.shape[2]] = chunk[0]
        for index, (stream, n) in enumerate(zip(streams, counts)):
            stream._history = window[index:index + 1, :, n:n + context].clone()
        size = len(streams) * conditioner.cond_weight.shape[0] * widest * conditioner.hop
        if reuse and self._cond_buffer.numel() < size:
            self._cond_buffer = torch.empty(size, device=self.vocoder.device)
        started = time.perf_counter()
        with torch.no_grad():
            cond = self.vocoder.engine_conditioning(
                conditioner(window, counts, buffer=self._cond_buffer if reuse else None))
        self.seconds["conditioning"] += time.perf_counter() - started
        return cond

    def _generate(self, streams: list[Stream], cond: torch.Tensor, counts: list[int]) -> list[torch.Tensor]:
        """Stream ``i``'s next ``counts[i]`` frames of audio; ``cond`` covers the largest count."""
        vocoder = self.vocoder
        lengths = [n * vocoder.hop_length for n in counts]
        total = cond.shape[3]
        # Each stream draws only its own steps' selectors, so that its generator stays in time order.
        selectors = torch.zeros(len(streams), total, device=vocoder.device)
        for row, (stream, length) in enumerate(zip(streams, lengths)):
            selectors[row, :length] = draw_selectors(1, length, stream._generator, vocoder.device)[0]
        session = self._session
        slots = []
        for stream in streams:
            if stream._slot is None:
                stream._slot = session.admit()
                with self._lock:
                    self._owners[stream._slot] = stream
            slots.append(stream._slot)
        # Called a frame at a time (join_frames), so that a stream that opens meanwhile gets its
        # first frame's audio between two of them instead of after everyone's whole chunk; in one
        # call when no stream can open (every slot taken, or closing), shorter calls being slower.
        with self._lock:
            can_join = not self._closing and len(self._streams) < self.max_streams
        parts, step = [], self.join_frames * vocoder.hop_length if can_join else total
        for start in range(0, total, step):
            if start:
                self._admit_joiners()
            steps = None if min(lengths) == total else [min(max(length - start, 0), step) for length in lengths]
            started = time.perf_counter()
            _, audio = session.step(slots, cond[..., start:start + step], selectors[:, start:start + step], audio=True,
                                    steps=steps)
            self.seconds["engine"] += time.perf_counter() - started
            self.engine_calls += 1
            parts.append(audio.clone())  # the session's buffer, reused by its next step
        # Past its own steps a stream's audio is that of whatever its row of the session's outputs
        # held (their poison, -1, decodes as a class too): each stream keeps its own steps only.
        audio = (torch.cat(parts, dim=1) if len(parts) > 1 else parts[0]).cpu()
        return [row[:length] for row, length in zip(audio.unbind(0), lengths)]

    def _admit_joiners(self) -> None:
        """Runs, now, the first frame of every stream that has frames and no audio yet."""
        with self._lock:
            # Only into free rows: those of streams that left this turn are freed after it (the
            # turn's calls may still name them).
            joining = [s for s in self._ready_streams()
                       if not s.samples_out and not s._in_flight][:self._session.free]
            frames = [s._take_frames(1) for s in joining]
            for stream in joining:
                stream._in_flight = True
                stream._wake()
        if joining:
            self._turn(joining, frames, [1] * len(joining), reuse=False)

    def _deliver(self, streams: list[Stream], audio: list[torch.Tensor]) -> None:
        now = time.monotonic()
        with self._lock:
            for stream, chunk in zip(streams, audio):
                stream._in_flight = False
                if stream.closed:
                    continue
                stream._ready.append(chunk)
                stream.samples_out += chunk.shape[0]
                if stream.first_audio_at is None:
                    stream.first_audio_at = now
                if stream.ended and not stream.pending_frames:
                    self._finish(stream)
                stream._wake()
            samples = sum(chunk.shape[0] for chunk in audio)
            self.samples_generated += samples
        if self.on_turn is not None:
            self.on_turn(len(streams), samples)

    def _fail(self, streams: list[Stream], reason: str) -> None:
        with self._lock:
            for stream in streams:
                if not stream.closed:
                    stream.closed, stream.error = True, reason
                    self._remove(stream)
                    stream._wake()

    def _finish(self, stream: Stream) -> None:
        stream.finished = True
        self._remove(stream)
        stream._wake()

    def _remove(self, stream: Stream) -> None:
        self._streams.pop(stream.id, None)
        self._work.notify()

    def _release_rows(self) -> None:
        """Frees the rows of streams that left (engine thread, between turns), also those that
        left while their first turn was being prepared, before they had a row."""
        with self._lock:
            rows = [row for row, stream in self._owners.items() if stream.id not in self._streams]
            for row in rows:
                del self._owners[row]
        for row in rows:
            self._session.release(row)
