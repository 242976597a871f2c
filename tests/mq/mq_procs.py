"""Worker processes for the MQ tests, forked from a pre-warmed "zygote".

Starting a fresh Python with numpy, Numba kernels and gRPC costs about a second of CPU;
the MQ tests start dozens of producers, consumers and SIGKILL victims. The zygote
(``python mq_procs.py zygote``) imports fluxon and loads every channel kernel once, then
forks a child per request; a child attaches its own store (gRPC is imported only in the
child) and runs one of the ``mode_*`` functions below.

Protocol (JSON lines on the zygote's stdin/stdout)::

    {"op": "spawn", "mode": "consume", "args": {...}}  -> {"pid": 1234}
    {"op": "kill", "pid": 1234, "sig": 9}              -> {"ok": true}
    {"op": "wait", "pid": 1234, "timeout": 5.0}        -> {"status": 0 | null}
    {"op": "exit"}                                     -> zygote kills its children, exits

The zygote and its children die with their parent (PR_SET_PDEATHSIG). Children report
through files named in their args (JSON written atomically at the end, or append-only
logs that survive SIGKILL).
"""

from __future__ import annotations

import ctypes
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
import zlib
from typing import Any

_HERE = os.path.dirname(os.path.abspath(__file__))
_ROOT = os.path.dirname(os.path.dirname(_HERE))


# --------------------------------------------------------------------------- helpers
def _die_with_parent() -> None:
    try:
        ctypes.CDLL(None).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def _write_json(path: str, data: Any) -> None:
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w") as fh:
        json.dump(data, fh)
    os.replace(tmp, path)


def _wait_file(path: str | None, timeout: float = 60.0) -> None:
    if not path:
        return
    deadline = time.monotonic() + timeout
    while not os.path.exists(path):
        if time.monotonic() > deadline:
            raise TimeoutError(f"{path} did not appear")
        time.sleep(0.001)


def checksum(label: int, seq: int) -> int:
    """Self-check of a message: a CRC of its producer label and sequence number."""
    return zlib.crc32(f"{label}:{seq}".encode())


def make_message(label: int, seq: int, pad: int = 0) -> dict:
    """A self-checking message of producer ``label``."""
    return {"p": label, "seq": seq, "chk": checksum(label, seq), "pad": b"\x5a" * pad}


def message_ok(msg: dict) -> bool:
    """Whether a received message is intact."""
    pad = msg.get("pad", b"")
    return (
        msg.get("chk") == checksum(msg.get("p"), msg.get("seq"))
        and isinstance(pad, bytes)
        and pad == b"\x5a" * len(pad)
    )


def _store(cfg: dict) -> Any:
    from fluxon.kvclient import new_store

    return new_store(cfg).unwrap()


def _bind(store: Any, args: dict, role: str) -> Any:
    from fluxon.api_ext_chan import new_or_bind_with_unique_key

    config = {"capacity": args.get("capacity", 16), "ttl_seconds": args.get("ttl", 30)}
    if role == "producer" and args.get("weight"):
        config["weight"] = args["weight"]
    return new_or_bind_with_unique_key(
        store,
        config,
        unique_id=args["key"],
        chan_type=args.get("chan_type", "mpmc"),
        chan_role=role,
    )


# --------------------------------------------------------------------------- modes
def mode_bind(args: dict) -> int:
    """Bind ``key`` when ``go`` appears; write the chan_id (or the error) to ``out``."""
    store = _store(args["cfg"])
    _wait_file(args.get("go"))
    res = _bind(store, args, args.get("role", "consumer"))
    if res.is_ok():
        handle = res.unwrap()
        _write_json(args["out"], {"chan_id": handle.get_chan_id()})
        _wait_file(args.get("release"))
        handle.close()
    else:
        err = res.unwrap_error()
        _write_json(args["out"], {"error": type(err).__name__, "message": str(err)})
    store.close()
    return 0


def mode_produce(args: dict) -> int:
    """Send ``n`` self-checking messages as producer ``label``; report how many were acked."""
    store = _store(args["cfg"])
    producer = _bind(store, args, "producer").unwrap()
    _wait_file(args.get("go"))
    label, pad, acked = args["label"], args.get("pad", 0), 0
    for seq in range(args["n"]):
        res = producer.put_data(make_message(label, seq, pad))
        if not (res.is_ok() and res.unwrap() is True):
            break
        acked += 1
    _write_json(args["out"], {"acked": acked, "producer_id": producer.get_producer_id()})
    producer.close()
    store.close()
    return 0


def mode_consume(args: dict) -> int:
    """Consume until ``stop`` exists and the channel stays empty; check order and integrity."""
    from fluxon.api_error import MessageConsumptionNoNewMessageError

    store = _store(args["cfg"])
    consumer = _bind(store, args, "consumer").unwrap()
    _write_json(args["out"] + ".ready", {"consumer_id": consumer.get_consumer_id()})
    received, bad, out_of_order = [], 0, 0
    last: dict[int, int] = {}
    while True:
        res = consumer.get_data(
            batch_size=args.get("batch", 4), try_time=0.2, prefetch_num=args.get("prefetch", 0)
        )
        if not res.is_ok():
            if isinstance(res.unwrap_error(), MessageConsumptionNoNewMessageError):
                if os.path.exists(args["stop"]):
                    break
                continue
            raise res.unwrap_error()
        for msg in res.unwrap():
            if not message_ok(msg):
                bad += 1
            p, seq = msg["p"], msg["seq"]
            if seq <= last.get(p, -1):
                out_of_order += 1
            last[p] = seq
            received.append([p, seq])
        if args.get("delay"):
            time.sleep(args["delay"])
    _write_json(
        args["out"],
        {"received": received, "bad": bad, "out_of_order": out_of_order},
    )
    consumer.close()
    store.close()
    return 0


def mode_victim(args: dict) -> int:
    """Consume with prefetch until killed, logging every delivery to an append-only file.

    Before each get_data the log gets ``B``; after it ``E p:seq,...``. A message missing
    from every log can only be one delivered by a get whose ``E`` line never came.
    """
    rng = random.Random(args.get("seed"))
    store = _store(args["cfg"])
    consumer = _bind(store, args, "consumer").unwrap()
    fd = os.open(args["log"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    os.write(fd, b"R\n")
    deadline = time.monotonic() + 30.0
    while time.monotonic() < deadline:
        batch = rng.randint(1, 4)
        os.write(fd, f"B {batch}\n".encode())
        res = consumer.get_data(batch_size=batch, try_time=0.05, prefetch_num=rng.randint(0, 12))
        got = res.unwrap() if res.is_ok() else []
        os.write(fd, ("E " + ",".join(f"{m['p']}:{m['seq']}" for m in got) + "\n").encode())
        time.sleep(rng.uniform(0.0, 0.004))
    return 0


def mode_hold(args: dict) -> int:
    """Bind a consumer, optionally take one message with prefetch, then sit until killed."""
    store = _store(args["cfg"])
    res = _bind(store, args, "consumer")
    if not res.is_ok():
        _write_json(args["out"], {"error": str(res.unwrap_error())})
        return 1
    consumer = res.unwrap()
    got = []
    if args.get("prefetch") is not None:
        batch = consumer.get_data(batch_size=1, try_time=5.0, prefetch_num=args["prefetch"])
        got = [[m["p"], m["seq"]] for m in batch.unwrap()]
    _write_json(args["out"], {"consumer_id": consumer.get_consumer_id(), "received": got})
    if args.get("block"):
        consumer.get_data(batch_size=1)  # blocks until a message or close
    while True:
        time.sleep(1.0)


_MODES = {
    "bind": mode_bind,
    "produce": mode_produce,
    "consume": mode_consume,
    "victim": mode_victim,
    "hold": mode_hold,
}


# --------------------------------------------------------------------------- zygote
def _prewarm() -> None:
    """Import fluxon and load every channel kernel (children inherit them)."""
    import numpy as np

    from fluxon import api_ext_chan, kvclient  # noqa: F401
    from fluxon.pool import Pool
    from fluxon_kernels import channel as kc
    from fluxon_kernels.layout import channel as cl
    from fluxon_kernels.layout import member as ml

    base = tempfile.mkdtemp(prefix="fluxon-zygote-", dir="/dev/shm")
    try:
        pool = Pool.create(base, "warm", "warm", 16 << 20)
        b, w = pool.b, pool.w
        slot = pool.register_member(ml.KIND_EXTERNAL, "warm")
        tag = slot + 1
        c = int(kc.chan_create(b, w, tag, 1, cl.TYPE_MPMC, 4, 1))
        e = int(kc.prod_attach(b, w, c, tag, 1, 1))
        k = int(kc.cons_attach(w, c, tag, 2, 0))
        kc.chan_is_active(w, c, 1)
        kc.seq_byte_offset(w, c, 0)
        src = np.zeros(cl.SLOT_INLINE, np.uint8)
        kc.prod_put(b, w, c, e, tag, src, 8)
        s = int(kc.prod_reserve(b, w, c, e, tag, 4096))
        kc.slot_payload_offset(b, w, c, s)
        kc.prod_publish(b, w, c, e, tag, s)
        state = np.zeros(cl.MAX_PRODUCERS, np.int64)
        out = np.zeros(8, np.int64)
        n = int(kc.cons_claim(b, w, c, tag, state, out, 8))
        lens = np.zeros(8, np.int64)
        kc.cons_lengths(b, w, c, out, n, lens)
        kc.cons_return(b, w, c, tag, out[:0], 0)
        kc.cons_take(b, w, c, tag, out, n, np.zeros(8192, np.uint8), np.zeros(8, np.int64))
        kc.wait_begin(w, c, 0)
        kc.wait_end(w, c, 0)
        kc.wake_all(w, c)
        kc.chan_available(w, c)
        kc.cons_detach(w, c, k, tag)
        kc.prod_detach(w, c, e, tag)
        kc.chan_destroy(b, w, c)
        pool.unregister_member(slot)
        pool.close()
        pool.unlink()
    finally:
        import shutil

        shutil.rmtree(base, ignore_errors=True)


def serve_zygote(modes: dict) -> int:
    """Zygote main loop: prewarm, then fork children running ``modes[name](args)``.

    Requests and replies are JSON lines on stdin/stdout (``spawn``, ``kill``, ``wait``,
    ``exit``); every child left is killed when stdin closes.
    """
    _die_with_parent()
    _prewarm()
    children: set[int] = set()
    out = sys.stdout
    out.write(json.dumps({"ready": True}) + "\n")
    out.flush()
    for line in sys.stdin:
        req = json.loads(line)
        op = req["op"]
        if op == "spawn":
            pid = os.fork()
            if pid == 0:
                code = 1
                try:
                    devnull = os.open(os.devnull, os.O_RDWR)
                    os.dup2(devnull, 0)
                    os.dup2(devnull, 1)
                    _die_with_parent()
                    random.seed()
                    code = modes[req["mode"]](req["args"]) or 0
                except SystemExit as exc:
                    code = exc.code if isinstance(exc.code, int) else 2
                except BaseException:  # noqa: BLE001 - report and exit the child
                    import traceback

                    traceback.print_exc()
                finally:
                    sys.stderr.flush()
                    os._exit(code)
            children.add(pid)
            reply: dict = {"pid": pid}
        elif op == "kill":
            pid = req["pid"]
            if pid in children:
                try:
                    os.kill(pid, req.get("sig", signal.SIGKILL))
                except ProcessLookupError:
                    pass
            reply = {"ok": True}
        elif op == "wait":
            pid, status = req["pid"], None
            deadline = time.monotonic() + req.get("timeout", 0.0)
            while pid in children:
                done, raw = os.waitpid(pid, os.WNOHANG)
                if done:
                    children.discard(pid)
                    status = os.waitstatus_to_exitcode(raw)
                    break
                if time.monotonic() >= deadline:
                    break
                time.sleep(0.01)
            reply = {"status": status}
        elif op == "exit":
            break
        else:
            reply = {"error": f"unknown op {op!r}"}
        out.write(json.dumps(reply) + "\n")
        out.flush()
    for pid in children:
        try:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
        except (ProcessLookupError, ChildProcessError):
            pass
    return 0


class Zygote:
    """Test-side handle of a zygote process (use as a context manager).

    Parameters
    ----------
    log_path : str
        Where the zygote's and its children's stderr go (shown on failure).
    script : str
        The module run as ``script zygote`` (its ``__main__`` calls :func:`serve_zygote`).
    """

    def __init__(self, log_path: str, script: str = __file__) -> None:
        self.log_path = log_path
        self._log = open(log_path, "ab")
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [_ROOT, env.get("PYTHONPATH")]))
        self.proc = subprocess.Popen(
            [sys.executable, os.path.abspath(script), "zygote"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._log,
            env=env,
            text=True,
            bufsize=1,
        )
        self.pids: list[int] = []
        ready = self._read()
        if not ready.get("ready"):
            raise RuntimeError(f"zygote failed to start: {self.log_tail()}")

    def _read(self) -> dict:
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"zygote exited: {self.log_tail()}")
        return json.loads(line)

    def _call(self, req: dict) -> dict:
        self.proc.stdin.write(json.dumps(req) + "\n")
        self.proc.stdin.flush()
        return self._read()

    def spawn(self, mode: str, **args: Any) -> int:
        """Fork a child running ``mode_<mode>(args)``; returns its pid."""
        pid = self._call({"op": "spawn", "mode": mode, "args": args})["pid"]
        self.pids.append(pid)
        return pid

    def kill(self, pid: int, sig: int = signal.SIGKILL) -> None:
        """Send ``sig`` to a child of the zygote."""
        self._call({"op": "kill", "pid": pid, "sig": int(sig)})

    def wait(self, pid: int, timeout: float) -> int | None:
        """Exit status of a child (``None`` if still running after ``timeout``)."""
        return self._call({"op": "wait", "pid": pid, "timeout": timeout})["status"]

    def log_tail(self, max_bytes: int = 6000) -> str:
        """End of the zygote's stderr log."""
        self._log.flush()
        try:
            with open(self.log_path, "rb") as fh:
                data = fh.read()
        except OSError:
            return ""
        return data[-max_bytes:].decode("utf-8", "replace")

    def close(self) -> None:
        """Kill every child and stop the zygote."""
        try:
            if self.proc.poll() is None:
                self.proc.stdin.write(json.dumps({"op": "exit"}) + "\n")
                self.proc.stdin.flush()
                self.proc.wait(timeout=15)
        except (OSError, subprocess.TimeoutExpired, ValueError):
            pass
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)
        self._log.close()

    def __enter__(self) -> Zygote:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "zygote":
        sys.path.insert(0, _ROOT)
        sys.exit(serve_zygote(_MODES))
    sys.exit(f"usage: {sys.argv[0]} zygote")
