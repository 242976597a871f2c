"""Channel kernels: MPMC/MPSC message passing through slots and per-producer rings.

Layout and state machine: :mod:`.layout.channel`. The design in one paragraph:

* **Capacity is slots.** A channel owns exactly ``capacity`` message slots. A producer
  takes a FREE slot with ``cas(STATE, 0, HELD|tag|offset)``, writes the payload (inline,
  or a heap block), appends the slot index to its own ring at ``PRODUCE % capacity`` and
  publishes: ``STATE = PUBLISHED|offset`` then ``PRODUCE += 1`` (both release). No slot
  free -> ``FULL``, so at most ``capacity`` messages are ever undelivered.
* **Claiming is a CAS on the slot.** A consumer reads ``CLAIM`` of a producer, looks up
  the slot in the ring and claims it with ``cas(STATE, PUBLISHED|o, CLAIMED|tag|o)``;
  the offset inside the state word makes that CAS immune to slot reuse (no ABA). Then
  it advances ``CLAIM`` by CAS; anyone seeing the slot of ``CLAIM`` already taken helps
  advance it, so a consumer dying between the two CASes cannot stall the ring.
* **Producers are chosen by smooth weighted round robin** over those with a backlog,
  with per-consumer state, so backlogs drain in proportion to producer weights.
* **Delivery completes in ``cons_take``**: copy the payload out, hand the block to the
  consumer's own tag, ``LEN = -1`` (the completion mark), clear REF, ``STATE = FREE``,
  free the block, ``DONE += 1``.
* **Crash repair (owner, ``chan_repair_dead``)** judges every slot by its state and tag:
  HELD by the dead -> dropped (the put never returned); CLAIMED by the dead -> back to
  REDELIVER unless the dead consumer had already begun completing it (``LEN < 0``, or
  its block no longer carries the channel tag), in which case the completion is
  finished; a publish the dead producer did not finish counting is counted; a producer
  entry whose ring was never recorded goes back to FREE (reusing it would write a ring
  through a null reference).
* **Known crash window**: a consumer killed between ``STATE = FREE`` and ``DONE += 1``
  leaves that producer's ``DONE`` one short. Two words cannot change atomically and no
  mark survives ``FREE``, so the repair cannot see it; instead, once the producer has
  retired, the owner finds an entry whose every message is delivered but whose
  ``DONE`` lags (:func:`chan_done_shortfall`), sees the same value again a moment later
  (a live consumer inside the window would have counted by then) and sets it right
  (:func:`chan_heal_done`), so the entry becomes reusable and the backlog exact.
* **Waiting**: ``DATA_SEQ``/``SPACE_SEQ`` are futex words. A waiter increments the
  waiter count, fences, re-checks, then sleeps on the sequence; a publisher/consumer
  fences after its change and bumps the sequence only when a waiter is registered
  (Dekker-style, so no lost wake-ups and no syscall when nobody waits). Kernels return
  ``1`` when the caller must issue the futex wake.
"""

from __future__ import annotations

from numba import njit

from . import status
from .atomics import (
    cas,
    copy_bytes,
    fence_seq_cst,
    fetch_add,
    load_acquire,
    load_relaxed,
    store_release,
)
from .heap import (
    heap_alloc,
    heap_free,
    heap_reclaim_tag,
    heap_retag,
    make_ref,
    ref_nbytes,
    ref_start,
    unit_offset,
)
from .layout import channel as cl
from .layout.heap import CHAN_TAG_BASE
from .layout.pool_header import W_CHAN_COUNT, W_CHAN_OFF, W_CHAN_STRIDE, W_HEAP_TABLE_OFF
from .stats import stats_free_ref

# ---------------------------------------------------------------------------
# addressing
# ---------------------------------------------------------------------------


@njit(nogil=True, cache=True)
def chan_word(w, c):
    """Word index of channel entry ``c``'s header."""
    return (w[W_CHAN_OFF] + c * w[W_CHAN_STRIDE]) // 8


@njit(nogil=True, cache=True)
def _prod_word(cw, e):
    return cw + (cl.PROD_OFF + e * cl.PROD_STRIDE) // 8


@njit(nogil=True, cache=True)
def _cons_word(cw, k):
    return cw + (cl.CONS_OFF + k * cl.CONS_STRIDE) // 8


@njit(nogil=True, cache=True)
def _slots_byte(w, cw):
    return unit_offset(w, ref_start(w[cw + cl.C_SLOTS_REF]))


@njit(nogil=True, cache=True)
def _slot_word(w, cw, s):
    return (_slots_byte(w, cw) + s * cl.SLOT_STRIDE) // 8


@njit(nogil=True, cache=True)
def _ring_word(w, pw):
    return unit_offset(w, ref_start(w[pw + cl.P_RING_REF])) // 8


@njit(nogil=True, cache=True)
def chan_tag(c):
    """Heap tag of everything channel ``c`` holds (slots, rings, published payloads)."""
    return CHAN_TAG_BASE + c


@njit(nogil=True, cache=True)
def _state(offset, tag, kind):
    return (offset << cl.OFFSET_SHIFT) | (tag << cl.KIND_BITS) | kind


@njit(nogil=True, cache=True)
def _kind(st):
    return st & cl.KIND_MASK


@njit(nogil=True, cache=True)
def _tag(st):
    return (st >> cl.KIND_BITS) & cl.TAG_MASK


@njit(nogil=True, cache=True)
def _offset(st):
    return st >> cl.OFFSET_SHIFT


@njit(nogil=True, cache=True)
def _zero_words(w, start, count):
    for i in range(count):
        w[start + i] = 0


@njit(nogil=True, cache=True)
def seq_byte_offset(w, c, space):
    """Byte offset of a futex word: ``DATA_SEQ`` (space=0) or ``SPACE_SEQ`` (space=1)."""
    cw = chan_word(w, c)
    return (cw + (cl.C_SPACE_SEQ if space else cl.C_DATA_SEQ)) * 8


# ---------------------------------------------------------------------------
# lifecycle
# ---------------------------------------------------------------------------


@njit(nogil=True, cache=True)
def chan_create(b, w, creator_tag, chan_id, chan_type, capacity, now_ns):
    """Claim a free channel entry and allocate its slots.

    Parameters
    ----------
    b, w : np.ndarray
        Byte and word views of the pool.
    creator_tag : int
        Member tag of the creating process (the owner frees a half-created entry
        whose creator died).
    chan_id, chan_type, capacity, now_ns : int
        Cluster-wide channel id, ``TYPE_MPMC``/``TYPE_MPSC``, slot count, timestamp.

    Returns
    -------
    int
        The channel entry index, or NO_SLOT (table full), NO_MEMORY (heap full),
        TOO_LARGE (capacity out of range or larger than the heap).
    """
    if capacity < 1 or capacity > cl.MAX_CAPACITY:
        return status.TOO_LARGE
    count = w[W_CHAN_COUNT]
    for c in range(count):
        cw = chan_word(w, c)
        if load_relaxed(w, cw + cl.C_STATE) != cl.CHAN_FREE:
            continue
        # The creator's tag rides in the claiming CAS itself, so a creator that dies
        # right after it is still identifiable by the owner's repair.
        creating = cl.CHAN_CREATING | (creator_tag << 8)
        if cas(w, cw + cl.C_STATE, cl.CHAN_FREE, creating) != cl.CHAN_FREE:
            continue
        w[cw + cl.C_CREATOR] = creator_tag
        # Entries are wiped on destroy, but a creator that died mid-way may have left
        # words behind: start from zero.
        _zero_words(w, cw + cl.C_FREE_HINT, cl.TABLE_BYTES // 8 - cl.C_FREE_HINT)
        nbytes = capacity * cl.SLOT_STRIDE
        start = heap_alloc(w, nbytes, chan_tag(c))
        if start < 0:
            w[cw + cl.C_CREATOR] = 0
            store_release(w, cw + cl.C_STATE, cl.CHAN_FREE)
            return status.TOO_LARGE if start == status.TOO_LARGE else status.NO_MEMORY
        _zero_words(w, unit_offset(w, start) // 8, nbytes // 8)
        w[cw + cl.C_CHAN_ID] = chan_id
        w[cw + cl.C_TYPE] = chan_type
        w[cw + cl.C_CAPACITY] = capacity
        w[cw + cl.C_SLOTS_REF] = make_ref(start, nbytes)
        w[cw + cl.C_CREATED_NS] = now_ns
        fetch_add(w, cw + cl.C_GENERATION, 1)
        # SYNC POINT: attachers load_acquire STATE == ACTIVE before reading the header.
        store_release(w, cw + cl.C_STATE, cl.CHAN_ACTIVE)
        return c
    return status.NO_SLOT


@njit(nogil=True, cache=True)
def chan_destroy(b, w, c):
    """Free everything channel ``c`` holds and return its entry to the table.

    Only when no member uses the channel (owner retention, or a creator that lost
    the bind race). Returns the number of heap units freed.
    """
    cw = chan_word(w, c)
    freed = heap_reclaim_tag(w, chan_tag(c))
    # Keep GENERATION: it counts the incarnations of this entry.
    _zero_words(w, cw + 1, cl.C_GENERATION - 1)
    _zero_words(w, cw + cl.C_GENERATION + 1, cl.TABLE_BYTES // 8 - cl.C_GENERATION - 1)
    # SYNC POINT: the wiped entry is visible to the next creator's cas on STATE.
    store_release(w, cw + cl.C_STATE, cl.CHAN_FREE)
    return freed


@njit(nogil=True, cache=True)
def chan_is_active(w, c, chan_id):
    """1 if entry ``c`` is an active channel with id ``chan_id``, else 0."""
    if c < 0 or c >= w[W_CHAN_COUNT]:
        return 0
    cw = chan_word(w, c)
    # SYNC POINT: pairs with the store_release of ACTIVE in chan_create.
    if load_acquire(w, cw + cl.C_STATE) != cl.CHAN_ACTIVE:
        return 0
    return 1 if w[cw + cl.C_CHAN_ID] == chan_id else 0


@njit(nogil=True, cache=True)
def prod_attach(b, w, c, tag, weight, member_id):
    """Take a producer entry (a free one, or a retired one whose backlog is drained).

    Returns
    -------
    int
        Producer entry index, NO_SLOT, or NO_MEMORY (no heap room for its ring).
    """
    cw = chan_word(w, c)
    cap = w[cw + cl.C_CAPACITY]
    for e in range(cl.MAX_PRODUCERS):
        pw = _prod_word(cw, e)
        st = load_acquire(w, pw + cl.P_STATE)
        if st == cl.PROD_FREE:
            if cas(w, pw + cl.P_STATE, cl.PROD_FREE, tag) != cl.PROD_FREE:
                continue
            start = heap_alloc(w, cap * 8, chan_tag(c))
            if start < 0:
                store_release(w, pw + cl.P_STATE, cl.PROD_FREE)
                return status.NO_MEMORY
            w[pw + cl.P_RING_REF] = make_ref(start, cap * 8)
        elif st == cl.PROD_RETIRED:
            if load_acquire(w, pw + cl.P_DONE) != load_acquire(w, pw + cl.P_PRODUCE):
                continue  # consumers are still draining the old producer's messages
            if cas(w, pw + cl.P_STATE, cl.PROD_RETIRED, tag) != cl.PROD_RETIRED:
                continue
            # Reset PRODUCE first: a consumer then sees CLAIM >= PRODUCE and takes
            # nothing from this entry until the new producer publishes.
            store_release(w, pw + cl.P_PRODUCE, 0)
            store_release(w, pw + cl.P_DONE, 0)
            store_release(w, pw + cl.P_CLAIM, 0)
        else:
            continue
        w[pw + cl.P_WEIGHT] = weight
        w[pw + cl.P_MEMBER_ID] = member_id
        fetch_add(w, pw + cl.P_GENERATION, 1)
        return e
    return status.NO_SLOT


@njit(nogil=True, cache=True)
def prod_detach(w, c, e, tag):
    """Retire producer entry ``e``; its published messages stay deliverable."""
    pw = _prod_word(chan_word(w, c), e)
    if cas(w, pw + cl.P_STATE, tag, cl.PROD_RETIRED) != tag:
        return status.NOT_FOUND
    return status.OK


@njit(nogil=True, cache=True)
def cons_attach(w, c, tag, member_id, exclusive):
    """Register a consumer; ``exclusive`` (MPSC) fails with FULL if one is attached.

    Returns
    -------
    int
        Consumer entry index, NO_SLOT, or FULL (MPSC already has its consumer).
    """
    cw = chan_word(w, c)
    if exclusive:
        if cas(w, cw + cl.C_MPSC_CONSUMER, 0, tag) != 0:
            return status.FULL
    for k in range(cl.MAX_CONSUMERS):
        kw = _cons_word(cw, k)
        if load_relaxed(w, kw + cl.K_STATE) != 0:
            continue
        if cas(w, kw + cl.K_STATE, 0, tag) == 0:
            w[kw + cl.K_MEMBER_ID] = member_id
            return k
    if exclusive:
        store_release(w, cw + cl.C_MPSC_CONSUMER, 0)
    return status.NO_SLOT


@njit(nogil=True, cache=True)
def cons_detach(w, c, k, tag):
    """Unregister consumer entry ``k`` (and the MPSC consumer mark if it is ours)."""
    cw = chan_word(w, c)
    cas(w, cw + cl.C_MPSC_CONSUMER, tag, 0)
    kw = _cons_word(cw, k)
    if cas(w, kw + cl.K_STATE, tag, 0) != tag:
        return status.NOT_FOUND
    w[kw + cl.K_MEMBER_ID] = 0
    return status.OK


# ---------------------------------------------------------------------------
# producing
# ---------------------------------------------------------------------------


@njit(nogil=True, cache=True)
def _take_free_slot(w, cw, tag, offset):
    cap = w[cw + cl.C_CAPACITY]
    base = _slots_byte(w, cw) // 8
    stride = cl.SLOT_STRIDE // 8
    hint = load_relaxed(w, cw + cl.C_FREE_HINT)
    if hint < 0 or hint >= cap:
        hint = 0
    held = _state(offset, tag, cl.KIND_HELD)
    for i in range(cap):
        s = hint + i
        if s >= cap:
            s -= cap
        sw = base + s * stride
        if load_relaxed(w, sw + cl.S_STATE) != cl.KIND_FREE:
            continue
        if cas(w, sw + cl.S_STATE, cl.KIND_FREE, held) == cl.KIND_FREE:
            nxt = s + 1
            w[cw + cl.C_FREE_HINT] = nxt if nxt < cap else 0
            return s
    return status.FULL


@njit(nogil=True, cache=True)
def _publish(w, c, cw, e, tag, s):
    """Append slot ``s`` to producer ``e``'s ring and make it visible."""
    pw = _prod_word(cw, e)
    cap = w[cw + cl.C_CAPACITY]
    o = w[pw + cl.P_PRODUCE]
    w[_ring_word(w, pw) + o % cap] = s
    sw = _slot_word(w, cw, s)
    ref = w[sw + cl.S_REF]
    if ref != 0:
        heap_retag(w, ref_start(ref), ref_nbytes(ref), tag, chan_tag(c))
    # SYNC POINT: payload, ring entry and REF are visible to a consumer whose
    # load_acquire of STATE (claim_one) sees PUBLISHED.
    store_release(w, sw + cl.S_STATE, _state(o, 0, cl.KIND_PUBLISHED))
    # SYNC POINT: consumers load_acquire PRODUCE before reading the ring (claim_one).
    store_release(w, pw + cl.P_PRODUCE, o + 1)
    fence_seq_cst()  # Dekker: publish before reading CONSUMER_WAITERS
    if load_relaxed(w, cw + cl.C_CONSUMER_WAITERS) > 0:
        fetch_add(w, cw + cl.C_DATA_SEQ, 1)
        return 1
    return 0


@njit(nogil=True, cache=True)
def prod_put(b, w, c, e, tag, src, n):
    """Publish one message of ``n <= SLOT_INLINE`` bytes from ``src`` inline in a slot.

    Returns
    -------
    int
        0, or 1 when consumers sleep and the caller must futex-wake ``DATA_SEQ``;
        FULL when all ``capacity`` slots are taken; TOO_LARGE if ``n`` does not fit
        inline (use :func:`prod_reserve`).
    """
    if n > cl.SLOT_INLINE or n < 0:
        return status.TOO_LARGE
    cw = chan_word(w, c)
    pw = _prod_word(cw, e)
    s = _take_free_slot(w, cw, tag, w[pw + cl.P_PRODUCE])
    if s < 0:
        return s
    sw = _slot_word(w, cw, s)
    dst = sw * 8 + cl.S_INLINE_OFF
    copy_bytes(b, dst, src, 0, n)
    w[sw + cl.S_PRODUCER] = e
    w[sw + cl.S_LEN] = n
    return _publish(w, c, cw, e, tag, s)


@njit(nogil=True, cache=True)
def prod_put_many(b, w, c, e, tag, src, lens, count):
    """Publish ``count`` messages laid end to end in ``src`` (lengths ``lens``), in order:
    each inline in its slot when it fits (``n <= SLOT_INLINE``), else in a heap block
    of its own (as :func:`prod_reserve` + copy + :func:`prod_publish`).

    Returns
    -------
    int
        How many were published (stops at the first message for which there is no free
        slot, no heap run, or that can never fit), with ``1 << 32`` added when the
        caller must futex-wake ``DATA_SEQ``.
    """
    cw = chan_word(w, c)
    pw = _prod_word(cw, e)
    pos = 0
    wake = 0
    done = 0
    for j in range(count):
        n = lens[j]
        if n < 0:
            break
        if n <= cl.SLOT_INLINE:
            s = _take_free_slot(w, cw, tag, w[pw + cl.P_PRODUCE])
            if s < 0:
                break
            sw = _slot_word(w, cw, s)
            w[sw + cl.S_PRODUCER] = e
            w[sw + cl.S_LEN] = n
        else:
            s = prod_reserve(b, w, c, e, tag, n)  # a HELD slot and its block, recorded
            if s < 0:
                break
        copy_bytes(b, slot_payload_offset(b, w, c, s), src, pos, n)
        pos += n
        wake |= _publish(w, c, cw, e, tag, s)
        done += 1
    return done + (wake << 32)


@njit(nogil=True, cache=True)
def prod_reserve(b, w, c, e, tag, n):
    """Take a slot and a heap block of ``n`` bytes for a large message.

    The caller writes the payload at :func:`slot_payload_offset` and then calls
    :func:`prod_publish` (or :func:`prod_abort`).

    Returns
    -------
    int
        The slot index, FULL (no free slot), NO_MEMORY (no heap run now) or
        TOO_LARGE (can never fit).
    """
    cw = chan_word(w, c)
    pw = _prod_word(cw, e)
    s = _take_free_slot(w, cw, tag, w[pw + cl.P_PRODUCE])
    if s < 0:
        return s
    start = heap_alloc(w, n, tag)
    sw = _slot_word(w, cw, s)
    if start < 0:
        store_release(w, sw + cl.S_STATE, cl.KIND_FREE)
        return status.TOO_LARGE if start == status.TOO_LARGE else status.NO_MEMORY
    w[sw + cl.S_PRODUCER] = e
    w[sw + cl.S_LEN] = n
    w[sw + cl.S_REF] = make_ref(start, n)
    return s


@njit(nogil=True, cache=True)
def slot_payload_offset(b, w, c, s):
    """Byte offset in the pool where slot ``s``'s payload lives (inline or block)."""
    cw = chan_word(w, c)
    sw = _slot_word(w, cw, s)
    ref = w[sw + cl.S_REF]
    if ref != 0:
        return unit_offset(w, ref_start(ref))
    return sw * 8 + cl.S_INLINE_OFF


@njit(nogil=True, cache=True)
def prod_publish(b, w, c, e, tag, s):
    """Publish a slot taken by :func:`prod_reserve`; returns 0, or 1 to wake consumers."""
    cw = chan_word(w, c)
    return _publish(w, c, cw, e, tag, s)


@njit(nogil=True, cache=True)
def prod_abort(b, w, c, tag, s):
    """Give back a slot taken by :func:`prod_reserve` without publishing it.

    Returns
    -------
    int
        0, or 1 when producers sleep and the caller must futex-wake ``SPACE_SEQ``
        (the slot given back is room another producer may be waiting for).
    """
    cw = chan_word(w, c)
    sw = _slot_word(w, cw, s)
    ref = w[sw + cl.S_REF]
    w[sw + cl.S_REF] = 0
    if ref != 0:
        heap_free(w, ref_start(ref), ref_nbytes(ref), tag)
    store_release(w, sw + cl.S_STATE, cl.KIND_FREE)
    fence_seq_cst()  # Dekker: free the slot before reading PRODUCER_WAITERS
    if load_relaxed(w, cw + cl.C_PRODUCER_WAITERS) > 0:
        fetch_add(w, cw + cl.C_SPACE_SEQ, 1)
        return 1
    return status.OK


# ---------------------------------------------------------------------------
# consuming
# ---------------------------------------------------------------------------


@njit(nogil=True, cache=True)
def _claim_one(w, cw, e, tag):
    pw = _prod_word(cw, e)
    cap = w[cw + cl.C_CAPACITY]
    ring = _ring_word(w, pw)
    base = _slots_byte(w, cw) // 8
    stride = cl.SLOT_STRIDE // 8
    for _ in range(4 * cap + 64):
        o = load_acquire(w, pw + cl.P_CLAIM)
        # SYNC POINT: pairs with the store_release of PRODUCE in _publish; the ring
        # entry of every offset below it is visible.
        if o >= load_acquire(w, pw + cl.P_PRODUCE):
            return -1
        s = w[ring + o % cap]
        sw = base + s * stride
        expect = _state(o, 0, cl.KIND_PUBLISHED)
        # SYNC POINT: pairs with the store_release of PUBLISHED in _publish.
        st = load_acquire(w, sw + cl.S_STATE)
        if st == expect and w[sw + cl.S_PRODUCER] == e:
            if cas(w, sw + cl.S_STATE, expect, _state(o, tag, cl.KIND_CLAIMED)) == expect:
                cas(w, pw + cl.P_CLAIM, o, o + 1)
                return s
        else:
            # The message at offset o was claimed by someone who has not moved CLAIM
            # yet (or died doing so): help.
            cas(w, pw + cl.P_CLAIM, o, o + 1)
    return -1


@njit(nogil=True, cache=True)
def _claim_redelivered(w, cw, tag, out, n, max_n):
    cap = w[cw + cl.C_CAPACITY]
    base = _slots_byte(w, cw) // 8
    stride = cl.SLOT_STRIDE // 8
    for s in range(cap):
        if n >= max_n or load_acquire(w, cw + cl.C_REDELIVER) <= 0:
            break
        sw = base + s * stride
        st = load_acquire(w, sw + cl.S_STATE)
        if _kind(st) != cl.KIND_REDELIVER:
            continue
        if cas(w, sw + cl.S_STATE, st, _state(_offset(st), tag, cl.KIND_CLAIMED)) == st:
            fetch_add(w, cw + cl.C_REDELIVER, -1)
            out[n] = s
            n += 1
    return n


@njit(nogil=True, cache=True)
def cons_claim(b, w, c, tag, cw_state, out, max_n):
    """Claim up to ``max_n`` messages into ``out`` (slot indices) without waiting.

    Redelivered messages come first; then producers with a backlog are visited by
    smooth weighted round robin (``cw_state``: this consumer's int64[MAX_PRODUCERS]
    current weights, kept between calls).

    Returns
    -------
    int
        Number of slots claimed (0 when nothing is available).
    """
    cw = chan_word(w, c)
    n = 0
    if load_relaxed(w, cw + cl.C_REDELIVER) > 0:
        n = _claim_redelivered(w, cw, tag, out, n, max_n)
    while n < max_n:
        total = 0
        best = -1
        for e in range(cl.MAX_PRODUCERS):
            pw = _prod_word(cw, e)
            if load_relaxed(w, pw + cl.P_STATE) == cl.PROD_FREE:
                continue
            if load_relaxed(w, pw + cl.P_CLAIM) >= load_relaxed(w, pw + cl.P_PRODUCE):
                continue
            wt = w[pw + cl.P_WEIGHT]
            if wt < 1:
                wt = 1
            cw_state[e] += wt
            total += wt
            if best < 0 or cw_state[e] > cw_state[best]:
                best = e
        if best < 0:
            break
        cw_state[best] -= total
        s = _claim_one(w, cw, best, tag)
        if s >= 0:
            out[n] = s
            n += 1
    return n


@njit(nogil=True, cache=True)
def cons_lengths(b, w, c, slots, n, out_lens):
    """Payload length of each claimed slot; returns the total bytes."""
    cw = chan_word(w, c)
    total = 0
    for i in range(n):
        ln = w[_slot_word(w, cw, slots[i]) + cl.S_LEN]
        out_lens[i] = ln
        total += ln
    return total


@njit(nogil=True, cache=True)
def _complete(w, c, cw, s, tag):
    sw = _slot_word(w, cw, s)
    ref = w[sw + cl.S_REF]
    e = w[sw + cl.S_PRODUCER]
    if ref != 0:
        # Hand the block to ourselves first: if we die from here on, the owner sees
        # a block no longer tagged with the channel and knows we were completing.
        heap_retag(w, ref_start(ref), ref_nbytes(ref), chan_tag(c), tag)
    # The completion mark, for inline messages and for the moment REF is cleared
    # (then the block can no longer be judged): the owner finishes, never redelivers.
    w[sw + cl.S_LEN] = -1
    # Release: LEN = -1 reaches memory before REF = 0 (crash order for the owner).
    store_release(w, sw + cl.S_REF, 0)
    # SYNC POINT: a producer's cas on a FREE slot (_take_free_slot) sees REF == 0.
    store_release(w, sw + cl.S_STATE, cl.KIND_FREE)
    # Count right after FREE (the block is ours by now: if we die before freeing it,
    # the owner reclaims it with our tag), so the window in which a death leaves DONE
    # one short is two instructions, whatever the payload size.
    fetch_add(w, _prod_word(cw, e) + cl.P_DONE, 1)
    if ref != 0:
        heap_free(w, ref_start(ref), ref_nbytes(ref), tag)


@njit(nogil=True, cache=True)
def cons_copy(b, w, c, slots, n, out_buf, out_offsets):
    """Copy the payloads of claimed ``slots`` into ``out_buf`` (they stay claimed).

    ``out_offsets[i]`` is where message ``i`` goes (its length comes from
    :func:`cons_lengths`). A consumer killed after this and before
    :func:`cons_complete` has its messages redelivered.
    """
    cw = chan_word(w, c)
    for i in range(n):
        sw = _slot_word(w, cw, slots[i])
        ln = w[sw + cl.S_LEN]
        ref = w[sw + cl.S_REF]
        src = unit_offset(w, ref_start(ref)) if ref != 0 else sw * 8 + cl.S_INLINE_OFF
        copy_bytes(out_buf, out_offsets[i], b, src, ln)
    return n


@njit(nogil=True, cache=True)
def cons_copy_inline(b, w, c, slots, n, out_buf, out_lens):
    """:func:`cons_lengths` and :func:`cons_copy` in one call, for messages that sit
    inline in their slots: message ``i`` goes to ``out_buf[i * INLINE_STRIDE:]``
    (``out_buf`` holds at least ``n * INLINE_STRIDE`` bytes), its length to
    ``out_lens[i]``. The slots stay claimed.

    Returns
    -------
    int
        Total payload bytes, or -1 (nothing copied) if any of the slots holds its
        message in a pool block: then use :func:`cons_lengths` and :func:`cons_copy`.
    """
    cw = chan_word(w, c)
    for i in range(n):
        if w[_slot_word(w, cw, slots[i]) + cl.S_REF] != 0:
            return -1
    total = 0
    for i in range(n):
        sw = _slot_word(w, cw, slots[i])
        ln = w[sw + cl.S_LEN]
        out_lens[i] = ln
        total += ln
        copy_bytes(out_buf, i * cl.INLINE_STRIDE, b, sw * 8 + cl.S_INLINE_OFF, ln)
    return total


@njit(nogil=True, cache=True)
def cons_complete(b, w, c, tag, slots, n):
    """Mark claimed ``slots`` delivered: free them (and their blocks) for producers.

    The facade calls this after copying and decoding, immediately before handing the
    messages to the caller.

    Returns
    -------
    int
        0, or 1 when producers sleep and the caller must futex-wake ``SPACE_SEQ``.
    """
    cw = chan_word(w, c)
    for i in range(n):
        _complete(w, c, cw, slots[i], tag)
    fence_seq_cst()  # Dekker: free slots before reading PRODUCER_WAITERS
    if load_relaxed(w, cw + cl.C_PRODUCER_WAITERS) > 0:
        fetch_add(w, cw + cl.C_SPACE_SEQ, 1)
        return 1
    return 0


@njit(nogil=True, cache=True)
def cons_take(b, w, c, tag, slots, n, out_buf, out_offsets):
    """:func:`cons_copy` then :func:`cons_complete` in one call.

    Returns
    -------
    int
        0, or 1 when producers sleep and the caller must futex-wake ``SPACE_SEQ``.
    """
    cons_copy(b, w, c, slots, n, out_buf, out_offsets)
    return cons_complete(b, w, c, tag, slots, n)


@njit(nogil=True, cache=True)
def cons_return(b, w, c, tag, slots, n):
    """Give claimed-but-undelivered slots back for redelivery (prefetch on close).

    Returns
    -------
    int
        0, or 1 when consumers sleep and the caller must futex-wake ``DATA_SEQ``.
    """
    cw = chan_word(w, c)
    for i in range(n):
        sw = _slot_word(w, cw, slots[i])
        st = load_acquire(w, sw + cl.S_STATE)
        if _kind(st) != cl.KIND_CLAIMED or _tag(st) != tag:
            continue
        redeliver = _state(_offset(st), 0, cl.KIND_REDELIVER)
        # Count first: dying between the two leaves the count one too high (claimers
        # scan for nothing) rather than a REDELIVER slot nobody looks for.
        fetch_add(w, cw + cl.C_REDELIVER, 1)
        if cas(w, sw + cl.S_STATE, st, redeliver) != st:
            fetch_add(w, cw + cl.C_REDELIVER, -1)
    fence_seq_cst()
    if load_relaxed(w, cw + cl.C_CONSUMER_WAITERS) > 0:
        fetch_add(w, cw + cl.C_DATA_SEQ, 1)
        return 1
    return 0


@njit(nogil=True, cache=True)
def chan_available(w, c):
    """1 if a consumer could claim something now (monitoring / wait re-check)."""
    cw = chan_word(w, c)
    if load_acquire(w, cw + cl.C_REDELIVER) > 0:
        return 1
    for e in range(cl.MAX_PRODUCERS):
        pw = _prod_word(cw, e)
        if load_relaxed(w, pw + cl.P_STATE) == cl.PROD_FREE:
            continue
        if load_acquire(w, pw + cl.P_CLAIM) < load_acquire(w, pw + cl.P_PRODUCE):
            return 1
    return 0


# ---------------------------------------------------------------------------
# waiting (the futex syscalls themselves are made by the caller)
# ---------------------------------------------------------------------------


@njit(nogil=True, cache=True)
def wait_begin(w, c, space):
    """Register as a waiter (space=0: consumer on DATA_SEQ, 1: producer on SPACE_SEQ).

    Returns the sequence value to pass to FUTEX_WAIT after re-checking the condition.
    """
    cw = chan_word(w, c)
    if space:
        fetch_add(w, cw + cl.C_PRODUCER_WAITERS, 1)
        fence_seq_cst()  # Dekker: waiter count before re-reading the slots
        return load_acquire(w, cw + cl.C_SPACE_SEQ)
    fetch_add(w, cw + cl.C_CONSUMER_WAITERS, 1)
    fence_seq_cst()
    return load_acquire(w, cw + cl.C_DATA_SEQ)


@njit(nogil=True, cache=True)
def wait_end(w, c, space):
    """Unregister a waiter registered by :func:`wait_begin`."""
    cw = chan_word(w, c)
    fetch_add(w, cw + (cl.C_PRODUCER_WAITERS if space else cl.C_CONSUMER_WAITERS), -1)


@njit(nogil=True, cache=True)
def wake_all(w, c):
    """Bump both sequences (a handle closing, the owner repairing); caller wakes."""
    cw = chan_word(w, c)
    fetch_add(w, cw + cl.C_DATA_SEQ, 1)
    fetch_add(w, cw + cl.C_SPACE_SEQ, 1)


# ---------------------------------------------------------------------------
# owner: crash repair and statistics
# ---------------------------------------------------------------------------


@njit(nogil=True, cache=True)
def _unit_tag(w, unit):
    return load_acquire(w, w[W_HEAP_TABLE_OFF] // 8 + unit)


@njit(nogil=True, cache=True)
def _repair_channel(b, w, c, dead):
    cw = chan_word(w, c)
    cap = w[cw + cl.C_CAPACITY]
    if cap <= 0:
        return 0  # ACTIVE with its header wiped: a destroy was cut short, nothing to repair
    ctag = chan_tag(c)
    fixed = 0
    # Producers: count a publish the dead producer made visible but did not count.
    for e in range(cl.MAX_PRODUCERS):
        pw = _prod_word(cw, e)
        if w[pw + cl.P_STATE] != dead:
            continue
        # The dead handle's stats block (monitoring) goes back to the heap.
        stats_free_ref(w, pw + cl.P_STATS_REF, ctag)
        if w[pw + cl.P_RING_REF] == 0:
            # Died in prod_attach before its ring was recorded: nothing was published.
            # RETIRED would let the next attacher reuse the entry with no ring (a ring
            # block allocated but not recorded stays with the channel until destroy).
            store_release(w, pw + cl.P_STATE, cl.PROD_FREE)
            fixed += 1
            continue
        ring = _ring_word(w, pw)
        while True:
            o = w[pw + cl.P_PRODUCE]
            s = w[ring + o % cap]
            if s < 0 or s >= cap:
                break
            sw = _slot_word(w, cw, s)
            if w[sw + cl.S_STATE] == _state(o, 0, cl.KIND_PUBLISHED) and w[sw + cl.S_PRODUCER] == e:
                store_release(w, pw + cl.P_PRODUCE, o + 1)
                fixed += 1
            else:
                break
        store_release(w, pw + cl.P_STATE, cl.PROD_RETIRED)
        fixed += 1
    # Consumers.
    cas(w, cw + cl.C_MPSC_CONSUMER, dead, 0)
    for k in range(cl.MAX_CONSUMERS):
        kw = _cons_word(cw, k)
        if w[kw + cl.K_STATE] == dead:
            # Before the entry is freed: a new consumer may take it right after.
            stats_free_ref(w, kw + cl.K_STATS_REF, ctag)
        if cas(w, kw + cl.K_STATE, dead, 0) == dead:
            w[kw + cl.K_MEMBER_ID] = 0
            fixed += 1
    # Slots.
    for s in range(cap):
        sw = _slot_word(w, cw, s)
        st = w[sw + cl.S_STATE]
        kind = _kind(st)
        if kind == cl.KIND_FREE or _tag(st) != dead:
            continue
        ref = w[sw + cl.S_REF]
        if kind == cl.KIND_HELD:
            # The put never returned: drop it. A block already handed to the channel
            # is freed here; one still tagged with the dead member goes with its tag.
            w[sw + cl.S_REF] = 0
            if ref != 0:
                heap_free(w, ref_start(ref), ref_nbytes(ref), ctag)
            store_release(w, sw + cl.S_STATE, cl.KIND_FREE)
            fixed += 1
        elif kind == cl.KIND_CLAIMED:
            completing = w[sw + cl.S_LEN] < 0 or (ref != 0 and _unit_tag(w, ref_start(ref)) != ctag)
            if not completing:
                fetch_add(w, cw + cl.C_REDELIVER, 1)
                store_release(w, sw + cl.S_STATE, _state(_offset(st), 0, cl.KIND_REDELIVER))
            else:
                # The consumer had begun completing (LEN = -1, or the block is no
                # longer the channel's): the message was delivered. Finish it.
                e = w[sw + cl.S_PRODUCER]
                w[sw + cl.S_REF] = 0
                if ref != 0:
                    heap_free(w, ref_start(ref), ref_nbytes(ref), ctag)
                store_release(w, sw + cl.S_STATE, cl.KIND_FREE)
                fetch_add(w, _prod_word(cw, e) + cl.P_DONE, 1)
            fixed += 1
    if fixed:
        wake_all(w, c)
    return fixed


@njit(nogil=True, cache=True)
def chan_repair_dead(b, w, dead_tag):
    """Owner: repair every channel after member ``dead_tag`` died.

    Call before ``heap_reclaim_tag(w, dead_tag)`` (which frees the blocks the dead
    member still held). Returns the number of repaired items; every channel touched
    has had both sequences bumped, so the caller should futex-wake them all.
    """
    if dead_tag <= 0:
        return 0  # not a member tag: 0 would match every free entry
    fixed = 0
    for c in range(w[W_CHAN_COUNT]):
        cw = chan_word(w, c)
        st = load_acquire(w, cw + cl.C_STATE)
        creating = (st & 0xFF) == cl.CHAN_CREATING
        if creating and ((st >> 8) == dead_tag or w[cw + cl.C_CREATOR] == dead_tag):
            chan_destroy(b, w, c)
            fixed += 1
        elif st == cl.CHAN_ACTIVE:
            fixed += _repair_channel(b, w, c, dead_tag)
    return fixed


@njit(nogil=True, cache=True)
def chan_done_shortfall(b, w, c, out):
    """Owner: retired producer entries whose ``DONE`` lags though all is delivered.

    An entry qualifies when it is RETIRED (its ``PRODUCE`` can no longer move),
    ``CLAIM >= PRODUCE`` (nothing left to claim), ``DONE < PRODUCE``, and no slot holds
    a message of it (PUBLISHED, CLAIMED or REDELIVER). That is the mark of a consumer
    killed between freeing a slot and counting it -- or of a live consumer inside that
    two-instruction window right now: call again a moment later and heal only entries
    seen twice with the same ``DONE`` (:func:`chan_heal_done`).

    Parameters
    ----------
    b, w : np.ndarray
        Byte and word views of the pool.
    c : int
        Channel entry (must be ACTIVE).
    out : np.ndarray[int64]
        At least ``MAX_PRODUCERS`` long: ``out[e]`` receives the ``DONE`` value seen for
        a qualifying entry ``e``, else -1.

    Returns
    -------
    int
        Number of qualifying entries.
    """
    cw = chan_word(w, c)
    n = 0
    for e in range(cl.MAX_PRODUCERS):
        out[e] = -1
    cap = w[cw + cl.C_CAPACITY]
    if cap <= 0 or load_acquire(w, cw + cl.C_STATE) != cl.CHAN_ACTIVE:
        return 0
    for e in range(cl.MAX_PRODUCERS):
        pw = _prod_word(cw, e)
        if load_acquire(w, pw + cl.P_STATE) != cl.PROD_RETIRED:
            continue
        produce = load_acquire(w, pw + cl.P_PRODUCE)
        # SYNC POINT: DONE is read before the slots below (acquire), so a consumer
        # counted after we read it shows as a slot still CLAIMED or as a lagging DONE
        # that has moved by the second look -- never as a confirmed shortfall.
        done = load_acquire(w, pw + cl.P_DONE)
        if done >= produce or load_acquire(w, pw + cl.P_CLAIM) < produce:
            continue
        out[e] = done
        n += 1
    if n == 0:
        return 0
    for s in range(cap):
        sw = _slot_word(w, cw, s)
        kind = _kind(load_acquire(w, sw + cl.S_STATE))
        if kind == cl.KIND_PUBLISHED or kind == cl.KIND_CLAIMED or kind == cl.KIND_REDELIVER:
            e = w[sw + cl.S_PRODUCER]
            if 0 <= e < cl.MAX_PRODUCERS and out[e] >= 0:
                out[e] = -1
                n -= 1
    return n


@njit(nogil=True, cache=True)
def chan_heal_done(w, c, e, seen_done):
    """Owner: set retired entry ``e``'s ``DONE`` to ``PRODUCE`` if it still reads ``seen_done``.

    Use only for an entry :func:`chan_done_shortfall` reported twice with the same
    value. Returns 1 if healed (the entry is reusable again), else 0.
    """
    pw = _prod_word(chan_word(w, c), e)
    if load_acquire(w, pw + cl.P_STATE) != cl.PROD_RETIRED:
        return 0
    produce = load_acquire(w, pw + cl.P_PRODUCE)
    if load_acquire(w, pw + cl.P_CLAIM) < produce or seen_done >= produce:
        return 0
    return 1 if cas(w, pw + cl.P_DONE, seen_done, produce) == seen_done else 0


@njit(nogil=True, cache=True)
def chan_producer_offsets(w, c, out):
    """Fill ``out`` (int64[MAX_PRODUCERS, 5]) with state, produce, done, claim, weight.

    Returns the backlog ``sum(produce - done)`` over all entries.
    """
    cw = chan_word(w, c)
    backlog = 0
    for e in range(cl.MAX_PRODUCERS):
        pw = _prod_word(cw, e)
        out[e, 0] = load_relaxed(w, pw + cl.P_STATE)
        out[e, 1] = load_relaxed(w, pw + cl.P_PRODUCE)
        out[e, 2] = load_relaxed(w, pw + cl.P_DONE)
        out[e, 3] = load_relaxed(w, pw + cl.P_CLAIM)
        out[e, 4] = w[pw + cl.P_WEIGHT]
        if out[e, 0] != cl.PROD_FREE:
            backlog += out[e, 1] - out[e, 2]
    return backlog
