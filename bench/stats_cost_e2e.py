"""Cost of handle statistics end to end: stats on vs off, interleaved, two processes.

Usage::

    python bench/stats_cost_e2e.py               # 12 rounds (about a minute)
    python bench/stats_cost_e2e.py --rounds 20 --window 1.5

One producer process and one consumer process, each holding a handle on each of four
channels: two bound with ``FLUXON_MQ_STATS=1`` (recording, publishing into the pool
stats block every 0.5 s, logging every ``FLUXON_LATENCY_LOG_INTERVAL_S``), two with
``FLUXON_MQ_STATS=0`` (null recorders). The channels are created in the order on, off,
off, on and the rounds use the first two and the last two in turn, since where a
channel lands in the pool shows in its speed. The same two processes alternate between
the channels window by window (the order flips every two rounds), so both variants see
the same processes, the same pool and the same machine state:

* **throughput**: the producer sends 64-byte messages ``{"seq", "t", "payload"}`` with
  ``put_data`` as fast as it can for ``--window`` seconds into a channel of capacity
  1024; the consumer drains it with ``get_data(batch_size=32)``. msgs/s = messages
  received / (last receive - window start).
* **latency**: the producer paces ``--rate`` messages a second for ``--window``
  seconds; one-way latency = receive time - the ``t`` stamped before the send.

Besides msgs/s and p50/p99, each window reports both processes' CPU time per message.
The summary gives medians over rounds and the median of the per-round ratios on / off
with their interquartile range (how much the same comparison varies round to round).
"""

from __future__ import annotations

import argparse
import array
import multiprocessing as mp
import os
import statistics
import sys
import time
import uuid

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from benchkit import client_config, machine_line, service_plane  # noqa: E402
from stats_cost import MALLOC_ENV, VARIANTS, _busy_cores  # noqa: E402

BATCH = 32
#: Channel sets, bound in this order; round r uses set r % 2, so each variant is as often
#: on the first-created channel of a set as on the second.
CHANNELS = ((0, "on"), (0, "off"), (1, "off"), (1, "on"))
CAPACITY = 1024
PAYLOAD = b"x" * 64

# Control words shared by the runner and both workers (multiprocessing RawArray "q").
C_PHASE = 0  # phase number; the workers run phase N once C_PHASE == N (-1: quit)
C_KIND = 1  # 0 throughput, 1 latency
C_VARIANT = 2  # index into VARIANTS, + 2 for channel set 1
C_START_NS = 3  # CLOCK_MONOTONIC start of the window
C_END_NS = 4  # ... and its end
C_SENT = 5  # producer: messages sent in the phase (set when done)
C_PROD_DONE = 6  # producer: last phase finished
C_RECEIVED = 7  # consumer: messages received in the current phase
C_LAST_NS = 8  # consumer: time of the last receive in the phase
C_CONS_DONE = 9  # consumer: last phase finished (all sent messages received)
C_PROD_CPU = 10  # CPU ns of the producer in the phase
C_CONS_CPU = 11  # ... of the consumer
C_READY_P = 12  # producer: warm-up sent
C_READY_C = 13  # consumer: warm-up drained
N_CONTROL = 14


def _handles(role: str, cfg: dict) -> tuple:
    from fluxon import api_ext_chan as mq
    from fluxon.kvclient import new_store
    from fluxon.stats import STATS_ENV

    store = new_store(
        client_config(cfg["cluster"], cfg["share"], f"stats-e2e-{role}-{os.getpid()}")
    ).unwrap()
    r = mq.ChanRole.PRODUCER if role == "producer" else mq.ChanRole.CONSUMER
    handles = {}
    for ch, v in CHANNELS:  # in creation order: where a channel lands in the pool matters
        os.environ[STATS_ENV] = "1" if v == "on" else "0"  # read when a handle is bound
        key = f"{cfg['key']}-{ch}-{v}"
        cfg_chan = {"capacity": CAPACITY}
        res = mq.new_or_bind_with_unique_key(store, cfg_chan, key, mq.ChanType.MPMC, r)
        handles[(ch, v)] = res.unwrap()
    return store, handles


def _close(store, handles: dict) -> None:
    for h in handles.values():
        h.close()
    store.close()


def _current(handles: dict, ctl):
    v = ctl[C_VARIANT]
    return handles[(v // 2, VARIANTS[v % 2])]


def _wait_phase(ctl, phase: int) -> bool:
    while ctl[C_PHASE] != phase:
        if ctl[C_PHASE] < 0:
            return False
        time.sleep(0.0005)
    return True


def _producer(cfg: dict, ctl) -> None:
    store, handles = _handles("producer", cfg)
    mono = time.monotonic_ns
    try:
        for h in handles.values():  # warm-up: compile, fault the slots in
            for i in range(4 * CAPACITY):
                while not h.put_data({"seq": -1, "t": mono(), "payload": PAYLOAD}, 0.2).unwrap():
                    pass
        ctl[C_READY_P] = 1
        phase = 1
        while _wait_phase(ctl, phase):
            put = _current(handles, ctl).put_data
            start, end = ctl[C_START_NS], ctl[C_END_NS]
            while mono() < start:
                pass
            c0 = time.process_time_ns()
            sent = 0
            if ctl[C_KIND] == 0:
                while True:
                    t = mono()
                    if t >= end:
                        break
                    if put({"seq": sent, "t": t, "payload": PAYLOAD}, 0.2).unwrap():
                        sent += 1
            else:
                gap = 1e9 / cfg["rate"]
                while True:
                    target = start + int(sent * gap)
                    if target >= end:
                        break
                    now = mono()
                    if target > now:
                        time.sleep((target - now) / 1e9)
                    while not put({"seq": sent, "t": mono(), "payload": PAYLOAD}, 0.2).unwrap():
                        pass
                    sent += 1
            ctl[C_PROD_CPU] = time.process_time_ns() - c0
            ctl[C_SENT] = sent
            ctl[C_PROD_DONE] = phase
            phase += 1
    finally:
        _close(store, handles)


def _consumer(cfg: dict, ctl, lat_path: str) -> None:
    store, handles = _handles("consumer", cfg)
    mono = time.monotonic_ns
    try:
        empty = 0
        while not ctl[C_READY_P] or empty < len(handles):  # drain the warm-up
            empty = 0
            for h in handles.values():
                empty += not h.get_data(batch_size=BATCH, try_time=0.05).is_ok()
        ctl[C_READY_C] = 1
        phase = 1
        while _wait_phase(ctl, phase):
            get = _current(handles, ctl).get_data
            record = ctl[C_KIND] == 1
            lats = array.array("q")
            received = last = 0
            c0 = time.process_time_ns()
            # Until the producer is done with this phase and everything it sent arrived.
            while ctl[C_PROD_DONE] != phase or received < ctl[C_SENT]:
                r = get(batch_size=BATCH, try_time=0.02)
                if not r.is_ok():
                    continue
                msgs = r.unwrap()
                now = mono()
                received += len(msgs)
                last = now
                if record:
                    for m in msgs:
                        lats.append(now - m["t"])
            ctl[C_CONS_CPU] = time.process_time_ns() - c0
            ctl[C_RECEIVED] = received
            ctl[C_LAST_NS] = last
            with open(lat_path, "wb") as f:
                lats.tofile(f)
            ctl[C_CONS_DONE] = phase
            phase += 1
    finally:
        _close(store, handles)


def _percentile(sorted_vals: list, q: float) -> float:
    return float(sorted_vals[min(len(sorted_vals) - 1, int(q * len(sorted_vals)))])


def _phase(ctl, procs: list, phase: int, kind: int, variant: int, args, lat_path: str) -> dict:
    """Run one window (``variant`` indexes VARIANTS, + 2 for channel set 1); its row."""
    ctl[C_KIND], ctl[C_VARIANT] = kind, variant
    start = time.monotonic_ns() + 20_000_000
    ctl[C_START_NS], ctl[C_END_NS] = start, start + int(args.window * 1e9)
    ctl[C_PHASE] = phase
    deadline = time.monotonic() + args.window + 30
    while ctl[C_CONS_DONE] != phase:
        if time.monotonic() > deadline or not all(p.is_alive() for p in procs):
            raise RuntimeError(f"phase {phase} did not finish")
        time.sleep(0.002)
    sent, received = ctl[C_SENT], ctl[C_RECEIVED]
    row = {"kind": kind, "variant": VARIANTS[variant % 2], "sent": sent,
           "lost": sent - received,
           "prod_cpu_ns": ctl[C_PROD_CPU] / max(1, sent),
           "cons_cpu_ns": ctl[C_CONS_CPU] / max(1, received)}  # fmt: skip
    if kind == 0:
        row["msgs_per_s"] = received / ((ctl[C_LAST_NS] - start) / 1e9)
    else:
        lats = array.array("q")
        with open(lat_path, "rb") as f:
            lats.frombytes(f.read())
        lat = sorted(lats)
        row["p50_us"] = _percentile(lat, 0.5) / 1e3
        row["p99_us"] = _percentile(lat, 0.99) / 1e3
    return row


def run(args: argparse.Namespace) -> None:
    ctx = mp.get_context("spawn")
    ctl = ctx.RawArray("q", N_CONTROL)
    rows: list[dict] = []
    name = f"stats-e2e-{uuid.uuid4().hex[:6]}"
    with service_plane(name, "256MB") as (plane, scratch):
        lat_path = os.path.join(scratch, "lat.bin")
        cfg = {"cluster": name, "share": plane.share_mem_path, "rate": args.rate, "key": name}
        procs = [
            ctx.Process(target=_consumer, args=(cfg, ctl, lat_path), name="stats-e2e-consumer"),
            ctx.Process(target=_producer, args=(cfg, ctl), name="stats-e2e-producer"),
        ]
        try:
            for p in procs:
                p.daemon = True
                p.start()
            deadline = time.monotonic() + 180
            while not ctl[C_READY_C]:
                if time.monotonic() > deadline or not all(p.is_alive() for p in procs):
                    raise RuntimeError("workers did not get ready")
                time.sleep(0.05)
            load_before = _busy_cores(1.0)
            t_start = time.monotonic()
            phase = 0
            for r in range(args.rounds):
                order = (0, 1) if (r // 2) % 2 == 0 else (1, 0)
                for kind in (0, 1):
                    for vi in order:
                        phase += 1
                        row = _phase(ctl, procs, phase, kind, vi + 2 * (r % 2), args, lat_path)
                        rows.append({"round": r, **row})
            elapsed = time.monotonic() - t_start
            load_after = _busy_cores(1.0)
        finally:
            ctl[C_PHASE] = -1
            for p in procs:
                p.join(timeout=10)
                if p.is_alive():
                    p.kill()  # by pid: a worker this script started
                    p.join(timeout=5)
    report(rows, args, elapsed, load_before, load_after)


def _ratios(rows: list[dict], kind: int, field: str) -> tuple[float, float, float, float, float]:
    """Medians on / off and the per-round ratio on/off: median, lower and upper quartile."""
    on = {r["round"]: r[field] for r in rows if r["kind"] == kind and r["variant"] == "on"}
    off = {r["round"]: r[field] for r in rows if r["kind"] == kind and r["variant"] == "off"}
    ratios = sorted(on[k] / off[k] for k in on if off.get(k))
    q = statistics.quantiles(ratios, n=4) if len(ratios) > 1 else [ratios[0]] * 3
    return statistics.median(on.values()), statistics.median(off.values()), q[1], q[0], q[2]


def report(rows: list[dict], args, elapsed: float, load_before: float, load_after: float) -> None:
    print(f"\nMeasured {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} on {machine_line()}.")
    print(
        f"{args.rounds} rounds of {args.window:g} s windows in {elapsed:.0f} s; latency windows "
        f"at {args.rate} msgs/s. CPUs busy in the second before / after the rounds (service "
        f"plane and other processes): {load_before:.2f} / {load_after:.2f}. Lost messages: "
        f"{sum(r['lost'] for r in rows)}."
    )
    print("\n| measure | on (median) | off (median) | on / off per round: median [IQR] |")
    print("|---|---:|---:|---|")
    fields = [
        (0, "msgs_per_s", "max throughput, msgs/s", "{:,.0f}"),
        (0, "prod_cpu_ns", "producer CPU ns/msg at max throughput", "{:.0f}"),
        (0, "cons_cpu_ns", "consumer CPU ns/msg at max throughput", "{:.0f}"),
        (1, "p50_us", f"one-way latency p50, µs ({args.rate}/s)", "{:.1f}"),
        (1, "p99_us", f"one-way latency p99, µs ({args.rate}/s)", "{:.1f}"),
        (1, "prod_cpu_ns", f"producer CPU ns/msg ({args.rate}/s)", "{:.0f}"),
    ]
    for kind, field, label, fmt in fields:
        on, off, med, lo, hi = _ratios(rows, kind, field)
        cells = (label, fmt.format(on), fmt.format(off), f"{med:.3f} [{lo:.3f}, {hi:.3f}]")
        print("| " + " | ".join(cells) + " |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=12, help="rounds (default 12)")
    parser.add_argument("--window", type=float, default=1.0, help="seconds per window (1)")
    parser.add_argument("--rate", type=int, default=10_000, help="latency rate, msgs/s")
    args = parser.parse_args()
    if args.rounds < 1 or args.window <= 0 or args.rate <= 0:
        parser.error("--rounds, --window and --rate must be positive")
    missing = {k: v for k, v in MALLOC_ENV.items() if os.environ.get(k) != v}
    if missing:  # same malloc settings as `make bench`, set before the interpreter starts
        os.execve(sys.executable, [sys.executable, *sys.argv], {**os.environ, **missing})
    run(args)


if __name__ == "__main__":
    main()
