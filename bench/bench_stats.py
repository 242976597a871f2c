"""Cost of handle statistics on the MQ hot path: stats on vs off, in the same run.

Two levels, each measured beside its baseline in one invocation:

* ``stats-record``: what a handle pays per call for statistics — one
  ``ConsumerStats.record_get`` (histogram bucket, counters, the due-time check, and
  every 0.5 s a publish into a stats block in a real pool) against the same call on
  a switched-off recorder (``NullConsumerStats``) and against no call at all.
* ``mq-roundtrip-64B``: one ``put_data`` + one ``get_data`` of a 64-byte message on
  an MPMC channel, with handles bound under ``FLUXON_MQ_STATS=1`` (recording,
  publishing) and ``FLUXON_MQ_STATS=0`` (null recorders, nothing timed).
  ``bench/stats_cost.py`` measures the same pair interleaved, in CPU time, which holds
  up better on a machine shared with other work; ``bench/stats_cost_e2e.py`` end to
  end, two processes.

Run with ``make bench``; numbers go to bench/README.md by hand, with date and machine.
"""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from fluxon.kvclient import KvClient
from fluxon.stats import (
    STATS_ENV,
    ConsumerStats,
    NullConsumerStats,
    attach_stats_block,
    release_stats_block,
)

_perf_ns = time.perf_counter_ns


@pytest.fixture(scope="module")
def pool_block(kv_store: KvClient) -> Iterator[Any]:
    """A real channel in the bench pool with one consumer entry holding a stats block."""
    from fluxon_kernels import channel as kchan
    from fluxon_kernels.layout import channel as cl

    pool = kv_store.pool
    tag = kv_store.member_slot() + 1
    c = int(kchan.chan_create(pool.b, pool.w, tag, 1 << 40, cl.TYPE_MPMC, 4, 0))
    k = int(kchan.cons_attach(pool.w, c, tag, 1, 0))
    assert c >= 0 and k >= 0
    block = attach_stats_block(pool, c, "consumer", k)
    assert block is not None
    yield block
    release_stats_block(block)
    kchan.cons_detach(pool.w, c, k, tag)
    kchan.chan_destroy(pool.b, pool.w, c)


def test_record_get_stats_on(benchmark, pool_block):
    rec = ConsumerStats(1, 1, "bench", block=pool_block)
    benchmark.group = "stats-record"

    def call() -> None:
        now = _perf_ns()
        rec.record_get(now & 0xFFFFF, 1, now)

    benchmark(call)
    assert rec.lifetime()["calls"] > 0


def test_record_get_stats_off(benchmark):
    rec = NullConsumerStats(1, 1, "bench")
    benchmark.group = "stats-record"

    def call() -> None:
        now = _perf_ns()
        rec.record_get(now & 0xFFFFF, 1, now)

    benchmark(call)


def test_record_get_no_call(benchmark):
    benchmark.group = "stats-record"

    def call() -> None:
        now = _perf_ns()
        _ = now & 0xFFFFF

    benchmark(call)


# --------------------------------------------------------------------------- MQ facade
def _bind_pair(store: KvClient, enabled: bool) -> tuple[Any, Any]:
    from fluxon.api_ext_chan import ChanRole, ChanType, new_or_bind_with_unique_key

    key = f"bench-stats-{'on' if enabled else 'off'}-{uuid.uuid4().hex[:6]}"
    old = os.environ.get(STATS_ENV)
    os.environ[STATS_ENV] = "1" if enabled else "0"
    try:
        producer = new_or_bind_with_unique_key(
            store, {"capacity": 1024}, key, ChanType.MPMC, ChanRole.PRODUCER
        ).unwrap()
        consumer = new_or_bind_with_unique_key(
            store, {"capacity": 1024}, key, ChanType.MPMC, ChanRole.CONSUMER
        ).unwrap()
    finally:
        if old is None:
            os.environ.pop(STATS_ENV, None)
        else:
            os.environ[STATS_ENV] = old
    return producer, consumer


@pytest.mark.parametrize("stats", ["on", "off"])
def test_mq_roundtrip_64B(benchmark, kv_store, stats):
    producer, consumer = _bind_pair(kv_store, stats == "on")
    assert isinstance(consumer._stats, NullConsumerStats) is (stats == "off")
    assert isinstance(consumer._stats, ConsumerStats)  # (a null recorder is one too)
    message = {"payload": b"x" * 64}
    benchmark.group = "mq-roundtrip-64B"

    def roundtrip() -> None:
        producer.put_data(message)
        consumer.get_data(batch_size=1, try_time=1)

    try:
        benchmark(roundtrip)
    finally:
        consumer.close()
        producer.close()
