"""A host emulation of CLUSTER's hand-off protocol (csrc/cuda/handoff.cuh, MbarrierHandoff, driven by
persistent.cuh's schedule), run in random block interleavings: the mbarrier phases, transaction
counts and single-buffer reuse across steps are where a cluster kernel deadlocks or races, and no
GPU has run this kernel yet.

Each block is a generator that yields at every operation that another block can observe; a
scheduler runs a random ready block. The mbarrier model follows the PTX ISA: an expected
arrival count (1: the consumer's thread 0), a transaction count that st.async's complete_tx lowers
(it may go negative before the consumer's arrive.expect_tx raises it) and a phase that completes
when both reach zero; try_wait.parity(P) succeeds once the phase with parity P has completed.
Checked: no deadlock; a phase completes only with all of its bytes present (never early, never a
byte of the next phase); no st.async overwrites data its consumer has not finished reading; the
transaction count stays within PTX's range; no barrier runs two phases ahead of its waiter.
"""
from __future__ import annotations

import random

import pytest

TX_LIMIT = 2**20 - 1


class ProtocolError(AssertionError):
    pass


class Mbarrier:
    def __init__(self):
        self.phase = 0  # phases completed
        self.pending = 1
        self.tx = 0
        self.arrived = {}  # phase -> bytes that arrived in it

    def _complete_if_done(self):
        if self.pending == 0 and self.tx == 0:
            self.phase += 1
            self.pending = 1

    def complete_tx(self, nbytes, phase_of_data):
        if phase_of_data != self.phase:
            raise ProtocolError(f"bytes of phase {phase_of_data} arrived while phase {self.phase} is open")
        self.tx -= nbytes
        self.arrived[self.phase] = self.arrived.get(self.phase, 0) + nbytes
        if abs(self.tx) > TX_LIMIT:
            raise ProtocolError(f"transaction count {self.tx} out of range")
        self._complete_if_done()

    def arrive_expect_tx(self, nbytes):
        self.tx += nbytes
        self.pending -= 1
        if self.pending < 0:
            raise ProtocolError("more arrivals than the barrier expects")
        self._complete_if_done()

    def try_wait_parity(self, phase):
        if self.phase > phase + 1:
            raise ProtocolError(f"barrier ran to phase {self.phase} while its waiter waits for phase {phase}")
        return self.phase == phase + 1


class Buffer:
    """A region of one block's shared memory that one producer fills each phase."""

    def __init__(self, name):
        self.name = name
        self.written = -1  # phase of the data in it
        self.read_done = -1  # last phase its consumer finished reading

    def store(self, phase):
        if self.read_done != phase - 1:
            raise ProtocolError(f"{self.name}: phase {phase} stored while phase {self.read_done + 1} is unread")
        self.written = phase

    def read(self, phase):
        if self.written != phase:
            raise ProtocolError(f"{self.name}: read phase {phase}, holds phase {self.written}")

    def done(self, phase):
        self.read(phase)
        self.read_done = phase


def emulate(layer_blocks, head_blocks, R, S, A, steps, rng, expect_bytes=None):
    """Runs persistent.cuh's CLUSTER schedule; returns the hand-offs made. expect_bytes overrides
    what a consumer announces (to show that a wrong count is caught)."""
    rows = A // head_blocks
    input_bar = [Mbarrier() for _ in range(layer_blocks)]
    skip_bar, hidden_bar = [Mbarrier() for _ in range(head_blocks)], [Mbarrier() for _ in range(head_blocks)]
    logit_bar = Mbarrier()
    x = [Buffer(f"x of layer block {j}") for j in range(layer_blocks)]
    slots = [[Buffer(f"skip slot {j} of head {h}") for j in range(layer_blocks)] for h in range(head_blocks)]
    hidden = [[Buffer(f"z rows of head {g} in head {h}") for g in range(head_blocks)] for h in range(head_blocks)]
    logits = [Buffer(f"logit rows of head {g}") for g in range(head_blocks)]
    announced = expect_bytes or {}
    handoffs = [0]

    def put(bar, buffer, nbytes, phase):
        # One st.async per element; the model stores the region then completes its bytes, the
        # order in which one st.async's write and complete_tx become visible to the waiter.
        buffer.store(phase)
        bar.complete_tx(nbytes, phase)
        handoffs[0] += 1

    def wait(bar, nbytes, phase):
        bar.arrive_expect_tx(nbytes)
        while not bar.try_wait_parity(phase):
            yield "blocked"

    def layer_block(j):
        for t in range(steps):
            yield from wait(input_bar[j], announced.get("input", R * 4), t)
            x[j].read(t)  # the chain reads and updates x in place
            yield "chain"
            if j + 1 < layer_blocks:  # st.async of the local x to block j+1
                x[j].read(t)
                put(input_bar[j + 1], x[j + 1], R * 4, t)
                yield "sent x"
            x[j].done(t)
            for h in range(head_blocks):
                put(skip_bar[h], slots[h][j], S * 4, t)
                yield "sent skip share"

    def head_block(h):
        sampler = h == 0
        if sampler:
            put(input_bar[0], x[0], R * 4, 0)
            yield "sent x0"
        for t in range(steps):
            yield from wait(skip_bar[h], announced.get("skip", layer_blocks * S * 4), t)
            for j in range(layer_blocks):
                slots[h][j].done(t)
            yield "z"
            for g in range(head_blocks):
                put(hidden_bar[g], hidden[g][h], rows * 4, t)
                yield "sent z rows"
            yield from wait(hidden_bar[h], announced.get("hidden", A * 4), t)
            for g in range(head_blocks):
                hidden[h][g].done(t)
            put(logit_bar, logits[h], rows * 4, t)
            yield "sent logit rows"
            if sampler:
                yield from wait(logit_bar, announced.get("logits", A * 4), t)
                for g in range(head_blocks):
                    logits[g].done(t)
                yield "sampled"
                if t + 1 < steps:
                    put(input_bar[0], x[0], R * 4, t + 1)
                    yield "sent x0"

    blocks = [layer_block(j) for j in range(layer_blocks)] + [head_block(h) for h in range(head_blocks)]
    blocked_rounds = 0
    while blocks:
        block = rng.choice(blocks)
        try:
            state = next(block)
        except StopIteration:
            blocks.remove(block)
            blocked_rounds = 0
            continue
        blocked_rounds = blocked_rounds + 1 if state == "blocked" else 0
        if blocked_rounds > 50 * (len(blocks) + 1) and all_blocked(blocks):
            raise ProtocolError("deadlock: every remaining block waits")
    return handoffs[0]


def all_blocked(blocks):
    """Whether every generator's next step is still 'blocked' (advances each by one poll, which a
    spinning waiter does anyway)."""
    return all(next(block, "done") == "blocked" for block in list(blocks))


CONFIGS = [(1, 1), (2, 1), (3, 2), (7, 2), (9, 4), (14, 2), (8, 8)]


@pytest.mark.parametrize("layer_blocks,head_blocks", CONFIGS)
def test_cluster_handoffs_are_race_and_deadlock_free_in_random_orders(layer_blocks, head_blocks):
    rng = random.Random(1000 * layer_blocks + head_blocks)
    for _ in range(60):
        steps = rng.randint(1, 5)
        handoffs = emulate(layer_blocks, head_blocks, 64, 256, 256, steps, rng)
        # x down the chain, skip shares, the z all-gather, logits, x_0 (one put per element group).
        expected = steps * ((layer_blocks - 1) + layer_blocks * head_blocks + head_blocks ** 2 + head_blocks + 1)
        assert handoffs == expected


@pytest.mark.parametrize("wrong", [{"skip": 256 * 4}, {"hidden": 4}, {"input": 64 * 4 + 4}])
def test_a_wrong_byte_count_is_caught(wrong):
    """The emulation can fail: a consumer that announces too few bytes completes its phase early
    (a later byte then lands in the next phase), too many never completes (deadlock)."""
    rng = random.Random(5)
    with pytest.raises(ProtocolError):
        for _ in range(50):
            emulate(3, 2, 64, 256, 256, 4, rng, expect_bytes=wrong)
