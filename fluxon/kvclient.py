"""``new_store(cfg) -> Result[KvClient]``: a process's attachment to its node's pool.

An external client (zero DRAM contribution) finds the local owner through
``{share_mem_path}/{cluster_name}/shared.json``, maps the owner's pool, claims a
member slot and registers itself in etcd under a lease. KV operations then touch only
shared memory: a put allocates a heap block tagged with this member, encodes the
FlatDict straight into it and publishes it in the KV index; a get copies the value out
under the bucket's seqlock and decodes it.
"""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import orjson

from fluxon_kernels import heap as kheap
from fluxon_kernels import kv as kkv
from fluxon_kernels import status
from fluxon_kernels.layout import member as ml
from fluxon_kernels.layout.kv_bucket import KEY_MAX

from . import codec, naming
from .api_error import (
    OK_NONE,
    ApiError,
    EtcdError,
    GeneralError,
    InternalError,
    InvalidArgumentError,
    InvalidConfigurationError,
    KeyNotFoundError,
    Result,
    StorageFullError,
    error_from_status,
)
from .config import FluxonKvClientConfig
from .futex import wake_all_channels
from .logging import init_logger
from .pool import Pool
from .procinfo import ExitWaiter, is_process_alive, process_start_time

__all__ = [
    "KvClient",
    "KvClientType",
    "KvFuture",
    "MemHolder",
    "PutOptionalArgs",
    "new_store",
]

_log = init_logger("fluxon.kvclient")

#: Lease TTL of a client's etcd member record; renewed every third of it (through etcd's
#: JSON gateway, about a millisecond of CPU). The owner deletes the record of a client it
#: reaps at once; the TTL only clears records of clients whose whole node went away.
MEMBER_LEASE_TTL_S = 30
#: How often the client checks its owner and beats its heart in the pool when nothing
#: happens (an owner that exits wakes the check at once, through its pidfd).
OWNER_CHECK_INTERVAL_S = 2.0
#: Spins on a busy KV bucket lock before the kernel hands back RETRY.
LOCK_SPINS = 2000


class KvClientType:
    """Kinds of client (reference names)."""

    EXTERNAL = "external"
    OWNER = "owner"


@dataclass
class PutOptionalArgs:
    """Options of :meth:`KvClient.put` (reference names).

    ``reject_if_exists``: fail with an error instead of replacing an existing key.
    ``lease_id`` and ``reject_if_inflight_same_key`` are accepted for compatibility.
    """

    lease_id: int | None = None
    reject_if_inflight_same_key: bool = False
    reject_if_exists: bool = False


class MemHolder:
    """A value read from the store; :meth:`access` gives the FlatDict."""

    def __init__(self, value: dict[str, Any], nbytes: int) -> None:
        self._value = value
        self._nbytes = nbytes

    def access(self) -> dict[str, Any]:
        """The decoded FlatDict (ndarrays share one private buffer, not the pool)."""
        return self._value

    def size(self) -> int:
        """Encoded size of the value in bytes."""
        return self._nbytes


class KvFuture:
    """Handle of a KV operation; operations complete before the future is returned."""

    def __init__(self, result: Result) -> None:
        self._result = result

    def wait(self) -> Result:
        """The operation's Result."""
        return self._result

    def is_waiting(self) -> bool:
        """Always False: the shared-memory operations complete synchronously."""
        return False


def _key_bytes(key: Any) -> np.ndarray:
    if not isinstance(key, str):
        raise InvalidArgumentError(f"key must be a str, got {type(key).__name__}")
    raw = _utf8(key, "key")
    if not raw:
        raise InvalidArgumentError("key must not be empty")
    if len(raw) > KEY_MAX:
        raise InvalidArgumentError(
            f"key is {len(raw)} bytes in UTF-8; at most {KEY_MAX} are allowed"
        )
    return np.frombuffer(raw, dtype=np.uint8).copy()  # writable: one kernel specialisation


def _utf8(text: str, what: str) -> bytes:
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise InvalidArgumentError(
            f"{what} is not valid UTF-8 text ({exc.reason} at position {exc.start})"
        ) from None


def _result_of(fn: Callable[[], Any]) -> Result:
    try:
        value = fn()
    except ApiError as err:
        return Result.new_error(err)
    return Result.new_ok(OK_NONE if value is None else value)


def _read_shared_json(cfg: FluxonKvClientConfig) -> dict:
    path = naming.shared_json(cfg.share_mem_path, cfg.cluster_name)
    try:
        with open(path, "rb") as fh:
            data = orjson.loads(fh.read())
    except FileNotFoundError:
        raise InvalidConfigurationError(
            f"no owner found for cluster {cfg.cluster_name!r}: {path} does not exist "
            "(start one with `python -m fluxon up` or examples/start_master_owner.py)",
            config_key="fluxonkv_spec.cluster_name",
            config_value=cfg.cluster_name,
        ) from None
    except (OSError, orjson.JSONDecodeError) as exc:
        raise InternalError(f"cannot read {path}: {exc}", component="shared.json") from None
    if not isinstance(data, dict):
        raise InternalError(f"{path} does not hold a JSON object", component="shared.json")
    if data.get("cluster_name") != cfg.cluster_name:
        raise InvalidConfigurationError(
            f"{path} belongs to cluster {data.get('cluster_name')!r}, not {cfg.cluster_name!r}",
            config_key="fluxonkv_spec.cluster_name",
            config_value=cfg.cluster_name,
        )
    pid, start = data.get("owner_pid"), data.get("owner_start_time")
    if not _is_int(pid) or not (start is None or _is_int(start)):
        raise InternalError(
            f"{path}: owner_pid/owner_start_time must be integers, got {pid!r}/{start!r}",
            component="shared.json",
        )
    if not is_process_alive(pid, start):
        raise InternalError(
            f"the owner of cluster {cfg.cluster_name!r} (pid {pid}) is not running; "
            "restart it, then attach again",
            component="owner",
        )
    addresses = data.get("etcd_addresses")
    if isinstance(addresses, str):
        addresses = [a.strip() for a in addresses.split(",") if a.strip()]
    if (
        not isinstance(addresses, list)
        or not addresses
        or not all(isinstance(a, str) and a.strip() for a in addresses)
    ):
        raise InternalError(
            f"{path}: etcd_addresses must be a non-empty list of 'host:port' strings, "
            f"got {data.get('etcd_addresses')!r}",
            component="shared.json",
        )
    owner_id = data.get("owner_id")
    if not isinstance(owner_id, str) or not owner_id:
        raise InternalError(
            f"{path}: owner_id must be a non-empty string, got {owner_id!r}",
            component="shared.json",
        )
    return dict(data, etcd_addresses=addresses)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


class KvClient:
    """A process's store handle. Create it with :func:`new_store`; every call returns a Result."""

    def __init__(self, cfg: FluxonKvClientConfig, shared: dict, pool: Pool, slot: int) -> None:
        self._cfg = cfg
        self._shared = shared
        self._pool = pool
        self._slot = slot
        self._tag = ml.member_tag(slot)
        self._b = pool.b
        self._w = pool.w
        self._max_value = pool.max_value_bytes()
        self._lock = threading.Lock()
        self._closed = False
        #: True while the owner is not usable (read on every put/get by the handles).
        self._owner_lost = False
        #: Why (``"dead"``: may come back by adoption; ``"closing"``/``"replaced"``: final).
        self._owner_problem = ""
        self._children: list = []
        self._etcd = None
        self._lease = None
        self._member_record: dict = {}
        self._stop = threading.Event()
        self._owner_waiter = ExitWaiter()
        self._watchdog = threading.Thread(
            target=self._watch_owner, name=f"fluxon-kv-{cfg.instance_key}", daemon=True
        )

    # ----------------------------------------------------------- attach / close
    def _register_etcd(self) -> None:
        from .etcd_client import IDLE_CLOSE_S, connect

        addresses = list(self._shared.get("etcd_addresses") or [])
        if not addresses:
            raise InvalidConfigurationError(
                "the owner's shared.json names no etcd address", config_key="etcd_addresses"
            )
        session = connect(addresses, timeout=3.0, idle_close_s=IDLE_CLOSE_S)
        try:
            key = naming.member_key(self._cfg.cluster_name, self._cfg.instance_key)
            record = {
                "instance_key": self._cfg.instance_key,
                "kind": KvClientType.EXTERNAL,
                "pid": os.getpid(),
                "start_time": process_start_time(os.getpid()),
                "owner_id": self._shared.get("owner_id"),
                "pool_slot": self._slot,
                "sub_cluster": self._shared.get("sub_cluster"),
                "started_at": time.time(),
            }
            lease = session.grant_lease(MEMBER_LEASE_TTL_S)
            if not session.put_if_absent(key, orjson.dumps(record), lease=lease):
                previous = session.get(key)
                if not self._stale_member(previous):
                    session.revoke(lease)
                    raise InvalidConfigurationError(
                        f"instance_key {self._cfg.instance_key!r} is already in use by a live "
                        f"member of cluster {self._cfg.cluster_name!r}",
                        config_key="instance_key",
                        config_value=self._cfg.instance_key,
                    )
                session.put(key, orjson.dumps(record), lease=lease)
            session.keepalive(
                lease,
                MEMBER_LEASE_TTL_S / 3,
                on_lost=self._on_member_lease_lost,
                name=f"fluxon-kv-{self._cfg.instance_key}-lease",
            )
        except BaseException:
            session.close()
            raise
        self._etcd, self._lease = session, lease
        self._member_record = record

    def _on_member_lease_lost(self, _lease_id: int) -> None:
        """The member lease expired (etcd unreachable for a whole TTL): register again.

        Runs on the keepalive thread, which stops after this call.
        """
        session = self._etcd
        if self._closed or session is None:
            return
        key = naming.member_key(self._cfg.cluster_name, self._cfg.instance_key)
        try:
            lease = session.grant_lease(MEMBER_LEASE_TTL_S)
            if not session.put_if_absent(key, orjson.dumps(self._member_record), lease=lease):
                previous = session.get(key)
                if not (self._own_record(previous) or self._stale_member(previous)):
                    session.revoke(lease)
                    _log.error(
                        "member lease of %r expired and a live process took the instance key",
                        self._cfg.instance_key,
                    )
                    return
                session.put(key, orjson.dumps(self._member_record), lease=lease)
            self._lease = lease
            if self._closed:
                return
            session.keepalive(
                lease,
                MEMBER_LEASE_TTL_S / 3,
                on_lost=self._on_member_lease_lost,
                name=f"fluxon-kv-{self._cfg.instance_key}-lease",
            )
        except ApiError as exc:
            _log.error(
                "member lease of %r expired; registering again failed: %s",
                self._cfg.instance_key,
                exc,
            )
            return
        _log.warning(
            "member %r registered again in etcd after its lease expired", self._cfg.instance_key
        )

    @staticmethod
    def _own_record(previous: Any) -> bool:
        try:
            rec = orjson.loads(previous) if previous is not None else None
        except orjson.JSONDecodeError:
            return False
        return isinstance(rec, dict) and rec.get("pid") == os.getpid()

    def _stale_member(self, previous: Any) -> bool:
        """A member record left by a dead process of this node may be taken over."""
        if previous is None:
            return True
        try:
            rec = orjson.loads(previous)
        except orjson.JSONDecodeError:
            return True
        if not isinstance(rec, dict):
            return True
        if rec.get("owner_id") != self._shared.get("owner_id"):
            return False
        pid, start = rec.get("pid"), rec.get("start_time")
        return not (isinstance(pid, int) and is_process_alive(pid, start))

    def _watch_owner(self) -> None:
        """Watchdog thread: sleeps until the owner process exits (its pidfd) or for
        :data:`OWNER_CHECK_INTERVAL_S`, then checks the owner and beats the heart."""
        waiter = self._owner_waiter
        try:
            while not self._stop.is_set():
                pool = self._pool
                if pool.closed:
                    return
                waiter.watch({(pool.owner_pid, pool.owner_start)})
                waiter.wait(OWNER_CHECK_INTERVAL_S)
                if self._stop.is_set() or pool.closed:
                    return
                pool.member_heartbeat(self._slot)
                self._check_owner(pool)
        finally:
            waiter.close()

    def _check_owner(self, pool: Pool) -> None:
        """One watchdog check: is the owner recorded in the pool header usable?

        ``closing`` (clean stop) and ``replaced`` (the pool file was removed or
        recreated) are final: this store can never reach the others again. ``dead``
        (the owner was killed) lasts until a restarted owner adopts the pool and
        records its pid in the header; calls then work again with the same handles.
        """
        if self._owner_problem in ("closing", "replaced"):
            return
        state = pool.owner_state()
        if state == "alive" and not pool.is_current():
            state = "replaced"
        if state == "alive":
            if self._owner_lost:
                _log.warning(
                    "owner of cluster %s is back (pid %s adopted the pool); calls work again",
                    self._cfg.cluster_name,
                    pool.owner_pid,
                )
                self._owner_problem = ""
                self._owner_lost = False
            return
        if state == "dead" and not pool.is_current():
            state = "replaced"
        if state != self._owner_problem:
            if state == "dead":
                _log.error(
                    "owner of cluster %s (pid %s) is not running; calls fail until it is "
                    "restarted (it adopts the pool and calls work again) or a new store is "
                    "created",
                    self._cfg.cluster_name,
                    pool.owner_pid,
                )
            else:
                _log.error(
                    "owner of cluster %s %s the pool; calls now fail: create a new store",
                    self._cfg.cluster_name,
                    "is stopping and removes" if state == "closing" else "removed or replaced",
                )
        self._owner_problem = state
        if not self._owner_lost:
            self._owner_lost = True
            # Calls blocked on a channel sleep up to WAIT_SLICE_S: wake them to fail now.
            try:
                wake_all_channels(pool)
            except Exception:  # noqa: BLE001 - best effort: they still wake at their slice
                _log.debug("waking blocked calls failed", exc_info=True)

    def owner_problem(self) -> str:
        """``""`` when the owner is usable, else ``"dead"`` (may come back: a restarted
        owner adopts the pool), ``"closing"`` or ``"replaced"`` (final: create a new
        store)."""
        return self._owner_problem

    def register_child_close(self, close: Callable[[], Any]) -> None:
        """Remember a handle's ``close`` so :meth:`close` closes leftovers first."""
        self._children.append(close)

    def close(self) -> Result:
        """Close leftover handles, deregister, unmap. Idempotent."""
        with self._lock:
            if self._closed:
                return Result.new_ok(OK_NONE)
            for child_close in list(self._children):
                try:
                    child_close()
                except Exception as exc:  # a failing child must not keep the store open
                    _log.warning("closing a handle failed: %s", exc)
            self._children.clear()
            self._closed = True
        self._stop.set()
        self._owner_waiter.wake()
        if self._watchdog.ident is None:  # never started: nobody else closes the waiter
            self._owner_waiter.close()
        if self._etcd is not None:
            try:
                self._etcd.delete(naming.member_key(self._cfg.cluster_name, self._cfg.instance_key))
                self._etcd.revoke(self._lease)
            except EtcdError as exc:
                _log.warning(
                    "could not remove the member record (lease expires on its own): %s", exc
                )
            self._etcd.close()
        self._pool.unregister_member(self._slot)
        self._pool.close()
        return Result.new_ok(OK_NONE)

    def __enter__(self) -> "KvClient":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # ----------------------------------------------------------- helpers
    def _check_open(self) -> None:
        if self._closed:
            raise GeneralError("the store is closed")
        if self._owner_lost:
            raise self.owner_error()

    def owner_error(self) -> InternalError:
        """The error of a call made while the owner is unusable (see :meth:`owner_problem`)."""
        if self._owner_problem == "dead":
            text = (
                f"the owner of cluster {self._cfg.cluster_name!r} (pid {self._pool.owner_pid}) "
                "is not running; retry once it is restarted (it adopts the pool and this "
                "store works again), or create a new store"
            )
        else:
            text = (
                f"the owner of cluster {self._cfg.cluster_name!r} is gone and its pool was "
                "removed; create a new store"
            )
        return InternalError(text, component="owner")

    def _put(self, key: Any, value: Any, opts: PutOptionalArgs | None) -> None:
        self._check_open()
        kb = _key_bytes(key)
        prepared = codec.prepare(value)
        nbytes = prepared.size
        if nbytes > self._max_value:
            raise InvalidArgumentError(
                f"value encodes to {nbytes} bytes; the pool can hold at most {self._max_value}"
            )
        if opts is not None and opts.reject_if_exists and kkv.kv_lookup(self._b, self._w, kb) >= 0:
            raise InvalidArgumentError(f"key {key!r} already exists (reject_if_exists)")
        start = int(kheap.heap_alloc(self._w, nbytes, self._tag))
        if start < 0:
            if start == status.FULL:
                raise StorageFullError(
                    f"pool has no free run of {nbytes} bytes right now "
                    f"({self._pool.free_bytes()} bytes free in total)"
                )
            raise error_from_status(start, f"allocating {nbytes} bytes for key {key!r}")
        try:
            codec.write(prepared, self._b, int(kheap.unit_offset(self._w, start)))
            ref = kheap.make_ref(start, nbytes)
            while True:
                rc = int(kkv.kv_put(self._b, self._w, kb, ref, self._tag, LOCK_SPINS))
                if rc != status.RETRY:
                    break
                time.sleep(0)
        except BaseException:
            kheap.heap_free(self._w, start, nbytes, self._tag)
            raise
        if rc != status.OK:
            kheap.heap_free(self._w, start, nbytes, self._tag)
            raise error_from_status(rc, f"storing key {key!r}")

    def _get(self, key: Any) -> MemHolder:
        self._check_open()
        kb = _key_bytes(key)
        while True:
            size = int(kkv.kv_value_size(self._b, self._w, kb))
            if size == status.NOT_FOUND:
                raise KeyNotFoundError(f"key {key!r} not found")
            if size == status.RETRY:
                time.sleep(0.001)  # a writer died mid-publish; the owner repairs it shortly
                self._check_open()
                continue
            out = np.empty(size, dtype=np.uint8)
            n = int(kkv.kv_read(self._b, self._w, kb, out))
            if n in (status.BUFFER_TOO_SMALL, status.RETRY):
                continue  # replaced by a larger value meanwhile, or a writer is stuck
            if n == status.NOT_FOUND:
                raise KeyNotFoundError(f"key {key!r} not found")
            if n < 0:
                raise error_from_status(n, f"reading key {key!r}")
            return MemHolder(codec.decode(out[:n]), n)

    def _remove(self, key: Any) -> None:
        self._check_open()
        kb = _key_bytes(key)
        while True:
            rc = int(kkv.kv_remove(self._b, self._w, kb, self._tag, LOCK_SPINS))
            if rc != status.RETRY:
                break
            time.sleep(0)
        if rc == status.NOT_FOUND:
            raise KeyNotFoundError(f"key {key!r} not found")
        if rc != status.OK:
            raise error_from_status(rc, f"removing key {key!r}")

    # ----------------------------------------------------------- public API
    def put(self, key: str, value: dict, opts: PutOptionalArgs | None = None) -> Result:
        """Store FlatDict ``value`` under ``key``; Result[KvFuture], wait() -> Result[OkNone]."""
        return Result.new_ok(KvFuture(_result_of(lambda: self._put(key, value, opts))))

    def put_blocking(self, key: str, value: dict, opts: PutOptionalArgs | None = None) -> Result:
        """Store ``value`` under ``key``; Result[OkNone]."""
        return _result_of(lambda: self._put(key, value, opts))

    def get(self, key: str) -> Result:
        """Read ``key``; Result[KvFuture] whose wait() -> Result[MemHolder]."""
        return Result.new_ok(KvFuture(_result_of(lambda: self._get(key))))

    def get_blocking(self, key: str) -> Result:
        """Read ``key``; Result[MemHolder] (``.access()`` gives the FlatDict)."""
        return _result_of(lambda: self._get(key))

    def remove(self, key: str) -> Result:
        """Delete ``key``; Result[OkNone], KeyNotFoundError if absent."""
        return _result_of(lambda: self._remove(key))

    def is_exist(self, key: str) -> Result:
        """Result[bool]: whether ``key`` holds a value."""

        def run() -> bool:
            self._check_open()
            return bool(kkv.kv_lookup(self._b, self._w, _key_bytes(key)) >= 0)

        return _result_of(run)

    def get_size(self, key: str) -> Result:
        """Result[int]: encoded size of the value under ``key``."""

        def run() -> int:
            self._check_open()
            kb = _key_bytes(key)
            n = int(kkv.kv_value_size(self._b, self._w, kb))
            while n == status.RETRY:
                time.sleep(0.001)
                n = int(kkv.kv_value_size(self._b, self._w, kb))
            if n == status.NOT_FOUND:
                raise KeyNotFoundError(f"key {key!r} not found")
            return n

        return _result_of(run)

    def count_prefix(self, prefix: str) -> Result:
        """Result[int]: number of keys starting with ``prefix`` ("" counts all)."""

        def run() -> int:
            self._check_open()
            if not isinstance(prefix, str):
                raise InvalidArgumentError(f"prefix must be a str, got {type(prefix).__name__}")
            raw = np.frombuffer(_utf8(prefix, "prefix"), dtype=np.uint8).copy()
            return int(kkv.kv_count_prefix(self._b, self._w, raw))

        return _result_of(run)

    def instance_key(self) -> Result:
        """Result[str]: this client's instance key."""
        return Result.new_ok(self._cfg.instance_key)

    def get_cluster_name(self) -> Result:
        """Result[str]: the cluster this client belongs to."""
        return Result.new_ok(self._cfg.cluster_name)

    def get_etcd_config(self) -> Result:
        """Result[list[str]]: etcd addresses inherited from the owner."""
        return Result.new_ok(list(self._shared.get("etcd_addresses") or []))

    def owner_id(self) -> str:
        """Instance key of the owner whose pool this client uses."""
        return str(self._shared.get("owner_id"))

    def member_slot(self) -> int:
        """This client's slot in the pool's member table."""
        return self._slot

    @property
    def pool(self) -> Pool:
        """The mapped pool (for channels and monitoring inside fluxon)."""
        return self._pool

    def pool_stats(self) -> Result:
        """Result[dict]: heap bytes total and free (free is exact when quiescent)."""
        return _result_of(
            lambda: {"heap_bytes": self._pool.heap_bytes(), "free_bytes": self._pool.free_bytes()}
        )

    def is_closed(self) -> bool:
        """Whether :meth:`close` was called."""
        return self._closed


def new_store(config: Any = None) -> Result:
    """Attach this process to its node's pool as an external client.

    Parameters
    ----------
    config : FluxonKvClientConfig | dict | str | None
        The client config (a dict, a FluxonKvClientConfig, or a path to a config file;
        None reads ``./config.yaml``). Zero contribution is required.

    Returns
    -------
    Result[KvClient]
        The client, or an ApiError naming what was wrong.
    """
    try:
        if config is None:
            cfg = FluxonKvClientConfig.from_file()
        elif isinstance(config, str):
            cfg = FluxonKvClientConfig.from_file(config)
        elif isinstance(config, FluxonKvClientConfig):
            cfg = config
        elif isinstance(config, dict):
            cfg = FluxonKvClientConfig(config)
        else:
            raise InvalidConfigurationError(
                "config must be a dict, a FluxonKvClientConfig or a path, "
                f"got {type(config).__name__}",
                config_key="config",
            )
        if not cfg.is_external:
            raise InvalidConfigurationError(
                "new_store attaches zero-contribution clients only; run an owner with "
                "`python -m fluxon up` or fluxon.runtime.start_owner_kvclient_process",
                config_key="contribute_to_cluster_pool_size.dram",
                config_value=str(cfg.dram_bytes),
            )
        shared = _read_shared_json(cfg)
        pool = Pool.attach(cfg.share_mem_path, cfg.cluster_name)
    except ApiError as err:
        return Result.new_error(err)
    try:
        slot = pool.register_member(ml.KIND_EXTERNAL, cfg.instance_key)
    except ApiError as err:
        pool.close()
        return Result.new_error(err)
    client = KvClient(cfg, shared, pool, slot)
    try:
        client._register_etcd()
    except ApiError as err:
        pool.unregister_member(slot)
        pool.close()
        return Result.new_error(err)
    client._watchdog.start()
    return Result.new_ok(client)
