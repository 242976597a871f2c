"""Smoke test of ``bench/idle_cpu.py``: a one-second window prints a row per process
(etcd, master, owner, blocked consumer) and the sum the idle target is about, and the run
leaves no shared-memory pool behind. No figure is asserted."""

from __future__ import annotations

import glob
import os
import re
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.timeout(240)
def test_short_window_prints_every_process():
    before = set(glob.glob("/dev/shm/fluxon_idle-cpu_*"))
    proc = subprocess.run(
        [sys.executable, "bench/idle_cpu.py", "--window", "1", "--settle", "0", "--threads"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=200,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    for name in (
        "etcd",
        "master",
        "owner",
        "blocked consumer",
        "owner + master + blocked consumer",
    ):
        assert re.search(
            rf"^\| {re.escape(name)} \| [\d.]+ % \| [\d.]+ % \|$", proc.stdout, re.M
        ), (
            name,
            proc.stdout,
        )
    assert "owner: busiest threads" in proc.stdout
    assert set(glob.glob("/dev/shm/fluxon_idle-cpu_*")) <= before
