"""Cost of handle statistics on the MQ hot path: stats on vs off, interleaved, one process.

Usage::

    python bench/stats_cost.py              # 30 rounds (about 15 s on 2 cores)
    python bench/stats_cost.py --rounds 60

Channels in one pool, each with a producer and a consumer in this process: pairs
bound with ``FLUXON_MQ_STATS=1`` (recording, publishing into the pool stats block every
0.5 s, logging every ``FLUXON_LATENCY_LOG_INTERVAL_S``) and with ``FLUXON_MQ_STATS=0``
(null recorders: the handles time nothing), two of each, created in the order on, off,
off, on; rounds use the first two and the last two in turn (where a channel lands in
the pool shows in its speed). Each round times a block of each workload on an on and
an off pair, in an order that flips every two rounds, so a machine shared with other
work slows both alike:

* ``roundtrip 64 B``: ``put_data`` + ``get_data(batch_size=1)`` of a 64-byte message;
* ``batch 32 x 64 B``: 32 ``put_data`` then one ``get_data(batch_size=32)``.

Reported per message: the median and minimum over rounds of this thread's CPU time
(``time.thread_time_ns``: what the calls cost, not counting time the thread was
descheduled) and the median wall time. ``make bench`` has the pytest-benchmark
version of the round trip (``bench/bench_stats.py``, wall time, one variant after the
other).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
import uuid

from benchkit import client_config, machine_line, service_plane

MALLOC_ENV = {"MALLOC_MMAP_THRESHOLD_": "268435456", "MALLOC_TRIM_THRESHOLD_": "536870912"}
MESSAGE = {"payload": b"x" * 64}
VARIANTS = ("on", "off")


def _bind_pair(store, mq, enabled: bool) -> tuple:
    from fluxon.stats import STATS_ENV  # read when a handle is bound

    os.environ[STATS_ENV] = "1" if enabled else "0"
    key = f"stats-cost-{'on' if enabled else 'off'}-{uuid.uuid4().hex[:6]}"
    handles = []
    for role in (mq.ChanRole.PRODUCER, mq.ChanRole.CONSUMER):
        res = mq.new_or_bind_with_unique_key(store, {"capacity": 1024}, key, mq.ChanType.MPMC, role)
        handles.append(res.unwrap())
    return tuple(handles)


def _roundtrip(producer, consumer, n: int) -> tuple[int, int]:
    put, get = producer.put_data, consumer.get_data
    c0, w0 = time.thread_time_ns(), time.perf_counter_ns()
    for _ in range(n):
        put(MESSAGE)
        get(batch_size=1, try_time=1)
    return time.thread_time_ns() - c0, time.perf_counter_ns() - w0


def _batch32(producer, consumer, n: int) -> tuple[int, int]:
    put, get = producer.put_data, consumer.get_data
    c0, w0 = time.thread_time_ns(), time.perf_counter_ns()
    for _ in range(n // 32):
        for _ in range(32):
            put(MESSAGE)
        get(batch_size=32, try_time=1)
    return time.thread_time_ns() - c0, time.perf_counter_ns() - w0


WORKLOADS = {"roundtrip 64 B": (_roundtrip, 10_000), "batch 32 x 64 B": (_batch32, 9_600)}


def _busy_cores(seconds: float) -> float:
    """CPUs busy (all processes) over the last ``seconds``, from /proc/stat."""

    def sample() -> tuple[int, int]:
        with open("/proc/stat") as f:
            fields = [int(x) for x in f.readline().split()[1:]]
        idle = fields[3] + fields[4]
        return sum(fields) - idle, sum(fields)

    b0, t0 = sample()
    time.sleep(seconds)
    b1, t1 = sample()
    return (b1 - b0) / max(1, t1 - t0) * (os.cpu_count() or 1)


def run(rounds: int) -> None:
    from fluxon import api_ext_chan as mq
    from fluxon.kvclient import new_store

    handles: list = []
    store = None
    with service_plane("stats-cost", "256MB") as (plane, _scratch):
        try:
            store = new_store(
                client_config(plane.cluster_name, plane.share_mem_path, f"stats-cost-{os.getpid()}")
            ).unwrap()
            # Two channel sets, created in the order on, off, off, on; rounds use them in
            # turn (where a channel lands in the pool shows in its speed).
            sets: list[dict] = [{}, {}]
            for i, v in ((0, "on"), (0, "off"), (1, "off"), (1, "on")):
                sets[i][v] = _bind_pair(store, mq, v == "on")
                handles.extend(sets[i][v])
            pairs = sets[0]
            load_before = _busy_cores(1.0)
            for fn, n in WORKLOADS.values():  # warm up: compile, page in, fill the caches
                for pairs in sets:
                    for pair in pairs.values():
                        fn(*pair, n)
            cpu = {(w, v): [] for w in WORKLOADS for v in VARIANTS}
            wall = {(w, v): [] for w in WORKLOADS for v in VARIANTS}
            start = time.monotonic()
            for r in range(rounds):
                order = VARIANTS if (r // 2) % 2 == 0 else VARIANTS[::-1]
                pairs = sets[r % 2]
                for w, (fn, n) in WORKLOADS.items():
                    for v in order:
                        c, t = fn(*pairs[v], n)
                        cpu[(w, v)].append(c / n)
                        wall[(w, v)].append(t / n)
            elapsed = time.monotonic() - start
            load_after = _busy_cores(1.0)
            on_rec = type(pairs["on"][1]._stats).__name__
            off_rec = type(pairs["off"][1]._stats).__name__
        finally:
            for h in reversed(handles):
                h.close()
            if store is not None:
                store.close()

    print(f"\nMeasured {time.strftime('%Y-%m-%d')} on {machine_line()}.")
    print(
        f"{rounds} rounds in {elapsed:.0f} s; recorders: on = {on_rec}, off = {off_rec}. "
        f"CPUs busy in the second before / after the timed rounds: {load_before:.2f} / "
        f"{load_after:.2f} (this process sleeps then: other processes and the service plane)."
    )
    print("\nns per message (this thread's CPU time; wall time in the last column pair).\n")
    print("| workload | on median | off median | on - off | on / off | per round on / off: "
          "median [IQR] | on min | off min | on wall | off wall |")  # fmt: skip
    print("|---|---:|---:|---:|---:|---|---:|---:|---:|---:|")
    for w in WORKLOADS:
        on, off = (statistics.median(cpu[(w, v)]) for v in VARIANTS)
        on_w, off_w = (statistics.median(wall[(w, v)]) for v in VARIANTS)
        ratios = [a / b for a, b in zip(cpu[(w, "on")], cpu[(w, "off")])]
        q1, q2, q3 = statistics.quantiles(ratios, n=4) if len(ratios) > 1 else ratios * 3
        print(
            f"| {w} | {on:.0f} | {off:.0f} | {on - off:+.0f} | {on / off:.3f} "
            f"| {q2:.3f} [{q1:.3f}, {q3:.3f}] "
            f"| {min(cpu[(w, 'on')]):.0f} | {min(cpu[(w, 'off')]):.0f} | {on_w:.0f} | {off_w:.0f} |"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=30, help="timed rounds (default 30)")
    args = parser.parse_args()
    missing = {k: v for k, v in MALLOC_ENV.items() if os.environ.get(k) != v}
    if missing:  # same malloc settings as `make bench`, set before the interpreter starts
        os.execve(sys.executable, [sys.executable, *sys.argv], {**os.environ, **missing})
    run(args.rounds)


if __name__ == "__main__":
    main()
