"""Stats-block kernels: attach, publish (seqlock write), read, release, snapshot.

Layout: :mod:`.layout.stats`. A handle's block is a heap block tagged with its channel
(``chan_tag(c)``) whose reference sits in the handle's channel entry
(``P_STATS_REF`` / ``K_STATS_REF``). Only the handle's process writes it; any process
mapping the pool (the master, ``python -m fluxon status``) reads it.

* **attach** frees a block a previous holder of the entry left behind (a member that
  died before the owner freed it), allocates and initialises a new one, then
  publishes its reference with a release store.
* **publish** is a seqlock write: ``SEQ`` odd, fence, summary words, ``SEQ`` even
  (release). One writer, so no lock.
* **read** follows the reference, copies the block between two equal even ``SEQ``
  reads and re-checks magic, identity and the reference itself, so a block freed
  (and reused for a payload) under the reader is discarded.
* **release** unpublishes the reference, leaves ``SEQ`` odd, clears ``MAGIC`` and
  frees the block.
"""

from __future__ import annotations

from numba import njit

from . import status
from .atomics import fence_seq_cst, load_acquire, load_relaxed, store_relaxed, store_release
from .heap import heap_alloc, heap_free, ref_nbytes, ref_start, unit_offset
from .layout import channel as cl
from .layout import stats as sl
from .layout.heap import CHAN_TAG_BASE, REF_LEN_BITS
from .layout.pool_header import W_CHAN_OFF, W_CHAN_STRIDE, W_HEAP_UNITS

#: Reads give up after this many torn copies in a row (the writer is very busy).
READ_MAX_TRIES = 64


# This module does not import :mod:`.channel` (whose crash repair calls
# :func:`stats_free_ref`); the two addressing rules it needs are repeated here.
@njit(nogil=True, cache=True)
def _chan_word(w, c):
    return (w[W_CHAN_OFF] + c * w[W_CHAN_STRIDE]) // 8


@njit(nogil=True, cache=True)
def _chan_tag(c):
    return CHAN_TAG_BASE + c


@njit(nogil=True, cache=True)
def stats_ref_word(w, c, role, entry):
    """Word index of the stats reference of producer/consumer ``entry`` of channel ``c``."""
    cw = _chan_word(w, c)
    if role == sl.ROLE_PRODUCER:
        return cw + (cl.PROD_OFF + entry * cl.PROD_STRIDE) // 8 + cl.P_STATS_REF
    return cw + (cl.CONS_OFF + entry * cl.CONS_STRIDE) // 8 + cl.K_STATS_REF


@njit(nogil=True, cache=True)
def _ref_ok(w, ref):
    if ref <= 0:
        return False
    n = ref_nbytes(ref)
    return n >= sl.BLOCK_BYTES and ref_start(ref) < w[W_HEAP_UNITS]


@njit(nogil=True, cache=True)
def stats_free_ref(w, ref_word, ctag):
    """Unpublish and free the block referenced at ``w[ref_word]`` (0 = none).

    Used by attach (a dead predecessor's block) and by the owner's crash repair.
    Returns 1 if a block was freed, else 0.
    """
    ref = load_relaxed(w, ref_word)
    if ref == 0:
        return 0
    store_release(w, ref_word, 0)
    if _ref_ok(w, ref):
        base = unit_offset(w, ref_start(ref)) // 8
        # Readers holding the old ref see SEQ odd / MAGIC gone and discard their copy.
        store_relaxed(w, base + sl.S_SEQ, load_relaxed(w, base + sl.S_SEQ) | 1)
        store_relaxed(w, base + sl.S_MAGIC, 0)
        fence_seq_cst()
        heap_free(w, ref_start(ref), ref_nbytes(ref), ctag)
    return 1


@njit(nogil=True, cache=True)
def stats_block_attach(w, c, role, entry, chan_id, member_id, pid):
    """Allocate, initialise and publish the stats block of a handle.

    Parameters
    ----------
    w : np.ndarray
        int64 view of the pool.
    c, role, entry : int
        Channel entry index, ``ROLE_PRODUCER``/``ROLE_CONSUMER``, and the handle's
        producer/consumer entry index (the caller holds that entry).
    chan_id, member_id, pid : int
        Identity written into the block.

    Returns
    -------
    int
        Word index of the block in ``w``, or NO_MEMORY / TOO_LARGE.
    """
    rw = stats_ref_word(w, c, role, entry)
    ctag = _chan_tag(c)
    stats_free_ref(w, rw, ctag)
    start = heap_alloc(w, sl.BLOCK_BYTES, ctag)
    if start < 0:
        return start
    base = unit_offset(w, start) // 8
    for i in range(sl.WORDS):
        w[base + i] = 0
    w[base + sl.S_ROLE] = role
    w[base + sl.S_CHAN_ID] = chan_id
    w[base + sl.S_MEMBER_ID] = member_id
    w[base + sl.S_ENTRY] = entry
    w[base + sl.S_PID] = pid
    w[base + sl.S_MAGIC] = sl.MAGIC_VALUE
    # SYNC POINT: the initialised block is visible to a reader whose load_acquire of
    # the reference (stats_read) sees it.
    store_release(w, rw, (start << REF_LEN_BITS) | sl.BLOCK_BYTES)
    return base


@njit(nogil=True, cache=True)
def stats_block_release(w, c, role, entry, base):
    """Unpublish and free the block at word ``base`` (the handle is closing).

    Returns OK, or NOT_FOUND if the entry no longer references that block.
    """
    rw = stats_ref_word(w, c, role, entry)
    ref = load_relaxed(w, rw)
    if ref == 0 or not _ref_ok(w, ref) or unit_offset(w, ref_start(ref)) // 8 != base:
        return status.NOT_FOUND
    stats_free_ref(w, rw, _chan_tag(c))
    return status.OK


@njit(nogil=True, cache=True)
def stats_publish(w, base, src):
    """Seqlock-write ``src[SUMMARY_FIRST:WORDS]`` into the block at word ``base``.

    Returns the new (even) sequence number, or CORRUPT if the block is not a live
    stats block (released under the caller).
    """
    if load_relaxed(w, base + sl.S_MAGIC) != sl.MAGIC_VALUE:
        return status.CORRUPT
    v = load_relaxed(w, base + sl.S_SEQ) + 1
    store_relaxed(w, base + sl.S_SEQ, v)
    # SYNC POINT: the fence keeps the odd SEQ ahead of every summary store; pairs with
    # the reader's fence before its SEQ re-check (stats_read).
    fence_seq_cst()
    for i in range(sl.SUMMARY_FIRST, sl.WORDS):
        w[base + i] = src[i]
    # SYNC POINT: an even SEQ publishes the summary; pairs with the load_acquire of
    # SEQ in stats_read.
    store_release(w, base + sl.S_SEQ, v + 1)
    return v + 1


@njit(nogil=True, cache=True)
def stats_read_at(w, ref_word, out):
    """Copy the block referenced at ``w[ref_word]`` into ``out`` (int64[WORDS]).

    Returns
    -------
    int
        1 if ``out`` holds an untorn summary, 0 if no block is referenced, RETRY if
        every attempt saw a writer (or a release) in progress, CORRUPT if the
        referenced bytes are not a stats block.
    """
    for _ in range(READ_MAX_TRIES):
        # SYNC POINT: pairs with the store_release of the reference in stats_block_attach.
        ref = load_acquire(w, ref_word)
        if ref == 0:
            return 0
        if not _ref_ok(w, ref):
            return status.CORRUPT
        base = unit_offset(w, ref_start(ref)) // 8
        # SYNC POINT: pairs with the store_release of an even SEQ in stats_publish.
        v1 = load_acquire(w, base + sl.S_SEQ)
        if v1 & 1:
            continue
        for i in range(sl.WORDS):
            out[i] = w[base + i]
        # SYNC POINT: pairs with stats_publish's fence: the copy completes before SEQ
        # and the reference are read again.
        fence_seq_cst()
        if load_relaxed(w, base + sl.S_SEQ) != v1 or load_relaxed(w, ref_word) != ref:
            continue
        if out[sl.S_MAGIC] != sl.MAGIC_VALUE:
            return status.CORRUPT
        return 1
    return status.RETRY


@njit(nogil=True, cache=True)
def stats_read(w, c, role, entry, out):
    """:func:`stats_read_at` for producer/consumer ``entry`` of channel ``c``."""
    return stats_read_at(w, stats_ref_word(w, c, role, entry), out)


@njit(nogil=True, cache=True)
def chan_entries_snapshot(w, c, prod_out, cons_out):
    """One pass over a channel's producer and consumer entries (monitoring).

    ``prod_out`` (int64[MAX_PRODUCERS, 7]): state, produce, done, claim, weight,
    member_id, stats_ref. ``cons_out`` (int64[MAX_CONSUMERS, 3]): state, member_id,
    stats_ref. Relaxed loads: offsets of a busy channel are a moment's view.

    Returns
    -------
    int
        The backlog ``sum(produce - done)`` over producer entries in use.
    """
    cw = _chan_word(w, c)
    backlog = 0
    for e in range(cl.MAX_PRODUCERS):
        pw = cw + (cl.PROD_OFF + e * cl.PROD_STRIDE) // 8
        st = load_relaxed(w, pw + cl.P_STATE)
        prod_out[e, 0] = st
        # DONE before PRODUCE: both only grow, so done <= produce holds in the copy.
        prod_out[e, 2] = load_acquire(w, pw + cl.P_DONE)
        prod_out[e, 1] = load_acquire(w, pw + cl.P_PRODUCE)
        prod_out[e, 3] = load_relaxed(w, pw + cl.P_CLAIM)
        prod_out[e, 4] = load_relaxed(w, pw + cl.P_WEIGHT)
        prod_out[e, 5] = load_relaxed(w, pw + cl.P_MEMBER_ID)
        prod_out[e, 6] = load_relaxed(w, pw + cl.P_STATS_REF)
        if st != cl.PROD_FREE and prod_out[e, 1] > prod_out[e, 2]:
            backlog += prod_out[e, 1] - prod_out[e, 2]
    for k in range(cl.MAX_CONSUMERS):
        kw = cw + (cl.CONS_OFF + k * cl.CONS_STRIDE) // 8
        cons_out[k, 0] = load_relaxed(w, kw + cl.K_STATE)
        cons_out[k, 1] = load_relaxed(w, kw + cl.K_MEMBER_ID)
        cons_out[k, 2] = load_relaxed(w, kw + cl.K_STATS_REF)
    return backlog
