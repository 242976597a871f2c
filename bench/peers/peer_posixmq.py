"""POSIX message queues (``posix_ipc``): kernel queues, competing consumers on one queue.

The kernel caps a queue's depth at ``/proc/sys/fs/mqueue/msg_max`` (default 10) and a
message at ``msgsize_max`` (default 8 KiB), and a user's total queue memory at
``RLIMIT_MSGQUEUE`` (default 800 KiB). The runner raises them when it may (root) to fit
the run's capacity and the 1 MiB message, restores ``/proc`` afterwards, and otherwise
runs with a smaller depth or skips the sizes that cannot fit, saying so in the report
(``RLIMIT_MSGQUEUE`` can only be raised with CAP_SYS_RESOURCE). One queue exists at a
time (per size, created by the first worker that uses it, unlinked when the size is
done) so each size gets the whole per-user budget. Messages are pickled (as
multiprocessing does).
"""

from __future__ import annotations

import os
import resource
import time

from .harness import SENT, TIMED_OUT
from .peerbase import Peer, pickle_dumps, pickle_loads, pickled_size, unique_name

_PROC = "/proc/sys/fs/mqueue"
_MSG_SLACK = 64
#: Kernel bytes charged per queue slot beyond the message (msg_msg header, tree node).
_KERNEL_PER_MSG = 128


def _read_proc(name: str) -> int | None:
    try:
        with open(os.path.join(_PROC, name)) as f:
            return int(f.read().strip())
    except (OSError, ValueError):
        return None


def _write_proc(name: str, value: int) -> bool:
    try:
        with open(os.path.join(_PROC, name), "w") as f:
            f.write(str(value))
    except OSError:
        return False
    return _read_proc(name) == value


class PosixMqPeer(Peer):
    """Runner side: one kernel queue per payload size, created by the first worker to use it."""

    key = "posix-mq"
    label = "POSIX mqueue (posix_ipc)"
    batching = "none (send/receive one message)"
    module = __name__
    static_notes = ("competing consumers on one queue; messages pickled",)

    def __init__(self, ctx) -> None:
        super().__init__(ctx)
        self._restore: dict[str, int] = {}
        self._names: list[str] = []
        self._depth_cap: int | None = None
        self._msgsize_max: int | None = None
        self._budget: int | None = None

    def unavailable(self) -> str | None:
        try:
            import posix_ipc
        except ImportError:
            return "posix_ipc is not installed (pip install '.[bench]')"
        if not posix_ipc.MESSAGE_QUEUES_SUPPORTED:
            return "this platform has no POSIX message queues"
        return None

    def start(self) -> None:
        """Raise the kernel limits the run needs, where allowed."""
        need_bytes = max(
            self.ctx.capacity(s) * (_msgsize(s) + _KERNEL_PER_MSG) for s in self.ctx.sizes
        )
        soft, hard = resource.getrlimit(resource.RLIMIT_MSGQUEUE)
        for want in (resource.RLIM_INFINITY, max(need_bytes, soft), hard):
            try:
                if want == resource.RLIM_INFINITY:
                    resource.setrlimit(resource.RLIMIT_MSGQUEUE, (want, want))
                else:
                    resource.setrlimit(resource.RLIMIT_MSGQUEUE, (want, max(want, hard)))
                break
            except (ValueError, OSError):
                continue
        # the workers (which create the queues) inherit the limit from this process
        soft, _hard = resource.getrlimit(resource.RLIMIT_MSGQUEUE)
        self._budget = None if soft == resource.RLIM_INFINITY else int(soft * 0.9)
        fits = [s for s in self.ctx.sizes if self._budget is None or
                self._budget >= _msgsize(s) + _KERNEL_PER_MSG]  # fmt: skip
        need = {
            "msg_max": max((self.ctx.capacity(s) for s in fits), default=0),
            "msgsize_max": max((_msgsize(s) for s in fits), default=0),
        }
        for name, value in need.items():
            cur = _read_proc(name)
            if cur is not None and cur < value:
                if _write_proc(name, value):
                    self._restore[name] = cur
                    self.notes.append(f"raised {_PROC}/{name} {cur} -> {value} for the run")
        self._depth_cap = _read_proc("msg_max")
        self._msgsize_max = _read_proc("msgsize_max")
        if self._depth_cap is not None and self._depth_cap < need["msg_max"]:
            self.notes.append(f"queue depth capped at msg_max={self._depth_cap} (may not raise it)")
        for s in fits:
            d = self._depth(s)
            if 0 < d < self.ctx.capacity(s):
                self.notes.append(
                    f"{_size_name(s)} queue depth {d} instead of {self.ctx.capacity(s)}: "
                    f"RLIMIT_MSGQUEUE is {soft} bytes per user (raising it needs CAP_SYS_RESOURCE)"
                )

    def _depth(self, size: int) -> int:
        d = self.ctx.capacity(size)
        if self._depth_cap:
            d = min(d, self._depth_cap)
        if self._budget is not None:
            d = min(d, self._budget // (_msgsize(size) + _KERNEL_PER_MSG))
        return d

    def size_unavailable(self, size: int) -> str | None:
        if self._depth(size) < 1:
            soft = resource.getrlimit(resource.RLIMIT_MSGQUEUE)[0]
            return (
                f"RLIMIT_MSGQUEUE is {soft} bytes per user, less than one {_size_name(size)} "
                "message queue slot; raising it needs CAP_SYS_RESOURCE, which this run lacks"
            )
        if self._msgsize_max is not None and _msgsize(size) > self._msgsize_max:
            return (
                f"a {_size_name(size)} message exceeds {_PROC}/msgsize_max={self._msgsize_max} "
                "and this user may not raise it"
            )
        return None

    def worker_config(self, n_prod: int, n_cons: int) -> dict:
        self._names = ["/" + unique_name(self.ctx.run_id, "mq", n_prod, s) for s in self.ctx.sizes]
        return {
            "mq_names": self._names,
            "mq_depths": [max(1, self._depth(s)) for s in self.ctx.sizes],
            "mq_msgsizes": [_msgsize(s) for s in self.ctx.sizes],
        }

    def size_done(self, size_idx: int) -> None:
        """Unlink that size's queue: its memory is freed once the workers closed it."""
        import posix_ipc

        try:
            posix_ipc.unlink_message_queue(self._names[size_idx])
        except (posix_ipc.ExistentialError, IndexError):
            pass

    def release(self) -> None:
        """Unlink this topology's queues."""
        for i in range(len(self._names)):
            self.size_done(i)
        self._names = []

    def stop(self) -> None:
        """Unlink leftovers and restore ``/proc/sys/fs/mqueue``."""
        self.release()
        for name, value in self._restore.items():
            _write_proc(name, value)
        self._restore = {}


def _msgsize(size: int) -> int:
    return pickled_size(size) + _MSG_SLACK


def _size_name(size: int) -> str:
    return (
        f"{size >> 20} MiB"
        if size >= 1 << 20
        else (f"{size >> 10} KiB" if size >= 1024 else f"{size} B")
    )


PEER = PosixMqPeer


class _Endpoint:
    """Opens (creating if needed) the queue of the current size; closes the previous one
    first, so the per-user queue memory of one size is free before the next is created."""

    def __init__(self, cfg: dict) -> None:
        import posix_ipc

        self._ipc = posix_ipc
        self._busy = posix_ipc.BusyError
        self.cfg = cfg
        self.q = None

    def use_size(self, size_idx: int) -> None:
        ipc = self._ipc
        if self.q is not None:
            self.q.close()
            self.q = None
        deadline = time.monotonic() + 15.0
        while True:
            try:
                self.q = ipc.MessageQueue(
                    self.cfg["mq_names"][size_idx],
                    ipc.O_CREAT,
                    mode=0o600,
                    max_messages=self.cfg["mq_depths"][size_idx],
                    max_message_size=self.cfg["mq_msgsizes"][size_idx],
                )
                return
            except OSError:
                # the per-user queue memory is still held by the previous size's queue
                # until every worker closed it (and the runner unlinked it)
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.01)

    def send(self, msg: dict) -> int:
        try:
            self.q.send(pickle_dumps(msg), timeout=0.2)
        except self._busy:
            return TIMED_OUT
        return SENT

    def recv(self, max_n: int, timeout: float) -> list:
        try:
            data, _prio = self.q.receive(timeout)
        except self._busy:
            return []
        return [pickle_loads(data)]

    def close(self) -> None:
        if self.q is not None:
            self.q.close()
            self.q = None


def open_endpoint(role: str, index: int, cfg: dict, endpoint) -> _Endpoint:
    """Worker side: queues are opened per size."""
    return _Endpoint(cfg)
