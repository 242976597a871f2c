"""Heap kernels: tag-claimed runs of fixed-size units (layout in :mod:`.layout.heap`).

The heap has no free list. Its only state is one int64 *tag* per unit
(``0`` = free, otherwise the holder). A block of ``k`` units is allocated by claiming
``k`` consecutive free units one by one with ``cas(tag, 0, holder)``; losing a CAS to a
concurrent allocator rolls back the units claimed so far and continues the search
past the conflict. Consequences:

* A process killed at ANY instruction leaves every unit either free or carrying a
  tag the owner can judge (a dead member's tag, a KV bucket's, a channel's); the
  owner repairs with :func:`heap_reclaim_tag` — there is no list to relink.
* Freeing is ``cas(tag, holder, 0)`` per unit, so a stale or double free by a wrong
  holder changes nothing.
* Ownership hand-over (member -> KV bucket, member -> channel) is a retag
  (``cas(old, new)`` per unit), again crash-safe unit by unit.

Search is first-fit starting at the shared cursor ``w[W_HEAP_HINT]`` (wrapping once),
which spreads concurrent allocators over the heap instead of having all of them
fight for the lowest free units. The cursor is a hint: it is read and written with
relaxed atomics and any value is safe.

Memory ordering: the CAS that frees a unit is acq_rel and so is the CAS that claims
it, so everything the previous holder did with the bytes happens-before everything
the next holder does with them.

All kernels take ``w``, the int64 view of the whole pool; the geometry words of the
header (``W_HEAP_TABLE_OFF``, ``W_HEAP_UNITS``, ``W_HEAP_OFF``, ``W_UNIT_SIZE``) are
read-mostly and read with plain loads.
"""

from __future__ import annotations

from numba import njit

from . import status
from .atomics import cas, load_relaxed, store_relaxed, store_release
from .layout.heap import FREE_TAG, MAX_BLOCK_BYTES, REF_LEN_BITS, REF_LEN_MASK
from .layout.pool_header import (
    W_HEAP_HINT,
    W_HEAP_OFF,
    W_HEAP_TABLE_OFF,
    W_HEAP_UNITS,
    W_UNIT_SIZE,
)

__all__ = [
    "heap_alloc",
    "heap_alloc_many",
    "heap_free",
    "heap_free_many",
    "heap_free_units",
    "heap_reclaim_tag",
    "heap_retag",
    "heap_used_by_tag",
    "make_ref",
    "ref_nbytes",
    "ref_start",
    "unit_offset",
    "units_for",
]


# ---------------------------------------------------------------------------
# Block references and geometry
# ---------------------------------------------------------------------------


@njit(nogil=True, cache=True)
def make_ref(start_unit, nbytes):
    """Pack a block reference.

    Parameters
    ----------
    start_unit : int
        First unit of the block.
    nbytes : int
        Byte length of the payload in the block (``1 .. MAX_BLOCK_BYTES``).

    Returns
    -------
    int
        ``(start_unit << REF_LEN_BITS) | nbytes``; never 0 for a valid block.
    """
    return (start_unit << REF_LEN_BITS) | nbytes


@njit(nogil=True, cache=True)
def ref_start(ref):
    """First unit of the block ``ref`` points to.

    Parameters
    ----------
    ref : int
        Block reference made by :func:`make_ref`.

    Returns
    -------
    int
        The start unit.
    """
    return ref >> REF_LEN_BITS


@njit(nogil=True, cache=True)
def ref_nbytes(ref):
    """Byte length stored in a block reference.

    Parameters
    ----------
    ref : int
        Block reference made by :func:`make_ref`.

    Returns
    -------
    int
        The payload length in bytes (0 for the null reference).
    """
    return ref & REF_LEN_MASK


@njit(nogil=True, cache=True)
def unit_offset(w, start_unit):
    """Byte offset in the pool of heap unit ``start_unit``.

    Parameters
    ----------
    w : numpy.ndarray
        int64 view of the whole pool.
    start_unit : int
        Unit index.

    Returns
    -------
    int
        ``HEAP_OFF + start_unit * UNIT_SIZE``.
    """
    return w[W_HEAP_OFF] + start_unit * w[W_UNIT_SIZE]


@njit(nogil=True, cache=True)
def units_for(w, nbytes):
    """Number of units a block of ``nbytes`` bytes occupies.

    Parameters
    ----------
    w : numpy.ndarray
        int64 view of the whole pool.
    nbytes : int
        Payload length in bytes (> 0).

    Returns
    -------
    int
        ``ceil(nbytes / UNIT_SIZE)``.
    """
    unit = w[W_UNIT_SIZE]
    return (nbytes + unit - 1) // unit


@njit(nogil=True, cache=True)
def _block_units(w, start_unit, nbytes):
    """Units of the block ``(start_unit, nbytes)``, or -1 if it is not inside the heap."""
    if nbytes <= 0 or start_unit < 0:
        return -1
    need = units_for(w, nbytes)
    if start_unit + need > w[W_HEAP_UNITS]:
        return -1
    return need


# ---------------------------------------------------------------------------
# Allocation
# ---------------------------------------------------------------------------


@njit(nogil=True, cache=True)
def heap_alloc(w, nbytes, tag):
    """Claim a run of consecutive free units for a block of ``nbytes`` bytes.

    First fit, starting at the shared cursor ``W_HEAP_HINT`` and wrapping around
    once. Each unit is claimed with ``cas(tag_table[i], 0, tag)``; a lost CAS rolls
    back the units claimed so far and the search continues past the conflict.
    A crash at any instruction leaves each unit either free or tagged ``tag``.

    Parameters
    ----------
    w : numpy.ndarray
        int64 view of the whole pool.
    nbytes : int
        Payload length in bytes.
    tag : int
        Holder tag written into every unit (nonzero: a member tag, ``KV_TAG_BASE +
        bucket`` or ``CHAN_TAG_BASE + channel``).

    Returns
    -------
    int
        The start unit (``>= 0``); ``TOO_LARGE`` if ``nbytes <= 0`` or the block can
        never fit in the heap; ``FULL`` if no run of free units exists now;
        ``CORRUPT`` if ``tag`` is 0 (a caller bug: it would claim nothing).
    """
    if tag == FREE_TAG:
        return status.CORRUPT
    units = w[W_HEAP_UNITS]
    if nbytes <= 0 or nbytes > MAX_BLOCK_BYTES:
        return status.TOO_LARGE
    need = units_for(w, nbytes)
    if need > units:
        return status.TOO_LARGE
    base = w[W_HEAP_TABLE_OFF] >> 3

    # The cursor is only a hint (relaxed, racy); any value in range is correct.
    start = load_relaxed(w, W_HEAP_HINT)
    if start < 0 or start >= units:
        start = 0

    pos = start
    wrapped = False
    while True:
        if pos + need > units:
            # No run can start here without running off the end: wrap once.
            if wrapped:
                break
            wrapped = True
            pos = 0
            continue
        if wrapped and pos >= start:
            break  # every start position has been tried

        # Cheap pre-scan with relaxed loads; skip past the first busy unit.
        j = 0
        while j < need:
            if load_relaxed(w, base + pos + j) != FREE_TAG:
                break
            j += 1
        if j < need:
            pos += j + 1
            continue

        # Claim unit by unit.
        # SYNC POINT: acq_rel cas; its acquire half pairs with the releasing cas in
        # heap_free / heap_reclaim_tag or the store_release of a rollback below, so
        # the previous holder's last use of the bytes happens-before ours.
        k = 0
        while k < need:
            if cas(w, base + pos + k, FREE_TAG, tag) != FREE_TAG:
                break
            k += 1
        if k == need:
            nxt = pos + need
            if nxt >= units:
                nxt = 0
            store_relaxed(w, W_HEAP_HINT, nxt)
            return pos

        # Lost unit pos+k to a concurrent allocator: give back what we took.
        # SYNC POINT: release pairs with the acquire of the next claimer's cas.
        m = 0
        while m < k:
            store_release(w, base + pos + m, FREE_TAG)
            m += 1
        pos += k + 1
    return status.FULL


@njit(nogil=True, cache=True)
def heap_free(w, start_unit, nbytes, tag):
    """Free the block ``(start_unit, nbytes)`` held by ``tag``.

    Each unit is released with ``cas(tag -> 0)``, so units not carrying ``tag``
    (already freed, reclaimed, or held by someone else) are left alone.

    Parameters
    ----------
    w : numpy.ndarray
        int64 view of the whole pool.
    start_unit : int
        First unit of the block.
    nbytes : int
        Payload length in bytes the block was allocated for.
    tag : int
        The holder tag the units are expected to carry.

    Returns
    -------
    int
        Number of units freed; ``CORRUPT`` if the block is not inside the heap.
    """
    need = _block_units(w, start_unit, nbytes)
    if need < 0:
        return status.CORRUPT
    if tag == FREE_TAG:
        return 0
    base = w[W_HEAP_TABLE_OFF] >> 3
    freed = 0
    for k in range(need):
        # SYNC POINT: acq_rel cas; its release half pairs with the next claimer's
        # acquiring cas in heap_alloc (our use of the bytes happens-before theirs).
        if cas(w, base + start_unit + k, tag, FREE_TAG) == tag:
            freed += 1
    return freed


@njit(nogil=True, cache=True)
def heap_retag(w, start_unit, nbytes, old_tag, new_tag):
    """Hand the block ``(start_unit, nbytes)`` over from ``old_tag`` to ``new_tag``.

    Parameters
    ----------
    w : numpy.ndarray
        int64 view of the whole pool.
    start_unit : int
        First unit of the block.
    nbytes : int
        Payload length in bytes the block was allocated for.
    old_tag : int
        Current holder (nonzero).
    new_tag : int
        New holder (nonzero).

    Returns
    -------
    int
        Number of units retagged (units not carrying ``old_tag`` are left alone);
        ``CORRUPT`` if the block is not inside the heap or a tag is 0.
    """
    need = _block_units(w, start_unit, nbytes)
    if need < 0 or old_tag == FREE_TAG or new_tag == FREE_TAG:
        return status.CORRUPT
    base = w[W_HEAP_TABLE_OFF] >> 3
    moved = 0
    for k in range(need):
        if cas(w, base + start_unit + k, old_tag, new_tag) == old_tag:
            moved += 1
    return moved


@njit(nogil=True, cache=True)
def heap_reclaim_tag(w, tag):
    """Free every unit tagged ``tag`` (owner-side repair of a dead holder).

    Parameters
    ----------
    w : numpy.ndarray
        int64 view of the whole pool.
    tag : int
        The dead holder's tag (0 reclaims nothing).

    Returns
    -------
    int
        Number of units freed.
    """
    if tag == FREE_TAG:
        return 0
    base = w[W_HEAP_TABLE_OFF] >> 3
    units = w[W_HEAP_UNITS]
    freed = 0
    for i in range(units):
        if load_relaxed(w, base + i) == tag and cas(w, base + i, tag, FREE_TAG) == tag:
            freed += 1
    return freed


@njit(nogil=True, cache=True)
def heap_free_units(w):
    """Count free units (exact when no allocator runs; a snapshot otherwise).

    Parameters
    ----------
    w : numpy.ndarray
        int64 view of the whole pool.

    Returns
    -------
    int
        Number of units whose tag is 0.
    """
    base = w[W_HEAP_TABLE_OFF] >> 3
    units = w[W_HEAP_UNITS]
    n = 0
    for i in range(units):
        if load_relaxed(w, base + i) == FREE_TAG:
            n += 1
    return n


@njit(nogil=True, cache=True)
def heap_used_by_tag(w, tag):
    """Count units tagged ``tag``.

    Parameters
    ----------
    w : numpy.ndarray
        int64 view of the whole pool.
    tag : int
        Holder tag (0 counts free units).

    Returns
    -------
    int
        Number of units carrying ``tag``.
    """
    base = w[W_HEAP_TABLE_OFF] >> 3
    units = w[W_HEAP_UNITS]
    n = 0
    for i in range(units):
        if load_relaxed(w, base + i) == tag:
            n += 1
    return n


# ---------------------------------------------------------------------------
# Batch forms (one Python -> kernel crossing per batch)
# ---------------------------------------------------------------------------


@njit(nogil=True, cache=True)
def heap_alloc_many(w, sizes, tag, out_refs):
    """Allocate one block per entry of ``sizes``, stopping at the first failure.

    Parameters
    ----------
    w : numpy.ndarray
        int64 view of the whole pool.
    sizes : numpy.ndarray
        int64 payload lengths.
    tag : int
        Holder tag for every block.
    out_refs : numpy.ndarray
        int64 output, at least ``len(sizes)`` long: ``out_refs[i]`` receives the
        block reference of ``sizes[i]``; at the first failing index it receives the
        failure status (``FULL``/``TOO_LARGE``/``CORRUPT``).

    Returns
    -------
    int
        Number of blocks allocated (a prefix of ``sizes``).
    """
    n = min(len(sizes), len(out_refs))
    for i in range(n):
        start = heap_alloc(w, sizes[i], tag)
        if start < 0:
            out_refs[i] = start
            return i
        out_refs[i] = make_ref(start, sizes[i])
    return n


@njit(nogil=True, cache=True)
def heap_free_many(w, refs, tag):
    """Free every block in ``refs`` held by ``tag`` (null references are skipped).

    Parameters
    ----------
    w : numpy.ndarray
        int64 view of the whole pool.
    refs : numpy.ndarray
        int64 block references.
    tag : int
        The holder tag the units are expected to carry.

    Returns
    -------
    int
        Total number of units freed; ``CORRUPT`` if a reference lies outside the
        heap (the blocks before it were freed).
    """
    total = 0
    for i in range(len(refs)):
        ref = refs[i]
        if ref == 0:
            continue
        r = heap_free(w, ref_start(ref), ref_nbytes(ref), tag)
        if r < 0:
            return r
        total += r
    return total
