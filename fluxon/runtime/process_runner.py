"""Starting, supervising and stopping service child processes.

Children started with ``die_with_parent=True`` get ``prctl(PR_SET_PDEATHSIG, SIGTERM)``:
the kernel sends them SIGTERM when the *thread* that started them exits, so a killed
parent (or test) never leaves an orphaned owner, master or etcd behind. Start them from
the main thread (or one that lives as long as they should).
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from .ctrlc import register_ctrlc_callback

_log = logging.getLogger("fluxon.runtime")


def die_with_parent_argv(argv: Sequence[str], sig: int = signal.SIGTERM) -> list[str]:
    """Wrap ``argv`` so the program gets ``sig`` when the calling thread exits.

    The wrapper (:mod:`fluxon.runtime.pdeathsig_exec`) sets the parent-death signal and
    then ``execv``s the program; no ``preexec_fn`` runs in the forked child, so a
    parent with other threads cannot deadlock in ``fork``. ``argv[0]`` is resolved on
    ``PATH`` here because the wrapper uses ``execv``.
    """
    argv = list(argv)
    exe = shutil.which(argv[0]) or argv[0]
    return [
        sys.executable,
        "-m",
        "fluxon.runtime.pdeathsig_exec",
        str(os.getpid()),
        str(int(sig)),
        "--",
        exe,
        *argv[1:],
    ]


def popen_child(
    argv: Sequence[str],
    *,
    cwd: str | None = None,
    log_path: str | None = None,
    env: dict[str, str] | None = None,
    die_with_parent: bool = True,
) -> subprocess.Popen:
    """Start a child process.

    Parameters
    ----------
    argv : sequence of str
        Command line.
    cwd : str, optional
        Working directory.
    log_path : str, optional
        File receiving the child's stdout and stderr (appended). Default: inherited.
    env : dict, optional
        Environment (default: this process's).
    die_with_parent : bool
        ``True``: SIGTERM the child when the starting thread exits. ``False``: the child
        runs in its own session and outlives this process (``python -m fluxon up``).

    Returns
    -------
    subprocess.Popen
    """
    if log_path:
        os.makedirs(os.path.dirname(os.path.abspath(log_path)), exist_ok=True)
    # the child keeps its own copy of the log fd; ours closes when Popen returns
    with open(log_path, "ab") if log_path else contextlib.nullcontext() as out:
        return subprocess.Popen(
            die_with_parent_argv(argv) if die_with_parent else list(argv),
            cwd=cwd,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT if out is not None else None,
            start_new_session=not die_with_parent,
            close_fds=True,
        )


def python_module_argv(module: str, *args: str) -> list[str]:
    """``[sys.executable, "-m", module, *args]``."""
    return [sys.executable, "-m", module, *args]


@dataclass
class ManagedSubprocess:
    """A child process under supervision, with a label for messages.

    Parameters
    ----------
    label : str
        Human name (``"master"``, ``"owner"``, ``"etcd"``...).
    proc : subprocess.Popen
        The running child.
    """

    label: str
    proc: subprocess.Popen

    @property
    def pid(self) -> int:
        """The child's pid."""
        return self.proc.pid

    def poll(self) -> int | None:
        """Exit status, or ``None`` while running."""
        return self.proc.poll()

    def stop(self, timeout: float = 5.0) -> int | None:
        """SIGTERM, then SIGKILL after ``timeout`` seconds; returns the exit status."""
        return stop_process(self.proc, timeout, label=self.label)


def stop_process(
    proc: subprocess.Popen, timeout: float = 5.0, *, label: str = "child"
) -> int | None:
    """Stop ``proc`` by its pid: SIGTERM, wait up to ``timeout`` seconds, then SIGKILL.

    Returns
    -------
    int or None
        The exit status (``None`` only if even SIGKILL did not reap it in time).
    """
    if proc.poll() is not None:
        return proc.returncode
    try:
        proc.send_signal(signal.SIGTERM)
    except ProcessLookupError:
        pass
    try:
        return proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        _log.warning("%s (pid %d) ignored SIGTERM for %.1f s; killing it", label, proc.pid, timeout)
    try:
        proc.kill()
    except ProcessLookupError:
        pass
    try:
        return proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        _log.error("%s (pid %d) did not die after SIGKILL", label, proc.pid)
        return None


def stop_children(children: Sequence[ManagedSubprocess], timeout: float = 5.0) -> None:
    """Stop ``children`` in reverse start order (last started first), concurrently bounded.

    Each child gets SIGTERM; whoever is still alive after ``timeout`` seconds gets SIGKILL.
    """
    alive = [c for c in reversed(list(children)) if c.poll() is None]
    for child in alive:
        try:
            child.proc.send_signal(signal.SIGTERM)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + timeout
    for child in alive:
        remaining = max(0.0, deadline - time.monotonic())
        try:
            child.proc.wait(timeout=remaining)
        except subprocess.TimeoutExpired:
            _log.warning("%s (pid %d) ignored SIGTERM; killing it", child.label, child.pid)
            try:
                child.proc.kill()
            except ProcessLookupError:
                pass
            try:
                child.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                _log.error("%s (pid %d) did not die after SIGKILL", child.label, child.pid)


def wait_subproc_or_ctrlc(
    children: Sequence[ManagedSubprocess],
    *,
    on_ctrlc: Callable[[], None] | None = None,
    stop_timeout_seconds: float = 5.0,
    poll_interval: float = 0.2,
) -> None:
    """Supervise ``children`` until Ctrl-C/SIGTERM or until one of them exits.

    Parameters
    ----------
    children : sequence of ManagedSubprocess
        The processes to watch (stopped in reverse order).
    on_ctrlc : callable, optional
        Called once (off the signal frame) before the children are stopped.
    stop_timeout_seconds : float
        Grace period between SIGTERM and SIGKILL for each child.
    poll_interval : float
        How often children are checked.

    Raises
    ------
    SystemExit
        With code 130 after Ctrl-C or SIGTERM, once every child is stopped.
    RuntimeError
        If a child exits on its own; the remaining children are stopped first.
    """
    children = list(children)
    interrupted = threading.Event()
    reasons: list[str] = []

    def on_signal(reason: str) -> None:
        reasons.append(reason)
        interrupted.set()

    restore = register_ctrlc_callback(on_signal, thread_name="fluxon-wait-ctrlc")

    def handle_ctrlc() -> None:
        _log.info("%s received: stopping %d child process(es)", reasons[0], len(children))
        if on_ctrlc is not None:
            try:
                on_ctrlc()
            except Exception:  # noqa: BLE001
                _log.exception("on_ctrlc callback failed")
        stop_children(children, stop_timeout_seconds)
        raise SystemExit(130)

    try:
        while True:
            if interrupted.wait(poll_interval):
                handle_ctrlc()
            for child in children:
                code = child.poll()
                if code is not None:
                    # A terminal Ctrl-C reaches the children too; one may exit before our
                    # own handler has run. Give the signal a moment to arrive here.
                    if interrupted.wait(0.5):
                        handle_ctrlc()
                    others = [c for c in children if c is not child]
                    stop_children(others, stop_timeout_seconds)
                    raise RuntimeError(
                        f"{child.label} (pid {child.pid}) exited unexpectedly with status {code}"
                    )
    finally:
        restore()
