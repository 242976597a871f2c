"""MQ put/get cost per message, one process, beside ``multiprocessing.Queue`` in the same run.

Topology: one process holding a producer and a consumer of one MPMC channel (fluxon),
or one ``multiprocessing.Queue`` (baseline). Message: ``{"seq": int, "t":
time.monotonic_ns(), "payload": bytes}`` with payloads of 64 B / 4 KiB / 1 MiB. One
benchmark round handles ``ROUND[size]`` messages (the per-message cost is the round's
time divided by that number; ``extra_info["messages_per_round"]`` records it):

* ``mq-put-*``: ``put_data`` of every message of a round into a drained channel, against
  ``Queue.put`` (which only hands the object to the queue's feeder thread: pickling and
  the pipe write happen there and are not timed);
* ``mq-get-*``: ``get_data(batch_size=32)`` until the round's messages are received from
  a channel filled beforehand, against ``Queue.get`` of messages the feeder thread has
  already taken (large ones may still be on their way through the pipe);
* ``mq-putget-*``: both halves in one timed round — the one comparison where each side
  pays for all of its work (fluxon twice: with ``put_data``, and with ``put_data_many``
  of 32 messages per call).

Run with ``make bench``; results go to bench/README.md by hand, with date and machine.
The end-to-end, multi-process numbers come from ``bench/mq_e2e.py``.
"""

from __future__ import annotations

import multiprocessing as mp
import time
import uuid

import pytest

from fluxon.api_ext_chan import ChanRole, ChanType, new_or_bind_with_unique_key

SIZES = {"64B": 64, "4KiB": 4096, "1MiB": 1 << 20}
#: Messages per benchmark round, by payload size.
ROUND = {"64B": 100, "4KiB": 100, "1MiB": 8}
BATCH = 32
#: Rounds per benchmark (a fixed number: every round needs its own setup).
ROUNDS = {"64B": 400, "4KiB": 300, "1MiB": 40}


def _messages(size: str) -> list[dict]:
    payload = b"x" * SIZES[size]
    now = time.monotonic_ns()
    return [{"seq": i, "t": now + i, "payload": payload} for i in range(ROUND[size])]


@pytest.fixture
def channel(kv_store):
    """A producer and a consumer of a fresh MPMC channel."""
    key = f"bench-mq-{uuid.uuid4().hex[:8]}"
    cfg = {"capacity": 1024, "ttl_seconds": 5}
    prod = new_or_bind_with_unique_key(
        kv_store, cfg, key, ChanType.MPMC, ChanRole.PRODUCER
    ).unwrap()
    cons = new_or_bind_with_unique_key(
        kv_store, cfg, key, ChanType.MPMC, ChanRole.CONSUMER
    ).unwrap()
    yield prod, cons
    prod.close()
    cons.close()


@pytest.fixture
def mp_queue():
    q = mp.Queue()
    yield q
    q.close()
    q.join_thread()


def _drain_all(cons) -> None:
    while cons.get_data(batch_size=BATCH, try_time=0).is_ok():
        pass


def _get_n(get, n: int) -> None:
    """``get_data(batch_size=BATCH)`` until ``n`` messages came."""
    got = 0
    while got < n:
        got += len(get(BATCH, 5.0).unwrap())


def _fill(prod, msgs: list[dict]) -> None:
    for m in msgs:
        assert prod.put_data(m, try_time=5.0).unwrap()


def _queue_settled(q) -> None:
    """Wait until the feeder thread has written what fits in the pipe.

    That is: its buffer (``Queue._buffer``; the stdlib queue has no public way to ask)
    is empty, or has not shrunk for 2 ms (the pipe is full until someone reads).
    """
    left, since = len(q._buffer), time.monotonic()  # noqa: SLF001
    while left and time.monotonic() - since < 0.002:
        time.sleep(0.0002)
        now_left = len(q._buffer)  # noqa: SLF001
        if now_left != left:
            left, since = now_left, time.monotonic()


def _label(benchmark, op: str, size: str) -> None:
    benchmark.group = f"mq-{op}-{size} ({ROUND[size]} msgs/round)"
    benchmark.extra_info["messages_per_round"] = ROUND[size]


# ------------------------------------------------------------------------------- put
@pytest.mark.parametrize("size", list(SIZES))
def test_put_fluxon(benchmark, channel, size):
    prod, cons = channel
    msgs = _messages(size)
    _label(benchmark, "put", size)
    put = prod.put_data

    def round_() -> None:
        for m in msgs:
            put(m)

    benchmark.pedantic(round_, setup=lambda: _drain_all(cons), rounds=ROUNDS[size], warmup_rounds=2)
    _drain_all(cons)


@pytest.mark.parametrize("size", list(SIZES))
def test_put_mp_queue(benchmark, mp_queue, size):
    msgs = _messages(size)
    _label(benchmark, "put", size)
    put = mp_queue.put
    get = mp_queue.get
    outstanding = [0]

    def setup() -> None:
        for _ in range(outstanding[0]):
            get()
        outstanding[0] = len(msgs)

    def round_() -> None:
        for m in msgs:
            put(m)

    benchmark.pedantic(round_, setup=setup, rounds=ROUNDS[size], warmup_rounds=2)
    setup()


# ------------------------------------------------------------------------------- get
@pytest.mark.parametrize("size", list(SIZES))
def test_get_fluxon(benchmark, channel, size):
    prod, cons = channel
    msgs = _messages(size)
    _label(benchmark, "get", size)
    get = cons.get_data
    n = len(msgs)

    def round_() -> None:
        _get_n(get, n)

    benchmark.pedantic(
        round_, setup=lambda: _fill(prod, msgs), rounds=ROUNDS[size], warmup_rounds=2
    )


@pytest.mark.parametrize("size", list(SIZES))
def test_get_mp_queue(benchmark, mp_queue, size):
    msgs = _messages(size)
    _label(benchmark, "get", size)
    put = mp_queue.put
    get = mp_queue.get

    def setup() -> None:
        for m in msgs:
            put(m)
        _queue_settled(mp_queue)

    def round_() -> None:
        for _ in msgs:
            get()

    benchmark.pedantic(round_, setup=setup, rounds=ROUNDS[size], warmup_rounds=2)


# ------------------------------------------------------------------------------- put + get
@pytest.mark.parametrize("size", list(SIZES))
def test_putget_fluxon(benchmark, channel, size):
    prod, cons = channel
    msgs = _messages(size)
    _label(benchmark, "putget", size)
    put = prod.put_data
    get = cons.get_data
    n = len(msgs)

    def round_() -> None:
        for m in msgs:
            put(m)
        _get_n(get, n)

    benchmark.pedantic(round_, rounds=ROUNDS[size], warmup_rounds=2)


@pytest.mark.parametrize("size", list(SIZES))
def test_putget_fluxon_many(benchmark, channel, size):
    """As test_putget_fluxon, sending with put_data_many, BATCH messages per call."""
    prod, cons = channel
    msgs = _messages(size)
    _label(benchmark, "putget", size)
    batches = [msgs[i : i + BATCH] for i in range(0, len(msgs), BATCH)]
    put_many = prod.put_data_many
    get = cons.get_data
    n = len(msgs)

    def round_() -> None:
        for batch in batches:
            put_many(batch)
        _get_n(get, n)

    benchmark.pedantic(round_, rounds=ROUNDS[size], warmup_rounds=2)


@pytest.mark.parametrize("size", list(SIZES))
def test_putget_mp_queue(benchmark, mp_queue, size):
    msgs = _messages(size)
    _label(benchmark, "putget", size)
    put = mp_queue.put
    get = mp_queue.get

    def round_() -> None:
        for m in msgs:
            put(m)
        for _ in msgs:
            get()

    benchmark.pedantic(round_, rounds=ROUNDS[size], warmup_rounds=2)
