"""Channel kernels: named edge cases and crash repair, single process.

Capacity gate and wraparound, inline and large payloads, FIFO per producer, smooth
weighted round robin, redelivery, MPSC exclusivity, producer entry reuse, exact
offsets, wait/wake flags, table limits; then crash repair of every state a dead
member can leave behind (replayed by hand: memory then looks exactly as if the member
had been killed there). Every test ends with the heap back to its baseline.
"""

from __future__ import annotations

import struct

import numpy as np
import pytest

import fluxon_kernels.channel as ch
from fluxon_kernels import status
from fluxon_kernels.heap import (
    heap_alloc,
    heap_free,
    heap_free_units,
    heap_reclaim_tag,
    heap_retag,
    heap_used_by_tag,
    ref_nbytes,
    ref_start,
    units_for,
)
from fluxon_kernels.layout import channel as cl
from fluxon_kernels.layout import pool_header as ph
from tests.model import heap_tags, make_pool
from tests.model.channel_model import ChannelModel, slot_state_word

UNIT = 1024
CREATOR = 1
P1, P2, P3 = 2, 3, 4  # producer member tags
C1, C2 = 10, 11  # consumer member tags
DEAD = 20  # the member that "dies" in the repair tests
CHAN_ID = 77
HEAP_UNITS = 256


# ---------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------


def arr(data: bytes) -> np.ndarray:
    """Writable uint8 copy of ``data`` (the kernels' source argument)."""
    return np.frombuffer(data, np.uint8).copy()


def message(pid: int, seq: int, n: int = 32) -> bytes:
    """Self-checking payload of ``n >= 12`` bytes: pid, seq, length, then a pattern."""
    body = ((np.arange(n - 12, dtype=np.int64) * 7 + pid * 31 + seq) & 0xFF).astype(np.uint8)
    return struct.pack("<iii", pid, seq, n) + body.tobytes()


def parse(data: bytes) -> tuple[int, int]:
    """(pid, seq) of a payload made by :func:`message`; asserts it is intact."""
    pid, seq, n = struct.unpack_from("<iii", data)
    assert len(data) == n and data == message(pid, seq, n), "corrupt payload"
    return pid, seq


class Chan:
    """One channel in an in-process pool, with the facade's calling sequences."""

    def __init__(self, b, w, capacity, chan_type=cl.TYPE_MPMC, creator=CREATOR):
        self.b, self.w = b, w
        self.c = ch.chan_create(b, w, creator, CHAN_ID, chan_type, capacity, 123)
        assert self.c >= 0, self.c
        self.cw = ch.chan_word(w, self.c)
        self.capacity = capacity
        self.tag = ch.chan_tag(self.c)

    # producing
    def put(self, e, tag, data: bytes) -> int:
        return ch.prod_put(self.b, self.w, self.c, e, tag, arr(data), len(data))

    def reserve(self, e, tag, data: bytes) -> int:
        s = ch.prod_reserve(self.b, self.w, self.c, e, tag, len(data))
        if s >= 0:
            off = ch.slot_payload_offset(self.b, self.w, self.c, s)
            self.b[off : off + len(data)] = arr(data)
        return s

    def put_large(self, e, tag, data: bytes) -> int:
        s = self.reserve(e, tag, data)
        if s < 0:
            return s
        return ch.prod_publish(self.b, self.w, self.c, e, tag, s)

    # consuming
    def claim(self, tag, cws, max_n) -> list[int]:
        out = np.zeros(max(max_n, 1), np.int64)
        n = ch.cons_claim(self.b, self.w, self.c, tag, cws, out, max_n)
        return [int(x) for x in out[:n]]

    def take(self, tag, slots) -> tuple[list[bytes], int]:
        sl = np.array(slots, np.int64)
        lens = np.zeros(len(sl), np.int64)
        total = ch.cons_lengths(self.b, self.w, self.c, sl, len(sl), lens)
        buf = np.zeros(max(total, 1), np.uint8)
        offs = np.zeros(len(sl), np.int64)
        if len(sl) > 1:
            offs[1:] = np.cumsum(lens)[:-1]
        wake = ch.cons_take(self.b, self.w, self.c, tag, sl, len(sl), buf, offs)
        return [buf[o : o + n].tobytes() for o, n in zip(offs, lens)], wake

    def get(self, tag, cws, max_n=1) -> list[bytes]:
        return self.take(tag, self.claim(tag, cws, max_n))[0]

    def give_back(self, tag, slots) -> int:
        sl = np.array(slots, np.int64)
        return ch.cons_return(self.b, self.w, self.c, tag, sl, len(sl))

    def drain(self, tag=C1, batch=8) -> list[bytes]:
        """Claim and take until nothing is left (attaches nothing; any tag may take)."""
        cws = np.zeros(cl.MAX_PRODUCERS, np.int64)
        got = []
        while True:
            msgs = self.get(tag, cws, batch)
            if not msgs:
                return got
            got += msgs

    # state
    def offsets(self):
        out = np.zeros((cl.MAX_PRODUCERS, 5), np.int64)
        backlog = ch.chan_producer_offsets(self.w, self.c, out)
        return backlog, out

    def slot_word(self, s):
        return ch._slot_word(self.w, self.cw, s)

    def slot_state(self, s):
        return int(self.w[self.slot_word(s)])

    def prod_word(self, e):
        return ch._prod_word(self.cw, e)

    def word(self, field):
        return int(self.w[self.cw + field])

    def repair(self, dead):
        fixed = ch.chan_repair_dead(self.b, self.w, dead)
        heap_reclaim_tag(self.w, dead)
        return fixed

    def destroy(self):
        return ch.chan_destroy(self.b, self.w, self.c)


def cws_new():
    return np.zeros(cl.MAX_PRODUCERS, np.int64)


@pytest.fixture
def pool():
    b, w = make_pool(heap_units=HEAP_UNITS)
    baseline = heap_free_units(w)
    yield b, w
    # Every test leaves the heap as it found it.
    assert heap_free_units(w) == baseline, heap_tags(w)[:40]


def finish(chan: Chan, *, expect_left=None):
    """Drain, check the backlog is 0, destroy."""
    left = chan.drain()
    if expect_left is not None:
        assert [parse(m) for m in left] == expect_left
    backlog, _ = chan.offsets()
    assert backlog == 0
    chan.destroy()


# ---------------------------------------------------------------------------
# Lifecycle
# ---------------------------------------------------------------------------


def test_create_and_destroy_return_every_heap_unit(pool):
    b, w = pool
    free0 = heap_free_units(w)
    chan = Chan(b, w, 8)
    assert chan.c == 0
    assert ch.chan_is_active(w, chan.c, CHAN_ID) == 1
    assert chan.word(cl.C_STATE) == cl.CHAN_ACTIVE
    assert chan.word(cl.C_CREATOR) == CREATOR
    assert chan.word(cl.C_CAPACITY) == 8
    assert chan.word(cl.C_TYPE) == cl.TYPE_MPMC
    assert chan.word(cl.C_CREATED_NS) == 123
    assert chan.word(cl.C_GENERATION) == 1
    slot_units = units_for(w, 8 * cl.SLOT_STRIDE)
    assert heap_used_by_tag(w, chan.tag) == slot_units
    e1 = ch.prod_attach(b, w, chan.c, P1, 1, 0)
    e2 = ch.prod_attach(b, w, chan.c, P2, 1, 0)
    assert (e1, e2) == (0, 1)
    ring_units = units_for(w, 8 * 8)
    assert heap_used_by_tag(w, chan.tag) == slot_units + 2 * ring_units
    assert chan.put(e1, P1, b"x") == 0
    assert chan.put_large(e2, P2, b"y" * (2 * UNIT + 1)) == 0  # 3 units, channel-tagged
    assert heap_used_by_tag(w, chan.tag) == slot_units + 2 * ring_units + 3
    # Destroy frees everything the channel holds, undelivered messages included.
    assert chan.destroy() == slot_units + 2 * ring_units + 3
    assert heap_free_units(w) == free0
    assert ch.chan_is_active(w, chan.c, CHAN_ID) == 0
    # The entry is wiped except its generation, which counts the incarnations.
    words = w[chan.cw : chan.cw + cl.TABLE_BYTES // 8].copy()
    assert words[cl.C_STATE] == cl.CHAN_FREE and words[cl.C_GENERATION] == 1
    words[cl.C_GENERATION] = 0
    assert not words.any()
    again = Chan(b, w, 2)
    assert again.c == 0
    assert again.word(cl.C_GENERATION) == 2
    backlog, off = again.offsets()
    assert backlog == 0 and not off.any()
    again.destroy()


@pytest.mark.parametrize("capacity", [0, -1, cl.MAX_CAPACITY + 1])
def test_capacity_out_of_range_is_too_large(pool, capacity):
    b, w = pool
    assert ch.chan_create(b, w, CREATOR, CHAN_ID, cl.TYPE_MPMC, capacity, 0) == status.TOO_LARGE
    assert ch.chan_is_active(w, 0, CHAN_ID) == 0
    assert w[ch.chan_word(w, 0) + cl.C_STATE] == cl.CHAN_FREE


def test_capacity_larger_than_the_heap_is_too_large_and_a_full_heap_no_memory(pool):
    b, w = pool
    too_many = HEAP_UNITS * UNIT // cl.SLOT_STRIDE + 1
    assert ch.chan_create(b, w, CREATOR, CHAN_ID, cl.TYPE_MPMC, too_many, 0) == status.TOO_LARGE
    hog = heap_alloc(w, (HEAP_UNITS - 1) * UNIT, 99)
    assert hog >= 0
    assert ch.chan_create(b, w, CREATOR, CHAN_ID, cl.TYPE_MPMC, 16, 0) == status.NO_MEMORY
    c0 = ch.chan_word(w, 0)
    assert w[c0 + cl.C_STATE] == cl.CHAN_FREE and w[c0 + cl.C_CREATOR] == 0
    # The largest capacity that fits the one free unit works.
    chan = Chan(b, w, UNIT // cl.SLOT_STRIDE)
    chan.destroy()
    heap_free(w, hog, (HEAP_UNITS - 1) * UNIT, 99)


def test_no_slot_when_the_channel_table_is_full(pool):
    b, w = pool
    count = int(w[ph.W_CHAN_COUNT])
    chans = [Chan(b, w, 1) for _ in range(count)]
    assert [x.c for x in chans] == list(range(count))
    assert ch.chan_create(b, w, CREATOR, CHAN_ID, cl.TYPE_MPMC, 1, 0) == status.NO_SLOT
    chans[5].destroy()
    assert Chan(b, w, 1).c == 5
    for c in range(count):
        ch.chan_destroy(b, w, c)


def test_chan_is_active(pool):
    b, w = pool
    assert ch.chan_is_active(w, 0, CHAN_ID) == 0
    chan = Chan(b, w, 2)
    assert ch.chan_is_active(w, chan.c, CHAN_ID) == 1
    assert ch.chan_is_active(w, chan.c, CHAN_ID + 1) == 0
    assert ch.chan_is_active(w, -1, CHAN_ID) == 0
    assert ch.chan_is_active(w, int(w[ph.W_CHAN_COUNT]), CHAN_ID) == 0
    w[chan.cw + cl.C_STATE] = cl.CHAN_CREATING  # mid-create: not usable yet
    assert ch.chan_is_active(w, chan.c, CHAN_ID) == 0
    w[chan.cw + cl.C_STATE] = cl.CHAN_ACTIVE
    chan.destroy()
    assert ch.chan_is_active(w, chan.c, CHAN_ID) == 0


# ---------------------------------------------------------------------------
# Capacity gate, wraparound, payloads
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("capacity", [1, 3, 8])
def test_exactly_capacity_puts_fit_then_full_and_one_take_frees_one(pool, capacity):
    b, w = pool
    chan = Chan(b, w, capacity)
    e = ch.prod_attach(b, w, chan.c, P1, 1, 0)
    ch.cons_attach(w, chan.c, C1, 0, 0)
    for i in range(capacity):
        assert chan.put(e, P1, message(1, i)) == 0
    assert chan.put(e, P1, message(1, 99)) == status.FULL
    assert chan.put_large(e, P1, message(1, 99, 2 * UNIT)) == status.FULL
    # Claimed-but-not-taken messages still occupy their slots.
    cws = cws_new()
    (s,) = chan.claim(C1, cws, 1)
    assert chan.put(e, P1, message(1, 99)) == status.FULL
    [got], _ = chan.take(C1, [s])
    assert parse(got) == (1, 0)
    assert chan.put(e, P1, message(1, capacity)) == 0
    assert chan.put(e, P1, message(1, 99)) == status.FULL
    backlog, off = chan.offsets()
    assert backlog == capacity and off[e, 1] == capacity + 1 and off[e, 2] == 1
    finish(chan, expect_left=[(1, i) for i in range(1, capacity + 1)])


@pytest.mark.parametrize("capacity", [1, 3])
def test_wraparound_over_many_rounds(pool, capacity):
    b, w = pool
    chan = Chan(b, w, capacity)
    e = ch.prod_attach(b, w, chan.c, P1, 1, 0)
    cws = cws_new()
    seq = 0
    expect = 0
    slots_used = []
    for rnd in range(200):
        k = rnd % capacity + 1  # 1..capacity messages in flight: the ring shifts
        for _ in range(k):
            big = seq % 5 == 0
            data = message(1, seq, 3 * UNIT if big else 40)
            r = chan.put_large(e, P1, data) if big else chan.put(e, P1, data)
            assert r == 0
            seq += 1
        if k == capacity:
            assert chan.put(e, P1, message(1, 999)) == status.FULL
        got = []
        while True:
            slots = chan.claim(C1, cws, 2)
            if not slots:
                break
            slots_used += slots
            got += [parse(m) for m in chan.take(C1, slots)[0]]
        assert got == [(1, x) for x in range(expect, seq)]
        expect = seq
        backlog, off = chan.offsets()
        assert backlog == 0 and off[e, 1] == off[e, 2] == off[e, 3] == seq
    # The free-slot cursor walks the slots round and round.
    assert slots_used == [i % capacity for i in range(seq)]
    finish(chan)


@pytest.mark.parametrize("n", [0, 1, 12, cl.SLOT_INLINE])
def test_inline_payload_sizes(pool, n):
    b, w = pool
    chan = Chan(b, w, 2)
    e = ch.prod_attach(b, w, chan.c, P1, 1, 0)
    data = bytes(range(256))[:n] if n < 12 else message(1, 5, n)
    before = heap_used_by_tag(w, chan.tag)
    assert chan.put(e, P1, data) == 0
    assert heap_used_by_tag(w, chan.tag) == before  # inline: no block
    (s,) = chan.claim(C1, cws_new(), 4)
    assert w[chan.slot_word(s) + cl.S_REF] == 0
    assert ch.slot_payload_offset(b, w, chan.c, s) == chan.slot_word(s) * 8 + cl.S_INLINE_OFF
    assert chan.take(C1, [s])[0] == [data]
    finish(chan)


def test_inline_put_too_large(pool):
    b, w = pool
    chan = Chan(b, w, 2)
    e = ch.prod_attach(b, w, chan.c, P1, 1, 0)
    data = arr(b"z" * (cl.SLOT_INLINE + 1))
    assert ch.prod_put(b, w, chan.c, e, P1, data, len(data)) == status.TOO_LARGE
    assert ch.prod_put(b, w, chan.c, e, P1, data, -1) == status.TOO_LARGE
    assert chan.offsets()[0] == 0 and chan.slot_state(0) == 0 and chan.slot_state(1) == 0
    finish(chan)


@pytest.mark.parametrize("n", [1, cl.SLOT_INLINE + 1, UNIT, UNIT + 1, 3 * UNIT + 5])
def test_large_payloads_move_their_block_from_producer_to_channel_to_consumer(pool, n):
    b, w = pool
    chan = Chan(b, w, 2)
    e = ch.prod_attach(b, w, chan.c, P1, 1, 0)
    data = message(1, 3, max(n, 12))[:n]
    base = heap_used_by_tag(w, chan.tag)
    s = chan.reserve(e, P1, data)
    assert s >= 0
    assert heap_used_by_tag(w, P1) == units_for(w, n)  # the writer holds it
    assert chan.slot_state(s) == slot_state_word(0, P1, cl.KIND_HELD)
    ref = int(w[chan.slot_word(s) + cl.S_REF])
    assert ref_nbytes(ref) == n
    assert ch.slot_payload_offset(b, w, chan.c, s) == w[ph.W_HEAP_OFF] + ref_start(ref) * UNIT
    assert ch.prod_publish(b, w, chan.c, e, P1, s) == 0
    assert heap_used_by_tag(w, P1) == 0
    assert heap_used_by_tag(w, chan.tag) == base + units_for(w, n)
    assert chan.slot_state(s) == slot_state_word(0, 0, cl.KIND_PUBLISHED)
    (got,) = chan.get(C1, cws_new(), 1)
    assert got == data
    assert heap_used_by_tag(w, chan.tag) == base and heap_used_by_tag(w, C1) == 0
    assert chan.slot_state(s) == 0 and w[chan.slot_word(s) + cl.S_REF] == 0
    finish(chan)


def test_prod_reserve_failures_give_the_slot_back(pool):
    b, w = pool
    chan = Chan(b, w, 1)
    e = ch.prod_attach(b, w, chan.c, P1, 1, 0)
    assert ch.prod_reserve(b, w, chan.c, e, P1, 0) == status.TOO_LARGE
    assert ch.prod_reserve(b, w, chan.c, e, P1, (HEAP_UNITS + 1) * UNIT) == status.TOO_LARGE
    hog_units = heap_free_units(w)
    hog = heap_alloc(w, hog_units * UNIT, 99)
    assert ch.prod_reserve(b, w, chan.c, e, P1, 10) == status.NO_MEMORY
    assert chan.slot_state(0) == 0 and w[chan.slot_word(0) + cl.S_REF] == 0
    heap_free(w, hog, hog_units * UNIT, 99)
    assert chan.put(e, P1, b"ok") == 0  # the slot is usable
    assert chan.drain() == [b"ok"]
    finish(chan)


def test_prod_abort_gives_slot_and_block_back_and_wakes_producers(pool):
    b, w = pool
    chan = Chan(b, w, 1)
    e = ch.prod_attach(b, w, chan.c, P1, 1, 0)
    s = chan.reserve(e, P1, b"q" * (2 * UNIT))
    assert heap_used_by_tag(w, P1) == 2
    assert chan.put(e, P1, b"no room") == status.FULL
    assert ch.prod_abort(b, w, chan.c, P1, s) == 0  # nobody waits
    assert heap_used_by_tag(w, P1) == 0 and chan.slot_state(s) == 0
    assert chan.offsets()[1][e, 1] == 0  # nothing was produced
    s = chan.reserve(e, P1, b"q" * 10)
    seq = ch.wait_begin(w, chan.c, 1)  # a producer waits for space
    assert ch.prod_abort(b, w, chan.c, P1, s) == 1
    assert chan.word(cl.C_SPACE_SEQ) == seq + 1
    ch.wait_end(w, chan.c, 1)
    assert chan.put(e, P1, b"fits") == 0
    finish(chan)


def test_prod_put_many(pool):
    b, w = pool
    chan = Chan(b, w, 4)
    e = ch.prod_attach(b, w, chan.c, P1, 1, 0)
    msgs = [message(1, i, 20 + i) for i in range(6)]
    src = arr(b"".join(msgs))
    lens = np.array([len(m) for m in msgs], np.int64)
    # Stops at FULL after capacity messages; no waiter -> no wake bit.
    assert ch.prod_put_many(b, w, chan.c, e, P1, src, lens, 6) == 4
    assert [parse(m) for m in chan.drain()] == [(1, i) for i in range(4)]
    # Stops at a message that can never fit; the wake bit is 1 << 32.
    ch.wait_begin(w, chan.c, 0)
    lens2 = np.array([len(msgs[0]), w[ph.W_HEAP_UNITS] * UNIT + 1, len(msgs[1])], np.int64)
    assert ch.prod_put_many(b, w, chan.c, e, P1, src, lens2, 3) == 1 + (1 << 32)
    ch.wait_end(w, chan.c, 0)
    bad = np.array([-1, 5], np.int64)
    assert ch.prod_put_many(b, w, chan.c, e, P1, src, bad, 2) == 0
    assert ch.prod_put_many(b, w, chan.c, e, P1, src, lens, 0) == 0
    assert [parse(m) for m in chan.drain()] == [(1, 0)]
    # Messages too large for a slot go into heap blocks, in order with inline ones.
    big = [message(1, 10 + i, n) for i, n in enumerate((cl.SLOT_INLINE + 1, 40, 3 * UNIT))]
    lens3 = np.array([len(m) for m in big], np.int64)
    free0 = heap_free_units(w)
    assert ch.prod_put_many(b, w, chan.c, e, P1, arr(b"".join(big)), lens3, 3) == 3
    assert heap_free_units(w) == free0 - 1 - 3  # the inline one takes no block
    assert chan.drain() == big
    assert heap_free_units(w) == free0
    backlog, off = chan.offsets()
    assert backlog == 0 and off[e, 1] == 8
    finish(chan)


# ---------------------------------------------------------------------------
# Ordering and selection
# ---------------------------------------------------------------------------


def test_fifo_per_producer(pool):
    b, w = pool
    chan = Chan(b, w, 6)
    es = [ch.prod_attach(b, w, chan.c, t, 1, 0) for t in (P1, P2, P3)]
    cws = cws_new()
    sent = {t: 0 for t in (P1, P2, P3)}
    seen = {t: [] for t in (P1, P2, P3)}
    rng = np.random.default_rng(4)
    for _ in range(300):
        t = int(rng.choice([P1, P2, P3]))
        e = es[t - P1]
        if chan.put(e, t, message(t, sent[t], int(rng.integers(12, 200)))) == 0:
            sent[t] += 1
        if rng.random() < 0.5:
            for m in chan.get(C1 + int(rng.integers(0, 2)), cws, int(rng.integers(1, 4))):
                pid, seq = parse(m)
                seen[pid].append(seq)
    for m in chan.drain():
        pid, seq = parse(m)
        seen[pid].append(seq)
    for t in (P1, P2, P3):
        assert seen[t] == list(range(sent[t]))
    finish(chan)


def _steady_backlog_claims(chan, es, tags, per_producer, rounds):
    """Keep ``per_producer`` messages queued per producer; return the claim order."""
    seq = {t: 0 for t in tags}
    for e, t in zip(es, tags):
        for _ in range(per_producer):
            assert chan.put(e, t, message(t, seq[t])) == 0
            seq[t] += 1
    cws = cws_new()
    order = []
    for _ in range(rounds):
        (m,) = chan.get(C1, cws, 1)
        pid, _ = parse(m)
        order.append(pid)
        assert chan.put(es[tags.index(pid)], pid, message(pid, seq[pid])) == 0
        seq[pid] += 1
    return order, cws


def test_weights_1_3_with_steady_backlog_claim_exactly_1_3(pool):
    b, w = pool
    chan = Chan(b, w, 8)
    ea = ch.prod_attach(b, w, chan.c, P1, 1, 0)
    eb = ch.prod_attach(b, w, chan.c, P2, 3, 0)
    order, cws = _steady_backlog_claims(chan, [ea, eb], [P1, P2], 4, 400)
    # SWRR: current [1,3] -> B; [2,2] tie -> A (lowest index); [-1,5] -> B; [0,4] -> B.
    assert order == [P2, P1, P2, P2] * 100
    assert order.count(P1) == 100 and order.count(P2) == 300
    assert cws[ea] == 0 and cws[eb] == 0  # back to the start of the cycle
    finish(chan)


def test_weights_5_1_1_give_the_smooth_sequence(pool):
    b, w = pool
    chan = Chan(b, w, 9)
    tags = [P1, P2, P3]
    es = [ch.prod_attach(b, w, chan.c, t, wt, 0) for t, wt in zip(tags, (5, 1, 1))]
    order, _ = _steady_backlog_claims(chan, es, tags, 3, 70)
    a, bb, c = tags
    assert order == [a, a, bb, a, c, a, a] * 10
    finish(chan)


def test_round_robin_skips_producers_without_backlog_and_weight_below_1_counts_as_1(pool):
    b, w = pool
    chan = Chan(b, w, 8)
    ea = ch.prod_attach(b, w, chan.c, P1, 0, 0)  # weight 0 -> 1
    eb = ch.prod_attach(b, w, chan.c, P2, 1, 0)
    for i in range(4):
        chan.put(ea, P1, message(P1, i))
    cws = cws_new()
    got = [parse(m)[0] for m in chan.get(C1, cws, 2)]
    assert got == [P1, P1]
    assert cws[eb] == 0  # an empty producer takes no part
    chan.put(eb, P2, message(P2, 0))
    chan.put(eb, P2, message(P2, 1))
    got = [parse(m)[0] for m in chan.get(C1, cws, 4)]
    assert sorted(got) == [P1, P1, P2, P2] and got[0] != got[1]
    finish(chan)


def test_swrr_state_is_per_consumer_and_matches_the_model(pool):
    b, w = pool
    chan = Chan(b, w, 12)
    model = ChannelModel(12)
    tags = [P1, P2, P3]
    weights = [2, 3, 1]
    for t, wt in zip(tags, weights):
        assert ch.prod_attach(b, w, chan.c, t, wt, 0) == model.prod_attach(t, wt)
    kc = {C1: cws_new(), C2: cws_new()}
    mc = {C1: [0] * cl.MAX_PRODUCERS, C2: [0] * cl.MAX_PRODUCERS}
    rng = np.random.default_rng(9)
    seq = 0
    for _ in range(300):
        t = tags[int(rng.integers(0, 3))]
        e = tags.index(t)
        data = message(t, seq)
        assert chan.put(e, t, data) == model.prod_put(e, t, data)
        seq += 1
        if rng.random() < 0.6:
            who = C1 if rng.random() < 0.5 else C2
            n = int(rng.integers(1, 4))
            slots = chan.claim(who, kc[who], n)
            assert slots == model.cons_claim(who, mc[who], n)
            assert list(kc[who]) == mc[who]
            got, _ = chan.take(who, slots)
            assert got == model.cons_take(who, slots)[0]
    finish(chan)


# ---------------------------------------------------------------------------
# Redelivery, consumers, producers
# ---------------------------------------------------------------------------


def test_returned_messages_are_redelivered_first_to_another_consumer(pool):
    b, w = pool
    chan = Chan(b, w, 6)
    e = ch.prod_attach(b, w, chan.c, P1, 1, 0)
    for i in range(5):
        chan.put(e, P1, message(1, i)) if i % 2 else chan.put_large(e, P1, message(1, i, 1500))
    c1, c2 = cws_new(), cws_new()
    prefetched = chan.claim(C1, c1, 3)  # C1 prefetches 0, 1, 2 and closes
    assert chan.word(cl.C_REDELIVER) == 0
    assert chan.give_back(C2, prefetched) == 0  # not C2's: nothing happens
    assert chan.word(cl.C_REDELIVER) == 0
    assert chan.give_back(C1, prefetched) == 0
    assert chan.word(cl.C_REDELIVER) == 3
    for s in prefetched:
        off = chan.slot_state(s) >> cl.OFFSET_SHIFT
        assert chan.slot_state(s) == slot_state_word(off, 0, cl.KIND_REDELIVER)
    assert ch.chan_available(w, chan.c) == 1
    # C2 gets the returned ones first (slot order), then the rest of the backlog.
    got = [parse(m) for m in chan.get(C2, c2, 2)]
    assert got == [(1, 0), (1, 1)]
    got = [parse(m) for m in chan.get(C2, c2, 5)]
    assert got == [(1, 2), (1, 3), (1, 4)]
    assert chan.word(cl.C_REDELIVER) == 0
    assert ch.chan_available(w, chan.c) == 0
    finish(chan)


def test_cons_return_wakes_sleeping_consumers(pool):
    b, w = pool
    chan = Chan(b, w, 2)
    e = ch.prod_attach(b, w, chan.c, P1, 1, 0)
    chan.put(e, P1, b"m")
    slots = chan.claim(C1, cws_new(), 1)
    seq = ch.wait_begin(w, chan.c, 0)
    assert chan.give_back(C1, slots) == 1
    assert chan.word(cl.C_DATA_SEQ) == seq + 1
    ch.wait_end(w, chan.c, 0)
    assert chan.give_back(C1, []) == 0
    finish(chan)


def test_mpsc_exclusive_consumer(pool):
    b, w = pool
    chan = Chan(b, w, 2, cl.TYPE_MPSC)
    k1 = ch.cons_attach(w, chan.c, C1, 5, 1)
    assert k1 == 0
    assert chan.word(cl.C_MPSC_CONSUMER) == C1
    assert w[ch._cons_word(chan.cw, k1) + cl.K_MEMBER_ID] == 5
    assert ch.cons_attach(w, chan.c, C2, 6, 1) == status.FULL
    assert ch.cons_attach(w, chan.c, C1, 6, 1) == status.FULL  # even the same member
    # Detach by the wrong member changes nothing.
    assert ch.cons_detach(w, chan.c, k1, C2) == status.NOT_FOUND
    assert chan.word(cl.C_MPSC_CONSUMER) == C1
    assert ch.cons_detach(w, chan.c, k1, C1) == status.OK
    assert chan.word(cl.C_MPSC_CONSUMER) == 0
    k2 = ch.cons_attach(w, chan.c, C2, 6, 1)
    assert k2 == 0
    assert ch.cons_attach(w, chan.c, C1, 5, 1) == status.FULL
    # The exclusive consumer dies: the repair frees the mark.
    assert chan.repair(C2) == 1
    assert chan.word(cl.C_MPSC_CONSUMER) == 0
    assert w[ch._cons_word(chan.cw, k2) + cl.K_STATE] == 0
    assert ch.cons_attach(w, chan.c, DEAD, 7, 1) == 0
    # Killed between the mark and the entry: the mark alone is repaired too.
    assert ch.cons_detach(w, chan.c, 0, DEAD) == status.OK
    w[chan.cw + cl.C_MPSC_CONSUMER] = DEAD
    assert ch.cons_attach(w, chan.c, C1, 5, 1) == status.FULL
    chan.repair(DEAD)
    assert ch.cons_attach(w, chan.c, C1, 5, 1) == 0
    finish(chan)


def test_consumer_table_full(pool):
    b, w = pool
    chan = Chan(b, w, 2, cl.TYPE_MPSC)
    for k in range(cl.MAX_CONSUMERS):
        assert ch.cons_attach(w, chan.c, 100 + k, 0, 0) == k
    assert ch.cons_attach(w, chan.c, C1, 0, 0) == status.NO_SLOT
    assert ch.cons_attach(w, chan.c, C1, 0, 1) == status.NO_SLOT
    assert chan.word(cl.C_MPSC_CONSUMER) == 0  # the failed exclusive attach let go
    assert ch.cons_detach(w, chan.c, 7, 107) == status.OK
    assert ch.cons_attach(w, chan.c, C1, 0, 1) == 7
    finish(chan)


def test_producer_table_full_and_detach(pool):
    b, w = pool
    chan = Chan(b, w, 1)
    for e in range(cl.MAX_PRODUCERS):
        assert ch.prod_attach(b, w, chan.c, 100 + e, 1, e) == e
    assert ch.prod_attach(b, w, chan.c, P1, 1, 0) == status.NO_SLOT
    assert ch.prod_detach(w, chan.c, 3, P1) == status.NOT_FOUND
    assert ch.prod_detach(w, chan.c, 3, 103) == status.OK
    assert ch.prod_detach(w, chan.c, 3, 103) == status.NOT_FOUND
    assert ch.prod_attach(b, w, chan.c, P1, 1, 0) == 3  # retired with nothing queued
    finish(chan)


def test_producer_entry_is_reused_only_when_drained(pool):
    b, w = pool
    chan = Chan(b, w, 4)
    e0 = ch.prod_attach(b, w, chan.c, P1, 2, 41)
    pw = chan.prod_word(e0)
    assert (w[pw + cl.P_WEIGHT], w[pw + cl.P_MEMBER_ID], w[pw + cl.P_GENERATION]) == (2, 41, 1)
    for i in range(3):
        chan.put(e0, P1, message(1, i))
    assert ch.prod_detach(w, chan.c, e0, P1) == status.OK
    assert w[chan.prod_word(e0) + cl.P_STATE] == cl.PROD_RETIRED
    cws = cws_new()
    (m,) = chan.get(C1, cws, 1)  # retired messages stay deliverable
    assert parse(m) == (1, 0)
    e1 = ch.prod_attach(b, w, chan.c, P2, 1, 42)
    assert e1 == 1  # entry 0 still has a backlog of 2
    assert chan.put(e1, P2, message(2, 0)) == 0
    slots = chan.claim(C1, cws, 1)  # one of the last two: the claim is not the end
    e2 = ch.prod_attach(b, w, chan.c, P3, 1, 43)
    assert e2 == 2
    got = [parse(m) for m in chan.take(C1, slots)[0]] + [parse(m) for m in chan.drain()]
    assert sorted(got) == [(1, 1), (1, 2), (2, 0)]
    assert [s for s in got if s[0] == 1] == [(1, 1), (1, 2)]
    # Drained: the next attacher takes entry 0, with fresh offsets and a new generation.
    assert ch.prod_attach(b, w, chan.c, 30, 5, 44) == 0
    pw = chan.prod_word(0)
    assert [int(w[pw + f]) for f in (cl.P_PRODUCE, cl.P_CLAIM, cl.P_DONE)] == [0, 0, 0]
    assert (w[pw + cl.P_WEIGHT], w[pw + cl.P_MEMBER_ID], w[pw + cl.P_GENERATION]) == (5, 44, 2)
    assert chan.put(0, 30, message(30, 0)) == 0
    assert [parse(m) for m in chan.drain()] == [(30, 0)]
    finish(chan)


def test_offsets_are_exact(pool):
    b, w = pool
    chan = Chan(b, w, 5)
    ea = ch.prod_attach(b, w, chan.c, P1, 3, 0)
    eb = ch.prod_attach(b, w, chan.c, P2, 1, 0)

    def check(backlog, a, bb):
        got_backlog, off = chan.offsets()
        assert got_backlog == backlog
        assert tuple(off[ea]) == (P1, *a, 3)
        assert tuple(off[eb]) == (P2, *bb, 1)
        assert not off[2:].any()

    check(0, (0, 0, 0), (0, 0, 0))  # (produce, done, claim)
    for i in range(3):
        chan.put(ea, P1, message(1, i))
    chan.put_large(eb, P2, message(2, 0, 3000))
    check(4, (3, 0, 0), (1, 0, 0))
    cws = cws_new()
    slots = chan.claim(C1, cws, 2)  # SWRR 3:1 -> A, then A
    check(4, (3, 0, 2), (1, 0, 0))
    chan.take(C1, slots[:1])
    check(3, (3, 1, 2), (1, 0, 0))
    chan.give_back(C1, slots[1:])  # returned: still claimed as far as CLAIM goes
    check(3, (3, 1, 2), (1, 0, 0))
    chan.drain()
    check(0, (3, 3, 3), (1, 1, 1))
    ch.prod_detach(w, chan.c, eb, P2)
    backlog, off = chan.offsets()
    assert backlog == 0 and off[eb, 0] == cl.PROD_RETIRED
    finish(chan)


def test_chan_available_and_cons_lengths(pool):
    b, w = pool
    chan = Chan(b, w, 3)
    e = ch.prod_attach(b, w, chan.c, P1, 1, 0)
    assert ch.chan_available(w, chan.c) == 0
    chan.put(e, P1, b"abc")
    chan.put_large(e, P1, b"d" * 3000)
    assert ch.chan_available(w, chan.c) == 1
    slots = np.array(chan.claim(C1, cws_new(), 5), np.int64)
    assert len(slots) == 2
    assert ch.chan_available(w, chan.c) == 0  # claimed, not available
    lens = np.zeros(2, np.int64)
    assert ch.cons_lengths(b, w, chan.c, slots, 2, lens) == 3003
    assert list(lens) == [3, 3000]
    chan.take(C1, list(slots))
    finish(chan)


def test_cons_copy_inline_copies_inline_messages_or_declines(pool):
    b, w = pool
    chan = Chan(b, w, 4)
    e = ch.prod_attach(b, w, chan.c, P1, 1, 0)
    big = bytes(range(256)) * 3
    small = [b"", b"abc", bytes(range(cl.SLOT_INLINE))]  # empty, short, the largest inline
    for m in small:
        chan.put(e, P1, m)
    slots = np.array(chan.claim(C1, cws_new(), 3), np.int64)
    buf = np.full(3 * cl.INLINE_STRIDE, 0xEE, np.uint8)
    lens = np.zeros(3, np.int64)
    assert ch.cons_copy_inline(b, w, chan.c, slots, 3, buf, lens) == sum(map(len, small))
    assert list(lens) == [len(m) for m in small]
    for i, m in enumerate(small):
        at = i * cl.INLINE_STRIDE
        assert buf[at : at + len(m)].tobytes() == m
    assert chan.take(C1, list(slots))[0] == small  # still claimed until taken
    chan.put(e, P1, b"x")
    chan.put_large(e, P1, big)  # a message in a pool block: declined, nothing copied
    slots = np.array(chan.claim(C1, cws_new(), 2), np.int64)
    buf[:] = 0xEE
    assert ch.cons_copy_inline(b, w, chan.c, slots, 2, buf, lens) == -1
    assert (buf == 0xEE).all()
    assert chan.take(C1, list(slots))[0] == [b"x", big]
    finish(chan)


# ---------------------------------------------------------------------------
# Waiting
# ---------------------------------------------------------------------------


def test_wake_flags_only_when_a_waiter_is_registered(pool):
    b, w = pool
    chan = Chan(b, w, 2)
    e = ch.prod_attach(b, w, chan.c, P1, 1, 0)
    assert ch.seq_byte_offset(w, chan.c, 0) == (chan.cw + cl.C_DATA_SEQ) * 8
    assert ch.seq_byte_offset(w, chan.c, 1) == (chan.cw + cl.C_SPACE_SEQ) * 8
    cws = cws_new()
    # Nobody waits: no wake from put, take, or a large publish.
    assert chan.put(e, P1, b"1") == 0
    assert chan.put_large(e, P1, b"2" * 2000) == 0
    assert chan.take(C1, chan.claim(C1, cws, 1))[1] == 0
    # A producer waits for space: takes wake it, puts do not.
    s0 = ch.wait_begin(w, chan.c, 1)
    assert chan.word(cl.C_PRODUCER_WAITERS) == 1
    assert chan.put(e, P1, b"3") == 0
    assert chan.take(C1, chan.claim(C1, cws, 1))[1] == 1
    assert chan.word(cl.C_SPACE_SEQ) == s0 + 1
    ch.wait_end(w, chan.c, 1)
    assert chan.word(cl.C_PRODUCER_WAITERS) == 0
    assert chan.take(C1, chan.claim(C1, cws, 1))[1] == 0
    # A consumer waits for data: puts wake it (inline, large, many), takes do not.
    d0 = ch.wait_begin(w, chan.c, 0)
    assert chan.word(cl.C_CONSUMER_WAITERS) == 1
    assert chan.put(e, P1, b"4") == 1
    assert chan.put_large(e, P1, b"5" * 2000) == 1
    assert chan.word(cl.C_DATA_SEQ) == d0 + 2
    assert chan.take(C1, chan.claim(C1, cws, 2))[1] == 0
    ch.wait_end(w, chan.c, 0)
    assert chan.put(e, P1, b"6") == 0
    # Two waiters of each kind, then the wake-all of close/repair bumps both.
    for space in (0, 0, 1, 1):
        ch.wait_begin(w, chan.c, space)
    d, s = chan.word(cl.C_DATA_SEQ), chan.word(cl.C_SPACE_SEQ)
    ch.wake_all(w, chan.c)
    assert (chan.word(cl.C_DATA_SEQ), chan.word(cl.C_SPACE_SEQ)) == (d + 1, s + 1)
    for space in (0, 0, 1, 1):
        ch.wait_end(w, chan.c, space)
    assert chan.word(cl.C_CONSUMER_WAITERS) == chan.word(cl.C_PRODUCER_WAITERS) == 0
    finish(chan)


# ---------------------------------------------------------------------------
# Crash repair (a dead member's state replayed by hand)
# ---------------------------------------------------------------------------


def _setup(b, w, capacity=4):
    chan = Chan(b, w, capacity)
    ep = ch.prod_attach(b, w, chan.c, P1, 1, 0)
    return chan, ep


def test_repair_of_a_member_that_used_nothing_is_a_no_op(pool):
    b, w = pool
    chan, ep = _setup(b, w)
    chan.put(ep, P1, b"m")
    before = w.copy()
    assert ch.chan_repair_dead(b, w, DEAD) == 0
    assert ch.chan_repair_dead(b, w, 0) == 0
    assert np.array_equal(before, w)
    finish(chan)


def test_dead_producer_holding_a_slot_from_take_free_slot(pool):
    b, w = pool
    chan, ep = _setup(b, w, 2)
    ed = ch.prod_attach(b, w, chan.c, DEAD, 1, 0)
    s = ch._take_free_slot(w, chan.cw, DEAD, 0)
    assert chan.slot_state(s) == slot_state_word(0, DEAD, cl.KIND_HELD)
    chan.put(ep, P1, b"live")
    assert chan.put(ep, P1, b"no room") == status.FULL
    assert chan.repair(DEAD) == 2  # the entry retired, the slot freed
    assert chan.slot_state(s) == 0
    assert w[chan.prod_word(ed) + cl.P_STATE] == cl.PROD_RETIRED
    assert chan.put(ep, P1, b"room again") == 0
    finish(chan)


@pytest.mark.parametrize("stop", ["reserved", "ring", "retag_first_unit", "retagged"])
def test_dead_producer_mid_large_put(pool, stop):
    b, w = pool
    chan, ep = _setup(b, w, 2)
    ed = ch.prod_attach(b, w, chan.c, DEAD, 1, 0)
    s = chan.reserve(ed, DEAD, message(9, 0, 3 * UNIT))
    ref = int(w[chan.slot_word(s) + cl.S_REF])
    start, n = ref_start(ref), ref_nbytes(ref)
    if stop != "reserved":  # replay _publish up to the stop
        ring = ch._ring_word(w, chan.prod_word(ed))
        w[ring + 0] = s
    if stop == "retag_first_unit":
        heap_retag(w, start, 1, DEAD, chan.tag)
    if stop == "retagged":
        heap_retag(w, start, n, DEAD, chan.tag)
    free_before = heap_free_units(w)
    fixed = ch.chan_repair_dead(b, w, DEAD)
    assert fixed == 2
    assert chan.slot_state(s) == 0 and w[chan.slot_word(s) + cl.S_REF] == 0
    heap_reclaim_tag(w, DEAD)
    assert heap_free_units(w) == free_before + 3  # the block is freed, whoever held it
    assert heap_used_by_tag(w, DEAD) == 0
    _, off = chan.offsets()
    assert tuple(off[ed, :4]) == (cl.PROD_RETIRED, 0, 0, 0)  # the put never happened
    assert chan.put(ep, P1, b"a") == 0 and chan.put(ep, P1, b"b") == 0
    finish(chan, expect_left=None)


@pytest.mark.parametrize("large", [False, True])
def test_dead_producer_published_but_not_counted(pool, large):
    b, w = pool
    chan, ep = _setup(b, w, 3)
    ed = ch.prod_attach(b, w, chan.c, DEAD, 1, 0)
    assert chan.put(ed, DEAD, message(9, 0)) == 0  # one ordinary message first
    data = message(9, 1, 2000 if large else 50)
    if large:
        s = chan.reserve(ed, DEAD, data)
        ref = int(w[chan.slot_word(s) + cl.S_REF])
        heap_retag(w, ref_start(ref), ref_nbytes(ref), DEAD, chan.tag)
    else:
        s = ch._take_free_slot(w, chan.cw, DEAD, 1)
        sw = chan.slot_word(s)
        off = sw * 8 + cl.S_INLINE_OFF
        b[off : off + len(data)] = arr(data)
        w[sw + cl.S_PRODUCER] = ed
        w[sw + cl.S_LEN] = len(data)
    # _publish: ring entry, STATE = PUBLISHED, and the kill before PRODUCE += 1.
    pw = chan.prod_word(ed)
    w[ch._ring_word(w, pw) + 1] = s
    w[chan.slot_word(s)] = slot_state_word(1, 0, cl.KIND_PUBLISHED)
    assert chan.offsets()[1][ed, 1] == 1
    assert [parse(m) for m in chan.drain()] == [(9, 0)]  # invisible before the repair
    assert chan.repair(DEAD) == 2  # counted + retired
    backlog, off = chan.offsets()
    assert backlog == 1 and tuple(off[ed, :4]) == (cl.PROD_RETIRED, 2, 1, 1)
    finish(chan, expect_left=[(9, 1)])


@pytest.mark.parametrize("large", [False, True])
def test_messages_claimed_by_a_dead_consumer_go_to_another_consumer(pool, large):
    b, w = pool
    chan, ep = _setup(b, w, 4)
    for i in range(4):
        data = message(1, i, 2500 if large and i % 2 else 30)
        assert (chan.put_large if large and i % 2 else chan.put)(ep, P1, data) == 0
    assert ch.cons_attach(w, chan.c, DEAD, 0, 0) == 0
    dead_slots = chan.claim(DEAD, cws_new(), 3)
    assert len(dead_slots) == 3
    assert chan.repair(DEAD) == 4  # consumer entry + 3 slots
    assert chan.word(cl.C_REDELIVER) == 3
    assert w[ch._cons_word(chan.cw, 0) + cl.K_STATE] == 0
    got = [parse(m) for m in chan.get(C2, cws_new(), 2)]
    assert got == [(1, 0), (1, 1)]  # redelivered first
    got = [parse(m) for m in chan.drain(C2)]
    assert got == [(1, 2), (1, 3)]
    backlog, off = chan.offsets()
    assert backlog == 0 and tuple(off[ep, 1:4]) == (4, 4, 4)
    finish(chan)


def test_consumer_killed_between_slot_cas_and_claim_cas(pool):
    b, w = pool
    chan, ep = _setup(b, w, 4)
    for i in range(3):
        chan.put(ep, P1, message(1, i))
    pw = chan.prod_word(ep)
    ring = ch._ring_word(w, pw)
    s0 = int(w[ring + 0])
    w[chan.slot_word(s0)] = slot_state_word(0, DEAD, cl.KIND_CLAIMED)  # CLAIM stays 0
    assert w[pw + cl.P_CLAIM] == 0
    # A live consumer helps CLAIM past the taken offset and gets message 1.
    (m,) = chan.get(C1, cws_new(), 1)
    assert parse(m) == (1, 1)
    assert w[pw + cl.P_CLAIM] == 2
    chan.repair(DEAD)
    assert [parse(m) for m in chan.drain(C2)] == [(1, 0), (1, 2)]
    finish(chan)


def _crashed_complete(chan, s, tag, stop):
    """Replay ``_complete`` for slot ``s`` and abandon it after step ``stop``.

    Steps: 0 block retagged to the consumer (large only), 1 LEN = -1 (the
    completion mark), 2 REF = 0, 3 STATE = FREE, 4 DONE += 1, 5 block freed.
    ``stop = -1``: the consumer died after copying the payload, before any step.
    """
    w = chan.w
    sw = chan.slot_word(s)
    ref = int(w[sw + cl.S_REF])
    e = int(w[sw + cl.S_PRODUCER])
    steps = [
        lambda: ref and heap_retag(w, ref_start(ref), ref_nbytes(ref), chan.tag, tag),
        lambda: w.__setitem__(sw + cl.S_LEN, -1),
        lambda: w.__setitem__(sw + cl.S_REF, 0),
        lambda: w.__setitem__(sw + cl.S_STATE, 0),
        lambda: w.__setitem__(chan.prod_word(e) + cl.P_DONE, w[chan.prod_word(e) + cl.P_DONE] + 1),
        lambda: ref and heap_free(w, ref_start(ref), ref_nbytes(ref), tag),
    ]
    for step in steps[: stop + 1]:
        step()


@pytest.mark.parametrize("stop", [-1, 0, 1, 2, 4, 5])
@pytest.mark.parametrize("large", [False, True])
def test_consumer_killed_while_completing(pool, large, stop):
    b, w = pool
    chan, ep = _setup(b, w, 3)
    data = message(1, 0, 3 * UNIT if large else 40)
    assert (chan.put_large if large else chan.put)(ep, P1, data) == 0
    assert chan.put(ep, P1, message(1, 1)) == 0
    (s,) = chan.claim(DEAD, cws_new(), 1)
    _crashed_complete(chan, s, DEAD, stop)
    chan.repair(DEAD)
    assert heap_used_by_tag(w, DEAD) == 0
    delivered = stop >= 1 or (large and stop == 0)
    left = [parse(m) for m in chan.drain(C2)]
    if delivered:
        assert left == [(1, 1)]  # completed by the owner: not delivered twice
    else:
        assert left == [(1, 0), (1, 1)]  # redelivered, payload intact
    backlog, off = chan.offsets()
    assert backlog == 0 and tuple(off[ep, 1:4]) == (2, 2, 2)
    assert chan.word(cl.C_REDELIVER) == 0
    finish(chan)


def test_consumer_killed_mid_retag_of_a_multi_unit_block(pool):
    b, w = pool
    chan, ep = _setup(b, w, 2)
    chan.put_large(ep, P1, message(1, 0, 4 * UNIT))
    (s,) = chan.claim(DEAD, cws_new(), 1)
    ref = int(w[chan.slot_word(s) + cl.S_REF])
    heap_retag(w, ref_start(ref), 1, chan.tag, DEAD)  # first unit only
    chan.repair(DEAD)
    assert chan.slot_state(s) == 0 and chan.drain() == []
    tags = heap_tags(w)
    assert not (tags[ref_start(ref) : ref_start(ref) + 4]).any()
    assert chan.offsets()[0] == 0
    finish(chan)


@pytest.mark.xfail(strict=True, reason="known window: killed between STATE=FREE and DONE+=1")
@pytest.mark.parametrize("large", [False, True])
def test_consumer_killed_between_free_and_done_keeps_offsets_exact(pool, large):
    b, w = pool
    chan, ep = _setup(b, w, 2)
    (chan.put_large if large else chan.put)(ep, P1, message(1, 0, 2 * UNIT if large else 40))
    (s,) = chan.claim(DEAD, cws_new(), 1)
    _crashed_complete(chan, s, DEAD, 3)
    chan.repair(DEAD)
    try:
        assert chan.offsets()[0] == 0
    finally:
        chan.destroy()


def _shortfall(chan) -> dict:
    out = np.zeros(cl.MAX_PRODUCERS, np.int64)
    n = ch.chan_done_shortfall(chan.b, chan.w, chan.c, out)
    found = {e: int(d) for e, d in enumerate(out) if d >= 0}
    assert n == len(found)
    return found


@pytest.mark.parametrize("large", [False, True])
def test_owner_heals_done_left_short_by_a_consumer_killed_in_the_window(pool, large):
    b, w = pool
    chan, ep = _setup(b, w, 3)
    for seq in range(3):
        (chan.put_large if large else chan.put)(ep, P1, message(1, seq, 2 * UNIT if large else 40))
    assert [parse(m) for m in chan.get(C1, cws_new(), 1)] == [(1, 0)]
    (s,) = chan.claim(DEAD, cws_new(), 1)
    _crashed_complete(chan, s, DEAD, 3)  # freed, never counted
    chan.repair(DEAD)
    assert _shortfall(chan) == {}  # the producer is alive: nothing to heal yet
    assert ch.prod_detach(w, chan.c, ep, P1) == status.OK
    assert _shortfall(chan) == {}  # a message is still undelivered
    assert [parse(m) for m in chan.drain(C2)] == [(1, 2)]
    assert chan.offsets()[0] == 1  # DONE is one short
    assert _shortfall(chan) == {ep: 2}
    assert ch.chan_heal_done(w, chan.c, ep, 1) == 0  # another value was seen: no
    assert ch.chan_heal_done(w, chan.c, ep, 2) == 1
    assert chan.offsets()[0] == 0 and _shortfall(chan) == {}
    # The entry is reusable again, from offset 0.
    assert ch.prod_attach(b, w, chan.c, P2, 1, 0) == ep
    chan.put(ep, P2, message(2, 0))
    finish(chan, expect_left=[(2, 0)])


def test_shortfall_ignores_a_consumer_that_is_still_completing(pool):
    b, w = pool
    chan, ep = _setup(b, w, 2)
    chan.put(ep, P1, message(1, 0))
    (s,) = chan.claim(C1, cws_new(), 1)
    assert ch.prod_detach(w, chan.c, ep, P1) == status.OK
    _crashed_complete(chan, s, C1, 2)  # still CLAIMED: in flight, not short
    assert _shortfall(chan) == {}
    _crashed_complete_rest(chan, s, C1)
    assert _shortfall(chan) == {} and chan.offsets()[0] == 0
    chan.destroy()


def _crashed_complete_rest(chan, s, tag):
    """The remaining steps of a completion stopped after step 2 (inline message)."""
    w = chan.w
    e = int(w[chan.slot_word(s) + cl.S_PRODUCER])
    w[chan.slot_word(s) + cl.S_STATE] = 0
    w[chan.prod_word(e) + cl.P_DONE] += 1


def test_consumer_killed_in_cons_return_does_not_strand_the_message(pool):
    b, w = pool
    chan, ep = _setup(b, w, 2)
    chan.put(ep, P1, message(1, 0))
    (s,) = chan.claim(DEAD, cws_new(), 1)
    # cons_return counts first, then CASes the slot; killed in between.
    w[chan.cw + cl.C_REDELIVER] += 1
    chan.repair(DEAD)
    assert [parse(m) for m in chan.drain(C2)] == [(1, 0)]
    # The price of counting first: the count stays one too high (claimers scan
    # for nothing, chan_available says yes) -- never a message nobody looks for.
    assert chan.word(cl.C_REDELIVER) == 1
    finish(chan)


def test_half_created_channel_of_a_dead_creator_is_destroyed(pool):
    b, w = pool
    free0 = heap_free_units(w)
    live = Chan(b, w, 2)  # entry 0, alive
    # Entry 1: the creator died after allocating the slots, before ACTIVE.
    cw1 = ch.chan_word(w, 1)
    w[cw1 + cl.C_STATE] = cl.CHAN_CREATING
    w[cw1 + cl.C_CREATOR] = DEAD
    assert heap_alloc(w, 4 * cl.SLOT_STRIDE, ch.chan_tag(1)) >= 0
    # Entry 2: mid-create by a live member: left alone.
    cw2 = ch.chan_word(w, 2)
    w[cw2 + cl.C_STATE] = cl.CHAN_CREATING
    w[cw2 + cl.C_CREATOR] = CREATOR
    assert ch.chan_is_active(w, 1, 0) == 0
    assert ch.chan_repair_dead(b, w, DEAD) == 1
    assert w[cw1 + cl.C_STATE] == cl.CHAN_FREE and w[cw1 + cl.C_CREATOR] == 0
    assert heap_used_by_tag(w, ch.chan_tag(1)) == 0
    assert w[cw2 + cl.C_STATE] == cl.CHAN_CREATING
    w[cw2 + cl.C_STATE] = cl.CHAN_FREE
    assert ch.chan_is_active(w, 0, CHAN_ID) == 1
    live.destroy()
    assert heap_free_units(w) == free0


def test_creator_dead_right_after_claiming_the_entry_is_identified(pool):
    """The claiming CAS carries the creator's tag: no window leaves an orphan entry."""
    b, w = pool
    cw = ch.chan_word(w, 3)
    w[cw + cl.C_STATE] = cl.CHAN_CREATING | (DEAD << 8)  # C_CREATOR not written yet
    assert w[cw + cl.C_CREATOR] == 0
    assert ch.chan_repair_dead(b, w, CREATOR) == 0  # someone else's death: untouched
    assert ch.chan_repair_dead(b, w, DEAD) == 1
    assert w[cw + cl.C_STATE] == cl.CHAN_FREE


def test_dead_producer_killed_in_attach_before_its_ring_existed(pool):
    b, w = pool
    chan = Chan(b, w, 4)
    victim = heap_alloc(w, UNIT, 99)  # someone's block, possibly at unit 0
    voff = int(w[ph.W_HEAP_OFF]) + victim * UNIT
    b[voff : voff + UNIT] = 0xAB
    pw = chan.prod_word(0)
    w[pw + cl.P_STATE] = DEAD  # won the entry's CAS, died before RING_REF
    assert chan.repair(DEAD) == 1
    assert w[pw + cl.P_STATE] == cl.PROD_FREE  # not RETIRED: it has no ring to reuse
    e = ch.prod_attach(b, w, chan.c, P1, 1, 0)
    assert e == 0 and w[pw + cl.P_RING_REF] != 0
    for i in range(4):
        chan.put(e, P1, message(1, i))
    assert (b[voff : voff + UNIT] == 0xAB).all()  # nothing wrote through a null ring
    assert [parse(m) for m in chan.drain()] == [(1, i) for i in range(4)]
    heap_free(w, victim, UNIT, 99)
    finish(chan)


def test_repair_after_everything_a_member_can_hold_at_once(pool):
    """Producer and consumer in one dead member: held, claimed, published messages."""
    b, w = pool
    chan, ep = _setup(b, w, 6)
    ed = ch.prod_attach(b, w, chan.c, DEAD, 2, 0)
    ch.cons_attach(w, chan.c, DEAD, 0, 0)
    chan.put(ed, DEAD, message(9, 0))
    chan.put_large(ed, DEAD, message(9, 1, 2000))
    chan.put(ep, P1, message(1, 0))
    held = chan.reserve(ed, DEAD, message(9, 2, 3000))
    claimed = chan.claim(DEAD, cws_new(), 2)
    assert len(claimed) == 2
    chan.repair(DEAD)
    assert chan.slot_state(held) == 0
    got = sorted(parse(m) for m in chan.drain(C2))
    assert got == [(1, 0), (9, 0), (9, 1)]
    backlog, off = chan.offsets()
    assert backlog == 0 and off[ed, 0] == cl.PROD_RETIRED
    finish(chan)
