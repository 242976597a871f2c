"""Retention: the owner reclaims channels whose members have all been gone for ``ttl_seconds``.

Every member of a channel keeps the channel's etcd lease alive; when the last one has
been gone for ``ttl_seconds`` the lease expires and takes the unique-key mapping and
the descriptor with it. :func:`reap_expired_channels` (run by the owner about once a
second) then frees the pool entry and everything it holds — slots, rings and
undelivered payloads — so pool free bytes return to their baseline.

An entry is destroyed only if all of these hold:

* it is ACTIVE and older than :data:`GRACE_S` (a creator publishes the descriptor just
  after creating the entry);
* etcd has no descriptor for its ``chan_id`` (checked twice: in one listing, then again
  by key right before destroying);
* no producer or consumer entry is held by a member slot that is still occupied (a live
  process, or a dead one the owner has not repaired yet).
"""

from __future__ import annotations

import logging
import time
from typing import Any

from fluxon_kernels import channel as kchan
from fluxon_kernels.layout import channel as cl
from fluxon_kernels.layout import member as ml
from fluxon_kernels.layout import pool_header as ph

from . import naming

__all__ = [
    "GRACE_S",
    "REAP_INTERVAL_S",
    "destroy_expired_channels",
    "find_expired_channels",
    "forget_unique_keys",
    "reap_expired_channels",
    "unused_channels",
]

_log = logging.getLogger("fluxon.channel_reaper")

#: A channel younger than this is never reaped (its descriptor may not be published yet).
GRACE_S = 5.0
#: How often the owner should call :func:`reap_expired_channels`.
REAP_INTERVAL_S = 1.0


def _occupied_tags(pool: Any) -> set[int]:
    """Member tags whose slot is occupied (live process, or dead and not yet repaired)."""
    w = pool.w
    base = int(w[ph.W_MEMBER_OFF])
    stride = int(w[ph.W_MEMBER_STRIDE])
    tags = set()
    for slot in range(int(w[ph.W_MEMBER_COUNT])):
        if int(w[(base + slot * stride) // 8 + ml.M_STATE]) != 0:
            tags.add(ml.member_tag(slot))
    return tags


def _has_members(w: Any, cw: int, occupied: set[int]) -> bool:
    for e in range(cl.MAX_PRODUCERS):
        st = int(w[cw + (cl.PROD_OFF + e * cl.PROD_STRIDE) // 8 + cl.P_STATE])
        if st > 0 and st in occupied:
            return True
    for k in range(cl.MAX_CONSUMERS):
        st = int(w[cw + (cl.CONS_OFF + k * cl.CONS_STRIDE) // 8 + cl.K_STATE])
        if st != 0 and st in occupied:
            return True
    return False


def unused_channels(pool: Any, grace_s: float = GRACE_S) -> list[tuple[int, int, int]]:
    """ACTIVE channels older than ``grace_s`` that no live member is attached to (the
    only ones whose descriptor may have expired), from the pool alone.

    Returns
    -------
    list of (int, int, int)
        ``(entry, channel word, chan_id)``.
    """
    w = pool.w
    out = []
    now_ns = time.time_ns()
    occupied = None
    for c in range(int(w[ph.W_CHAN_COUNT])):
        cw = int(kchan.chan_word(w, c))
        if int(w[cw + cl.C_STATE]) != cl.CHAN_ACTIVE:
            continue
        if now_ns - int(w[cw + cl.C_CREATED_NS]) < grace_s * 1e9:
            continue
        if occupied is None:
            occupied = _occupied_tags(pool)
        if not _has_members(w, cw, occupied):
            out.append((c, cw, int(w[cw + cl.C_CHAN_ID])))
    return out


def find_expired_channels(
    pool: Any,
    etcd_session: Any,
    cluster_name: str,
    grace_s: float = GRACE_S,
    candidates: list[tuple[int, int, int]] | None = None,
) -> list[tuple[int, int]]:
    """Phase 1 (reads etcd, writes nothing): channels of ``pool`` whose descriptor is gone.

    Safe to run on a side thread (it only reads the pool). ``candidates``: what
    :func:`unused_channels` returned just before, if the caller has it.

    Returns
    -------
    list of (int, int)
        ``(entry, chan_id)`` of ACTIVE channels older than ``grace_s`` that have no
        descriptor in etcd (checked in one listing, then again key by key) and no
        attached member; pass them to :func:`destroy_expired_channels`.

    Raises
    ------
    EtcdError
        If etcd cannot be read.
    """
    w = pool.w
    if candidates is None:
        candidates = unused_channels(pool, grace_s)
    if not candidates:
        return []
    prefix = naming.chan_desc_prefix(cluster_name)
    live = set()
    for key, _value in etcd_session.get_prefix(prefix, keys_only=True):
        try:
            live.add(int(key[len(prefix) :]))
        except ValueError:
            continue
    occupied = _occupied_tags(pool)  # again: members may have attached meanwhile
    expired = []
    for c, cw, chan_id in candidates:
        if chan_id in live or _has_members(w, cw, occupied):
            continue
        if etcd_session.get(naming.chan_desc_key(cluster_name, chan_id)) is not None:
            continue
        expired.append((c, chan_id))
    return expired


def destroy_expired_channels(pool: Any, expired: list[tuple[int, int]]) -> list[int]:
    """Phase 2 (pool only, no etcd): destroy what :func:`find_expired_channels` found.

    Run it on the thread that repairs dead members (``Pool.reap_dead_members``), so a
    repair never walks a channel being destroyed. Each entry is re-checked: still the
    same active channel, still no attached member.

    Returns
    -------
    list[int]
        Entry indices destroyed.
    """
    w, b = pool.w, pool.b
    occupied = _occupied_tags(pool)
    destroyed = []
    for c, chan_id in expired:
        if not kchan.chan_is_active(w, c, chan_id):
            continue
        if _has_members(w, int(kchan.chan_word(w, c)), occupied):
            continue
        freed = int(kchan.chan_destroy(b, w, c))
        destroyed.append(c)
        _log.info(
            "reclaimed expired channel %d (entry %d, %d heap units): every member was gone "
            "for its ttl",
            chan_id,
            c,
            freed,
        )
    return destroyed


def forget_unique_keys(etcd_session: Any, cluster_name: str, chan_ids: list[int]) -> None:
    """Delete unique-key mappings still naming ``chan_ids`` (normally gone with the lease)."""
    if not chan_ids:
        return
    wanted = {str(chan_id).encode() for chan_id in chan_ids}
    for key, value in etcd_session.get_prefix(naming.chan_unique_prefix(cluster_name)):
        if value in wanted:
            etcd_session.delete_if_value(key, value)


def reap_expired_channels(
    pool: Any, etcd_session: Any, cluster_name: str, grace_s: float = GRACE_S
) -> list[int]:
    """Destroy the channels of ``pool`` whose etcd descriptor expired and that nobody uses.

    The three steps in one call (:func:`find_expired_channels`,
    :func:`destroy_expired_channels`, :func:`forget_unique_keys`); call it from the
    thread that repairs dead members, or split the phases between threads.

    Parameters
    ----------
    pool : fluxon.pool.Pool
        The owner's pool.
    etcd_session : fluxon.etcd_client.EtcdSession
        An open session (the owner's).
    cluster_name : str
        The cluster.
    grace_s : float
        Minimum age of a channel before it may be reaped.

    Returns
    -------
    list[int]
        Entry indices of the channels destroyed in this pass.

    Raises
    ------
    EtcdError
        If etcd cannot be read (nothing is destroyed then).
    """
    expired = find_expired_channels(pool, etcd_session, cluster_name, grace_s)
    if not expired:
        return []
    destroyed = destroy_expired_channels(pool, expired)
    chan_ids = [chan_id for c, chan_id in expired if c in destroyed]
    forget_unique_keys(etcd_session, cluster_name, chan_ids)
    return destroyed
