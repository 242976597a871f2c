"""KV put/get latency, single process, beside a baseline in the same run.

Topology: one process, one key, values of 64 B / 4 KiB / 1 MiB (a FlatDict with one
``bytes`` field). Peers measured in the same invocation:

* ``fluxon``    — KvClient on the owner's shared-memory pool;
* ``mp-manager``— ``multiprocessing.Manager().dict()`` (the stdlib cross-process KV).

Run with ``make bench``; results go to bench/README.md by hand, with date and machine.
"""

from __future__ import annotations

import multiprocessing as mp

import pytest

SIZES = {"64B": 64, "4KiB": 4096, "1MiB": 1 << 20}


@pytest.fixture(scope="module")
def manager_dict():
    manager = mp.Manager()
    yield manager.dict()
    manager.shutdown()


@pytest.mark.parametrize("size", list(SIZES))
def test_put_fluxon(benchmark, kv_store, size):
    value = {"payload": b"x" * SIZES[size]}
    benchmark.group = f"kv-put-{size}"
    benchmark(lambda: kv_store.put_blocking("bench/put", value))
    kv_store.remove("bench/put")


@pytest.mark.parametrize("size", list(SIZES))
def test_put_mp_manager(benchmark, manager_dict, size):
    value = {"payload": b"x" * SIZES[size]}
    benchmark.group = f"kv-put-{size}"
    benchmark(manager_dict.__setitem__, "bench/put", value)


@pytest.mark.parametrize("size", list(SIZES))
def test_get_fluxon(benchmark, kv_store, size):
    kv_store.put_blocking("bench/get", {"payload": b"x" * SIZES[size]}).unwrap()
    benchmark.group = f"kv-get-{size}"
    res = benchmark(lambda: kv_store.get_blocking("bench/get").unwrap().access())
    assert len(res["payload"]) == SIZES[size]
    kv_store.remove("bench/get")


@pytest.mark.parametrize("size", list(SIZES))
def test_get_mp_manager(benchmark, manager_dict, size):
    manager_dict["bench/get"] = {"payload": b"x" * SIZES[size]}
    benchmark.group = f"kv-get-{size}"
    res = benchmark(manager_dict.__getitem__, "bench/get")
    assert len(res["payload"]) == SIZES[size]
