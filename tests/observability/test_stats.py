"""Latency recorders and stats blocks: histogram accuracy, the log lines, the seqlock.

No service plane here: recorders are driven by hand (with real waiting where the
numbers must match what the test did) and stats blocks live in a pool built in memory.
"""

from __future__ import annotations

import logging
import re
import threading
import time
import types

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import fluxon_kernels.channel as kchan
from fluxon import stats
from fluxon_kernels import stats as kstats
from fluxon_kernels.heap import heap_free_units
from fluxon_kernels.layout import channel as cl
from fluxon_kernels.layout import stats as sl
from tests.model import make_pool

_FIELD = re.compile(r"(\w+)=([-\w.]+)")


def _fields(line: str) -> dict[str, str]:
    return dict(_FIELD.findall(line))


# --------------------------------------------------------------------------- histogram
def test_bucket_bounds_hold_every_value():
    values = list(range(0, 70)) + [2**k + d for k in range(5, 50) for d in (-1, 0, 1, 2**k // 3)]
    for ns in values:
        i = stats.bucket_index(ns)
        assert stats._LOWER[i] <= ns < stats._UPPER[i], (ns, i)
        if ns >= 16:  # a bucket is at most 1/8 of its lower bound wide
            assert stats._UPPER[i] - stats._LOWER[i] <= stats._LOWER[i] / 8
    assert stats.bucket_index(1 << 70) == stats.N_BUCKETS - 1


def test_vectorised_buckets_match_the_scalar_rule():
    rng = np.random.default_rng(7)
    values = np.concatenate(
        [
            np.arange(0, 300, dtype=np.int64),
            (2 ** rng.uniform(0, 62, 5000)).astype(np.int64),
            np.array([2**k + d for k in range(4, 62) for d in (-1, 0, 1)], dtype=np.int64),
        ]
    )
    expected = np.array([stats.bucket_index(int(v)) for v in values])
    assert np.array_equal(stats.bucket_indices(values), expected)


def test_recorder_buffer_overflow_and_timeouts():
    rec = stats.ProducerStats(1, 2, "k")
    n = 3 * stats.SAMPLE_BUFFER + 5
    for i in range(n):
        rec.record_put(1000 + i, i % 10 != 0, 0)
    life = rec.lifetime()
    timeouts = len(range(0, n, 10))
    assert (life["calls"], life["timeouts"], life["messages"]) == (n, timeouts, n - timeouts)
    assert life["total_ns"] == sum(1000 + i for i in range(n))
    assert rec.max_ns == 1000 + n - 1 and int(rec.hist.counts.sum()) == n
    rec.record_put_many(5000, 7, True, 0)  # a whole batch
    rec.record_put_many(6000, 2, False, 0)  # timed out after 2 of its messages
    life = rec.lifetime()
    assert (life["calls"], life["timeouts"]) == (n + 2, timeouts + 1)
    assert life["messages"] == n - timeouts + 9


def _calls_at_rate(rec, rate: float, n: int, t0: int = 1_000_000_000) -> int:
    """n fast get_data calls 1/rate s apart, as the handle makes them; returns the clock."""
    for i in range(n):
        now = t0 + int(i * 1e9 / rate)
        k = rec.skip - 1
        rec.skip = k
        if k:
            rec.messages += 1
        else:
            rec.record_get_sampled(100, 1, now)
    return now


@settings(max_examples=25, deadline=None)
@given(st.floats(min_value=50, max_value=5e6), st.floats(min_value=50, max_value=5e6))
def test_sampling_follows_the_call_rate_and_counts_stay_exact(rate, rate2):
    rec = stats.ConsumerStats(1, 2, "k")
    lo, hi = stats.TIMED_GAP_NS
    now = 0
    for r in (rate, rate2):  # a rate, then another one
        now = _calls_at_rate(rec, r, 5_000, now + 5_000_000_000)  # (after an idle spell)
        # Settled: timed calls lo..hi apart, unless every call is timed or MAX_EVERY is.
        gap = rec.every * 1e9 / r
        if rec.every > 1:
            assert gap <= 2 * hi
        if rec.every < stats.MAX_EVERY:
            assert gap >= lo / 2
    life = rec.lifetime()
    assert life["calls"] == life["messages"] == 10_000 and life["timeouts"] == 0


def test_sampled_calls_at_the_largest_period_count_exactly():
    rec = stats.ConsumerStats(1, 2, "k")
    rec.every = rec.skip = stats.MAX_EVERY
    calls = 0
    for cycle in range(5):
        for _ in range(stats.MAX_EVERY - 1):  # untimed calls: what get_data does
            rec.skip -= 1
            rec.messages += 2
            calls += 1
        rec.skip -= 1
        rec.record_get_sampled(1000 + cycle, 2, 0)
        calls += 1
    for _ in range(7):  # a cycle left open
        rec.skip -= 1
        rec.messages += 2
        calls += 1
    life = rec.lifetime()
    assert (life["calls"], life["messages"], life["timeouts"]) == (calls, 2 * calls, 0)
    assert int(rec.hist.counts.sum()) == 5 * stats.MAX_EVERY
    # A flush while a call waits (what the handle's waiting loop does when a flush is
    # due) closes the cycle without that call, which then belongs to the next cycle.
    rec.every = rec.skip = 8
    for _ in range(3):
        rec.skip -= 1
        calls += 1
    rec.skip -= 1  # the call that waits, the cycle's fourth
    rec.flush_waiting(time.perf_counter_ns())
    assert rec.calls == calls  # the flush counted the calls before it, not it
    calls += 1  # it ends untimed
    while rec.skip > 1:
        rec.skip -= 1
        calls += 1
    rec.skip -= 1
    rec.record_get_sampled(7, 1, 0)  # the cycle's timed call: it stands for its cycle
    calls += 1
    assert rec.lifetime()["calls"] == calls


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_percentiles_are_within_a_bucket_of_the_truth(seed):
    rng = np.random.default_rng(seed)
    samples = rng.lognormal(mean=11.0, sigma=1.5, size=5000).astype(np.int64)  # ~60 us median
    h = stats.LatencyHistogram()
    for v in samples.tolist():
        h.record(v)
    assert h.count == len(samples) and h.total_ns == int(samples.sum())
    assert h.max_ns == int(samples.max()) and h.min_ns == int(samples.min())
    for q in (0.5, 0.9, 0.99):
        truth = float(np.quantile(samples, q, method="inverted_cdf"))
        assert h.quantile(q) == pytest.approx(truth, rel=0.07), q
    h.reset()
    assert h.count == 0 and h.quantile(0.5) == 0.0 and int(h.counts.sum()) == 0


def test_tight_distribution_reports_its_own_range():
    h = stats.LatencyHistogram()
    for v in [200_100_000] * 60 + [200_400_000] * 40:
        h.record(v)
    p50, p99 = h.quantiles((0.5, 0.99))
    assert 200_100_000 <= p50 <= 200_400_000 and 200_100_000 <= p99 <= 200_400_000


# --------------------------------------------------------------------------- log lines
def test_latency_lines_match_what_the_caller_did(monkeypatch, stats_caplog):
    """A consumer that waits ~0.2 s per call logs p50 near 0.2 s; the wait shows as
    wait_rx and producer idle time, not as kernel or decode time. Numbers are checked
    against what the test measured around each call (a loaded machine oversleeps)."""
    monkeypatch.setenv(stats.LOG_INTERVAL_ENV, "1")
    log = logging.getLogger("fluxon.test.stats")
    consumer = stats.ConsumerStats(7, 11, "jobs", logger=log)
    producer = stats.ProducerStats(7, 12, "jobs", logger=log)
    assert consumer.log_interval_ns == 1_000_000_000
    start = time.perf_counter_ns()
    calls = 0
    totals, waits = [], []
    while time.perf_counter_ns() - start < 2.6e9:
        t0 = time.perf_counter_ns()
        time.sleep(0.2)  # nothing available: the consumer waits
        t1 = time.perf_counter_ns()
        consumer.waits += 1
        consumer.wait_ns += t1 - t0
        consumer.claim_ns += 2_000
        consumer.claim_calls += 1
        consumer.claimed += 1
        consumer.kernel_ns += 5_000
        consumer.take_ns += 3_000
        consumer.codec_ns += 1_000
        consumer.prefetch_queue, consumer.prefetch_target = 0, 1
        t2 = time.perf_counter_ns()
        consumer.record_get(t2 - t0, 1, t2)
        totals.append(t2 - t0)
        waits.append(t1 - t0)
        t3 = time.perf_counter_ns()
        producer.record_put(t3 - t2, True, t3)
        calls += 1
    elapsed_s = (time.perf_counter_ns() - start) / 1e9
    lines = [r.getMessage() for r in stats_caplog.records if r.name == "fluxon.test.stats"]
    by_kind = {
        kind: [_fields(line) for line in lines if line.startswith(kind)]
        for kind in (
            "py-get latency",
            "get_one breakdown",
            "MpscConsumer prefetch",
            "py-put latency",
        )
    }
    for kind, found in by_kind.items():
        # at most once per interval, and at least once in 2.6 s of 1 s windows
        assert 1 <= len(found) <= elapsed_s // 1 + 1, (kind, lines)
    get = by_kind["py-get latency"][0]
    assert get["chan"] == "7" and get["key"] == "jobs" and get["consumer"] == "11"
    n = int(get["calls"])
    assert n >= 2 and get["timeouts"] == "0"
    first_ms = np.array(totals[:n]) / 1e6  # the calls of the first window
    wait_ms = np.array(waits[:n]) / 1e6
    assert 190 <= float(get["p50_ms"]) <= 400  # near 0.2 s ...
    median = float(np.quantile(first_ms, 0.5, method="inverted_cdf"))
    assert float(get["p50_ms"]) == pytest.approx(median, rel=0.07)  # ... as measured
    assert float(get["avg_ms"]) == pytest.approx(first_ms.mean(), rel=0.001)
    assert float(get["max_ms"]) == pytest.approx(first_ms.max(), rel=0.001)
    assert float(get["max_ms"]) >= float(get["p99_ms"]) >= float(get["p50_ms"])
    one = by_kind["get_one breakdown"][0]
    assert float(one["avg_wait_rx_ms"]) == pytest.approx(wait_ms.mean(), rel=0.001)
    assert float(one["avg_kernel_ms"]) == pytest.approx(0.005, abs=0.001)
    assert float(one["avg_decode_ms"]) == pytest.approx(0.001, abs=0.001)
    assert int(one["waits"]) == int(get["calls"])
    pf = by_kind["MpscConsumer prefetch"][0]
    assert float(pf["avg_get_handle_ms"]) == pytest.approx(wait_ms.mean() + 0.002, rel=0.001)
    assert float(pf["avg_claim_ms"]) == pytest.approx(0.002, abs=0.0005)
    assert float(pf["hit_ratio"]) == 0.0 and pf["target_inflight"] == "1"
    assert float(pf["producer_idle_ms"]) == pytest.approx(wait_ms.sum(), rel=0.001)
    assert 0.8 < float(pf["idle_ratio"]) <= 1.05
    put = by_kind["py-put latency"][0]
    assert put["producer"] == "12" and put["full_waits"] == "0"
    assert abs(int(put["calls"]) - n) <= 1
    assert float(put["p50_ms"]) < 5  # a put that never waited
    total = consumer.lifetime()
    assert total["calls"] == calls and total["messages"] == calls


def test_log_interval_env(monkeypatch):
    monkeypatch.delenv(stats.LOG_INTERVAL_ENV, raising=False)
    monkeypatch.delenv(stats.LOG_INTERVAL_ENV_OLD, raising=False)
    assert stats.log_interval_s() == 30.0
    monkeypatch.setenv(stats.LOG_INTERVAL_ENV, "0.5")
    assert stats.log_interval_s() == 0.5
    monkeypatch.setenv(stats.LOG_INTERVAL_ENV, "soon")
    assert stats.log_interval_s() == 30.0
    monkeypatch.setenv(stats.LOG_INTERVAL_ENV_OLD, "2")
    assert stats.log_interval_s() == 2.0


def test_an_idle_window_logs_nothing(stats_caplog):
    log = logging.getLogger("fluxon.test.stats")
    consumer = stats.ConsumerStats(1, 2, "k", logger=log, log_interval=0.05)
    consumer.flush(time.perf_counter_ns() + 10**9)
    assert not [r for r in stats_caplog.records if r.name == "fluxon.test.stats"]


# --------------------------------------------------------------------------- stats blocks
@pytest.fixture
def pool_with_channel():
    b, w = make_pool(16 << 20)
    pool = types.SimpleNamespace(b=b, w=w)
    baseline = int(heap_free_units(w))
    c = int(kchan.chan_create(b, w, 1, 42, cl.TYPE_MPMC, 8, 0))
    e = int(kchan.prod_attach(b, w, c, 2, 1, 501))
    k = int(kchan.cons_attach(w, c, 3, 601, 0))
    assert min(c, e, k) >= 0
    yield pool, c, e, k
    kchan.chan_destroy(b, w, c)
    assert int(heap_free_units(w)) == baseline


def test_block_roundtrip_and_release(pool_with_channel):
    pool, c, e, k = pool_with_channel
    w = pool.w
    free = int(heap_free_units(w))
    block = stats.attach_stats_block(pool, c, "consumer", k)
    assert block is not None and int(heap_free_units(w)) == free - 1
    assert stats.read_stats_block(w, c, "consumer", k)["member_id"] == 601
    rec = stats.ConsumerStats(42, 601, "key", block=block)
    rec.wait_ns, rec.waits = 3_000_000, 1
    rec.record_get(4_000_000, 2, 0)
    rec.prefetch_queue, rec.prefetch_target = 3, 5
    rec.prefetch_hits = 1
    rec.flush(force_publish=True)
    got = stats.read_stats_block(w, c, "consumer", k)
    assert (got["role"], got["chan_id"], got["entry"]) == (sl.ROLE_CONSUMER, 42, k)
    assert (got["calls"], got["messages"], got["waits"], got["wait_ns"]) == (1, 2, 1, 3_000_000)
    assert got["p50_ns"] == 4_000_000 and got["max_ns"] == 4_000_000
    assert (got["pf_queue"], got["pf_target"], got["pf_hit_ppm"]) == (3, 5, 500_000)
    assert got["updated_ns"] > 0 and block.read() == got
    assert stats.read_stats_block(w, c, "producer", e) is None  # no block for that entry
    stats.release_stats_block(block)
    stats.release_stats_block(block)  # idempotent
    assert stats.read_stats_block(w, c, "consumer", k) is None
    assert int(heap_free_units(w)) == free
    assert rec.publish() is False  # a released block is never written again


def test_attach_frees_a_dead_predecessors_block(pool_with_channel):
    pool, c, e, _k = pool_with_channel
    w = pool.w
    free = int(heap_free_units(w))
    stale = stats.attach_stats_block(pool, c, "producer", e)  # its holder "dies" here
    ref_word = int(kstats.stats_ref_word(w, c, sl.ROLE_PRODUCER, e))
    stale_ref = int(w[ref_word])
    fresh = stats.attach_stats_block(pool, c, "producer", e)
    assert int(heap_free_units(w)) == free - 1  # the old block went back to the heap
    assert int(w[ref_word]) != 0
    assert stale.publish(np.zeros(sl.WORDS, dtype=np.int64)) in (False, True)
    assert stats.read_stats_block(w, c, "producer", e)["member_id"] == 501
    stats.release_stats_block(fresh)
    assert int(w[ref_word]) == 0 and stale_ref != 0
    assert int(heap_free_units(w)) == free


def test_seqlock_reader_never_sees_a_torn_summary(pool_with_channel):
    pool, c, _e, k = pool_with_channel
    block = stats.attach_stats_block(pool, c, sl.ROLE_CONSUMER, k)
    w = pool.w
    stop = threading.Event()
    torn: list[np.ndarray] = []
    reads = [0, 0]

    def writer() -> None:
        src = np.zeros(sl.WORDS, dtype=np.int64)
        i = 1
        while not stop.is_set():
            src[sl.SUMMARY_FIRST :] = i
            kstats.stats_publish(w, block.base, src)
            i += 1

    def reader() -> None:
        out = np.zeros(sl.WORDS, dtype=np.int64)
        ref_word = int(kstats.stats_ref_word(w, c, sl.ROLE_CONSUMER, k))
        while not stop.is_set():
            rc = int(kstats.stats_read_at(w, ref_word, out))
            if rc == 1:
                reads[0] += 1
                summary = out[sl.SUMMARY_FIRST :]
                if summary.min() != summary.max():
                    torn.append(out.copy())
            else:
                reads[1] += 1

    threads = [threading.Thread(target=writer), threading.Thread(target=reader)]
    for t in threads:
        t.start()
    time.sleep(1.0)
    stop.set()
    for t in threads:
        t.join(timeout=30)
    block.release()
    assert not torn, torn[:3]
    assert reads[0] > 100


def test_new_handle_stats_honours_the_switch(pool_with_channel, monkeypatch):
    pool, c, e, _k = pool_with_channel
    monkeypatch.setenv(stats.STATS_ENV, "0")
    rec, block = stats.new_handle_stats(pool, c, "producer", e, 42, 501, "k", None)
    assert isinstance(rec, stats.NullProducerStats) and block is None
    rec.record_put(10, True, 1 << 62)
    assert rec.calls == 0
    monkeypatch.setenv(stats.STATS_ENV, "1")
    rec, block = stats.new_handle_stats(pool, c, "producer", e, 42, 501, "k", None)
    assert type(rec) is stats.ProducerStats and block is not None
    # published at once (empty): the handle is visible before its first flush
    assert stats.read_stats_block(pool.w, c, "producer", e)["updated_ns"] > 0
    rec.record_put(10, True, 0)
    rec.close()
    assert stats.read_stats_block(pool.w, c, "producer", e)["calls"] == 1
    stats.release_stats_block(block)


def test_owner_repair_frees_a_dead_members_block(pool_with_channel):
    """The owner's crash repair frees the stats blocks of a dead member's entries."""
    pool, c, e, k = pool_with_channel
    b, w = pool.b, pool.w
    free = int(heap_free_units(w))
    stats.attach_stats_block(pool, c, "producer", e)  # producer tag 2 dies
    kchan.chan_repair_dead(b, w, 2)
    assert int(w[int(kstats.stats_ref_word(w, c, sl.ROLE_PRODUCER, e))]) == 0
    assert int(heap_free_units(w)) == free
    stats.attach_stats_block(pool, c, "consumer", k)  # consumer tag 3 dies
    kchan.chan_repair_dead(b, w, 3)
    assert int(w[int(kstats.stats_ref_word(w, c, sl.ROLE_CONSUMER, k))]) == 0
    assert int(heap_free_units(w)) == free
