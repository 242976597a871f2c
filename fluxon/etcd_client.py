"""A thin, time-bounded wrapper over the ``etcd3`` client (``python3-etcd3``).

Every call carries a deadline and every failure surfaces as :class:`EtcdError` naming the
address and the operation: an unreachable etcd produces an error within a few seconds,
never a hang. The translation follows python-etcd3's own shape: one table from gRPC/etcd3
failures to a message, applied by one wrapper (:meth:`EtcdSession._call`).

Lease keepalive runs on a background thread that logs (never raises) while etcd is down
and resumes when it comes back; if the lease expired meanwhile it reports the loss to an
``on_lost`` callback so the holder can register again. Refreshes go through etcd's JSON
gateway (``POST /v3/lease/keepalive`` on the client port) over one kept-open HTTP
connection: a gRPC keepalive stream per refresh costs several times the CPU, and a
session whose gRPC channel is idle can close it (``idle_close_s``): an open channel keeps
gRPC's threads waking about 25 times a second, even with nothing to do.
"""

from __future__ import annotations

import contextlib
import http.client
import logging
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

import etcd3
import etcd3.exceptions as etcd3_exc
import grpc
import orjson

from .api_error import EtcdError, TransportName, TransportUser
from .etcd_server import split_address

T = TypeVar("T")

_log = logging.getLogger("fluxon.etcd")

# gRPC channel options: reconnect quickly after an etcd restart instead of backing off
# for up to two minutes (the gRPC default).
_GRPC_OPTIONS = [
    ("grpc.initial_reconnect_backoff_ms", 200),
    ("grpc.min_reconnect_backoff_ms", 200),
    ("grpc.max_reconnect_backoff_ms", 1000),
    ("grpc.enable_retries", 0),
    # etcd is reached directly; an http_proxy meant for the web must not capture it.
    ("grpc.enable_http_proxy", 0),
]

#: Idle time after which the services and clients close their gRPC channel (an open one
#: keeps gRPC's threads waking about 25 times a second); the next call reopens it.
IDLE_CLOSE_S = 5.0

#: How often a call refused by every endpoint's back-off looks again.
_BACKOFF_POLL_S = 0.05

# etcd3 exception -> what went wrong, for the message of EtcdError.
_FAILURE_TEXT: dict[type, str] = {
    etcd3_exc.ConnectionFailedError: "etcd unreachable (connection failed)",
    etcd3_exc.ConnectionTimeoutError: "etcd did not answer in time",
    etcd3_exc.NoServerAvailableError: "no etcd endpoint available",
    etcd3_exc.InternalServerError: "etcd internal error",
    etcd3_exc.PreconditionFailedError: "etcd precondition failed",
}


def _to_bytes(value: str | bytes) -> bytes:
    return value.encode("utf-8") if isinstance(value, str) else bytes(value)


class _NoGateway(Exception):
    """etcd's JSON gateway is not served at this endpoint (refresh over gRPC instead)."""


class _Gateway:
    """Lease refreshes over etcd's JSON gateway, one kept-open connection, failing over
    between the session's addresses. Thread-safe (one request at a time)."""

    def __init__(self, addresses: list[str]) -> None:
        self._targets = [split_address(a) for a in addresses]
        self._index = 0
        self._conn: http.client.HTTPConnection | None = None
        self._lock = threading.Lock()

    def refresh(self, lease_id: int, timeout: float) -> int:
        """Refresh ``lease_id`` once; its remaining TTL (``0``: the lease is gone)."""
        body = orjson.dumps({"ID": lease_id})
        with self._lock:
            last: Exception | None = None
            for _ in range(len(self._targets)):
                conn = self._conn
                if conn is None:
                    host, port = self._targets[self._index]
                    conn = self._conn = http.client.HTTPConnection(host, port, timeout=timeout)
                conn.timeout = timeout
                if conn.sock is not None:
                    conn.sock.settimeout(timeout)
                try:
                    conn.request("POST", "/v3/lease/keepalive", body)
                    resp = conn.getresponse()
                    data = resp.read()
                except (OSError, http.client.HTTPException) as exc:
                    # refused, reset or timed out: drop the connection, try the next address
                    last = exc
                    conn.close()
                    self._conn = None
                    self._index = (self._index + 1) % len(self._targets)
                    continue
                return _keepalive_ttl(resp.status, data)
            raise OSError(f"{type(last).__name__}: {last}") from last

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None


def _keepalive_ttl(status: int, data: bytes) -> int:
    """The TTL in a gateway keepalive reply (``0`` when absent: the lease is gone)."""
    if status == 404:
        raise _NoGateway()
    try:
        reply = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise ValueError(f"gateway reply {status} is not JSON: {data[:200]!r}") from exc
    result = reply.get("result") if isinstance(reply, dict) else None
    if status != 200 or not isinstance(result, dict):
        error = reply.get("error", reply) if isinstance(reply, dict) else reply
        raise ValueError(f"gateway reply {status}: {error!r}"[:300])
    return int(result.get("TTL", 0))


def _lease_id(lease: Any) -> int:
    if lease is None:
        return 0
    return int(getattr(lease, "id", lease))


class KeepaliveHandle:
    """A background thread refreshing one lease; stop it with :meth:`stop`."""

    def __init__(
        self,
        session: EtcdSession,
        lease: Any,
        interval: float,
        on_lost: Callable[[int], None] | None,
        name: str,
    ) -> None:
        self.session = session
        self.lease_id = _lease_id(lease)
        self.interval = interval
        self.on_lost = on_lost
        self.lost = False
        #: ``time.monotonic()`` of the last successful refresh (0.0: none yet).
        self.last_ok = 0.0
        #: Whether the latest refresh failed (etcd unreachable).
        self.failing = False
        self._stop = threading.Event()
        self._wake = threading.Event()  # stop, or the session's gRPC channel opened
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    def start(self) -> KeepaliveHandle:
        """Start the refresh thread; returns ``self``."""
        self._thread.start()
        return self

    def _run(self) -> None:
        next_refresh = time.monotonic() + self.interval
        while True:
            # Sleep until the refresh is due, or until the session's gRPC channel has
            # been idle long enough to close (see EtcdSession.close_if_idle).
            wake = next_refresh
            due = self.session.idle_close_due()
            if due is not None and due < wake:
                wake = due
            self._wake.wait(max(0.05, wake - time.monotonic()))
            self._wake.clear()
            if self._stop.is_set():
                return
            if time.monotonic() < next_refresh:
                self.session.close_if_idle()
                continue
            next_refresh = time.monotonic() + self.interval
            try:
                # A refresh may take a while on a loaded machine; timing out marks the
                # session's endpoint failed for a moment, so do not give up too early.
                timeout = min(max(self.interval, 2.0), self.session.timeout)
                ttl = self.session.refresh_lease(self.lease_id, timeout=timeout)
            except EtcdError as exc:
                if self._stop.is_set():
                    return
                if not self.failing:
                    _log.warning("lease %x keepalive failing (will retry): %s", self.lease_id, exc)
                    self.failing = True
                continue
            except Exception as exc:  # noqa: BLE001 - a keepalive thread must never die
                if self._stop.is_set():
                    return
                if not self.failing:
                    _log.warning("lease %x keepalive error (will retry): %r", self.lease_id, exc)
                    self.failing = True
                continue
            if ttl <= 0:
                self.lost = True
                _log.error(
                    "lease %x is gone (expired or revoked); its keys are gone", self.lease_id
                )
                if self.on_lost is not None:
                    try:
                        self.on_lost(self.lease_id)
                    except Exception:  # noqa: BLE001
                        _log.exception("on_lost callback of lease %x failed", self.lease_id)
                return
            self.last_ok = time.monotonic()
            if self.failing:
                _log.info("lease %x keepalive resumed", self.lease_id)
                self.failing = False

    def nudge(self) -> None:
        """Make the thread look again when to wake (the session's channel opened)."""
        self._wake.set()

    def stop(self, timeout: float = 5.0) -> None:
        """Stop refreshing (idempotent); waits for the thread up to ``timeout`` seconds."""
        self._stop.set()
        self._wake.set()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(timeout)

    @property
    def running(self) -> bool:
        """Whether the thread still runs."""
        return self._thread.is_alive()


class EtcdSession:
    """An etcd connection with bounded calls. Create it with :func:`connect`.

    Parameters
    ----------
    addresses : list[str]
        ``"host:port"`` client addresses; the session fails over between them.
    timeout : float
        Deadline of every call, in seconds.
    idle_close_s : float, optional
        See :func:`connect`.
    """

    def __init__(
        self, addresses: list[str], timeout: float = 3.0, idle_close_s: float | None = None
    ) -> None:
        if not addresses:
            raise EtcdError("no etcd address configured")
        self.addresses = [a.strip() for a in addresses]
        self.timeout = float(timeout)
        self.idle_close_s = idle_close_s
        self._grpc: etcd3.MultiEndpointEtcd3Client | None = None  # opened on first use
        self._gateway: _Gateway | None = _Gateway(self.addresses)
        self._keepalives: list[KeepaliveHandle] = []
        self._lock = threading.Lock()
        self._closed = False
        self._inflight = 0  # calls running now (the channel is not closed under them)
        self._last_used = 0.0  # time.monotonic() of the last call's end

    def _open(self) -> etcd3.MultiEndpointEtcd3Client:
        endpoints = []
        for address in self.addresses:
            host, port = split_address(address)
            # time_retry: how long a failed endpoint is skipped; short, so a single-endpoint
            # session recovers as soon as etcd is back.
            endpoints.append(
                etcd3.Endpoint(host, port, secure=False, time_retry=0.5, opts=_GRPC_OPTIONS)
            )
        return etcd3.MultiEndpointEtcd3Client(
            endpoints=endpoints, timeout=self.timeout, failover=True
        )

    @property
    def _client(self) -> etcd3.MultiEndpointEtcd3Client:
        """The gRPC client, (re)opened if :meth:`close_if_idle` closed it."""
        client = self._grpc
        if client is None:
            with self._lock:
                if self._closed:
                    raise EtcdError(f"etcd at {self.address_text}: session is closed")
                client = self._grpc
                if client is None:
                    client = self._grpc = self._open()
                    self._last_used = time.monotonic()
                    for handle in self._keepalives:
                        handle.nudge()  # they close it again once idle
        return client

    @property
    def grpc_open(self) -> bool:
        """Whether the gRPC channel is open now."""
        return self._grpc is not None

    @property
    def via_gateway(self) -> bool:
        """Whether lease refreshes go through etcd's JSON gateway (else over gRPC)."""
        return self._gateway is not None

    def idle_close_due(self) -> float | None:
        """When (``time.monotonic()``) the open gRPC channel may close for idleness;
        ``None`` if it is closed or never closes (no ``idle_close_s``)."""
        with self._lock:
            if self.idle_close_s is None or self._grpc is None:
                return None
            if self._inflight:  # look again later
                return time.monotonic() + self.idle_close_s
            return self._last_used + self.idle_close_s

    def close_if_idle(self) -> bool:
        """Close the gRPC channel if no call ran for ``idle_close_s`` seconds (the next
        call opens it again). Keepalive threads call this when it is due
        (:meth:`idle_close_due`).

        Returns
        -------
        bool
            Whether the channel was closed now.
        """
        if self.idle_close_s is None:
            return False
        with self._lock:
            client = self._grpc
            if (
                client is None
                or self._inflight
                or time.monotonic() - self._last_used < self.idle_close_s
            ):
                return False
            self._grpc = None
        with contextlib.suppress(Exception):  # closing a broken channel may raise
            client.close()
        return True

    # ------------------------------------------------------------- plumbing
    @property
    def address_text(self) -> str:
        """The configured addresses, comma separated (for messages)."""
        return ",".join(self.addresses)

    def _call(self, operation: str, fn: Callable[[], T]) -> T:
        """Run one etcd call; translate every failure into EtcdError.

        After a failed call the ``etcd3`` client refuses every endpoint that failed for
        a short back-off (``time_retry``) without sending anything. A call that meets
        only refusals waits for the back-off to end and tries again, until its own
        deadline: one slow call (a keepalive timing out under load, say) must not fail
        every other user of the session at once. Calls that were sent are never
        repeated here (their outcome is unknown).
        """
        if self._closed:
            raise EtcdError(f"etcd {operation} at {self.address_text}: session is closed")
        with self._lock:
            self._inflight += 1
        try:
            return self._attempt(operation, fn)
        finally:
            with self._lock:
                self._inflight -= 1
                self._last_used = time.monotonic()

    def _attempt(self, operation: str, fn: Callable[[], T]) -> T:
        deadline = time.monotonic() + self.timeout
        attempts = len(self.addresses)
        last: BaseException | None = None
        text = ""
        while True:
            try:
                return fn()
            except (etcd3_exc.NoServerAvailableError, ValueError) as exc:
                last = exc
                if isinstance(exc, ValueError) and "failed node" not in str(exc):
                    text = f"unexpected reply ({exc})"
                    break
                # Nothing was sent: every endpoint is in its back-off. Wait it out.
                text = "no etcd endpoint available"
                if time.monotonic() + _BACKOFF_POLL_S >= deadline:
                    break
                time.sleep(_BACKOFF_POLL_S)
                continue
            except tuple(_FAILURE_TEXT) as exc:
                last = exc
                text = _FAILURE_TEXT[type(exc)]
                if type(exc) in (etcd3_exc.InternalServerError, etcd3_exc.PreconditionFailedError):
                    break
            except grpc.RpcError as exc:
                last = exc
                code = exc.code() if hasattr(exc, "code") else None
                details = exc.details() if hasattr(exc, "details") else ""
                text = f"gRPC {getattr(code, 'name', code)}: {details}"
                break
            except etcd3_exc.Etcd3Exception as exc:
                last = exc
                text = f"{type(exc).__name__}: {exc}"
                break
            attempts -= 1
            if attempts <= 0:
                break
        raise EtcdError(
            f"etcd {operation} failed at {self.address_text}: {text} (timeout {self.timeout:g} s)",
            transport=TransportName.GRPC,
            transport_user=TransportUser.ETCD,
            component="etcd",
        ) from last

    # ------------------------------------------------------------- probes
    def status(self) -> dict:
        """Server status (version, leader, db size) of the endpoint in use."""
        st = self._call("status", lambda: self._client.status())
        return {"version": st.version, "db_size": st.db_size, "raft_index": st.raft_index}

    # ------------------------------------------------------------- key/value
    def get(self, key: str) -> bytes | None:
        """Value of ``key``, or ``None`` if absent."""
        value, _meta = self._call(f"get {key}", lambda: self._client.get(key))
        return value

    def get_str(self, key: str) -> str | None:
        """Value of ``key`` decoded as UTF-8, or ``None`` if absent."""
        value = self.get(key)
        return None if value is None else value.decode("utf-8", errors="replace")

    def get_prefix(self, prefix: str, keys_only: bool = False) -> list[tuple[str, bytes]]:
        """Every ``(key, value)`` under ``prefix``, sorted by key."""

        def run() -> list[tuple[str, bytes]]:
            resp = self._client.get_prefix_response(prefix, keys_only=keys_only)
            return [(kv.key.decode("utf-8", errors="replace"), kv.value) for kv in resp.kvs]

        return sorted(self._call(f"get_prefix {prefix}", run))

    def count_prefix(self, prefix: str) -> int:
        """Number of keys under ``prefix``."""

        def run() -> int:
            return int(self._client.get_prefix_response(prefix, count_only=True).count)

        return self._call(f"count_prefix {prefix}", run)

    def put(self, key: str, value: str | bytes, lease: Any = None) -> None:
        """Set ``key`` (attached to ``lease`` if given)."""
        raw = _to_bytes(value)
        self._call(f"put {key}", lambda: self._client.put(key, raw, lease=_lease_id(lease) or None))

    def delete(self, key: str) -> bool:
        """Delete ``key``; ``True`` if it existed."""
        return bool(self._call(f"delete {key}", lambda: self._client.delete(key)))

    def delete_prefix(self, prefix: str) -> int:
        """Delete every key under ``prefix``; returns how many were deleted."""
        resp = self._call(f"delete_prefix {prefix}", lambda: self._client.delete_prefix(prefix))
        return int(resp.deleted)

    def delete_if_value(self, key: str, expected: str | bytes) -> bool:
        """Delete ``key`` only if it still holds ``expected`` (one transaction)."""
        raw = _to_bytes(expected)

        def run() -> bool:
            tx = self._client.transactions
            ok, _ = self._client.transaction(
                compare=[tx.value(key) == raw], success=[tx.delete(key)], failure=[]
            )
            return bool(ok)

        return self._call(f"delete_if_value {key}", run)

    def put_if_absent(self, key: str, value: str | bytes, lease: Any = None) -> bool:
        """Create ``key`` only if it does not exist (one transaction).

        Returns
        -------
        bool
            ``True`` if this call created the key.
        """
        raw = _to_bytes(value)
        lease_id = _lease_id(lease) or None

        def run() -> bool:
            tx = self._client.transactions
            ok, _ = self._client.transaction(
                compare=[tx.create(key) == 0],
                success=[tx.put(key, raw, lease=lease_id)],
                failure=[],
            )
            return bool(ok)

        return self._call(f"put_if_absent {key}", run)

    def compare_and_swap(self, key: str, expected: str | bytes | None, value: str | bytes) -> bool:
        """Set ``key`` to ``value`` if its current value is ``expected`` (``None`` = absent)."""
        raw = _to_bytes(value)

        def run() -> bool:
            tx = self._client.transactions
            if expected is None:
                compare = [tx.create(key) == 0]
            else:
                compare = [tx.value(key) == _to_bytes(expected)]
            ok, _ = self._client.transaction(
                compare=compare, success=[tx.put(key, raw)], failure=[]
            )
            return bool(ok)

        return self._call(f"compare_and_swap {key}", run)

    def txn(
        self,
        compare: list[tuple],
        success: list[tuple],
        failure: list[tuple] | None = None,
    ) -> bool:
        """One etcd transaction: if every comparison holds run ``success``, else ``failure``.

        Parameters
        ----------
        compare : list of tuple
            ``("absent", key)`` (the key does not exist), ``("exists", key)``, or
            ``("value", key, expected)`` (the key holds exactly ``expected``).
        success, failure : list of tuple
            ``("put", key, value)``, ``("put", key, value, lease)`` or ``("delete", key)``.

        Returns
        -------
        bool
            Whether the comparisons held (``success`` ran).
        """
        tx = self._client.transactions

        def cmp(item: tuple) -> Any:
            kind, key = item[0], item[1]
            if kind == "absent":
                return tx.create(key) == 0
            if kind == "exists":
                return tx.create(key) > 0
            if kind == "value":
                return tx.value(key) == _to_bytes(item[2])
            raise ValueError(f"unknown transaction comparison {kind!r}")

        def op(item: tuple) -> Any:
            kind, key = item[0], item[1]
            if kind == "put":
                lease = _lease_id(item[3]) if len(item) > 3 else 0
                return tx.put(key, _to_bytes(item[2]), lease=lease or None)
            if kind == "delete":
                return tx.delete(key)
            raise ValueError(f"unknown transaction operation {kind!r}")

        compares = [cmp(c) for c in compare]
        ok_ops = [op(o) for o in success]
        fail_ops = [op(o) for o in (failure or [])]
        keys = ",".join(str(c[1]) for c in compare) or "-"

        def run() -> bool:
            ok, _ = self._client.transaction(compare=compares, success=ok_ops, failure=fail_ops)
            return bool(ok)

        return self._call(f"txn on {keys}", run)

    def incr_counter(self, key: str, max_attempts: int = 64) -> int:
        """Advance the monotonic counter at ``key`` by one and return the new value.

        The first call on a fresh key returns 1. Concurrent callers never get the same
        value (compare-and-swap on the key's modification revision).

        Raises
        ------
        EtcdError
            On etcd failure, or if ``max_attempts`` transactions all lost a race.
        """

        def attempt() -> int | None:
            tx = self._client.transactions
            resp = self._client.get_response(key)
            if resp.count < 1:
                ok, _ = self._client.transaction(
                    compare=[tx.create(key) == 0], success=[tx.put(key, b"1")], failure=[]
                )
                return 1 if ok else None
            kv = resp.kvs[0]
            nxt = int(kv.value or b"0") + 1
            ok, _ = self._client.transaction(
                compare=[tx.mod(key) == kv.mod_revision],
                success=[tx.put(key, str(nxt).encode())],
                failure=[],
            )
            return nxt if ok else None

        for _ in range(max_attempts):
            got = self._call(f"incr_counter {key}", attempt)
            if got is not None:
                return got
        raise EtcdError(f"etcd incr_counter {key} at {self.address_text}: too much contention")

    # ------------------------------------------------------------- leases
    def grant_lease(self, ttl: int) -> etcd3.Lease:
        """Grant a lease of ``ttl`` seconds (its ``.id`` is what keys attach to)."""
        return self._call(f"grant_lease ttl={ttl}", lambda: self._client.lease(int(ttl)))

    def refresh_lease(self, lease: Any, timeout: float | None = None) -> int:
        """Refresh ``lease`` once; returns the remaining TTL (``0``: the lease is gone).

        Through etcd's JSON gateway when the endpoint serves it (no gRPC channel
        needed), else over a gRPC keepalive stream.
        """
        lease_id = _lease_id(lease)
        timeout = self.timeout if timeout is None else timeout
        gateway = self._gateway
        if gateway is not None:
            if self._closed:
                raise EtcdError(f"etcd refresh_lease at {self.address_text}: session is closed")
            try:
                return gateway.refresh(lease_id, timeout)
            except _NoGateway:
                self._gateway = None
                gateway.close()
            except (OSError, ValueError) as exc:
                raise EtcdError(
                    f"etcd refresh_lease {lease_id:x} failed at {self.address_text}: {exc} "
                    f"(timeout {timeout:g} s)",
                    transport=TransportName.HTTP,
                    transport_user=TransportUser.ETCD,
                    component="etcd",
                ) from exc

        def run() -> int:
            request = etcd3.etcdrpc.LeaseKeepAliveRequest(ID=lease_id)
            stream = self._client.leasestub.LeaseKeepAlive(
                iter([request]),
                timeout,
                credentials=self._client.call_credentials,
                metadata=self._client.metadata,
            )
            ttl = 0
            for resp in stream:
                ttl = int(resp.TTL)
            return ttl

        def guarded() -> int:
            try:
                return run()
            except grpc.RpcError as exc:
                self._client._manage_grpc_errors(exc)  # raises the etcd3 exception
                raise

        return self._call(f"refresh_lease {lease_id:x}", guarded)

    def lease_ttl(self, lease: Any) -> int:
        """Remaining TTL of ``lease`` in seconds (``-1`` if it does not exist)."""
        lease_id = _lease_id(lease)
        info = self._call(f"lease_ttl {lease_id:x}", lambda: self._client.get_lease_info(lease_id))
        return int(info.TTL)

    def revoke(self, lease: Any) -> None:
        """Revoke ``lease``: every key attached to it is deleted."""
        lease_id = _lease_id(lease)
        self._call(f"revoke {lease_id:x}", lambda: self._client.revoke_lease(lease_id))

    def keepalive(
        self,
        lease: Any,
        interval: float | None = None,
        *,
        on_lost: Callable[[int], None] | None = None,
        name: str | None = None,
    ) -> KeepaliveHandle:
        """Refresh ``lease`` every ``interval`` seconds on a background thread.

        Parameters
        ----------
        lease : etcd3.Lease or int
            The lease (or its id).
        interval : float, optional
            Refresh period; default a third of the lease TTL (at least 0.2 s).
        on_lost : callable, optional
            Called with the lease id, from the keepalive thread, if etcd reports the lease
            expired (e.g. after an outage longer than the TTL); the thread then stops.
        name : str, optional
            Thread name.

        Returns
        -------
        KeepaliveHandle
            Stopped by :meth:`KeepaliveHandle.stop` or by :meth:`close`.
        """
        if interval is None:
            ttl = int(getattr(lease, "ttl", 0) or 9)
            interval = max(0.2, ttl / 3.0)
        handle = KeepaliveHandle(
            self,
            lease,
            float(interval),
            on_lost,
            name or f"fluxon-etcd-keepalive-{_lease_id(lease):x}",
        )
        with self._lock:
            self._keepalives.append(handle)
        return handle.start()

    # ------------------------------------------------------------- lifetime
    def close(self) -> None:
        """Stop every keepalive thread and close the connection (idempotent)."""
        with self._lock:
            if self._closed:
                return
            keepalives, self._keepalives = self._keepalives, []
        for handle in keepalives:
            handle.stop()
        with self._lock:
            self._closed = True
            client, self._grpc = self._grpc, None
        if self._gateway is not None:
            self._gateway.close()
        if client is not None:
            with contextlib.suppress(Exception):  # closing a broken channel may raise
                client.close()

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` was called."""
        return self._closed

    def __enter__(self) -> EtcdSession:  # noqa: PYI034 - typing.Self needs Python 3.11
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def connect(
    addresses: list[str] | str,
    timeout: float = 3.0,
    probe: bool = True,
    idle_close_s: float | None = None,
) -> EtcdSession:
    """Open an :class:`EtcdSession`.

    Parameters
    ----------
    addresses : list[str] or str
        ``"host:port"`` client addresses (a comma-separated string also works).
    timeout : float
        Deadline of every call, in seconds.
    probe : bool
        Check that etcd answers now (one ``status`` call), so an unreachable etcd fails here.
    idle_close_s : float, optional
        Let keepalive threads close the gRPC channel after this many seconds without a
        call (for long-lived processes that seldom call etcd; a session without a
        keepalive never closes it); ``None``: keep it open.

    Returns
    -------
    EtcdSession

    Raises
    ------
    EtcdError
        If ``probe`` is set and etcd does not answer within ``timeout``.
    """
    if isinstance(addresses, str):
        addresses = [a for a in addresses.split(",") if a.strip()]
    session = EtcdSession(list(addresses), timeout=timeout, idle_close_s=idle_close_s)
    if probe:
        try:
            session.status()
        except BaseException:
            session.close()
            raise
    return session
