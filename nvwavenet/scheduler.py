"""Continuous batching of vocoder streams: one engine loop per device, streams joining and leaving
a running batch at chunk boundaries.

Each turn the loop takes every stream that has mel frames waiting and room for more audio, runs
one batched engine call of ``n`` frames (the smallest number any of them has waiting, at most
``chunk_frames``, so that no stream waits for another's frames), and hands each stream its audio.

Every stream's audio is bit for bit what :class:`~nvwavenet.vocoder.Vocoder` gives for its mel and
seed alone, whatever else runs in the batch and however its frames arrive:

- conditioning is computed per stream (``Vocoder.condition_chunk`` at batch 1), from that stream's
  own frame history;
- each stream draws its selectors from its own generator seeded as ``Vocoder`` seeds one, in time
  order, so consecutive draws equal one draw for the whole utterance;
- the CPU engine's result for a stream does not depend on the batch it runs in
  (``tests/test_cpu_engine.py``), and a stream that sits out a turn keeps its own state, which
  ``concat_states`` rotates to the batch's position when it returns.

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
from .state import concat_states, select_streams
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
        self._state = vocoder.net.init_state(1, vocoder.device)  # while outside the running batch
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
    ``chunk_frames`` frames at most per engine call; ``max_pending_frames`` frames queued per
    stream; ``max_ready_chunks`` audio chunks generated and not yet taken per stream. An engine
    call holds the conditioning of ``max_streams * chunk_frames`` frames at most (2R * L * hop
    floats each), the largest part of the server's memory.
    """

    def __init__(self, vocoder: Vocoder, *, max_streams: int = 64, chunk_frames: int = 4,
                 max_pending_frames: int = 256, max_ready_chunks: int = 4):
        if not isinstance(vocoder, Vocoder):
            raise TypeError(f"vocoder: expected an nvwavenet.vocoder.Vocoder, got {type(vocoder).__name__}")
        self.vocoder = vocoder
        self.max_streams = check_int("max_streams", max_streams)
        self.chunk_frames = check_int("chunk_frames", chunk_frames)
        self.max_pending_frames = check_int("max_pending_frames", max_pending_frames)
        self.max_ready_chunks = check_int("max_ready_chunks", max_ready_chunks)
        self._lock = threading.RLock()
        self._work = threading.Condition(self._lock)
        self._streams: dict[int, Stream] = {}
        self._ids = itertools.count()
        self._closing = False
        self._thread: threading.Thread | None = None
        # The running batch: its streams in order and their joint generation state.
        self._members: list[Stream] = []
        self._batch_state: dict | None = None
        self.samples_generated = 0
        self.engine_calls = 0
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
                n = min(self.chunk_frames, *(s.pending_frames for s in ready))
                frames = [s._take_frames(n) for s in ready]
                for stream in ready:
                    stream._in_flight = True
                    stream._wake()  # room for more frames
            try:
                audio = self._generate(ready, frames)
            except Exception as error:  # noqa: BLE001 - a failed call must not end the loop for every other stream
                self._fail(ready, f"engine error: {type(error).__name__}: {error}")
                continue
            now = time.monotonic()
            with self._lock:
                for stream, chunk in zip(ready, audio):
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
                self.samples_generated += n * self.vocoder.hop_length * len(ready)
                self.engine_calls += 1
            if self.on_turn is not None:
                self.on_turn(len(ready), n * self.vocoder.hop_length * len(ready))

    def _generate(self, streams: list[Stream], frames: list[torch.Tensor]) -> list[torch.Tensor]:
        vocoder = self.vocoder
        cond, selectors = None, []
        for index, (stream, chunk) in enumerate(zip(streams, frames)):
            part, stream._history = vocoder.condition_chunk(stream._history, chunk)
            # Written into one batch tensor as each is made, not joined at the end: the conditioning
            # is the call's largest memory (2R * L * hop floats a frame, 3 MB at R64 L20 hop 300),
            # and a join would hold it twice.
            if cond is None:
                cond = part.new_empty(part.shape[0], len(streams), *part.shape[2:])
            cond[:, index] = part[:, 0]
            selectors.append(draw_selectors(1, part.shape[3], stream._generator, vocoder.device))
        state = self._batch_for(streams)
        classes = vocoder.net.infer(cond, vocoder.implementation, selectors=torch.cat(selectors), state=state)
        return list(vocoder.decode(classes).cpu().unbind(0))

    def _batch_for(self, streams: list[Stream]) -> dict:
        """The joint state of ``streams`` in that order: the running batch's as it is when they are
        its members; else members that sit this turn out take their own state with them, and the
        batch is rebuilt from those staying and those joining (``concat_states`` rotates each to
        the batch's position)."""
        if streams == self._members:
            return self._batch_state
        index = {id(member): i for i, member in enumerate(self._members)}
        for i, member in enumerate(self._members):
            if member not in streams and not (member.closed or member.finished):
                member._state = select_streams(self._batch_state, [i])
        parts = [select_streams(self._batch_state, [index[id(s)]]) if id(s) in index else s._state
                 for s in streams]
        for stream in streams:
            stream._state = None  # it lives in the batch now
        self._batch_state = concat_states(parts, self.vocoder.net.weights.dilations)
        self._members = list(streams)
        return self._batch_state

    def _fail(self, streams: list[Stream], reason: str) -> None:
        with self._lock:
            self._members, self._batch_state = [], None
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
