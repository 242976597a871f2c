"""Latency lines of real MQ handles (the facade records into :mod:`fluxon.stats`).

A consumer whose ``get_data(try_time=0.2)`` times out on an empty channel waits
~0.2 s per call: its ``py-get latency`` line must say p50 ~ 200 ms, its
``get_one breakdown`` must put that time in ``avg_wait_rx_ms`` and its
``MpscConsumer prefetch`` line must count it as producer idle time. A producer logs
``py-put latency``; its stats block shows the calls in ``/api/members``.
"""

from __future__ import annotations

import re
import time
import uuid

import pytest

from fluxon.api_ext_chan import ChanRole, ChanType, new_or_bind_with_unique_key
from fluxon.kvclient import new_store
from fluxon.stats import LOG_INTERVAL_ENV, ConsumerStats, ProducerStats, read_stats_block

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
        if not isinstance(getattr(consumer, "_stats", None), ConsumerStats) or not isinstance(
            getattr(producer, "_stats", None), ProducerStats
        ):
            pytest.skip("fluxon.api_ext_chan does not record into fluxon.stats yet")

        start = time.monotonic()
        while time.monotonic() - start < 1.5:  # an idle channel: every call waits 0.2 s
            res = consumer.get_data(batch_size=1, try_time=0.2)
            assert not res.is_ok()
        for seq in range(20):
            assert producer.put_data({"seq": seq}, try_time=5).unwrap()
        time.sleep(1.05)
        assert producer.put_data({"seq": 20}, try_time=5).unwrap()  # ends the put window
        got = 0
        while got < 21:
            got += len(consumer.get_data(batch_size=4, try_time=5, prefetch_num=4).unwrap())
        time.sleep(1.05)
        consumer.get_data(batch_size=1, try_time=0.01)  # ends the second get window

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
        busy = gets[-1]
        assert int(busy["messages"]) >= 1 and float(busy["p50_ms"]) < 150
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
