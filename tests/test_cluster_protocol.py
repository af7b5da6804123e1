"""A host emulation of CLUSTER's hand-off protocol (csrc/cuda/handoff.cuh, MbarrierHandoff, driven by
persistent.cuh's schedule), run in random block interleavings: the mbarrier phases, transaction
counts, single-buffer reuse across steps and the exit after an abort are where a cluster kernel
deadlocks or races, and no GPU has run this kernel yet.

Each block is a generator that yields at every operation that another block can observe; a
scheduler runs a random ready block or lands a random st.async in flight. The mbarrier model
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
"""
from __future__ import annotations

import random
from collections import Counter

import pytest

TX_LIMIT = 2**20 - 1
# status.h's WaitSite values of CLUSTER's waits; within a step a block waits at increasing sites.
NONE, INPUT, SKIP, HIDDEN, LOGITS = 0, 4, 5, 6, 7
SLOT = {INPUT: 0, SKIP: 1, HIDDEN: 2, LOGITS: 3}  # persistent_layout.h's k*Counter


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
# cluster barrier, then exit), and two wrong drains that must be caught.
EXITS = ("drain", "barrier", "drain without complete_tx", "drain counting x_0 after the last step")


# How a layer block is run: CLUSTER's (one role), CLUSTER_ROLES's chain and skip warps interleaved
# at random, and a roles block whose skip warps do not wait for the chain (must be caught).
ROLES = (None, "roles", "roles without ready")


def emulate(layer_blocks, head_blocks, R, S, A, steps, rng, expect_bytes=None, abort_at=None, exit="drain",
            roles=None):
    """Runs persistent.cuh's CLUSTER schedule and exit; returns statistics of the run.
    expect_bytes overrides what a consumer announces (to show that a wrong count is caught);
    abort_at: (round, site): from that scheduler round on, the next wait blocked at that site times
    out (None: none does). roles: one of ROLES."""
    assert exit in EXITS and roles in ROLES
    rows = A // head_blocks
    blocks_total = layer_blocks + head_blocks
    bars = [{INPUT: Mbarrier(f"input barrier of layer block {j}")} for j in range(layer_blocks)]
    bars += [{SKIP: Mbarrier(f"skip barrier of head {h}"), HIDDEN: Mbarrier(f"z barrier of head {h}")}
             for h in range(head_blocks)]
    bars[layer_blocks][LOGITS] = Mbarrier("logit barrier of the sampler")
    sent = [Counter() for _ in range(blocks_total)]  # each block's kSentBytes words, by site
    x = [Buffer(f"x of layer block {j}") for j in range(layer_blocks)]
    slots = [[Buffer(f"skip slot {j} of head {h}") for j in range(layer_blocks)] for h in range(head_blocks)]
    hidden = [[Buffer(f"z rows of head {g} in head {h}") for g in range(head_blocks)] for h in range(head_blocks)]
    logits = [Buffer(f"logit rows of head {g}") for g in range(head_blocks)]
    announced = expect_bytes or {}
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

    def wait(block, site, nbytes, phase):
        """MbarrierHandoff::wait through bounded_wait: False when it gave up."""
        bar = bars[block][site]
        bar.arrive_expect_tx(nbytes)
        while not bar.try_wait_parity(phase):
            if not state["abort"] and abort_at is not None and state["round"] >= abort_at[0] and site == abort_at[1]:
                state["abort"] = True  # this wait timed out
                stats[f"timed out at site {site}"] += 1
                return False
            if state["abort"] and rng.random() < 0.3:
                return False
            yield "blocked"
        return True

    def layer_block(j):
        for t in range(steps):
            if not (yield from wait(j, INPUT, announced.get("input", R * 4), t)):
                return t, INPUT
            x[j].read(t)  # the chain reads and updates x in place
            yield "chain"
            if j + 1 < layer_blocks:  # st.async of the local x to block j+1
                x[j].read(t)
                put(j + 1, INPUT, x[j + 1], R * 4, t)
                yield "sent x"
            x[j].done(t)
            for h in range(head_blocks):
                put(layer_blocks + h, SKIP, slots[h][j], S * 4, t)
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
                ok = yield from wait(j, INPUT, announced.get("input", R * 4), t)
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

    def head_block(h):
        me = layer_blocks + h
        sampler = h == 0
        if sampler:
            put(0, INPUT, x[0], R * 4, 0)
            yield "sent x0"
        for t in range(steps):
            if not (yield from wait(me, SKIP, announced.get("skip", layer_blocks * S * 4), t)):
                return t, SKIP
            for j in range(layer_blocks):
                slots[h][j].done(t)
            yield "z"
            for g in range(head_blocks):
                put(layer_blocks + g, HIDDEN, hidden[g][h], rows * 4, t)
                yield "sent z rows"
            if not (yield from wait(me, HIDDEN, announced.get("hidden", A * 4), t)):
                return t, HIDDEN
            for g in range(head_blocks):
                hidden[h][g].done(t)
            put(layer_blocks, LOGITS, logits[h], rows * 4, t)
            yield "sent logit rows"
            if sampler:
                if not (yield from wait(me, LOGITS, announced.get("logits", A * 4), t)):
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
            for h in range(head_blocks):
                sent[layer_blocks + h][SKIP] += phases * S * 4
        else:
            for h in range(head_blocks):
                sent[layer_blocks + h][HIDDEN] += phases_done(stop, SKIP, steps) * rows * 4
            sent[layer_blocks][LOGITS] += phases_done(stop, HIDDEN, steps) * rows * 4
            if block == layer_blocks:
                sampled = phases_done(stop, LOGITS, steps)
                x0 = sampled + 1 if exit == "drain counting x_0 after the last step" else min(sampled + 1, steps)
                sent[0][INPUT] += x0 * R * 4

    def drain_handoffs(block, stop):
        """persistent.cuh's drain_handoffs and MbarrierHandoff::drain."""
        phase_bytes = {INPUT: R * 4, SKIP: layer_blocks * S * 4, HIDDEN: A * 4, LOGITS: A * 4}
        for site, bar in bars[block].items():
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
        if b >= layer_blocks:
            stop = yield from head_block(b - layer_blocks)
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
    blocked_rounds = 0
    while blocks:
        state["round"] += 1
        if in_flight and rng.random() < land_chance:
            land(rng.randrange(len(in_flight)))
            blocked_rounds = 0
            continue
        chosen = rng.choice(blocks)
        try:
            outcome = next(chosen)
        except StopIteration:
            blocks.remove(chosen)
            blocked_rounds = 0
            continue
        blocked_rounds = blocked_rounds + 1 if outcome == "blocked" else 0
        if blocked_rounds > 50 * (len(blocks) + 1) and not in_flight and all_blocked(blocks):
            raise ProtocolError("deadlock: every remaining block waits and no st.async is in flight")
    while in_flight:  # st.async into blocks that exited
        land(0)
    stats["rounds"] = state["round"]
    return stats


def all_blocked(blocks):
    """Whether every generator's next step is still 'blocked' (advances each by one poll, which a
    spinning waiter does anyway)."""
    return all(next(block, "done") == "blocked" for block in list(blocks))


# (7, 2): CLUSTER's split of R64/S256/A256 float16 L20; (10, 2): CLUSTER_FOLD's (fewer layers per block).
CONFIGS = [(1, 1), (2, 1), (3, 2), (7, 2), (10, 2), (9, 4), (14, 2), (8, 8)]


def handoffs_per_step(layer_blocks, head_blocks):
    # x down the chain, skip shares, the z all-gather, logits, x_0 (one put per element group).
    return (layer_blocks - 1) + layer_blocks * head_blocks + head_blocks ** 2 + head_blocks + 1


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


@pytest.mark.parametrize("wrong", [{"skip": 256 * 4}, {"hidden": 4}, {"input": 64 * 4 + 4}])
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
