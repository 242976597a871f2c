"""Latency lines of real MQ handles (the facade records into :mod:`fluxon.stats`).

A consumer whose ``get_data(try_time=0.2)`` times out on an empty channel waits
~0.2 s per call: its ``py-get latency`` line must say p50 ~ 200 ms, its
``get_one breakdown`` must put that time in ``avg_wait_rx_ms`` and its
``MpscConsumer prefetch`` line must count it as producer idle time. A producer logs
``py-put latency``; its stats block shows the calls in ``/api/members``. A producer
blocked on a full channel logs its full waits, and closing a handle frees its block.
Every test sets ``FLUXON_LATENCY_LOG_INTERVAL_S=1`` (windows of about a second).
"""

from __future__ import annotations

import re
import threading
import time
import uuid

import pytest

from fluxon.api_ext_chan import ChanRole, ChanType, new_or_bind_with_unique_key
from fluxon.kvclient import new_store
from fluxon.stats import (
    LOG_INTERVAL_ENV,
    STATS_ENV,
    ConsumerStats,
    NullConsumerStats,
    ProducerStats,
    read_stats_block,
)
from fluxon_kernels import stats as kstats
from fluxon_kernels.layout import stats as sl

_FIELD = re.compile(r"(\w+)=([-\w.]+)")


def _lines(caplog, keyword: str, chan: str) -> list[dict[str, str]]:
    """Fields of the ``keyword`` lines of channel ``chan``, in order."""
    out = []
    for r in caplog.records:
        text = r.getMessage()
        if text.startswith(keyword):
            fields = dict(_FIELD.findall(text))
            if fields.get("chan") == chan:
                out.append(fields)
    return out


def test_handles_log_latency_consistent_with_their_calls(cluster, monkeypatch, stats_caplog):
    monkeypatch.setenv(LOG_INTERVAL_ENV, "1")
    key = f"obs-lat-{uuid.uuid4().hex[:8]}"
    store = new_store(cluster.client_config(f"obs-lat-{uuid.uuid4().hex[:6]}")).unwrap()
    handles = []
    try:
        for role in (ChanRole.CONSUMER, ChanRole.PRODUCER):
            res = new_or_bind_with_unique_key(store, {"capacity": 64}, key, ChanType.MPSC, role)
            handles.append(res.unwrap())
        consumer, producer = handles
        assert type(consumer._stats) is ConsumerStats and type(producer._stats) is ProducerStats

        get_calls = timeouts = 0
        start = time.monotonic()
        while time.monotonic() - start < 1.5:  # an idle channel: every call waits 0.2 s
            res = consumer.get_data(batch_size=1, try_time=0.2)
            assert not res.is_ok()
            get_calls += 1
            timeouts += 1
        for seq in range(20):  # slower than sampling starts: every put is timed
            assert producer.put_data({"seq": seq}, try_time=5).unwrap()
            time.sleep(0.002)
        time.sleep(1.05)
        assert producer.put_data({"seq": 20}, try_time=5).unwrap()  # ends the put window
        got = 0
        while got < 21:
            got += len(consumer.get_data(batch_size=4, try_time=5, prefetch_num=4).unwrap())
            get_calls += 1
        time.sleep(1.05)
        # Ends the window: the window is logged as this call starts to wait, without it.
        assert not consumer.get_data(batch_size=1, try_time=0.01).is_ok()

        chan = consumer.get_chan_id()
        text = "\n".join(r.getMessage() for r in stats_caplog.records)
        gets = _lines(stats_caplog, "py-get latency", chan)
        assert len(gets) >= 2, text
        idle = gets[0]
        assert idle["chan"] == consumer.get_chan_id() and idle["key"] == key
        assert int(idle["timeouts"]) == int(idle["calls"]) >= 2  # (binding took some of it)
        assert float(idle["p50_ms"]) == pytest.approx(200, rel=0.15)
        breakdown = _lines(stats_caplog, "get_one breakdown", chan)[0]
        assert float(breakdown["avg_wait_rx_ms"]) == pytest.approx(200, rel=0.15)
        assert float(breakdown["avg_kernel_ms"]) < 5 and float(breakdown["avg_decode_ms"]) < 5
        prefetch = _lines(stats_caplog, "MpscConsumer prefetch", chan)[0]
        assert float(prefetch["producer_idle_ms"]) >= 0.8 * 200 * int(idle["calls"])
        assert int(breakdown["waits"]) == int(idle["calls"])  # every idle call waited...
        assert int(breakdown["sleeps"]) >= int(idle["calls"])  # ...asleep on the futex
        assert int(prefetch["claimed"]) == 0 and float(prefetch["idle_ratio"]) > 0.5
        # Every call is in exactly one window: the lines add up to what the test did.
        assert sum(int(g["calls"]) for g in gets) == get_calls, text
        assert sum(int(g["timeouts"]) for g in gets) == timeouts, text
        assert sum(int(g["messages"]) for g in gets) == 21, text
        prefetches = _lines(stats_caplog, "MpscConsumer prefetch", chan)
        assert sum(int(p["claimed"]) for p in prefetches) == 21, text
        busy = gets[-1]
        assert int(busy["messages"]) >= 1 and float(busy["p50_ms"]) < 150
        # batch_size=4 + prefetch_num=4: after the first call, messages come from the
        # prefetch queue claimed by the call before.
        assert float(prefetches[-1]["hit_ratio"]) > 0.5, text
        puts = _lines(stats_caplog, "py-put latency", chan)
        assert sum(int(p["calls"]) for p in puts) >= 20
        assert all(p["full_waits"] == "0" and p["timeouts"] == "0" for p in puts)
        assert all(p["producer"] == producer.get_producer_id() for p in puts)
        assert max(float(p["p50_ms"]) for p in puts) < 150  # puts into room never waited

        producer._stats.flush(force_publish=True)
        block = read_stats_block(store.pool.w, producer._c, "producer", producer._entry)
        assert block is not None and block["calls"] == 21 and block["messages"] == 21
    finally:
        for handle in reversed(handles):
            handle.close()
        store.close()


def test_producer_blocked_on_a_full_channel_logs_its_waits(cluster, monkeypatch, stats_caplog):
    """A producer on a full channel: timeouts of try_time=0.2 s and a put that waited for
    a consumer ~0.25 s show up as full waits of those lengths in ``py-put latency``."""
    monkeypatch.setenv(LOG_INTERVAL_ENV, "1")
    key = f"obs-full-{uuid.uuid4().hex[:8]}"
    store = new_store(cluster.client_config(f"obs-full-{uuid.uuid4().hex[:6]}")).unwrap()
    handles = []
    try:
        for role in (ChanRole.CONSUMER, ChanRole.PRODUCER):  # producer last: its window
            res = new_or_bind_with_unique_key(store, {"capacity": 2}, key, ChanType.MPMC, role)
            handles.append(res.unwrap())
        consumer, producer = handles
        for seq in range(2):  # fills the channel
            assert producer.put_data({"seq": seq}, try_time=5).unwrap() is True
        for _ in range(3):  # full: each call waits its whole try_time, then Ok(False)
            assert producer.put_data({"seq": -1}, try_time=0.2).unwrap() is False
        taker = threading.Timer(0.25, lambda: consumer.get_data(batch_size=1, try_time=5))
        taker.start()
        t0 = time.monotonic()
        assert producer.put_data({"seq": 2}, try_time=5).unwrap() is True  # room after ~0.25 s
        blocked_s = time.monotonic() - t0
        taker.join()
        time.sleep(1.05)
        assert producer.put_data({"seq": -1}, try_time=0).unwrap() is False  # ends the window

        chan = producer.get_chan_id()
        text = "\n".join(r.getMessage() for r in stats_caplog.records)
        puts = _lines(stats_caplog, "py-put latency", chan)
        assert puts and all(p["producer"] == producer.get_producer_id() for p in puts), text
        total = {f: sum(int(p[f]) for p in puts) for f in ("calls", "timeouts", "full_waits")}
        assert total == {"calls": 7, "timeouts": 4, "full_waits": 5}, text
        assert sum(int(p["sleeps"]) for p in puts) >= 4, text  # try_time=0 never sleeps
        wait_full_ms = sum(float(p["wait_full_ms"]) for p in puts)
        assert wait_full_ms == pytest.approx(3 * 200 + blocked_s * 1000, rel=0.15), text
        first = puts[0]  # holds at least the fills and the three 0.2 s timeouts
        assert int(first["full_waits"]) >= 3, text
        assert float(first["avg_wait_full_ms"]) == pytest.approx(
            float(first["wait_full_ms"]) / int(first["full_waits"]), rel=0.01
        )
        assert float(first["p50_ms"]) == pytest.approx(200, rel=0.15), text
        assert float(first["max_ms"]) >= 200

        producer._stats.flush(force_publish=True)
        block = read_stats_block(store.pool.w, producer._c, "producer", producer._entry)
        assert block is not None, text
        assert (block["calls"], block["messages"], block["timeouts"], block["waits"]) == (
            7,
            3,
            4,
            5,
        )
    finally:
        for handle in reversed(handles):
            handle.close()
        store.close()


def test_close_frees_the_stats_blocks(cluster, monkeypatch):
    """``close()`` (and ``store.close()`` for a handle left open) publishes a last summary
    and frees the handle's stats block; ``FLUXON_MQ_STATS=0`` binds without one."""
    key = f"obs-close-{uuid.uuid4().hex[:8]}"
    store = new_store(cluster.client_config(f"obs-close-{uuid.uuid4().hex[:6]}")).unwrap()
    closed = False
    try:
        w = store.pool.w
        producer = new_or_bind_with_unique_key(
            store, {"capacity": 8}, key, ChanType.MPMC, ChanRole.PRODUCER
        ).unwrap()
        consumer = new_or_bind_with_unique_key(
            store, {"capacity": 8}, key, ChanType.MPMC, ChanRole.CONSUMER
        ).unwrap()
        c = producer._c
        ref = {
            "producer": int(kstats.stats_ref_word(w, c, sl.ROLE_PRODUCER, producer._entry)),
            "consumer": int(kstats.stats_ref_word(w, c, sl.ROLE_CONSUMER, consumer._entry)),
        }
        assert producer._stats_block is not None and consumer._stats_block is not None
        assert all(int(w[word]) != 0 for word in ref.values())
        assert producer.put_data({"seq": 1}, try_time=5).unwrap()
        assert len(consumer.get_data(batch_size=1, try_time=5).unwrap()) == 1
        producer.close()
        assert int(w[ref["producer"]]) == 0  # freed on close
        assert int(w[ref["consumer"]]) != 0
        store.close()  # closes the consumer left open
        closed = True
        assert int(w[ref["consumer"]]) == 0
    finally:
        if not closed:
            store.close()

    monkeypatch.setenv(STATS_ENV, "0")
    store = new_store(cluster.client_config(f"obs-off-{uuid.uuid4().hex[:6]}")).unwrap()
    try:
        consumer = new_or_bind_with_unique_key(
            store, {"capacity": 8}, key, ChanType.MPMC, ChanRole.CONSUMER
        ).unwrap()
        assert isinstance(consumer._stats, NullConsumerStats) and consumer._stats_block is None
        ref_word = int(kstats.stats_ref_word(store.pool.w, consumer._c, sl.ROLE_CONSUMER,
                                             consumer._entry))  # fmt: skip
        assert int(store.pool.w[ref_word]) == 0
        assert not consumer.get_data(batch_size=1, try_time=0).is_ok()
        consumer.close()
    finally:
        store.close()


def test_fast_handles_are_sampled_and_counts_stay_exact(cluster):
    """Calls in quick succession: one in ``every`` timed, every call counted."""
    from fluxon.stats import MAX_EVERY

    key = f"obs-sample-{uuid.uuid4().hex[:8]}"
    store = new_store(cluster.client_config(f"obs-sample-{uuid.uuid4().hex[:6]}")).unwrap()
    try:
        cfg = {"capacity": 64}
        producer = new_or_bind_with_unique_key(
            store, cfg, key, ChanType.MPMC, ChanRole.PRODUCER
        ).unwrap()
        consumer = new_or_bind_with_unique_key(
            store, cfg, key, ChanType.MPMC, ChanRole.CONSUMER
        ).unwrap()
        st, cst = producer._stats, consumer._stats
        sent = gets = 0
        deadline = time.monotonic() + 30
        while st.every == 1 or cst.every == 1:  # sampling starts at a flush
            for _ in range(32):
                assert producer.put_data({"seq": sent}, try_time=0).unwrap() is True
                sent += 1
                assert len(consumer.get_data(batch_size=1, try_time=1).unwrap()) == 1
                gets += 1
            assert time.monotonic() < deadline, "handles never switched to sampling"
        assert 1 < st.every <= MAX_EVERY
        for _ in range(MAX_EVERY * 3 + 3):  # ends mid-cycle: untimed calls pending
            assert producer.put_data({"seq": sent}, try_time=0).unwrap() is True
            sent += 1
            consumer.get_data(batch_size=1, try_time=1).unwrap()
            gets += 1
        life = st.lifetime()
        assert life["calls"] == sent and life["messages"] == sent and life["timeouts"] == 0
        win = st.window()
        assert 0 < win["p50_ns"] <= win["p99_ns"] <= win["max_ns"]
        assert win["avg_ns"] > 0
        assert 1 < cst.every <= MAX_EVERY
        clife = cst.lifetime()
        assert clife["calls"] == gets and clife["messages"] == sent and clife["timeouts"] == 0
        cwin = cst.window()
        assert 0 < cwin["p50_ns"] <= cwin["p99_ns"] <= cwin["max_ns"]
        # Calls that find no room / nothing are sampled alike: their counts stay exact.
        for _ in range(64):
            assert producer.put_data({"seq": -1}, try_time=0).unwrap() is True
        for _ in range(MAX_EVERY * 3 + 5):
            assert producer.put_data({"seq": -2}, try_time=0).unwrap() is False
        life = st.lifetime()
        assert life["calls"] == sent + 64 + MAX_EVERY * 3 + 5
        assert life["timeouts"] == MAX_EVERY * 3 + 5 and life["messages"] == sent + 64
        for _ in range(64):
            assert len(consumer.get_data(batch_size=1, try_time=0).unwrap()) == 1
        for _ in range(MAX_EVERY * 3 + 5):
            assert not consumer.get_data(batch_size=1, try_time=0).is_ok()
        clife = cst.lifetime()
        assert clife["calls"] == gets + 64 + MAX_EVERY * 3 + 5
        assert clife["timeouts"] == MAX_EVERY * 3 + 5 and clife["messages"] == sent + 64
        assert producer.close().is_ok() and consumer.close().is_ok()
    finally:
        store.close()
