"""Worker processes of the fault-injection suite, forked from a pre-warmed zygote.

The zygote (``python fault_procs.py zygote``) imports fluxon and loads the channel
kernels once (``mq_procs._prewarm``), then forks one child per request, so the kill
matrix can replace a SIGKILLed producer or consumer in a few milliseconds. Protocol
(JSON lines on the zygote's stdin/stdout)::

    {"op": "spawn", "mode": "producer", "args": {...}}  -> {"pid": 1234}
    {"op": "kill", "pid": 1234, "sig": 9}               -> {"ok": true}
    {"op": "wait", "pid": 1234, "timeout": 5.0}         -> {"status": 0 | null}
    {"op": "exit"}                                      -> zygote kills its children, exits

Workers survive an owner restart: while the owner is down their calls fail with the
owner error, they wait and retry the same message; a worker that starts while the
owner is down retries ``new_store`` until it is back.

Every worker keeps an append-only log that survives SIGKILL (one ``os.write`` per
line on an ``O_APPEND`` descriptor)::

    producer:  S (bound)   A <seq> <time> (put_data returned Ok(True))   C (closed cleanly)
    consumer:  S (bound)   B <batch> <time> (entering get_data)   E p:seq,... (it returned)
               BAD p:seq (failed its self-check)   C (closed cleanly)
    both:      X <error> (unexpected error; the worker exits with status 2)

A message missing from every consumer log can only be one returned by a ``get_data``
whose ``E`` line never came (the consumer was killed in between): at most that
call's batch size per killed consumer.
"""

from __future__ import annotations

import os
import random
import sys
import time
from typing import Any

_HERE = os.path.dirname(os.path.abspath(__file__))
_ROOT = os.path.dirname(os.path.dirname(_HERE))
_MQ = os.path.join(os.path.dirname(_HERE), "mq")
for _path in (_ROOT, _MQ):
    if _path not in sys.path:
        sys.path.insert(0, _path)

import mq_procs  # noqa: E402
from mq_procs import make_message, message_ok  # noqa: E402

#: How long a worker keeps retrying to attach/bind while services restart.
ATTACH_DEADLINE_S = 60.0


# --------------------------------------------------------------------------- helpers
class _Log:
    """Append-only log: each line is one write(2), so a SIGKILL never tears one."""

    def __init__(self, path: str) -> None:
        self.fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)

    def line(self, text: str) -> None:
        os.write(self.fd, (text + "\n").encode())


def _is_owner_error(err: Any) -> bool:
    from fluxon.api_error import InternalError

    return isinstance(err, InternalError) and "owner" in err.message


def _attach(cfg: dict, log: _Log) -> Any:
    """``new_store`` that waits for an owner being restarted."""
    from fluxon.kvclient import new_store

    deadline = time.monotonic() + ATTACH_DEADLINE_S
    while True:
        res = new_store(cfg)
        if res.is_ok():
            return res.unwrap()
        if time.monotonic() > deadline:
            log.line(f"X attach: {res.unwrap_error()}")
            raise SystemExit(2)
        time.sleep(0.1)


def _bind(store: Any, args: dict, role: str, log: _Log) -> Any:
    """Bind, retrying while the owner is down or an MPSC slot is not free yet."""
    from fluxon.api_ext_chan import new_or_bind_with_unique_key

    config = {"capacity": args.get("capacity", 16), "ttl_seconds": args.get("ttl", 30)}
    if role == "producer" and args.get("weight"):
        config["weight"] = args["weight"]
    deadline = time.monotonic() + ATTACH_DEADLINE_S
    while True:
        res = new_or_bind_with_unique_key(
            store, config, unique_id=args["key"], chan_type=args["chan_type"], chan_role=role
        )
        if res.is_ok():
            return res.unwrap()
        if time.monotonic() > deadline:
            log.line(f"X bind: {res.unwrap_error()}")
            raise SystemExit(2)
        time.sleep(0.05)


# --------------------------------------------------------------------------- modes
def mode_producer(args: dict) -> int:
    """Put self-checking messages ``label:0,1,2,...`` until ``stop`` exists."""
    log = _Log(args["log"])
    rng = random.Random(args.get("seed"))
    store = _attach(args["cfg"], log)
    producer = _bind(store, args, "producer", log)
    log.line("S")
    label, pads, pace = args["label"], args.get("pads", [0]), args.get("pace", 0.0)
    seq = 0
    while not os.path.exists(args["stop"]):
        msg = make_message(label, seq, rng.choice(pads))
        acked = False
        while not acked and not os.path.exists(args["stop"]):
            res = producer.put_data(msg, try_time=0.5)
            if res.is_ok():
                acked = res.unwrap() is True
            elif _is_owner_error(res.unwrap_error()):
                time.sleep(0.05)  # the owner is restarting: retry the same message
            else:
                log.line(f"X put: {res.unwrap_error()!r}")
                return 2
        if not acked:
            break
        log.line(f"A {seq} {time.time():.4f}")
        seq += 1
        if pace:
            time.sleep(rng.uniform(0, 2 * pace))
    producer.close()
    store.close()
    log.line("C")
    return 0


def mode_consumer(args: dict) -> int:
    """Consume with random batch/prefetch until ``stop`` exists and the channel is dry."""
    from fluxon.api_error import MessageConsumptionNoNewMessageError

    log = _Log(args["log"])
    rng = random.Random(args.get("seed"))
    store = _attach(args["cfg"], log)
    consumer = _bind(store, args, "consumer", log)
    log.line("S")
    max_batch, max_prefetch = args.get("max_batch", 4), args.get("max_prefetch", 8)
    idle = 0
    while True:
        batch = rng.randint(1, max_batch)
        log.line(f"B {batch} {time.time():.4f}")
        res = consumer.get_data(
            batch_size=batch, try_time=0.1, prefetch_num=rng.randint(0, max_prefetch)
        )
        if res.is_ok():
            msgs = res.unwrap()
            log.line("E " + ",".join(f"{m['p']}:{m['seq']}" for m in msgs))
            for m in msgs:
                if not message_ok(m):
                    log.line(f"BAD {m.get('p')}:{m.get('seq')}")
            idle = 0
            if args.get("delay"):
                time.sleep(rng.uniform(0, args["delay"]))
            continue
        log.line("E")
        err = res.unwrap_error()
        if isinstance(err, MessageConsumptionNoNewMessageError):
            if os.path.exists(args["stop"]):
                idle += 1
                if idle >= 3:
                    break
        elif _is_owner_error(err):
            time.sleep(0.05)
        else:
            log.line(f"X get: {err!r}")
            return 2
    consumer.close()
    store.close()
    log.line("C")
    return 0


def mode_idle_store(args: dict) -> int:
    """Attach a store and sit until killed (a member the owner must reap)."""
    log = _Log(args["log"])
    _attach(args["cfg"], log)
    log.line("S")
    while True:
        time.sleep(1.0)


def mode_kv_churn(args: dict) -> int:
    """Put, read back and remove self-checking KV values until ``stop`` exists.

    Logs ``K <ops>`` every 200 operations; removes its keys before closing.
    """
    from fluxon.api_error import KeyNotFoundError, StorageFullError

    log = _Log(args["log"])
    rng = random.Random(args.get("seed"))
    store = _attach(args["cfg"], log)
    log.line("S")
    prefix, ops = args["prefix"], 0
    keys = [f"{prefix}-{i}" for i in range(args.get("keys", 32))]
    while not os.path.exists(args["stop"]):
        k = rng.choice(keys)
        size = rng.choice([8, 300, 5000, 70000])
        value = {"k": k, "n": ops, "blob": bytes([ops % 251]) * size}
        res = store.put_blocking(k, value)
        if not res.is_ok():
            if isinstance(res.unwrap_error(), StorageFullError):
                time.sleep(0.01)
                continue
            log.line(f"X put: {res.unwrap_error()!r}")
            return 2
        got = store.get_blocking(k)
        if not got.is_ok() or got.unwrap().access() != value:
            log.line(f"X read back {k}: {got!r}")
            return 2
        if rng.random() < 0.2:
            res = store.remove(k)
            if not res.is_ok() and not isinstance(res.unwrap_error(), KeyNotFoundError):
                log.line(f"X remove: {res.unwrap_error()!r}")
                return 2
        ops += 1
        if ops % 200 == 0:
            log.line(f"K {ops}")
        if args.get("pace"):
            time.sleep(args["pace"])
    for k in keys:
        store.remove(k)
    store.close()
    log.line(f"K {ops}")
    log.line("C")
    return 0


def mode_hold(args: dict) -> int:
    """Bind a consumer, take one ``get_data`` (with ``prefetch``), log it, sit until killed."""
    log = _Log(args["log"])
    store = _attach(args["cfg"], log)
    consumer = _bind(store, args, "consumer", log)
    log.line("S")
    log.line(f"B {args.get('batch', 1)}")
    res = consumer.get_data(
        batch_size=args.get("batch", 1), try_time=10.0, prefetch_num=args.get("prefetch", 0)
    )
    msgs = res.unwrap()
    log.line("E " + ",".join(f"{m['p']}:{m['seq']}" for m in msgs))
    log.line(f"P {consumer.prefetched()}")
    while True:
        time.sleep(1.0)


_MODES = {
    "producer": mode_producer,
    "consumer": mode_consumer,
    "idle_store": mode_idle_store,
    "hold": mode_hold,
    "kv_churn": mode_kv_churn,
}


# --------------------------------------------------------------------------- zygote
class Zygote(mq_procs.Zygote):
    """A zygote forking this module's workers (:data:`_MODES`)."""

    def __init__(self, log_path: str) -> None:
        super().__init__(log_path, script=__file__)


# --------------------------------------------------------------------------- log parsing
class ProducerLog:
    """What a producer log says: acknowledged sequence numbers, errors, clean close."""

    def __init__(self, path: str) -> None:
        self.acked: list[int] = []
        self.errors: list[str] = []
        self.started = self.closed = False
        try:
            with open(path) as fh:
                lines = fh.read().splitlines()
        except FileNotFoundError:
            lines = []
        for line in lines:
            if line.startswith("A "):
                self.acked.append(int(line.split()[1]))
            elif line == "S":
                self.started = True
            elif line == "C":
                self.closed = True
            elif line.startswith("X "):
                self.errors.append(line[2:])


class ConsumerLog:
    """What a consumer log says: deliveries in order, the batch it died in, errors."""

    def __init__(self, path: str) -> None:
        self.delivered: list[tuple[int, int]] = []
        self.bad: list[str] = []
        self.errors: list[str] = []
        self.open_batch = 0
        self.started = self.closed = False
        try:
            with open(path) as fh:
                lines = fh.read().splitlines()
        except FileNotFoundError:
            lines = []
        for line in lines:
            if line.startswith("B "):
                self.open_batch = int(line.split()[1])
            elif line.startswith("E"):
                self.open_batch = 0
                body = line[2:]
                if body:
                    for item in body.split(","):
                        p, seq = item.split(":")
                        self.delivered.append((int(p), int(seq)))
            elif line.startswith("BAD "):
                self.bad.append(line[4:])
            elif line == "S":
                self.started = True
            elif line == "C":
                self.closed = True
            elif line.startswith("X "):
                self.errors.append(line[2:])


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "zygote":
        sys.exit(mq_procs.serve_zygote(_MODES))
    sys.exit(f"usage: {sys.argv[0]} zygote")
