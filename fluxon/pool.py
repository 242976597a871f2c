"""The shared-memory pool: creation (owner), attachment (clients), member table.

Only the owner creates and unlinks the pool file; clients attach and close. Every
process maps the whole file ``MAP_SHARED`` and views it twice: ``b`` (uint8) for
payload bytes and ``w`` (int64) for words the kernels update atomically.
"""

from __future__ import annotations

import mmap
import os
import time
from dataclasses import dataclass

import numpy as np

import fluxon_kernels
from fluxon_kernels import channel as kchan
from fluxon_kernels import heap as kheap
from fluxon_kernels import kv as kkv
from fluxon_kernels import pool as kpool
from fluxon_kernels import status
from fluxon_kernels.layout import member as ml
from fluxon_kernels.layout import pool_header as ph
from fluxon_kernels.layout.sizing import MIN_POOL_BYTES, compute_layout

from . import naming
from .api_error import InternalError, InvalidConfigurationError, StorageFullError
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
        self.w = self.b.view(np.int64)
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
        b[ph.CLUSTER_NAME_OFF : ph.CLUSTER_NAME_OFF + len(name_raw)] = np.frombuffer(name_raw, np.uint8)
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

    @classmethod
    def attach(cls, share_mem_path: str, cluster_name: str, wait_ready_s: float = 2.0) -> "Pool":
        """Map an existing pool (client side) and check it belongs to this cluster and layout.

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
                raise InternalError(f"pool file {path} is truncated ({size} bytes)", component="pool")
            mm = mmap.mmap(fd, size, _MAP_FLAGS, mmap.PROT_READ | mmap.PROT_WRITE)
        except BaseException:
            os.close(fd)
            raise
        pool = cls(path, fd, mm, is_creator=False)
        try:
            pool._check_header(cluster_name, size, wait_ready_s)
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

    def owner_alive(self) -> bool:
        """Whether the owner process that created the pool still runs and is not closing."""
        if self.w[ph.W_CLOSING]:
            return False
        return is_process_alive(self.owner_pid, int(self.w[ph.W_OWNER_START]))

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
        out = []
        for slot in range(int(self.w[ph.W_MEMBER_COUNT])):
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
