"""The examples run as documented (each against a real service plane)."""

from __future__ import annotations

import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXAMPLES = os.path.join(ROOT, "examples")


def run(args: list[str], timeout: float = 180) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, *args], capture_output=True, text=True, timeout=timeout, cwd=ROOT
    )


def test_demo_runs_end_to_end_and_cleans_up():
    proc = run([os.path.join(EXAMPLES, "demo.py")])
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "checksum ok" in proc.stderr
    assert "got seq=" in proc.stderr  # the MQ consumer received the producer's messages
    assert "producer exited 130, consumer exited 130" in proc.stderr
    assert "demo finished cleanly" in proc.stderr


def test_external_put_get_del(cluster):
    proc = run(
        [
            os.path.join(EXAMPLES, "external_put_get_del.py"),
            "--cluster",
            cluster.cluster_name,
            "--share-mem-path",
            cluster.share_mem_path,
        ]
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "put/get ok" in proc.stderr
    assert "KeyNotFoundError" in proc.stderr
