"""KvClient against a real owner, master and etcd: round trips and bad input."""

from __future__ import annotations

import os

import numpy as np
import pytest

from fluxon.api_error import (
    ApiError,
    GeneralError,
    InvalidArgumentError,
    InvalidConfigurationError,
    KeyNotFoundError,
    StorageFullError,
)
from fluxon.config import FluxonKvClientConfig
from fluxon.kvclient import KvClient, PutOptionalArgs, new_store


@pytest.fixture
def store(cluster):
    res = new_store(cluster.client_config(f"kv-test-{os.getpid()}"))
    client = res.unwrap()
    yield client
    client.close()


def sample_value() -> dict:
    return {
        "i": -(2**63),
        "f": 1.5e-300,
        "b": True,
        "s": "héllo ✓",
        "raw": bytes(range(256)),
        "empty": b"",
        "mat": np.arange(24, dtype=np.float64).reshape(2, 3, 4),
        "mask": np.array([True, False, True]),
        "half": np.ones((5,), dtype=np.float16),
        "scalar": np.array(3, dtype=np.int16),
    }


def assert_same(got: dict, want: dict) -> None:
    assert set(got) == set(want)
    for k, v in want.items():
        if isinstance(v, np.ndarray):
            assert isinstance(got[k], np.ndarray), k
            assert got[k].dtype == v.dtype and got[k].shape == v.shape, k
            assert np.array_equal(got[k], v), k
        else:
            assert type(got[k]) is type(v) and got[k] == v, k


def test_new_store_returns_client(store):
    assert isinstance(store, KvClient)
    assert store.instance_key().unwrap().startswith("kv-test-")
    assert store.get_etcd_config().unwrap()


def test_put_get_remove_round_trip(store):
    want = sample_value()
    store.put_blocking("rt/a", want).unwrap()
    assert_same(store.get_blocking("rt/a").unwrap().access(), want)
    fut = store.get("rt/a").unwrap()
    assert_same(fut.wait().unwrap().access(), want)
    assert store.is_exist("rt/a").unwrap() is True
    assert store.count_prefix("rt/").unwrap() == 1
    store.remove("rt/a").unwrap()
    assert store.is_exist("rt/a").unwrap() is False
    assert isinstance(store.get_blocking("rt/a").unwrap_error(), KeyNotFoundError)
    assert isinstance(store.remove("rt/a").unwrap_error(), KeyNotFoundError)


def test_one_mib_ndarray_and_replace_frees_memory(store):
    base = store.pool_stats().unwrap()["free_bytes"]
    big = np.random.default_rng(1).random(128 * 1024)  # 1 MiB of float64
    for i in range(5):
        store.put("big", {"x": big * i, "i": i}).unwrap().wait().unwrap()
    got = store.get_blocking("big").unwrap().access()
    assert got["i"] == 4 and np.array_equal(got["x"], big * 4)
    store.remove("big").unwrap()
    assert store.pool_stats().unwrap()["free_bytes"] == base


def test_reject_if_exists(store):
    store.put_blocking("rie", {"v": 1}).unwrap()
    err = store.put_blocking("rie", {"v": 2}, PutOptionalArgs(reject_if_exists=True)).unwrap_error()
    assert isinstance(err, InvalidArgumentError)
    assert store.get_blocking("rie").unwrap().access() == {"v": 1}
    store.remove("rie").unwrap()


@pytest.mark.parametrize(
    "key, value, needle",
    [
        ("bad/none", {"a": None}, "a"),
        ("bad/nested", {"outer": {"inner": 1}}, "outer"),
        ("bad/list", {"lst": [1, 2]}, "lst"),
        ("bad/obj", {"o": object()}, "o"),
        ("bad/objarr", {"arr": np.array(["x"], dtype=object)}, "arr"),
        ("bad/keytype", {1: 2}, "1"),
        ("bad/notdict", [("a", 1)], "dict"),
        (123, {"a": 1}, "key"),
        ("", {"a": 1}, "empty"),
        ("k" * 1000, {"a": 1}, "bytes"),
    ],
)
def test_bad_input_is_named_and_writes_nothing(store, key, value, needle):
    free = store.pool_stats().unwrap()["free_bytes"]
    keys = store.count_prefix("").unwrap()
    err = store.put_blocking(key, value).unwrap_error()
    assert isinstance(err, InvalidArgumentError), err
    assert needle in str(err)
    assert store.count_prefix("").unwrap() == keys
    assert store.pool_stats().unwrap()["free_bytes"] == free


def test_value_larger_than_pool_is_invalid_argument(store):
    free = store.pool_stats().unwrap()["free_bytes"]
    huge = np.zeros(store.pool_stats().unwrap()["heap_bytes"] + 1, dtype=np.uint8)
    err = store.put_blocking("huge", {"x": huge}).unwrap_error()
    assert isinstance(err, InvalidArgumentError) and "pool" in str(err)
    assert store.pool_stats().unwrap()["free_bytes"] == free
    assert store.is_exist("huge").unwrap() is False


def test_pool_temporarily_full_then_recovers(store):
    base = store.pool_stats().unwrap()["free_bytes"]
    chunk = np.full(4 << 20, 7, dtype=np.uint8)
    stored = []
    err = None
    for i in range(1000):
        res = store.put_blocking(f"fill/{i}", {"x": chunk, "i": i})
        if not res.is_ok():
            err = res.unwrap_error()
            break
        stored.append(i)
    assert isinstance(err, StorageFullError), err
    assert stored, "at least one chunk must fit"
    # nothing already stored was damaged, and the failed put wrote nothing
    assert store.count_prefix("fill/").unwrap() == len(stored)
    got = store.get_blocking(f"fill/{stored[-1]}").unwrap().access()
    assert got["i"] == stored[-1] and np.array_equal(got["x"], chunk)
    for i in stored:
        store.remove(f"fill/{i}").unwrap()
    assert store.pool_stats().unwrap()["free_bytes"] == base
    store.put_blocking("fill/again", {"x": chunk}).unwrap()
    store.remove("fill/again").unwrap()


def test_closed_store_refuses_calls(cluster):
    client = new_store(cluster.client_config(f"closing-{os.getpid()}")).unwrap()
    assert client.close().is_ok()
    assert client.close().is_ok()  # idempotent
    assert isinstance(client.put_blocking("x", {"a": 1}).unwrap_error(), GeneralError)


def test_instance_key_in_use_is_refused_until_closed(cluster):
    cfg = cluster.client_config(f"dup-{os.getpid()}")
    first = new_store(cfg).unwrap()
    try:
        err = new_store(cfg).unwrap_error()
        assert isinstance(err, InvalidConfigurationError) and "instance_key" in str(err)
    finally:
        first.close()
    second = new_store(cfg).unwrap()
    second.close()


def test_unknown_config_key_is_named(cluster):
    cfg = dict(cluster.client_config("cfg-bad"))
    cfg["fluxonkv_spec"] = dict(cfg["fluxonkv_spec"], colour="blue")
    err = new_store(cfg).unwrap_error()
    assert isinstance(err, InvalidConfigurationError) and "colour" in str(err)


def test_external_client_must_not_set_etcd(cluster):
    cfg = dict(cluster.client_config("cfg-etcd"))
    cfg["fluxonkv_spec"] = dict(cfg["fluxonkv_spec"], etcd_addresses=["127.0.0.1:2379"])
    err = new_store(cfg).unwrap_error()
    assert isinstance(err, InvalidConfigurationError) and "etcd_addresses" in str(err)


def test_owner_config_is_refused_by_new_store(cluster):
    cfg = dict(cluster.client_config("cfg-owner"))
    cfg["contribute_to_cluster_pool_size"] = {"dram": "64MB"}
    cfg["fluxonkv_spec"] = dict(cfg["fluxonkv_spec"], etcd_addresses=cluster.etcd_addresses)
    err = new_store(cfg).unwrap_error()
    assert isinstance(err, InvalidConfigurationError)


def test_wrong_cluster_name_or_missing_owner(cluster, tmp_path):
    cfg = dict(cluster.client_config("cfg-wrong"))
    cfg["fluxonkv_spec"] = dict(cfg["fluxonkv_spec"], cluster_name="no-such-cluster")
    err = new_store(cfg).unwrap_error()
    assert isinstance(err, InvalidConfigurationError) and "no-such-cluster" in str(err)
    cfg["fluxonkv_spec"] = dict(cfg["fluxonkv_spec"], share_mem_path=str(tmp_path))
    assert isinstance(new_store(cfg).unwrap_error(), ApiError)


def test_config_object_accepted(cluster):
    client = new_store(FluxonKvClientConfig(cluster.client_config(f"obj-{os.getpid()}"))).unwrap()
    with client:
        client.put_blocking("obj", {"a": 1}).unwrap()
        client.remove("obj").unwrap()
    assert client.is_closed()
