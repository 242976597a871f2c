"""Smoke test of the side-by-side benchmark runner (``python -m bench.peers``).

A tiny run over the stdlib peers (``multiprocessing.Queue`` and ``Pipe``) and fluxon:
one topology, one payload size, fractions of a second per timed window. Checks that the
report and raw results are written, that the README section is replaced without touching
the rest of the file, that no message was lost, and that the run left no work directory
or shared-memory file behind. No timing is asserted.
"""

from __future__ import annotations

import glob
import json
import os
import subprocess
import sys
import tempfile

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _fluxon_mq_available() -> bool:
    try:
        import fluxon.api_ext_chan  # noqa: F401
    except ImportError:
        return False
    return True


@pytest.mark.timeout(240)
def test_tiny_run_writes_the_table(tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text("# Benchmarks\n\nkept text\n\n## Another section\n\nalso kept\n")
    results_dir = tmp_path / "results"
    peers = ["mp-queue", "mp-pipe"] + (["fluxon"] if _fluxon_mq_available() else [])
    cmd = [
        sys.executable, "-m", "bench.peers",
        "--peers", ",".join(peers),
        "--sizes", "64B",
        "--topologies", "1-1",
        "--duration", "0.2",
        "--latency-duration", "0.2",
        "--idle", "0.2",
        "--warm-n", "20",
        "--max-minutes", "3",
        "--results-dir", str(results_dir),
        "--readme", str(readme),
        "--no-ref-install",
    ]  # fmt: skip
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=220)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]

    md_files = glob.glob(str(results_dir / "peers-*.md"))
    json_files = glob.glob(str(results_dir / "peers-*.json"))
    assert len(md_files) == 1 and len(json_files) == 1
    report = open(md_files[0]).read()
    assert "| 64B | multiprocessing.Queue |" in report
    assert "| 64B | multiprocessing.Pipe |" in report
    assert "CPU µs/msg" in report and "load" in report

    results = json.load(open(json_files[0]))
    rows = {r["peer"]: r for r in results["rows"]}
    assert set(peers) <= set(rows), results["not_run"]
    for key in peers:
        row = rows[key]
        for kind in ("thr", "lat"):
            assert row[kind]["sent"] > 0
            assert row[kind]["received"] == row[kind]["sent"], (key, kind, row[kind])
            assert row[kind]["lost"] == 0
        assert row["lat"]["n"] == row["lat"]["received"]
    if "fluxon" in peers:
        assert "| 64B | **fluxon** |" in report
        assert "1.0×" in report  # fluxon's own row: ratio 1

    text = readme.read_text()
    assert "kept text" in text and "also kept" in text
    assert text.count("## Peers side by side") == 1
    assert "| 64B | multiprocessing.Queue |" in text

    run_id = results["run_id"]
    tmp_root = tempfile.gettempdir()
    assert not glob.glob(os.path.join(tmp_root, f"fxb-peers-{run_id}-*")), "work dir left behind"
    if os.path.isdir("/dev/shm"):
        assert not [n for n in os.listdir("/dev/shm") if run_id in n], "shm files left behind"
