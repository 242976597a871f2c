"""The owner: one per node and cluster; it owns the node's shared-memory pool.

Lifecycle::

    lock pool dir ─► connect etcd ─► Pool.adopt | .create ─► register in etcd ─► shared.json
         │                              (0600)              (lease + keepalive)  (ready signal)
         ▼
    every 1 s, and at once when a member's pidfd says it exited: heartbeat, reap dead
    members (pid + start time) ──► delete their etcd member key
         │
    SIGINT/SIGTERM ─► mark_closing ─► etcd keys/lease ─► shared.json ─► close + unlink pool ─► rmdir

``shared.json`` is written last, so a client that finds it finds a registered owner.
A ``flock`` on the pool directory keeps a second owner away while this one lives (the
kernel drops it when the process dies, even by SIGKILL). etcd work other than start-up
runs on a side thread so a slow or absent etcd never delays the heartbeat or reaping.

Restart after a crash (the owner was killed, the pool file is still there):

* a valid pool of this cluster, layout version, size and instance key is **adopted**
  (:meth:`fluxon.pool.Pool.adopt`): undelivered messages, channels and KV keys stay;
  attached clients see the new pid in the header and carry on; members that died
  meanwhile are reaped by the first pass;
* a valid pool of another size or instance key is replaced only if nothing uses it
  (no live client, channel or key); otherwise the owner refuses to start
  (exit status 4) and says how to proceed;
* a file that is not a usable pool (truncated, bad magic, other layout version or
  cluster, inconsistent tables) is replaced, with a warning.

A clean stop (SIGINT/SIGTERM) still removes the pool: attached clients get a clear
error and must create a new store.

File modes: the pool and ``shared.json`` are 0600. With ``FLUXON_SHM_GROUP`` set to a
group name (or gid) in the owner's environment they are 0660 and belong to that
group, and the pool directory is 0770, so members of the group can attach.

Run it as ``python -m fluxon.service.owner --config-b64 B64 | --config PATH``.
"""

from __future__ import annotations

import argparse
import errno
import fcntl
import logging
import os
import queue
import sys
import threading
import time
from typing import Any

import orjson

import fluxon_kernels

from .. import naming
from ..api_error import ApiError, EtcdError, InvalidConfigurationError
from ..channel_reaper import (
    REAP_INTERVAL_S,
    destroy_expired_channels,
    find_expired_channels,
    forget_unique_keys,
    unused_channels,
)
from ..futex import wake_all_channels
from ..procinfo import ExitWaiter, is_process_alive, process_start_time
from ..runtime.ctrlc import register_ctrlc_callback
from ..runtime.launch import add_config_arguments, config_from_arguments
from ..runtime.service_support import host_name, read_json, setup_service_logging, write_json_atomic

_log = logging.getLogger("fluxon.owner")

#: Seconds between heartbeats / reaping passes (a member process that exits triggers a
#: pass at once, through its pidfd).
LOOP_INTERVAL_S = 1.0
#: TTL of the owner's etcd lease; renewed every third of it.
LEASE_TTL_S = 10
#: Seconds between refreshes of the pool statistics published in the owner key.
STATS_INTERVAL_S = 5.0
#: Deadline of each etcd call made by the owner.
ETCD_TIMEOUT_S = 3.0

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_CONFIG = 2
EXIT_ALREADY_OWNED = 3
EXIT_POOL_IN_USE = 4

#: Environment variable naming the group that may attach (files 0660 instead of 0600).
SHM_GROUP_ENV = "FLUXON_SHM_GROUP"


class OwnerAlreadyRunning(RuntimeError):
    """Another live owner holds this pool directory (or this instance key in etcd)."""


class PoolInUse(RuntimeError):
    """The existing pool cannot be adopted (other size or owner) and still holds data."""


def _shm_group() -> int | None:
    """gid of ``$FLUXON_SHM_GROUP`` (a group name or number), or None when unset."""
    raw = os.environ.get(SHM_GROUP_ENV, "").strip()
    if not raw:
        return None
    if raw.isdigit():
        return int(raw)
    import grp

    try:
        return grp.getgrnam(raw).gr_gid
    except KeyError:
        raise InvalidConfigurationError(
            f"{SHM_GROUP_ENV}={raw!r} names no group on this host", config_key=SHM_GROUP_ENV
        ) from None


def _field(member: Any, name: str, default: Any = None) -> Any:
    """Read ``name`` from a reaped-member record (object or dict)."""
    if isinstance(member, dict):
        return member.get(name, default)
    return getattr(member, name, default)


class OwnerService:
    """The owner's state and steps; :func:`run_owner_blocking` drives it.

    Parameters
    ----------
    config : FluxonKvClientConfig or dict
        Owner configuration (``contribute_to_cluster_pool_size.dram > 0`` and
        ``fluxonkv_spec.etcd_addresses``).
    """

    def __init__(self, config: Any) -> None:
        from ..config import FluxonKvClientConfig

        cfg = config if isinstance(config, FluxonKvClientConfig) else FluxonKvClientConfig(config)
        if cfg.is_external or cfg.dram_bytes <= 0:
            raise InvalidConfigurationError(
                "the owner contributes the pool: contribute_to_cluster_pool_size.dram must be > 0",
                config_key="contribute_to_cluster_pool_size.dram",
                config_value=str(cfg.dram_bytes),
            )
        if not cfg.etcd_addresses:
            raise InvalidConfigurationError(
                "the owner needs fluxonkv_spec.etcd_addresses",
                config_key="fluxonkv_spec.etcd_addresses",
            )
        self.cfg = cfg
        self.instance_key: str = cfg.instance_key
        self.cluster_name: str = cfg.cluster_name
        self.share_mem_path: str = os.path.abspath(cfg.share_mem_path)
        self.etcd_addresses: list[str] = list(cfg.etcd_addresses)
        self.sub_cluster = cfg.sub_cluster
        self.size_bytes: int = int(cfg.dram_bytes)
        self.pool_dir = naming.pool_dir(self.share_mem_path, self.cluster_name)
        self.pool_file = naming.pool_file(self.share_mem_path, self.cluster_name)
        self.shared_json = naming.shared_json(self.share_mem_path, self.cluster_name)
        self.pid = os.getpid()
        self.start_time = process_start_time(self.pid)
        self.started_at = time.time()
        self.host = host_name()
        self.pool = None
        self.session = None
        self.lease = None
        self._keepalive = None
        self._published: dict | None = None  # owner record last written to etcd (no time)
        self._lock_fd: int | None = None
        self._created_dirs: list[str] = []
        self._lease_lost = threading.Event()
        self._etcd_jobs: queue.Queue = queue.Queue()
        self._expired_channels: queue.Queue = queue.Queue()
        self._etcd_stop = threading.Event()
        self._etcd_thread: threading.Thread | None = None
        self.reaped_total = 0
        self.shm_gid = _shm_group()
        self.file_mode = 0o600 if self.shm_gid is None else 0o660
        self.dir_mode = 0o700 if self.shm_gid is None else 0o770
        #: Whether :meth:`start` adopted an existing pool (instead of creating one).
        self.adopted = False
        self._started = False
        self._done_suspects: dict[tuple[int, int], int] = {}
        # Passes run on the main loop and, when a member exits, on the deaths thread.
        self._step_lock = threading.Lock()
        self._deaths = ExitWaiter()
        self._deaths_thread: threading.Thread | None = None
        self._member_procs: set = set()  # (pid, start) of the members, for the deaths thread

    # ------------------------------------------------------------- start
    def start(self) -> None:
        """Lock the pool directory, create the pool, register in etcd, write shared.json.

        Raises
        ------
        OwnerAlreadyRunning
            If a live owner holds the pool directory.
        EtcdError
            If etcd is unreachable (everything created so far is removed first).
        """
        try:
            self._lock_pool_dir()
            from ..etcd_client import IDLE_CLOSE_S, connect

            self.session = connect(
                self.etcd_addresses, timeout=ETCD_TIMEOUT_S, idle_close_s=IDLE_CLOSE_S
            )
            self.pool = self._open_pool()
            self._register_etcd()
            self._write_shared_json()
        except BaseException:
            self.shutdown()
            raise
        self._started = True
        self._etcd_thread = threading.Thread(
            target=self._etcd_worker, name="fluxon-owner-etcd", daemon=True
        )
        self._etcd_thread.start()
        self._deaths_thread = threading.Thread(
            target=self._watch_deaths, name="fluxon-owner-deaths", daemon=True
        )
        self._deaths_thread.start()
        _log.info(
            "owner %s of cluster %s ready: pool %s (%d bytes, %s), etcd %s",
            self.instance_key,
            self.cluster_name,
            self.pool_file,
            self.size_bytes,
            "adopted" if self.adopted else "created",
            ",".join(self.etcd_addresses),
        )

    def _open_pool(self) -> Any:
        """Adopt the pool a killed owner left, or create a new one (see module doc)."""
        from ..pool import Pool, PoolNotAdoptable

        try:
            pool = Pool.adopt(
                self.share_mem_path,
                self.cluster_name,
                self.instance_key,
                self.size_bytes,
                mode=self.file_mode,
            )
        except FileNotFoundError:
            pool = None
        except PermissionError as exc:
            raise InvalidConfigurationError(
                f"cannot open the existing pool {self.pool_file}: {exc}",
                config_key="fluxonkv_spec.share_mem_path",
                config_value=self.share_mem_path,
            ) from None
        except PoolNotAdoptable as exc:
            if exc.holds_data:
                raise PoolInUse(
                    f"{exc.message}, and it still holds {exc.holds_data}. Restart this owner "
                    "with the configuration that created it to adopt it, or stop its clients "
                    "first; remove the file by hand only to discard what it holds"
                ) from None
            _log.warning("replacing the existing pool file: %s", exc.message)
            pool = None
        if pool is not None:
            self.adopted = True
            self._apply_group(self.pool_file)
            _log.info(
                "adopted the pool %s left by a dead owner: %s",
                self.pool_file,
                pool.contents_summary() or "it holds nothing",
            )
            return pool
        pool = Pool.create(
            self.share_mem_path,
            self.cluster_name,
            self.instance_key,
            self.size_bytes,
            mode=self.file_mode,
        )
        self._apply_group(self.pool_file)
        return pool

    def _apply_group(self, path: str) -> None:
        """Give ``path`` to the configured group (no-op without ``FLUXON_SHM_GROUP``)."""
        if self.shm_gid is not None:
            os.chown(path, -1, self.shm_gid)
            os.chmod(path, self.file_mode)

    def _lock_pool_dir(self) -> None:
        for directory in (self.share_mem_path, self.pool_dir):
            if not os.path.isdir(directory):
                try:
                    os.makedirs(directory, mode=self.dir_mode)
                    self._created_dirs.append(directory)
                except FileExistsError:
                    pass
        if self.shm_gid is not None:
            for directory in (self.pool_dir, *self._created_dirs):
                os.chown(directory, -1, self.shm_gid)
                os.chmod(directory, self.dir_mode)
        fd = os.open(self.pool_dir, os.O_RDONLY | os.O_DIRECTORY)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(fd)
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
                raise OwnerAlreadyRunning(self._already_owned_text()) from None
            raise
        self._lock_fd = fd
        # A previous owner that did not take the lock (or a foreign tool) may still be alive.
        shared = read_json(self.shared_json)
        if isinstance(shared, dict):
            pid, start = shared.get("owner_pid"), shared.get("owner_start_time")
            if isinstance(pid, int) and pid != self.pid and is_process_alive(pid, start):
                raise OwnerAlreadyRunning(self._already_owned_text())
            _log.info("removing the shared.json of a dead owner (pid %s)", pid)
            self._remove_file(self.shared_json)

    def _already_owned_text(self) -> str:
        shared = read_json(self.shared_json)
        who = ""
        if isinstance(shared, dict):
            who = f" (owner {shared.get('owner_id')!r}, pid {shared.get('owner_pid')})"
        return (
            f"another live owner already owns {self.pool_dir}{who}; stop it first "
            "(`python -m fluxon down`) or use another share_mem_path/cluster_name"
        )

    def _owner_record(self) -> dict:
        record = {
            "owner_id": self.instance_key,
            "pid": self.pid,
            "start_time": self.start_time,
            "host": self.host,
            "cluster_name": self.cluster_name,
            "sub_cluster": self.sub_cluster,
            "share_mem_path": self.share_mem_path,
            "pool_file": self.pool_file,
            "segment_len": self.size_bytes,
            "layout_version": fluxon_kernels.LAYOUT_VERSION,
            "started_at": self.started_at,
        }
        pool = self.pool
        if pool is not None and not pool.closed:
            try:
                record["heap_bytes"] = pool.heap_bytes()
                record["free_bytes"] = pool.free_bytes()
                record["attached_members"] = len(pool.members())
            except Exception as exc:  # noqa: BLE001 - statistics are best effort
                _log.debug("pool statistics unavailable: %r", exc)
        record["published_at"] = time.time()
        return record

    def _member_record(self) -> dict:
        return {
            "instance_key": self.instance_key,
            "kind": "owner",
            "pid": self.pid,
            "start_time": self.start_time,
            "host": self.host,
            "owner_id": self.instance_key,
            "sub_cluster": self.sub_cluster,
            "started_at": self.started_at,
        }

    def _claim_key(self, key: str, value: bytes, lease: Any) -> None:
        """Create ``key`` under ``lease``; take it over only from a dead process of this host."""
        session = self.session
        if session.put_if_absent(key, value, lease=lease):
            return
        previous = session.get(key)
        try:
            rec = orjson.loads(previous) if previous is not None else None
        except orjson.JSONDecodeError:
            rec = None
        if isinstance(rec, dict):
            pid, start = rec.get("pid"), rec.get("start_time")
            same_host = rec.get("host") in (None, self.host)
            live = isinstance(pid, int) and is_process_alive(pid, start)
            if pid != self.pid and (not same_host or live):
                raise OwnerAlreadyRunning(
                    f"etcd key {key} is held by a live process (host {rec.get('host')}, "
                    f"pid {pid}): instance_key {self.instance_key!r} is already in use in cluster "
                    f"{self.cluster_name!r}"
                )
        session.put(key, value, lease=lease)

    def _register_etcd(self) -> None:
        session = self.session
        lease = session.grant_lease(LEASE_TTL_S)
        self.lease = lease
        record = self._owner_record()
        self._claim_key(
            naming.owner_key(self.cluster_name, self.instance_key), orjson.dumps(record), lease
        )
        self._published = _statistics(record)
        self._claim_key(
            naming.member_key(self.cluster_name, self.instance_key),
            orjson.dumps(self._member_record()),
            lease,
        )
        self._lease_lost.clear()
        self._keepalive = session.keepalive(
            lease,
            LEASE_TTL_S / 3.0,
            on_lost=lambda _id: self._wake_etcd_worker(self._lease_lost),
            name="fluxon-owner-lease",
        )

    def _write_shared_json(self) -> None:
        pool = self.pool
        now_ms = int(time.time() * 1000)
        data = {
            "owner_id": self.instance_key,
            "owner_pid": self.pid,
            "owner_start_time": self.start_time,
            "node_start_time": int(self.started_at * 1000),
            "segment_len": pool.size,
            "pool_file": self.pool_file,
            "cluster_name": self.cluster_name,
            "share_mem_path": self.share_mem_path,
            "sub_cluster": self.sub_cluster,
            "etcd_addresses": self.etcd_addresses,
            "layout_version": fluxon_kernels.LAYOUT_VERSION,
            "host": self.host,
            "write_ts": now_ms,
        }
        write_json_atomic(self.shared_json, data, mode=self.file_mode)
        self._apply_group(self.shared_json)

    # ------------------------------------------------------------- steady state
    def step(self) -> list:
        """One heartbeat + reaping pass; returns the members reaped in it."""
        with self._step_lock:
            return self._step()

    def _watch_deaths(self) -> None:
        """Side thread: sleeps on the members' pidfds and runs a pass as soon as one exits
        (the main loop's pass a second finds members that come and go in between)."""
        deaths = self._deaths
        try:
            while not self._etcd_stop.is_set():
                deaths.watch(self._member_procs)
                if deaths.wait(None) and not self._etcd_stop.is_set():
                    self.step()
        except Exception:  # noqa: BLE001 - the main loop's passes still reap
            _log.exception(
                "member exit watcher failed; reaping continues every %s s", LOOP_INTERVAL_S
            )
        finally:
            deaths.close()

    def _step(self) -> list:
        pool = self.pool
        pool.heartbeat()
        reaped = pool.reap_dead_members()
        me = self.pid
        procs = {(m.pid, m.start_time or None) for m in pool.members() if m.pid != me}
        if procs != self._member_procs:
            self._member_procs = procs
            self._deaths.wake()  # watch the new set
        if reaped:
            # repair re-queued messages and freed slots: wake sleepers now, not at
            # their next timeout slice
            wake_all_channels(pool)
        self._destroy_expired_channels()
        self._heal_done_counts()
        for member in reaped:
            self.reaped_total += 1
            name = _field(member, "name", "")
            pid = _field(member, "pid")
            kind = _field(member, "kind_name", None) or _field(member, "kind")
            _log.info(
                "reaped dead member %r (pid %s, kind %s, slot %s): its locks, blocks and slot "
                "are free",
                name,
                pid,
                kind,
                _field(member, "slot"),
            )
            if name and name != self.instance_key:
                self._etcd_jobs.put(("delete_member", name, pid))
        return reaped

    def _heal_done_counts(self) -> None:
        """Set right the delivered count (``DONE``) of retired producers that a consumer
        killed between freeing a slot and counting it left one short; only counts seen
        lagging with the same value on two looks a second apart are touched."""
        pool = self.pool
        current = pool.done_shortfalls()
        for (c, e), seen in current.items():
            if self._done_suspects.get((c, e)) == seen and pool.heal_done(c, e, seen):
                _log.info(
                    "channel entry %d, producer entry %d: delivered count was left short "
                    "by a consumer killed while completing a message; set right",
                    c,
                    e,
                )
        self._done_suspects = current

    def _destroy_expired_channels(self) -> None:
        """Main loop: destroy channels the etcd thread found expired (same thread as
        the member repair, so no repair ever walks a channel being destroyed)."""
        try:
            expired = self._expired_channels.get_nowait()
        except queue.Empty:
            return
        destroyed = destroy_expired_channels(self.pool, expired)
        if destroyed:
            _log.info("reclaimed %d expired channel(s): entries %s", len(destroyed), destroyed)
            chan_ids = [chan_id for entry, chan_id in expired if entry in destroyed]
            self._etcd_jobs.put(("forget_unique_keys", chan_ids, None))

    def _etcd_worker(self) -> None:
        """Side thread: dead members' etcd keys, lease re-registration, pool statistics,
        finding channels whose lease expired (every member gone for ttl_seconds)."""
        next_stats = time.monotonic() + STATS_INTERVAL_S
        next_reap = time.monotonic() + REAP_INTERVAL_S
        while not self._etcd_stop.is_set():
            # Sleep until a job comes (stop and a lost lease send one too) or the next
            # periodic check is due.
            left = min(next_reap, next_stats) - time.monotonic()
            try:
                job = self._etcd_jobs.get(timeout=max(0.05, left))
            except queue.Empty:
                job = None
            if self._etcd_stop.is_set():
                return
            try:
                if job is not None and job[0] == "delete_member":
                    self._delete_dead_member_key(job[1], job[2])
                elif job is not None and job[0] == "forget_unique_keys":
                    forget_unique_keys(self.session, self.cluster_name, job[1])
                if time.monotonic() >= next_reap:
                    # Only channels nobody is attached to can expire: while there are
                    # none, look again at the slower pace of the statistics.
                    unused = unused_channels(self.pool)
                    next_reap = time.monotonic() + (REAP_INTERVAL_S if unused else STATS_INTERVAL_S)
                    if unused:
                        expired = find_expired_channels(
                            self.pool, self.session, self.cluster_name, candidates=unused
                        )
                        if expired:
                            self._expired_channels.put(expired)
                if self._lease_lost.is_set():
                    _log.warning("owner lease expired during an etcd outage; registering again")
                    if self._keepalive is not None:
                        self._keepalive.stop()
                    self._register_etcd()
                    _log.info("owner registered again in etcd")
                if time.monotonic() >= next_stats:
                    next_stats = time.monotonic() + STATS_INTERVAL_S
                    record = self._owner_record()
                    published = _statistics(record)
                    # Unchanged statistics are not written again: an idle owner makes no
                    # etcd call, so its gRPC channel can close (see IDLE_CLOSE_S).
                    if not self._lease_lost.is_set() and published != self._published:
                        self.session.put(
                            naming.owner_key(self.cluster_name, self.instance_key),
                            orjson.dumps(record),
                            lease=self.lease,
                        )
                        self._published = published
            except EtcdError as exc:
                _log.warning("etcd bookkeeping deferred: %s", exc)
            except ApiError as exc:
                _log.error("etcd bookkeeping failed: %s", exc)

    def _wake_etcd_worker(self, flag: threading.Event) -> None:
        """Set ``flag`` and wake the etcd thread to act on it."""
        flag.set()
        self._etcd_jobs.put(("wake", None, None))

    def _delete_dead_member_key(self, name: str, pid: Any) -> None:
        key = naming.member_key(self.cluster_name, name)
        previous = self.session.get(key)
        if previous is None:
            return
        try:
            rec = orjson.loads(previous)
        except orjson.JSONDecodeError:
            rec = {}
        # A new process may already have taken the instance key: delete only the dead one's.
        if isinstance(rec, dict) and rec.get("pid") not in (None, pid):
            return
        if self.session.delete_if_value(key, previous):
            _log.info("deleted etcd member key of dead member %r", name)

    # ------------------------------------------------------------- stop
    def shutdown(self) -> None:
        """Tear everything down (idempotent; each step bounded and best effort)."""
        self._wake_etcd_worker(self._etcd_stop)
        self._deaths.wake()
        if self._etcd_thread is not None and self._etcd_thread is not threading.current_thread():
            self._etcd_thread.join(timeout=ETCD_TIMEOUT_S + 1.0)
        if self._deaths_thread is None:
            self._deaths.close()
        elif self._deaths_thread is not threading.current_thread():
            self._deaths_thread.join(timeout=ETCD_TIMEOUT_S + 1.0)
        pool = self.pool
        # A pool adopted by a start that then failed (etcd unreachable, ...) is left
        # as it was, clients and all, for the next start to adopt.
        keep_pool = self.adopted and not self._started
        if pool is not None and not pool.closed and not keep_pool:
            pool.mark_closing()
        if self._keepalive is not None:
            self._keepalive.stop()
        session, self.session = self.session, None
        if session is not None:
            if self.lease is not None:
                try:
                    session.delete(naming.member_key(self.cluster_name, self.instance_key))
                    session.delete(naming.owner_key(self.cluster_name, self.instance_key))
                    session.revoke(self.lease)
                except ApiError as exc:
                    _log.warning(
                        "etcd unreachable during shutdown; keys expire with the lease: %s", exc
                    )
            session.close()
        if pool is not None:
            if self._lock_fd is not None:
                self._remove_file(self.shared_json)
            pool.close()
            if not keep_pool:
                pool.unlink()
            self.pool = None
        if self._lock_fd is not None:
            for directory in (self.pool_dir, *reversed(self._created_dirs)):
                if directory == self.share_mem_path and directory not in self._created_dirs:
                    continue
                try:
                    os.rmdir(directory)
                except OSError:
                    pass  # not empty (other files, other clusters) or already gone
            os.close(self._lock_fd)
            self._lock_fd = None
        else:
            for directory in reversed(self._created_dirs):
                try:
                    os.rmdir(directory)
                except OSError:
                    pass
        self._created_dirs = []

    @staticmethod
    def _remove_file(path: str) -> None:
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass


def _statistics(record: dict) -> dict:
    """The owner record without its publication time (what a re-publication compares)."""
    return {k: v for k, v in record.items() if k != "published_at"}


def run_owner_blocking(
    config: Any,
    *,
    log_dir: str | None = None,
    stop_event: threading.Event | None = None,
    install_signal_handlers: bool = True,
) -> int:
    """Run the owner in this process until SIGINT/SIGTERM (or ``stop_event``).

    Parameters
    ----------
    config : FluxonKvClientConfig or dict
        Owner configuration (dram > 0, etcd addresses).
    log_dir : str, optional
        Also log to ``{log_dir}/owner-{cluster_name}.log``.
    stop_event : threading.Event, optional
        Set it to stop the owner from another thread.
    install_signal_handlers : bool
        Stop on SIGINT/SIGTERM (via :func:`fluxon.runtime.register_ctrlc_callback`).

    Returns
    -------
    int
        Exit status: 0 after a clean stop, 2 for a bad config, 3 if another owner owns
        the pool directory, 4 if the existing pool cannot be adopted and still holds
        data, 1 for other failures (e.g. etcd unreachable, no room for the pool).
    """
    stop = stop_event or threading.Event()
    restore = (
        register_ctrlc_callback(lambda reason: stop.set(), thread_name="fluxon-owner-ctrlc")
        if install_signal_handlers
        else None
    )
    try:
        try:
            owner = OwnerService(config)
        except InvalidConfigurationError as exc:
            _log.error("bad owner configuration: %s", exc)
            return EXIT_CONFIG
        if log_dir:
            setup_service_logging(f"owner-{owner.cluster_name}", log_dir)
        try:
            owner.start()
        except OwnerAlreadyRunning as exc:
            _log.error("%s", exc)
            return EXIT_ALREADY_OWNED
        except PoolInUse as exc:
            _log.error("owner cannot start: %s", exc)
            return EXIT_POOL_IN_USE
        except InvalidConfigurationError as exc:
            _log.error("owner cannot start: %s", exc)
            return EXIT_CONFIG
        except EtcdError as exc:
            _log.error("owner cannot start: etcd is unreachable: %s", exc)
            return EXIT_ERROR
        except ApiError as exc:
            _log.error("owner cannot start: %s", exc)
            return EXIT_ERROR
        try:
            interval = LOOP_INTERVAL_S
            while not stop.wait(interval):
                try:
                    owner.step()
                    interval = LOOP_INTERVAL_S
                except Exception:  # noqa: BLE001 - keep the pool alive; a bug here must be loud
                    _log.exception("owner step failed; retrying in 1 s")
                    interval = 1.0
        finally:
            _log.info("owner %s stopping", owner.instance_key)
            owner.shutdown()
        _log.info(
            "owner %s stopped (reaped %d dead member(s))", owner.instance_key, owner.reaped_total
        )
        return EXIT_OK
    finally:
        if restore is not None:
            restore()


def main(argv: list[str] | None = None) -> int:
    """``python -m fluxon.service.owner --config-b64 B64 | --config PATH [--log-dir DIR]``."""
    parser = argparse.ArgumentParser(
        prog="python -m fluxon.service.owner", description=__doc__.split("\n")[0]
    )
    add_config_arguments(parser)
    parser.add_argument("--log-dir", default=None, help="also write owner logs to this directory")
    args = parser.parse_args(argv)
    setup_service_logging("owner")
    try:
        config = config_from_arguments(args)
    except (OSError, ValueError, TypeError) as exc:
        _log.error("cannot read the owner config: %s", exc)
        return EXIT_CONFIG
    return run_owner_blocking(config, log_dir=args.log_dir)


if __name__ == "__main__":
    sys.exit(main())
