"""The scheduler without the network: every stream bit for bit ``Vocoder(mel, seed)`` alone, with
streams joining at random turns, sending random chunk sizes, under 1, 2 and all threads; a slow
sender not shrinking the others' calls; a joining stream's short first chunk; the time counters."""
from __future__ import annotations

import os
import random
import time

import pytest
import torch

from nvwavenet.audio import AudioConfig
from nvwavenet.mel import MelConfig
from nvwavenet.model import WaveNet
from nvwavenet.scheduler import Scheduler
from nvwavenet.vocoder import Vocoder

MELS = 10
MEL = MelConfig(sample_rate=8000, n_fft=128, hop_length=32, win_length=128, n_mels=MELS, fmin=0.0, fmax=4000.0)


@pytest.fixture(scope="module")
def vocoder():
    torch.manual_seed(0)
    # A receptive field of 31 samples and 3 frames of conditioning context: a stream whose state
    # or history was mixed up differs within a frame.
    model = WaveNet(n_in_channels=64, n_layers=4, max_dilation=8, n_residual_channels=8, n_skip_channels=16,
                    n_out_channels=64, n_cond_channels=MELS, upsamp_window=128, upsamp_stride=32).eval()
    return Vocoder(model, AudioConfig(8000, 64, MEL))


def _mels(count, seed):
    generator = torch.Generator().manual_seed(seed)
    return [torch.randn(MELS, int(torch.randint(3, 14, (1,), generator=generator)), generator=generator) - 2.0
            for _ in range(count)]


def _serve(scheduler, mels, seeds, joins, rng):
    """Feeds every mel from this thread: stream i opens once the loop has made joins[i] engine calls
    (or when every stream before it is done), sends random chunk sizes as its room allows and ends;
    returns each stream's audio, joined."""
    streams, sent, audio = {}, [0] * len(mels), [[] for _ in mels]
    deadline = time.monotonic() + 60
    while len(streams) < len(mels) or not all(s.done for s in streams.values()):
        assert time.monotonic() < deadline, "the scheduler stalled"
        for i in range(len(mels)):
            if i not in streams and (scheduler.engine_calls >= joins[i] or all(s.done for s in streams.values())):
                streams[i] = scheduler.open(seeds[i])
        for i, stream in streams.items():
            if sent[i] < mels[i].shape[1] and stream.room:
                size = min(rng.randint(1, 5), stream.room, mels[i].shape[1] - sent[i])
                stream.put(mels[i][:, sent[i]:sent[i] + size])
                sent[i] += size
                if sent[i] == mels[i].shape[1]:
                    stream.end()
            audio[i] += stream.take_audio()
        time.sleep(0.001)
    assert not any(s.closed for s in streams.values()), [s.error for s in streams.values()]
    return [torch.cat(parts) for parts in audio]


@pytest.mark.parametrize("threads", [1, 2, 0])
def test_streams_joining_at_random_turns_equal_the_vocoder_alone(vocoder, threads):
    mels, seeds = _mels(6, seed=threads), [11, -3, 2**40, 0, 7, 123]
    expected = [vocoder(mel, seed=seed) for mel, seed in zip(mels, seeds)]
    rng = random.Random(threads)
    before = torch.get_num_threads()
    scheduler = Scheduler(vocoder, max_streams=8, chunk_frames=3, max_pending_frames=6)
    try:
        torch.set_num_threads(threads or os.cpu_count())
        vocoder.conditioner.num_threads = threads
        scheduler.start()
        got = _serve(scheduler, mels, seeds, [rng.randint(0, 20) for _ in mels], rng)
    finally:
        scheduler.stop(timeout=10)
        vocoder.conditioner.num_threads = 0
        torch.set_num_threads(before)
    for i, (audio, reference) in enumerate(zip(got, expected)):
        assert torch.equal(audio, reference), i


def test_a_slow_sender_shrinks_only_its_own_call_and_a_joiner_starts_short(vocoder):
    scheduler = Scheduler(vocoder, max_streams=4, chunk_frames=4, join_frames=4)
    fast, slow = scheduler.open(1), scheduler.open(2)
    fast.put(torch.zeros(MELS, 9))
    slow.put(torch.zeros(MELS, 2))
    calls = []
    session = scheduler._session
    original = session.step
    session.step = lambda slots, cond, *a, steps=None, **k: (calls.append((*cond.shape[1::2], steps))
                                                             or original(slots, cond, *a, steps=steps, **k))
    try:
        scheduler.start()
        deadline = time.monotonic() + 30
        while (fast.samples_out, slow.samples_out) != (9 * 32, 2 * 32):
            assert time.monotonic() < deadline
            fast.take_audio(), slow.take_audio()
            time.sleep(0.001)
    finally:
        scheduler.stop(timeout=10)
    # (streams, samples, steps) per engine call: both joiners' one-frame first chunks together; then
    # the fast stream's 4 frames beside the slow one's last frame, each its own steps; then its last 4.
    assert calls == [(2, 32, None), (2, 128, [128, 32]), (1, 128, None)]
    seconds = scheduler.seconds
    assert scheduler.engine_calls == 3 and scheduler.turns == 3
    assert 0 < seconds["engine"] and 0 < seconds["conditioning"] and seconds["engine"] + seconds["conditioning"] < seconds["turn"]


def test_a_stream_opening_mid_turn_gets_its_first_frame_at_the_next_frame_boundary(vocoder):
    scheduler = Scheduler(vocoder, max_streams=4, chunk_frames=4)
    busy = scheduler.open(1)
    busy.put(torch.zeros(MELS, 8))
    late, seen = [], []
    original = scheduler._session.step

    def step(*args, **kwargs):
        seen.append((busy.samples_out, late[0].samples_out if late else None))
        if len(seen) == 3:  # inside the busy stream's 4-frame chunk, called a frame at a time
            late.append(scheduler.open(2))
            late[0].put(torch.zeros(MELS, 2))
        return original(*args, **kwargs)

    scheduler._session.step = step
    try:
        scheduler.start()
        deadline = time.monotonic() + 30
        while not (late and late[0].samples_out == 2 * 32 and busy.samples_out == 8 * 32):
            assert time.monotonic() < deadline
            busy.take_audio(), late and late[0].take_audio()
            time.sleep(0.001)
    finally:
        scheduler.stop(timeout=10)
    # Calls: busy's first frame; two frames of its 4-frame chunk (the late stream opens in the
    # second); the late stream's first frame, delivered before busy's two remaining frames run.
    assert seen[4] == (32, 32)
    # Then busy's last 3 frames, the late stream's last one running beside the first of them.
    assert len(seen) == 1 + 4 + 1 + 3


def test_a_full_scheduler_does_not_split_its_calls(vocoder):
    scheduler = Scheduler(vocoder, max_streams=1, chunk_frames=4)  # join_frames=1, but nobody can join
    only = scheduler.open(3)
    only.put(torch.zeros(MELS, 8))
    only.end()
    calls = []
    original = scheduler._session.step
    scheduler._session.step = lambda slots, cond, *a, **k: calls.append(cond.shape[3]) or original(slots, cond, *a, **k)
    try:
        scheduler.start()
        deadline = time.monotonic() + 30
        while not only.finished:
            assert time.monotonic() < deadline
            only.take_audio()
            time.sleep(0.001)
    finally:
        scheduler.stop(timeout=10)
    assert calls == [32, 128, 96]


def test_streams_cancelled_at_any_moment_give_their_row_back(vocoder):
    scheduler = Scheduler(vocoder, max_streams=1, chunk_frames=2)
    rng = random.Random(5)
    scheduler.start()
    try:
        for seed in range(30):  # cancelled before, during or after their first turn
            stream = scheduler.open(seed)
            stream.put(torch.zeros(MELS, 3))
            time.sleep(rng.choice([0, 0, 0.0005, 0.002, 0.01]))
            stream.cancel()
        mel = torch.randn(MELS, 5)
        last = scheduler.open(99)
        last.put(mel)
        last.end()
        audio, deadline = [], time.monotonic() + 30
        while not last.done:
            assert time.monotonic() < deadline
            audio += last.take_audio()
            time.sleep(0.001)
        audio += last.take_audio()
    finally:
        scheduler.stop(timeout=10)
    assert not last.closed, last.error
    assert torch.equal(torch.cat(audio), vocoder(mel, seed=99))
