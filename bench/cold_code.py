"""How much slower code runs when it ran last a little while ago (cache state on this host).

Times one decode of the harness message (``{"seq", "t", "payload": 64 B}``, the
specialised decoder a consumer uses) right after a gap during which the process did
something else, for gaps of a few to a hundred microseconds and four kinds of gap:

* **pause**: a Numba loop of ``pause`` instructions (touches no memory);
* **arith**: a Numba loop of integer arithmetic (touches no memory either);
* **python**: a Python loop reading the clock;
* **sleep**: ``time.sleep`` for the gap (the thread leaves the CPU).

Prints, per gap, the median decode time and the share of decodes slower than twice the
back-to-back median. On a machine where nothing else runs on the core the first three
kinds stay near the back-to-back figure for every gap (the loops evict nothing); a rise
with the gap length shows that something outside this process evicts the decode's
instructions and data, which then bounds the one-way latency of any Python-level path.

Usage::

    python bench/cold_code.py [--samples 2000] [--gaps 2,10,20,30,50,100]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import numpy as np
from numba import njit

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from fluxon import codec
from fluxon_kernels.atomics import cpu_relax

_ns = time.perf_counter_ns


@njit(cache=True)
def _pause_loop(n):
    for _ in range(n):
        cpu_relax()


@njit(cache=True)
def _arith_loop(n):
    s = 0
    for i in range(n):
        s = (s * 31 + i) & 0xFFFFFF
    return s


def _per_iteration_ns(loop) -> float:
    loop(1000)
    t = _ns()
    loop(200_000)
    return (_ns() - t) / 200_000


def _python_gap(ns: int) -> None:
    end = _ns() + ns
    while _ns() < end:
        pass


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--samples", type=int, default=2000, help="decodes per gap and kind")
    ap.add_argument("--gaps", default="2,10,20,30,50,100", help="gap lengths in µs")
    args = ap.parse_args()
    gaps = [float(g) for g in args.gaps.split(",")]

    raw = codec.encode({"seq": 1, "t": time.monotonic_ns(), "payload": b"x" * 64})
    buf = np.frombuffer(raw, dtype=np.uint8).copy()
    offs, lens = [0], [len(raw)]
    for _ in range(codec.FAST_AFTER + 100):  # learn the shape; warm everything up
        codec.decode_many(buf, offs, lens)

    pause_ns, arith_ns = _per_iteration_ns(_pause_loop), _per_iteration_ns(_arith_loop)
    gap_of = {
        "pause": lambda us: _pause_loop(int(us * 1000 / pause_ns)),
        "arith": lambda us: _arith_loop(int(us * 1000 / arith_ns)),
        "python": lambda us: _python_gap(int(us * 1000)),
        "sleep": lambda us: time.sleep(us / 1e6),
    }

    def decode_after(gap, us: float) -> list[int]:
        out = []
        for _ in range(args.samples):
            if us:
                gap(us)
            t = _ns()
            codec.decode_many(buf, offs, lens)
            out.append(_ns() - t)
        return out

    hot = statistics.median(decode_after(None, 0))
    print(f"decode back to back: median {hot / 1e3:.2f} µs ({args.samples} samples)")
    print()
    print("| gap µs | " + " | ".join(f"{k}: median µs, share slow" for k in gap_of) + " |")
    print("|--:|" + "--:|" * len(gap_of))
    for us in gaps:
        cells = []
        for gap in gap_of.values():
            times = decode_after(gap, us)
            slow = sum(t > 2 * hot for t in times) / len(times)
            cells.append(f"{statistics.median(times) / 1e3:.2f}, {slow:.0%}")
        print(f"| {us:g} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
