"""Cross-process futex wait/wake on words of the shared pool (Linux, x86-64).

A channel's ``DATA_SEQ`` / ``SPACE_SEQ`` words are 64-bit sequences; the futex word is
their low 32 bits (little endian), so a waiter passes ``seq & 0xffffffff`` as the
expected value. The futexes are *shared* (no ``FUTEX_PRIVATE_FLAG``): waiters and
wakers live in different processes that map the same file. ctypes releases the GIL
for the duration of the syscall, so a thread sleeping here costs no CPU and does not
block the other threads of its process.

See :mod:`fluxon_kernels.channel` for the Dekker-style protocol (register as a waiter,
re-check, then sleep on the sequence read at registration) that makes the
sleep race-free.
"""

from __future__ import annotations

import ctypes
import errno
import os
import platform

__all__ = [
    "INT_MAX",
    "futex_wait",
    "futex_wake",
    "seq_expected",
    "wake_all_channels",
    "wake_channel",
]

#: ``SYS_futex`` by machine (``uname -m``).
_SYS_FUTEX = {"x86_64": 202, "aarch64": 98, "arm64": 98}
FUTEX_WAIT = 0
FUTEX_WAKE = 1
INT_MAX = 0x7FFFFFFF


class _Timespec(ctypes.Structure):
    _fields_ = [("tv_sec", ctypes.c_long), ("tv_nsec", ctypes.c_long)]


_machine = platform.machine()
if _machine not in _SYS_FUTEX:  # pragma: no cover - other architectures are not supported
    raise ImportError(f"fluxon.futex: no futex syscall number known for machine {_machine!r}")
_NR = _SYS_FUTEX[_machine]

_libc = ctypes.CDLL(None, use_errno=True)
_syscall = _libc.syscall
_syscall.restype = ctypes.c_long
# syscall(SYS_futex, uaddr, op, val, timeout, uaddr2, val3)
_syscall.argtypes = [
    ctypes.c_long,
    ctypes.c_void_p,
    ctypes.c_int,
    ctypes.c_int,
    ctypes.POINTER(_Timespec),
    ctypes.c_void_p,
    ctypes.c_int,
]


def seq_expected(seq: int) -> int:
    """The futex value of a 64-bit sequence: its low 32 bits as a signed int32."""
    low = int(seq) & 0xFFFFFFFF
    return low - (1 << 32) if low & 0x80000000 else low


def futex_wait(address: int, expected: int, timeout_s: float | None) -> bool:
    """Sleep while the 32-bit word at ``address`` holds ``expected``.

    Parameters
    ----------
    address : int
        Absolute address of a 4-byte aligned word in shared memory.
    expected : int
        Value (signed int32, see :func:`seq_expected`) the word must still hold for the
        caller to sleep; if it differs the call returns at once.
    timeout_s : float or None
        Longest sleep in seconds (``None``: until woken).

    Returns
    -------
    bool
        ``False`` if the timeout expired, ``True`` otherwise (woken, the word had
        already changed, or a signal interrupted the sleep): re-check the condition.
    """
    if timeout_s is None:
        ts = None
    else:
        if timeout_s <= 0:
            return False
        sec = int(timeout_s)
        ts = ctypes.byref(_Timespec(sec, int((timeout_s - sec) * 1e9)))
    rc = _syscall(_NR, address, FUTEX_WAIT, expected, ts, None, 0)
    if rc == 0:
        return True
    err = ctypes.get_errno()
    if err == errno.ETIMEDOUT:
        return False
    if err in (errno.EAGAIN, errno.EINTR):
        return True
    raise OSError(err, f"futex wait failed: {os.strerror(err)}")


def futex_wake(address: int, n: int = INT_MAX) -> int:
    """Wake up to ``n`` processes/threads sleeping on the word at ``address``.

    Returns
    -------
    int
        How many were woken.
    """
    rc = _syscall(_NR, address, FUTEX_WAKE, n, None, None, 0)
    if rc < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"futex wake failed: {os.strerror(err)}")
    return int(rc)


def wake_channel(pool: object, c: int) -> None:
    """Wake every process sleeping on channel entry ``c`` of ``pool`` (both sequences).

    For the owner after ``chan_repair_dead`` (which bumps the sequences of every channel
    it repaired): waiters then re-check at once instead of at their next timeout slice.
    """
    from fluxon_kernels import channel as kchan

    base = int(pool.b.ctypes.data)  # type: ignore[attr-defined]
    w = pool.w  # type: ignore[attr-defined]
    futex_wake(base + int(kchan.seq_byte_offset(w, c, 0)))
    futex_wake(base + int(kchan.seq_byte_offset(w, c, 1)))


def wake_all_channels(pool: object) -> int:
    """Wake the waiters of every active channel of ``pool``; returns how many were woken.

    For the owner right after ``Pool.reap_dead_members`` repaired something (redelivered
    messages, freed slots, a freed MPSC consumer mark).
    """
    from fluxon_kernels import channel as kchan
    from fluxon_kernels.layout import channel as cl
    from fluxon_kernels.layout import pool_header as ph

    w = pool.w  # type: ignore[attr-defined]
    woken = 0
    for c in range(int(w[ph.W_CHAN_COUNT])):
        if int(w[int(kchan.chan_word(w, c)) + cl.C_STATE]) == cl.CHAN_ACTIVE:
            base = int(pool.b.ctypes.data)  # type: ignore[attr-defined]
            woken += futex_wake(base + int(kchan.seq_byte_offset(w, c, 0)))
            woken += futex_wake(base + int(kchan.seq_byte_offset(w, c, 1)))
    return woken
