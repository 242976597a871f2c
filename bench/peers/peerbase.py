"""What every peer adapter provides, runner side and worker side. Standard library only.

An adapter module (``peer_*.py``) defines

* ``PEER``: a :class:`Peer` subclass, instantiated once per run by the runner, which
  checks that the peer can run, starts its always-on processes (if it has any), creates
  the queues for one topology and hands each worker what it needs;
* ``open_endpoint(role, index, cfg, endpoint) -> Endpoint``: called inside the worker.

Worker endpoints implement ``use_size(size_idx)`` (switch to the queue of that payload
size: the runner creates one queue per size, each with the capacity of that size),
``close()``, and for producers ``send(msg) -> SENT|TIMED_OUT|DROPPED`` (optionally
``send_many(msgs) -> int`` where the peer has a native batch put), for consumers
``recv(max_n, timeout_s) -> list[dict]`` returning deserialized messages (an empty list
on timeout). ``max_n`` is only a bound: peers without a batch get return one message.
"""

from __future__ import annotations

import os
import pickle


class SkipPeer(Exception):
    """The peer cannot run here; the message says why (it goes into the report)."""


class Peer:
    """Runner side of one peer.

    Attributes
    ----------
    key : str
        Name used with ``--peers``.
    label : str
        Name in the report.
    batching : str
        The native batching it is given (report column).
    notes : list[str]
        Settings and caveats that belong in the report (``static_notes`` first, then
        what was applied while running).
    spawn : str
        ``"mp"`` (multiprocessing spawn: endpoints may be queues or pipe ends) or
        ``"subprocess"`` (a script run by :meth:`worker_python`; endpoints must be None).
    partitioned : bool
        ``n -> n`` runs as ``n`` independent ``1 -> 1`` pairs (no competing consumers).
    recv_timeout : float
        Seconds a consumer waits in one ``recv`` call.
    hello_timeout, setup_timeout, warmup_timeout, drain_timeout, producer_grace : float
        Bounds (seconds) on worker start, per-phase setup (a bind), the warm-up, the
        consumers' drain after the producers stopped, and a producer's overshoot past its
        deadline while blocked in a send.
    """

    key = ""
    label = ""
    batching = "none"
    spawn = "mp"
    partitioned = False
    recv_timeout = 0.05
    hello_timeout = 60.0
    setup_timeout = 30.0
    warmup_timeout = 30.0
    drain_timeout = 5.0
    producer_grace = 5.0
    hard_exit = False
    module = ""

    #: Caveats of how the peer is driven, listed in the report.
    static_notes: tuple[str, ...] = ()

    def __init__(self, ctx) -> None:
        self.ctx = ctx
        self.notes: list[str] = list(self.static_notes)

    # availability -------------------------------------------------------------------
    def unavailable(self) -> str | None:
        """Why the peer cannot run at all (missing package, ...), or None."""
        return None

    def size_unavailable(self, size: int) -> str | None:
        """Why one payload size cannot run on this peer, or None."""
        return None

    # always-on processes ------------------------------------------------------------
    def start(self) -> None:
        """Start the peer's service processes, if it has any (raise :class:`SkipPeer`)."""

    def service_names(self) -> dict[int, str]:
        """The always-on processes: root pid -> label for the idle breakdown (their
        children count too; an empty label: the process name)."""
        return {}

    def service_pids(self) -> list[int]:
        """Root pids of the always-on processes (see :meth:`service_names`)."""
        return list(self.service_names())

    def stop(self) -> None:
        """Stop the service processes and remove everything the peer created."""

    # one topology -------------------------------------------------------------------
    def worker_config(self, n_prod: int, n_cons: int) -> dict:
        """Peer-specific keys merged into every worker's config (JSON-serializable)."""
        return {}

    def endpoints(self, n_prod: int, n_cons: int) -> list:
        """One object per worker (producers first) handed to ``open_endpoint``."""
        return [None] * (n_prod + n_cons)

    def size_done(self, size_idx: int) -> None:
        """All phases of one payload size ended (the workers switch away from it next)."""

    def release(self) -> None:
        """Drop the queues of the topology that just ended."""

    def worker_python(self) -> str:
        """Interpreter running ``worker.py`` (``spawn == "subprocess"``)."""
        raise NotImplementedError

    def worker_env(self) -> dict:
        """Environment additions for subprocess workers."""
        return {}


def pickle_dumps(msg: dict) -> bytes:
    """How byte-oriented peers serialize the message (what multiprocessing does too)."""
    return pickle.dumps(msg, protocol=pickle.HIGHEST_PROTOCOL)


pickle_loads = pickle.loads


def pickled_size(payload_size: int) -> int:
    """Bytes of one pickled message with a payload of ``payload_size`` bytes."""
    return len(
        pickle_dumps({"seq": (1 << 62) - 1, "t": (1 << 62) - 1, "payload": b"x" * payload_size})
    )


def unique_name(ctx_run_id: str, *parts: object) -> str:
    """A name unique to this run, for queues and sockets."""
    return "-".join(["fxb", ctx_run_id, *(str(p) for p in parts)])


def env_flag(name: str) -> bool:
    """Whether an environment switch is set to a true value."""
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")
