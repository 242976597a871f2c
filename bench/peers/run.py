"""``python -m bench.peers``: fluxon's MQ beside the queues users would pick, in one run.

For every peer, topology (``1->1``, ``2->2``, ``4->4``) and payload size (64 B, 4 KiB,
1 MiB) the runner starts the peer's always-on processes (if any), spawns one process per
producer and consumer, and runs, with all workers starting at the same instant:

1. a warm-up (binds, first puts, page faults; not timed);
2. once per peer, an idle window after ``--idle-settle`` seconds of quiet (everything
   attached, nothing sent: CPU of the service processes, each, and of the idle clients);
3. a max-throughput run: producers send as fast as they can for ``--duration`` seconds
   into a queue bounded to the same capacity for every peer; consumers drain it;
   msgs/s = messages received / (last receive - start);
4. a fixed-rate latency run: producers pace ``--latency-rate`` messages/s (all producers
   together) for ``--latency-duration`` seconds; one-way latency = receive time - the
   ``t`` stamped just before the send (CLOCK_MONOTONIC is system-wide); p50/p99/p99.9.

Every message is ``{"seq": int, "t": monotonic_ns, "payload": bytes}``. Lost messages
(sent - received), late ones and reorderings are counted for every peer. CPU seconds per
message come from each worker's own process CPU time (all threads) and, for service
processes, from ``/proc``. The share of the machine used by other processes during each
timed window is recorded and rows measured on a loaded machine are marked.

Results: a Markdown report (with ratios fluxon/peer per row, the machine, versions and
date) and the raw JSON in ``bench/results/``, and the latest report copied into the
"Peers side by side" section of ``bench/README.md``. See ``--help`` for the knobs.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Callable

from . import harness as hz
from .peerbase import Peer, SkipPeer
from .sysstat import LoadWindow, descendants, process_name, sample_machine

SIZES = {"64B": 64, "4KiB": 4096, "1MiB": 1 << 20}
TOPOLOGIES = {"1-1": (1, 1), "2-2": (2, 2), "4-4": (4, 4)}
PEER_MODULES = {
    "fluxon": "bench.peers.peer_fluxon",
    "mp-queue": "bench.peers.peer_mpqueue",
    "mp-pipe": "bench.peers.peer_mppipe",
    "posix-mq": "bench.peers.peer_posixmq",
    "faster-fifo": "bench.peers.peer_fasterfifo",
    "zmq": "bench.peers.peer_zmq",
    "iceoryx2": "bench.peers.peer_iceoryx2",
    "fluxon-ref": "bench.peers.peer_reference",
}
#: glibc malloc settings applied to every process of every peer: keep large buffers in
#: the heap (reused, already faulted in) instead of a fresh mmap per 1 MiB message.
MALLOC_ENV = {"MALLOC_MMAP_THRESHOLD_": str(16 << 20), "MALLOC_TRIM_THRESHOLD_": str(256 << 20)}
#: Bytes of undelivered messages a queue may hold (capacity = this / payload, 8..1024).
CAPACITY_BYTES = 64 << 20
#: Target rates of the latency runs (msgs/s, all producers together), by payload size.
LATENCY_RATES = {64: 10_000, 4096: 10_000, 1 << 20: 200}

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


class PhaseError(RuntimeError):
    """A phase could not complete (timeout, worker failure); the message says why."""


@dataclass
class Context:
    """What adapters see of the run."""

    run_id: str
    run_dir: str
    sizes: list[int]
    mp: Any
    pool_dram: str
    ref_venv: str
    ref_install: bool
    log: Callable[[str], None]

    def capacity(self, size: int) -> int:
        """Messages a queue of ``size``-byte payloads may hold (same for every peer)."""
        return max(8, min(1024, CAPACITY_BYTES // size))

    def batch(self, size: int) -> int:
        """Batch size for peers with a native batch get/put."""
        return max(1, min(32, self.capacity(size) // 8))


@dataclass
class Settings:
    """Parsed command line."""

    peers: list[str]
    sizes: list[str]
    topologies: list[str]
    duration: float
    latency_duration: float
    idle_duration: float
    latency_scale: float
    warm_n: int
    results_dir: str
    readme: str | None
    ref_venv: str
    ref_install: bool
    max_minutes: float
    load_threshold: float
    malloc_tuning: bool
    pool_dram: str
    quick: bool
    command: str
    wait_quiet: float = 0.0
    idle_settle: float = 0.0
    render: str | None = None
    keep_tmp: bool = False
    extra: dict = field(default_factory=dict)


# ----------------------------------------------------------------------------- processes
class WorkerProc:
    """A worker process started by multiprocessing or subprocess."""

    def __init__(self, handle: Any, log_path: str) -> None:
        self.h = handle
        self.log_path = log_path

    @property
    def pid(self) -> int:
        return self.h.pid

    def exitcode(self) -> int | None:
        if isinstance(self.h, subprocess.Popen):
            return self.h.poll()
        return self.h.exitcode

    def alive(self) -> bool:
        return self.exitcode() is None

    def signal(self, sig: int) -> None:
        try:
            os.kill(self.pid, sig)
        except OSError:
            pass

    def reap(self, timeout: float) -> None:
        if isinstance(self.h, subprocess.Popen):
            try:
                self.h.wait(timeout)
            except subprocess.TimeoutExpired:
                pass
        else:
            self.h.join(timeout)


def _tail(path: str, n: int = 1200) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - n))
            return f.read().decode("utf-8", errors="replace").strip()
    except OSError:
        return ""


class TopologyRun:
    """The workers of one peer and topology, and the phases they run."""

    def __init__(self, runner: Runner, peer: Peer, n_prod: int, n_cons: int) -> None:
        self.runner = runner
        self.peer = peer
        self.ctx = runner.ctx
        self.n_prod = n_prod
        self.n_cons = n_cons
        self.n = n_prod + n_cons
        self.dir = os.path.join(self.ctx.run_dir, f"{peer.key}-{n_prod}x{n_cons}")
        os.makedirs(self.dir, exist_ok=True)
        self.block = hz.ControlBlock.create(os.path.join(self.dir, "control"), self.n)
        self.procs: list[WorkerProc] = []
        self.seq = 0

    # start/stop -----------------------------------------------------------------------
    def spawn(self) -> None:
        """Start every worker and wait until each opened its endpoint."""
        peer, ctx = self.peer, self.ctx
        base = {
            "ctl_path": self.block.path,
            "run_dir": self.dir,
            "producers": self.n_prod,
            "consumers": self.n_cons,
            "sizes": ctx.sizes,
            "recv_timeout": peer.recv_timeout,
            "adapter": peer.module,
            "hard_exit": peer.hard_exit,
        }
        base.update(peer.worker_config(self.n_prod, self.n_cons))
        endpoints = peer.endpoints(self.n_prod, self.n_cons) if peer.spawn == "mp" else None
        for w in range(self.n):
            role, idx = ("producer", w) if w < self.n_prod else ("consumer", w - self.n_prod)
            cfg = dict(base, worker=w, role=role, index=idx)
            log_path = os.path.join(self.dir, f"worker-{w}.log")
            cfg["log_path"] = log_path
            if peer.spawn == "mp":
                p = ctx.mp.Process(
                    target=hz.worker_entry,
                    args=(cfg, endpoints[w]),
                    name=f"fxb-{peer.key}-{role}{idx}",
                    daemon=True,
                )
                p.start()
                self.procs.append(WorkerProc(p, log_path))
            else:
                spec = os.path.join(self.dir, f"spec-{w}.json")
                with open(spec, "w") as f:
                    json.dump(cfg, f)
                env = dict(os.environ)
                env.update(peer.worker_env())
                script = os.path.join(os.path.dirname(os.path.abspath(__file__)), "worker.py")
                with open(log_path, "ab") as log:
                    p = subprocess.Popen(
                        [peer.worker_python(), script, spec],
                        stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                        env=env, cwd=self.dir,
                    )  # fmt: skip
                self.procs.append(WorkerProc(p, log_path))
        self.wait_workers(
            lambda w: self.block.worker(w, hz.W_HELLO) == 1, peer.hello_timeout, "start"
        )

    def shutdown(self, aborted: bool) -> None:
        """Ask workers to exit (or abort), then make sure they are gone."""
        v = self.block.v
        if aborted:
            v[hz.H_ABORT] = 1
        else:
            v[hz.H_GO_NS] = 0
            v[hz.H_KIND] = hz.KIND_EXIT
            self.seq += 1
            v[hz.H_SEQ] = self.seq
        deadline = time.monotonic() + (5.0 if aborted else 30.0)
        while time.monotonic() < deadline and any(p.alive() for p in self.procs):
            time.sleep(0.02)
        for sig, wait in ((signal.SIGTERM, 3.0), (signal.SIGKILL, 5.0)):
            live = [p for p in self.procs if p.alive()]
            if not live:
                break
            for p in live:
                p.signal(sig)
            deadline = time.monotonic() + wait
            while time.monotonic() < deadline and any(p.alive() for p in live):
                time.sleep(0.02)
        for p in self.procs:
            p.reap(1.0)
        self.block.close()

    # waiting --------------------------------------------------------------------------
    def _check(self) -> None:
        for w, p in enumerate(self.procs):
            if self.block.worker(w, hz.W_ERROR):
                err = _tail(os.path.join(self.dir, f"err-{w}.txt"), 1500)
                raise PhaseError(f"worker {w} failed: {err or _tail(p.log_path)}")
            code = p.exitcode()
            if code is not None:
                raise PhaseError(f"worker {w} exited with status {code}: {_tail(p.log_path)}")

    def wait_workers(self, pred, timeout: float, what: str, workers=None) -> None:
        ws = range(self.n) if workers is None else workers
        deadline = time.monotonic() + timeout
        while True:
            if all(pred(w) for w in ws):
                return
            self._check()
            if time.monotonic() > deadline:
                late = [w for w in ws if not pred(w)]
                raise PhaseError(f"{what}: workers {late} not done after {timeout:.0f} s")
            time.sleep(0.005)

    # one phase ------------------------------------------------------------------------
    def phase(self, kind: int, size_idx: int, duration: float = 0.0, rate: int = 0,
              batch: int = 1, warm_n: int = 0) -> dict:  # fmt: skip
        """Run one phase on all workers; return its raw results."""
        peer = self.peer
        v = self.block.v
        v[hz.H_GO_NS] = 0
        v[hz.H_STOP_SEQ] = 0
        v[hz.H_KIND] = kind
        v[hz.H_SIZE] = size_idx
        v[hz.H_DURATION_NS] = int(duration * 1e9)
        v[hz.H_RATE] = int(rate)
        v[hz.H_BATCH] = int(batch)
        v[hz.H_WARM_N] = int(warm_n)
        self.seq += 1
        seq = self.seq
        v[hz.H_SEQ] = seq
        self.wait_workers(
            lambda w: self.block.worker(w, hz.W_ACK) == seq, peer.setup_timeout, "setup"
        )
        window = LoadWindow(os.getpid(), {"services": peer.service_pids()})
        go = time.monotonic_ns() + 30_000_000
        window.start()
        v[hz.H_GO_NS] = go
        producers = range(self.n_prod)
        consumers = range(self.n_prod, self.n)
        limit = peer.warmup_timeout if kind == hz.KIND_WARMUP else duration + peer.producer_grace
        self.wait_workers(
            lambda w: self.block.worker(w, hz.W_DONE) == seq, limit + 1.0, "producers", producers
        )
        sent = sum(self.block.worker(w, hz.W_COUNT) for w in producers)
        drain = peer.warmup_timeout if kind == hz.KIND_WARMUP else peer.drain_timeout
        deadline = time.monotonic() + drain
        drained = True
        while sum(self.block.worker(w, hz.W_COUNT) for w in consumers) < sent:
            self._check()
            if time.monotonic() > deadline:
                drained = False
                break
            time.sleep(0.002)
        v[hz.H_STOP_SEQ] = seq
        self.wait_workers(
            lambda w: self.block.worker(w, hz.W_DONE) == seq,
            peer.recv_timeout + 15.0,
            "consumers",
            consumers,
        )
        load = window.stop()
        results = []
        for w in range(self.n):
            with open(os.path.join(self.dir, f"r-{w}-{seq}.json")) as f:
                results.append(json.load(f))
        if kind == hz.KIND_WARMUP and not drained:
            got = sum(r.get("received", 0) for r in results)
            raise PhaseError(f"warm-up: {got} of {sent} messages arrived within {drain:.0f} s")
        return {"kind": kind, "seq": seq, "go": go, "load": load, "drained": drained,
                "prod": results[: self.n_prod], "cons": results[self.n_prod :],
                "duration": duration, "rate": rate, "batch": batch}  # fmt: skip


# ----------------------------------------------------------------------------- summaries
def _lat_stats(cons: list[dict]) -> dict:
    import numpy as np

    parts = []
    for c in cons:
        path = c.get("lat_file")
        if path and os.path.exists(path):
            parts.append(np.fromfile(path, dtype=np.int64))
    lat = np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)
    if lat.size == 0:
        return {"n": 0}
    p50, p99, p999 = np.percentile(lat, [50, 99, 99.9]) / 1e3
    return {
        "n": int(lat.size),
        "p50_us": float(p50),
        "p99_us": float(p99),
        "p999_us": float(p999),
        "max_us": float(lat.max() / 1e3),
        "min_us": float(lat.min() / 1e3),
    }


def summarize(ph: dict, size: int) -> dict:
    """Numbers of one throughput, latency or idle phase."""
    prod, cons = ph["prod"], ph["cons"]
    sent = sum(p["sent"] for p in prod)
    dropped = sum(p.get("dropped", 0) for p in prod)
    received = sum(c["received"] for c in cons)
    out = {
        "sent": sent,
        "received": received,
        "lost": max(0, sent - received),
        "dropped": dropped,
        "late": sum(c["stale"] for c in cons),
        "reorder": sum(c["reorder"] for c in cons),
        "drained": ph["drained"],
        "prod_cpu_s": sum(p["cpu_ns"] for p in prod) / 1e9,
        "cons_cpu_s": sum(c["cpu_ns"] for c in cons) / 1e9,
        "svc_cpu_s": ph["load"].get("services_cpu_s", 0.0),
        "other_cores": ph["load"]["other_cores"],
        "machine_cores": ph["load"]["machine_cores"],
        "steal_frac": ph["load"]["steal_frac"],
        "window_s": ph["load"]["elapsed_s"],
    }
    if sent:
        out["prod_cpu_us_per_msg"] = out["prod_cpu_s"] * 1e6 / sent
    if received:
        out["cons_cpu_us_per_msg"] = out["cons_cpu_s"] * 1e6 / received
        out["svc_cpu_us_per_msg"] = out["svc_cpu_s"] * 1e6 / received
        t_last = max(c["t_last"] for c in cons)
        elapsed = (t_last - ph["go"]) / 1e9
        if elapsed > 0:
            out["elapsed_s"] = elapsed
            out["msgs_per_s"] = received / elapsed
            out["mb_per_s"] = received * size / elapsed / 1e6
    if ph["kind"] == hz.KIND_LATENCY:
        out.update(_lat_stats(cons))
        out["rate"] = ph["rate"]
        out["achieved_rate"] = received / ph["duration"] if ph["duration"] else 0.0
    return out


# ----------------------------------------------------------------------------- the runner
class Runner:
    """Runs every selected peer over every topology and size; collects the results."""

    def __init__(self, settings: Settings) -> None:
        import multiprocessing

        self.s = settings
        self.run_id = uuid.uuid4().hex[:8]
        self.run_dir = tempfile.mkdtemp(prefix=f"fxb-peers-{self.run_id}-")
        self.ctx = Context(
            run_id=self.run_id,
            run_dir=self.run_dir,
            sizes=[SIZES[k] for k in settings.sizes],
            mp=multiprocessing.get_context("spawn"),
            pool_dram=settings.pool_dram,
            ref_venv=settings.ref_venv,
            ref_install=settings.ref_install,
            log=self.log,
        )
        self.t0 = time.monotonic()
        self.results: dict = {
            "run_id": self.run_id,
            "rows": [],
            "idle": {},
            "not_run": [],
            "peers": {},
            "settings": {
                "peers": settings.peers,
                "sizes": settings.sizes,
                "topologies": settings.topologies,
                "duration_s": settings.duration,
                "latency_duration_s": settings.latency_duration,
                "idle_duration_s": settings.idle_duration,
                "idle_settle_s": settings.idle_settle,
                "latency_rates": {
                    k: int(LATENCY_RATES[SIZES[k]] * settings.latency_scale) for k in settings.sizes
                },
                "capacity": {k: self.ctx.capacity(SIZES[k]) for k in settings.sizes},
                "batch": {k: self.ctx.batch(SIZES[k]) for k in settings.sizes},
                "malloc_env": MALLOC_ENV if settings.malloc_tuning else {},
                "load_threshold_cores": settings.load_threshold,
                "quick": settings.quick,
                "wait_quiet_s": settings.wait_quiet,
                "command": settings.command,
            },
        }

    def log(self, text: str) -> None:
        elapsed = time.monotonic() - self.t0
        print(f"[{elapsed:7.1f}s] {text}", flush=True)

    def over_budget(self) -> bool:
        return time.monotonic() - self.t0 > self.s.max_minutes * 60

    def not_run(self, peer: str, what: str, why: str) -> None:
        self.results["not_run"].append({"peer": peer, "what": what, "why": why})
        self.log(f"  NOT RUN {peer} {what}: {why}")

    # ----------------------------------------------------------------------------------
    def run(self) -> dict:
        """Run everything; always clean up."""
        s = self.s
        self.log(f"run {self.run_id}: peers {', '.join(s.peers)}; sizes {', '.join(s.sizes)}; "
                 f"topologies {', '.join(s.topologies)}; work dir {self.run_dir}")  # fmt: skip
        self.results["load_before"] = sample_machine(1.0)
        self.log(
            f"machine busy before the run: {self.results['load_before']['machine_cores']:.2f} cores"
        )
        try:
            for key in s.peers:
                if self.over_budget():
                    self.not_run(key, "all", f"time budget of {s.max_minutes:g} min used up")
                    continue
                self.run_peer(key)
        finally:
            self.results["load_after"] = sample_machine(0.5)
            self.results["wall_s"] = time.monotonic() - self.t0
            if not s.keep_tmp:
                shutil.rmtree(self.run_dir, ignore_errors=True)
        return self.results

    def run_peer(self, key: str) -> None:
        s = self.s
        mod = importlib.import_module(PEER_MODULES[key])
        peer: Peer = mod.PEER(self.ctx)
        info = {"label": peer.label, "batching": peer.batching, "partitioned": peer.partitioned,
                "notes": peer.notes}  # fmt: skip
        self.results["peers"][key] = info
        self.log(f"peer {key} ({peer.label})")
        reason = peer.unavailable()
        if reason:
            self.not_run(key, "all", reason)
            return
        info["version"] = getattr(peer, "version", None) or _version_of(key)
        try:
            try:
                peer.start()
            except SkipPeer as exc:
                self.not_run(key, "all", str(exc))
                return
            except Exception as exc:  # noqa: BLE001 - reported, the run goes on
                self.not_run(key, "all", f"could not start: {type(exc).__name__}: {exc}")
                return
            if peer.service_pids():
                self.results["idle"].setdefault(key, {})["services_only"] = self._idle_services(
                    peer
                )
            idle_done = False
            for tkey in s.topologies:
                n_prod, n_cons = TOPOLOGIES[tkey]
                if self.over_budget():
                    self.not_run(key, _topo(tkey), f"time budget of {s.max_minutes:g} min used up")
                    continue
                idle_done = self.run_topology(peer, tkey, n_prod, n_cons, idle_done)
        finally:
            try:
                peer.stop()
            except Exception as exc:  # noqa: BLE001 - report, keep going
                self.log(f"  stopping {key} failed: {exc}")

    def _settle(self) -> None:
        """Before an idle window: let the last activity's after-effects end (every peer
        alike: timers armed by a bind, connections closed after a while)."""
        if self.s.idle_settle > 0:
            time.sleep(self.s.idle_settle)

    def _idle_services(self, peer: Peer) -> dict:
        pids = peer.service_pids()
        names = peer.service_names()
        self._settle()
        w = LoadWindow(os.getpid(), {f"pid{pid}": [pid] for pid in pids})
        w.start()
        time.sleep(max(0.5, self.s.idle_duration))
        load = w.stop()
        el = load["elapsed_s"]
        cpu = {pid: load[f"pid{pid}_cpu_s"] / el for pid in pids}
        cores = sum(cpu.values())
        per = {names.get(pid) or f"{process_name(pid)} ({pid})": v for pid, v in cpu.items()}
        n = len(descendants(pids))
        detail = ", ".join(f"{k} {v * 100:.2f}%" for k, v in per.items())
        self.log(f"  always-on processes idle: {cores * 100:.1f}% of a core ({n} processes: "
                 f"{detail})")  # fmt: skip
        return {"cores": cores, "processes": n, "other_cores": load["other_cores"],
                "window_s": el, "per_process": per}  # fmt: skip

    def run_topology(
        self, peer: Peer, tkey: str, n_prod: int, n_cons: int, idle_done: bool
    ) -> bool:
        s, ctx = self.s, self.ctx
        runnable = []
        for i, name in enumerate(s.sizes):
            why = peer.size_unavailable(SIZES[name])
            if why:
                self.not_run(peer.key, f"{_topo(tkey)} {name}", why)
            else:
                runnable.append(i)
        if not runnable:
            return idle_done
        self.log(f"  {_topo(tkey)}: starting {n_prod} producer(s) + {n_cons} consumer(s)")
        topo = TopologyRun(self, peer, n_prod, n_cons)
        aborted = True
        current = None
        try:
            topo.spawn()
            for i in runnable:
                current = i
                size = ctx.sizes[i]
                name = s.sizes[i]
                if self.over_budget():
                    self.not_run(peer.key, f"{_topo(tkey)} {name}", "time budget used up")
                    continue
                batch = ctx.batch(size)
                warm_n = max(n_cons, min(s.warm_n, (CAPACITY_BYTES // 2) // size))
                topo.phase(hz.KIND_WARMUP, i, batch=batch, warm_n=warm_n)
                if not idle_done:
                    self.results["idle"].setdefault(peer.key, {})["attached"] = self._idle_clients(
                        topo, i, tkey
                    )
                    idle_done = True
                self._wait_quiet()
                thr = summarize(topo.phase(hz.KIND_THROUGHPUT, i, s.duration, batch=batch), size)
                target = int(LATENCY_RATES[size] * s.latency_scale)
                rate = target
                if thr.get("msgs_per_s") and thr["msgs_per_s"] * 0.5 < target:
                    rate = max(n_prod, int(thr["msgs_per_s"] * 0.5))
                self._wait_quiet()
                lat = summarize(
                    topo.phase(hz.KIND_LATENCY, i, s.latency_duration, rate=rate, batch=batch), size
                )
                peer.size_done(i)
                row = {"peer": peer.key, "topology": tkey, "size": name, "size_bytes": size,
                       "status": "ok", "thr": thr, "lat": lat, "target_rate": target,
                       "batch": batch}  # fmt: skip
                self.results["rows"].append(row)
                self._log_row(row)
            aborted = False
        except Exception as exc:  # noqa: BLE001 - any failure is reported, the run goes on
            where = f"{_topo(tkey)} {s.sizes[current]}" if current is not None else _topo(tkey)
            if len(runnable) > 1 and current != runnable[-1]:
                where += " and later sizes"
            why = str(exc) if isinstance(exc, PhaseError) else f"{type(exc).__name__}: {exc}"
            self.not_run(peer.key, where, why[:2000])
        finally:
            topo.shutdown(aborted)
            try:
                peer.release()
            except Exception as exc:  # noqa: BLE001 - report, keep going
                self.log(f"  releasing {peer.key} queues failed: {exc}")
        return idle_done

    def _wait_quiet(self) -> None:
        """With ``--wait-quiet S``: wait up to S seconds for other processes to calm down."""
        if self.s.wait_quiet <= 0:
            return
        deadline = time.monotonic() + self.s.wait_quiet
        while True:
            w = LoadWindow(os.getpid())
            w.start()
            time.sleep(0.3)
            other = w.stop()["other_cores"]
            if other <= self.s.load_threshold or time.monotonic() > deadline:
                return
            self.results["waited_for_quiet_s"] = self.results.get("waited_for_quiet_s", 0.0) + 0.3

    def _idle_clients(self, topo: TopologyRun, size_idx: int, tkey: str) -> dict:
        self._settle()
        ph = topo.phase(hz.KIND_IDLE, size_idx, max(0.2, self.s.idle_duration))
        load = ph["load"]
        el = load["elapsed_s"]
        clients = sum(r["cpu_ns"] for r in ph["prod"] + ph["cons"]) / 1e9
        out = {"topology": tkey, "clients_cores": clients / el, "clients": topo.n,
               "services_cores": load.get("services_cpu_s", 0.0) / el,
               "other_cores": load["other_cores"], "window_s": el}  # fmt: skip
        self.log(f"  idle, {topo.n} clients attached: clients {out['clients_cores'] * 100:.1f}% "
                 f"of a core, services {out['services_cores'] * 100:.1f}%")  # fmt: skip
        return out

    def _log_row(self, row: dict) -> None:
        t, lat = row["thr"], row["lat"]
        thr = f"{t.get('msgs_per_s', 0):,.0f} msg/s {t.get('mb_per_s', 0):,.1f} MB/s"
        lost = t["lost"] + lat["lost"]
        p = (f"p50 {lat['p50_us']:.0f} p99 {lat['p99_us']:.0f} p99.9 {lat['p999_us']:.0f} us "
             f"@{lat['rate']}/s") if lat.get("n") else "no latency samples"  # fmt: skip
        self.log(f"    {row['size']:>5}: {thr}; {p}; lost {lost}; "
                 f"other load {max(t['other_cores'], lat['other_cores']):.2f} cores")  # fmt: skip


def _topo(tkey: str) -> str:
    n_prod, n_cons = TOPOLOGIES[tkey]
    return f"{n_prod}->{n_cons}"


def _version_of(key: str) -> str | None:
    import importlib.metadata as md

    dist = {"fluxon": "fluxon", "posix-mq": "posix_ipc", "faster-fifo": "faster-fifo",
            "zmq": "pyzmq", "iceoryx2": "iceoryx2"}.get(key)  # fmt: skip
    if key in ("mp-queue", "mp-pipe"):
        return f"(stdlib of Python {sys.version.split()[0]})"
    if dist is None:
        return None
    try:
        v = md.version(dist)
    except md.PackageNotFoundError:
        return None
    if key == "zmq":
        try:
            import zmq

            v += f" (libzmq {zmq.zmq_version()})"
        except ImportError:
            pass
    return v


# ----------------------------------------------------------------------------- command line
def _csv(value: str, allowed: dict, what: str) -> list[str]:
    out = []
    for n in (x.strip() for x in value.split(",")):
        if not n:
            continue
        if what == "topology":
            n = n.replace("->", "-").replace("x", "-")
        if n not in allowed:
            raise SystemExit(f"unknown {what} {n!r}; choose from {', '.join(allowed)}")
        out.append(n)
    return out


def build_parser() -> argparse.ArgumentParser:
    """The ``python -m bench.peers`` argument parser."""
    p = argparse.ArgumentParser(
        prog="python -m bench.peers",
        description="fluxon's MQ beside multiprocessing, POSIX mqueue, faster-fifo, ZeroMQ, "
        "iceoryx2 and the reference fluxon-py, in one run",
    )
    p.add_argument(
        "--peers",
        default=",".join(PEER_MODULES),
        help=f"comma list from {', '.join(PEER_MODULES)} (default: all)",
    )
    p.add_argument("--sizes", default=",".join(SIZES), help="comma list of 64B,4KiB,1MiB")
    p.add_argument("--topologies", default=",".join(TOPOLOGIES), help="comma list of 1-1,2-2,4-4")
    p.add_argument("--quick", action="store_true", help="1 s per timed run (a few minutes in all)")
    p.add_argument(
        "--duration",
        type=float,
        default=None,
        help="seconds of each max-throughput run (default 2, --quick 1)",
    )
    p.add_argument(
        "--latency-duration",
        type=float,
        default=None,
        help="seconds of each fixed-rate latency run (default 2, --quick 1)",
    )
    p.add_argument(
        "--idle",
        type=float,
        default=None,
        help="seconds of each idle-CPU window (default 5, --quick 2)",
    )
    p.add_argument(
        "--idle-settle",
        type=float,
        default=None,
        help="seconds of quiet before each idle-CPU window (default 8, --quick 2)",
    )
    p.add_argument(
        "--latency-rate-scale",
        type=float,
        default=1.0,
        help="multiply the latency runs' target rates (10 000/s small, 200/s 1 MiB)",
    )
    p.add_argument(
        "--warm-n", type=int, default=200, help="warm-up messages per producer (fewer for 1 MiB)"
    )
    p.add_argument(
        "--results-dir",
        default=os.path.join(REPO_ROOT, "bench", "results"),
        help="where the report and raw JSON go",
    )
    p.add_argument(
        "--readme",
        default=os.path.join(REPO_ROOT, "bench", "README.md"),
        help="README whose 'Peers side by side' section gets the latest report",
    )
    p.add_argument("--no-readme", action="store_true", help="leave the README alone")
    p.add_argument(
        "--ref-venv",
        default=os.path.join(REPO_ROOT, ".venv-ref"),
        help="venv of the reference fluxon-py 0.2.4 (created on first use)",
    )
    p.add_argument(
        "--no-ref-install",
        action="store_true",
        help="do not create the reference venv; skip the reference if it is missing",
    )
    p.add_argument(
        "--max-minutes",
        type=float,
        default=30.0,
        help="stop starting new runs after this many minutes",
    )
    p.add_argument(
        "--load-threshold",
        type=float,
        default=0.25,
        help="mark rows where other processes used more than this many cores",
    )
    p.add_argument(
        "--wait-quiet",
        type=float,
        default=0.0,
        metavar="S",
        help="before each timed run, wait up to S s for other processes to use less than "
        "--load-threshold cores (for shared machines)",
    )
    p.add_argument(
        "--no-malloc-tuning",
        action="store_true",
        help="do not set MALLOC_MMAP_THRESHOLD_/MALLOC_TRIM_THRESHOLD_ for workers",
    )
    p.add_argument("--pool", default="1GB", help="fluxon owner pool size")
    p.add_argument("--keep-tmp", action="store_true", help="keep the work directory (logs)")
    p.add_argument(
        "--render",
        metavar="JSON",
        default=None,
        help="run nothing: re-render the report of a saved raw results file (and the README)",
    )
    return p


def settings_from_args(argv: list[str] | None) -> Settings:
    """Parse ``argv`` into :class:`Settings`."""
    a = build_parser().parse_args(argv)
    dflt = 1.0 if a.quick else 2.0
    return Settings(
        peers=_csv(a.peers, PEER_MODULES, "peer"),
        sizes=_csv(a.sizes, SIZES, "size"),
        topologies=_csv(a.topologies, TOPOLOGIES, "topology"),
        duration=a.duration if a.duration is not None else dflt,
        latency_duration=a.latency_duration if a.latency_duration is not None else dflt,
        idle_duration=a.idle if a.idle is not None else (2.0 if a.quick else 5.0),
        idle_settle=a.idle_settle if a.idle_settle is not None else (2.0 if a.quick else 8.0),
        latency_scale=a.latency_rate_scale,
        warm_n=a.warm_n,
        results_dir=a.results_dir,
        readme=None if a.no_readme else a.readme,
        ref_venv=os.path.abspath(a.ref_venv),
        ref_install=not a.no_ref_install,
        max_minutes=a.max_minutes,
        load_threshold=a.load_threshold,
        malloc_tuning=not a.no_malloc_tuning,
        pool_dram=a.pool,
        quick=a.quick,
        command="python -m bench.peers " + " ".join(argv if argv is not None else sys.argv[1:]),
        keep_tmp=a.keep_tmp,
        wait_quiet=a.wait_quiet,
        render=a.render,
    )


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``python -m bench.peers``."""
    from . import report

    settings = settings_from_args(argv)
    if settings.render:
        with open(settings.render) as f:
            results = json.load(f)
        md_text = report.render(results)
        md_path = os.path.splitext(settings.render)[0] + ".md"
        report.write_report(results, md_text, md_path)
        _publish(settings, md_text, md_path)
        return 0
    if settings.malloc_tuning:
        os.environ.update(MALLOC_ENV)  # inherited by every worker and service process

    def _terminate(signum, _frame):
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, _terminate)
    runner = Runner(settings)
    try:
        results = runner.run()
    except KeyboardInterrupt:
        print("interrupted; everything started was stopped", file=sys.stderr)
        return 130
    results["machine"] = report.machine_info()
    results["date"] = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    md_text = report.render(results)
    paths = report.write_results(results, md_text, settings.results_dir)
    print()
    print(md_text)
    print(f"raw: {paths['json']}")
    _publish(settings, md_text, paths["md"])
    return 0


def _publish(settings: Settings, md_text: str, md_path: str) -> None:
    from . import report

    print(f"report: {md_path}")
    if settings.readme:
        link = os.path.relpath(md_path, os.path.dirname(os.path.abspath(settings.readme)))
        report.update_readme(settings.readme, md_text, link)
        print(f"README section updated: {settings.readme}")
