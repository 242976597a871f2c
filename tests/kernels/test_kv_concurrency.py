"""KV kernels under real concurrency and crashes.

* Stress: 2 writer and 2 reader processes on one file-backed pool. Writers publish
  self-checking values (every byte equals ``counter % 240`` and the length is
  ``LENS[counter % 6]``, 1 byte to 5 units) to the same few keys and remove them;
  readers check every copy ``kv_read`` returns. A tiny heap makes freed blocks get
  reused while readers may still be copying them.
* Crash repair, step by step: a put or remove is replayed in-process and abandoned
  after each of its steps (memory then looks exactly as if the writer had been killed
  there); ``kv_repair_dead`` + ``heap_reclaim_tag`` must restore every invariant.
* Crash repair, for real: a child SIGKILLs itself while holding a bucket lock, and
  two children are SIGKILLed at random moments of a put/remove loop.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import random
import signal
import time

import numpy as np
import pytest
from numba import njit

import fluxon_kernels.kv as kv_mod
from fluxon_kernels import status
from fluxon_kernels.atomics import load_acquire, store_relaxed
from fluxon_kernels.heap import (
    heap_alloc,
    heap_free,
    heap_free_units,
    heap_reclaim_tag,
    heap_retag,
    heap_used_by_tag,
    make_ref,
    ref_nbytes,
    ref_start,
    unit_offset,
    units_for,
)
from fluxon_kernels.kv import (
    kv_count_prefix,
    kv_hash,
    kv_key_at,
    kv_lookup,
    kv_put,
    kv_read,
    kv_remove,
    kv_repair_dead,
)
from fluxon_kernels.layout import kv_bucket as kb
from fluxon_kernels.layout import pool_header as ph
from fluxon_kernels.layout.heap import KV_TAG_BASE
from tests.model import attach_pool_file, create_pool_file, heap_tags, make_pool

UNIT = 1024
LENS = np.array([1, 100, UNIT, UNIT + 1, 3000, 5 * UNIT - 3], np.int64)
KEYS = [b"shared/alpha", b"shared/beta", b"gamma"]
OWNER_TAG = 9  # the repairing "owner" in these tests
STRESS_SECONDS = float(os.environ.get("FLUXON_STRESS_SECONDS", "2.0"))


def K(s: bytes) -> np.ndarray:
    return np.frombuffer(s, np.uint8)


def bucket_word(w, i, field):
    return (int(w[ph.W_KV_OFF]) + i * int(w[ph.W_KV_STRIDE])) // 8 + field


def value_ok(buf: np.ndarray) -> bool:
    """A self-checking value: constant bytes whose value picks the length."""
    n = len(buf)
    return n > 0 and n == LENS[buf[0] % len(LENS)] and bool((buf == buf[0]).all())


def check_repaired_pool(b, w):
    """Every invariant the owner relies on after repairing dead members.

    Returns the number of FULL buckets.
    """
    nb = int(w[ph.W_KV_BUCKETS])
    units = int(w[ph.W_HEAP_UNITS])
    tags = heap_tags(w)
    expected = np.zeros(units, np.int64)
    full = 0
    out = np.zeros(8 * UNIT, np.uint8)
    key = np.zeros(kb.KEY_MAX, np.uint8)
    for i in range(nb):
        assert w[bucket_word(w, i, kb.B_LOCK)] == 0, f"bucket {i} still locked"
        assert w[bucket_word(w, i, kb.B_VERSION)] % 2 == 0, f"bucket {i} version odd"
        state = w[bucket_word(w, i, kb.B_STATE)]
        ref = int(w[bucket_word(w, i, kb.B_REF)])
        if state != kb.STATE_FULL:
            assert ref == 0, f"bucket {i} is not FULL but holds a block"
            continue
        full += 1
        start, n = ref_start(ref), ref_nbytes(ref)
        expected[start : start + units_for(w, n)] = KV_TAG_BASE + i
        klen = kv_key_at(b, w, i, key)
        assert klen > 0
        got = kv_read(b, w, key[:klen], out)
        assert got == n
        assert value_ok(out[:n]), f"bucket {i} holds a torn value"
    # Every unit is free or part of exactly the block its bucket's REF points to.
    assert np.array_equal(tags, expected)
    return full


def remove_everything(b, w):
    nb = int(w[ph.W_KV_BUCKETS])
    key = np.zeros(kb.KEY_MAX, np.uint8)
    for i in range(nb):
        if w[bucket_word(w, i, kb.B_STATE)] == kb.STATE_FULL:
            klen = kv_key_at(b, w, i, key)
            assert kv_remove(b, w, key[:klen].copy(), OWNER_TAG, 0) == status.OK
    assert kv_count_prefix(b, w, np.zeros(0, np.uint8)) == 0
    assert heap_free_units(w) == w[ph.W_HEAP_UNITS]


def write_value(b, w, tag, counter):
    """Allocate and fill a self-checking value; returns its ref (or a status)."""
    n = int(LENS[counter % len(LENS)])
    start = heap_alloc(w, n, tag)
    if start < 0:
        return start
    off = unit_offset(w, start)
    b[off : off + n] = counter % 240
    return make_ref(start, n)


# ---------------------------------------------------------------------------
# Multi-process stress: 2 writers + 2 readers
# ---------------------------------------------------------------------------


def _warm_up():
    """Compile (or load from the cache) the kernels with the stress's argument types,
    so the timed loops do not start with seconds of compilation."""
    b, w = make_pool(kv_buckets=8, heap_units=32)
    out = np.zeros(8 * UNIT, np.uint8)
    for key in (K(KEYS[0]), K(KEYS[0]).copy()):
        ref = write_value(b, w, 1, 3)
        assert kv_put(b, w, key, ref, 1, 1000) == status.OK
        assert kv_read(b, w, key, out) == ref_nbytes(ref)
        assert kv_remove(b, w, key, 1, 1000) == status.OK
        heap_free(w, 0, 1, 1)


def _writer(path, tag, seed, seconds, start_barrier, results):
    mm, b, w = attach_pool_file(path)
    rng = random.Random(seed)
    keys = [K(k) for k in KEYS]
    stats = {"role": "writer", "puts": 0, "removes": 0, "retries": 0, "full": 0, "errors": []}
    base = int(w[ph.W_HEAP_TABLE_OFF]) // 8
    _warm_up()
    start_barrier.wait(60)
    deadline = time.monotonic() + seconds
    c = seed * 1000
    while time.monotonic() < deadline:
        c += 1
        key = keys[rng.randrange(len(keys))]
        if rng.random() < 0.15:
            r = kv_remove(b, w, key, tag, 1000)
            if r == status.OK:
                stats["removes"] += 1
            elif r not in (status.NOT_FOUND, status.RETRY):
                stats["errors"].append(("remove", r))
            continue
        ref = write_value(b, w, tag, c)
        if ref < 0:
            stats["full"] += 1
            continue
        start, n = ref_start(ref), ref_nbytes(ref)
        if not (w[base + start : base + start + units_for(w, n)] == tag).all():
            stats["errors"].append(("alloc returned units not tagged with us", start, n))
        while True:
            r = kv_put(b, w, key, ref, tag, 1000)
            if r != status.RETRY:
                break
            stats["retries"] += 1
        if r == status.OK:
            stats["puts"] += 1
        else:
            stats["errors"].append(("put", r))
            heap_free(w, start, n, tag)
    del b, w
    mm.close()
    results.put(stats)


def _reader(path, seed, seconds, start_barrier, results):
    mm, b, w = attach_pool_file(path)
    keys = [K(k) for k in KEYS]
    out = np.zeros(8 * UNIT, np.uint8)
    stats = {"role": "reader", "ok": 0, "absent": 0, "retries": 0, "torn": 0, "errors": []}
    _warm_up()
    start_barrier.wait(60)
    deadline = time.monotonic() + seconds
    i = seed
    while time.monotonic() < deadline:
        i += 1
        n = kv_read(b, w, keys[i % len(keys)], out)
        if n == status.NOT_FOUND:
            stats["absent"] += 1
        elif n == status.RETRY:
            stats["retries"] += 1
        elif n < 0:
            stats["errors"].append(("read", n))
        elif value_ok(out[:n]):
            stats["ok"] += 1
        else:
            stats["torn"] += 1
            if len(stats["errors"]) < 5:
                stats["errors"].append(("torn", n, np.unique(out[:n])[:8].tolist()))
    del b, w
    mm.close()
    results.put(stats)


def _stop(procs):
    for p in procs:
        if p.is_alive():
            p.kill()
        p.join(10)


@pytest.mark.timeout(180)
def test_readers_never_see_a_torn_value(tmp_path):
    path = str(tmp_path / "stress.pool")
    # 64 units: blocks are freed and handed to the other writer constantly.
    create_pool_file(path, kv_buckets=64, heap_units=64)
    _warm_up()  # fills the on-disk cache once for all four children
    ctx = mp.get_context("spawn")
    barrier = ctx.Barrier(4)
    results = ctx.Queue()
    procs = [
        ctx.Process(target=_writer, args=(path, 1, 1, STRESS_SECONDS, barrier, results)),
        ctx.Process(target=_writer, args=(path, 2, 2, STRESS_SECONDS, barrier, results)),
        ctx.Process(target=_reader, args=(path, 0, STRESS_SECONDS, barrier, results)),
        ctx.Process(target=_reader, args=(path, 1, STRESS_SECONDS, barrier, results)),
    ]
    stats = []
    try:
        for p in procs:
            p.start()
        for _ in procs:
            stats.append(results.get(timeout=120))
        for p in procs:
            p.join(30)
        assert [p.exitcode for p in procs] == [0, 0, 0, 0]
    finally:
        _stop(procs)
        results.close()
    writers = [s for s in stats if s["role"] == "writer"]
    readers = [s for s in stats if s["role"] == "reader"]
    for s in stats:
        assert s["errors"] == [], s
    assert all(s["puts"] > 0 for s in writers), writers
    assert all(s["torn"] == 0 for s in readers), readers
    assert all(s["ok"] > 0 for s in readers), readers

    mm, b, w = attach_pool_file(path)
    try:
        check_repaired_pool(b, w)  # quiescent pool: the same invariants hold
        assert heap_used_by_tag(w, 1) == 0 and heap_used_by_tag(w, 2) == 0
        remove_everything(b, w)
    finally:
        del b, w
        mm.close()
        os.unlink(path)


# ---------------------------------------------------------------------------
# Crash repair, step by step (in-process)
# ---------------------------------------------------------------------------


def _bucket_for_put(b, w, key):
    """The bucket kv_put would use for ``key`` (single-threaded probe)."""
    h = kv_hash(key)
    mask = int(w[ph.W_KV_BUCKETS]) - 1
    i = h & mask
    while True:
        st = w[bucket_word(w, i, kb.B_STATE)]
        if st == kb.STATE_EMPTY or kv_mod._key_matches(b, w, i, key, h):
            return i, h, st == kb.STATE_EMPTY
        i = (i + 1) & mask


def crashed_put(b, w, key, ref, tag, stop):
    """Replay ``kv_put``'s steps (as in ``kv._publish``) and abandon it after ``stop``.

    Steps: 0 lock, 1 retag block to the bucket, 2 VERSION odd, 3 key fields (new key
    only), 4 REF, 5 STATE FULL, 6 VERSION even, 7 old block freed (lock still held).
    Returns the bucket index.
    """
    i, h, is_new = _bucket_for_put(b, w, key)
    bb = kv_mod._bucket_byte(w, i)
    bw = bb // 8
    kv_tag = KV_TAG_BASE + i
    old = int(w[bw + kb.B_REF])
    v = [0]

    def write_key():
        if is_new:
            w[bw + kb.B_HASH] = h
            w[bw + kb.B_KEY_LEN] = len(key)
            b[bb + kb.B_KEY_OFF : bb + kb.B_KEY_OFF + len(key)] = key

    steps = [
        lambda: kv_mod._lock(w, bw, tag, 0),
        lambda: heap_retag(w, ref_start(ref), ref_nbytes(ref), tag, kv_tag),
        lambda: v.__setitem__(0, kv_mod._begin_write(w, bw)),
        write_key,
        lambda: w.__setitem__(bw + kb.B_REF, ref),
        lambda: w.__setitem__(bw + kb.B_STATE, kb.STATE_FULL),
        lambda: kv_mod._end_write(w, bw, v[0]),
        lambda: old and heap_free(w, ref_start(old), ref_nbytes(old), kv_tag),
    ]
    for step in steps[: stop + 1]:
        step()
    return i


def crashed_remove(b, w, key, tag, stop):
    """Replay ``kv_remove``'s steps and abandon it after ``stop``.

    Steps: 0 lock, 1 VERSION odd, 2 STATE TOMBSTONE, 3 REF 0, 4 VERSION even,
    5 old block freed (lock still held). Returns the bucket index.
    """
    i = kv_lookup(b, w, key)
    assert i >= 0
    bw = kv_mod._bucket_byte(w, i) // 8
    old = int(w[bw + kb.B_REF])
    v = [0]
    steps = [
        lambda: kv_mod._lock(w, bw, tag, 0),
        lambda: v.__setitem__(0, kv_mod._begin_write(w, bw)),
        lambda: w.__setitem__(bw + kb.B_STATE, kb.STATE_TOMBSTONE),
        lambda: w.__setitem__(bw + kb.B_REF, 0),
        lambda: kv_mod._end_write(w, bw, v[0]),
        lambda: heap_free(w, ref_start(old), ref_nbytes(old), KV_TAG_BASE + i),
    ]
    for step in steps[: stop + 1]:
        step()
    return i


def _repair(b, w, dead):
    repaired = kv_repair_dead(b, w, dead)
    heap_reclaim_tag(w, dead)
    return repaired


def _read(b, w, key):
    out = np.zeros(8 * UNIT, np.uint8)
    n = kv_read(b, w, key, out)
    return n if n < 0 else out[:n].tobytes()


DEAD = 3


@pytest.mark.parametrize("stop", range(8))
@pytest.mark.parametrize("case", ["new", "replace", "revive"])
def test_put_killed_after_each_step_is_repaired(case, stop):
    b, w = make_pool(kv_buckets=8, heap_units=32)
    key = K(b"crash/key")
    old_value = None
    if case in ("replace", "revive"):
        assert kv_put(b, w, key, write_value(b, w, OWNER_TAG, 4), OWNER_TAG, 0) == status.OK
        old_value = _read(b, w, key)
        if case == "revive":
            assert kv_remove(b, w, key, OWNER_TAG, 0) == status.OK
            old_value = None
    new_ref = write_value(b, w, DEAD, 5)  # 3000 bytes of value 5
    i = crashed_put(b, w, key, new_ref, DEAD, stop)
    assert w[bucket_word(w, i, kb.B_LOCK)] == DEAD

    assert _repair(b, w, DEAD) == 1
    # The put took effect iff REF was stored into a bucket that was (or became) FULL.
    took_effect = stop >= 5 or (stop == 4 and case == "replace")
    expect = _read_value_bytes(5) if took_effect else old_value
    got = _read(b, w, key)
    assert got == (status.NOT_FOUND if expect is None else expect)
    assert check_repaired_pool(b, w) == (0 if expect is None else 1)
    assert heap_used_by_tag(w, DEAD) == 0
    # The bucket works normally afterwards.
    assert kv_put(b, w, key, write_value(b, w, OWNER_TAG, 7), OWNER_TAG, 0) == status.OK
    assert _read(b, w, key) == _read_value_bytes(7)
    remove_everything(b, w)


def _read_value_bytes(counter):
    return bytes([counter % 240]) * int(LENS[counter % len(LENS)])


@pytest.mark.parametrize("stop", range(6))
def test_remove_killed_after_each_step_is_repaired(stop):
    b, w = make_pool(kv_buckets=8, heap_units=32)
    key = K(b"crash/key")
    assert kv_put(b, w, key, write_value(b, w, OWNER_TAG, 2), OWNER_TAG, 0) == status.OK
    crashed_remove(b, w, key, DEAD, stop)
    assert _repair(b, w, DEAD) == 1
    got = _read(b, w, key)
    assert got == (_read_value_bytes(2) if stop < 2 else status.NOT_FOUND)
    check_repaired_pool(b, w)
    remove_everything(b, w)


def test_repair_touches_only_the_dead_members_buckets():
    b, w = make_pool(kv_buckets=8, heap_units=32)
    k1, k2 = K(b"one"), K(b"two")
    for k, c in ((k1, 1), (k2, 2)):
        assert kv_put(b, w, k, write_value(b, w, OWNER_TAG, c), OWNER_TAG, 0) == status.OK
    i1 = crashed_put(b, w, k1, write_value(b, w, DEAD, 3), DEAD, 2)
    i2 = crashed_put(b, w, k2, write_value(b, w, DEAD + 1, 4), DEAD + 1, 2)
    assert _repair(b, w, DEAD) == 1
    assert w[bucket_word(w, i1, kb.B_LOCK)] == 0
    assert w[bucket_word(w, i2, kb.B_LOCK)] == DEAD + 1  # alive: left alone
    assert _repair(b, w, DEAD + 1) == 1
    assert _read(b, w, k1) == _read_value_bytes(1)
    assert _read(b, w, k2) == _read_value_bytes(2)
    check_repaired_pool(b, w)
    remove_everything(b, w)


# ---------------------------------------------------------------------------
# Crash repair, for real: SIGKILL
# ---------------------------------------------------------------------------


def _die_holding_the_lock(path, tag, stop):
    _mm, b, w = attach_pool_file(path)
    key = K(KEYS[0])
    crashed_put(b, w, key, write_value(b, w, tag, 5), tag, stop)
    os.kill(os.getpid(), signal.SIGKILL)


@njit(nogil=True, cache=True)
def _churn(b, w, keys, klens, lens, tag, counter_word, iterations):
    """put/remove loop over a few keys (runs until killed); publishes its progress."""
    nkeys = len(klens)
    for c in range(1, iterations + 1):
        j = c % nkeys
        key = keys[j, : klens[j]]
        if c % 5 == 0:
            kv_remove(b, w, key, tag, 1000)
        else:
            n = lens[c % len(lens)]
            start = heap_alloc(w, n, tag)
            if start >= 0:
                off = unit_offset(w, start)
                v = c % 240
                for x in range(n):
                    b[off + x] = v
                if kv_put(b, w, key, make_ref(start, n), tag, 1000) != status.OK:
                    heap_free(w, start, n, tag)
        store_relaxed(w, counter_word, c)
    return 0


@njit(nogil=True, cache=True)
def _progress(w, word):
    return load_acquire(w, word)


def _key_matrix():
    keys = np.zeros((len(KEYS), kb.KEY_MAX), np.uint8)
    klens = np.zeros(len(KEYS), np.int64)
    for j, k in enumerate(KEYS):
        keys[j, : len(k)] = np.frombuffer(k, np.uint8)
        klens[j] = len(k)
    return keys, klens


def _churner(path, tag, counter_word):
    _mm, b, w = attach_pool_file(path)
    keys, klens = _key_matrix()
    _churn(b, w, keys, klens, LENS, tag, counter_word, 1 << 62)


def _wait_dead(p, timeout=60):
    p.join(timeout)
    assert not p.is_alive()
    assert p.exitcode == -signal.SIGKILL


@pytest.mark.timeout(120)
def test_member_killed_while_holding_a_bucket_lock(tmp_path):
    path = str(tmp_path / "crash.pool")
    create_pool_file(path, kv_buckets=64, heap_units=64)
    mm, b, w = attach_pool_file(path)
    ctx = mp.get_context("spawn")
    p = ctx.Process(target=_die_holding_the_lock, args=(path, DEAD, 3))
    try:
        key = K(KEYS[0])
        assert kv_put(b, w, key, write_value(b, w, OWNER_TAG, 1), OWNER_TAG, 0) == status.OK
        p.start()
        _wait_dead(p)
        i = kv_lookup(b, w, key)
        assert w[bucket_word(w, i, kb.B_LOCK)] == DEAD
        # Readers back off from the odd VERSION; writers cannot take the lock.
        assert kv_read(b, w, key, np.zeros(8 * UNIT, np.uint8)) == status.RETRY
        assert kv_remove(b, w, key, OWNER_TAG, 100) == status.RETRY
        assert _repair(b, w, DEAD) == 1
        assert _read(b, w, key) == _read_value_bytes(1)  # the put never became visible
        check_repaired_pool(b, w)
        remove_everything(b, w)
    finally:
        _stop([p])
        del b, w
        mm.close()
        os.unlink(path)


@pytest.mark.timeout(180)
def test_members_killed_at_random_moments_are_repaired(tmp_path):
    path = str(tmp_path / "churn.pool")
    create_pool_file(path, kv_buckets=64, heap_units=64)
    mm, b, w = attach_pool_file(path)
    # Progress counters in the (otherwise unused) channel region, one line each.
    words = [int(w[ph.W_CHAN_OFF]) // 8, int(w[ph.W_CHAN_OFF]) // 8 + 8]
    tags = [DEAD, DEAD + 1]
    keys, klens = _key_matrix()
    scratch_b, scratch_w = make_pool(kv_buckets=8, heap_units=32)
    _churn(scratch_b, scratch_w, keys, klens, LENS, 1, words[0], 10)  # compile for the children
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_churner, args=(path, t, wd)) for t, wd in zip(tags, words)]
    rng = random.Random()
    try:
        for p in procs:
            p.start()
        deadline = time.monotonic() + 90
        while min(_progress(w, wd) for wd in words) < 2000:
            assert time.monotonic() < deadline, "churn children made no progress"
            time.sleep(0.01)
        for p in procs:
            time.sleep(rng.uniform(0.0, 0.2))
            os.kill(p.pid, signal.SIGKILL)
        for p in procs:
            _wait_dead(p)
        assert all(_progress(w, wd) > 2000 for wd in words)
        for t in tags:
            _repair(b, w, t)
        check_repaired_pool(b, w)
        for t in tags:
            assert heap_used_by_tag(w, t) == 0
        remove_everything(b, w)
    finally:
        _stop(procs)
        del b, w
        mm.close()
        os.unlink(path)
