"""Process identity: (pid, start time) survives pid reuse; zombies count as dead; the
exit waiter wakes on a watched process's exit, on wake(), or after its timeout."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time

import pytest

from fluxon.procinfo import ExitWaiter, is_process_alive, process_start_time, process_state


def test_own_start_time_is_stable_and_alive():
    start = process_start_time(os.getpid())
    assert isinstance(start, int) and start > 0
    assert process_start_time(os.getpid()) == start
    assert is_process_alive(os.getpid(), start)
    assert is_process_alive(os.getpid())


def test_other_start_time_means_another_process():
    start = process_start_time(os.getpid())
    assert not is_process_alive(os.getpid(), start + 1)


def test_missing_pid():
    assert process_start_time(0) is None
    assert process_start_time(-5) is None
    assert not is_process_alive(0)
    # pid_max bounds real pids; a pid above it cannot exist
    with open("/proc/sys/kernel/pid_max") as f:
        beyond = int(f.read()) + 1
    assert process_start_time(beyond) is None
    assert not is_process_alive(beyond, 123)


def test_zombie_is_dead_then_gone():
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    deadline = time.monotonic() + 30
    # the child exits; without wait() it stays a zombie
    while time.monotonic() < deadline:
        state = process_state(child.pid)
        if state == "Z":
            break
        time.sleep(0.01)
    assert process_state(child.pid) == "Z"
    assert not is_process_alive(child.pid)
    assert not is_process_alive(child.pid, process_start_time(child.pid))
    child.wait()
    assert process_start_time(child.pid) is None


def test_command_name_with_parentheses_and_spaces(tmp_path):
    # /proc/<pid>/stat field 2 is "(comm)"; a comm with ") (" must not shift the fields
    link = tmp_path / "we ird) (name"
    os.symlink(sys.executable, link)
    child = subprocess.Popen([str(link), "-c", "import time; time.sleep(30)"])
    try:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and process_state(child.pid) is None:
            time.sleep(0.01)
        start = process_start_time(child.pid)
        assert isinstance(start, int) and start > 0
        assert process_state(child.pid) in ("R", "S", "D")
        assert is_process_alive(child.pid, start)
    finally:
        child.kill()
        child.wait()


def _sleeper() -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])


@pytest.mark.skipif(not hasattr(os, "pidfd_open"), reason="no pidfd on this system")
def test_exit_waiter_wakes_when_a_watched_process_exits():
    proc = _sleeper()
    waiter = ExitWaiter()
    try:
        key = (proc.pid, process_start_time(proc.pid))
        waiter.watch({key})
        got: list = []
        t = threading.Thread(target=lambda: got.append(waiter.wait(None)))
        t.start()
        time.sleep(0.2)
        assert t.is_alive() and not got  # sleeping: nothing exited, no timeout
        proc.kill()
        t.join(10)
        assert got == [[key]]
        assert waiter.wait(0.05) == []  # no longer watched: a timeout
    finally:
        proc.kill()
        proc.wait()
        waiter.close()


def test_exit_waiter_wake_timeout_and_what_it_does_not_watch():
    proc = _sleeper()
    waiter = ExitWaiter()
    try:
        start = process_start_time(proc.pid)
        # Another start time (the pid reused by another process) and a pid that does
        # not exist are not watched.
        waiter.watch({(proc.pid, start + 1), (2**22 + 7, None)})
        t0 = time.monotonic()
        assert waiter.wait(0.1) == []
        assert time.monotonic() - t0 >= 0.09
        got: list = []
        t = threading.Thread(target=lambda: got.append(waiter.wait(None)))
        t.start()
        waiter.wake()
        t.join(10)
        assert got == [[]]
        waiter.wake()  # a wake before the wait: the next wait returns at once
        assert waiter.wait(None) == []
    finally:
        proc.kill()
        proc.wait()
        waiter.close()
    waiter.wake()  # after close: nothing happens
    waiter.close()
