"""Delivery: exactly-once across processes, get_data semantics, capacity, weights, close."""

from __future__ import annotations

import json
import os
import threading
import time
from collections import Counter

import numpy as np
from mq_procs import make_message, message_ok

from fluxon.api_error import (
    ChannelClosedError,
    MessageConsumptionNoNewMessageError,
    ProducerClosedError,
)
from fluxon.api_ext_chan import ChanRole, ChanType, new_or_bind_with_unique_key
from fluxon.kvclient import new_store


def _bind(store, key, role, chan_type=ChanType.MPMC, **config):
    config.setdefault("capacity", 16)
    return new_or_bind_with_unique_key(
        store, config, unique_id=key, chan_type=chan_type, chan_role=role
    ).unwrap()


def _read_json(path, timeout=120.0):
    deadline = time.monotonic() + timeout
    while not os.path.exists(path):
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.02)
    with open(path) as fh:
        return json.load(fh)


def test_exactly_once_three_producers_three_consumers(cluster, zygote, key, tmp_path):
    n_per_producer = 1500
    stop = str(tmp_path / "stop")
    go = str(tmp_path / "go")
    consumers, producers = [], []
    for i in range(3):
        out = str(tmp_path / f"consumer{i}.json")
        pid = zygote.spawn(
            "consume",
            cfg=cluster.client_config(f"{key}-c{i}"),
            key=key,
            capacity=3,
            batch=1 + i,  # 1, 2, 3
            prefetch=i,  # 0, 1, 2
            stop=stop,
            out=out,
        )
        consumers.append((pid, out))
    for _pid, out in consumers:
        _read_json(out + ".ready")
    for i in range(3):
        out = str(tmp_path / f"producer{i}.json")
        pid = zygote.spawn(
            "produce",
            cfg=cluster.client_config(f"{key}-p{i}"),
            key=key,
            capacity=3,
            label=i,
            n=n_per_producer,
            pad=(0, 100, 3000)[i],  # inline, inline, heap block
            go=go,
            out=out,
        )
        producers.append((pid, out))
    time.sleep(0.2)
    open(go, "w").close()
    try:
        acked = [_read_json(out)["acked"] for _pid, out in producers]
    finally:
        open(stop, "w").close()
    assert acked == [n_per_producer] * 3
    results = [_read_json(out) for _pid, out in consumers]
    for pid, _out in producers + consumers:
        assert zygote.wait(pid, 60.0) == 0, zygote.log_tail()
    received = Counter()
    for r in results:
        assert r["bad"] == 0
        assert r["out_of_order"] == 0  # FIFO per producer, per consumer
        received.update((p, s) for p, s in r["received"])
    expected = {(p, s) for p in range(3) for s in range(n_per_producer)}
    assert set(received) == expected
    assert max(received.values()) == 1  # exactly once
    assert all(len(r["received"]) > 0 for r in results)  # everyone took part


def test_get_data_waits_only_for_the_first_message(store, key):
    producer = _bind(store, key, ChanRole.PRODUCER, capacity=32)
    consumer = _bind(store, key, ChanRole.CONSUMER)
    t0 = time.monotonic()
    err = consumer.get_data(try_time=0).unwrap_error()
    assert isinstance(err, MessageConsumptionNoNewMessageError)
    assert err.channel_id == consumer.get_chan_id()
    t1 = time.monotonic()
    err = consumer.get_data(batch_size=4, try_time=0.3).unwrap_error()
    assert isinstance(err, MessageConsumptionNoNewMessageError)
    assert time.monotonic() - t1 >= 0.29
    assert t1 - t0 < time.monotonic() - t1  # try_time=0 did not wait like try_time=0.3
    for seq in range(3):
        producer.put_data(make_message(7, seq)).unwrap()
    # A partial batch comes back at once.
    got = consumer.get_data(batch_size=10, try_time=30).unwrap()
    assert [m["seq"] for m in got] == [0, 1, 2]
    assert all(message_ok(m) for m in got)
    # A message published while get_data waits wakes it.
    timer = threading.Timer(0.2, lambda: producer.put_data(make_message(7, 3)))
    timer.start()
    got = consumer.get_data(batch_size=5).unwrap()
    timer.join()
    assert [m["seq"] for m in got] == [3]


def test_values_round_trip_with_private_buffers(store, key):
    producer = _bind(store, key, ChanRole.PRODUCER, capacity=8)
    consumer = _bind(store, key, ChanRole.CONSUMER)
    values = [
        {"i": -5, "f": 0.5, "b": True, "s": "héllo", "raw": b"\x00\x01"},
        {"arr": np.arange(12, dtype=np.float32).reshape(3, 4), "n": 1},
        {"big": np.arange(50_000, dtype=np.int64)},  # a heap block, not inline
        {},
    ]
    for v in values:
        assert producer.put_data(v).unwrap() is True
    got = consumer.get_data(batch_size=2, try_time=5).unwrap()
    got += consumer.get_data(batch_size=2, try_time=5).unwrap()
    assert got[0] == values[0]
    assert np.array_equal(got[1]["arr"], values[1]["arr"]) and got[1]["arr"].dtype == np.float32
    assert np.array_equal(got[2]["big"], values[2]["big"])
    assert got[3] == {}
    got[1]["arr"][0, 0] = 99.0  # a private buffer: writing it harms nobody
    assert got[1]["arr"][0, 0] == 99.0


def test_prefetched_messages_return_to_the_channel_on_close(store, key):
    producer = _bind(store, key, ChanRole.PRODUCER, capacity=16)
    first = _bind(store, key, ChanRole.CONSUMER)
    second = _bind(store, key, ChanRole.CONSUMER)
    for seq in range(6):
        producer.put_data(make_message(1, seq)).unwrap()
    got = first.get_data(batch_size=1, try_time=5, prefetch_num=4).unwrap()
    assert [m["seq"] for m in got] == [0]
    assert first.prefetched() == 4
    # The prefetched ones are claimed: the other consumer sees only message 5.
    assert [m["seq"] for m in second.get_data(batch_size=10, try_time=5).unwrap()] == [5]
    # Prefetched messages are returned first by the next call.
    assert [m["seq"] for m in first.get_data(batch_size=1, try_time=0).unwrap()] == [1]
    assert first.close().is_ok()
    got = second.get_data(batch_size=10, try_time=5).unwrap()
    assert sorted(m["seq"] for m in got) == [2, 3, 4]
    assert isinstance(
        second.get_data(try_time=0).unwrap_error(), MessageConsumptionNoNewMessageError
    )


def test_capacity_is_exact_and_a_full_put_waits(store, key):
    capacity = 5
    producer = _bind(store, key, ChanRole.PRODUCER, capacity=capacity)
    consumer = _bind(store, key, ChanRole.CONSUMER)
    for seq in range(capacity):
        assert producer.put_data(make_message(1, seq), try_time=0).unwrap() is True
    t0 = time.monotonic()
    assert producer.put_data(make_message(1, capacity), try_time=0.2).unwrap() is False
    assert time.monotonic() - t0 >= 0.19
    assert producer.put_data(make_message(1, capacity), try_time=0).unwrap() is False
    # A large (heap-block) message obeys the same gate.
    assert producer.put_data({"big": b"x" * 10_000}, try_time=0).unwrap() is False
    results = []
    blocked = threading.Thread(
        target=lambda: results.append(producer.put_data(make_message(1, capacity)))
    )
    blocked.start()
    time.sleep(0.3)
    assert blocked.is_alive() and not results
    assert [m["seq"] for m in consumer.get_data(batch_size=1).unwrap()] == [0]
    blocked.join(30)
    assert not blocked.is_alive()
    assert results[0].unwrap() is True
    got = []
    while len(got) < capacity:
        got += [m["seq"] for m in consumer.get_data(batch_size=10, try_time=5).unwrap()]
    assert got == list(range(1, capacity + 1))


def test_weights_share_a_steady_backlog(store, key):
    light = _bind(store, key, ChanRole.PRODUCER, capacity=512, weight=1)
    heavy = _bind(store, key, ChanRole.PRODUCER, weight=3)
    consumer = _bind(store, key, ChanRole.CONSUMER)
    for seq in range(200):
        light.put_data(make_message(1, seq)).unwrap()
        heavy.put_data(make_message(3, seq)).unwrap()
    taken = Counter()
    for _ in range(100):
        for m in consumer.get_data(batch_size=2, try_time=5).unwrap():
            taken[m["p"]] += 1
    assert taken[1] + taken[3] == 200
    assert 45 <= taken[1] <= 55, taken  # 1:3 while both have a backlog
    # A weight-1 consumer weight is ignored with a warning; the drain takes the rest.
    rest = 0
    while True:
        res = consumer.get_data(batch_size=64, try_time=0)
        if not res.is_ok():
            break
        rest += len(res.unwrap())
    assert rest == 200


def test_close_is_idempotent_thread_safe_and_wakes_blocked_calls(store, key):
    producer = _bind(store, key, ChanRole.PRODUCER, capacity=1)
    consumer = _bind(store, key, ChanRole.CONSUMER)
    outcomes = {}

    def blocked_get():
        outcomes["get"] = consumer.get_data(batch_size=1)  # nothing to get: blocks

    getter = threading.Thread(target=blocked_get)
    getter.start()
    time.sleep(0.3)
    assert getter.is_alive()
    closers = [
        threading.Thread(
            target=lambda: outcomes.setdefault(f"close{threading.get_ident()}", consumer.close())
        )
        for _ in range(8)
    ]
    for t in closers:
        t.start()
    for t in closers:
        t.join(30)
    getter.join(30)
    assert not getter.is_alive()
    assert isinstance(outcomes["get"].unwrap_error(), ChannelClosedError)
    assert all(v.is_ok() for k, v in outcomes.items() if k.startswith("close"))
    assert consumer.close().is_ok() and consumer.is_closed()
    assert isinstance(consumer.get_data(try_time=0).unwrap_error(), ChannelClosedError)

    assert producer.put_data({"a": 1}).unwrap() is True  # fills capacity 1

    def blocked_put():
        outcomes["put"] = producer.put_data({"a": 2})

    putter = threading.Thread(target=blocked_put)
    putter.start()
    time.sleep(0.3)
    assert putter.is_alive()
    assert producer.close().is_ok()
    putter.join(30)
    assert not putter.is_alive()
    assert isinstance(outcomes["put"].unwrap_error(), ProducerClosedError)
    assert isinstance(producer.put_data({"a": 3}).unwrap_error(), ProducerClosedError)
    assert producer.close().is_ok()
    # The producer's published message stays deliverable after its close.
    late = _bind(store, key, ChanRole.CONSUMER)
    assert late.get_data(try_time=5).unwrap() == [{"a": 1}]


def test_store_close_closes_leftover_handles(cluster, key):
    store = new_store(cluster.client_config(f"{key}-store")).unwrap()
    producer = _bind(store, key, ChanRole.PRODUCER)
    consumer = _bind(store, key, ChanRole.CONSUMER)
    outcome = {}
    getter = threading.Thread(target=lambda: outcome.setdefault("get", consumer.get_data()))
    getter.start()
    time.sleep(0.2)
    assert store.close().is_ok()
    getter.join(30)
    assert not getter.is_alive()
    assert isinstance(outcome["get"].unwrap_error(), ChannelClosedError)
    assert producer.is_closed() and consumer.is_closed()
    assert isinstance(producer.put_data({"a": 1}).unwrap_error(), ProducerClosedError)
    assert isinstance(consumer.get_data(try_time=0).unwrap_error(), ChannelClosedError)
    assert producer.close().is_ok()
    err = new_or_bind_with_unique_key(
        store, {"capacity": 4}, unique_id=key, chan_type="mpmc", chan_role="producer"
    ).unwrap_error()
    assert "closed" in err.message


def test_latency_lines_are_logged_every_interval(store, key, mq_caplog, monkeypatch):
    from fluxon.stats import LOG_INTERVAL_ENV

    monkeypatch.setenv(LOG_INTERVAL_ENV, "0.05")  # read when a handle is bound
    producer = _bind(store, key, ChanRole.PRODUCER, capacity=64)
    consumer = _bind(store, key, ChanRole.CONSUMER)
    for seq in range(10):  # slower than sampling starts: every put is timed and flushes
        producer.put_data(make_message(1, seq)).unwrap()
        time.sleep(0.002)
    consumer.get_data(batch_size=4, try_time=1, prefetch_num=2).unwrap()
    time.sleep(0.1)
    producer.put_data(make_message(1, 10)).unwrap()
    consumer.get_data(batch_size=4, try_time=1).unwrap()
    text = "\n".join(r.getMessage() for r in mq_caplog.records)
    for keyword in (
        "py-put latency",
        "py-get latency",
        "get_one breakdown",
        "MpscConsumer prefetch",
    ):
        assert keyword in text, text
    assert f"chan={consumer.get_chan_id()}" in text


def test_a_message_that_does_not_decode_is_dropped_and_named(store, key, mq_caplog):
    producer = _bind(store, key, ChanRole.PRODUCER, capacity=8)
    consumer = _bind(store, key, ChanRole.CONSUMER)
    good = make_message(1, 0)
    producer.put_data(good).unwrap()
    consumer.get_data(try_time=5).unwrap()  # the shape's decoder is the last one used

    def put_garbage() -> None:  # published by the kernel as is: it never was an encoding
        producer._scratch[:40] = 0x5A
        assert producer._put_scratch(40) >= 0

    put_garbage()
    assert consumer.get_data(batch_size=1, try_time=5).unwrap() == []  # alone in its call
    put_garbage()
    producer.put_data(good).unwrap()
    assert consumer.get_data(batch_size=8, try_time=5).unwrap() == [good]  # with another
    dropped = [r for r in mq_caplog.records if "does not decode (40 bytes)" in r.getMessage()]
    assert len(dropped) == 2
