"""Bind-or-create: races, type mismatches, stored config, bad input, MPSC exclusivity."""

from __future__ import annotations

import json
import os
import time

import numpy as np
import pytest
from mq_procs import make_message

from fluxon import naming
from fluxon.api_error import (
    ChanBindError,
    ChanCreateError,
    ChanTypeMismatchError,
    InvalidArgumentError,
    MessageConsumptionNoNewMessageError,
)
from fluxon.api_ext_chan import (
    ChanRole,
    ChanType,
    MPMCChanConsumer,
    MPMCChanProducer,
    MPSCChanConsumer,
    MPSCChanProducer,
    new_or_bind_with_unique_key,
)
from fluxon.etcd_client import connect


def _bind(store, key, role, chan_type=ChanType.MPMC, **config):
    config.setdefault("capacity", 16)
    return new_or_bind_with_unique_key(
        store, config, unique_id=key, chan_type=chan_type, chan_role=role
    )


def _read_json(path, timeout=60.0):
    deadline = time.monotonic() + timeout
    while not os.path.exists(path):
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.02)
    with open(path) as fh:
        return json.load(fh)


def test_reference_call_form_and_handle_classes(store, key):
    producer = new_or_bind_with_unique_key(
        store,
        {"capacity": 128, "ttl_seconds": 300},
        unique_id=key,
        chan_type=ChanType.MPMC,
        chan_role=ChanRole.PRODUCER,
    ).unwrap()
    consumer = new_or_bind_with_unique_key(
        store, {"capacity": 128}, unique_id=key, chan_type="mpmc", chan_role="consumer"
    ).unwrap()
    assert isinstance(producer, MPMCChanProducer) and isinstance(consumer, MPMCChanConsumer)
    assert producer.get_chan_id() == consumer.get_chan_id()
    assert producer.get_producer_id() != consumer.get_consumer_id()
    assert int(producer.get_producer_id()) > 0 and int(consumer.get_consumer_id()) > 0
    assert producer.get_capacity() == 128 and producer.get_ttl_seconds() == 300
    mpsc_key = key + "-mpsc"
    p2 = _bind(store, mpsc_key, ChanRole.PRODUCER, ChanType.MPSC).unwrap()
    c2 = _bind(store, mpsc_key, ChanRole.CONSUMER, ChanType.MPSC).unwrap()
    assert isinstance(p2, MPSCChanProducer) and isinstance(c2, MPSCChanConsumer)
    assert p2.get_chan_id() != producer.get_chan_id()
    for handle in (producer, consumer, p2, c2):
        assert handle.close().is_ok()


def test_eight_processes_bind_a_new_key_at_once(cluster, zygote, key, tmp_path):
    go = str(tmp_path / "go")
    release = str(tmp_path / "release")
    outs = [str(tmp_path / f"out{i}.json") for i in range(8)]
    pids = [
        zygote.spawn(
            "bind",
            cfg=cluster.client_config(f"{key}-binder{i}"),
            key=key,
            role="producer" if i % 2 else "consumer",
            capacity=32,
            go=go,
            release=release,
            out=outs[i],
        )
        for i in range(8)
    ]
    time.sleep(0.3)  # let every child attach its store and wait at the barrier
    open(go, "w").close()
    try:
        results = [_read_json(out) for out in outs]
    finally:
        open(release, "w").close()
        for pid in pids:
            assert zygote.wait(pid, 60.0) == 0, zygote.log_tail()
    assert all("chan_id" in r for r in results), results
    assert len({r["chan_id"] for r in results}) == 1, results
    with connect(cluster.etcd_addresses) as etcd:
        mapping = etcd.get(naming.chan_unique_key(cluster.cluster_name, key))
        assert mapping is not None and mapping.decode() == results[0]["chan_id"]


def test_type_mismatch_is_a_bind_error_saying_so(store, key):
    consumer = _bind(store, key, ChanRole.CONSUMER, ChanType.MPSC).unwrap()
    for role in (ChanRole.PRODUCER, ChanRole.CONSUMER):
        err = _bind(store, key, role, ChanType.MPMC).unwrap_error()
        assert isinstance(err, ChanTypeMismatchError) and isinstance(err, ChanBindError)
        assert f"key '{key}' is bound to an MPSC channel" in err.message
        assert "asked for MPMC" in err.message
    # The mapping was not touched: the MPSC channel is still the key's.
    again = _bind(store, key, ChanRole.PRODUCER, ChanType.MPSC).unwrap()
    assert again.get_chan_id() == consumer.get_chan_id()
    mpmc_key = key + "-b"
    _bind(store, mpmc_key, ChanRole.PRODUCER, ChanType.MPMC).unwrap()
    err = _bind(store, mpmc_key, ChanRole.CONSUMER, ChanType.MPSC).unwrap_error()
    assert isinstance(err, ChanTypeMismatchError)
    assert "bound to an MPMC channel" in err.message and "asked for MPSC" in err.message


def test_binder_gets_the_stored_config_and_a_warning(store, key, mq_caplog):
    first = _bind(store, key, ChanRole.PRODUCER, capacity=8, ttl_seconds=40).unwrap()
    mq_caplog.clear()
    second = _bind(store, key, ChanRole.PRODUCER, capacity=64, ttl_seconds=99).unwrap()
    assert second.get_chan_id() == first.get_chan_id()
    assert second.get_capacity() == 8 and second.get_ttl_seconds() == 40
    warnings = [r.getMessage() for r in mq_caplog.records if r.levelname == "WARNING"]
    assert any("'capacity'" in m and "64" in m and "8" in m for m in warnings), warnings
    assert any("'ttl_seconds'" in m for m in warnings), warnings
    # The stored capacity is the one enforced.
    for seq in range(8):
        assert second.put_data(make_message(1, seq), try_time=0).unwrap() is True
    assert second.put_data(make_message(1, 8), try_time=0).unwrap() is False
    # Binding without any capacity is fine once the channel exists.
    third = new_or_bind_with_unique_key(
        store, {}, unique_id=key, chan_type=ChanType.MPMC, chan_role=ChanRole.CONSUMER
    ).unwrap()
    assert third.get_capacity() == 8


@pytest.mark.parametrize(
    ("config", "needle"),
    [
        ({"capacity": 8, "colour": "red"}, "colour"),
        ({"capacity": 0}, "capacity"),
        ({"capacity": -3}, "capacity"),
        ({"capacity": "8"}, "capacity"),
        ({"capacity": 8.0}, "capacity"),
        ({"capacity": True}, "capacity"),
        ({"capacity": 8, "ttl_seconds": 0}, "ttl_seconds"),
        ({"capacity": 8, "ttl_seconds": "60"}, "ttl_seconds"),
        ({"capacity": 8, "weight": 0}, "weight"),
        ({"capacity": 1 << 40}, "capacity"),
        ("capacity=8", "chan_config"),
    ],
)
def test_bad_chan_config_is_named_and_creates_nothing(store, key, cluster, config, needle):
    err = new_or_bind_with_unique_key(
        store, config, unique_id=key, chan_type=ChanType.MPMC, chan_role=ChanRole.PRODUCER
    ).unwrap_error()
    assert isinstance(err, InvalidArgumentError), err
    assert needle in err.message
    with connect(cluster.etcd_addresses) as etcd:
        assert etcd.get(naming.chan_unique_key(cluster.cluster_name, key)) is None


def test_bad_role_type_and_key(store, key, cluster):
    err = _bind(store, key, "reader").unwrap_error()
    assert isinstance(err, ChanBindError) and "chan_role" in err.message
    err = _bind(store, key, ChanRole.PRODUCER, chan_type="spmc").unwrap_error()
    assert isinstance(err, ChanBindError) and "chan_type" in err.message
    err = _bind(store, key, ChanRole.PRODUCER, chan_type=None).unwrap_error()
    assert isinstance(err, ChanBindError) and "chan_type" in err.message
    for bad_key in ("", None, 7):
        err = _bind(store, bad_key, ChanRole.PRODUCER).unwrap_error()
        assert isinstance(err, InvalidArgumentError) and "unique_id" in err.message
    err = new_or_bind_with_unique_key(
        object(), {"capacity": 1}, unique_id=key, chan_type="mpmc", chan_role="producer"
    ).unwrap_error()
    assert isinstance(err, InvalidArgumentError)
    # Creating needs a capacity.
    err = new_or_bind_with_unique_key(
        store, {"ttl_seconds": 5}, unique_id=key, chan_type="mpmc", chan_role="consumer"
    ).unwrap_error()
    assert isinstance(err, ChanCreateError) and "capacity" in err.message
    with connect(cluster.etcd_addresses) as etcd:
        assert etcd.get(naming.chan_unique_key(cluster.cluster_name, key)) is None


def test_bad_values_are_named_and_nothing_is_written(store, key):
    producer = _bind(store, key, ChanRole.PRODUCER).unwrap()
    consumer = _bind(store, key, ChanRole.CONSUMER).unwrap()
    cases = [
        ({"a": None}, "'a'"),
        ({"nested": {"x": 1}}, "'nested'"),
        ({"objs": np.array([object()])}, "'objs'"),
        ({1: 2}, "key"),
        ([("a", 1)], "dict"),
        ("text", "dict"),
        ({"huge": np.zeros(80 << 20, dtype=np.uint8)}, "bytes"),  # larger than the pool
    ]
    for value, needle in cases:
        err = producer.put_data(value).unwrap_error()
        assert isinstance(err, InvalidArgumentError), (value, err)
        assert needle in err.message, (needle, err.message)
    err = consumer.get_data(try_time=0).unwrap_error()
    assert isinstance(err, MessageConsumptionNoNewMessageError)
    for bad in ({"batch_size": 0}, {"batch_size": "2"}, {"prefetch_num": -1}, {"try_time": -1}):
        assert isinstance(consumer.get_data(**bad).unwrap_error(), InvalidArgumentError), bad
    assert producer.put_data({"ok": 1}).unwrap() is True
    assert consumer.get_data(try_time=5).unwrap() == [{"ok": 1}]


def test_mpsc_second_consumer_fails_and_a_dead_consumers_slot_frees(
    cluster, store, zygote, key, tmp_path
):
    producer = _bind(store, key, ChanRole.PRODUCER, ChanType.MPSC, capacity=64).unwrap()
    for seq in range(10):
        assert producer.put_data(make_message(1, seq)).unwrap() is True
    out = str(tmp_path / "hold.json")
    pid = zygote.spawn(
        "hold",
        cfg=cluster.client_config(f"{key}-holder"),
        key=key,
        chan_type="mpsc",
        capacity=64,
        prefetch=4,
        out=out,
    )
    held = _read_json(out)
    assert "error" not in held, held
    assert held["received"] == [[1, 0]]
    err = _bind(store, key, ChanRole.CONSUMER, ChanType.MPSC).unwrap_error()
    assert isinstance(err, ChanBindError) and "consumer" in err.message
    zygote.kill(pid)
    assert zygote.wait(pid, 10.0) is not None
    deadline = time.monotonic() + 15.0
    while True:
        res = _bind(store, key, ChanRole.CONSUMER, ChanType.MPSC)
        if res.is_ok():
            break
        assert isinstance(res.unwrap_error(), ChanBindError)
        assert time.monotonic() < deadline, "the dead consumer's MPSC slot was never freed"
        time.sleep(0.1)
    consumer = res.unwrap()
    got = []
    while len(got) < 9:
        batch = consumer.get_data(batch_size=16, try_time=5.0).unwrap()
        got.extend(m["seq"] for m in batch)
    # The prefetched messages (1..4) come back; per-producer order is kept.
    assert got == list(range(1, 10))
