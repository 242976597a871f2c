"""Smoke test of ``bench/cold_code.py``: a short run prints the back-to-back figure and a
row per gap with every kind of gap. No figure is asserted."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.timeout(240)
def test_a_short_run_prints_a_row_per_gap():
    proc = subprocess.run(
        [sys.executable, "bench/cold_code.py", "--samples", "20", "--gaps", "1,5"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=200,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert re.search(r"^decode back to back: median [\d.]+ µs \(20 samples\)$", proc.stdout, re.M)
    cells = r" \| ".join([r"[\d.]+, \d+%"] * 4)
    for gap in ("1", "5"):
        assert re.search(rf"^\| {gap} \| {cells} \|$", proc.stdout, re.M), proc.stdout
