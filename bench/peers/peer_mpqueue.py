"""``multiprocessing.Queue``: the stdlib queue, one shared queue, competing consumers.

Bounded with ``maxsize`` = the run's capacity for the payload size, so producers feel the
same back-pressure as with every other peer. ``put`` hands the object to a feeder thread
that pickles it into a pipe; that thread's CPU counts in the producer process.
"""

from __future__ import annotations

import queue

from .harness import SENT, TIMED_OUT
from .peerbase import Peer


class MpQueuePeer(Peer):
    """Runner side: one ``Queue(maxsize=capacity)`` per payload size."""

    key = "mp-queue"
    label = "multiprocessing.Queue"
    batching = "none (put/get one message)"
    module = __name__
    static_notes = (
        "Queue(maxsize=capacity); a feeder thread pickles in the producer (its CPU is counted)",
    )

    def endpoints(self, n_prod: int, n_cons: int) -> list:
        """Every worker gets the list of per-size queues."""
        mp = self.ctx.mp
        self._queues = [mp.Queue(maxsize=self.ctx.capacity(s)) for s in self.ctx.sizes]
        return [self._queues] * (n_prod + n_cons)

    def release(self) -> None:
        """Close the runner's handles of the queues."""
        for q in getattr(self, "_queues", []):
            q.close()
            q.join_thread()
        self._queues = []


PEER = MpQueuePeer


class _Endpoint:
    def __init__(self, queues: list) -> None:
        self.queues = queues
        self.q = queues[0]

    def use_size(self, size_idx: int) -> None:
        self.q = self.queues[size_idx]

    def send(self, msg: dict) -> int:
        try:
            self.q.put(msg, timeout=0.2)
        except queue.Full:
            return TIMED_OUT
        return SENT

    def recv(self, max_n: int, timeout: float) -> list:
        try:
            return [self.q.get(timeout=timeout)]
        except queue.Empty:
            return []

    def close(self) -> None:
        for q in self.queues:
            q.cancel_join_thread()  # never block exit on a consumer that already left
            q.close()


def open_endpoint(role: str, index: int, cfg: dict, endpoint) -> _Endpoint:
    """Worker side: use the inherited queues."""
    return _Endpoint(endpoint)
