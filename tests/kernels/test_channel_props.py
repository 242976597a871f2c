"""Channel kernels vs ``tests.model.channel_model``: a hypothesis state machine.

The same random operations go to the kernels (one channel in an in-process pool) and
to the model: producers attach/detach with weights, consumers attach (MPMC or
exclusive), inline puts, batched puts, large reserve/publish/abort, claims, takes,
returns, waiters, and kills (a member dies, possibly in the middle of ``cons_take``,
and the owner repairs). After every step the slots, offsets, counters and heap usage
must agree with the model; at teardown every acknowledged put has been delivered
exactly once (at least once if a killed consumer held it), FIFO per producer per
consumer holds for messages that were never handed back, and the heap is back to
its baseline. The machine also runs with the kernels' pure-Python bodies
(``NUMBA_DISABLE_JIT=1``) in a subprocess.
"""

from __future__ import annotations

import os
import re
import struct
import subprocess
import sys
from collections import Counter

import numpy as np
import pytest
from hypothesis import event, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

import fluxon_kernels.channel as ch
from fluxon_kernels import status
from fluxon_kernels.heap import (
    heap_free_units,
    heap_reclaim_tag,
    heap_retag,
    heap_used_by_tag,
    ref_nbytes,
    ref_start,
    units_for,
)
from fluxon_kernels.layout import channel as cl
from tests.model import make_pool
from tests.model.channel_model import ChannelModel

UNIT = 1024
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
#: Examples per state machine (the NUMBA_DISABLE_JIT run lowers it).
MACHINE_EXAMPLES = int(os.environ.get("FLUXON_MACHINE_EXAMPLES", "60"))
MACHINE_UNITS = 128
CREATOR = 1
FIRST_TAG = 2
LAST_TAG = 250
INLINE_SIZES = st.one_of(st.integers(12, 64), st.sampled_from([12, cl.SLOT_INLINE]))
LARGE_SIZES = st.sampled_from([0, 12, 300, UNIT, UNIT + 1, 2500])


def message(pid: int, seq: int, n: int) -> bytes:
    """Self-checking payload: (pid, seq, n) then a pattern; ``n >= 12``."""
    body = ((np.arange(n - 12, dtype=np.int64) * 13 + pid * 7 + seq) & 0xFF).astype(np.uint8)
    return struct.pack("<iii", pid, seq, n) + body.tobytes()


def parse(data: bytes) -> tuple[int, int]:
    pid, seq, n = struct.unpack_from("<iii", data)
    assert len(data) == n and data == message(pid, seq, n), "corrupt payload"
    return pid, seq


class Producer:
    def __init__(self, e: int):
        self.e = e
        self.seq = 0  # next seq written into a payload (reserve takes one too)
        self.published = 0  # publish order: FIFO is by publish, not by seq
        self.reserved: list[tuple[int, bytes]] = []  # (slot, payload) not yet published


class Consumer:
    def __init__(self, k: int):
        self.k = k
        self.kcws = np.zeros(cl.MAX_PRODUCERS, np.int64)
        self.mcws = [0] * cl.MAX_PRODUCERS
        self.claimed: list[int] = []


class ChannelMachine(RuleBasedStateMachine):
    """One channel driven through the kernels and the model with the same operations."""

    def __init__(self):
        super().__init__()
        self.b, self.w = make_pool(heap_units=MACHINE_UNITS)
        self.baseline = heap_free_units(self.w)
        self.next_tag = FIRST_TAG
        self.producers: dict[int, Producer] = {}
        self.consumers: dict[int, Consumer] = {}
        self.acked: dict[tuple[int, int], int] = {}  # message -> publish order
        self.delivered: Counter = Counter()
        self.maybe_twice: set[tuple[int, int]] = set()  # a killed consumer held them
        self.handed_back: set[tuple[int, int]] = set()  # returned or redelivered
        self.last_seen: dict[tuple[int, int], int] = {}  # (consumer, producer) -> order
        self.waiters = [0, 0]
        self.c = -1

    # ------------------------------------------------------------------ setup
    @initialize(capacity=st.integers(1, 6), mpsc=st.booleans())
    def create(self, capacity, mpsc):
        kind = cl.TYPE_MPSC if mpsc else cl.TYPE_MPMC
        self.c = ch.chan_create(self.b, self.w, CREATOR, 5, kind, capacity, 0)
        assert self.c == 0
        self.cw = ch.chan_word(self.w, self.c)
        self.ctag = ch.chan_tag(self.c)
        self.capacity = capacity
        self.model = ChannelModel(capacity, kind)

    def _fresh_tag(self) -> int:
        tag = self.next_tag
        self.next_tag += 1
        return tag

    # -------------------------------------------------------------- members
    @precondition(lambda self: self.next_tag < LAST_TAG)
    @rule(weight=st.integers(0, 4))
    def attach_producer(self, weight):
        tag = self._fresh_tag()
        e = ch.prod_attach(self.b, self.w, self.c, tag, weight, tag * 10)
        assert e == self.model.prod_attach(tag, weight)
        if e >= 0:
            self.producers[tag] = Producer(e)

    @precondition(lambda self: self.producers)
    @rule(data=st.data())
    def detach_producer(self, data):
        tag = data.draw(st.sampled_from(sorted(self.producers)))
        p = self.producers.pop(tag)
        for s, _ in p.reserved:
            self._abort(tag, s)
        assert ch.prod_detach(self.w, self.c, p.e, tag) == self.model.prod_detach(p.e, tag)
        assert ch.prod_detach(self.w, self.c, p.e, tag) == status.NOT_FOUND

    @precondition(lambda self: self.next_tag < LAST_TAG)
    @rule(exclusive=st.booleans(), reuse=st.booleans())
    def attach_consumer(self, exclusive, reuse):
        # Sometimes the same member is producer and consumer.
        tags = [t for t in self.producers if t not in self.consumers]
        tag = tags[0] if reuse and tags else self._fresh_tag()
        k = ch.cons_attach(self.w, self.c, tag, tag * 10, int(exclusive))
        assert k == self.model.cons_attach(tag, exclusive)
        if k >= 0:
            self.consumers[tag] = Consumer(k)

    @precondition(lambda self: self.consumers)
    @rule(data=st.data())
    def detach_consumer(self, data):
        tag = data.draw(st.sampled_from(sorted(self.consumers)))
        con = self.consumers.pop(tag)
        self._give_back(tag, con, len(con.claimed))
        assert ch.cons_detach(self.w, self.c, con.k, tag) == self.model.cons_detach(con.k, tag)

    # ------------------------------------------------------------ producing
    def _producer(self, data):
        tag = data.draw(st.sampled_from(sorted(self.producers)))
        return tag, self.producers[tag]

    def _ack(self, tag, p, r):
        if r >= 0:
            self._published(p, (tag, p.seq))
            p.seq += 1

    def _published(self, p, mid):
        self.acked[mid] = p.published
        p.published += 1

    @precondition(lambda self: self.producers)
    @rule(data=st.data(), n=INLINE_SIZES)
    def put_inline(self, data, n):
        tag, p = self._producer(data)
        payload = message(tag, p.seq, n)
        src = np.frombuffer(payload, np.uint8).copy()
        r = ch.prod_put(self.b, self.w, self.c, p.e, tag, src, n)
        assert r == self.model.prod_put(p.e, tag, payload)
        event(f"put -> {status.STATUS_NAMES.get(r, r) if r < 0 else 'ok'}")
        self._ack(tag, p, r)

    @precondition(lambda self: self.producers)
    @rule(
        data=st.data(),
        sizes=st.lists(st.one_of(st.integers(12, 40), LARGE_SIZES.filter(bool)), max_size=5),
    )
    def put_many(self, data, sizes):
        tag, p = self._producer(data)
        payloads = [message(tag, p.seq + i, n) for i, n in enumerate(sizes)]
        src = np.frombuffer(b"".join(payloads) or b"\0", np.uint8).copy()
        lens = np.array(sizes or [0], np.int64)
        r = ch.prod_put_many(self.b, self.w, self.c, p.e, tag, src, lens, len(sizes))
        assert r == self.model.prod_put_many(p.e, tag, payloads)
        large = sum(n > cl.SLOT_INLINE for n in sizes)
        event(f"put_many {r & 0xFFFFFFFF} of {len(sizes)}, {large} large")
        for _ in range(r & 0xFFFFFFFF):
            self._ack(tag, p, 0)

    @precondition(lambda self: self.producers)
    @rule(data=st.data(), n=LARGE_SIZES)
    def reserve_large(self, data, n):
        tag, p = self._producer(data)
        payload = message(tag, p.seq, n) if n else b""
        s = ch.prod_reserve(self.b, self.w, self.c, p.e, tag, n)
        assert s == self.model.prod_reserve(p.e, tag, payload)
        if s >= 0:
            off = ch.slot_payload_offset(self.b, self.w, self.c, s)
            self.b[off : off + n] = np.frombuffer(payload, np.uint8)
            p.reserved.append((s, payload))
            p.seq += 1  # the seq is used even if the message is aborted

    @precondition(lambda self: any(p.reserved for p in self.producers.values()))
    @rule(data=st.data())
    def publish_large(self, data):
        tag = data.draw(st.sampled_from(sorted(t for t, p in self.producers.items() if p.reserved)))
        p = self.producers[tag]
        s, payload = p.reserved.pop(0)
        r = ch.prod_publish(self.b, self.w, self.c, p.e, tag, s)
        assert r == self.model.prod_publish(p.e, s)
        self._published(p, parse(payload))

    def _abort(self, tag, s):
        assert ch.prod_abort(self.b, self.w, self.c, tag, s) == self.model.prod_abort(s)

    @precondition(lambda self: any(p.reserved for p in self.producers.values()))
    @rule(data=st.data())
    def abort_large(self, data):
        tag = data.draw(st.sampled_from(sorted(t for t, p in self.producers.items() if p.reserved)))
        s, _ = self.producers[tag].reserved.pop()
        self._abort(tag, s)

    # ------------------------------------------------------------ consuming
    def _consumer(self, data):
        tag = data.draw(st.sampled_from(sorted(self.consumers)))
        return tag, self.consumers[tag]

    @precondition(lambda self: self.consumers)
    @rule(data=st.data(), n=st.integers(0, 4))
    def claim(self, data, n):
        tag, con = self._consumer(data)
        out = np.zeros(4, np.int64)
        got = ch.cons_claim(self.b, self.w, self.c, tag, con.kcws, out, n)
        slots = [int(x) for x in out[:got]]
        assert slots == self.model.cons_claim(tag, con.mcws, n)
        assert list(con.kcws) == con.mcws
        con.claimed += slots

    def _take(self, tag, con, j):
        slots = con.claimed[:j]
        del con.claimed[:j]
        sl = np.array(slots, np.int64)
        ibuf = np.zeros(max(len(sl), 1) * cl.INLINE_STRIDE, np.uint8)
        ilens = np.zeros(len(sl), np.int64)
        inline = ch.cons_copy_inline(self.b, self.w, self.c, sl, len(sl), ibuf, ilens)
        lens = np.zeros(len(sl), np.int64)
        total = ch.cons_lengths(self.b, self.w, self.c, sl, len(sl), lens)
        buf = np.zeros(max(total, 1), np.uint8)
        offs = np.zeros(len(sl), np.int64)
        if len(sl) > 1:
            offs[1:] = np.cumsum(lens)[:-1]
        wake = ch.cons_take(self.b, self.w, self.c, tag, sl, len(sl), buf, offs)
        payloads, mwake = self.model.cons_take(tag, slots)
        assert wake == mwake
        got = [buf[o : o + n].tobytes() for o, n in zip(offs, lens)]
        assert got == payloads
        # cons_copy_inline: the same bytes at fixed spacing, or declined for a block.
        if inline >= 0:
            assert inline == total and list(ilens) == list(lens)
            s = cl.INLINE_STRIDE
            assert [ibuf[i * s : i * s + n].tobytes() for i, n in enumerate(lens)] == payloads
            event("copied inline")
        else:
            assert inline == -1
            event("copy inline declined")
        if any(len(p) > cl.SLOT_INLINE for p in payloads):
            assert inline == -1
        for m in got:
            self._delivered(tag, parse(m))
        if any(parse(m) in self.handed_back for m in got):
            event("took a redelivered message")
        if wake:
            event("take woke producers")

    def _delivered(self, consumer, mid):
        assert mid in self.acked, f"delivered a put that was never acknowledged: {mid}"
        self.delivered[mid] += 1
        if mid in self.handed_back:
            return
        key = (consumer, mid[0])
        order = self.acked[mid]
        assert self.last_seen.get(key, -1) < order, f"FIFO broken for {key}: {mid}"
        self.last_seen[key] = order

    @precondition(lambda self: any(c.claimed for c in self.consumers.values()))
    @rule(data=st.data(), j=st.integers(1, 4))
    def take(self, data, j):
        tag = data.draw(st.sampled_from(sorted(t for t, c in self.consumers.items() if c.claimed)))
        self._take(tag, self.consumers[tag], j)

    def _give_back(self, tag, con, j):
        slots = con.claimed[:j]
        del con.claimed[:j]
        for s in slots:
            self.handed_back.add(self._slot_message(s))
        sl = np.array(slots, np.int64)
        r = ch.cons_return(self.b, self.w, self.c, tag, sl, len(sl))
        assert r == self.model.cons_return(tag, slots)

    @precondition(lambda self: any(c.claimed for c in self.consumers.values()))
    @rule(data=st.data(), j=st.integers(1, 4))
    def give_back(self, data, j):
        tag = data.draw(st.sampled_from(sorted(t for t, c in self.consumers.items() if c.claimed)))
        self._give_back(tag, self.consumers[tag], j)

    def _slot_message(self, s):
        return parse(self.model.slots[s].payload)

    # -------------------------------------------------------------- waiting
    @rule(space=st.integers(0, 1), begin=st.booleans())
    def waiter(self, space, begin):
        if begin:
            assert ch.wait_begin(self.w, self.c, space) == self.model.wait_begin(space)
            self.waiters[space] += 1
        elif self.waiters[space]:
            ch.wait_end(self.w, self.c, space)
            self.model.wait_end(space)
            self.waiters[space] -= 1

    # --------------------------------------------------------------- crashes
    @precondition(lambda self: self.producers or self.consumers)
    @rule(data=st.data(), stop=st.integers(-1, 2), busy=st.booleans())
    def kill(self, data, stop, busy):
        """A member dies: mid-``cons_take`` of its first claimed slot if it has one,
        mid-publish of its first reserved slot if it has one (``busy``: prefer such)."""
        members = set(self.producers) | set(self.consumers)
        holding = {t for t, p in self.producers.items() if p.reserved}
        holding |= {t for t, c in self.consumers.items() if c.claimed}
        dead = data.draw(st.sampled_from(sorted(holding if busy and holding else members)))
        p = self.producers.pop(dead, None)  # reserved slots die with it: never acknowledged
        if p and p.reserved and stop >= 1:
            s, payload = p.reserved[0]
            event(f"killed a producer mid-publish (stop {stop})")
            if self._crashed_publish(p, dead, s, stop):
                self.model.prod_publish(p.e, s, count=False)
                self._published(p, parse(payload))  # the repair will count it
        con = self.consumers.pop(dead, None)
        if con and con.claimed:
            s = con.claimed[0]
            event(f"killed a consumer holding claims (stop {stop})")
            if self._crashed_complete(s, dead, stop):
                self.model.mark_completing(s)
                self.delivered[self._slot_message(s)] += 1  # it reached the dead one
            for s in con.claimed:
                self.maybe_twice.add(self._slot_message(s))
                self.handed_back.add(self._slot_message(s))
        fixed = ch.chan_repair_dead(self.b, self.w, dead)
        heap_reclaim_tag(self.w, dead)
        assert fixed == self.model.repair_dead(dead)
        assert heap_used_by_tag(self.w, dead) == 0

    def _crashed_publish(self, p, tag, s, stop):
        """Replay ``_publish``'s first steps; True if ``STATE = PUBLISHED`` was stored.

        Steps: ring entry + block retagged to the channel (stop 1), then PUBLISHED
        (stop 2); ``PRODUCE += 1`` never happens.
        """
        w = self.w
        pw = ch._prod_word(self.cw, p.e)
        o = int(w[pw + cl.P_PRODUCE])
        w[ch._ring_word(w, pw) + o % self.capacity] = s
        sw = ch._slot_word(w, self.cw, s)
        ref = int(w[sw + cl.S_REF])
        heap_retag(w, ref_start(ref), ref_nbytes(ref), tag, self.ctag)
        if stop >= 2:
            w[sw + cl.S_STATE] = (o << cl.OFFSET_SHIFT) | cl.KIND_PUBLISHED
        return stop >= 2

    def _crashed_complete(self, s, tag, stop):
        """Replay ``_complete``'s first steps; True if the completion mark was reached."""
        w = self.w
        sw = ch._slot_word(w, self.cw, s)
        ref = int(w[sw + cl.S_REF])
        if stop >= 0 and ref:
            heap_retag(w, ref_start(ref), ref_nbytes(ref), self.ctag, tag)
        if stop >= 1:
            w[sw + cl.S_LEN] = -1
        if stop >= 2:
            w[sw + cl.S_REF] = 0
        return stop >= 1 or (stop == 0 and ref != 0)

    # ------------------------------------------------------------ invariants
    @invariant()
    def same_slots(self):
        if self.c < 0:
            return
        for s, slot in enumerate(self.model.slots):
            sw = ch._slot_word(self.w, self.cw, s)
            assert self.w[sw + cl.S_STATE] == slot.state_word(), s
            if slot.kind in (cl.KIND_PUBLISHED, cl.KIND_CLAIMED, cl.KIND_REDELIVER):
                assert self.w[sw + cl.S_PRODUCER] == slot.producer
                assert self.w[sw + cl.S_LEN] == len(slot.payload)
                assert (self.w[sw + cl.S_REF] != 0) == slot.large
        assert self.w[self.cw + cl.C_FREE_HINT] == self.model.free_hint

    @invariant()
    def same_offsets_and_counters(self):
        if self.c < 0:
            return
        out = np.zeros((cl.MAX_PRODUCERS, 5), np.int64)
        backlog = ch.chan_producer_offsets(self.w, self.c, out)
        assert [tuple(int(x) for x in row) for row in out] == self.model.offsets()
        assert backlog == self.model.backlog()
        m = self.model
        words = (
            cl.C_REDELIVER,
            cl.C_MPSC_CONSUMER,
            cl.C_CONSUMER_WAITERS,
            cl.C_PRODUCER_WAITERS,
            cl.C_DATA_SEQ,
            cl.C_SPACE_SEQ,
        )
        got = [int(self.w[self.cw + f]) for f in words]
        assert got == [
            m.redeliver,
            m.mpsc_consumer,
            m.consumer_waiters,
            m.producer_waiters,
            m.data_seq,
            m.space_seq,
        ]
        ks = [int(self.w[ch._cons_word(self.cw, k) + cl.K_STATE]) for k in range(cl.MAX_CONSUMERS)]
        assert ks == m.consumers
        assert ch.chan_available(self.w, self.c) == m.available()

    @invariant()
    def capacity_is_never_exceeded(self):
        if self.c < 0:
            return
        held = sum(len(p.reserved) for p in self.producers.values())
        assert self.model.backlog() + held <= self.capacity
        assert self.model.undelivered() <= self.capacity

    @invariant()
    def heap_holds_exactly_what_the_channel_and_writers_hold(self):
        if self.c < 0:
            return
        w = self.w
        rings = sum(1 for p in self.model.producers if p.has_ring)
        expect = units_for(w, self.capacity * cl.SLOT_STRIDE) + rings * units_for(
            w, self.capacity * 8
        )
        live = (cl.KIND_PUBLISHED, cl.KIND_CLAIMED, cl.KIND_REDELIVER)
        expect += sum(
            units_for(w, len(s.payload)) for s in self.model.slots if s.large and s.kind in live
        )
        assert heap_used_by_tag(w, self.ctag) == expect
        for tag, p in self.producers.items():
            assert heap_used_by_tag(w, tag) == sum(units_for(w, len(x)) for _, x in p.reserved)
        for tag in self.consumers:
            if tag not in self.producers:
                assert heap_used_by_tag(w, tag) == 0
        assert heap_free_units(w) == self.baseline - expect - sum(
            units_for(w, len(x)) for p in self.producers.values() for _, x in p.reserved
        )

    # -------------------------------------------------------------- teardown
    def teardown(self):
        if self.c < 0:
            return
        for tag, p in self.producers.items():
            for s, _ in p.reserved:
                self._abort(tag, s)
            p.reserved.clear()
        for tag, con in self.consumers.items():
            self._take(tag, con, len(con.claimed))
        # A last consumer drains everything (no MPSC conflict: it skips the mark).
        tag = self.next_tag
        con = Consumer(-1)
        while True:
            out = np.zeros(8, np.int64)
            n = ch.cons_claim(self.b, self.w, self.c, tag, con.kcws, out, 8)
            slots = [int(x) for x in out[:n]]
            assert slots == self.model.cons_claim(tag, con.mcws, 8)
            if not slots:
                break
            con.claimed = slots
            self._take(tag, con, n)
        assert self.model.backlog() == 0
        out = np.zeros((cl.MAX_PRODUCERS, 5), np.int64)
        assert ch.chan_producer_offsets(self.w, self.c, out) == 0
        for mid in self.acked:
            if mid in self.maybe_twice:
                assert self.delivered[mid] >= 1, mid
            else:
                assert self.delivered[mid] == 1, (mid, self.delivered[mid])
        assert set(self.delivered) <= set(self.acked)
        ch.chan_destroy(self.b, self.w, self.c)
        assert heap_free_units(self.w) == self.baseline


ChannelMachine.TestCase.settings = settings(
    max_examples=MACHINE_EXAMPLES, stateful_step_count=50, deadline=None
)
TestChannelMachine = ChannelMachine.TestCase


# ---------------------------------------------------------------------------
# The same state machine with the kernels' pure-Python bodies
# ---------------------------------------------------------------------------


@pytest.mark.timeout(280)
def test_state_machine_passes_without_jit():
    env = dict(os.environ, NUMBA_DISABLE_JIT="1", FLUXON_MACHINE_EXAMPLES="8")
    cmd = [
        sys.executable,
        "-m",
        "pytest",
        "-q",
        "-p",
        "no:cacheprovider",
        "tests/kernels/test_channel_props.py::TestChannelMachine",
        "tests/kernels/test_channel.py",
    ]
    proc = subprocess.run(
        cmd, check=False, cwd=ROOT, env=env, capture_output=True, text=True, timeout=260
    )
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    assert re.search(r"\b\d+ passed", proc.stdout) and not re.search(r"\b\d+ failed", proc.stdout)
