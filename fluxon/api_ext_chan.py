"""Message queue facade: ``new_or_bind_with_unique_key`` and producer/consumer handles.

::

    store = new_store(cfg).unwrap()
    producer = new_or_bind_with_unique_key(
        store, {"capacity": 128, "ttl_seconds": 300}, unique_id="jobs",
        chan_type=ChanType.MPMC, chan_role=ChanRole.PRODUCER,
    ).unwrap()
    producer.put_data({"seq": 1, "payload": b"..."})      # Result[bool]
    ...
    consumer.get_data(batch_size=32, try_time=1.0)        # Result[list[FlatDict]]
    producer.close(); store.close()

A channel lives in the local owner's pool (:mod:`fluxon_kernels.channel`); its name,
config and members live in etcd (:mod:`fluxon.channel_registry`). ``put_data`` and
``get_data`` touch only shared memory: encode + one kernel call to publish; one kernel
call to claim a batch, one to copy it out, the decode, one to complete it. Blocked calls
spin for a few tens of microseconds (yielding the CPU between tries), then sleep on the
channel's futex words (:mod:`fluxon.futex`), so an idle consumer costs no CPU.

Delivery: a message whose ``put_data`` returned ``Ok(True)`` is delivered exactly once
while processes exit normally; messages a consumer had claimed (prefetched, or in the
middle of ``get_data``) when it was killed are redelivered to another consumer.

Both channel types share one implementation: MPMC (any number of consumers, producers
chosen by smooth weighted round robin on ``weight``) and MPSC (at most one live
consumer; a second bind fails with :class:`ChanBindError`).

Statistics: every handle records into a :mod:`fluxon.stats` recorder (one histogram
bucket and a few counters per call, no allocation). It publishes a summary into the
handle's stats block in the pool every 0.5 s (the master and ``python -m fluxon
status`` read it), and every ``FLUXON_LATENCY_LOG_INTERVAL_S`` seconds (default 30) a
consumer logs ``py-get latency``, ``get_one breakdown`` and ``MpscConsumer prefetch``
lines and a producer logs ``py-put latency`` (at INFO, from the calling thread, only
when the handle was used in the window). ``FLUXON_MQ_STATS=0`` when a handle is bound
switches its statistics off.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Sequence
from enum import Enum
from functools import partial
from itertools import accumulate, chain
from typing import Any

import numpy as np

from fluxon_kernels import channel as kchan
from fluxon_kernels import codec as kcodec
from fluxon_kernels import status
from fluxon_kernels.layout import channel as cl

from . import codec
from .api_error import (
    OK_NONE,
    ApiError,
    ChanBindError,
    ChanCreateError,
    ChannelClosedError,
    ChanTypeMismatchError,
    EtcdError,
    InternalError,
    InvalidArgumentError,
    MessageConsumptionNoNewMessageError,
    MsgDeserializeError,
    ProducerClosedError,
    Result,
    StorageFullError,
    error_from_status,
)
from .channel_registry import ChannelDescriptor, ChannelRegistry, MemberRecord
from .futex import futex_wait, futex_wake, seq_expected
from .logging import init_logger
from .stats import new_handle_stats, release_stats_block

__all__ = [
    "ChanRole",
    "ChanType",
    "MPMCChanConsumer",
    "MPMCChanProducer",
    "MPSCChanConsumer",
    "MPSCChanProducer",
    "new_or_bind_with_unique_key",
]

_log = init_logger("fluxon.mq")

#: ``ttl_seconds`` when chan_config does not give one.
DEFAULT_TTL_SECONDS = 60
#: How long a blocked call keeps retrying before it sleeps on the futex (at least).
SPIN_S = 50e-6
SPIN_NS = int(SPIN_S * 1e9)
#: Longest spin of a consumer: it spins about two mean gaps between messages, up to
#: this, when they arrive at most this far apart (see ``_ChanConsumer._get_wait``).
SPIN_MAX_NS = 200_000
#: Gaps above this count as this in the consumer's mean gap (it recovers fast after idling).
GAP_CLAMP_NS = 1_000_000
#: A consumer that received nothing for this long sleeps without spinning first.
QUIET_NS = 10_000_000
#: Messages at least this large are decoded straight from the pool when their shape
#: allows it (no ndarray views): one copy of the payload instead of two.
DIRECT_DECODE_BYTES = 64 << 10
#: Messages up to this size are encoded into the producer's own buffer and copied into
#: the pool by the publishing kernel (one kernel call, one encode); larger ones are
#: encoded straight into their reserved pool block (no second copy).
STAGE_BYTES = 16 << 10
#: Batches of at least this many messages of one shape have their constant bytes
#: compared by one kernel call (``match_const_words``) instead of by each decode.
TRUSTED_BATCH = 4
#: Longest single futex sleep; a blocked call re-checks the owner this often (a safety
#: net: close and the store's owner watchdog wake it at once; deadlines are exact).
WAIT_SLICE_S = 5.0
_CONFIG_KEYS = ("capacity", "ttl_seconds", "weight", "payload_backend")
_OK_TRUE = Result.new_ok(True)
_OK_FALSE = Result.new_ok(False)
_OK_NONE = Result.new_ok(OK_NONE)
_perf_ns = time.perf_counter_ns
_yield = os.sched_yield
_prepare = codec.prepare
_write = codec.write
_encode_fast = codec.encode_fast
_decode_many = codec.decode_many
_decode_trusted = codec.decode_trusted
_last_decoder = codec.last_decoder
_decode_detached = codec.decode_detached
_SLOT_INLINE = cl.SLOT_INLINE
_INLINE_STRIDE = cl.INLINE_STRIDE
#: Status of a put attempt on a closed handle (not a kernel status).
_CLOSED = -1000
#: Status of a put attempt the codec's fast path could not take (not a kernel status).
_NOT_FAST = -1001


class ChanType(str, Enum):
    """Channel type: many producers and many consumers, or many producers and one consumer."""

    MPMC = "mpmc"
    MPSC = "mpsc"


class ChanRole(str, Enum):
    """Role of a handle on a channel."""

    PRODUCER = "producer"
    CONSUMER = "consumer"


def _fast(kernel: Any, *sample: Any) -> Any:
    """The compiled entry point of ``kernel`` for the types of ``sample``.

    Calling it skips Numba's per-call type dispatch (a few hundred ns per call on the
    hot path). Falls back to the dispatcher if Numba's internals differ.
    """
    try:
        sig = tuple(kernel.typeof_pyval(a) for a in sample)
        if sig not in kernel.overloads:
            kernel.compile(sig)
        entry = kernel.overloads[sig].entry_point
        if callable(entry):
            return entry
    except Exception:  # noqa: BLE001 - any Numba difference: use the public path
        pass
    return kernel


# --------------------------------------------------------------------------- handles
class _ChanEndpoint:
    """What producers and consumers share: binding, etcd bookkeeping, close, waiting."""

    _ROLE = ""

    def __init__(
        self,
        api: Any,
        registry: ChannelRegistry,
        desc: ChannelDescriptor,
        member_id: int,
        entry: int,
        weight: int | None,
    ) -> None:
        pool = api.pool
        self._api = api
        self._registry = registry
        self._desc = desc
        self._chan_id = desc.chan_id
        self._chan_id_str = str(desc.chan_id)
        self._member_id = member_id
        self._member_id_str = str(member_id)
        self._weight = weight
        self._b = pool.b
        self._w = pool.w
        self._c = desc.entry
        self._tag = api.member_slot() + 1
        self._entry = entry
        self._lock = threading.Lock()
        self._close_lock = threading.Lock()
        self._closed = False
        self._wait_end_ns = 0  # see _wait_for
        self._close_done = False
        base = int(pool.b.ctypes.data)
        self._data_addr = base + int(kchan.seq_byte_offset(pool.w, self._c, 0))
        self._space_addr = base + int(kchan.seq_byte_offset(pool.w, self._c, 1))
        w, c = pool.w, self._c
        self._wait_begin = partial(_fast(kchan.wait_begin, w, c, 0), w, c)
        self._wait_end = partial(_fast(kchan.wait_end, w, c, 0), w, c)
        self._chan_keepalive: Any = None
        self._member_lease: int | None = None
        self._member_keepalive: Any = None
        # Latency recorder (fluxon.stats; a null one under FLUXON_MQ_STATS=0) and the
        # stats block it publishes into (None: switched off or no pool room).
        self._stats, self._stats_block = new_handle_stats(
            pool, self._c, self._ROLE, entry, desc.chan_id, member_id, desc.unique_id, _log
        )

    # ------------------------------------------------------------- etcd side
    def _start_bookkeeping(self, record: MemberRecord) -> None:
        """Keep the channel lease alive, publish the member record under its own lease."""
        session = self._registry.session
        ttl = self._desc.ttl_seconds
        self._chan_keepalive = session.keepalive(
            self._desc.lease_id,
            max(0.2, ttl / 3.0),
            on_lost=self._on_chan_lease_lost,
            name=f"fluxon-chan-{self._chan_id}-lease",
        )
        lease = session.grant_lease(ttl)
        self._member_lease = int(getattr(lease, "id", lease))
        self._registry.put_member(record, self._member_lease)
        self._member_keepalive = session.keepalive(
            self._member_lease,
            max(0.2, ttl / 3.0),
            name=f"fluxon-chan-{self._chan_id}-member-{self._member_id}",
        )

    def _on_chan_lease_lost(self, lease_id: int) -> None:
        """The channel lease expired (etcd was unreachable for a whole TTL): publish again."""
        if self._closed:
            return
        try:
            new_lease = self._registry.republish(self._desc)
        except ApiError as exc:
            _log.error(
                "channel %s lost its etcd lease and could not be published again: %s "
                "(new binders of %r will not find it)",
                self._chan_id,
                exc,
                self._desc.unique_id,
            )
            return
        if new_lease is None:
            _log.error(
                "channel %s lost its etcd lease and unique key %r now names another channel",
                self._chan_id,
                self._desc.unique_id,
            )
            return
        self._desc.lease_id = new_lease
        if self._closed:
            return
        ttl = self._desc.ttl_seconds
        self._chan_keepalive = self._registry.session.keepalive(
            new_lease,
            max(0.2, ttl / 3.0),
            on_lost=self._on_chan_lease_lost,
            name=f"fluxon-chan-{self._chan_id}-lease",
        )
        _log.warning("channel %s published again under lease %x", self._chan_id, new_lease)

    # ------------------------------------------------------------- identity
    def get_chan_id(self) -> str:
        """The channel's cluster-wide id."""
        return self._chan_id_str

    def get_unique_id(self) -> str:
        """The unique key this handle was bound with."""
        return self._desc.unique_id

    def get_chan_type(self) -> ChanType:
        """The channel's type."""
        return ChanType(self._desc.type)

    def get_capacity(self) -> int:
        """The channel's capacity (the creator's)."""
        return self._desc.capacity

    def get_ttl_seconds(self) -> int:
        """The channel's TTL (the creator's)."""
        return self._desc.ttl_seconds

    def is_closed(self) -> bool:
        """Whether :meth:`close` was called (or the store was closed)."""
        return self._closed

    # ------------------------------------------------------------- close
    def _closed_error(self) -> Result:
        raise NotImplementedError

    def _release_entry(self) -> None:
        """Give back what this handle holds in the channel (called under ``_lock``)."""
        raise NotImplementedError

    def close(self) -> Result:
        """Close the handle: idempotent, thread-safe.

        Blocked ``put_data``/``get_data`` calls of this handle in other threads wake up
        and return ProducerClosedError / ChannelClosedError, as do later calls. A
        consumer gives its prefetched messages back to the channel; a producer's
        published messages stay deliverable. The member record is removed from etcd
        (if etcd is unreachable it expires with its lease).

        Returns
        -------
        Result[OkNone]
        """
        with self._close_lock:
            if self._close_done:
                return _OK_NONE
            self._closed = True
            try:
                kchan.wake_all(self._w, self._c)
                futex_wake(self._data_addr)
                futex_wake(self._space_addr)
                with self._lock:  # an in-flight kernel call finishes first
                    try:
                        self._stats.close()  # last summary into the block, then free it
                        release_stats_block(self._stats_block)
                    finally:
                        self._release_entry()  # the block goes while the entry is held
            finally:
                self._close_done = True
                self._stop_bookkeeping()
        return _OK_NONE

    def _stop_bookkeeping(self) -> None:
        for handle in (self._chan_keepalive, self._member_keepalive):
            if handle is not None:
                handle.stop(timeout=1.0)
        lease, self._member_lease = self._member_lease, None
        if lease is not None:
            session = self._registry.session
            try:
                session.revoke(lease)  # deletes the member record with it
            except ApiError as exc:
                _log.warning(
                    "%s %s of channel %s: could not remove its etcd record (it expires with "
                    "its lease): %s",
                    self._ROLE,
                    self._member_id,
                    self._chan_id,
                    exc,
                )

    def __enter__(self) -> _ChanEndpoint:  # noqa: PYI034 - typing.Self needs Python 3.11
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._closed else "open"
        return (
            f"{type(self).__name__}(chan_id={self._chan_id}, unique_id={self._desc.unique_id!r}, "
            f"{self._ROLE}_id={self._member_id}, {state})"
        )

    # ------------------------------------------------------------- waiting
    def _owner_gone(self) -> bool:
        return bool(getattr(self._api, "_owner_lost", False))

    def _owner_error(self) -> InternalError:
        return InternalError(
            f"the owner of channel {self._chan_id}'s pool is gone; create a new store and "
            "bind again",
            component="owner",
        )

    def _unusable(self) -> Result:
        """The error of a call on a closed handle, or on a pool whose owner died."""
        if self._closed:
            return self._closed_error()
        return Result.new_error(self._owner_error())

    @staticmethod
    def _deadline(try_time: Any, t0: int) -> int | None:
        """``perf_counter_ns`` deadline of ``try_time`` (``None``: no deadline)."""
        if try_time is None:
            return None
        if not isinstance(try_time, (int, float)) or isinstance(try_time, bool):
            raise InvalidArgumentError(
                f"try_time must be a number of seconds or None, got {type(try_time).__name__}",
                details={"field": "try_time"},
            )
        if try_time < 0:
            raise InvalidArgumentError(
                f"try_time must be >= 0, got {try_time}", details={"field": "try_time"}
            )
        return t0 + int(try_time * 1e9)

    def _wait_for(
        self, attempt: Callable[[], Any], space: int, deadline: int | None, spin_s: float
    ) -> Any:
        """Retry ``attempt`` until it returns something other than ``None``.

        The waiting strategy of both handles: spin (retry, yielding the CPU between
        tries) for ``spin_s`` seconds, then register as a waiter (``wait_begin``),
        re-check, and sleep on the channel's futex word (``DATA_SEQ`` for consumers,
        ``SPACE_SEQ`` for producers) in slices of at most :data:`WAIT_SLICE_S`. Returns
        ``None`` once ``deadline`` (perf_counter ns) passed. ``_wait_end_ns`` is then the
        clock read just before the last attempt (where the waiting ended, without the
        work of the attempt that succeeded).
        """
        now = _perf_ns()
        if deadline is not None and now >= deadline:
            self._wait_end_ns = now
            return None
        st = self._stats
        if now >= st.idle_due_ns:  # the recorder's periodic work, done while idle
            st.flush_waiting(now)
            now = _perf_ns()
        spin_end = now + int(spin_s * 1e9)
        while True:
            got = attempt()
            if got is not None:
                self._wait_end_ns = now
                return got
            # Spinning yields the CPU to whatever else is runnable on it (a producer, when
            # there are more processes than cores); alone on its CPU it returns at once.
            _yield()
            now = _perf_ns()
            if deadline is not None and now >= deadline:
                self._wait_end_ns = now
                return None
            if now >= spin_end:
                break
        addr = self._space_addr if space else self._data_addr
        wait_begin, wait_end = self._wait_begin, self._wait_end
        while True:
            seq = wait_begin(space)
            try:
                # Registered before this re-check: a change after it bumps the sequence
                # and the futex wait below returns at once (no lost wake-up).
                got = attempt()
                if got is not None:
                    self._wait_end_ns = now
                    return got
                if self._owner_gone():
                    raise self._owner_error()
                if deadline is None:
                    timeout = WAIT_SLICE_S
                else:
                    left = (deadline - _perf_ns()) / 1e9
                    if left <= 0:
                        self._wait_end_ns = deadline
                        return None
                    timeout = min(WAIT_SLICE_S, left)
                st.sleeps += 1
                futex_wait(addr, seq_expected(seq), timeout)
                now = _perf_ns()
                # Woken (or timed out): try at once, still registered -- the worst a
                # publisher sees meanwhile is one wake-up nobody needed.
                got = attempt()
                if got is not None:
                    self._wait_end_ns = now
                    return got
            finally:
                wait_end(space)


class _ChanProducer(_ChanEndpoint):
    """Producer handle (MPMC and MPSC share it)."""

    _ROLE = "producer"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._max_bytes = int(self._api.pool.max_value_bytes())
        self._stage_limit = min(STAGE_BYTES, self._max_bytes)
        self._scratch = np.zeros(max(self._stage_limit, cl.SLOT_INLINE), dtype=np.uint8)
        self._one_len = np.zeros(1, dtype=np.int64)
        b, w, c, e, tag = self._b, self._w, self._c, self._entry, self._tag
        scratch = self._scratch
        # Kernels bound to this handle's arguments: one C-level call each on the hot path.
        self._put_scratch = partial(
            _fast(kchan.prod_put, b, w, c, e, tag, scratch, 0), b, w, c, e, tag, scratch
        )
        self._put_many = partial(
            _fast(kchan.prod_put_many, b, w, c, e, tag, scratch, self._lens_sample(), 0),
            b, w, c, e, tag,
        )  # fmt: skip
        self._reserve = partial(_fast(kchan.prod_reserve, b, w, c, e, tag, 0), b, w, c, e, tag)
        self._payload_at = partial(_fast(kchan.slot_payload_offset, b, w, c, 0), b, w, c)
        self._publish = partial(_fast(kchan.prod_publish, b, w, c, e, tag, 0), b, w, c, e, tag)
        self._abort = partial(_fast(kchan.prod_abort, b, w, c, tag, 0), b, w, c, tag)
        self._batch_buf = np.zeros(0, dtype=np.uint8)
        self._batch_lens = np.zeros(0, dtype=np.int64)

    @staticmethod
    def _lens_sample() -> np.ndarray:
        return np.zeros(1, dtype=np.int64)

    def get_producer_id(self) -> str:
        """This producer's cluster-wide member id."""
        return self._member_id_str

    def _closed_error(self) -> Result:
        return Result.new_error(
            ProducerClosedError(
                f"producer {self._member_id} of channel {self._chan_id} is closed",
                channel_id=self._chan_id_str,
                producer_idx=self._member_id_str,
            )
        )

    def _release_entry(self) -> None:
        kchan.prod_detach(self._w, self._c, self._entry, self._tag)

    def _try_put(self, prepared: Any, n: int) -> int:
        """One publish attempt: 1 published, 0 no room now, -1 closed. Raises ApiError."""
        with self._lock:
            if self._closed:
                return -1
            if n <= cl.SLOT_INLINE:
                codec.write(prepared, self._scratch, 0)
                rc = self._put_scratch(n)
            else:
                rc = self._put_large(prepared, n)
        return self._publish_outcome(rc, n)

    def _publish_outcome(self, rc: int, n: int) -> int:
        """1 for a kernel's success (waking consumers if asked), 0 for no room; raises."""
        if rc >= 0:
            if rc == 1:
                futex_wake(self._data_addr)
            return 1
        if rc == status.FULL or rc == status.NO_MEMORY:
            return 0
        if rc == status.TOO_LARGE:
            raise InvalidArgumentError(
                f"message of {n} bytes can never fit in the pool of channel {self._chan_id}"
            )
        raise error_from_status(rc, f"publishing into channel {self._chan_id}")

    def _put_staged(self, n: int) -> int:
        """Publish the message of ``n`` bytes encoded in the scratch buffer, too large to
        sit inline, in a pool block: the kernel status (FULL for no slot or no room)."""
        self._one_len[0] = n
        rc = self._put_many(self._scratch, self._one_len, 1)
        return rc >> 32 if rc & 0xFFFFFFFF else status.FULL

    def _put_large(self, prepared: Any, n: int) -> int:
        s = self._reserve(n)
        if s < 0:
            return s
        try:
            codec.write(prepared, self._b, self._payload_at(s))
        except BaseException:
            if self._abort(s) == 1:
                futex_wake(self._space_addr)
            raise
        return self._publish(s)

    def _put_large_fast(self, value: dict, n: int) -> int:
        """Publish a message ``encode_fast`` sized at ``n`` bytes straight into the pool.

        Returns the kernel status, or :data:`_NOT_FAST` (slot given back) if the value no
        longer encodes to ``n`` bytes (another thread changed the dict meanwhile).
        """
        s = self._reserve(n)
        if s < 0:
            return s
        if _encode_fast(value, self._b, self._payload_at(s), n) != n:
            if self._abort(s) == 1:
                futex_wake(self._space_addr)
            return _NOT_FAST
        return self._publish(s)

    def put_data(self, value: dict, try_time: float | None = None) -> Result:
        """Send one message.

        Parameters
        ----------
        value : dict
            A FlatDict (str keys; int, float, bool, str, bytes, numpy arrays).
        try_time : float or None
            How long to wait for room when the channel holds ``capacity`` undelivered
            messages (or the pool is full): ``None`` until room or close, ``0`` no wait.

        Returns
        -------
        Result[bool]
            ``Ok(True)`` once published, ``Ok(False)`` if no room came within
            ``try_time``; ProducerClosedError after :meth:`close`; InvalidArgumentError
            (naming the field) for a value that is not a FlatDict or can never fit —
            nothing is written then.
        """
        # Statistics time one call in ``st.every`` (all of them unless calls come fast,
        # see fluxon.stats); the countdown says whether this one is timed, and ``w`` is
        # how many calls its times stand for (0: untimed, no clock read).
        st = self._stats
        k = st.skip - 1
        st.skip = k
        if k:
            w = t0 = 0
        else:
            w = st.every
            t0 = _perf_ns()
        if self._closed or self._api._owner_lost:
            st.skip += 1  # not counted
            return self._unusable()
        # Fast path: a message of a shape seen before, encoded straight into the scratch
        # buffer (or, larger than STAGE_BYTES, into a reserved pool block) and published.
        lock = self._lock
        lock.acquire()
        try:
            if self._closed:
                rc = _CLOSED
            else:
                n = _encode_fast(value, self._scratch, 0, self._stage_limit)
                if n is None:
                    rc = _NOT_FAST
                elif n > 0:
                    rc = self._put_scratch(n) if n <= _SLOT_INLINE else self._put_staged(n)
                elif -n <= self._max_bytes:
                    rc = self._put_large_fast(value, -n)
                else:
                    rc = _NOT_FAST
        finally:
            lock.release()
        if rc >= 0:
            if rc:
                futex_wake(self._data_addr)  # consumers sleep: wake them
            if w:
                now = _perf_ns()
                st.record_put_sampled(now - t0, True, now)
            return _OK_TRUE
        got = -1
        if rc != _CLOSED:
            try:
                if not t0:
                    t0 = _perf_ns()
                sleeps = st.sleeps
                got = self._put_slow(value, try_time, t0, w)
                if got == 0 or st.sleeps != sleeps:
                    w = -1  # slept or timed out: recorded on its own (tails stay exact)
            except ApiError as err:
                st.skip += 1
                return Result.new_error(err)
        if got < 0:
            st.skip += 1
            return self._closed_error()
        if w:
            now = _perf_ns()
            if w < 0:
                st.skip += 1
                st.record_put(now - t0, got == 1, now)
            else:
                st.record_put_sampled(now - t0, got == 1, now)
        return _OK_TRUE if got == 1 else _OK_FALSE

    def _put_slow(self, value: Any, try_time: float | None, t0: int, w: int) -> int:
        """Everything but a fast-path publish that went through at once: 1 published,
        0 no room within ``try_time``, -1 closed; raises ApiError. ``w``: see put_data."""
        prepared = _prepare(value)
        n = prepared.size
        if n > self._max_bytes:
            raise InvalidArgumentError(
                f"message encodes to {n} bytes; the pool can hold at most {self._max_bytes}",
                details={"size": n},
            )
        got = self._try_put(prepared, n)
        if got:
            return got
        deadline = self._deadline(try_time, t0)
        st = self._stats
        sleeps = st.sleeps

        def attempt() -> int | None:
            return self._try_put(prepared, n) or None

        w0 = _perf_ns()
        got = self._wait_for(attempt, 1, deadline, SPIN_S)
        st.waits += 1  # (counted after a flush the wait may start with: in the call's window)
        # Waiting time: exact for a wait that slept or timed out (recorded on its own),
        # sampled (w times one timed call's) for a wait that only spun.
        if got is None or st.sleeps != sleeps:
            st.wait_ns += self._wait_end_ns - w0
        elif w:
            st.wait_ns += (self._wait_end_ns - w0) * w
        return 0 if got is None else got

    def put_data_many(self, values: Sequence[dict], try_time: float | None = None) -> Result:
        """Send several messages, in order, publishing runs of them in one kernel call.

        An extension for producers that have many messages at hand (the native batch of
        :func:`fluxon_kernels.channel.prod_put_many`); each message is delivered exactly as
        if sent by :meth:`put_data`, in list order.

        Parameters
        ----------
        values : sequence of dict
            The FlatDicts. All are validated before anything is published.
        try_time : float or None
            How long, in total, to wait for room while the channel is full: ``None`` until
            everything is published or the handle is closed, ``0`` no wait.

        Returns
        -------
        Result[int]
            ``Ok(n)``: the first ``n`` messages were published (``len(values)`` unless no
            room came within ``try_time``, or the handle was closed after some were
            published); InvalidArgumentError naming the index and field of a bad value
            (nothing published); ProducerClosedError if the handle is closed before any
            was published.
        """
        t0 = _perf_ns()
        if self._closed or self._api._owner_lost:
            return self._unusable()
        try:
            plan = self._encode_many(values)
        except ApiError as err:
            return Result.new_error(err)
        total = plan[4]
        done = 0
        deadline = -1  # not computed yet
        st = self._stats
        try:
            while done < total:
                got = self._put_many_attempt(plan, done)
                if got is None:
                    if deadline == -1:
                        deadline = self._deadline(try_time, t0)
                        st.waits += 1  # one waiting call, however many times it waits
                    w0 = _perf_ns()
                    try:
                        got = self._wait_for(
                            lambda: self._put_many_attempt(plan, done), 1, deadline, SPIN_S
                        )
                    finally:
                        st.wait_ns += _perf_ns() - w0
                    if got is None:
                        break
                if got < 0:
                    if not done:
                        return self._closed_error()
                    break
                done += got
        except ApiError as err:
            return Result.new_error(err)
        now = _perf_ns()
        st.record_put_many(now - t0, done, done == total, now)
        return Result.new_ok(done)

    def _encode_many(self, values: Sequence[dict]) -> tuple:
        """Encode every message (those up to :data:`STAGE_BYTES` end to end in one
        buffer); raises on a bad one.

        Returns ``(buf, lens, items, starts, count)``: message ``i`` has length
        ``lens[i]``; ``items`` and ``starts`` are None when all ``count`` messages are
        encoded in ``buf``, end to end; else message ``i`` starts at ``starts[i]`` and
        ``items[i]`` is None for one encoded in ``buf``, a :class:`_Direct` for a larger
        one of a known shape (encoded straight into its pool block when published), or
        its Prepared.
        """
        if isinstance(values, dict) or not hasattr(values, "__len__"):
            raise InvalidArgumentError(
                f"values must be a sequence of FlatDicts, got {type(values).__name__}",
                details={"field": "values"},
            )
        count = len(values)
        if self._batch_lens.shape[0] < count:
            self._batch_lens = np.zeros(max(64, count), dtype=np.int64)
        limit = self._stage_limit
        if self._batch_buf.shape[0] < count * _SLOT_INLINE + limit:
            self._batch_buf = np.zeros(max(64, count) * _SLOT_INLINE + limit, dtype=np.uint8)
        buf = self._batch_buf
        high = buf.shape[0] - limit  # while pos <= high, a message of limit bytes fits
        lens: list = []
        append = lens.append
        pos = 0
        declined = it = iter(values)  # (it: nothing declined)
        # Messages the codec's fast path writes into buf, end to end (nearly always all).
        for value in it:
            n = _encode_fast(value, buf, pos, limit)
            if n is None or n < 0:
                declined = value
                break
            append(n)
            pos += n
            if pos > high:  # room for one more message of limit bytes
                buf, high = self._grow_batch_buf(pos)
        items = starts = None
        if declined is not it:  # the others, from the first one the fast path declined
            starts = list(accumulate(lens, initial=0))[:-1]
            items = [None] * len(lens)
            for i, value in enumerate(chain((declined,), it), len(lens)):
                n = _encode_fast(value, buf, pos, limit)
                if n is None or n < 0:
                    n = self._encode_other(i, value, n, buf, pos, items)
                else:
                    items.append(None)
                lens.append(n)
                starts.append(pos)
                if items[-1] is None:
                    pos += n
                    if pos > high:
                        buf, high = self._grow_batch_buf(pos)
        lens_arr = self._batch_lens
        lens_arr[:count] = lens
        return buf, lens_arr, items, starts, count

    def _grow_batch_buf(self, used: int) -> tuple:
        """Double the batch buffer, keeping its first ``used`` bytes: ``(buf, high)``."""
        old = self._batch_buf
        limit = self._stage_limit
        buf = self._batch_buf = np.zeros(2 * old.shape[0] + limit, dtype=np.uint8)
        buf[:used] = old[:used]
        return buf, buf.shape[0] - limit

    def _encode_other(
        self, i: int, value: Any, n: int | None, buf: Any, pos: int, items: list
    ) -> int:
        """Message ``i`` that the codec's fast path did not write into ``buf`` at ``pos``:
        appends its item (see :meth:`_encode_many`) and returns its encoded size."""
        if n is not None and 0 < -n <= self._max_bytes:
            items.append(_Direct(value))
            return -n
        try:
            prepared = _prepare(value)
        except InvalidArgumentError as exc:
            raise InvalidArgumentError(
                f"values[{i}]: {exc.message}", details={**exc.details, "index": i}
            ) from None
        n = prepared.size
        if n > self._max_bytes:
            raise InvalidArgumentError(
                f"values[{i}] encodes to {n} bytes; the pool can hold at most {self._max_bytes}",
                details={"size": n, "index": i},
            )
        if n <= self._stage_limit:
            _write(prepared, buf, pos)
            prepared = None
        items.append(prepared)
        return n

    def _put_many_attempt(self, plan: tuple, first: int) -> int | None:
        """Publish from message ``first`` on: how many went out, None (no room), -1 closed."""
        buf, lens, items, starts, count = plan
        if items is None:  # every message in buf, end to end: the rest in one kernel call
            last = count
            start = int(lens[:first].sum()) if first else 0
        else:
            start = starts[first]
            item = items[first]
            if item is not None:
                return self._put_one_of_many(plan, first, item)
            last = first + 1
            while last < count and items[last] is None:
                last += 1
        with self._lock:
            if self._closed:
                return -1
            rc = self._put_many(buf[start:], lens[first:last], last - first)
        if rc >> 32:
            futex_wake(self._data_addr)
        rc &= 0xFFFFFFFF
        return rc if rc else None

    def _put_one_of_many(self, plan: tuple, first: int, item: Any) -> int | None:
        """Publish message ``first`` of a batch, one not encoded in the batch's buffer."""
        lens, items = plan[1], plan[2]
        if item.__class__ is _Direct:  # a large message of a known shape: on its own
            n = int(lens[first])
            with self._lock:
                if self._closed:
                    return -1
                rc = self._put_large_fast(item.value, n)
            if rc == _NOT_FAST:  # the dict changed meanwhile: the general path
                items[first] = item = _prepare(item.value)
                lens[first] = item.size
            else:
                return self._publish_outcome(rc, n) or None
        got = self._try_put(item, int(lens[first]))  # a large message: on its own
        return got if got else None


class _Direct:
    """A message of ``put_data_many`` encoded straight into its pool block (see
    :meth:`_ChanProducer._put_large_fast`)."""

    __slots__ = ("value",)

    def __init__(self, value: dict) -> None:
        self.value = value


class _ChanConsumer(_ChanEndpoint):
    """Consumer handle (MPMC and MPSC share it)."""

    _ROLE = "consumer"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._swrr = np.zeros(cl.MAX_PRODUCERS, dtype=np.int64)
        self._claimed = np.zeros(64, dtype=np.int64)  # prefetched slots at [_pf_start, _pf_end)
        self._pf_start = 0
        self._pf_end = 0
        self._lens = np.zeros(64, dtype=np.int64)
        self._offs = np.zeros(64, dtype=np.int64)
        self._offs_stride = 0  # _offs[:_offs_count] hold i * _offs_stride (0: unknown)
        self._offs_count = 0
        b, w, c, tag = self._b, self._w, self._c, self._tag
        # Kernels bound to this handle's arguments: one C-level call each on the hot path.
        claimed = self._claimed
        self._k_claim = partial(
            _fast(kchan.cons_claim, b, w, c, tag, self._swrr, claimed, 0), b, w, c, tag, self._swrr
        )
        self._k_lengths = partial(
            _fast(kchan.cons_lengths, b, w, c, claimed, 0, self._lens), b, w, c
        )
        self._k_copy = partial(_fast(kchan.cons_copy, b, w, c, claimed, 0, b, self._offs), b, w, c)
        self._k_copy_inline = partial(
            _fast(kchan.cons_copy_inline, b, w, c, claimed, 0, b, self._lens), b, w, c
        )
        self._inline_first = True  # last messages sat inline: try cons_copy_inline first
        self._k_complete = partial(
            _fast(kchan.cons_complete, b, w, c, tag, claimed, 0), b, w, c, tag
        )
        self._payload_at = partial(_fast(kchan.slot_payload_offset, b, w, c, 0), b, w, c)
        self._zero_offset = np.zeros(1, dtype=np.int64)
        words = np.zeros((3, 1), dtype=np.uint64)
        self._k_match = _fast(kcodec.match_const_words, b, 8, 0, self._lens, 0, words)
        # Adaptive spin: mean gap between message arrivals (ns) and the last arrival.
        self._gap_ns = GAP_CLAMP_NS
        self._last_arrival_ns = 0

    def get_consumer_id(self) -> str:
        """This consumer's cluster-wide member id."""
        return self._member_id_str

    def prefetched(self) -> int:
        """How many claimed messages wait in this handle for the next ``get_data``."""
        return self._pf_end - self._pf_start

    def _closed_error(self) -> Result:
        return Result.new_error(
            ChannelClosedError(
                f"consumer {self._member_id} of channel {self._chan_id} is closed",
                channel_id=self._chan_id_str,
            )
        )

    def _release_entry(self) -> None:
        n = self._pf_end - self._pf_start
        if n:
            slots = self._claimed[self._pf_start : self._pf_end].copy()
            self._pf_start = self._pf_end = 0
            if kchan.cons_return(self._b, self._w, self._c, self._tag, slots, n):
                futex_wake(self._data_addr)
        kchan.cons_detach(self._w, self._c, self._entry, self._tag)

    def _try_get(self, batch_size: int, want: int, w: int) -> list | bool | None:
        """Claim (topping the handle up to ``want``) and deliver up to ``batch_size``.

        Returns the decoded messages, ``None`` if nothing is available, ``False`` if the
        handle is closed. ``w`` > 0: a timed call standing for ``w`` calls, whose
        breakdown (claim, copy-out, decode) is measured and counted ``w`` times.
        """
        with self._lock:
            if self._closed:
                return False
            start, end = self._pf_start, self._pf_end
            have = end - start
            held = have  # claimed by earlier calls: handed out first
            t = got = 0  # t: when the claim below returned (the copy-out starts there)
            claiming = have < want
            if claiming:
                arr = self._claimed
                if start:
                    if have:
                        arr[:have] = arr[start:end]
                    start, end = 0, have
                    self._pf_start = 0
                if arr.shape[0] < want:
                    grown = np.zeros(max(want, 2 * arr.shape[0]), dtype=np.int64)
                    grown[:have] = arr[:have]
                    self._claimed = arr = grown
                if w:
                    tc = _perf_ns()
                got = self._k_claim(arr[end:] if end else arr, want - have)
                if w:
                    t = _perf_ns()
                end += got
                self._pf_end = end
                have = end - start
            if not have:
                return None  # an empty claim is part of waiting, not kernel time
            k = batch_size if batch_size < have else have
            st = self._stats
            if claiming:
                st.claim_calls += 1
                st.claimed += got
            if held:
                st.prefetch_hits += held if held < k else k
            if w:
                if claiming:
                    st.claim_ns += (t - tc) * w
                    st.kernel_ns += (t - tc) * w
                else:
                    t = _perf_ns()
                st.prefetch_queue = have - k
                st.prefetch_target = want
            return self._take(start, k, t, w)

    def _take(self, start: int, k: int, t: int, w: int) -> list:
        """Copy out and decode ``k`` claimed slots from ``start``, then complete them.

        ``t`` (perf_counter ns) is when the copy-out started (``w``: see :meth:`_try_get`;
        0 measures nothing). Completing last keeps the
        messages claimed (so redelivered if this process is killed) until they are
        decoded and about to be returned to the caller.
        """
        slots = self._claimed[start : start + k] if start else self._claimed
        if self._lens.shape[0] < k:
            self._lens = np.zeros(2 * k, dtype=np.int64)
            self._offs = np.zeros(2 * k, dtype=np.int64)
            self._offs_stride = 0
        lens_arr = self._lens
        # Each message 8-aligned in one private buffer (its arrays are views of it):
        # messages that sit inline in their slots are copied at a fixed spacing in one
        # kernel call; others are measured first.
        if self._inline_first:
            pos = k * _INLINE_STRIDE
            buf = np.empty(pos, dtype=np.uint8)
            size = self._k_copy_inline(slots, k, buf, lens_arr)
            if size >= 0:
                lens = [size] if k == 1 else lens_arr[:k].tolist()
                offs = range(0, pos, _INLINE_STRIDE)
            else:
                self._inline_first = False
        if not self._inline_first:
            self._k_lengths(slots, k, lens_arr)
            lens = lens_arr[:k].tolist()
            if min(lens) >= DIRECT_DECODE_BYTES:
                buf = None  # decoded from the pool: the copy-out counts as decoding
            else:
                buf, offs = self._copy_measured(slots, k, lens)
                self._inline_first = max(lens) <= _SLOT_INLINE
        if w:
            t1 = t if buf is None else _perf_ns()
        if buf is None:
            out = self._decode_large(slots, k, lens)
        else:
            out = self._decode_one_shape(buf, offs, lens, lens_arr) if k >= TRUSTED_BATCH else None
            if out is None:
                try:
                    out = _decode_many(buf, offs, lens)
                except MsgDeserializeError:
                    out = self._decode_each(buf, offs, lens)
        t2 = _perf_ns()
        self._pf_start = start + k
        if self._k_complete(slots, k):
            futex_wake(self._space_addr)
        if w:
            st = self._stats
            dt = ((t1 - t) + (_perf_ns() - t2)) * w
            st.take_ns += dt
            st.kernel_ns += dt
            st.codec_ns += (t2 - t1) * w
        self._note_arrivals(t2, k)
        return out

    def _decode_one_shape(
        self, buf: np.ndarray, offs: Any, lens: list, lens_arr: np.ndarray
    ) -> list | None:
        """Decode a batch copied into ``buf`` at a fixed stride if every message has the
        shape of the decoder that matched last (its constant bytes compared by one kernel
        call); None otherwise (then ``decode_many``)."""
        if offs.__class__ is not range:
            return None
        dec = _last_decoder()
        k = len(lens)
        if (
            dec is None
            or self._k_match(buf, offs.step, k, lens_arr, dec.fixed, dec.const_words) != k
        ):
            return None
        return _decode_trusted(dec, buf, offs, lens)

    def _copy_measured(self, slots: np.ndarray, k: int, lens: list) -> tuple:
        """Copy ``k`` claimed messages of lengths ``lens`` into a new buffer, each
        8-aligned; returns ``(buffer, offsets)``. Equal lengths give offsets
        i * stride; ``_offs`` keeps them from one call to the next (``_offs_stride``,
        ``_offs_count`` say which are valid)."""
        offs_arr = self._offs
        ln = lens[0]
        if k == 1 or lens.count(ln) == k:
            stride = (ln + 7) & ~7
            pos = k * stride
            offs = range(0, pos, stride)
            if stride != self._offs_stride or k > self._offs_count:
                offs_arr[:k] = offs
                self._offs_stride = stride
                self._offs_count = k
        else:
            offs = []
            pos = 0
            for ln in lens:
                offs.append(pos)
                pos += (ln + 7) & ~7
            offs_arr[:k] = offs
            self._offs_stride = 0
        buf = np.empty(pos, dtype=np.uint8)
        self._k_copy(slots, k, buf, offs_arr)
        return buf, offs

    def _decode_large(self, slots: np.ndarray, k: int, lens: list) -> list:
        """Decode large claimed messages with one copy each instead of two when possible.

        A message whose shape decodes without ndarray views (``codec.decode_detached``)
        is decoded straight from its pool block (its bytes/str values are copied out
        there); any other is copied into a private buffer first, as in :meth:`_take`.
        """
        pool_mv = memoryview(self._b)
        out = []
        for i in range(k):
            ln = lens[i]
            msg = _decode_detached(pool_mv, self._payload_at(int(slots[i])), ln)
            if msg is None:
                buf = np.empty(ln, dtype=np.uint8)
                self._k_copy(slots[i : i + 1], 1, buf, self._zero_offset)
                got = self._decode_each(buf, [0], [ln])
                if not got:
                    continue
                msg = got[0]
            out.append(msg)
        return out

    def _note_arrivals(self, now: int, k: int) -> None:
        """Adaptive spin: fold ``k`` messages delivered at ``now`` into the mean gap."""
        last = self._last_arrival_ns
        self._last_arrival_ns = now
        if last:
            gap = (now - last) // k
            self._gap_ns += ((gap if gap < GAP_CLAMP_NS else GAP_CLAMP_NS) - self._gap_ns) >> 3

    def _decode_each(self, buf: np.ndarray, offs: list, lens: list) -> list:
        out = []
        for o, ln in zip(offs, lens):
            try:
                out.append(codec.decode(buf[o : o + ln]))
            except MsgDeserializeError as exc:
                _log.error(
                    "channel %s: dropping a message that does not decode (%d bytes): %s",
                    self._chan_id,
                    ln,
                    exc,
                )
        return out

    def get_data(
        self, batch_size: int = 1, try_time: float | None = None, prefetch_num: int = 0
    ) -> Result:
        """Receive 1..``batch_size`` messages.

        Parameters
        ----------
        batch_size : int
            Most messages to return; whatever is available right away (at least one)
            is returned without waiting for a full batch.
        try_time : float or None
            How long to wait for the first message: ``None`` until a message arrives or
            the handle is closed, ``0`` no wait, else seconds.
        prefetch_num : int
            Up to this many extra messages are claimed into the handle and returned first
            by the next call; :meth:`close` gives them back to the channel (and if the
            process dies, the owner does).

        Returns
        -------
        Result[list[dict]]
            The messages (FlatDicts; arrays are views of a buffer private to this
            call), MessageConsumptionNoNewMessageError if none came within ``try_time``,
            ChannelClosedError after :meth:`close`.
        """
        # Statistics time one call in ``st.every`` (see put_data).
        st = self._stats
        k = st.skip - 1
        st.skip = k
        if k:
            w = t0 = 0
        else:
            w = st.every
            t0 = _perf_ns()
        if self._closed or self._api._owner_lost:
            st.skip += 1  # not counted
            return self._unusable()
        if (
            type(batch_size) is not int
            or batch_size < 1
            or type(prefetch_num) is not int
            or (prefetch_num < 0)
        ):
            st.skip += 1
            return Result.new_error(self._bad_args(batch_size, prefetch_num))
        want = batch_size + prefetch_num
        try:
            got = self._try_get(batch_size, want, w)
            if got is None:
                if not t0:
                    t0 = _perf_ns()
                sleeps = st.sleeps
                got = self._get_wait(batch_size, want, try_time, t0, w)
                if got is None or st.sleeps != sleeps:
                    w = -1  # slept or timed out: recorded on its own (tails stay exact)
        except ApiError as err:
            st.skip += 1
            return Result.new_error(err)
        if got is False:
            st.skip += 1
            return self._closed_error()
        n = 0 if got is None else len(got)  # (empty only if nothing decoded)
        if w:
            now = _perf_ns()
            if w < 0:
                st.skip += 1
                st.record_get(now - t0, n, now)
            else:
                st.record_get_sampled(now - t0, n, now)
        else:
            st.messages += n
        if got is not None:
            return Result.new_ok(got)
        return Result.new_error(
            MessageConsumptionNoNewMessageError(
                f"no message on channel {self._chan_id} within try_time={try_time} s",
                channel_id=self._chan_id_str,
            )
        )

    @staticmethod
    def _bad_args(batch_size: Any, prefetch_num: Any) -> InvalidArgumentError:
        if type(batch_size) is not int or batch_size < 1:
            return InvalidArgumentError(
                f"batch_size must be an int >= 1, got {batch_size!r}",
                details={"field": "batch_size"},
            )
        return InvalidArgumentError(
            f"prefetch_num must be an int >= 0, got {prefetch_num!r}",
            details={"field": "prefetch_num"},
        )

    def _get_wait(
        self, batch_size: int, want: int, try_time: float | None, t0: int, w: int
    ) -> list | bool | None:
        """Wait for the first message; returns the messages, None (timeout) or False.

        The waiting time (up to the attempt that found messages, whose claim, copy-out
        and decoding count as such) is added exactly for a wait that slept or timed out
        (the call is recorded on its own), ``w`` times for a timed call that only spun.
        """
        deadline = self._deadline(try_time, t0)
        st = self._stats
        sleeps = st.sleeps
        # Spin about two mean gaps when messages come often enough for that to pay
        # (a futex wake-up costs tens of microseconds); else only briefly, and not at
        # all when nothing came lately (a poll with a short try_time on a quiet channel).
        gap = self._gap_ns
        if t0 - self._last_arrival_ns > QUIET_NS:
            spin_ns = 0
        elif gap > SPIN_MAX_NS:
            spin_ns = SPIN_NS
        else:
            spin_ns = min(SPIN_MAX_NS, max(SPIN_NS, 2 * gap))
        if w > 1:
            busy = (st.kernel_ns, st.codec_ns, st.claim_ns, st.take_ns)
        got = self._wait_for(lambda: self._try_get(batch_size, want, w), 0, deadline, spin_ns / 1e9)
        st.waits += 1  # (counted after a flush the wait may start with: in the call's window)
        if got is None or st.sleeps != sleeps:
            st.wait_ns += self._wait_end_ns - t0
            if w > 1:  # recorded on its own: its breakdown counts once, not w times
                st.kernel_ns, st.codec_ns, st.claim_ns, st.take_ns = (
                    b + (a - b) // w
                    for a, b in zip((st.kernel_ns, st.codec_ns, st.claim_ns, st.take_ns), busy)
                )
        elif w:
            st.wait_ns += (self._wait_end_ns - t0) * w
        return got


class MPMCChanProducer(_ChanProducer):
    """Producer of an MPMC channel (see :func:`new_or_bind_with_unique_key`)."""


class MPSCChanProducer(_ChanProducer):
    """Producer of an MPSC channel (see :func:`new_or_bind_with_unique_key`)."""


class MPMCChanConsumer(_ChanConsumer):
    """Consumer of an MPMC channel (see :func:`new_or_bind_with_unique_key`)."""


class MPSCChanConsumer(_ChanConsumer):
    """The single consumer of an MPSC channel (see :func:`new_or_bind_with_unique_key`)."""


_HANDLE_CLASSES = {
    (ChanType.MPMC, ChanRole.PRODUCER): MPMCChanProducer,
    (ChanType.MPMC, ChanRole.CONSUMER): MPMCChanConsumer,
    (ChanType.MPSC, ChanRole.PRODUCER): MPSCChanProducer,
    (ChanType.MPSC, ChanRole.CONSUMER): MPSCChanConsumer,
}


# --------------------------------------------------------------------------- binding
def _parse_enum(enum: type[Enum], value: Any, what: str) -> Any:
    if isinstance(value, enum):
        return value
    if isinstance(value, str):
        try:
            return enum(value.lower())
        except ValueError:
            pass
    names = " or ".join(f"{enum.__name__}.{m.name}" for m in enum)  # type: ignore[attr-defined]
    raise ChanBindError(f"{what} must be {names}, got {value!r}")


def _int_field(config: dict, key: str, minimum: int, maximum: int | None = None) -> int | None:
    if key not in config:
        return None
    value = config[key]
    if type(value) is not int and not isinstance(value, np.integer):
        raise InvalidArgumentError(
            f"chan_config[{key!r}] must be an int, got {type(value).__name__} ({value!r})",
            details={"field": key},
        )
    value = int(value)
    if value < minimum or (maximum is not None and value > maximum):
        bound = f">= {minimum}" if maximum is None else f"in {minimum}..{maximum}"
        raise InvalidArgumentError(
            f"chan_config[{key!r}] must be {bound}, got {value}", details={"field": key}
        )
    return value


def _parse_config(chan_config: Any, role: ChanRole) -> tuple[int | None, int | None, int | None]:
    """Validate chan_config; returns (capacity, ttl_seconds, weight) as given (None = absent)."""
    if chan_config is None:
        chan_config = {}
    if not isinstance(chan_config, dict):
        raise InvalidArgumentError(
            f"chan_config must be a dict, got {type(chan_config).__name__}",
            details={"field": "chan_config"},
        )
    for key in chan_config:
        if key not in _CONFIG_KEYS:
            raise InvalidArgumentError(
                f"unknown chan_config key {key!r}; known keys: {', '.join(_CONFIG_KEYS)}",
                details={"field": key},
            )
    capacity = _int_field(chan_config, "capacity", 1, cl.MAX_CAPACITY)
    ttl = _int_field(chan_config, "ttl_seconds", 1)
    weight = _int_field(chan_config, "weight", 1)
    if weight is not None and role is ChanRole.CONSUMER:
        _log.warning("chan_config['weight'] applies to producers; a consumer ignores it")
        weight = None
    if "payload_backend" in chan_config:
        _log.debug(
            "chan_config['payload_backend']=%r ignored: payloads always live in the pool",
            chan_config["payload_backend"],
        )
    return capacity, ttl, weight


def _bind(
    api: Any,
    chan_config: Any,
    unique_id: Any,
    chan_type: Any,
    chan_role: Any,
) -> _ChanEndpoint:
    ctype = _parse_enum(ChanType, chan_type, "chan_type")
    role = _parse_enum(ChanRole, chan_role, "chan_role")
    if not isinstance(unique_id, str) or not unique_id:
        raise InvalidArgumentError(
            f"unique_id must be a non-empty str, got {unique_id!r}", details={"field": "unique_id"}
        )
    capacity, ttl, weight = _parse_config(chan_config, role)
    for attr in ("pool", "member_slot", "register_child_close"):
        if not hasattr(api, attr):
            raise InvalidArgumentError(
                f"api must be the store returned by new_store(), got {type(api).__name__}",
                details={"field": "api"},
            )
    if api.is_closed():
        raise ChanBindError(f"cannot bind unique key {unique_id!r}: the store is closed")
    session = getattr(api, "_etcd", None)
    if session is None:
        raise ChanBindError("the store has no etcd session (channels need the control plane)")
    pool = api.pool
    tag = api.member_slot() + 1
    instance_key = api.instance_key().unwrap()
    registry = ChannelRegistry(session, api.get_cluster_name().unwrap())

    for _attempt in range(4):
        desc, created = registry.bind_or_create(
            pool, unique_id, ctype.value, capacity, ttl or DEFAULT_TTL_SECONDS, tag, instance_key
        )
        if not created:
            if desc.type != ctype.value:
                raise ChanTypeMismatchError(
                    f"key {unique_id!r} is bound to an {desc.type.upper()} channel "
                    f"(chan_id {desc.chan_id}), asked for {ctype.value.upper()}",
                    chan_id=str(desc.chan_id),
                    expected_type=ctype.value,
                    actual_type=desc.type,
                )
            if desc.owner_id != pool.owner_id:
                raise ChanBindError(
                    f"channel {desc.chan_id} of key {unique_id!r} lives in the pool of owner "
                    f"{desc.owner_id!r}; this store is attached to {pool.owner_id!r} "
                    "(cross-node channels are not supported yet)"
                )
            for key, asked, stored in (
                ("capacity", capacity, desc.capacity),
                ("ttl_seconds", ttl, desc.ttl_seconds),
            ):
                if asked is not None and asked != stored:
                    _log.warning(
                        "unique key %r: chan_config[%r]=%s differs from the channel's %s "
                        "(set by its creator); using %s",
                        unique_id,
                        key,
                        asked,
                        stored,
                        stored,
                    )
        try:
            member_id = registry.new_member_id()
        except EtcdError as exc:
            raise ChanBindError(f"binding unique key {unique_id!r}: etcd failed: {exc.message}")
        c = desc.entry
        if role is ChanRole.PRODUCER:
            entry = int(kchan.prod_attach(pool.b, pool.w, c, tag, weight or 1, member_id))
        else:
            exclusive = 1 if ctype is ChanType.MPSC else 0
            entry = int(kchan.cons_attach(pool.w, c, tag, member_id, exclusive))
        if entry < 0:
            if entry == status.FULL:
                raise ChanBindError(
                    f"MPSC channel {desc.chan_id} (key {unique_id!r}) already has a live "
                    "consumer; an MPSC channel has at most one"
                )
            if entry == status.NO_SLOT:
                limit = cl.MAX_PRODUCERS if role is ChanRole.PRODUCER else cl.MAX_CONSUMERS
                raise ChanBindError(
                    f"channel {desc.chan_id} (key {unique_id!r}) already has {limit} "
                    f"{role.value}s attached"
                )
            if entry == status.NO_MEMORY:
                raise StorageFullError(
                    f"no pool memory for a producer ring of channel {desc.chan_id} "
                    f"({desc.capacity * 8} bytes)"
                )
            raise error_from_status(entry, f"attaching to channel {desc.chan_id}")
        if not kchan.chan_is_active(pool.w, c, desc.chan_id):
            # The channel expired and was reclaimed between lookup and attach: retry.
            _detach(pool, c, role, entry, tag)
            continue
        cls = _HANDLE_CLASSES[(ChanType(desc.type), role)]
        handle = cls(
            api, registry, desc, member_id, entry, weight if role is ChanRole.PRODUCER else None
        )
        record = MemberRecord(
            role=role.value,
            member_id=member_id,
            chan_id=desc.chan_id,
            chan_type=desc.type,
            unique_id=unique_id,
            entry=entry,
            instance_key=instance_key,
            owner_id=pool.owner_id,
            weight=(weight or 1) if role is ChanRole.PRODUCER else None,
        )
        try:
            handle._start_bookkeeping(record)
        except ApiError as exc:
            handle.close()
            raise ChanBindError(
                f"binding unique key {unique_id!r}: could not register the {role.value} in "
                f"etcd: {getattr(exc, 'message', exc)}"
            ) from exc
        api.register_child_close(handle.close)
        _log.debug(
            "%s %s %s of channel %s (key %r, entry %d)",
            "created and bound" if created else "bound",
            ctype.value,
            role.value,
            desc.chan_id,
            unique_id,
            c,
        )
        return handle
    raise ChanBindError(f"unique key {unique_id!r}: the channel kept disappearing while binding")


def _detach(pool: Any, c: int, role: ChanRole, entry: int, tag: int) -> None:
    if role is ChanRole.PRODUCER:
        kchan.prod_detach(pool.w, c, entry, tag)
    else:
        kchan.cons_detach(pool.w, c, entry, tag)


def new_or_bind_with_unique_key(
    api: Any,
    chan_config: dict | None,
    unique_id: str,
    chan_type: ChanType | str,
    chan_role: ChanRole | str,
) -> Result:
    """Bind a producer or consumer to the channel named ``unique_id``, creating it if absent.

    Many processes may call this for a new key at once: they all end up on ONE channel.

    Parameters
    ----------
    api : KvClient
        The store (from :func:`fluxon.kvclient.new_store`); ``store.close()`` closes
        handles left open.
    chan_config : dict
        ``capacity`` (int >= 1; required to create), ``ttl_seconds`` (int >= 1, default
        60: how long the channel survives once every member is gone), ``weight``
        (producer, int >= 1, default 1), ``payload_backend`` (accepted, ignored). A
        binder's capacity/ttl that differ from the channel's are ignored with a warning.
    unique_id : str
        The channel's unique key (one namespace for MPMC and MPSC).
    chan_type : ChanType or str
        ``ChanType.MPMC`` or ``ChanType.MPSC``.
    chan_role : ChanRole or str
        ``ChanRole.PRODUCER`` or ``ChanRole.CONSUMER``.

    Returns
    -------
    Result[MPMCChanProducer | MPMCChanConsumer | MPSCChanProducer | MPSCChanConsumer]
        The handle, or: InvalidArgumentError (bad chan_config / unique_id),
        ChanCreateError (the channel could not be created), ChanBindError (bad type or
        role, a second MPSC consumer, the key names a channel of the other type —
        ChanTypeMismatchError —, etcd failure while binding).
    """
    try:
        return Result.new_ok(_bind(api, chan_config, unique_id, chan_type, chan_role))
    except (ChanCreateError, ChanBindError, InvalidArgumentError, StorageFullError) as err:
        return Result.new_error(err)
    except ApiError as err:
        return Result.new_error(ChanBindError(f"binding unique key {unique_id!r}: {err}"))
