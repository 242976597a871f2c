"""Idle CPU of the service plane (etcd, master, owner) and of a blocked consumer.

A fresh service plane (1 GB pool) and one consumer process blocked in
``get_data(try_time=None)`` on an empty channel; after a settling time, the CPU each
process used over a window, two ways:

* **threads**: the run time of its live threads from ``/proc/<pid>/task/*/schedstat``
  (nanoseconds; misses threads that start and end inside the window, such as those
  of a gRPC channel opened and closed again);
* **process**: ``utime + stime`` of ``/proc/<pid>/stat`` (clock ticks of 10 ms, all
  threads, also those that ended; needs a long window to resolve fractions of a percent).

``--threads`` also lists each process's busiest threads with their wake-ups per second.

Usage::

    python bench/idle_cpu.py [--window 30] [--settle 8] [--threads]
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import sys
import time
import uuid

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from benchkit import client_config, machine_line, service_plane

TICKS = os.sysconf("SC_CLK_TCK")


def _threads(pid: int) -> dict[str, tuple[str, int, int]]:
    """``{tid: (name, run ns, timeslices)}`` of the live threads of ``pid``."""
    out = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid}/comm") as f:
                name = f.read().strip()
            with open(f"/proc/{pid}/task/{tid}/schedstat") as f:
                run_ns, _wait_ns, slices = map(int, f.read().split())
        except OSError:
            continue
        out[tid] = (name, run_ns, slices)
    return out


def _process_ticks(pid: int) -> int:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])  # utime, stime


def _blocked_consumer(cluster: str, share: str, key: str, ready: mp.Event) -> None:
    from fluxon import api_ext_chan as mq
    from fluxon.kvclient import new_store

    store = new_store(client_config(cluster, share, f"idle-cpu-{os.getpid()}")).unwrap()
    consumer = mq.new_or_bind_with_unique_key(
        store, {"capacity": 64}, key, mq.ChanType.MPMC, mq.ChanRole.CONSUMER
    ).unwrap()
    ready.set()
    consumer.get_data(batch_size=1, try_time=None)  # until the process is ended


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--window", type=float, default=30.0, help="measured seconds (30)")
    ap.add_argument("--settle", type=float, default=8.0, help="seconds before measuring (8)")
    ap.add_argument("--threads", action="store_true", help="also list the busiest threads")
    a = ap.parse_args()

    ctx = mp.get_context("spawn")
    with service_plane("idle-cpu", "1GB") as (plane, _scratch):
        ready = ctx.Event()
        proc = ctx.Process(
            target=_blocked_consumer,
            args=(plane.cluster_name, plane.share_mem_path, "idle-" + uuid.uuid4().hex[:6], ready),
            daemon=True,
        )
        proc.start()
        try:
            if not ready.wait(120):
                raise SystemExit("the consumer did not attach")
            time.sleep(a.settle)
            pids = {
                "etcd": plane.etcd_server.pid,
                "master": plane.master_proc.pid,
                "owner": plane.owner_proc.pid,
                "blocked consumer": proc.pid,
            }
            before = {k: (_threads(p), _process_ticks(p)) for k, p in pids.items()}
            t0 = time.monotonic()
            time.sleep(a.window)
            el = time.monotonic() - t0
            after = {k: (_threads(p), _process_ticks(p)) for k, p in pids.items()}
        finally:
            proc.kill()
            proc.join(10)

    print(f"\nMeasured {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} on {machine_line()}.")
    print(f"Window {el:.0f} s after {a.settle:.0f} s of settling; % of one core.\n")
    print("| process | threads (schedstat) | process (clock ticks) |")
    print("|---|--:|--:|")
    total = {"threads": 0.0, "ticks": 0.0}
    rows = {}
    for k in pids:
        (t_a, k_a), (t_b, k_b) = before[k], after[k]
        per = [(t_b[t][1] - t_a[t][1], t_b[t][2] - t_a[t][2], t_b[t][0]) for t in t_b if t in t_a]
        threads = sum(ns for ns, _, _ in per) / el / 1e9 * 100
        ticks = (k_b - k_a) / TICKS / el * 100
        rows[k] = per
        print(f"| {k} | {threads:.3f} % | {ticks:.2f} % |")
        if k != "etcd":
            total["threads"] += threads
            total["ticks"] += ticks
    print(
        f"| owner + master + blocked consumer | {total['threads']:.3f} % | {total['ticks']:.2f} % |"
    )
    if a.threads:
        for k, per in rows.items():
            print(f"\n{k}: busiest threads (% of a core, wake-ups/s)")
            for ns, slices, name in sorted(per, reverse=True)[:8]:
                print(f"  {name:18s} {ns / el / 1e9 * 100:.3f} %  {slices / el:6.1f}/s")


if __name__ == "__main__":
    main()
