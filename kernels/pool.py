"""Pool-level kernels: the ready signal and the member table.

A member slot is claimed with ``cas(STATE, 0, pid)``; the claimer then fills its
fields. The owner judges a slot by ``STATE`` (the pid) and ``START_TIME``: a slot
whose start time is still 0 is mid-claim and judged by the pid alone.
"""

from numba import njit

from . import status
from .atomics import cas, fetch_add, load_acquire, store_relaxed, store_release
from .layout import member as ml
from .layout import pool_header as ph


@njit(nogil=True, cache=True)
def pool_publish_ready(w):
    """Mark a fully initialised pool as ready (creator only, last write).

    Parameters
    ----------
    w : np.ndarray[int64]
        Word view of the pool.
    """
    # SYNC POINT: every header/region write before this store is visible to an
    # attacher whose pool_is_ready() load_acquire sees the magic.
    store_release(w, ph.W_MAGIC, ph.MAGIC_VALUE)


@njit(nogil=True, cache=True)
def pool_is_ready(w):
    """1 if the pool's magic is published, else 0.

    Parameters
    ----------
    w : np.ndarray[int64]
        Word view of the pool.

    Returns
    -------
    int
        1 when ready.
    """
    # SYNC POINT: pairs with the store_release in pool_publish_ready.
    return 1 if load_acquire(w, ph.W_MAGIC) == ph.MAGIC_VALUE else 0


@njit(nogil=True, cache=True)
def _slot_word(w, slot):
    return (w[ph.W_MEMBER_OFF] + slot * w[ph.W_MEMBER_STRIDE]) // 8


@njit(nogil=True, cache=True)
def member_claim(w, pid, start_time, kind, now_ns):
    """Claim a free member slot for process ``pid``.

    Parameters
    ----------
    w : np.ndarray[int64]
        Word view of the pool.
    pid, start_time, kind, now_ns : int
        Identity of the claiming process, its kind and the current monotonic time.

    Returns
    -------
    int
        The slot index (its member tag is ``slot + 1``), or ``NO_SLOT``.
    """
    count = w[ph.W_MEMBER_COUNT]
    for slot in range(count):
        base = _slot_word(w, slot)
        if w[base + ml.M_STATE] != 0:
            continue
        if cas(w, base + ml.M_STATE, 0, pid) == 0:
            store_relaxed(w, base + ml.M_KIND, kind)
            store_relaxed(w, base + ml.M_HEARTBEAT_NS, now_ns)
            fetch_add(w, base + ml.M_GENERATION, 1)
            # SYNC POINT: a reader that load_acquires START_TIME != 0 sees KIND etc.
            store_release(w, base + ml.M_START_TIME, start_time)
            return slot
    return status.NO_SLOT


@njit(nogil=True, cache=True)
def member_release(w, slot, pid):
    """Free ``slot`` if it is still held by ``pid``; returns OK or NOT_FOUND.

    Parameters
    ----------
    w : np.ndarray[int64]
        Word view of the pool.
    slot, pid : int
        The slot and the pid that claimed it.
    """
    base = _slot_word(w, slot)
    if load_acquire(w, base + ml.M_STATE) != pid:
        return status.NOT_FOUND
    store_relaxed(w, base + ml.M_START_TIME, 0)
    store_relaxed(w, base + ml.M_KIND, 0)
    store_relaxed(w, base + ml.M_NAME_LEN, 0)
    # SYNC POINT: the cleared fields are visible to the next claimer's cas on STATE.
    if cas(w, base + ml.M_STATE, pid, 0) != pid:
        return status.NOT_FOUND
    return status.OK


@njit(nogil=True, cache=True)
def member_heartbeat(w, slot, now_ns):
    """Store the member's heartbeat time (relaxed; monitoring only).

    Parameters
    ----------
    w : np.ndarray[int64]
        Word view of the pool.
    slot, now_ns : int
        The slot and the current monotonic time.
    """
    store_relaxed(w, _slot_word(w, slot) + ml.M_HEARTBEAT_NS, now_ns)
