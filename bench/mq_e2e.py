"""End-to-end MQ benchmark: fluxon channels beside ``multiprocessing.Queue``, same run.

Usage::

    python bench/mq_e2e.py            # full run (about 3 minutes on 2 cores)
    python bench/mq_e2e.py --quick    # shorter windows (about 1 minute)

What it measures, for each topology (``1->1``, ``2->2``: producer and consumer
processes) and payload (64 B, 4 KiB, 1 MiB):

* **max throughput**: producers send as fast as they can for ``--duration`` seconds into
  a queue bounded to the same capacity for both systems (64 MiB of payload, 8..1024
  messages); consumers drain it, fluxon with ``get_data(batch_size=32)``,
  ``multiprocessing.Queue`` with ``get()`` (it has no batch get). msgs/s = messages
  received / (last receive - start of the window); MB/s counts payload bytes.
* **one-way latency** (64 B): producers pace ``--rate`` messages/s (all together) for
  ``--latency-duration`` seconds; latency = receive time - the ``t`` stamped just
  before the send (CLOCK_MONOTONIC is system-wide); p50/p99/p99.9 over every message.

Every message is ``{"seq": int, "t": time.monotonic_ns(), "payload": bytes}``. Each row
starts fresh worker processes (from a fork server that preloaded fluxon), warms up
(binds, first messages, page faults; not counted) and then measures. Lost messages
(sent - received) are reported. ``load`` is how many CPUs other processes kept busy
during the window (machine busy time minus this run's workers, from ``/proc``): rows
measured with ``load`` well above 0 ran on a shared machine.

The script runs the fluxon service plane (etcd, master, owner) in temporary
directories with the pool under ``/dev/shm``, on free loopback ports, and stops it and
removes everything on exit (also on Ctrl-C). Every process of a run gets
``MALLOC_MMAP_THRESHOLD_``/``MALLOC_TRIM_THRESHOLD_`` (the script re-executes itself
with them when they are missing), as ``make bench`` does.
"""

from __future__ import annotations

import argparse
import array
import json
import multiprocessing as mp
import os
import queue
import signal
import sys
import time
import uuid
from contextlib import ExitStack

from benchkit import machine_line, service_plane

MALLOC_ENV = {"MALLOC_MMAP_THRESHOLD_": "268435456", "MALLOC_TRIM_THRESHOLD_": "536870912"}
SIZES = {"64 B": 64, "4 KiB": 4096, "1 MiB": 1 << 20}
TOPOLOGIES = {"1->1": (1, 1), "2->2": (2, 2)}
BATCH = 32
CAPACITY_BYTES = 64 << 20
WARM_S = 0.5
DRAIN_S = 10.0
SETUP_S = 120.0

# shared int64 slots of a row (multiprocessing RawArray)
S_STOP = 0  # consumers stop when set
S_GO_NS = 1  # CLOCK_MONOTONIC instant the measured window starts
S_COUNTS = 2  # one slot per consumer: messages received in the window so far


def capacity(size: int) -> int:
    """Queue bound (messages) for a payload size: 64 MiB of payload, within 8..1024."""
    return max(8, min(1024, CAPACITY_BYTES // size))


# ----------------------------------------------------------------------------- workers
class _FluxonEnd:
    """One fluxon producer or consumer handle in a worker process."""

    def __init__(self, role: str, cfg: dict) -> None:
        from fluxon.api_error import MessageConsumptionNoNewMessageError
        from fluxon.api_ext_chan import ChanRole, ChanType, new_or_bind_with_unique_key
        from fluxon.kvclient import new_store

        self._empty = MessageConsumptionNoNewMessageError
        self.store = new_store(
            {
                "instance_key": f"mq-e2e-{role}-{os.getpid()}",
                "fluxonkv_spec": {
                    "cluster_name": cfg["cluster_name"],
                    "share_mem_path": cfg["share_mem_path"],
                },
            }
        ).unwrap()
        self.h = new_or_bind_with_unique_key(
            self.store,
            {"capacity": cfg["capacity"], "ttl_seconds": 30},
            unique_id=cfg["key"],
            chan_type=ChanType.MPMC,
            chan_role=ChanRole.PRODUCER if role == "producer" else ChanRole.CONSUMER,
        ).unwrap()

    def sender(self):
        put = self.h.put_data

        def send(msg: dict) -> bool:
            r = put(msg, 0.2)
            if r.is_ok():
                return r.unwrap()
            raise r.unwrap_error()

        return send

    def receiver(self):
        get = self.h.get_data
        empty = self._empty

        def recv(timeout: float) -> list:
            r = get(BATCH, timeout)
            if r.is_ok():
                return r.unwrap()
            err = r.unwrap_error()
            if isinstance(err, empty):
                return []
            raise err

        return recv

    def close(self) -> None:
        self.h.close()
        self.store.close()


class _QueueEnd:
    """A ``multiprocessing.Queue`` end in a worker process."""

    def __init__(self, q) -> None:
        self.q = q

    def sender(self):
        put = self.q.put
        full = queue.Full

        def send(msg: dict) -> bool:
            try:
                put(msg, True, 0.2)
            except full:
                return False
            return True

        return send

    def receiver(self):
        get = self.q.get
        empty = queue.Empty

        def recv(timeout: float) -> list:
            try:
                return [get(True, timeout)]
            except empty:
                return []

        return recv

    def close(self, flush: bool = False) -> None:
        if not flush:
            self.q.cancel_join_thread()  # a consumer: never block exit on the queue
        self.q.close()
        if flush:
            self.q.join_thread()  # a producer: what put() accepted reaches the pipe


def _sleep_until(target_ns: int) -> None:
    now = time.monotonic_ns()
    if target_ns > now:
        time.sleep((target_ns - now) / 1e9)


def _produce(send, cfg: dict, idx: int, slots) -> dict:
    payload = b"x" * cfg["size"]
    mono = time.monotonic_ns
    go = slots[S_GO_NS]
    end = go + int(cfg["duration"] * 1e9)
    warm_start = go - int(WARM_S * 1e9)
    sent = timeouts = 0
    if cfg["kind"] == "throughput":
        _sleep_until(warm_start)
        for i in range(cfg["warm_n"]):  # warm-up: negative seq, not counted
            while not send({"seq": -1 - i, "t": mono(), "payload": payload}):
                pass
        _sleep_until(go)
        while True:
            t = mono()
            if t >= end:
                break
            if send({"seq": sent, "t": t, "payload": payload}):
                sent += 1
            else:
                timeouts += 1
    else:
        n_prod = cfg["producers"]
        interval = n_prod * 1e9 / cfg["rate"]  # this producer's gap between sends
        start = warm_start + idx * interval / n_prod  # producers interleave evenly
        k = 0
        while True:
            target = start + int(k * interval)
            if target >= end:
                break
            _sleep_until(target)
            seq = sent if target >= go else -1 - k
            t = mono()
            while not send({"seq": seq, "t": t, "payload": payload}):
                timeouts += 1
                t = mono()
            if seq >= 0:
                sent += 1
            k += 1
    return {"sent": sent, "timeouts": timeouts}


def _consume(recv, cfg: dict, idx: int, slots, lat_path: str) -> dict:
    mono = time.monotonic_ns
    slot = S_COUNTS + idx
    record = cfg["kind"] == "latency"
    lats = array.array("q")
    received = 0
    t_last = 0
    while not slots[S_STOP]:
        msgs = recv(0.02)
        if not msgs:
            continue
        now = mono()
        counted = 0
        for m in msgs:
            if m["seq"] >= 0:
                counted += 1
                if record:
                    lats.append(now - m["t"])
        if counted:
            received += counted
            t_last = now
            slots[slot] = received
    if record:
        with open(lat_path, "wb") as f:
            lats.tofile(f)
    return {"received": received, "t_last": t_last}


def worker(role: str, idx: int, cfg: dict, slots, results, go_event, endpoint) -> None:
    """Worker process: open the endpoint, report ready, run the row, report results."""
    try:
        end = _FluxonEnd(role, cfg) if cfg["system"] == "fluxon" else _QueueEnd(endpoint)
    except BaseException as exc:  # noqa: BLE001 - reported to the runner
        results.put((role, idx, {"error": f"{type(exc).__name__}: {exc}"}))
        return
    try:
        results.put((role, idx, "ready"))
        if not go_event.wait(SETUP_S):
            return
        if role == "producer":
            res = _produce(end.sender(), cfg, idx, slots)
        else:
            lat_path = os.path.join(cfg["run_dir"], f"lat-{cfg['row']}-{idx}.bin")
            res = _consume(end.receiver(), cfg, idx, slots, lat_path)
            res["lat_file"] = lat_path if cfg["kind"] == "latency" else None
        results.put((role, idx, res))
    except BaseException as exc:  # noqa: BLE001 - reported to the runner
        results.put((role, idx, {"error": f"{type(exc).__name__}: {exc}"}))
    finally:
        if isinstance(end, _QueueEnd):
            end.close(flush=role == "producer")
        else:
            end.close()


# ----------------------------------------------------------------------------- runner
def _machine_jiffies() -> tuple[int, int]:
    """(busy, total) jiffies of all CPUs since boot."""
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:9]]
    busy = v[0] + v[1] + v[2] + v[5] + v[6]
    return busy, busy + v[3] + v[4] + v[7]


def _cpu_seconds(pids: list[int]) -> float:
    """utime + stime of these processes (those still alive), seconds."""
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        total += int(fields[11]) + int(fields[12])
    return total / os.sysconf("SC_CLK_TCK")


def _percentile(sorted_vals: list, q: float) -> float:
    if not sorted_vals:
        return float("nan")
    i = min(len(sorted_vals) - 1, max(0, int(round(q * (len(sorted_vals) - 1)))))
    return sorted_vals[i]


class Runner:
    """Runs the rows; owns the service plane, the fork server context and the temp dirs."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self._stack = ExitStack()  # the service plane and its directories
        self.run_dir = ""
        self.share = ""
        self.cluster = f"mqe2e-{uuid.uuid4().hex[:8]}"
        self.ctx = mp.get_context("forkserver")
        self.ctx.set_forkserver_preload(["numpy", "fluxon.api_ext_chan", "fluxon.kvclient"])
        self.procs: list = []
        self.rows: list[dict] = []

    # plane -----------------------------------------------------------------------------
    def start_plane(self) -> None:
        plane, self.run_dir = self._stack.enter_context(
            service_plane(self.cluster, "1GB", timeout=SETUP_S)
        )
        self.share = plane.share_mem_path

    def close(self) -> None:
        self._stop_workers()
        self._stack.close()

    def _stop_workers(self) -> None:
        for p in self.procs:
            p.join(timeout=5.0)
            if p.is_alive():
                p.kill()  # by pid: only processes this runner started
                p.join(timeout=5.0)
        self.procs = []

    # rows ------------------------------------------------------------------------------
    def run_row(self, system: str, topo: str, size_name: str, kind: str) -> dict:
        n_prod, n_cons = TOPOLOGIES[topo]
        size = SIZES[size_name]
        a = self.args
        duration = a.duration if kind == "throughput" else a.latency_duration
        row_id = len(self.rows)
        cfg = {
            "system": system,
            "kind": kind,
            "row": row_id,
            "size": size,
            "capacity": capacity(size),
            "producers": n_prod,
            "duration": duration,
            "rate": a.rate,
            "warm_n": max(4, min(2000, (8 << 20) // size)),
            "run_dir": self.run_dir,
            "cluster_name": self.cluster,
            "share_mem_path": self.share,
            "key": f"mq-e2e-{row_id}-{uuid.uuid4().hex[:8]}",
        }
        slots = self.ctx.RawArray("q", S_COUNTS + n_cons)
        results = self.ctx.Queue()
        go_event = self.ctx.Event()
        q = self.ctx.Queue(maxsize=capacity(size)) if system == "mp.Queue" else None
        roles = [("producer", i) for i in range(n_prod)] + [("consumer", i) for i in range(n_cons)]
        # consumers first, so a channel's consumers are bound before anything is sent
        for role, idx in sorted(roles, key=lambda r: r[0] != "consumer"):
            p = self.ctx.Process(
                target=worker,
                args=(role, idx, cfg, slots, results, go_event, q),
                name=f"mq-e2e-{role}{idx}",
                daemon=True,
            )
            p.start()
            self.procs.append(p)
        row = {"system": system, "topology": topo, "size": size_name, "kind": kind}
        try:
            got = self._collect(results, len(roles), SETUP_S, want="ready")
            errors = [r for r in got.values() if isinstance(r, dict) and "error" in r]
            if errors:
                raise RuntimeError(errors[0]["error"])
            slots[S_GO_NS] = time.monotonic_ns() + int((WARM_S + 0.05) * 1e9)
            go_event.set()
            _sleep_until(slots[S_GO_NS])
            pids = [p.pid for p in self.procs]
            m0, c0, t0 = _machine_jiffies(), _cpu_seconds(pids), time.monotonic()
            prods = self._collect(results, n_prod, duration + SETUP_S, role="producer")
            sent = sum(r.get("sent", 0) for r in prods.values())
            drain_end = time.monotonic() + DRAIN_S
            while time.monotonic() < drain_end:
                if sum(slots[S_COUNTS + i] for i in range(n_cons)) >= sent:
                    break
                time.sleep(0.005)
            m1, c1, t1 = _machine_jiffies(), _cpu_seconds(pids), time.monotonic()
            slots[S_STOP] = 1
            cons = self._collect(results, n_cons, 30.0, role="consumer")
            for r in list(prods.values()) + list(cons.values()):
                if "error" in r:
                    raise RuntimeError(r["error"])
            row.update(self._summarise(kind, size, sent, prods, cons, slots[S_GO_NS]))
            busy = (m1[0] - m0[0]) / os.sysconf("SC_CLK_TCK") / (t1 - t0)
            ours = (c1 - c0) / (t1 - t0)
            row["machine_cores"] = busy
            row["workers_cores"] = ours
            row["load"] = max(0.0, busy - ours)
            received = row["received"]
            row["cpu_us_per_msg"] = (c1 - c0) / received * 1e6 if received else float("nan")
        except Exception as exc:  # noqa: BLE001 - the row fails, the run goes on
            row["error"] = str(exc)
            slots[S_STOP] = 1
            go_event.set()
        finally:
            slots[S_STOP] = 1
            self._stop_workers()
            if q is not None:
                q.close()
                q.join_thread()
            results.close()
            results.join_thread()
        self.rows.append(row)
        return row

    @staticmethod
    def _collect(
        results, n: int, timeout: float, want: str | None = None, role: str | None = None
    ) -> dict:
        out: dict = {}
        deadline = time.monotonic() + timeout
        while len(out) < n:
            left = deadline - time.monotonic()
            if left <= 0:
                raise RuntimeError(f"timed out waiting for {n - len(out)} worker(s)")
            try:
                r_role, idx, res = results.get(timeout=min(left, 1.0))
            except queue.Empty:
                continue
            if want is not None:
                out[(r_role, idx)] = res if res != want else True
            elif r_role == role or (isinstance(res, dict) and "error" in res):
                out[(r_role, idx)] = res
        return out

    def _summarise(self, kind, size, sent, prods, cons, go_ns) -> dict:
        received = sum(r["received"] for r in cons.values())
        out = {"sent": sent, "received": received, "lost": sent - received}
        if kind == "throughput":
            t_last = max(r["t_last"] for r in cons.values())
            window = (t_last - go_ns) / 1e9
            rate = received / window if window > 0 else 0.0
            out["msgs_s"] = rate
            out["mb_s"] = rate * size / 1e6
        else:
            lats: list = []
            for r in cons.values():
                arr = array.array("q")
                with open(r["lat_file"], "rb") as f:
                    arr.frombytes(f.read())
                lats.extend(arr)
            lats.sort()
            out["p50_us"] = _percentile(lats, 0.50) / 1e3
            out["p99_us"] = _percentile(lats, 0.99) / 1e3
            out["p999_us"] = _percentile(lats, 0.999) / 1e3
            out["samples"] = len(lats)
        return out


# ----------------------------------------------------------------------------- report
def _fmt(x: float, digits: int = 1) -> str:
    if x != x:  # nan
        return "-"
    if x >= 1e6:
        return f"{x / 1e6:.2f} M"
    if x >= 1e4:
        return f"{x / 1e3:.1f} k"
    return f"{x:.{digits}f}"


def report(rows: list[dict], args: argparse.Namespace) -> str:
    """The Markdown tables of a run."""
    lines = []
    tput = [r for r in rows if r["kind"] == "throughput"]
    lat = [r for r in rows if r["kind"] == "latency"]
    by_key = {(r["system"], r["topology"], r["size"], r["kind"]): r for r in rows}
    lines.append(
        f"Max throughput, {args.duration:g} s window; consumers: "
        f"fluxon get_data(batch_size={BATCH}), mp.Queue get()."
    )
    lines.append("")
    lines.append(
        "| topology | payload | fluxon msgs/s | fluxon MB/s | mp.Queue msgs/s | mp.Queue MB/s "
        "| ratio | lost (fx/mpq) | load |"
    )
    lines.append("|---|---|---:|---:|---:|---:|---:|---|---:|")
    for r in tput:
        if r["system"] != "fluxon":
            continue
        peer = by_key.get(("mp.Queue", r["topology"], r["size"], "throughput"), {})
        if "error" in r or "error" in peer:
            lines.append(
                f"| {r['topology']} | {r['size']} | error: {r.get('error') or peer.get('error')} |"
            )
            continue
        nan = float("nan")
        ratio = r["msgs_s"] / peer["msgs_s"] if peer.get("msgs_s") else nan
        load = max(r["load"], peer.get("load", 0.0))
        lines.append(
            f"| {r['topology']} | {r['size']} | {_fmt(r['msgs_s'])} | {_fmt(r['mb_s'])} | "
            f"{_fmt(peer.get('msgs_s', nan))} | {_fmt(peer.get('mb_s', nan))} | {ratio:.1f}× | "
            f"{r['lost']}/{peer.get('lost', '-')} | {load:.2f} |"
        )
    if lat:
        lines.append("")
        lines.append(
            f"One-way latency, 64 B at {args.rate:g} msgs/s (all producers together), "
            f"{args.latency_duration:g} s window, µs."
        )
        lines.append("")
        lines.append(
            "| topology | system | p50 | p99 | p99.9 | samples | lost | CPU µs/msg | load |"
        )
        lines.append("|---|---|---:|---:|---:|---:|---:|---:|---:|")
        for r in lat:
            if "error" in r:
                lines.append(f"| {r['topology']} | {r['system']} | error: {r['error']} |")
                continue
            lines.append(
                f"| {r['topology']} | {r['system']} | {r['p50_us']:.1f} | {r['p99_us']:.1f} | "
                f"{r['p999_us']:.1f} | {r['samples']} | {r['lost']} | {r['cpu_us_per_msg']:.1f} | "
                f"{r['load']:.2f} |"
            )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Command line entry."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="short windows (about 1 minute)")
    parser.add_argument("--duration", type=float, help="throughput window, s (3; quick 1)")
    parser.add_argument("--latency-duration", type=float, help="latency window, s (3; quick 1)")
    parser.add_argument("--rate", type=float, default=10_000.0, help="latency rate, msgs/s")
    parser.add_argument("--only", choices=["fluxon", "mp.Queue"], help="run one system")
    parser.add_argument("--topology", choices=list(TOPOLOGIES), action="append")
    parser.add_argument("--size", choices=list(SIZES), action="append")
    parser.add_argument("--no-latency", action="store_true")
    parser.add_argument("--no-throughput", action="store_true")
    parser.add_argument("--json", help="also write the rows as JSON to this file")
    args = parser.parse_args(argv)
    if args.duration is None:
        args.duration = 1.0 if args.quick else 3.0
    if args.latency_duration is None:
        args.latency_duration = 1.0 if args.quick else 3.0

    systems = [args.only] if args.only else ["fluxon", "mp.Queue"]
    topos = args.topology or list(TOPOLOGIES)
    sizes = args.size or list(SIZES)
    runner = Runner(args)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    started = time.time()
    try:
        runner.start_plane()
        for topo in topos:
            if not args.no_throughput:
                for size in sizes:
                    for system in systems:
                        row = runner.run_row(system, topo, size, "throughput")
                        print(json.dumps(row), flush=True)
            if not args.no_latency:
                for system in systems:
                    row = runner.run_row(system, topo, "64 B", "latency")
                    print(json.dumps(row), flush=True)
    finally:
        runner.close()
    print()
    print(f"Measured {time.strftime('%Y-%m-%d', time.localtime(started))} on {machine_line()}.")
    print()
    print(report(runner.rows, args))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(
                {"machine": machine_line(), "started": started, "rows": runner.rows}, f, indent=1
            )
    return 1 if any("error" in r for r in runner.rows) else 0


if __name__ == "__main__":
    if any(os.environ.get(k) != v for k, v in MALLOC_ENV.items()):
        # glibc reads these at start-up: re-execute so this process has them too.
        os.execve(sys.executable, [sys.executable, *sys.argv], {**os.environ, **MALLOC_ENV})
    sys.exit(main())
