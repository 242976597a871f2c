"""The channel registry in etcd: unique keys, channel descriptors, member records, ids.

etcd is touched when a handle binds or closes and when leases are renewed, never per
message. Keys (see :mod:`fluxon.naming`)::

    .../mq/unique_keys/{unique_id}       -> "{chan_id}"          channel lease
    .../mq/channels/{chan_id}            -> descriptor JSON      channel lease
    .../mq/members/{chan_id}/{member_id} -> member JSON          the member's own lease
    .../ids/chan, .../ids/chan_member    -> counters             (transactions)

The *channel lease* (TTL ``ttl_seconds``) is kept alive by every member, so the
mapping and the descriptor expire when every member has been gone for ``ttl_seconds``;
the owner then reclaims the channel's pool entry (:mod:`fluxon.channel_reaper`).

Bind-or-create (:meth:`ChannelRegistry.bind_or_create`) converges on one channel when
many processes bind a new key at once: whoever finds no mapping creates a channel in
the pool, then publishes mapping and descriptor in ONE transaction guarded by "the
mapping is absent"; a loser destroys its channel and binds the winner's. A mapping
whose descriptor is gone, whose lease has expired, or whose pool entry no longer holds
that channel is stale: it is deleted (compare-and-delete on its value) and the key is
treated as absent.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import orjson

from fluxon_kernels import channel as kchan
from fluxon_kernels import status
from fluxon_kernels.layout import channel as cl

from . import naming
from .api_error import ApiError, ChanBindError, ChanCreateError, EtcdError, error_from_status

__all__ = [
    "CHAN_TYPE_CODES",
    "ChannelDescriptor",
    "ChannelRegistry",
    "MemberRecord",
]

_log = logging.getLogger("fluxon.channel_registry")

#: Descriptor ``type`` -> kernel channel type.
CHAN_TYPE_CODES = {"mpmc": cl.TYPE_MPMC, "mpsc": cl.TYPE_MPSC}
#: How many times bind-or-create re-reads the key after losing a race or a stale mapping.
MAX_BIND_ATTEMPTS = 16


@dataclass
class ChannelDescriptor:
    """What etcd knows about a channel (immutable once published, except ``lease_id``).

    Attributes
    ----------
    chan_id : int
        Cluster-wide channel id.
    unique_id : str
        The unique key the channel was created under.
    type : str
        ``"mpmc"`` or ``"mpsc"``.
    capacity, ttl_seconds : int
        The creator's config; every member uses these.
    owner_id : str
        Owner whose pool holds the channel.
    entry : int
        Index of the channel's entry in that pool's channel table.
    created_at : float
        Unix time of creation.
    lease_id : int
        The channel lease (mapping and descriptor are attached to it).
    creator : str
        Instance key of the creating client.
    """

    chan_id: int
    unique_id: str
    type: str
    capacity: int
    ttl_seconds: int
    owner_id: str
    entry: int
    created_at: float
    lease_id: int
    creator: str

    def to_json(self) -> bytes:
        """The etcd value."""
        return orjson.dumps(asdict(self))

    @classmethod
    def from_json(cls, raw: bytes | None) -> ChannelDescriptor | None:
        """Parse an etcd value; ``None`` if absent or malformed."""
        if raw is None:
            return None
        try:
            data = orjson.loads(raw)
            return cls(
                chan_id=int(data["chan_id"]),
                unique_id=str(data["unique_id"]),
                type=str(data["type"]),
                capacity=int(data["capacity"]),
                ttl_seconds=int(data["ttl_seconds"]),
                owner_id=str(data["owner_id"]),
                entry=int(data["entry"]),
                created_at=float(data["created_at"]),
                lease_id=int(data["lease_id"]),
                creator=str(data.get("creator", "")),
            )
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
            return None


@dataclass
class MemberRecord:
    """One producer or consumer of a channel, as published in etcd (monitoring)."""

    role: str
    member_id: int
    chan_id: int
    chan_type: str
    unique_id: str
    entry: int
    instance_key: str
    owner_id: str
    pid: int = field(default_factory=os.getpid)
    weight: int | None = None
    created_at: float = field(default_factory=time.time)

    def to_json(self) -> bytes:
        """The etcd value."""
        return orjson.dumps(asdict(self))


def _etcd_error(doing: str, exc: EtcdError) -> EtcdError:
    """``exc`` again, its message prefixed with what the registry was doing."""
    return EtcdError(
        f"{doing}: {exc.message}",
        transport=exc.transport,
        transport_user=exc.transport_user,
        component="etcd",
    )


class ChannelRegistry:
    """Channel bookkeeping of one cluster in etcd.

    Parameters
    ----------
    session : fluxon.etcd_client.EtcdSession
        An open etcd session (the store's).
    cluster_name : str
        The cluster.
    """

    def __init__(self, session: Any, cluster_name: str) -> None:
        self.session = session
        self.cluster_name = cluster_name

    # ------------------------------------------------------------- keys
    def unique_key(self, unique_id: str) -> str:
        """etcd key of the mapping ``unique_id -> chan_id``."""
        return naming.chan_unique_key(self.cluster_name, unique_id)

    def desc_key(self, chan_id: int) -> str:
        """etcd key of a channel descriptor."""
        return naming.chan_desc_key(self.cluster_name, chan_id)

    def member_key(self, chan_id: int, member_id: int) -> str:
        """etcd key of a member record."""
        return naming.chan_member_key(self.cluster_name, chan_id, member_id)

    # ------------------------------------------------------------- ids
    def new_chan_id(self) -> int:
        """A fresh cluster-wide channel id (1, 2, ...)."""
        return self.session.incr_counter(
            naming.id_counter_key(self.cluster_name, naming.CHAN_ID_COUNTER)
        )

    def new_member_id(self) -> int:
        """A fresh cluster-wide producer/consumer id (1, 2, ...)."""
        return self.session.incr_counter(
            naming.id_counter_key(self.cluster_name, naming.CHAN_MEMBER_ID_COUNTER)
        )

    # ------------------------------------------------------------- reading
    def lookup(self, unique_id: str) -> tuple[bytes | None, ChannelDescriptor | None]:
        """The raw mapping value of ``unique_id`` and the descriptor it points to."""
        mapping = self.session.get(self.unique_key(unique_id))
        if mapping is None:
            return None, None
        try:
            chan_id = int(mapping)
        except ValueError:
            return mapping, None
        return mapping, ChannelDescriptor.from_json(self.session.get(self.desc_key(chan_id)))

    def descriptor(self, chan_id: int) -> ChannelDescriptor | None:
        """The descriptor of ``chan_id`` (``None`` once the channel expired)."""
        return ChannelDescriptor.from_json(self.session.get(self.desc_key(chan_id)))

    def list_descriptors(self) -> list[ChannelDescriptor]:
        """Every live channel descriptor of the cluster."""
        out = []
        for _key, raw in self.session.get_prefix(naming.chan_desc_prefix(self.cluster_name)):
            desc = ChannelDescriptor.from_json(raw)
            if desc is not None:
                out.append(desc)
        return out

    def list_members(self, chan_id: int | None = None) -> list[dict]:
        """Member records of one channel (or of all channels), as dicts."""
        out = []
        prefix = naming.chan_members_prefix(self.cluster_name, chan_id)
        for _key, raw in self.session.get_prefix(prefix):
            try:
                out.append(orjson.loads(raw))
            except orjson.JSONDecodeError:
                continue
        return out

    # ------------------------------------------------------------- bind or create
    def _is_live(self, desc: ChannelDescriptor, pool: Any) -> bool:
        """Whether ``desc`` names a channel that still exists (lease alive, entry active)."""
        if desc.owner_id != pool.owner_id:
            # Another node's channel: its pool cannot be checked from here.
            return self.session.refresh_lease(desc.lease_id) > 0
        if not kchan.chan_is_active(pool.w, desc.entry, desc.chan_id):
            return False
        return self.session.refresh_lease(desc.lease_id) > 0

    def _drop_stale(self, unique_id: str, mapping: bytes, desc: ChannelDescriptor | None) -> None:
        """Delete a stale mapping (and its descriptor) unless someone replaced them."""
        ok = [("delete", self.unique_key(unique_id))]
        cmp = [("value", self.unique_key(unique_id), mapping)]
        if desc is not None:
            ok.append(("delete", self.desc_key(desc.chan_id)))
        removed = self.session.txn(cmp, ok)
        if removed:
            _log.info(
                "unique key %r pointed at a channel that no longer exists (chan_id %s); "
                "mapping removed",
                unique_id,
                mapping.decode("utf-8", "replace"),
            )

    def bind_or_create(
        self,
        pool: Any,
        unique_id: str,
        chan_type: str,
        capacity: int | None,
        ttl_seconds: int,
        creator_tag: int,
        creator: str,
    ) -> tuple[ChannelDescriptor, bool]:
        """Find the live channel of ``unique_id``, or create it; converges under races.

        Parameters
        ----------
        pool : fluxon.pool.Pool
            The local pool (new channels are created in it).
        unique_id : str
            The unique key.
        chan_type : str
            ``"mpmc"`` or ``"mpsc"`` (used only when creating).
        capacity : int or None
            Slot count when creating; ``None`` -> a missing channel is an error.
        ttl_seconds : int
            Channel lease TTL when creating.
        creator_tag : int
            This process's member tag.
        creator : str
            This client's instance key (recorded in the descriptor).

        Returns
        -------
        (ChannelDescriptor, bool)
            The channel and whether this call created it. The channel lease has just
            been refreshed (or granted): start keeping it alive within ``ttl_seconds``.

        Raises
        ------
        ChanCreateError
            The channel had to be created and could not be (no capacity given, pool
            full).
        ChanBindError
            The key kept changing under us.
        EtcdError
            etcd failed or did not answer in time (each call is bounded by the
            session's timeout); the message names the unique key and the operation.
        """
        ukey = self.unique_key(unique_id)
        for _attempt in range(MAX_BIND_ATTEMPTS):
            try:
                mapping, desc = self.lookup(unique_id)
                if mapping is not None:
                    if desc is not None and self._is_live(desc, pool):
                        return desc, False
                    self._drop_stale(unique_id, mapping, desc)
                    continue
            except EtcdError as exc:
                raise _etcd_error(f"binding unique key {unique_id!r}", exc) from exc
            if capacity is None:
                raise ChanCreateError(
                    f"no channel is registered under unique key {unique_id!r}, and chan_config "
                    "has no 'capacity' to create one"
                )
            desc = self._create(
                pool, unique_id, ukey, chan_type, capacity, ttl_seconds, creator_tag, creator
            )
            if desc is not None:
                return desc, True
        raise ChanBindError(
            f"unique key {unique_id!r} kept changing during {MAX_BIND_ATTEMPTS} bind attempts"
        )

    def _create(
        self,
        pool: Any,
        unique_id: str,
        ukey: str,
        chan_type: str,
        capacity: int,
        ttl_seconds: int,
        creator_tag: int,
        creator: str,
    ) -> ChannelDescriptor | None:
        """Create a channel and publish it; ``None`` if another process won the key."""
        session = self.session
        try:
            chan_id = self.new_chan_id()
            lease = session.grant_lease(ttl_seconds)
        except EtcdError as exc:
            raise _etcd_error(f"creating the channel of unique key {unique_id!r}", exc) from exc
        lease_id = int(getattr(lease, "id", lease))
        c = int(
            kchan.chan_create(
                pool.b,
                pool.w,
                creator_tag,
                chan_id,
                CHAN_TYPE_CODES[chan_type],
                capacity,
                time.time_ns(),
            )
        )
        if c < 0:
            self._revoke_quietly(lease_id)
            if c == status.NO_SLOT:
                why = "the pool's channel table is full"
            elif c in (status.NO_MEMORY, status.TOO_LARGE):
                why = (
                    f"the pool has no room for {capacity} message slots "
                    f"({capacity * cl.SLOT_STRIDE} bytes)"
                )
            else:
                why = str(error_from_status(c, "chan_create"))
            raise ChanCreateError(f"creating the channel of unique key {unique_id!r}: {why}")
        desc = ChannelDescriptor(
            chan_id=chan_id,
            unique_id=unique_id,
            type=chan_type,
            capacity=int(capacity),
            ttl_seconds=int(ttl_seconds),
            owner_id=pool.owner_id,
            entry=c,
            created_at=time.time(),
            lease_id=lease_id,
            creator=creator,
        )
        try:
            won = session.txn(
                [("absent", ukey)],
                [
                    ("put", ukey, str(chan_id), lease_id),
                    ("put", self.desc_key(chan_id), desc.to_json(), lease_id),
                ],
            )
        except EtcdError as exc:
            # Unknown outcome: if the transaction did commit, the mapping expires with the
            # lease and the next binder sees a stale mapping (entry no longer active).
            kchan.chan_destroy(pool.b, pool.w, c)
            self._revoke_quietly(lease_id)
            raise _etcd_error(f"publishing the channel of unique key {unique_id!r}", exc) from exc
        if won:
            _log.debug(
                "created %s channel %d (entry %d, capacity %d, ttl %d s) for unique key %r",
                chan_type,
                chan_id,
                c,
                capacity,
                ttl_seconds,
                unique_id,
            )
            return desc
        # Another process published first: bind theirs.
        kchan.chan_destroy(pool.b, pool.w, c)
        self._revoke_quietly(lease_id)
        return None

    def _revoke_quietly(self, lease_id: int) -> None:
        try:
            self.session.revoke(lease_id)
        except ApiError as exc:
            _log.debug("revoking lease %x failed (it expires on its own): %s", lease_id, exc)

    # ------------------------------------------------------------- lease loss
    def republish(self, desc: ChannelDescriptor) -> int | None:
        """Publish ``desc`` again after its lease was lost (etcd outage longer than the TTL).

        Returns
        -------
        int or None
            The lease id to keep alive from now on (a new one, or the one another member
            already republished with), or ``None`` if the unique key now names another
            channel (this channel is orphaned: its members keep working, new binders get
            the other one).
        """
        session = self.session
        ukey = self.unique_key(desc.unique_id)
        lease = session.grant_lease(desc.ttl_seconds)
        lease_id = int(getattr(lease, "id", lease))
        fresh = ChannelDescriptor(**{**asdict(desc), "lease_id": lease_id})
        if session.txn(
            [("absent", ukey), ("absent", self.desc_key(desc.chan_id))],
            [
                ("put", ukey, str(desc.chan_id), lease_id),
                ("put", self.desc_key(desc.chan_id), fresh.to_json(), lease_id),
            ],
        ):
            return lease_id
        self._revoke_quietly(lease_id)
        mapping, current = self.lookup(desc.unique_id)
        if current is not None and current.chan_id == desc.chan_id:
            return current.lease_id
        return None

    # ------------------------------------------------------------- members
    def put_member(self, record: MemberRecord, lease_id: int) -> None:
        """Publish a member record under the member's lease."""
        self.session.put(
            self.member_key(record.chan_id, record.member_id), record.to_json(), lease=lease_id
        )

    def delete_member(self, chan_id: int, member_id: int) -> None:
        """Remove a member record."""
        self.session.delete(self.member_key(chan_id, member_id))
