"""Runtime helpers: start and supervise the service plane, handle Ctrl-C.

- :func:`register_ctrlc_callback`: run a callback once, off the signal frame, on
  SIGINT/SIGTERM.
- :func:`start_kv_master_process`, :func:`start_owner_kvclient_process`: start the master
  and the owner as child processes that die with their parent.
- :func:`wait_subproc_or_ctrlc` and :class:`process_runner.ManagedSubprocess`: supervise
  them until Ctrl-C (``SystemExit(130)``) or an unexpected exit (``RuntimeError``).
- :func:`run_master_blocking`, :func:`run_owner_blocking`: the same services in-process.
"""

from __future__ import annotations

from typing import Any

from . import process_runner
from .ctrlc import register_ctrlc_callback
from .launch import start_kv_master_process, start_owner_kvclient_process
from .process_runner import ManagedSubprocess, wait_subproc_or_ctrlc


def run_master_blocking(config: dict) -> int:
    """Run the master in this process until SIGINT/SIGTERM (see :mod:`fluxon.service.master`)."""
    from ..service.master import run_master_blocking as run

    return run(config)


def run_owner_blocking(config: Any) -> int:
    """Run the owner in this process until SIGINT/SIGTERM (see :mod:`fluxon.service.owner`)."""
    from ..service.owner import run_owner_blocking as run

    return run(config)


__all__ = [
    "ManagedSubprocess",
    "process_runner",
    "register_ctrlc_callback",
    "run_master_blocking",
    "run_owner_blocking",
    "start_kv_master_process",
    "start_owner_kvclient_process",
    "wait_subproc_or_ctrlc",
]
