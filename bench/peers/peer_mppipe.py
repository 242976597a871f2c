"""``multiprocessing.Pipe``: a point-to-point connection (pickled objects over a socketpair).

A pipe has exactly one reader, so ``n -> n`` runs as ``n`` independent pipes, producer i
to consumer i (partitioned, no competing consumers). Back-pressure is the kernel's socket
buffer, not a message count.
"""

from __future__ import annotations

from .harness import SENT
from .peerbase import Peer


class MpPipePeer(Peer):
    """Runner side: per payload size, one ``Pipe(duplex=False)`` per producer/consumer pair."""

    key = "mp-pipe"
    label = "multiprocessing.Pipe"
    batching = "none (send/recv one message)"
    partitioned = True
    module = __name__
    static_notes = (
        "n -> n runs as n independent pipes (a pipe has one reader: no competing consumers)",
        "back-pressure is the kernel socket buffer, not the run's message capacity",
    )

    def endpoints(self, n_prod: int, n_cons: int) -> list:
        """Producer i gets the write ends of pair i, consumer i the read ends."""
        if n_prod != n_cons:
            raise ValueError("pipes are point-to-point: producers and consumers must pair up")
        mp = self.ctx.mp
        self._pipes = [[mp.Pipe(duplex=False) for _ in range(n_prod)] for _ in self.ctx.sizes]
        writers = [[per_size[i][1] for per_size in self._pipes] for i in range(n_prod)]
        readers = [[per_size[i][0] for per_size in self._pipes] for i in range(n_cons)]
        return writers + readers

    def release(self) -> None:
        """Close the runner's copies of every pipe end."""
        for per_size in getattr(self, "_pipes", []):
            for r, w in per_size:
                r.close()
                w.close()
        self._pipes = []


PEER = MpPipePeer


class _Endpoint:
    def __init__(self, conns: list) -> None:
        self.conns = conns
        self.c = conns[0]

    def use_size(self, size_idx: int) -> None:
        self.c = self.conns[size_idx]

    def send(self, msg: dict) -> int:
        self.c.send(msg)  # blocks while the socket buffer is full
        return SENT

    def recv(self, max_n: int, timeout: float) -> list:
        if self.c.poll(timeout):
            return [self.c.recv()]
        return []

    def close(self) -> None:
        for c in self.conns:
            c.close()


def open_endpoint(role: str, index: int, cfg: dict, endpoint) -> _Endpoint:
    """Worker side: use the inherited pipe ends."""
    return _Endpoint(endpoint)
