"""Runtime helpers: Ctrl-C callback, supervision, parent-death, config transport."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from fluxon.procinfo import is_process_alive, process_start_time
from fluxon.runtime import ManagedSubprocess, register_ctrlc_callback, wait_subproc_or_ctrlc
from fluxon.runtime.launch import decode_config_b64, encode_config_b64
from fluxon.runtime.process_runner import popen_child, stop_process

_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _python(code: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(code)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=_ROOT,
    )


def _wait_dead(pid: int, start: int | None, timeout: float = 20.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not is_process_alive(pid, start):
            return True
        time.sleep(0.05)
    return False


_CTRLC_CHILD = """
    import sys, threading, time
    from fluxon.runtime import register_ctrlc_callback
    calls = []
    done = threading.Event()
    def cb(reason):
        calls.append((reason, threading.current_thread().name))
        time.sleep(0.3)  # blocking work is fine here: we are off the signal frame
        done.set()
    restore = register_ctrlc_callback(cb, thread_name="my-ctrlc")
    print("ready", flush=True)
    assert done.wait(30)
    time.sleep(0.5)  # let repeated signals arrive
    print(calls, flush=True)
    restore()
"""


@pytest.mark.parametrize("signum, name", [(signal.SIGINT, "SIGINT"), (signal.SIGTERM, "SIGTERM")])
def test_ctrlc_callback_runs_once_on_a_listener_thread(signum, name):
    child = _python(_CTRLC_CHILD)
    try:
        assert child.stdout.readline().strip() == "ready"
        child.send_signal(signum)
        time.sleep(0.05)
        child.send_signal(signum)  # a second signal does not run the callback again
        out, err = child.communicate(timeout=60)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    assert child.returncode == 0, err
    assert out.strip() == str([(name, "my-ctrlc")])


def test_restore_fn_restores_previous_handlers():
    before = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    restore = register_ctrlc_callback(lambda reason: None, thread_name="t")
    assert signal.getsignal(signal.SIGINT) is not before[signal.SIGINT]
    restore()
    restore()  # idempotent
    assert {s: signal.getsignal(s) for s in before} == before


def test_ctrlc_callback_off_the_main_thread():
    child = _python(
        """
        import os, signal, threading
        from fluxon.runtime import register_ctrlc_callback
        # every thread blocks the signals, so only the sigwait listener receives them
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
        got = []
        done = threading.Event()
        def worker():
            restore = register_ctrlc_callback(
                lambda r: (got.append(r), done.set()), thread_name="w"
            )
            os.kill(os.getpid(), signal.SIGTERM)
            assert done.wait(30)
            restore()
        t = threading.Thread(target=worker)
        t.start()
        t.join(60)
        print(got, flush=True)
        """
    )
    out, err = child.communicate(timeout=60)
    assert child.returncode == 0, err
    assert out.strip() == "['SIGTERM']"


def test_wait_raises_on_unexpected_exit():
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    quitter = subprocess.Popen([sys.executable, "-c", "raise SystemExit(3)"])
    children = [ManagedSubprocess("sleeper", sleeper), ManagedSubprocess("quitter", quitter)]
    try:
        with pytest.raises(
            RuntimeError, match=r"quitter \(pid \d+\) exited unexpectedly with status 3"
        ):
            wait_subproc_or_ctrlc(children, stop_timeout_seconds=5.0)
        assert sleeper.poll() is not None  # the others were stopped
    finally:
        for p in (sleeper, quitter):
            stop_process(p, 5)


def test_wait_stops_children_on_ctrlc_and_exits_130():
    child = _python(
        """
        import subprocess, sys
        from fluxon.runtime import ManagedSubprocess, wait_subproc_or_ctrlc
        # a grandchild that ignores SIGTERM: it must be SIGKILLed after the timeout
        stubborn = subprocess.Popen([sys.executable, "-c",
            "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
            "print('up', flush=True); time.sleep(60)"], stdout=subprocess.PIPE, text=True)
        assert stubborn.stdout.readline().strip() == "up"
        polite = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
        print(stubborn.pid, polite.pid, flush=True)
        children = [ManagedSubprocess("polite", polite), ManagedSubprocess("stubborn", stubborn)]
        wait_subproc_or_ctrlc(children, on_ctrlc=lambda: print("on_ctrlc", flush=True),
                              stop_timeout_seconds=1.0)
        """
    )
    try:
        pids = [int(p) for p in child.stdout.readline().split()]
        starts = [process_start_time(p) for p in pids]
        time.sleep(0.3)
        child.send_signal(signal.SIGINT)
        out, err = child.communicate(timeout=60)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    assert child.returncode == 130, err
    assert "on_ctrlc" in out
    for pid, start in zip(pids, starts):
        assert _wait_dead(pid, start)


def test_children_die_with_their_parent():
    parent = _python(
        """
        import sys, time
        from fluxon.runtime.process_runner import popen_child
        kid = popen_child([sys.executable, "-c", "import time; time.sleep(120)"])
        print(kid.pid, flush=True)
        time.sleep(120)
        """
    )
    try:
        kid = int(parent.stdout.readline())
        start = process_start_time(kid)
        assert is_process_alive(kid, start)
        parent.kill()  # SIGKILL: no cleanup code runs in the parent
        parent.wait(10)
        assert _wait_dead(kid, start), "the child outlived its killed parent"
    finally:
        if parent.poll() is None:
            parent.kill()
            parent.wait()


def test_detached_children_outlive_their_parent():
    parent = _python(
        """
        import sys
        from fluxon.runtime.process_runner import popen_child
        argv = [sys.executable, "-c", "import time; time.sleep(120)"]
        kid = popen_child(argv, die_with_parent=False)
        print(kid.pid, flush=True)
        """
    )
    kid = int(parent.stdout.readline())
    start = process_start_time(kid)
    try:
        parent.wait(30)
        time.sleep(0.3)
        assert is_process_alive(kid, start)
        assert os.getsid(kid) == kid  # its own session: a terminal's Ctrl-C does not reach it
    finally:
        if is_process_alive(kid, start):
            os.kill(kid, signal.SIGKILL)


def test_config_b64_round_trip():
    cfg = {"instance_key": "k", "nested": {"a": [1, 2]}, "s": "héllo"}
    assert decode_config_b64(encode_config_b64(cfg)) == cfg


def test_popen_child_log_path(tmp_path):
    log = tmp_path / "out" / "child.log"
    proc = popen_child(
        [sys.executable, "-c", "import sys; print('to out'); print('to err', file=sys.stderr)"],
        log_path=str(log),
    )
    assert proc.wait(30) == 0
    text = log.read_text()
    assert "to out" in text and "to err" in text
