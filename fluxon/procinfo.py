"""Process identity from ``/proc``: a pid alone is reused, a (pid, start time) pair is not.

The start time is field 22 of ``/proc/<pid>/stat`` (clock ticks since boot). The second
field, the command name, is wrapped in parentheses and may itself contain spaces or
parentheses, so the fields are split only after the *last* ``')'``.
"""

from __future__ import annotations

import os
import select
import threading

# Fields after the closing ')' start at field 3 (state); field 22 is starttime.
_STATE_FIELD = 3
_STARTTIME_FIELD = 22


def _stat_fields(pid: int) -> list[str] | None:
    """Fields 3.. of ``/proc/<pid>/stat``, or ``None`` if the process does not exist."""
    if pid <= 0:
        return None
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            raw = f.read().decode("ascii", errors="replace")
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    except OSError:
        return None
    close = raw.rfind(")")
    if close < 0:
        return None
    return raw[close + 1 :].split()


def process_start_time(pid: int) -> int | None:
    """Start time of ``pid`` in clock ticks since boot.

    Parameters
    ----------
    pid : int
        Process id.

    Returns
    -------
    int or None
        Field 22 of ``/proc/<pid>/stat``, or ``None`` when the process does not exist.
    """
    fields = _stat_fields(pid)
    if fields is None:
        return None
    try:
        return int(fields[_STARTTIME_FIELD - _STATE_FIELD])
    except (IndexError, ValueError):
        return None


def process_state(pid: int) -> str | None:
    """One-letter scheduler state of ``pid`` (``R``, ``S``, ``Z``, ...), or ``None`` if gone."""
    fields = _stat_fields(pid)
    if not fields:
        return None
    return fields[0]


def is_process_alive(pid: int, start_time: int | None = None) -> bool:
    """Whether the process ``pid`` still exists and is the same process.

    Parameters
    ----------
    pid : int
        Process id.
    start_time : int, optional
        Start time recorded earlier with :func:`process_start_time`. When given, a
        process with the same pid but another start time (pid reuse) counts as dead.

    Returns
    -------
    bool
        ``False`` if the process is gone, is a zombie (or dead), or was replaced.
    """
    fields = _stat_fields(pid)
    if not fields:
        return False
    if fields[0] in ("Z", "X", "x"):
        return False
    if start_time is None:
        return True
    try:
        return int(fields[_STARTTIME_FIELD - _STATE_FIELD]) == int(start_time)
    except (IndexError, ValueError):
        return False


def boot_time_ns() -> int:
    """Wall-clock boot time in nanoseconds since the epoch (from ``/proc/stat`` ``btime``)."""
    try:
        with open("/proc/stat", "rb") as f:
            for line in f:
                if line.startswith(b"btime "):
                    return int(line.split()[1]) * 1_000_000_000
    except OSError:
        pass
    return 0


def clock_ticks_per_second() -> int:
    """``sysconf(SC_CLK_TCK)``: the unit of :func:`process_start_time`."""
    try:
        return int(os.sysconf("SC_CLK_TCK"))
    except (ValueError, OSError):
        return 100


class ExitWaiter:
    """Sleep until a timeout, a :meth:`wake`, or the exit of a watched process.

    Watches processes through pidfds (Linux 5.3+), so a sleeper learns of an exit at
    once instead of polling ``/proc``; where pidfds are unavailable it only sleeps (the
    caller's periodic check still finds the exit). Thread-safe for one waiter and any
    number of wakers.
    """

    def __init__(self) -> None:
        self._r, self._w = os.pipe()
        os.set_blocking(self._r, False)
        os.set_blocking(self._w, False)
        self._fds: dict[tuple[int, int | None], int] = {}
        self._closed = False
        self._lock = threading.Lock()  # wake vs close: never write to a reused fd number

    def watch(self, procs: set[tuple[int, int | None]]) -> None:
        """Watch exactly ``procs``, ``(pid, start time)`` pairs (waiter thread only).

        A process already gone (or whose pid now names another process) is not watched:
        the caller's periodic check finds it.
        """
        for key in [k for k in self._fds if k not in procs]:
            os.close(self._fds.pop(key))
        if not hasattr(os, "pidfd_open"):
            return
        for pid, start in procs:
            if (pid, start) in self._fds:
                continue
            try:
                fd = os.pidfd_open(pid)
            except OSError:
                continue
            if not is_process_alive(pid, start):  # opened after a pid reuse: not ours
                os.close(fd)
                continue
            self._fds[(pid, start)] = fd

    def wait(self, timeout: float | None) -> list[tuple[int, int | None]]:
        """Sleep up to ``timeout`` seconds (None: no limit); returns the watched
        processes that exited (they are no longer watched), empty after a timeout or a
        :meth:`wake`."""
        poller = select.poll()
        poller.register(self._r, select.POLLIN)
        by_fd = {fd: key for key, fd in self._fds.items()}
        for fd in by_fd:
            poller.register(fd, select.POLLIN)
        ready = poller.poll(None if timeout is None else int(timeout * 1000))
        exited = []
        for fd, _events in ready:
            if fd == self._r:
                try:
                    while os.read(self._r, 64):
                        pass
                except BlockingIOError:
                    pass
            else:
                key = by_fd[fd]
                exited.append(key)
                os.close(self._fds.pop(key))
        return exited

    def wake(self) -> None:
        """Make the current (or next) :meth:`wait` return at once."""
        with self._lock:
            if self._closed:
                return
            try:
                os.write(self._w, b"\0")
            except OSError:
                pass  # full: a wake is pending anyway

    def close(self) -> None:
        """Release the pipe and the pidfds (after the waiter has stopped)."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            for fd in self._fds.values():
                os.close(fd)
            self._fds.clear()
            os.close(self._r)
            os.close(self._w)
