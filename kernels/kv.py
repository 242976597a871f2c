"""KV index kernels: open addressing with linear probing, seqlocked buckets.

Layout in :mod:`.layout.kv_bucket`. Keys are ``uint8`` arrays (UTF-8 bytes,
``1 .. KEY_MAX`` long); values live in heap blocks (:mod:`.heap`) referenced by the
bucket's ``REF`` word.

Placement rule (what makes lock-free lookups correct)
    A key is placed once, in the first bucket of its probe sequence
    (``hash & (KV_BUCKETS - 1)``, ``+1``, ...) found EMPTY *under that bucket's
    lock*, and stays there forever: removing it leaves a TOMBSTONE that keeps the
    key and is revived only by a put of the same key; other keys probe past it.
    A bucket therefore goes EMPTY -> non-EMPTY exactly once, and its HASH, KEY_LEN
    and KEY are written before its STATE leaves EMPTY (release) and never change
    afterwards. Probing for a key can stop at the first EMPTY bucket, and a prober
    that saw a non-EMPTY STATE (acquire) may compare the key without any lock.
    Two concurrent first puts of one key serialise on the lock of the same first
    EMPTY bucket, so they end in ONE bucket.

Writers (``kv_put``, ``kv_remove``)
    Take the bucket's ``LOCK`` with ``cas(0 -> member tag)`` (bounded spin, else
    ``RETRY``), make ``VERSION`` odd, change the fields, make ``VERSION`` even,
    free the replaced heap block, unlock. A new value's block is first retagged from
    the writer's member tag to ``KV_TAG_BASE + bucket``; the replaced block carries
    that bucket tag and is freed only after ``VERSION`` moved, so a reader that
    copied bytes from a block being freed and reused always sees ``VERSION`` changed.

Readers (``kv_read``, ``kv_value_size``)
    Never lock: seqlock read (VERSION acquire; odd -> spin; fields + bytes; fence;
    VERSION again; changed -> retry). Bounded: after ``READ_MAX_SPINS`` attempts they
    return ``RETRY`` (a writer killed mid-publish keeps VERSION odd until the owner
    repairs the bucket).

Crash repair invariant (``kv_repair_dead``)
    The only heap block tagged ``KV_TAG_BASE + i`` while bucket ``i`` is unlocked is
    the one ``REF`` points to, and ``REF != 0`` iff ``STATE == FULL``. A writer
    killed while holding the lock may leave: its new block retagged to the bucket
    but not published, the old block published-over but not yet freed, ``VERSION``
    odd, ``REF`` set while ``STATE`` is not yet FULL. The repair frees every unit
    tagged with the bucket that is not part of a FULL bucket's ``REF`` block, clears
    an unpublished ``REF``, makes ``VERSION`` even and unlocks. Blocks the dead
    writer still held under its own member tag are freed by
    :func:`fluxon_kernels.heap.heap_reclaim_tag`.

Limitation: tombstones are never reused by other keys, so a workload with an
unbounded number of distinct keys eventually fills the table (``TABLE_FULL``).
"""

from __future__ import annotations

import numpy as np
from numba import njit

from . import status
from .atomics import (
    cas,
    copy_bytes,
    cpu_relax,
    fence_seq_cst,
    load_acquire,
    load_relaxed,
    store_relaxed,
    store_release,
)
from .heap import heap_free, heap_retag, ref_nbytes, ref_start, units_for
from .layout.heap import FREE_TAG, KV_TAG_BASE
from .layout.kv_bucket import (
    B_HASH,
    B_KEY_LEN,
    B_KEY_OFF,
    B_LOCK,
    B_REF,
    B_STATE,
    B_VERSION,
    KEY_MAX,
    STATE_EMPTY,
    STATE_FULL,
    STATE_TOMBSTONE,
)
from .layout.pool_header import (
    W_HEAP_OFF,
    W_HEAP_TABLE_OFF,
    W_HEAP_UNITS,
    W_KV_BUCKETS,
    W_KV_OFF,
    W_KV_STRIDE,
    W_UNIT_SIZE,
)

__all__ = [
    "READ_MAX_SPINS",
    "kv_count_prefix",
    "kv_hash",
    "kv_key_at",
    "kv_list_keys",
    "kv_lookup",
    "kv_put",
    "kv_read",
    "kv_remove",
    "kv_repair_dead",
    "kv_value_size",
]

#: Attempts a lock-free reader makes (odd VERSION seen or VERSION moved during the
#: copy) before it gives up with ``RETRY``.
READ_MAX_SPINS = 1 << 20

# 64-bit FNV-1a, computed in two 32-bit halves so that every intermediate fits in an
# int64 without overflow (identical results compiled and as plain Python).
_FNV_OFFSET_HI = 0xCBF29CE4
_FNV_OFFSET_LO = 0x84222325
_FNV_PRIME_LO = 0x1B3  # prime = 2**40 + 0x1b3
_M32 = 0xFFFFFFFF


# ---------------------------------------------------------------------------
# Hashing and bucket addressing
# ---------------------------------------------------------------------------


@njit(nogil=True, cache=True)
def kv_hash(key):
    """64-bit FNV-1a of the key bytes.

    Parameters
    ----------
    key : numpy.ndarray
        uint8 key bytes.

    Returns
    -------
    int
        The hash as an int64 bit pattern; never 0 (0 maps to 1).
    """
    hi = _FNV_OFFSET_HI
    lo = _FNV_OFFSET_LO
    for j in range(len(key)):
        lo = lo ^ np.int64(key[j])
        # (hi:lo) * (2**40 + 0x1b3) mod 2**64, as 32-bit halves:
        #   low  = lo*0x1b3 mod 2**32
        #   high = hi*0x1b3 + (lo << 8) + carry(lo*0x1b3)   mod 2**32
        lo_mul = lo * _FNV_PRIME_LO
        hi = (hi * _FNV_PRIME_LO + (lo << 8) + (lo_mul >> 32)) & _M32
        lo = lo_mul & _M32
    if hi >= 0x80000000:
        hi -= 0x100000000  # sign of the int64 bit pattern
    h = (hi << 32) | lo
    if h == 0:
        h = 1
    return h


@njit(nogil=True, cache=True)
def _bucket_byte(w, i):
    """Byte offset of bucket ``i``."""
    return w[W_KV_OFF] + i * w[W_KV_STRIDE]


@njit(nogil=True, cache=True)
def _key_matches(b, w, i, key, h):
    """Whether bucket ``i`` holds ``key``.

    Only valid after STATE was seen non-EMPTY with acquire ordering, or under the
    bucket's lock: then HASH/KEY_LEN/KEY are written and immutable.
    """
    bb = _bucket_byte(w, i)
    bw = bb >> 3
    if load_relaxed(w, bw + B_HASH) != h:
        return False
    klen = load_relaxed(w, bw + B_KEY_LEN)
    if klen != len(key):
        return False
    ko = bb + B_KEY_OFF
    for j in range(klen):
        if b[ko + j] != key[j]:
            return False
    return True


@njit(nogil=True, cache=True)
def _find_key(b, w, key, h):
    """Bucket holding ``key`` (FULL or TOMBSTONE), or -1 if the key was never placed."""
    nb = w[W_KV_BUCKETS]
    mask = nb - 1
    i = h & mask
    for _ in range(nb):
        bw = _bucket_byte(w, i) >> 3
        # SYNC POINT: acquire pairs with the store_release of STATE in _publish: a
        # non-EMPTY state makes the bucket's key fields visible.
        st = load_acquire(w, bw + B_STATE)
        if st == STATE_EMPTY:
            return -1  # keys are placed at the first EMPTY bucket of their chain
        if _key_matches(b, w, i, key, h):
            return i
        i = (i + 1) & mask
    return -1


@njit(nogil=True, cache=True)
def _key_ok(key):
    return 0 < len(key) <= KEY_MAX


@njit(nogil=True, cache=True)
def _ref_ok(w, ref):
    """Whether ``ref`` describes a non-empty block inside the heap."""
    n = ref_nbytes(ref)
    start = ref_start(ref)
    if ref <= 0 or n <= 0 or start < 0:
        return False
    return start + units_for(w, n) <= w[W_HEAP_UNITS]


# ---------------------------------------------------------------------------
# Bucket lock
# ---------------------------------------------------------------------------


@njit(nogil=True, cache=True)
def _lock(w, bw, tag, max_spins):
    """Take the bucket lock (``cas(0 -> tag)``), spinning at most ``max_spins`` times."""
    spins = 0
    while True:
        # Test before test-and-set: spinning on a plain load keeps the line shared.
        # SYNC POINT: acquire (cas) pairs with the store_release in _unlock: the
        # previous writer's bucket and heap changes are visible to us.
        if load_relaxed(w, bw + B_LOCK) == 0 and cas(w, bw + B_LOCK, 0, tag) == 0:
            return True
        if spins >= max_spins:
            return False
        spins += 1
        cpu_relax()


@njit(nogil=True, cache=True)
def _unlock(w, bw):
    # SYNC POINT: release pairs with the acquiring cas in _lock of the next writer.
    store_release(w, bw + B_LOCK, 0)


@njit(nogil=True, cache=True)
def _begin_write(w, bw):
    """Make VERSION odd; returns the odd value. Caller holds the lock."""
    v = load_relaxed(w, bw + B_VERSION) + 1
    store_release(w, bw + B_VERSION, v)
    # SYNC POINT: the fence keeps the odd VERSION ahead of every field store that
    # follows; pairs with the reader's fence before its VERSION re-check.
    fence_seq_cst()
    return v


@njit(nogil=True, cache=True)
def _end_write(w, bw, v_odd):
    # SYNC POINT: release pairs with the reader's load_acquire of VERSION: an even
    # VERSION publishes every field written since _begin_write.
    store_release(w, bw + B_VERSION, v_odd + 1)


# ---------------------------------------------------------------------------
# Readers
# ---------------------------------------------------------------------------


@njit(nogil=True, cache=True)
def kv_lookup(b, w, key):
    """Bucket index of the FULL bucket holding ``key``.

    Parameters
    ----------
    b : numpy.ndarray
        uint8 view of the whole pool.
    w : numpy.ndarray
        int64 view of the whole pool.
    key : numpy.ndarray
        uint8 key bytes.

    Returns
    -------
    int
        The bucket index, or ``NOT_FOUND`` (absent, removed, or invalid key).
    """
    if not _key_ok(key):
        return status.NOT_FOUND
    i = _find_key(b, w, key, kv_hash(key))
    if i < 0:
        return status.NOT_FOUND
    # SYNC POINT: acquire pairs with the store_release of STATE in _publish/kv_remove.
    if load_acquire(w, (_bucket_byte(w, i) >> 3) + B_STATE) != STATE_FULL:
        return status.NOT_FOUND
    return i


@njit(nogil=True, cache=True)
def _seq_read(b, w, key, out, copy):
    """Seqlock read of the bucket of ``key``: nbytes (and the bytes if ``copy``)."""
    if not _key_ok(key):
        return status.NOT_FOUND
    i = _find_key(b, w, key, kv_hash(key))
    if i < 0:
        return status.NOT_FOUND
    bw = _bucket_byte(w, i) >> 3
    heap_off = w[W_HEAP_OFF]
    unit = w[W_UNIT_SIZE]
    spins = 0
    while True:
        # SYNC POINT: acquire pairs with _end_write's store_release (fields and the
        # block bytes the writer published are visible).
        v1 = load_acquire(w, bw + B_VERSION)
        if v1 & 1:
            spins += 1
            if spins > READ_MAX_SPINS:
                return status.RETRY
            cpu_relax()
            continue
        st = load_relaxed(w, bw + B_STATE)
        ref = load_relaxed(w, bw + B_REF)
        if st != STATE_FULL or ref == 0:
            result = status.NOT_FOUND
        elif not _ref_ok(w, ref):
            result = status.CORRUPT  # only if VERSION confirms it below
        else:
            n = ref_nbytes(ref)
            result = n
            if copy:
                if n > len(out):
                    result = status.BUFFER_TOO_SMALL
                else:
                    # The block may be freed and reused while we copy (the writer
                    # bumps VERSION first); bytes stay inside the heap, and the
                    # re-check below discards a torn copy.
                    src = heap_off + ref_start(ref) * unit
                    copy_bytes(out, 0, b, src, n)
        # SYNC POINT: pairs with _begin_write's fence: every load above completes
        # before VERSION is read again.
        fence_seq_cst()
        if load_relaxed(w, bw + B_VERSION) == v1:
            return result
        spins += 1
        if spins > READ_MAX_SPINS:
            return status.RETRY


@njit(nogil=True, cache=True)
def kv_value_size(b, w, key):
    """Byte length of the current value of ``key``.

    Parameters
    ----------
    b : numpy.ndarray
        uint8 view of the whole pool.
    w : numpy.ndarray
        int64 view of the whole pool.
    key : numpy.ndarray
        uint8 key bytes.

    Returns
    -------
    int
        The length, ``NOT_FOUND``, or ``RETRY`` (a writer kept the bucket busy).
    """
    return _seq_read(b, w, key, b[:0], False)


@njit(nogil=True, cache=True)
def kv_read(b, w, key, out):
    """Copy the current value of ``key`` into ``out``, never torn.

    Parameters
    ----------
    b : numpy.ndarray
        uint8 view of the whole pool.
    w : numpy.ndarray
        int64 view of the whole pool.
    key : numpy.ndarray
        uint8 key bytes.
    out : numpy.ndarray
        uint8 destination; its first ``nbytes`` bytes receive the value.

    Returns
    -------
    int
        ``nbytes``; ``NOT_FOUND``; ``BUFFER_TOO_SMALL`` if the value is longer than
        ``out`` (ask :func:`kv_value_size`); ``RETRY`` after ``READ_MAX_SPINS``
        attempts under constant writes or a dead writer's odd VERSION; ``CORRUPT``
        if the bucket references a block outside the heap.
    """
    return _seq_read(b, w, key, out, True)


# ---------------------------------------------------------------------------
# Writers
# ---------------------------------------------------------------------------


@njit(nogil=True, cache=True)
def _publish(b, w, i, key, h, ref, tag, is_new):
    """Publish ``ref`` as the value of bucket ``i`` (lock held). OK or CORRUPT."""
    kv_tag = KV_TAG_BASE + i
    start = ref_start(ref)
    n = ref_nbytes(ref)
    need = units_for(w, n)
    # Hand the block from the writer to the bucket first: a crash from here on
    # leaves it tagged with the bucket and unpublished, which repair frees.
    moved = heap_retag(w, start, n, tag, kv_tag)
    if moved != need:
        if moved > 0:
            heap_retag(w, start, n, kv_tag, tag)  # give back what we took
        return status.CORRUPT
    bb = _bucket_byte(w, i)
    bw = bb >> 3
    old = load_relaxed(w, bw + B_REF)
    v = _begin_write(w, bw)
    if is_new:
        # The bucket is EMPTY: nobody compares its key until STATE leaves EMPTY.
        klen = len(key)
        store_relaxed(w, bw + B_HASH, h)
        store_relaxed(w, bw + B_KEY_LEN, klen)
        ko = bb + B_KEY_OFF
        for j in range(klen):
            b[ko + j] = key[j]
    store_relaxed(w, bw + B_REF, ref)
    # SYNC POINT: release pairs with the load_acquire of STATE in _find_key (the
    # key fields above are visible to lock-free probers once STATE is non-EMPTY).
    store_release(w, bw + B_STATE, STATE_FULL)
    _end_write(w, bw, v)
    if old != 0 and old != ref:
        # VERSION has moved: a reader still copying the old block will retry.
        heap_free(w, ref_start(old), ref_nbytes(old), kv_tag)
    return status.OK


@njit(nogil=True, cache=True)
def kv_put(b, w, key, ref, tag, max_spins):
    """Publish the block ``ref`` as the value of ``key``.

    The caller allocated ``ref`` under its member ``tag`` and wrote the value
    bytes. The block is retagged to ``KV_TAG_BASE + bucket``; the previous value's
    block (if any) is freed after the new one is visible.

    Parameters
    ----------
    b : numpy.ndarray
        uint8 view of the whole pool.
    w : numpy.ndarray
        int64 view of the whole pool.
    key : numpy.ndarray
        uint8 key bytes (``1 .. KEY_MAX``).
    ref : int
        Block reference (:func:`fluxon_kernels.heap.make_ref`) of the value.
    tag : int
        The caller's member tag (holder of ``ref`` and of the bucket lock).
    max_spins : int
        How many times to retry a busy bucket lock before giving up.

    Returns
    -------
    int
        ``OK``; ``RETRY`` if a bucket lock stayed busy (nothing changed; the caller
        still holds ``ref``); ``TABLE_FULL`` if every bucket was probed; ``TOO_LARGE``
        if the key is empty or longer than ``KEY_MAX``; ``CORRUPT`` if ``ref`` is not
        a block held by ``tag`` (nothing changed).
    """
    if not _key_ok(key):
        return status.TOO_LARGE
    if tag == FREE_TAG or not _ref_ok(w, ref):
        return status.CORRUPT
    h = kv_hash(key)
    nb = w[W_KV_BUCKETS]
    mask = nb - 1
    i = h & mask
    for _ in range(nb):
        bw = _bucket_byte(w, i) >> 3
        # SYNC POINT: acquire pairs with _publish's store_release of STATE.
        st = load_acquire(w, bw + B_STATE)
        if st == STATE_EMPTY or _key_matches(b, w, i, key, h):
            if not _lock(w, bw, tag, max_spins):
                return status.RETRY
            # Under the lock the bucket cannot change: decide again. An EMPTY bucket
            # may have been claimed for another key while we waited.
            st = load_relaxed(w, bw + B_STATE)
            if st == STATE_EMPTY:
                r = _publish(b, w, i, key, h, ref, tag, True)
                _unlock(w, bw)
                return r
            if _key_matches(b, w, i, key, h):
                r = _publish(b, w, i, key, h, ref, tag, False)
                _unlock(w, bw)
                return r
            _unlock(w, bw)
        i = (i + 1) & mask
    return status.TABLE_FULL


@njit(nogil=True, cache=True)
def kv_remove(b, w, key, tag, max_spins):
    """Remove ``key``: its bucket becomes a TOMBSTONE and its block is freed.

    Parameters
    ----------
    b : numpy.ndarray
        uint8 view of the whole pool.
    w : numpy.ndarray
        int64 view of the whole pool.
    key : numpy.ndarray
        uint8 key bytes.
    tag : int
        The caller's member tag (holder of the bucket lock).
    max_spins : int
        How many times to retry a busy bucket lock before giving up.

    Returns
    -------
    int
        ``OK``, ``NOT_FOUND``, ``RETRY`` (lock busy; nothing changed), or
        ``CORRUPT`` if ``tag`` is 0.
    """
    if tag == FREE_TAG:
        return status.CORRUPT
    if not _key_ok(key):
        return status.NOT_FOUND
    i = _find_key(b, w, key, kv_hash(key))
    if i < 0:
        return status.NOT_FOUND
    bw = _bucket_byte(w, i) >> 3
    # SYNC POINT: acquire pairs with the store_release of STATE in _publish/kv_remove
    # (a hint only: the state is decided again under the lock).
    if load_acquire(w, bw + B_STATE) != STATE_FULL:
        return status.NOT_FOUND
    if not _lock(w, bw, tag, max_spins):
        return status.RETRY
    if load_relaxed(w, bw + B_STATE) != STATE_FULL:
        _unlock(w, bw)
        return status.NOT_FOUND
    old = load_relaxed(w, bw + B_REF)
    v = _begin_write(w, bw)
    # STATE first: a crash between the two stores leaves "not FULL with a REF",
    # which repair resolves by freeing the block (the remove completes).
    # SYNC POINT: release pairs with the load_acquire of STATE in kv_lookup/kv_remove
    # and the scans (they stop counting the key).
    store_release(w, bw + B_STATE, STATE_TOMBSTONE)
    store_relaxed(w, bw + B_REF, 0)
    _end_write(w, bw, v)
    if old != 0:
        heap_free(w, ref_start(old), ref_nbytes(old), KV_TAG_BASE + i)
    _unlock(w, bw)
    return status.OK


# ---------------------------------------------------------------------------
# Scans and repair
# ---------------------------------------------------------------------------


@njit(nogil=True, cache=True)
def kv_count_prefix(b, w, prefix):
    """Number of FULL buckets whose key starts with ``prefix``.

    Parameters
    ----------
    b : numpy.ndarray
        uint8 view of the whole pool.
    w : numpy.ndarray
        int64 view of the whole pool.
    prefix : numpy.ndarray
        uint8 prefix bytes (empty counts every key).

    Returns
    -------
    int
        The count (a snapshot under concurrent writes).
    """
    nb = w[W_KV_BUCKETS]
    plen = len(prefix)
    n = 0
    for i in range(nb):
        bb = _bucket_byte(w, i)
        bw = bb >> 3
        # SYNC POINT: acquire pairs with _publish's store_release of STATE.
        if load_acquire(w, bw + B_STATE) != STATE_FULL:
            continue
        if load_relaxed(w, bw + B_KEY_LEN) < plen:
            continue
        ko = bb + B_KEY_OFF
        match = True
        for j in range(plen):
            if b[ko + j] != prefix[j]:
                match = False
                break
        if match:
            n += 1
    return n


@njit(nogil=True, cache=True)
def kv_list_keys(b, w, out_buckets):
    """Write the indices of FULL buckets into ``out_buckets``.

    Parameters
    ----------
    b : numpy.ndarray
        uint8 view of the whole pool.
    w : numpy.ndarray
        int64 view of the whole pool.
    out_buckets : numpy.ndarray
        int64 destination; filling stops when it is full.

    Returns
    -------
    int
        Number of indices written.
    """
    nb = w[W_KV_BUCKETS]
    cap = len(out_buckets)
    n = 0
    for i in range(nb):
        if n >= cap:
            break
        bw = _bucket_byte(w, i) >> 3
        # SYNC POINT: acquire pairs with the store_release of STATE in _publish.
        if load_acquire(w, bw + B_STATE) == STATE_FULL:
            out_buckets[n] = i
            n += 1
    return n


@njit(nogil=True, cache=True)
def kv_key_at(b, w, bucket, out):
    """Copy the key of bucket ``bucket`` into ``out``.

    Parameters
    ----------
    b : numpy.ndarray
        uint8 view of the whole pool.
    w : numpy.ndarray
        int64 view of the whole pool.
    bucket : int
        Bucket index (e.g. from :func:`kv_list_keys`).
    out : numpy.ndarray
        uint8 destination (``KEY_MAX`` bytes always suffice).

    Returns
    -------
    int
        The key length; ``NOT_FOUND`` if the bucket is out of range or EMPTY (a
        TOMBSTONE still has its key); ``BUFFER_TOO_SMALL``; ``CORRUPT`` if the
        stored key length is impossible.
    """
    if bucket < 0 or bucket >= w[W_KV_BUCKETS]:
        return status.NOT_FOUND
    bb = _bucket_byte(w, bucket)
    bw = bb >> 3
    # SYNC POINT: acquire pairs with _publish's store_release of STATE.
    if load_acquire(w, bw + B_STATE) == STATE_EMPTY:
        return status.NOT_FOUND
    klen = load_relaxed(w, bw + B_KEY_LEN)
    if klen <= 0 or klen > KEY_MAX:
        return status.CORRUPT
    if klen > len(out):
        return status.BUFFER_TOO_SMALL
    ko = bb + B_KEY_OFF
    for j in range(klen):
        out[j] = b[ko + j]
    return klen


@njit(nogil=True, cache=True)
def _free_tag_outside(w, tag, keep_lo, keep_hi):
    """Free units tagged ``tag`` outside ``[keep_lo, keep_hi)``; returns the count."""
    base = w[W_HEAP_TABLE_OFF] >> 3
    units = w[W_HEAP_UNITS]
    freed = 0
    for u in range(units):
        if u >= keep_lo and u < keep_hi:
            continue
        if load_relaxed(w, base + u) == tag and cas(w, base + u, tag, FREE_TAG) == tag:
            freed += 1
    return freed


@njit(nogil=True, cache=True)
def kv_repair_dead(b, w, dead_tag):
    """Owner-side repair of every bucket whose LOCK is held by a dead member.

    Restores the invariant "the only block tagged ``KV_TAG_BASE + i`` while bucket
    ``i`` is unlocked is the one ``REF`` points to, and ``REF != 0`` iff FULL":
    frees every unit tagged with the bucket that is not part of a FULL bucket's
    ``REF`` block, clears ``REF`` of a bucket that is not FULL (a put that never
    became visible, or a remove that had already hidden the value), makes VERSION
    even and unlocks. Call only for a member known to be dead, then call
    :func:`fluxon_kernels.heap.heap_reclaim_tag` for its tag.

    Parameters
    ----------
    b : numpy.ndarray
        uint8 view of the whole pool.
    w : numpy.ndarray
        int64 view of the whole pool.
    dead_tag : int
        Member tag of the dead process (0 repairs nothing).

    Returns
    -------
    int
        Number of buckets repaired.
    """
    if dead_tag == FREE_TAG:
        return 0
    nb = w[W_KV_BUCKETS]
    repaired = 0
    for i in range(nb):
        bw = _bucket_byte(w, i) >> 3
        # SYNC POINT: acquire pairs with the dead writer's cas in _lock (whatever it
        # stored before dying is as visible as it will ever be).
        if load_acquire(w, bw + B_LOCK) != dead_tag:
            continue
        st = load_relaxed(w, bw + B_STATE)
        ref = load_relaxed(w, bw + B_REF)
        keep_lo = 0
        keep_hi = 0
        v = load_relaxed(w, bw + B_VERSION)
        if v & 1 == 0:
            v = _begin_write(w, bw)  # we may change fields: readers must retry
        if st == STATE_FULL and ref != 0 and _ref_ok(w, ref):
            keep_lo = ref_start(ref)
            keep_hi = keep_lo + units_for(w, ref_nbytes(ref))
        else:
            if st == STATE_FULL:
                # FULL without a usable block: finish it as a removal.
                # SYNC POINT: release pairs with the load_acquire of STATE in the scans.
                store_release(w, bw + B_STATE, STATE_TOMBSTONE)
            store_relaxed(w, bw + B_REF, 0)
        _free_tag_outside(w, KV_TAG_BASE + i, keep_lo, keep_hi)
        _end_write(w, bw, v)
        _unlock(w, bw)
        repaired += 1
    return repaired
