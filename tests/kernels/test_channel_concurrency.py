"""Channel kernels under real concurrency and SIGKILL, across processes.

* Stress: 3 producers (weights 1, 2, 3) and 3 consumers on one channel of capacity 3
  in a file-backed pool. Payloads check themselves (producer tag, seq, length and a
  pattern derived from them; inline and large messages mixed). Producers sleep on the
  ``SPACE_SEQ`` futex when the channel is full, consumers on ``DATA_SEQ`` when it is
  empty (with a timeout, so a lost wake-up would cost time, not a hang). Every message
  must arrive exactly once, intact, FIFO per producer per consumer; afterwards the
  backlog is 0 and destroying the channel returns the heap to its baseline.
* SIGKILL: while producers and consumers run, consumers that claim batches and sit on
  them, and a producer, are SIGKILLed at random moments; the parent repairs each dead
  tag (``chan_repair_dead`` + ``heap_reclaim_tag``) and starts a new incarnation with
  a new tag. Every acknowledged put is taken at least once (or was being taken by a
  consumer that died), duplicates only among messages a killed consumer had claimed,
  and the channel keeps flowing.

``FLUXON_STRESS_SCALE`` (default 1.0) scales the message counts.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import random
import signal
import struct
import time
from collections import Counter

import numpy as np
import pytest

import fluxon_kernels.channel as ch
from fluxon.futex import futex_wait, futex_wake, seq_expected
from fluxon_kernels import status
from fluxon_kernels.heap import heap_free_units, heap_reclaim_tag, heap_used_by_tag
from fluxon_kernels.layout import channel as cl
from tests.model import attach_pool_file, create_pool_file, make_pool

SCALE = float(os.environ.get("FLUXON_STRESS_SCALE", "1.0"))
STRESS_MESSAGES = max(50, int(4000 * SCALE))  # per producer
KILLS = max(10, int(12 * SCALE))
HEAP_UNITS = 512
CAPACITY = 3
PARENT = 1
#: Payload sizes by ``(seq * 7 + tag) % len``: inline (<= SLOT_INLINE) and large.
SIZES = (12, 64, cl.SLOT_INLINE, cl.SLOT_INLINE + 1, 1500, 3000)
WAIT_S = 0.05


# ---------------------------------------------------------------------------
# Payloads and kernel calling sequences (shared by parent and children)
# ---------------------------------------------------------------------------


def size_of(tag: int, seq: int) -> int:
    return SIZES[(seq * 7 + tag) % len(SIZES)]


def message(tag: int, seq: int) -> np.ndarray:
    n = size_of(tag, seq)
    body = ((np.arange(n - 12, dtype=np.int64) * 13 + tag * 7 + seq) & 0xFF).astype(np.uint8)
    return np.concatenate([np.frombuffer(struct.pack("<iii", tag, seq, n), np.uint8), body])


def check(buf: np.ndarray) -> tuple[int, int] | None:
    """(tag, seq) of an intact payload, None if it is corrupt."""
    if len(buf) < 12:
        return None
    tag, seq, n = struct.unpack("<iii", buf[:12].tobytes())
    if n != len(buf) or n != size_of(tag, seq) or not np.array_equal(buf, message(tag, seq)):
        return None
    return tag, seq


def put(b, w, c, e, tag, seq) -> int:
    """One put like the facade: inline, or reserve + write + publish. 0/1 or a status."""
    data = message(tag, seq)
    n = len(data)
    if n <= cl.SLOT_INLINE:
        return ch.prod_put(b, w, c, e, tag, data, n)
    s = ch.prod_reserve(b, w, c, e, tag, n)
    if s < 0:
        return s
    off = ch.slot_payload_offset(b, w, c, s)
    b[off : off + n] = data
    return ch.prod_publish(b, w, c, e, tag, s)


def peek(b, w, c, s) -> tuple[int, int]:
    """(tag, seq) from the header of claimed slot ``s`` (before taking it)."""
    off = ch.slot_payload_offset(b, w, c, s)
    tag, seq, _ = struct.unpack("<iii", b[off : off + 12].tobytes())
    return tag, seq


def take(b, w, c, tag, slots, n):
    """cons_lengths + cons_take; returns (payload views, wake flag)."""
    lens = np.zeros(n, np.int64)
    total = ch.cons_lengths(b, w, c, slots, n, lens)
    buf = np.zeros(max(total, 1), np.uint8)
    offs = np.zeros(n, np.int64)
    if n > 1:
        offs[1:] = np.cumsum(lens[:n])[:-1]
    wake = ch.cons_take(b, w, c, tag, slots, n, buf, offs)
    return [buf[o : o + ln] for o, ln in zip(offs, lens)], wake


def no_free_slot(w, c) -> bool:
    """A producer's re-check before sleeping: every slot is taken."""
    cw = ch.chan_word(w, c)
    return all(w[ch._slot_word(w, cw, s)] != 0 for s in range(int(w[cw + cl.C_CAPACITY])))


def nothing_available(w, c) -> bool:
    """A consumer's re-check before sleeping."""
    return ch.chan_available(w, c) == 0


class Waiter:
    """Futex sleeps on a channel's sequences, with the register/re-check protocol."""

    def __init__(self, b, w, c):
        self.w, self.c = w, c
        base = b.ctypes.data
        self.addr = [base + ch.seq_byte_offset(w, c, 0), base + ch.seq_byte_offset(w, c, 1)]

    def wait(self, space: int, still_blocked) -> None:
        """Register, re-check ``still_blocked(w, c)``, sleep (bounded), unregister."""
        seq = ch.wait_begin(self.w, self.c, space)
        try:
            if still_blocked(self.w, self.c):
                futex_wait(self.addr[space], seq_expected(seq), WAIT_S)
        finally:
            ch.wait_end(self.w, self.c, space)

    def wake(self, space: int) -> None:
        futex_wake(self.addr[space])


def _warm_up():
    """Compile (or load from the on-disk cache) every kernel with the children's types."""
    b, w = make_pool(heap_units=64)
    c = ch.chan_create(b, w, PARENT, 1, cl.TYPE_MPMC, CAPACITY, 0)
    e = ch.prod_attach(b, w, c, 2, 1, 0)
    k = ch.cons_attach(w, c, 3, 0, 0)
    for seq in range(3):
        assert put(b, w, c, e, 2, seq) >= 0
    cws = np.zeros(cl.MAX_PRODUCERS, np.int64)
    out = np.zeros(4, np.int64)
    n = ch.cons_claim(b, w, c, 3, cws, out, 4)
    ch.cons_return(b, w, c, 3, out, 1)
    take(b, w, c, 3, out, n)
    ch.chan_available(w, c)
    no_free_slot(w, c)
    for space in (0, 1):
        ch.wait_begin(w, c, space)
        ch.wait_end(w, c, space)
    ch.prod_detach(w, c, e, 2)
    ch.cons_detach(w, c, k, 3)
    ch.chan_repair_dead(b, w, 4)
    heap_reclaim_tag(w, 4)
    ch.chan_producer_offsets(w, c, np.zeros((cl.MAX_PRODUCERS, 5), np.int64))
    ch.chan_destroy(b, w, c)


class _Flag:
    """A stop flag that a SIGKILLed process cannot leave locked: ``multiprocessing.Event``
    takes a lock in ``is_set()``, so killing a victim there deadlocks the next ``set()``."""

    def __init__(self, ctx) -> None:
        self._value = ctx.RawValue("i", 0)

    def set(self) -> None:
        self._value.value = 1

    def is_set(self) -> bool:
        return self._value.value != 0


def _stop(procs):
    for p in procs:
        if p.is_alive():
            p.kill()
        p.join(10)


# ---------------------------------------------------------------------------
# Stress: 3 producers x 3 consumers, exactly once
# ---------------------------------------------------------------------------


def _stress_producer(path, c, tag, weight, count, barrier, results):
    mm, b, w = attach_pool_file(path)
    stats = {"role": "producer", "tag": tag, "full": 0, "errors": []}
    e = ch.prod_attach(b, w, c, tag, weight, os.getpid())
    waiter = Waiter(b, w, c)
    _warm_up()
    barrier.wait(60)
    for seq in range(count):
        while True:
            r = put(b, w, c, e, tag, seq)
            if r >= 0:
                break
            if r not in (status.FULL, status.NO_MEMORY):
                stats["errors"].append(("put", seq, r))
                break
            stats["full"] += 1
            waiter.wait(1, no_free_slot)  # full: sleep until a take
        if r == 1:
            waiter.wake(0)
    stats["detach"] = ch.prod_detach(w, c, e, tag)
    del b, w, waiter
    mm.close()
    results.put(stats)


def _stress_consumer(path, c, tag, batch, barrier, stop, results):
    mm, b, w = attach_pool_file(path)
    stats = {"role": "consumer", "tag": tag, "corrupt": 0, "errors": [], "sleeps": 0}
    k = ch.cons_attach(w, c, tag, os.getpid(), 0)
    waiter = Waiter(b, w, c)
    cws = np.zeros(cl.MAX_PRODUCERS, np.int64)
    out = np.zeros(batch, np.int64)
    got = []
    _warm_up()
    barrier.wait(60)
    while True:
        n = ch.cons_claim(b, w, c, tag, cws, out, batch)
        if n == 0:
            if stop.is_set():
                if ch.cons_claim(b, w, c, tag, cws, out, batch) == 0:
                    break
                continue
            stats["sleeps"] += 1
            waiter.wait(0, nothing_available)
            continue
        payloads, wake = take(b, w, c, tag, out, n)
        if wake:
            waiter.wake(1)
        for p in payloads:
            mid = check(p)
            if mid is None:
                stats["corrupt"] += 1
            else:
                got.append(mid[0] << 32 | mid[1])
    stats["got"] = np.array(got, np.int64)
    stats["detach"] = ch.cons_detach(w, c, k, tag)
    del b, w, waiter
    mm.close()
    results.put(stats)


@pytest.mark.timeout(240)
def test_three_producers_three_consumers_exactly_once(tmp_path):
    path = str(tmp_path / "stress.pool")
    create_pool_file(path, heap_units=HEAP_UNITS)
    mm, b, w = attach_pool_file(path)
    _warm_up()
    baseline = heap_free_units(w)
    c = ch.chan_create(b, w, PARENT, 1, cl.TYPE_MPMC, CAPACITY, 0)
    assert c >= 0
    ctx = mp.get_context("spawn")
    barrier = ctx.Barrier(6)
    stop = ctx.Event()
    results = ctx.Queue()
    ptags, ctags = [2, 3, 4], [10, 11, 12]
    producers = [
        ctx.Process(
            target=_stress_producer,
            args=(path, c, t, wt, STRESS_MESSAGES, barrier, results),
        )
        for t, wt in zip(ptags, (1, 2, 3))
    ]
    consumers = [
        ctx.Process(target=_stress_consumer, args=(path, c, t, bt, barrier, stop, results))
        for t, bt in zip(ctags, (1, 3, 4))
    ]
    stats = []
    try:
        for p in producers + consumers:
            p.start()
        while sum(s["role"] == "producer" for s in stats) < len(producers):
            stats.append(results.get(timeout=180))
        for p in producers:
            p.join(30)
        stop.set()
        while len(stats) < len(producers) + len(consumers):
            stats.append(results.get(timeout=120))
        for p in consumers:
            p.join(30)
        assert [p.exitcode for p in producers + consumers] == [0] * 6
    finally:
        _stop(producers + consumers)
        results.close()

    for s in stats:
        assert s["errors"] == [], s
        assert s["detach"] == status.OK, s
    cons = [s for s in stats if s["role"] == "consumer"]
    assert all(s["corrupt"] == 0 for s in cons), cons
    # Exactly once.
    every = Counter()
    for s in cons:
        every.update(s["got"].tolist())
    want = {t << 32 | q for t in ptags for q in range(STRESS_MESSAGES)}
    assert set(every) == want, (len(want - set(every)), len(set(every) - want))
    assert max(every.values()) == 1
    # FIFO per producer per consumer.
    for s in cons:
        for t in ptags:
            seqs = [x & 0xFFFFFFFF for x in s["got"].tolist() if x >> 32 == t]
            assert seqs == sorted(seqs), (s["tag"], t)
    # Exact offsets, quiescent counters, every slot free.
    out = np.zeros((cl.MAX_PRODUCERS, 5), np.int64)
    try:
        assert ch.chan_producer_offsets(w, c, out) == 0
        for e in range(3):
            assert out[e, 0] == cl.PROD_RETIRED
            assert out[e, 1] == out[e, 2] == out[e, 3] == STRESS_MESSAGES
        cw = ch.chan_word(w, c)
        assert w[cw + cl.C_REDELIVER] == 0
        assert w[cw + cl.C_CONSUMER_WAITERS] == 0 and w[cw + cl.C_PRODUCER_WAITERS] == 0
        assert all(w[ch._slot_word(w, cw, s)] == 0 for s in range(CAPACITY))
        for t in ptags + ctags:
            assert heap_used_by_tag(w, t) == 0
        ch.chan_destroy(b, w, c)
        assert heap_free_units(w) == baseline
    finally:
        del b, w
        mm.close()
        os.unlink(path)


# ---------------------------------------------------------------------------
# SIGKILL: consumers and a producer die at random moments
# ---------------------------------------------------------------------------

#: Per-incarnation bookkeeping in a shared file: ``META`` words then the entry logs.
MAX_INC = 96
META = 5  # log count, ready, acked puts, tag, holding claims
LOG_CAP = int((1 << 16) * max(1.0, SCALE))
#: Steady producers pause this long after each put (keeps the logs bounded).
PUT_PAUSE_S = 0.001
CLAIMED, TAKEN, CORRUPT = 1, 2, 3


def _log_views(path):
    arr = np.memmap(path, np.int64, "r+", shape=(MAX_INC * META + MAX_INC * LOG_CAP,))
    meta = arr[: MAX_INC * META].reshape(MAX_INC, META)
    log = arr[MAX_INC * META :].reshape(MAX_INC, LOG_CAP)
    return arr, meta, log


def _entry(tag, seq, kind):
    return (tag << 34) | (seq << 2) | kind


def _append(meta, log, inc, entries):
    """Write entries, then publish the new count (a kill in between drops them)."""
    n = int(meta[inc, 0])
    k = len(entries)
    if n + k > LOG_CAP:
        raise RuntimeError("log full")
    log[inc, n : n + k] = entries
    meta[inc, 0] = n + k


def _kill_producer(path, logpath, c, tag, inc, spin, stop):
    """Producer: put until stopped (or killed); ``acked`` counts completed puts."""
    mm, b, w = attach_pool_file(path)
    _arr, meta, _log = _log_views(logpath)
    meta[inc, 3] = tag
    e = ch.prod_attach(b, w, c, tag, 1 + inc % 3, os.getpid())
    assert e >= 0, e
    waiter = Waiter(b, w, c)
    _warm_up()
    meta[inc, 1] = 1
    seq = 0
    while not stop.is_set() and seq < LOG_CAP:
        r = put(b, w, c, e, tag, seq)
        if r >= 0:
            seq += 1
            meta[inc, 2] = seq
            if r == 1:
                waiter.wake(0)
            if not spin:
                time.sleep(PUT_PAUSE_S)
        elif spin:
            os.sched_yield()
        else:
            waiter.wait(1, no_free_slot)
    ch.prod_detach(w, c, e, tag)
    del b, w, waiter
    mm.close()


def _kill_consumer(path, logpath, c, tag, inc, victim, stop, seed):
    """Consumer: claim batches, log them, take them; a victim sometimes sits on them."""
    mm, b, w = attach_pool_file(path)
    _arr, meta, log = _log_views(logpath)
    meta[inc, 3] = tag
    k = ch.cons_attach(w, c, tag, os.getpid(), 0)
    assert k >= 0, k
    waiter = Waiter(b, w, c)
    rng = random.Random(seed)
    cws = np.zeros(cl.MAX_PRODUCERS, np.int64)
    out = np.zeros(4, np.int64)
    _warm_up()
    meta[inc, 1] = 1
    while True:
        n = ch.cons_claim(b, w, c, tag, cws, out, rng.randint(1, 4))
        if n == 0:
            if stop.is_set() and ch.cons_claim(b, w, c, tag, cws, out, 4) == 0:
                break
            if victim:
                os.sched_yield()  # spin: a victim never registers as a waiter
            elif not stop.is_set():
                waiter.wait(0, nothing_available)
            continue
        _append(meta, log, inc, [_entry(*peek(b, w, c, s), CLAIMED) for s in out[:n]])
        if victim and rng.random() < 0.3:
            meta[inc, 4] = 1  # sitting on the claimed batch: a good moment to die
            time.sleep(rng.uniform(0.005, 0.03))
        payloads, wake = take(b, w, c, tag, out, n)
        meta[inc, 4] = 0
        if wake:
            waiter.wake(1)
        entries = []
        for p in payloads:
            mid = check(p)
            entries.append(_entry(0, 0, CORRUPT) if mid is None else _entry(*mid, TAKEN))
        _append(meta, log, inc, entries)
    ch.cons_detach(w, c, k, tag)
    del b, w, waiter
    mm.close()


class Slot:
    """A place for one process that is killed and restarted with a new tag."""

    def __init__(self, kind, victim):
        self.kind = kind  # "producer" or "consumer"
        self.victim = victim
        self.proc = None
        self.inc = -1
        self.tag = -1


@pytest.mark.timeout(300)
def test_sigkilled_members_lose_nothing_and_the_channel_keeps_flowing(tmp_path):
    path = str(tmp_path / "kill.pool")
    logpath = str(tmp_path / "kill.log")
    create_pool_file(path, heap_units=HEAP_UNITS)
    with open(logpath, "wb") as f:
        f.truncate((MAX_INC * META + MAX_INC * LOG_CAP) * 8)
    mm, b, w = attach_pool_file(path)
    _arr, meta, log = _log_views(logpath)
    _warm_up()
    baseline = heap_free_units(w)
    c = ch.chan_create(b, w, PARENT, 1, cl.TYPE_MPMC, CAPACITY, 0)
    assert c >= 0
    cw = ch.chan_word(w, c)
    ctx = mp.get_context("spawn")
    stop_producers = _Flag(ctx)
    stop_consumers = _Flag(ctx)
    rng = random.Random()
    next_tag = [20]
    incs = []  # (slot kind, victim, inc, tag, killed)
    killed_incs = set()

    def start(slot: Slot):
        slot.inc = len(incs)
        assert slot.inc < MAX_INC
        slot.tag = next_tag[0]
        next_tag[0] += 1
        incs.append(slot.kind)
        if slot.kind == "producer":
            args = (path, logpath, c, slot.tag, slot.inc, slot.victim, stop_producers)
            slot.proc = ctx.Process(target=_kill_producer, args=args)
        else:
            args = (path, logpath, c, slot.tag, slot.inc, slot.victim, stop_consumers, rng.random())
            slot.proc = ctx.Process(target=_kill_consumer, args=args)
        slot.proc.start()

    slots = [Slot("producer", False) for _ in range(2)]  # steady producers
    slots += [Slot("consumer", False)]  # a steady consumer
    victims = [Slot("consumer", True) for _ in range(3)] + [Slot("producer", True)]
    slots += victims
    kills = {"consumer": 0, "producer": 0}
    try:
        for s in slots:
            start(s)
        deadline = time.monotonic() + 200
        while kills["consumer"] + kills["producer"] < KILLS or kills["producer"] < 2:
            assert time.monotonic() < deadline, f"too slow: {kills}"
            time.sleep(rng.uniform(0.01, 0.1))
            ready = [s for s in victims if meta[s.inc, 1] == 1]
            if not ready:
                continue
            s = rng.choice(ready)
            if s.kind == "consumer":
                if meta[s.inc, 0] == 0:
                    continue  # let it claim something first
                if rng.random() < 0.6:  # mostly kill one that sits on claimed messages
                    until = time.monotonic() + 0.5
                    while meta[s.inc, 4] == 0 and time.monotonic() < until:
                        time.sleep(0.001)
            os.kill(s.proc.pid, signal.SIGKILL)
            s.proc.join(30)
            assert s.proc.exitcode == -signal.SIGKILL
            killed_incs.add(s.inc)
            ch.chan_repair_dead(b, w, s.tag)
            heap_reclaim_tag(w, s.tag)
            assert heap_used_by_tag(w, s.tag) == 0
            kills[s.kind] += 1
            start(s)
        # Let the restarted ones work a little, then wind down in order.
        time.sleep(0.3)
        stop_producers.set()
        for s in slots:
            if s.kind == "producer":
                s.proc.join(60)
        stop_consumers.set()
        for s in slots:
            if s.kind == "consumer":
                s.proc.join(60)
        assert all(s.proc.exitcode == 0 for s in slots), [s.proc.exitcode for s in slots]
    finally:
        _stop([s.proc for s in slots if s.proc is not None])

    try:
        # Acknowledged puts, and the one a killed producer may have published unacked.
        acked, in_flight = set(), set()
        claimed_by_killed = set()  # claimed, not yet taken, when their consumer died
        taken = Counter()
        corrupt = 0
        for inc, kind in enumerate(incs):
            tag, count = int(meta[inc, 3]), int(meta[inc, 0])
            if kind == "producer":
                n = int(meta[inc, 2])
                acked.update((tag, q) for q in range(n))
                if inc in killed_incs:
                    in_flight.add((tag, n))
                continue
            mine_claimed, mine_taken = set(), set()
            for x in log[inc, :count].tolist():
                mid, k = (x >> 34, (x >> 2) & 0xFFFFFFFF), x & 3
                if k == CORRUPT:
                    corrupt += 1
                elif k == TAKEN:
                    taken[mid] += 1
                    mine_taken.add(mid)
                elif k == CLAIMED:
                    mine_claimed.add(mid)
            if inc in killed_incs:
                claimed_by_killed |= mine_claimed - mine_taken
        assert corrupt == 0
        assert kills["consumer"] + kills["producer"] >= KILLS and kills["producer"] >= 2
        assert len(acked) > 100
        assert len(claimed_by_killed) > 0, "no consumer died holding claimed messages"
        lost = [m for m in acked if taken[m] == 0 and m not in claimed_by_killed]
        assert lost == [], lost[:10]
        dups = [m for m, n in taken.items() if n > 1 and m not in claimed_by_killed]
        assert dups == [], dups[:10]
        assert set(taken) <= acked | in_flight
        # Nothing left behind: no backlog, every slot free, nobody registered as a waiter.
        out = np.zeros((cl.MAX_PRODUCERS, 5), np.int64)
        assert ch.chan_producer_offsets(w, c, out) == 0
        assert all(w[ch._slot_word(w, cw, s)] == 0 for s in range(CAPACITY))
        assert w[cw + cl.C_CONSUMER_WAITERS] == 0 and w[cw + cl.C_PRODUCER_WAITERS] == 0
        # The channel still flows at full capacity.
        e = ch.prod_attach(b, w, c, PARENT, 1, 0)
        assert e >= 0
        for seq in range(CAPACITY):
            assert put(b, w, c, e, PARENT, seq) >= 0
        assert put(b, w, c, e, PARENT, CAPACITY) == status.FULL
        cws = np.zeros(cl.MAX_PRODUCERS, np.int64)
        slots_out = np.zeros(CAPACITY, np.int64)
        n = ch.cons_claim(b, w, c, PARENT, cws, slots_out, CAPACITY)
        payloads, _ = take(b, w, c, PARENT, slots_out, n)
        assert [check(p) for p in payloads] == [(PARENT, q) for q in range(CAPACITY)]
        for inc in range(len(incs)):
            assert heap_used_by_tag(w, int(meta[inc, 3])) == 0
        ch.chan_destroy(b, w, c)
        assert heap_free_units(w) == baseline
    finally:
        del meta, log, _arr
        del b, w
        mm.close()
        os.unlink(path)
        os.unlink(logpath)
