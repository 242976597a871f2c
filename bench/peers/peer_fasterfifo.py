"""``faster-fifo``: a shared-memory circular buffer with a pthread mutex/condvars.

Competing consumers on one queue. Native batching on both sides: producers ``put_many``
and consumers ``get_many`` (up to the run's batch size). The buffer is sized for the
run's capacity of pickled messages (its 1 MB default cannot hold one 1 MiB message), and
``maxsize`` caps the message count at that capacity.
"""

from __future__ import annotations

import queue

from .harness import SENT, TIMED_OUT
from .peerbase import Peer, pickled_size

_PER_MSG_OVERHEAD = 64


class FasterFifoPeer(Peer):
    """Runner side: one ``faster_fifo.Queue`` per payload size."""

    key = "faster-fifo"
    label = "faster-fifo"
    batching = "put_many / get_many (batch B)"
    module = __name__
    static_notes = (
        "buffer sized to capacity x pickled message (the 1 MB default cannot hold one "
        "1 MiB message), maxsize = capacity; producers put_many B messages per call",
    )

    def unavailable(self) -> str | None:
        try:
            import faster_fifo  # noqa: F401
            import faster_fifo_reduction  # noqa: F401 - makes the queue picklable for spawn
        except ImportError:
            return "faster-fifo is not installed (pip install '.[bench]')"
        return None

    def endpoints(self, n_prod: int, n_cons: int) -> list:
        import faster_fifo
        import faster_fifo_reduction  # noqa: F401

        self._queues = []
        for s in self.ctx.sizes:
            cap = self.ctx.capacity(s)
            nbytes = cap * (pickled_size(s) + _PER_MSG_OVERHEAD) + (1 << 16)
            self._queues.append(faster_fifo.Queue(max_size_bytes=nbytes, maxsize=cap))
        return [self._queues] * (n_prod + n_cons)

    def release(self) -> None:
        for q in getattr(self, "_queues", []):
            q.close()
        self._queues = []


PEER = FasterFifoPeer


class _Endpoint:
    def __init__(self, queues: list) -> None:
        self.queues = queues
        self.q = queues[0]

    def use_size(self, size_idx: int) -> None:
        self.q = self.queues[size_idx]

    def send(self, msg: dict) -> int:
        try:
            self.q.put(msg, block=True, timeout=0.2)
        except queue.Full:
            return TIMED_OUT
        return SENT

    def send_many(self, msgs: list) -> int:
        try:
            self.q.put_many(msgs, block=True, timeout=0.2)
        except queue.Full:
            return 0
        return len(msgs)

    def recv(self, max_n: int, timeout: float) -> list:
        try:
            return self.q.get_many(block=True, timeout=timeout, max_messages_to_get=max_n)
        except queue.Empty:
            return []

    def close(self) -> None:
        pass  # the shared buffer belongs to the runner


def open_endpoint(role: str, index: int, cfg: dict, endpoint) -> _Endpoint:
    """Worker side: use the inherited queues."""
    return _Endpoint(endpoint)
