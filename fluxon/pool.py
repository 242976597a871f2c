"""The shared-memory pool: creation and adoption (owner), attachment (clients), member table.

Only the owner creates, adopts and unlinks the pool file; clients attach and close.
Every process maps the whole file ``MAP_SHARED`` and views it twice: ``b`` (uint8) for
payload bytes and ``w`` (int64) for words the kernels update atomically.

A restarted owner *adopts* the pool its killed predecessor left (:meth:`Pool.adopt`):
same cluster, layout version, size and owner instance key, and a region table and
tables that pass :func:`find_corruption`. It records its own pid in the header, so
attached clients see a live owner again and carry on; members that died meanwhile
are reaped by its first pass. A pool that fails those checks is not adopted.
"""

from __future__ import annotations

import mmap
import os
import stat
import time
from dataclasses import dataclass

import numpy as np

import fluxon_kernels
from fluxon_kernels import channel as kchan
from fluxon_kernels import heap as kheap
from fluxon_kernels import kv as kkv
from fluxon_kernels import pool as kpool
from fluxon_kernels import status
from fluxon_kernels.layout import channel as cl
from fluxon_kernels.layout import kv_bucket as kb
from fluxon_kernels.layout import member as ml
from fluxon_kernels.layout import pool_header as ph
from fluxon_kernels.layout.heap import CHAN_TAG_BASE, KV_TAG_BASE, REF_LEN_BITS, REF_LEN_MASK
from fluxon_kernels.layout.sizing import MIN_POOL_BYTES, compute_layout

from . import naming
from .api_error import ApiError, InternalError, InvalidConfigurationError, StorageFullError
from .procinfo import is_process_alive, process_start_time

#: MAP_POPULATE pre-faults the whole mapping at attach (about 30 ms per 512 MiB here)
#: instead of one minor fault per 4 KiB page on first touch (about 2 us each), which
#: would otherwise dominate every large message until the process had touched the
#: whole pool once.
_MAP_FLAGS = mmap.MAP_SHARED | getattr(mmap, "MAP_POPULATE", 0)


@dataclass(frozen=True)
class MemberInfo:
    """One occupied slot of the member table."""

    slot: int
    pid: int
    start_time: int
    kind: int
    generation: int
    heartbeat_ns: int
    name: str

    @property
    def tag(self) -> int:
        """Tag carried by the heap units and KV locks this member holds."""
        return ml.member_tag(self.slot)

    @property
    def kind_name(self) -> str:
        """``owner`` or ``external``."""
        return {ml.KIND_OWNER: "owner", ml.KIND_EXTERNAL: "external"}.get(self.kind, "unknown")

    def to_dict(self) -> dict:
        """JSON-friendly form."""
        return {
            "slot": self.slot,
            "pid": self.pid,
            "start_time": self.start_time,
            "kind": self.kind_name,
            "generation": self.generation,
            "heartbeat_ns": self.heartbeat_ns,
            "name": self.name,
        }


class PoolNotAdoptable(InternalError):
    """An existing pool file that a starting owner must not adopt.

    ``holds_data`` describes what a *valid* pool still holds (live members, channels,
    KV keys; empty when idle or when the file is not a usable pool at all), so the
    owner can refuse to replace a pool that other processes still rely on.
    """

    def __init__(self, message: str, holds_data: str = "") -> None:
        super().__init__(message, component="pool")
        self.holds_data = holds_data


def _encode_str(value: str, limit: int, what: str) -> bytes:
    raw = value.encode("utf-8")
    if len(raw) > limit:
        raise InvalidConfigurationError(
            f"{what} is {len(raw)} bytes long; at most {limit} are allowed", config_key=what
        )
    return raw


class Pool:
    """A mapped pool file. Use :meth:`create` (owner) or :meth:`attach` (client)."""

    def __init__(self, path: str, fd: int, mm: mmap.mmap, *, is_creator: bool) -> None:
        self.path = path
        self._fd = fd
        self._mm = mm
        self.is_creator = is_creator
        self.b = np.frombuffer(mm, dtype=np.uint8)
        # A pool size need not be a multiple of 8 (a config may say "20000001"); the
        # word view stops at the last whole word.
        self.w = self.b[: self.b.shape[0] // 8 * 8].view(np.int64)
        st = os.fstat(fd)
        #: ``(st_dev, st_ino)`` of the mapped file: a different file at :attr:`path`
        #: means the pool was removed or replaced (see :meth:`is_current`).
        self.ident = (st.st_dev, st.st_ino)
        self._closed = False

    # ----------------------------------------------------------- creation
    @classmethod
    def create(
        cls,
        share_mem_path: str,
        cluster_name: str,
        owner_id: str,
        size_bytes: int,
        mode: int = 0o600,
    ) -> "Pool":
        """Create and initialise the pool file (owner only).

        Parameters
        ----------
        share_mem_path, cluster_name : str
            Where the pool lives: ``{share_mem_path}/{cluster_name}/mmap.file``.
        owner_id : str
            The owner's instance key, recorded in the header.
        size_bytes : int
            Pool size (the owner's DRAM contribution).
        mode : int
            File mode (0600, or 0660 with a configured group).

        Returns
        -------
        Pool
            The mapped, ready pool.
        """
        if size_bytes < MIN_POOL_BYTES:
            raise InvalidConfigurationError(
                f"pool size {size_bytes} bytes is below the minimum {MIN_POOL_BYTES}",
                config_key="contribute_to_cluster_pool_size.dram",
                config_value=str(size_bytes),
            )
        layout = compute_layout(size_bytes)
        name_raw = _encode_str(cluster_name, ph.CLUSTER_NAME_MAX, "fluxonkv_spec.cluster_name")
        owner_raw = _encode_str(owner_id, ph.OWNER_ID_MAX, "instance_key")
        directory = naming.pool_dir(share_mem_path, cluster_name)
        os.makedirs(directory, mode=0o700, exist_ok=True)
        path = naming.pool_file(share_mem_path, cluster_name)
        if os.path.exists(path):
            os.unlink(path)  # the owner checked that no live owner holds this directory
        fs = os.statvfs(directory)
        available = fs.f_bavail * fs.f_frsize
        if size_bytes > available:
            raise StorageFullError(
                f"cannot create a {size_bytes}-byte pool in {directory}: "
                f"only {available} bytes are free there"
            )
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, mode)
        try:
            os.fchmod(fd, mode)
            try:
                os.posix_fallocate(fd, 0, size_bytes)
            except OSError as exc:
                raise StorageFullError(
                    f"cannot reserve {size_bytes} bytes for the pool in {directory}: {exc}"
                ) from exc
            mm = mmap.mmap(fd, size_bytes, _MAP_FLAGS, mmap.PROT_READ | mmap.PROT_WRITE)
        except BaseException:
            os.close(fd)
            os.unlink(path)
            raise
        pool = cls(path, fd, mm, is_creator=True)
        w, b = pool.w, pool.b
        for word, value in layout.items():
            w[word] = value
        w[ph.W_LAYOUT_VERSION] = fluxon_kernels.LAYOUT_VERSION
        w[ph.W_OWNER_PID] = os.getpid()
        w[ph.W_OWNER_START] = process_start_time(os.getpid()) or 0
        w[ph.W_CREATED_NS] = time.time_ns()
        w[ph.W_OWNER_HEARTBEAT_NS] = time.monotonic_ns()
        w[ph.W_CLUSTER_NAME_LEN] = len(name_raw)
        b[ph.CLUSTER_NAME_OFF : ph.CLUSTER_NAME_OFF + len(name_raw)] = np.frombuffer(
            name_raw, np.uint8
        )
        w[ph.W_OWNER_ID_LEN] = len(owner_raw)
        b[ph.OWNER_ID_OFF : ph.OWNER_ID_OFF + len(owner_raw)] = np.frombuffer(owner_raw, np.uint8)
        kpool.pool_publish_ready(w)
        pool._warm_up_repair_kernels()
        return pool

    def _warm_up_repair_kernels(self) -> None:
        """Compile (or load from the cache) the owner's repair kernels now, not at the
        first death, so the first reaping is as quick as every later one."""
        never = 1 << 62  # a tag no member, bucket or channel can carry
        kkv.kv_repair_dead(self.b, self.w, never)
        kchan.chan_repair_dead(self.b, self.w, never)
        kheap.heap_reclaim_tag(self.w, never)
        kheap.heap_free_units(self.w)
        self.done_shortfalls()
        kchan.chan_heal_done(self.w, 0, 0, -1)  # -1: never a value to heal from

    @classmethod
    def adopt(
        cls,
        share_mem_path: str,
        cluster_name: str,
        owner_id: str,
        size_bytes: int,
        mode: int = 0o600,
    ) -> "Pool":
        """Take over the pool a dead owner left behind (owner only, under the dir lock).

        The file must be a ready pool of this cluster and layout version, of exactly
        ``size_bytes``, created by the same owner instance key, with a consistent
        region table and tables (:func:`find_corruption`). Clients may still be
        attached and working: nothing they rely on is changed. The header gets this
        process's pid and start time (attached clients see a live owner again) and
        the closing mark is cleared; members that died meanwhile are left for the
        owner's first reaping pass.

        Parameters
        ----------
        share_mem_path, cluster_name : str
            Where the pool lives.
        owner_id : str
            This owner's instance key (must match the header's).
        size_bytes : int
            This owner's DRAM contribution (must match the file's size).
        mode : int
            File mode to enforce on the adopted file.

        Returns
        -------
        Pool
            The mapped pool, owned by this process.

        Raises
        ------
        FileNotFoundError
            If there is no pool file (create one).
        PoolNotAdoptable
            If the file is not a usable pool (``holds_data`` empty) or is a valid pool
            of another size or owner instance key (``holds_data`` says whether it
            still holds anything).
        """
        path = naming.pool_file(share_mem_path, cluster_name)
        fd = os.open(path, os.O_RDWR | os.O_NOFOLLOW)
        try:
            info = os.fstat(fd)
            if not stat.S_ISREG(info.st_mode):
                raise PoolNotAdoptable(f"{path} is not a regular file")
            size = info.st_size
            if size < MIN_POOL_BYTES:
                raise PoolNotAdoptable(f"{path} is truncated ({size} bytes)")
            mm = mmap.mmap(fd, size, _MAP_FLAGS, mmap.PROT_READ | mmap.PROT_WRITE)
        except BaseException:
            os.close(fd)
            raise
        pool = cls(path, fd, mm, is_creator=True)
        try:
            try:
                pool._check_header(cluster_name, size, 0.0)
            except ApiError as exc:
                raise PoolNotAdoptable(exc.message) from None
            problem = pool.find_lasting_corruption()
            if problem is not None:
                raise PoolNotAdoptable(f"pool {path} is corrupt: {problem}")
            mismatch = []
            if size != size_bytes:
                mismatch.append(
                    f"it has {size} bytes but this owner contributes {size_bytes} "
                    "(contribute_to_cluster_pool_size.dram)"
                )
            if pool.owner_id != owner_id:
                mismatch.append(
                    f"it was created by owner {pool.owner_id!r}, not {owner_id!r} (instance_key)"
                )
            if mismatch:
                raise PoolNotAdoptable(
                    f"pool {path} cannot be adopted: " + "; ".join(mismatch),
                    holds_data=pool.contents_summary(),
                )
            os.fchmod(fd, mode)
            pid = os.getpid()
            # SYNC POINT: clients read OWNER_PID then OWNER_START (owner_state); a torn
            # pair reads as "owner down" for one watchdog tick, never as a wrong owner.
            pool.w[ph.W_OWNER_START] = process_start_time(pid) or 0
            pool.w[ph.W_OWNER_PID] = pid
            pool.w[ph.W_OWNER_HEARTBEAT_NS] = time.monotonic_ns()
            pool.w[ph.W_CLOSING] = 0
            pool._warm_up_repair_kernels()
        except BaseException:
            pool.close()
            raise
        return pool

    def find_lasting_corruption(self, checks: int = 3, pause_s: float = 0.05) -> str | None:
        """:func:`find_corruption`, confirmed: the same problem seen ``checks`` times.

        Processes working on the pool meanwhile can make one reading look
        inconsistent (a word read while another process rewrites its neighbours); a
        real corruption stays put, a moving snapshot does not.
        """
        problem = find_corruption(self)
        for _ in range(checks - 1):
            if problem is None:
                return None
            time.sleep(pause_s)
            again = find_corruption(self)
            if again != problem:
                return None
        return problem

    def contents_summary(self) -> str:
        """What the pool holds that a replacement would lose ("" when idle).

        Counts members whose process is alive, active channels and KV keys.
        """
        live = [m for m in self.members() if is_process_alive(m.pid, m.start_time or None)]
        w = self.w
        chan_base = int(w[ph.W_CHAN_OFF]) // 8
        chan_stride = int(w[ph.W_CHAN_STRIDE]) // 8
        states = w[chan_base + cl.C_STATE :: chan_stride][: int(w[ph.W_CHAN_COUNT])]
        channels = int(np.count_nonzero(states == cl.CHAN_ACTIVE))
        kv_base = int(w[ph.W_KV_OFF]) // 8
        kv_stride = int(w[ph.W_KV_STRIDE]) // 8
        kv_states = w[kv_base + kb.B_STATE :: kv_stride][: int(w[ph.W_KV_BUCKETS])]
        keys = int(np.count_nonzero(kv_states == kb.STATE_FULL))
        parts = []
        if live:
            pids = ", ".join(str(m.pid) for m in live[:8])
            parts.append(f"{len(live)} live client(s) (pids {pids})")
        if channels:
            parts.append(f"{channels} channel(s)")
        if keys:
            parts.append(f"{keys} KV key(s)")
        return ", ".join(parts)

    @classmethod
    def attach(cls, share_mem_path: str, cluster_name: str, wait_ready_s: float = 2.0) -> "Pool":
        """Map an existing pool (client side) and check it belongs to this cluster and layout.

        The header must be ready and of this cluster and layout version, and the
        tables must pass :func:`find_corruption` (a corrupt pool is refused here rather
        than crashing a kernel later).

        Parameters
        ----------
        share_mem_path, cluster_name : str
            Where the owner created the pool.
        wait_ready_s : float
            How long to wait for a pool that is still being initialised.

        Returns
        -------
        Pool
            The mapped pool.
        """
        path = naming.pool_file(share_mem_path, cluster_name)
        try:
            fd = os.open(path, os.O_RDWR)
        except FileNotFoundError:
            raise InvalidConfigurationError(
                f"no pool at {path}: is an owner running for cluster {cluster_name!r} "
                f"with share_mem_path {share_mem_path!r}?",
                config_key="fluxonkv_spec.cluster_name",
                config_value=cluster_name,
            ) from None
        except PermissionError as exc:
            raise InvalidConfigurationError(
                f"no permission to open the pool {path}: {exc}",
                config_key="fluxonkv_spec.share_mem_path",
                config_value=share_mem_path,
            ) from None
        try:
            size = os.fstat(fd).st_size
            if size < ph.HEADER_BYTES:
                raise InternalError(
                    f"pool file {path} is truncated ({size} bytes)", component="pool"
                )
            mm = mmap.mmap(fd, size, _MAP_FLAGS, mmap.PROT_READ | mmap.PROT_WRITE)
        except BaseException:
            os.close(fd)
            raise
        pool = cls(path, fd, mm, is_creator=False)
        try:
            pool._check_header(cluster_name, size, wait_ready_s)
            problem = pool.find_lasting_corruption()
            if problem is not None:
                raise InternalError(
                    f"pool {path} is corrupt: {problem}; restart its owner (it replaces a "
                    "corrupt pool)",
                    component="pool",
                )
        except BaseException:
            pool.close()
            raise
        return pool

    def _check_header(self, cluster_name: str, size: int, wait_ready_s: float) -> None:
        deadline = time.monotonic() + wait_ready_s
        while not kpool.pool_is_ready(self.w):
            if time.monotonic() >= deadline:
                raise InternalError(
                    f"pool {self.path} is not initialised (bad magic): not a fluxon pool, "
                    "or its owner died while creating it",
                    component="pool",
                )
            time.sleep(0.01)
        version = int(self.w[ph.W_LAYOUT_VERSION])
        if version != fluxon_kernels.LAYOUT_VERSION:
            raise InternalError(
                f"pool {self.path} has layout version {version}; this fluxon speaks "
                f"{fluxon_kernels.LAYOUT_VERSION}: restart the owner with the same fluxon version",
                component="pool",
            )
        if int(self.w[ph.W_POOL_SIZE]) != size:
            raise InternalError(
                f"pool {self.path} header says {int(self.w[ph.W_POOL_SIZE])} bytes but the file "
                f"has {size}",
                component="pool",
            )
        if self.cluster_name != cluster_name:
            raise InvalidConfigurationError(
                f"pool {self.path} belongs to cluster {self.cluster_name!r}, not {cluster_name!r}",
                config_key="fluxonkv_spec.cluster_name",
                config_value=cluster_name,
            )
        try:
            compute_layout(size, int(self.w[ph.W_UNIT_SIZE]))
        except ValueError as exc:
            raise InternalError(f"pool {self.path} has a corrupt header: {exc}", component="pool")
        expected = compute_layout(size, int(self.w[ph.W_UNIT_SIZE]))
        for word, value in expected.items():
            if int(self.w[word]) != value:
                raise InternalError(
                    f"pool {self.path} has a corrupt region table (word {word})", component="pool"
                )

    # ----------------------------------------------------------- header facts
    def _header_str(self, len_word: int, off: int, limit: int) -> str:
        n = min(max(int(self.w[len_word]), 0), limit)
        return bytes(self.b[off : off + n]).decode("utf-8", errors="replace")

    @property
    def cluster_name(self) -> str:
        """Cluster name recorded by the owner."""
        return self._header_str(ph.W_CLUSTER_NAME_LEN, ph.CLUSTER_NAME_OFF, ph.CLUSTER_NAME_MAX)

    @property
    def owner_id(self) -> str:
        """The owner's instance key."""
        return self._header_str(ph.W_OWNER_ID_LEN, ph.OWNER_ID_OFF, ph.OWNER_ID_MAX)

    @property
    def size(self) -> int:
        """Pool size in bytes."""
        return int(self.w[ph.W_POOL_SIZE])

    @property
    def owner_pid(self) -> int:
        """The owner's pid."""
        return int(self.w[ph.W_OWNER_PID])

    @property
    def owner_start(self) -> int:
        """The owner's start time (``/proc`` clock ticks; with the pid, its identity)."""
        return int(self.w[ph.W_OWNER_START])

    def owner_alive(self) -> bool:
        """Whether the owner process that created the pool still runs and is not closing."""
        if self.w[ph.W_CLOSING]:
            return False
        return is_process_alive(self.owner_pid, self.owner_start)

    def owner_state(self) -> str:
        """``"alive"``, ``"closing"`` (the owner is stopping: the pool goes away) or
        ``"dead"`` (the owner process recorded in the header is gone; a restarted
        owner may adopt the pool and record itself)."""
        if self.w[ph.W_CLOSING]:
            return "closing"
        pid = int(self.w[ph.W_OWNER_PID])
        start = int(self.w[ph.W_OWNER_START])
        return "alive" if is_process_alive(pid, start or None) else "dead"

    def is_current(self) -> bool:
        """Whether :attr:`path` still names the file this process has mapped.

        False once the owner removed the pool (clean stop) or replaced it with a new
        file: this mapping then no longer reaches anyone else.
        """
        try:
            st = os.stat(self.path)
        except OSError:
            return False
        return (st.st_dev, st.st_ino) == self.ident

    def heap_bytes(self) -> int:
        """Total bytes of the payload heap."""
        return int(self.w[ph.W_HEAP_UNITS]) * int(self.w[ph.W_UNIT_SIZE])

    def free_bytes(self) -> int:
        """Bytes of the heap not held by anyone (exact when quiescent)."""
        return int(kheap.heap_free_units(self.w)) * int(self.w[ph.W_UNIT_SIZE])

    def max_value_bytes(self) -> int:
        """Largest block the heap could ever hold."""
        return self.heap_bytes()

    # ----------------------------------------------------------- owner duties
    def heartbeat(self) -> None:
        """Owner: publish liveness (monotonic ns)."""
        self.w[ph.W_OWNER_HEARTBEAT_NS] = time.monotonic_ns()

    def mark_closing(self) -> None:
        """Owner: tell attached clients the owner is shutting down."""
        self.w[ph.W_CLOSING] = 1

    # ----------------------------------------------------------- member table
    def _slot_base(self, slot: int) -> int:
        return (int(self.w[ph.W_MEMBER_OFF]) + slot * int(self.w[ph.W_MEMBER_STRIDE])) // 8

    def register_member(self, kind: int, name: str) -> int:
        """Claim a member slot for this process; returns the slot (tag = slot + 1)."""
        pid = os.getpid()
        start = process_start_time(pid) or 1
        slot = int(kpool.member_claim(self.w, pid, start, kind, time.monotonic_ns()))
        if slot == status.NO_SLOT:
            raise StorageFullError(
                f"pool {self.path} has no free member slot ({int(self.w[ph.W_MEMBER_COUNT])} "
                "processes attached)"
            )
        raw = name.encode("utf-8")[: ml.M_NAME_MAX]
        byte_base = self._slot_base(slot) * 8 + ml.M_NAME_OFF
        self.b[byte_base : byte_base + len(raw)] = np.frombuffer(raw, np.uint8)
        self.w[self._slot_base(slot) + ml.M_NAME_LEN] = len(raw)
        return slot

    def unregister_member(self, slot: int) -> None:
        """Release this process's member slot after returning what it holds."""
        tag = ml.member_tag(slot)
        kheap.heap_reclaim_tag(self.w, tag)
        kpool.member_release(self.w, slot, os.getpid())

    def member_heartbeat(self, slot: int) -> None:
        """Publish this member's liveness."""
        kpool.member_heartbeat(self.w, slot, time.monotonic_ns())

    def _member_at(self, slot: int) -> MemberInfo | None:
        base = self._slot_base(slot)
        pid = int(self.w[base + ml.M_STATE])
        if pid == 0:
            return None
        n = min(max(int(self.w[base + ml.M_NAME_LEN]), 0), ml.M_NAME_MAX)
        off = base * 8 + ml.M_NAME_OFF
        return MemberInfo(
            slot=slot,
            pid=pid,
            start_time=int(self.w[base + ml.M_START_TIME]),
            kind=int(self.w[base + ml.M_KIND]),
            generation=int(self.w[base + ml.M_GENERATION]),
            heartbeat_ns=int(self.w[base + ml.M_HEARTBEAT_NS]),
            name=bytes(self.b[off : off + n]).decode("utf-8", errors="replace"),
        )

    def members(self) -> list[MemberInfo]:
        """Every occupied member slot."""
        w = self.w
        stride = int(w[ph.W_MEMBER_STRIDE]) // 8
        first = int(w[ph.W_MEMBER_OFF]) // 8 + ml.M_STATE
        pids = w[first::stride][: int(w[ph.W_MEMBER_COUNT])]  # one strided view
        out = []
        for slot in np.flatnonzero(pids).tolist():
            info = self._member_at(slot)
            if info is not None:
                out.append(info)
        return out

    def reap_dead_members(self) -> list[MemberInfo]:
        """Owner: find members whose process is gone and return everything they held.

        For each dead member: repair the KV buckets it had locked and the channels it
        used (its claimed messages go back for redelivery, its half-written slots are
        dropped, an MPSC consumer mark is freed), free the heap units tagged with it,
        then free its slot.

        Returns
        -------
        list[MemberInfo]
            The members reaped in this pass.
        """
        reaped = []
        for info in self.members():
            start = info.start_time if info.start_time else None
            if start is None:
                alive = process_start_time(info.pid) is not None
            else:
                alive = is_process_alive(info.pid, start)
            if alive:
                continue
            kkv.kv_repair_dead(self.b, self.w, info.tag)
            kchan.chan_repair_dead(self.b, self.w, info.tag)
            kheap.heap_reclaim_tag(self.w, info.tag)
            kpool.member_release(self.w, info.slot, info.pid)
            reaped.append(info)
        return reaped

    def done_shortfalls(self) -> dict[tuple[int, int], int]:
        """Owner: retired producer entries whose delivered count lags (see
        :func:`fluxon_kernels.channel.chan_done_shortfall`).

        Returns
        -------
        dict
            ``{(channel entry, producer entry): DONE value seen}``.
        """
        w = self.w
        base = int(w[ph.W_CHAN_OFF]) // 8
        stride = int(w[ph.W_CHAN_STRIDE]) // 8
        states = w[base + cl.C_STATE :: stride][: int(w[ph.W_CHAN_COUNT])]
        out = np.zeros(cl.MAX_PRODUCERS, dtype=np.int64)
        found = {}
        for c in np.flatnonzero(states == cl.CHAN_ACTIVE):
            if kchan.chan_done_shortfall(self.b, w, int(c), out) > 0:
                for e in np.flatnonzero(out >= 0):
                    found[(int(c), int(e))] = int(out[e])
        return found

    def heal_done(self, c: int, e: int, seen_done: int) -> bool:
        """Owner: set a lagging delivered count right (seen twice by
        :meth:`done_shortfalls` with the same value)."""
        return bool(kchan.chan_heal_done(self.w, c, e, seen_done))

    # ----------------------------------------------------------- lifetime
    def close(self) -> None:
        """Unmap the pool (idempotent). Clients never unlink."""
        if self._closed:
            return
        self._closed = True
        self.b = self.w = None  # type: ignore[assignment]
        try:
            self._mm.close()
        except BufferError:
            pass  # a view is still alive somewhere; the mapping goes when it does
        try:
            os.close(self._fd)
        except OSError:
            pass

    def unlink(self) -> None:
        """Owner only: remove the pool file."""
        if not self.is_creator:
            raise InternalError("only the owner may unlink the pool", component="pool")
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` was called."""
        return self._closed


# --------------------------------------------------------------------------- adoption checks
def _refs_out_of_heap(refs: np.ndarray, heap_units: int, unit: int) -> np.ndarray:
    """Mask of nonzero block references that do not describe a block inside the heap."""
    nbytes = refs & REF_LEN_MASK
    start = refs >> REF_LEN_BITS
    units = (nbytes + unit - 1) // unit
    bad = (refs < 0) | (nbytes <= 0) | (start < 0) | (start + units > heap_units)
    return (refs != 0) & bad


def find_corruption(pool: Pool) -> str | None:
    """First inconsistency that would send an owner's repair kernels out of bounds.

    Run by :meth:`Pool.adopt` before the new owner runs any repair kernel over a pool
    it did not create. Attached clients may be working meanwhile, so only invariants
    that hold in every state a live process can leave (or be killed in) are checked:
    every heap tag names a member, a KV bucket or a channel; KV buckets have a lock
    tag, state, key length and block reference in range; channel entries have a
    valid state and, when active, a capacity, type, slot block and producer rings in
    range, producer/consumer states that name members, and slots whose kind, tag,
    producer index and block reference are in range. (An active entry whose
    capacity is 0 is being destroyed and is skipped.)

    Parameters
    ----------
    pool : Pool
        A pool whose header passed the attach checks.

    Returns
    -------
    str or None
        What is wrong, or None.
    """
    w = pool.w
    members = int(w[ph.W_MEMBER_COUNT])
    heap_units = int(w[ph.W_HEAP_UNITS])
    unit = int(w[ph.W_UNIT_SIZE])
    buckets = int(w[ph.W_KV_BUCKETS])
    chan_count = int(w[ph.W_CHAN_COUNT])

    # Heap tags.
    table = int(w[ph.W_HEAP_TABLE_OFF]) // 8
    tags = w[table : table + heap_units]
    ok = (tags >= 0) & (tags <= members)
    ok |= (tags >= KV_TAG_BASE) & (tags < KV_TAG_BASE + buckets)
    ok |= (tags >= CHAN_TAG_BASE) & (tags < CHAN_TAG_BASE + chan_count)
    if not ok.all():
        i = int(np.argmin(ok))
        return f"heap unit {i} carries the unknown tag {int(tags[i])}"

    # Member table.
    mbase = int(w[ph.W_MEMBER_OFF]) // 8
    mstride = int(w[ph.W_MEMBER_STRIDE]) // 8
    mwords = w[mbase : mbase + members * mstride].reshape(members, mstride)
    if (mwords[:, ml.M_STATE] < 0).any() or (mwords[:, ml.M_STATE] > 1 << 32).any():
        return "a member slot holds an impossible pid"

    # KV buckets.
    kbase = int(w[ph.W_KV_OFF]) // 8
    kstride = int(w[ph.W_KV_STRIDE]) // 8
    kwords = w[kbase : kbase + buckets * kstride].reshape(buckets, kstride)
    lock = kwords[:, kb.B_LOCK]
    if ((lock < 0) | (lock > members)).any():
        return "a KV bucket is locked by an unknown tag"
    if ((kwords[:, kb.B_STATE] < 0) | (kwords[:, kb.B_STATE] > kb.STATE_TOMBSTONE)).any():
        return "a KV bucket has an unknown state"
    if ((kwords[:, kb.B_KEY_LEN] < 0) | (kwords[:, kb.B_KEY_LEN] > kb.KEY_MAX)).any():
        return "a KV bucket has an impossible key length"
    if _refs_out_of_heap(kwords[:, kb.B_REF], heap_units, unit).any():
        return "a KV bucket points outside the heap"

    # Channel table.
    cbase = int(w[ph.W_CHAN_OFF]) // 8
    cstride = int(w[ph.W_CHAN_STRIDE]) // 8
    heap_off = int(w[ph.W_HEAP_OFF])
    pool_words = w.shape[0]
    for c in range(chan_count):
        cw = cbase + c * cstride
        state = int(w[cw + cl.C_STATE])
        if state == cl.CHAN_FREE:
            continue
        if state & 0xFF == cl.CHAN_CREATING:
            if not 0 <= state >> 8 <= members:
                return f"channel entry {c} is being created by an unknown tag"
            continue
        if state != cl.CHAN_ACTIVE:
            return f"channel entry {c} has the unknown state {state}"
        cap = int(w[cw + cl.C_CAPACITY])
        if cap == 0:
            continue  # being destroyed
        if not 1 <= cap <= cl.MAX_CAPACITY:
            return f"channel entry {c} has the impossible capacity {cap}"
        if int(w[cw + cl.C_TYPE]) not in (cl.TYPE_MPMC, cl.TYPE_MPSC):
            return f"channel entry {c} has an unknown type"
        slots_ref = np.array([w[cw + cl.C_SLOTS_REF]], dtype=np.int64)
        if slots_ref[0] == 0 or _refs_out_of_heap(slots_ref, heap_units, unit).any():
            return f"channel entry {c} has its slots outside the heap"
        if int(slots_ref[0] & REF_LEN_MASK) != cap * cl.SLOT_STRIDE:
            return f"channel entry {c} has a slot block of the wrong size"
        p0 = cw + cl.PROD_OFF // 8
        pwords = w[p0 : p0 + cl.MAX_PRODUCERS * cl.PROD_STRIDE // 8]
        pwords = pwords.reshape(cl.MAX_PRODUCERS, cl.PROD_STRIDE // 8)
        pst = pwords[:, cl.P_STATE]
        if ((pst < cl.PROD_RETIRED) | (pst > members)).any():
            return f"channel entry {c} has a producer of an unknown tag"
        rings = pwords[:, cl.P_RING_REF]
        if _refs_out_of_heap(rings, heap_units, unit).any():
            return f"channel entry {c} has a producer ring outside the heap"
        if ((rings != 0) & ((rings & REF_LEN_MASK) != cap * 8)).any():
            return f"channel entry {c} has a producer ring of the wrong size"
        k0 = cw + cl.CONS_OFF // 8
        kwords_c = w[k0 : k0 + cl.MAX_CONSUMERS * cl.CONS_STRIDE // 8]
        kst = kwords_c.reshape(cl.MAX_CONSUMERS, cl.CONS_STRIDE // 8)[:, cl.K_STATE]
        if ((kst < 0) | (kst > members)).any():
            return f"channel entry {c} has a consumer of an unknown tag"
        mpsc = int(w[cw + cl.C_MPSC_CONSUMER])
        if not 0 <= mpsc <= members:
            return f"channel entry {c} has an MPSC consumer of an unknown tag"
        sbyte = heap_off + int(slots_ref[0] >> REF_LEN_BITS) * unit
        sw = sbyte // 8
        stride = cl.SLOT_STRIDE // 8
        if sw + cap * stride > pool_words:
            return f"channel entry {c} has its slots outside the pool"
        swords = w[sw : sw + cap * stride].reshape(cap, stride)
        st = swords[:, cl.S_STATE]
        kind = st & cl.KIND_MASK
        tag = (st >> cl.KIND_BITS) & cl.TAG_MASK
        if ((st < 0) | (kind > cl.KIND_REDELIVER) | (tag > members)).any():
            return f"channel entry {c} has a slot in an unknown state"
        prod = swords[:, cl.S_PRODUCER]
        if ((prod < 0) | (prod >= cl.MAX_PRODUCERS)).any():
            return f"channel entry {c} has a slot naming an unknown producer"
        if _refs_out_of_heap(swords[:, cl.S_REF], heap_units, unit).any():
            return f"channel entry {c} has a slot pointing outside the heap"
        lens = swords[:, cl.S_LEN]
        if (lens > REF_LEN_MASK).any() or (lens < -1).any():
            return f"channel entry {c} has a slot of an impossible length"
        readable = (kind >= cl.KIND_PUBLISHED) & (swords[:, cl.S_REF] == 0)
        if (readable & (lens > cl.SLOT_INLINE)).any():
            return f"channel entry {c} has an inline message longer than a slot"
    return None
