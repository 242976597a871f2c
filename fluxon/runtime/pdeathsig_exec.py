"""``python -m fluxon.runtime.pdeathsig_exec PARENT_PID SIGNAL -- ARGV...``

Set the parent-death signal, then ``execv`` ARGV: the started program receives SIGNAL
when the thread that started it exits, even if it is SIGKILLed. The setting survives
``execve``. This replaces a ``preexec_fn``, which can deadlock a parent that has other
threads running (gRPC, lease keepalives) at the moment it forks.
"""

from __future__ import annotations

import ctypes
import os
import sys

_PR_SET_PDEATHSIG = 1


def main(argv: list[str]) -> None:
    parent, sig, sep, *command = argv
    if sep != "--" or not command:
        raise SystemExit("usage: pdeathsig_exec PARENT_PID SIGNAL -- ARGV...")
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, int(sig), 0, 0, 0)
    if os.getppid() != int(parent):  # the parent died before prctl: act as if signalled
        os.kill(os.getpid(), int(sig))
    os.execv(command[0], command)


if __name__ == "__main__":
    main(sys.argv[1:])
