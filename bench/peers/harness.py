"""Worker side of the side-by-side benchmark: control block, phase loop, message shape.

Standard library only: the same code runs in this project's venv and in the separate venv
of the reference package (whose pinned protobuf conflicts with ours).

Every worker is one producer or one consumer process. The runner drives all of them
through a *control block*, a small file of int64 slots mapped by every process::

    slot  0..15   header, written by the runner
                  MAGIC, SEQ (command number), KIND, SIZE (index), DURATION_NS, RATE
                  (msgs/s, all producers together), GO_NS (CLOCK_MONOTONIC start instant,
                  0 until every worker acknowledged SEQ), STOP_SEQ (consumers stop when it
                  equals SEQ), BATCH, WARM_N (warm-up messages per producer), ABORT
    slot 16+8w    worker w (producers first, then consumers), written by that worker only
                  ACK (last SEQ it is ready for), DONE (last SEQ whose results are
                  written), COUNT (sent / received so far in this phase), PID, ERROR,
                  HELLO (endpoint open)

One phase: the runner writes the parameters, then SEQ; each worker switches its endpoint
to the phase's payload size (a bind, for queues that have one) and writes ACK; when all
have, the runner writes GO_NS a few milliseconds ahead and every worker starts at that
instant. Producers stop on their own (count or deadline) and write DONE; consumers stop
when the runner writes STOP_SEQ (once everything sent was received, or a drain timeout
passed) and write DONE. Results go to one JSON file per worker and phase (plus a binary
file of one-way latencies, int64 ns, for latency phases).

Message: ``{"seq": int, "t": time.monotonic_ns(), "payload": bytes}`` where ``seq`` packs
``phase << 40 | producer << 32 | index``, so a consumer can tell a late message of an
earlier phase, and count per-producer reorderings or duplicates, without any lookup.
CLOCK_MONOTONIC is system-wide on Linux, so ``now - t`` in the consumer is the one-way
latency (``t`` is taken just before the send call).
"""

from __future__ import annotations

import array
import ctypes
import importlib
import json
import mmap
import os
import signal
import sys
import time
import traceback

MAGIC = 0x46584250_45455253

H_MAGIC = 0
H_SEQ = 1
H_KIND = 2
H_SIZE = 3
H_DURATION_NS = 4
H_RATE = 5
H_GO_NS = 6
H_STOP_SEQ = 7
H_BATCH = 8
H_WARM_N = 9
H_ABORT = 10
HEADER_SLOTS = 16

W_ACK = 0
W_DONE = 1
W_COUNT = 2
W_PID = 3
W_ERROR = 4
W_HELLO = 5
WORKER_SLOTS = 8

KIND_WARMUP = 1
KIND_THROUGHPUT = 2
KIND_LATENCY = 3
KIND_IDLE = 4
KIND_EXIT = 5
KIND_NAMES = {
    KIND_WARMUP: "warmup",
    KIND_THROUGHPUT: "throughput",
    KIND_LATENCY: "latency",
    KIND_IDLE: "idle",
    KIND_EXIT: "exit",
}

#: ``send`` outcomes of a producer endpoint.
SENT = 1
TIMED_OUT = 0  # no room within the endpoint's wait; the same message is offered again
DROPPED = -1  # the peer reported that nobody received it (counted as sent and lost)

_SEQ_PHASE_SHIFT = 40
_SEQ_PRODUCER_SHIFT = 32
_SEQ_INDEX_MASK = (1 << 32) - 1


class ControlBlock:
    """The mapped int64 slots shared by the runner and its workers.

    Parameters
    ----------
    path : str
        File backing the block (in a private temp directory).
    n_workers : int
        Producers + consumers; only used by :meth:`create`.
    """

    def __init__(self, path: str, mm: mmap.mmap) -> None:
        self.path = path
        self._mm = mm
        self.v = memoryview(mm).cast("q")

    @classmethod
    def create(cls, path: str, n_workers: int) -> ControlBlock:
        """Create a zeroed block for ``n_workers`` workers."""
        size = 8 * (HEADER_SLOTS + WORKER_SLOTS * n_workers)
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.ftruncate(fd, size)
            mm = mmap.mmap(fd, size)
        finally:
            os.close(fd)
        block = cls(path, mm)
        block.v[H_MAGIC] = MAGIC
        return block

    @classmethod
    def attach(cls, path: str) -> ControlBlock:
        """Map an existing block."""
        fd = os.open(path, os.O_RDWR)
        try:
            mm = mmap.mmap(fd, os.fstat(fd).st_size)
        finally:
            os.close(fd)
        block = cls(path, mm)
        if block.v[H_MAGIC] != MAGIC:
            raise RuntimeError(f"{path} is not a benchmark control block")
        return block

    def worker(self, w: int, slot: int) -> int:
        """Slot ``slot`` of worker ``w``."""
        return self.v[HEADER_SLOTS + WORKER_SLOTS * w + slot]

    def set_worker(self, w: int, slot: int, value: int) -> None:
        """Write slot ``slot`` of worker ``w`` (only that worker does)."""
        self.v[HEADER_SLOTS + WORKER_SLOTS * w + slot] = value

    def close(self) -> None:
        """Unmap (the file stays until the runner removes its directory)."""
        try:
            self.v.release()
            self._mm.close()
        except (BufferError, ValueError):
            pass


def make_seq_base(phase: int, producer: int) -> int:
    """High bits of every ``seq`` a producer sends in a phase."""
    return (phase << _SEQ_PHASE_SHIFT) | (producer << _SEQ_PRODUCER_SHIFT)


def die_with_parent() -> None:
    """Ask the kernel to SIGKILL this process when its parent dies (Linux)."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL, 0, 0, 0)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


# ----------------------------------------------------------------------------- worker loop
class _Abort(Exception):
    """The runner asked every worker to stop (ABORT slot)."""


def _wait(cb: ControlBlock, cond, poll_s: float) -> None:
    v = cb.v
    while not cond():
        if v[H_ABORT]:
            raise _Abort()
        time.sleep(poll_s)


def _sleep_until(target_ns: int) -> None:
    now = time.monotonic_ns()
    if target_ns > now:
        time.sleep((target_ns - now) / 1e9)


def _producer_phase(cb, end, w, idx, seq, kind, payload, cfg) -> dict:
    v = cb.v
    count_slot = HEADER_SLOTS + WORKER_SLOTS * w + W_COUNT
    n_prod = cfg["producers"]
    go = v[H_GO_NS]
    duration = v[H_DURATION_NS]
    deadline = go + duration
    base = make_seq_base(seq, idx)
    mono = time.monotonic_ns
    send = end.send
    sent = 0
    dropped = 0
    timeouts = 0
    _sleep_until(go)
    cpu0 = time.process_time_ns()
    t_start = mono()
    if kind == KIND_WARMUP:
        want = v[H_WARM_N]
        while sent < want and not v[H_ABORT] and v[H_STOP_SEQ] != seq:
            r = send({"seq": base | sent, "t": mono(), "payload": payload})
            if r == SENT:
                sent += 1
                v[count_slot] = sent
            elif r == DROPPED:
                time.sleep(0.001)  # nobody subscribed yet: offer it again
            else:
                timeouts += 1
    elif kind == KIND_THROUGHPUT:
        batch = v[H_BATCH]
        send_many = getattr(end, "send_many", None) if batch > 1 else None
        if send_many is not None:
            while True:
                t = mono()
                if t >= deadline or v[H_ABORT]:
                    break
                msgs = [
                    {"seq": base | (sent + k), "t": t, "payload": payload} for k in range(batch)
                ]
                n = send_many(msgs)
                if n:
                    sent += n
                    v[count_slot] = sent
                else:
                    timeouts += 1
        else:
            while True:
                t = mono()
                if t >= deadline:
                    break
                r = send({"seq": base | sent, "t": t, "payload": payload})
                if r == SENT:
                    sent += 1
                    v[count_slot] = sent
                elif r == DROPPED:
                    sent += 1
                    dropped += 1
                    v[count_slot] = sent
                else:
                    timeouts += 1
                    if v[H_ABORT]:
                        break
    elif kind == KIND_LATENCY:
        rate = max(1, v[H_RATE])
        interval = n_prod * 1_000_000_000 / rate  # ns between two sends of this producer
        offset = idx * interval / n_prod  # producers interleave evenly
        k = 0
        while not v[H_ABORT]:
            target = go + int(offset + k * interval)
            if target >= deadline:
                break
            _sleep_until(target)
            while True:
                t = mono()
                r = send({"seq": base | sent, "t": t, "payload": payload})
                if r != TIMED_OUT:
                    break
                timeouts += 1
                if t >= deadline or v[H_ABORT]:
                    break
            if r == SENT:
                sent += 1
            elif r == DROPPED:
                sent += 1
                dropped += 1
            v[count_slot] = sent
            k += 1
    elif kind == KIND_IDLE:
        while mono() < deadline and not v[H_ABORT]:
            time.sleep(0.05)
    cpu1 = time.process_time_ns()
    v[count_slot] = sent
    return {
        "sent": sent,
        "dropped": dropped,
        "timeouts": timeouts,
        "cpu_ns": cpu1 - cpu0,
        "t_start": t_start,
        "t_end": mono(),
    }


def _consumer_phase(cb, end, w, seq, kind, cfg, lat_path) -> dict:
    v = cb.v
    count_slot = HEADER_SLOTS + WORKER_SLOTS * w + W_COUNT
    n_prod = cfg["producers"]
    batch = max(1, v[H_BATCH])
    timeout = cfg["recv_timeout"]
    recv = end.recv
    mono = time.monotonic_ns
    last = [-1] * n_prod
    received = 0
    stale = 0
    reorder = 0
    t_first = 0
    t_last = 0
    record = kind == KIND_LATENCY
    lats = array.array("q")
    append = lats.append
    go = v[H_GO_NS]
    _sleep_until(go)
    cpu0 = time.process_time_ns()
    while v[H_STOP_SEQ] != seq and not v[H_ABORT]:
        msgs = recv(batch, timeout)
        if not msgs:
            continue
        now = mono()
        for m in msgs:
            s = m["seq"]
            if (s >> _SEQ_PHASE_SHIFT) != seq:
                stale += 1
                continue
            p = (s >> _SEQ_PRODUCER_SHIFT) & 0xFF
            i = s & _SEQ_INDEX_MASK
            if i <= last[p]:
                reorder += 1
            else:
                last[p] = i
            received += 1
            if record:
                append(now - m["t"])
        if received and not t_first:
            t_first = now
        t_last = now
        v[count_slot] = received
    cpu1 = time.process_time_ns()
    if record:
        with open(lat_path, "wb") as f:
            lats.tofile(f)
    return {
        "received": received,
        "stale": stale,
        "reorder": reorder,
        "cpu_ns": cpu1 - cpu0,
        "t_first": t_first,
        "t_last": t_last,
        "lat_file": lat_path if record else None,
    }


def worker_main(cfg: dict, endpoint=None) -> int:
    """Run one worker until the runner's EXIT command.

    Parameters
    ----------
    cfg : dict
        ``ctl_path``, ``run_dir``, ``worker`` (index in the block), ``role``
        (``"producer"``/``"consumer"``), ``index`` (within its role), ``producers``,
        ``consumers``, ``sizes`` (bytes per size index), ``recv_timeout`` (seconds),
        ``adapter`` (module with ``open_endpoint``) and the adapter's own keys.
    endpoint : object, optional
        What the runner handed over (queues, pipe ends) for peers that need inheritance.

    Returns
    -------
    int
        Process exit status.
    """
    die_with_parent()
    log_path = cfg.get("log_path")
    if log_path:  # keep the runner's terminal clean; the runner shows the tail on failure
        fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        sys.stdout.flush()
        sys.stderr.flush()
        os.dup2(fd, 1)
        os.dup2(fd, 2)
        os.close(fd)
    cb = ControlBlock.attach(cfg["ctl_path"])
    w = cfg["worker"]
    role = cfg["role"]
    idx = cfg["index"]
    run_dir = cfg["run_dir"]
    cb.set_worker(w, W_PID, os.getpid())
    end = None
    try:
        adapter = importlib.import_module(cfg["adapter"])
        end = adapter.open_endpoint(role, idx, cfg, endpoint)
        cb.set_worker(w, W_HELLO, 1)
        last_seq = 0
        size_idx = -1
        payload = b""
        v = cb.v
        while True:
            _wait(cb, lambda: v[H_SEQ] != last_seq, 0.001)
            seq = v[H_SEQ]
            last_seq = seq
            kind = v[H_KIND]
            if kind == KIND_EXIT:
                break
            if v[H_SIZE] != size_idx:
                size_idx = v[H_SIZE]
                end.use_size(size_idx)
                payload = b"x" * cfg["sizes"][size_idx]
            cb.set_worker(w, W_COUNT, 0)
            cb.set_worker(w, W_ACK, seq)
            _wait(cb, lambda: v[H_GO_NS] != 0, 0.0005)
            if role == "producer":
                res = _producer_phase(cb, end, w, idx, seq, kind, payload, cfg)
            else:
                lat_path = os.path.join(run_dir, f"lat-{w}-{seq}.bin")
                res = _consumer_phase(cb, end, w, seq, kind, cfg, lat_path)
            res.update(worker=w, role=role, index=idx, seq=seq, kind=KIND_NAMES.get(kind))
            tmp = os.path.join(run_dir, f"r-{w}-{seq}.json.tmp")
            with open(tmp, "w") as f:
                json.dump(res, f)
            os.replace(tmp, os.path.join(run_dir, f"r-{w}-{seq}.json"))
            cb.set_worker(w, W_DONE, seq)
        end.close()
        end = None
        cb.set_worker(w, W_DONE, v[H_SEQ])
        return 0
    except _Abort:
        return 2
    except BaseException:  # noqa: BLE001 - reported to the runner through a file
        with open(os.path.join(run_dir, f"err-{w}.txt"), "w") as f:
            f.write(traceback.format_exc())
        cb.set_worker(w, W_ERROR, 1)
        return 1
    finally:
        if end is not None:
            try:
                end.close()
            except BaseException:  # noqa: BLE001 - already failing; keep the first error
                pass


def worker_entry(cfg: dict, endpoint=None) -> None:
    """``multiprocessing`` target: :func:`worker_main`, then exit with its status."""
    code = worker_main(cfg, endpoint)
    sys.stdout.flush()
    sys.stderr.flush()
    if cfg.get("hard_exit"):
        os._exit(code)
    sys.exit(code)
