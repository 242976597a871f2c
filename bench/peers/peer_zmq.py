"""ZeroMQ PUSH/PULL over ``ipc://`` (pyzmq).

Each consumer binds one PULL socket per payload size; each producer connects one PUSH
socket to all of them, so PUSH round-robins messages over the consumers (load balancing
by turns, not work stealing). ``SNDHWM``/``RCVHWM`` are set to half the run's capacity
per socket, so a pair buffers about ``capacity`` messages (plus kernel socket buffers).
Messages are pickled; frames of 64 KiB and more are sent and received without a copy
into/out of a zmq message. Batching is libzmq's own (its I/O thread coalesces writes);
there is no batch API. Producers close with a linger so nothing in flight is dropped
(a PUSH socket closed right after sending otherwise loses what it still holds).
"""

from __future__ import annotations

import os

from .harness import SENT, TIMED_OUT
from .peerbase import Peer, pickle_dumps, pickle_loads

_ZERO_COPY_MIN = 64 << 10


class ZmqPeer(Peer):
    """Runner side: nothing always-on; the ipc socket files live in the run directory."""

    key = "zmq"
    label = "ZeroMQ PUSH/PULL (ipc)"
    batching = "libzmq I/O-thread batching (no batch API)"
    module = __name__
    static_notes = (
        "SNDHWM = RCVHWM = capacity/2 per socket; PUSH round-robins over the consumers "
        "(load balancing, not work stealing); producers close with a linger so nothing in "
        "flight is dropped",
    )

    def unavailable(self) -> str | None:
        try:
            import zmq  # noqa: F401
        except ImportError:
            return "pyzmq is not installed (pip install '.[bench]')"
        return None

    def worker_config(self, n_prod: int, n_cons: int) -> dict:
        d = os.path.join(self.ctx.run_dir, f"zmq-{n_prod}x{n_cons}")
        os.makedirs(d, exist_ok=True)
        addrs = [
            [f"ipc://{d}/s{i}-c{c}" for c in range(n_cons)] for i in range(len(self.ctx.sizes))
        ]
        hwm = [max(1, self.ctx.capacity(s) // 2) for s in self.ctx.sizes]
        return {"zmq_addrs": addrs, "zmq_hwm": hwm}


PEER = ZmqPeer


class _Endpoint:
    def __init__(self, role: str, index: int, cfg: dict) -> None:
        import zmq

        self._zmq = zmq
        self.ctx = zmq.Context(io_threads=1)
        self.socks = []
        self.copy = []
        for i, addrs in enumerate(cfg["zmq_addrs"]):
            hwm = cfg["zmq_hwm"][i]
            if role == "producer":
                s = self.ctx.socket(zmq.PUSH)
                s.setsockopt(zmq.SNDHWM, hwm)
                s.setsockopt(zmq.SNDTIMEO, 200)
                s.setsockopt(zmq.LINGER, 2000)
                for a in addrs:
                    s.connect(a)
            else:
                s = self.ctx.socket(zmq.PULL)
                s.setsockopt(zmq.RCVHWM, hwm)
                s.setsockopt(zmq.LINGER, 0)
                s.bind(addrs[index])
            self.socks.append(s)
            self.copy.append(cfg["sizes"][i] < _ZERO_COPY_MIN)
        self.s = self.socks[0]
        self.c = self.copy[0]

    def use_size(self, size_idx: int) -> None:
        self.s = self.socks[size_idx]
        self.c = self.copy[size_idx]

    def send(self, msg: dict) -> int:
        try:
            self.s.send(pickle_dumps(msg), copy=self.c)
        except self._zmq.Again:
            return TIMED_OUT
        return SENT

    def recv(self, max_n: int, timeout: float) -> list:
        if not self.s.poll(int(timeout * 1000)):
            return []
        try:
            data = self.s.recv(flags=self._zmq.NOBLOCK, copy=self.c)
        except self._zmq.Again:
            return []
        return [pickle_loads(data if self.c else data.buffer)]

    def close(self) -> None:
        for s in self.socks:
            s.close()
        self.ctx.term()


def open_endpoint(role: str, index: int, cfg: dict, endpoint) -> _Endpoint:
    """Worker side: create and bind/connect the sockets."""
    return _Endpoint(role, index, cfg)
