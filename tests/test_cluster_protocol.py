"""A host emulation of CLUSTER's hand-off protocol (csrc/cuda/handoff.cuh, MbarrierHandoff, driven by
persistent.cuh's schedule), run in random block interleavings: the mbarrier phases, transaction
counts, single-buffer reuse across steps and the exit after an abort are where a cluster kernel
deadlocks or races, and no GPU has run this kernel yet.

Two block sets run through the one emulator (`emulate`). CLUSTER's: layer blocks (the chain: x in,
x on to the next, a skip share of S rows to every head) and head blocks (the first samples; skip
wait, z all-gather, logits to the sampler, x_0 to layer block 0); CLUSTER_FOLD, CLUSTER_ROLES and
CLUSTER_BATCHED run this schedule too. CLUSTER_SKIP_BLOCKS's (csrc/cuda/NOTES.md,
issue 24 item 2) adds skip blocks and splits the skip rows: each chain block sends the gated h of
each of its layers (R floats) into every skip block's single h buffer and a share of rows
[0, c) to every head; each skip block waits for all L layers' h of the step (site 8,
kInputCounter: L*R*4 bytes) and sends its q rows of [c, S) to every head; a head waits for
(layer_blocks*c + S - c)*4 bytes. Head rows and skip rows may be uneven (86/85/85 at A = 256 over 3
heads). The single h buffer is safe only because a chain block sends h of step t + 1 after its
input x of t + 1, which follows the sample of step t, hence every head's read of every skip share
of t, which each skip block sends after its last read of h of t; the model checks that chain.

Each block is a generator that yields at every operation that another block can observe; a
scheduler runs a random block (in some runs one of them slowly) or lands a random st.async in
flight; a deadlock: every block polled blocked over 50 times, nothing in flight. The mbarrier model
follows the PTX ISA: an expected arrival count (1: the consumer's thread 0), a transaction count
that st.async's complete_tx lowers (it may go negative before the consumer's arrive.expect_tx
raises it) and a phase that completes when both reach zero; try_wait.parity(P) succeeds once the
phase with parity P has completed. An st.async is delivered late, in any order: its bytes land in
the consumer's buffer and complete on its mbarrier at a random later point, possibly after the
producer left the kernel.

The abort path (issue 24): at a random point one wait times out (it announced its bytes and gives
up), raising the abort; every other wait then gives up at a random later poll, unless its phase
completed first (bounded_wait looks at the barrier before the abort). Each block then runs the
kernel's exit (persistent.cuh: add_sent_bytes, the final cluster barrier, drain_handoffs with
MbarrierHandoff::drain), computed here from the block's stop point exactly as the kernel does.

Checked: no deadlock (the drain's waits included); a phase completes only with all of its bytes
present (never early, never a byte of the next phase); no st.async overwrites data its consumer
has not finished reading; the transaction count stays within PTX's range; no barrier runs two
phases ahead of its waiter; the drain's byte counts are within one phase; and no block exits
while an st.async into its shared memory is still in flight (nor does one land after it exited).
Planted bugs (wrong byte counts, a wrong exit, skip warps or a chain block that do not wait) show
that each check can fail.
"""
from __future__ import annotations

import random
import re
from collections import Counter

import pytest

TX_LIMIT = 2**20 - 1
# status.h's WaitSite values of CLUSTER's waits; within a step a block waits at increasing sites.
# H_INPUT: kSitePersistentSkipInput, a skip block waiting for the layers' gated activations.
NONE, INPUT, SKIP, HIDDEN, LOGITS, H_INPUT = 0, 4, 5, 6, 7, 8
SLOT = {INPUT: 0, SKIP: 1, HIDDEN: 2, LOGITS: 3, H_INPUT: 0}  # persistent_layout.h's k*Counter


class ProtocolError(AssertionError):
    pass


class Mbarrier:
    def __init__(self, name):
        self.name = name
        self.phase = 0  # phases completed
        self.pending = 1
        self.tx = 0
        self.arrived = {}  # phase -> bytes that arrived in it

    def _complete_if_done(self):
        if self.pending == 0 and self.tx == 0:
            self.phase += 1
            self.pending = 1

    def _count(self, nbytes):
        self.tx -= nbytes
        if abs(self.tx) > TX_LIMIT:
            raise ProtocolError(f"{self.name}: transaction count {self.tx} out of range")
        self._complete_if_done()

    def complete_tx(self, nbytes, phase_of_data):
        """The complete_tx of an st.async carrying data of `phase_of_data`."""
        if phase_of_data != self.phase:
            raise ProtocolError(f"{self.name}: bytes of phase {phase_of_data} arrived while phase {self.phase} is open")
        self.arrived[self.phase] = self.arrived.get(self.phase, 0) + nbytes
        self._count(nbytes)

    def complete_tx_local(self, nbytes):
        """mbarrier.complete_tx by the owner: counts bytes that carry no data."""
        self._count(nbytes)

    def arrive_expect_tx(self, nbytes):
        self.tx += nbytes
        self.pending -= 1
        if self.pending < 0:
            raise ProtocolError(f"{self.name}: more arrivals than the barrier expects")
        self._complete_if_done()

    def try_wait_parity(self, phase):
        if self.phase > phase + 1:
            raise ProtocolError(f"{self.name}: ran to phase {self.phase} while its waiter waits for phase {phase}")
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


def phases_done(stop, site, steps):
    """persistent.cuh's phases_done: phases of the wait at `site` completed before the block stopped."""
    step, stopped_at = stop
    return steps if stopped_at == NONE else step + (1 if site < stopped_at else 0)


# The block exits emulated: the kernel's (drain), the one before issue 24 (barrier: the final
# cluster barrier, then exit), and three wrong drains that must be caught.
EXITS = ("drain", "barrier", "drain without complete_tx", "drain counting x_0 after the last step",
         "drain without the skip blocks' input")


# How a layer block is run: CLUSTER's (one role), CLUSTER_ROLES's chain and skip warps interleaved
# at random, and a roles block whose skip warps do not wait for the chain (must be caught).
ROLES = (None, "roles", "roles without ready")


def shares(total, parts, unit=1):
    """The base/extra split of `total` rows (or layers) over `parts` blocks in whole units, as the
    planners split them (persistent_layout.h, split_rows): the first (total / unit) % parts blocks
    hold one unit more."""
    units = total // unit
    return [units // parts * unit + (unit if k < units % parts else 0) for k in range(parts)]


def emulate(layer_blocks, head_blocks, R, S, A, steps, rng, expect_bytes=None, abort_at=None, exit="drain",
            roles=None, skip_blocks=0, layers=None, chain_rows=None, skip_unit=1, early_h=False):
    """Runs persistent.cuh's CLUSTER schedule and exit; returns statistics of the run.
    expect_bytes: {site: bytes} overrides what a consumer announces (to show that a wrong count is
    caught);
    abort_at: (round, site): from that scheduler round on, the next wait blocked at that site times
    out (None: none does). roles: one of ROLES.
    CLUSTER_SKIP_BLOCKS (csrc/cuda/NOTES.md, issue 24 item 2): skip_blocks > 0 blocks hold W_skip rows
    [chain_rows, S) of all `layers` layers; the chain blocks (layer_blocks, `layers` split over
    them) keep rows [0, chain_rows) and send each layer's h to every skip block; skip rows are split
    in units of skip_unit rows, and chain_rows = 0 leaves the chain blocks no share to send. early_h: a chain
    block sends its h before its input wait (must be caught). With skip_blocks = 0 (chain_rows = S)
    this is CLUSTER's schedule."""
    assert exit in EXITS and roles in ROLES
    assert not (skip_blocks and roles), "CLUSTER_SKIP_BLOCKS does not combine with roles"
    layers = layer_blocks if layers is None else layers
    chain_rows = S if chain_rows is None else chain_rows
    assert (chain_rows < S) == (skip_blocks > 0) and layers >= layer_blocks
    head_rows = shares(A, head_blocks)
    skip_rows = shares(S - chain_rows, skip_blocks, skip_unit) if skip_blocks else []
    counts = shares(layers, layer_blocks)  # layers of each chain block, from layer sum(counts[:j])
    heads = range(layer_blocks, layer_blocks + head_blocks)  # cluster ranks
    skippers = range(layer_blocks + head_blocks, layer_blocks + head_blocks + skip_blocks)
    blocks_total = layer_blocks + head_blocks + skip_blocks
    phase_bytes = {INPUT: R * 4, H_INPUT: layers * R * 4, SKIP: (layer_blocks * chain_rows + S - chain_rows) * 4,
                   HIDDEN: A * 4, LOGITS: A * 4}
    bars = [{INPUT: Mbarrier(f"input barrier of layer block {j}")} for j in range(layer_blocks)]
    bars += [{SKIP: Mbarrier(f"skip barrier of head {h}"), HIDDEN: Mbarrier(f"z barrier of head {h}")}
             for h in range(head_blocks)]
    bars[layer_blocks][LOGITS] = Mbarrier("logit barrier of the sampler")
    bars += [{H_INPUT: Mbarrier(f"h barrier of skip block {k}")} for k in range(skip_blocks)]
    sent = [Counter() for _ in range(blocks_total)]  # each block's kSentBytes words, by site
    x = [Buffer(f"x of layer block {j}") for j in range(layer_blocks)]
    # A head's slot of each producer: the chain blocks' rows [0, chain_rows), then the skip blocks'.
    slots = [[Buffer(f"skip slot {p} of head {h}") for p in range(layer_blocks + skip_blocks)]
             for h in range(head_blocks)]
    hidden = [[Buffer(f"z rows of head {g} in head {h}") for g in range(head_blocks)] for h in range(head_blocks)]
    logits = [Buffer(f"logit rows of head {g}") for g in range(head_blocks)]
    h_in = [[Buffer(f"h of layer {i} in skip block {k}") for i in range(layers)] for k in range(skip_blocks)]
    announced = {**phase_bytes, **(expect_bytes or {})}  # bytes per phase, by wait site
    in_flight = []  # (consumer block, site, buffer, bytes, phase) of st.async not landed yet
    exited = set()
    stats = Counter()
    state = {"round": 0, "abort": False, "at_barrier": 0}

    def put(consumer, site, buffer, nbytes, phase):
        in_flight.append((consumer, site, buffer, nbytes, phase))

    def land(i):
        consumer, site, buffer, nbytes, phase = in_flight.pop(i)
        if consumer in exited:
            raise ProtocolError(f"an st.async landed in block {consumer}'s shared memory after it exited")
        # One st.async's write and its complete_tx become visible to the waiter in this order.
        buffer.store(phase)
        bars[consumer][site].complete_tx(nbytes, phase)
        stats["handoffs"] += 1

    def wait(block, site, phase):
        """MbarrierHandoff::wait through bounded_wait: False when it gave up."""
        bar = bars[block][site]
        bar.arrive_expect_tx(announced[site])
        while not bar.try_wait_parity(phase):
            if not state["abort"] and abort_at is not None and state["round"] >= abort_at[0] and site == abort_at[1]:
                state["abort"] = True  # this wait timed out
                stats[f"timed out at site {site}"] += 1
                return False
            if state["abort"] and rng.random() < 0.3:
                return False
            yield "blocked"
        return True

    def send_h(i, t):
        """Layer i's gated h to every skip block (st.async)."""
        for k in range(skip_blocks):
            put(skippers[k], H_INPUT, h_in[k][i], R * 4, t)
            yield "sent h"

    def layer_block(j):
        own_layers = range(sum(counts[:j]), sum(counts[:j + 1]))
        for t in range(steps):
            if early_h:
                for i in own_layers:
                    yield from send_h(i, t)
            if not (yield from wait(j, INPUT, t)):
                return t, INPUT
            # The chain, layer by layer: W_cur x (the network's last layer: the block's last read of
            # x), h to the skip blocks, x += W_res h (every layer but the network's last).
            for i in own_layers:
                x[j].read(t)
                if i == layers - 1:
                    x[j].done(t)
                yield "gate"
                if not early_h:
                    yield from send_h(i, t)
                if i < layers - 1:
                    x[j].read(t)
                    yield "residual"
            if j + 1 < layer_blocks:  # st.async of the local x to block j+1: its last read of x
                x[j].read(t)
                put(j + 1, INPUT, x[j + 1], R * 4, t)
                x[j].done(t)
                yield "sent x"
            for h in heads if chain_rows else ():  # (no W_skip row here: no share, no st.async)
                put(h, SKIP, slots[h - layer_blocks][j], chain_rows * 4, t)
                yield "sent skip share"
        return steps, NONE

    def roles_layer_block(j):
        """CLUSTER_ROLES's layer block j: the chain (input wait, the layers, x sent on) and the skip
        warps (the share, once the chain has its last layer's h) as two threads of control that
        meet only at the named barriers, advanced in a random order. The skip share may thus leave
        before x is sent on (nothing orders them); the next x must still never overwrite this
        block's x before the chain sent it on."""
        mark = {"ready": -1, "consumed": -1, "gave_up": None}

        def chain():
            for t in range(steps):
                ok = yield from wait(j, INPUT, t)
                while mark["consumed"] < t - 1:  # the consumed barrier
                    yield "blocked"
                if not ok:
                    mark["gave_up"] = t  # and arrives at ready(0) once more
                    return t, INPUT
                x[j].read(t)
                yield "chain"
                if j + 1 == layer_blocks:
                    x[j].done(t)  # its last read of x: the last layer's W_cur product, before ready
                mark["ready"] = t  # ready(i) of the block's layers
                if j + 1 < layer_blocks:
                    x[j].read(t)
                    put(j + 1, INPUT, x[j + 1], R * 4, t)
                    x[j].done(t)  # each st.async takes its x value as it issues: the last read
                    yield "sent x"
            return steps, NONE

        def skip():
            for t in range(steps):
                while roles != "roles without ready" and mark["ready"] < t and mark["gave_up"] != t:
                    yield "blocked"
                if mark["gave_up"] == t:
                    return
                for h in range(head_blocks):
                    put(layer_blocks + h, SKIP, slots[h][j], S * 4, t)
                    yield "sent skip share"
                mark["consumed"] = t

        parts = [chain(), skip()]
        chain_part, stop = parts[0], None
        while parts:
            order = rng.sample(parts, len(parts))
            outcome = "blocked"
            for part in order:
                try:
                    outcome = next(part)
                except StopIteration as done:
                    if part is chain_part:
                        stop = done.value
                    parts.remove(part)
                    outcome = "progress"
                    break
                if outcome != "blocked":
                    break
            yield outcome
        return stop

    def skip_block(k):
        me = skippers[k]
        for t in range(steps):
            if not (yield from wait(me, H_INPUT, t)):
                return t, H_INPUT
            for i in range(layers):
                h_in[k][i].done(t)  # the skip product's last read of h, then the block barrier
            yield "skip product"
            for h in heads:
                put(h, SKIP, slots[h - layer_blocks][layer_blocks + k], skip_rows[k] * 4, t)
                yield "sent skip share"
        return steps, NONE

    def head_block(h):
        me = layer_blocks + h
        sampler = h == 0
        if sampler:
            put(0, INPUT, x[0], R * 4, 0)
            yield "sent x0"
        for t in range(steps):
            if not (yield from wait(me, SKIP, t)):
                return t, SKIP
            for slot in slots[h] if chain_rows else slots[h][layer_blocks:]:
                slot.done(t)
            yield "z"
            for g in range(head_blocks):
                put(layer_blocks + g, HIDDEN, hidden[g][h], head_rows[h] * 4, t)
                yield "sent z rows"
            if not (yield from wait(me, HIDDEN, t)):
                return t, HIDDEN
            for g in range(head_blocks):
                hidden[h][g].done(t)
            put(layer_blocks, LOGITS, logits[h], head_rows[h] * 4, t)
            yield "sent logit rows"
            if sampler:
                if not (yield from wait(me, LOGITS, t)):
                    return t, LOGITS
                for g in range(head_blocks):
                    logits[g].done(t)
                yield "sampled"
                if t + 1 < steps:
                    put(0, INPUT, x[0], R * 4, t + 1)
                    yield "sent x0"
        return steps, NONE

    def add_sent_bytes(block, stop):
        """persistent.cuh's add_sent_bytes (atomics, complete before the cluster barrier)."""
        if block < layer_blocks:
            phases = phases_done(stop, INPUT, steps)
            if block + 1 < layer_blocks:
                sent[block + 1][INPUT] += phases * R * 4
            for k in skippers:
                sent[k][H_INPUT] += phases * counts[block] * R * 4
            for h in heads:
                sent[h][SKIP] += phases * chain_rows * 4
        elif block in skippers:
            for h in heads:
                sent[h][SKIP] += phases_done(stop, H_INPUT, steps) * skip_rows[block - skippers[0]] * 4
        else:
            rows = head_rows[block - layer_blocks]
            for h in heads:
                sent[h][HIDDEN] += phases_done(stop, SKIP, steps) * rows * 4
            sent[layer_blocks][LOGITS] += phases_done(stop, HIDDEN, steps) * rows * 4
            if block == layer_blocks:
                sampled = phases_done(stop, LOGITS, steps)
                x0 = sampled + 1 if exit == "drain counting x_0 after the last step" else min(sampled + 1, steps)
                sent[0][INPUT] += x0 * R * 4

    def drain_handoffs(block, stop):
        """persistent.cuh's drain_handoffs and MbarrierHandoff::drain."""
        for site, bar in bars[block].items():
            if site == H_INPUT and exit == "drain without the skip blocks' input":
                continue
            phase = phases_done(stop, site, steps)
            expected = phase_bytes[site] if stop[1] == site else 0
            sent_now = sent[block][site] - phase * phase_bytes[site]
            if not 0 <= sent_now <= phase_bytes[site]:
                raise ProtocolError(f"{bar.name}: {sent_now} bytes counted in its open phase {phase}")
            if expected == 0 and sent_now == 0:
                continue
            stats["phases drained"] += 1
            if expected == 0:
                bar.arrive_expect_tx(sent_now)
            elif expected > sent_now and exit != "drain without complete_tx":
                bar.complete_tx_local(expected - sent_now)
            while not bar.try_wait_parity(phase):
                yield "blocked"

    def block(b):
        if b in heads:
            stop = yield from head_block(b - layer_blocks)
        elif b in skippers:
            stop = yield from skip_block(b - skippers[0])
        else:
            stop = yield from (roles_layer_block(b) if roles else layer_block(b))
        if stop[1] != NONE:
            stats["blocks that gave up"] += 1
        if exit != "barrier":
            add_sent_bytes(b, stop)
        state["at_barrier"] += 1
        while state["at_barrier"] < blocks_total:  # the final cluster.sync()
            yield "blocked"
        stats["bytes in flight at the final barrier"] += sum(item[3] for item in in_flight if item[0] == b)
        if exit != "barrier":
            yield from drain_handoffs(b, stop)
        left = sum(item[3] for item in in_flight if item[0] == b)
        if left:
            raise ProtocolError(f"block {b} exits with {left} bytes of st.async in flight into its shared memory")
        exited.add(b)

    blocks = [block(b) for b in range(blocks_total)]
    land_chance = rng.choice([0.05, 0.3, 0.8])  # how late st.async lands, per run
    # In a third of the runs one block runs slowly: a long chain of hand-offs, such as the one that
    # protects a single buffer from the next step, then completes between two of its operations
    # (uniform choices almost never let it). It runs anyway once every other block found itself
    # blocked twice since anything moved, so that no rounds are spent waiting for it.
    slow, slow_chance = rng.choice(blocks), rng.choice([1, 1, 0.01])
    idle = Counter()  # polls of each block that found it blocked since anything moved
    while blocks:
        state["round"] += 1
        if in_flight and rng.random() < land_chance:
            land(rng.randrange(len(in_flight)))
            idle.clear()
            continue
        chosen = rng.choice(blocks)
        if chosen is slow and rng.random() >= slow_chance and any(idle[b] < 2 for b in blocks if b is not slow):
            continue
        try:
            outcome = next(chosen)
        except StopIteration:
            blocks.remove(chosen)
            idle.clear()
            continue
        if outcome != "blocked":
            idle.clear()
            continue
        idle[chosen] += 1
        # A wait gives up after the abort at a poll with chance 0.3, so more than 50 polls of every
        # block that found it blocked, nothing landing or moving between, are a deadlock (a false
        # alarm has chance 0.7**50 per such wait).
        if idle[chosen] > 50 and not in_flight and all(idle[block] > 50 for block in blocks):
            raise ProtocolError("deadlock: every remaining block waits and no st.async is in flight")
    while in_flight:  # st.async into blocks that exited
        land(0)
    stats["rounds"] = state["round"]
    return stats


# (7, 2): CLUSTER's split of R64/S256/A256 float16 L20; (10, 2): CLUSTER_FOLD's (fewer layers per block).
CONFIGS = [(1, 1), (2, 1), (3, 2), (7, 2), (10, 2), (9, 4), (14, 2), (8, 8)]


# CLUSTER_SKIP_BLOCKS's splits: (layer_blocks, head_blocks, skip_blocks, layers, chain_rows, S, A,
# skip_unit: the rows one warp of the skip product computes, SkipBlocksUnits::kSkip).
SKIP_SPLITS = [
    (10, 3, 3, 20, 124, 256, 256, 2),  # the target, float32 R64/S256/A256 L20: head rows 86/85/85, skip rows 44
    (4, 2, 3, 20, 32, 256, 256, 4),  # the planner's float16 R64/S256/A256 L20: skip rows 76/76/72
    (2, 2, 2, 3, 125, 256, 255, 1),  # layers 2/1, skip rows 66/65, head rows 128/127
    (1, 3, 1, 2, 200, 256, 256, 1),  # one chain block (its x only from the sampler), one skip block
    (3, 1, 4, 5, 1, 256, 256, 1),  # the sampler the only head; layers 2/2/1, skip rows 64/64/64/63
    (2, 2, 2, 4, 0, 256, 256, 4),  # c = 0: every W_skip row in skip blocks, no share from the chain
]
TARGET = SKIP_SPLITS[0]


def handoffs_per_step(layer_blocks, head_blocks, skip_blocks=0, layers=0, chain_rows=None):
    # x down the chain, skip shares (none from the chain blocks when they hold no W_skip row), the
    # z all-gather, logits, x_0; h of each layer into each skip block and the skip blocks' shares
    # (one put per element group).
    chain_shares = layer_blocks * head_blocks if chain_rows != 0 else 0
    return ((layer_blocks - 1) + chain_shares + head_blocks ** 2 + head_blocks + 1
            + layers * skip_blocks + skip_blocks * head_blocks)


def emulate_skip_split(split, steps, rng, **kwargs):
    layer_blocks, head_blocks, skip_blocks, layers, chain_rows, S, A, skip_unit = split
    return emulate(layer_blocks, head_blocks, 64, S, A, steps, rng, skip_blocks=skip_blocks, layers=layers,
                   chain_rows=chain_rows, skip_unit=skip_unit, **kwargs)


@pytest.mark.parametrize("roles", ROLES[:2], ids=["CLUSTER", "CLUSTER_ROLES"])
@pytest.mark.parametrize("layer_blocks,head_blocks", CONFIGS)
def test_cluster_handoffs_are_race_and_deadlock_free_in_random_orders(layer_blocks, head_blocks, roles):
    rng = random.Random(1000 * layer_blocks + head_blocks)
    for _ in range(60):
        steps = rng.randint(1, 5)
        stats = emulate(layer_blocks, head_blocks, 64, 256, 256, steps, rng, roles=roles)
        assert stats["handoffs"] == steps * handoffs_per_step(layer_blocks, head_blocks)
        assert stats["phases drained"] == 0 and stats["blocks that gave up"] == 0  # a full run leaves nothing open


@pytest.mark.parametrize("roles", ROLES[:2], ids=["CLUSTER", "CLUSTER_ROLES"])
@pytest.mark.parametrize("layer_blocks,head_blocks", CONFIGS)
def test_an_abort_anywhere_leaves_no_st_async_in_flight_at_exit(layer_blocks, head_blocks, roles):
    """Random abort points and orders: every block drains what can still land before it exits.
    The totals show that the runs reach the hazard: timeouts at every kind of wait, bytes still in
    flight at the final cluster barrier, and phases the drain had to complete."""
    rng = random.Random(7000 + 100 * layer_blocks + head_blocks)
    totals = Counter()
    for _ in range(80):
        steps = rng.randint(1, 4)
        rounds = steps * handoffs_per_step(layer_blocks, head_blocks) * 12  # about a whole run's
        abort_at = (rng.randrange(rounds), rng.choice([INPUT, SKIP, HIDDEN, LOGITS]))
        totals += emulate(layer_blocks, head_blocks, 64, 256, 256, steps, rng, abort_at=abort_at, roles=roles)
    assert {f"timed out at site {site}" for site in (INPUT, SKIP, HIDDEN, LOGITS)} <= set(totals), totals
    assert totals["bytes in flight at the final barrier"] > 0 and totals["phases drained"] > 0, totals


@pytest.mark.parametrize("exit,failure", [("barrier", "exits with .* in flight"),
                                          ("drain without complete_tx", "deadlock"),
                                          ("drain counting x_0 after the last step", "deadlock")])
def test_an_exit_that_does_not_drain_exactly_is_caught(exit, failure):
    """The emulation can fail on the exit: without the drain (the protocol before issue 24) a
    block leaves with st.async in flight into it; a drain that does not complete the bytes no one
    will send waits forever; one that counts a phase never sent waits forever too."""
    rng = random.Random(11)
    with pytest.raises(ProtocolError, match=failure):
        for _ in range(200):
            steps = rng.randint(1, 4)
            abort_at = (rng.randrange(steps * 180), rng.choice([INPUT, SKIP, HIDDEN, LOGITS]))
            emulate(3, 2, 64, 256, 256, steps, rng, abort_at=abort_at, exit=exit)


@pytest.mark.parametrize("wrong", [{SKIP: 256 * 4}, {HIDDEN: 4}, {INPUT: 64 * 4 + 4}])
def test_a_wrong_byte_count_is_caught(wrong):
    """The emulation can fail: a consumer that announces too few bytes completes its phase early
    (a later byte then lands in the next phase), too many never completes (deadlock)."""
    rng = random.Random(5)
    with pytest.raises(ProtocolError):
        for _ in range(50):
            emulate(3, 2, 64, 256, 256, 4, rng, expect_bytes=wrong)


def test_roles_whose_skip_warps_do_not_wait_for_the_chain_are_caught():
    """The roles model can fail: skip warps that send a share without waiting for the chain's h
    send the next step's share into a slot its head has not read yet."""
    rng = random.Random(13)
    with pytest.raises(ProtocolError, match="stored while"):
        for _ in range(50):
            emulate(3, 2, 64, 256, 256, 4, rng, roles="roles without ready")


@pytest.mark.parametrize("streams", [2, 8])
def test_several_streams_per_cluster_scale_every_byte_count(streams):
    """CLUSTER_BATCHED (k streams per cluster): the same schedule, each hand-off carrying the k
    streams' rows, each announced, sent and drained count k times CLUSTER's. Every byte count here
    is linear in R, S or A, so the schedule with R, S and A scaled by k is that protocol; the
    splits are the target network's at k = 2 (7 + 2 blocks) and k = 8 (10 + 4), full runs and
    aborts, within PTX's transaction-count range."""
    rng = random.Random(streams)
    totals = Counter()
    for layer_blocks, head_blocks in [(7, 2), (10, 4)]:
        for _ in range(20):
            steps = rng.randint(1, 3)
            rounds = steps * handoffs_per_step(layer_blocks, head_blocks) * 12
            abort_at = None
            if rng.random() < 0.7:
                abort_at = (rng.randrange(rounds), rng.choice([INPUT, SKIP, HIDDEN, LOGITS]))
            stats = emulate(layer_blocks, head_blocks, 64 * streams, 256 * streams, 256 * streams, steps, rng,
                            abort_at=abort_at)
            if abort_at is None:
                assert stats["handoffs"] == steps * handoffs_per_step(layer_blocks, head_blocks)
            totals += stats
    assert totals["bytes in flight at the final barrier"] > 0 and totals["phases drained"] > 0, totals


@pytest.mark.parametrize("split", SKIP_SPLITS, ids=lambda split: "+".join(map(str, split[:3])) + f"-c{split[4]}")
def test_skip_blocks_handoffs_are_race_and_deadlock_free_in_random_orders(split):
    """CLUSTER_SKIP_BLOCKS: the single h buffer of each skip block is rewritten each step by every
    chain block, the heads' slots by chain and skip blocks, rows uneven."""
    rng = random.Random(sum(split))
    for _ in range(30):
        steps = rng.randint(1, 4)
        stats = emulate_skip_split(split, steps, rng)
        assert stats["handoffs"] == steps * handoffs_per_step(*split[:5])
        assert stats["phases drained"] == 0 and stats["blocks that gave up"] == 0


@pytest.mark.parametrize("split", SKIP_SPLITS, ids=lambda split: "+".join(map(str, split[:3])) + f"-c{split[4]}")
def test_an_abort_anywhere_with_skip_blocks_leaves_no_st_async_in_flight_at_exit(split):
    """The exit of CLUSTER_SKIP_BLOCKS: the chain blocks' h and the skip blocks' shares counted in
    add_sent_bytes, each skip block's h slot drained; timeouts at every kind of wait."""
    rng = random.Random(9000 + sum(split))
    totals = Counter()
    for _ in range(60):
        steps = rng.randint(1, 3)
        rounds = steps * handoffs_per_step(*split[:5]) * 12
        abort_at = (rng.randrange(rounds), rng.choice([INPUT, H_INPUT, SKIP, HIDDEN, LOGITS]))
        totals += emulate_skip_split(split, steps, rng, abort_at=abort_at)
    assert {f"timed out at site {site}" for site in (INPUT, H_INPUT, SKIP, HIDDEN, LOGITS)} <= set(totals), totals
    assert totals["bytes in flight at the final barrier"] > 0 and totals["phases drained"] > 0, totals


@pytest.mark.parametrize("split", [TARGET, SKIP_SPLITS[2]], ids=["target", "small"])
@pytest.mark.parametrize("bug,every,some", [
    # the skip block expects one layer's h per chain block, or one layer more than there are
    (lambda split: {"expect_bytes": {H_INPUT: split[0] * 64 * 4}}, "read phase .* holds phase|arrived while", None),
    (lambda split: {"expect_bytes": {H_INPUT: (split[3] + 1) * 64 * 4}}, "deadlock", None),
    (lambda split: {"expect_bytes": {SKIP: split[0] * split[4] * 4}}, r"skip (slot \d+|barrier) of head|deadlock",
     None),
    # each head expects z rows of head_blocks equal heads (today's planner's A // head_blocks)
    (lambda split: {"expect_bytes": {HIDDEN: split[1] * (split[6] // split[1]) * 4}},
     "deadlock", None),
    (lambda split: {"early_h": True}, "stored while", "^h of layer"),
    (lambda split: {"exit": "drain without the skip blocks' input"}, "exits with .* in flight", None),
], ids=["h count too small", "h count too large", "head without skip shares", "z count of equal rows",
        "h before the input wait", "drain without the h slot"])
def test_skip_blocks_protocol_bugs_are_caught(split, bug, every, some):
    """The emulation of CLUSTER_SKIP_BLOCKS can fail, each planted bug for its own reason in each of
    the first five runs that fail (`some` of them at the site of the bug): a skip block announcing
    too few h bytes completes its phase before the last h arrived, too many never completes; a
    head announcing the chain shares only completes before the skip shares arrived (or, when a
    share overshoots its count, never); a head that counts z rows as if every head had
    A // head_blocks (86/85/85 is not 3 x 85) never completes (the z rows overshoot); a chain block that sends h before its input wait
    overwrites h of the previous step that a skip block is still reading (or, downstream, the skip
    share of the previous step in a head's slot); an exit that does not drain the skip blocks' h
    slot leaves with st.async into it in flight (aborts needed)."""
    kwargs = bug(split)
    rng = random.Random(17)
    failures = []
    for _ in range(200):
        steps = rng.randint(1, 4)
        abort_at = None
        if "exit" in kwargs:
            rounds = steps * handoffs_per_step(*split[:5]) * 12
            abort_at = (rng.randrange(rounds), rng.choice([INPUT, H_INPUT, SKIP, HIDDEN, LOGITS]))
        try:
            emulate_skip_split(split, steps, rng, abort_at=abort_at, **kwargs)
        except ProtocolError as error:
            failures.append(str(error))
            if len(failures) == 5:
                break
    assert failures and all(re.search(every, failure) for failure in failures), failures
    assert any(re.search(some or every, failure) for failure in failures), failures
