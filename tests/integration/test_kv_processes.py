"""KV across processes: concurrent writers and readers on shared keys, and SIGKILL reclaim."""

from __future__ import annotations

import multiprocessing as mp
import os
import signal
import time

import numpy as np
import pytest

from fluxon.kvclient import new_store
from fluxon_kernels import heap as kheap
from fluxon_kernels.layout.pool_header import W_UNIT_SIZE

KEYS = [f"shared/{i}" for i in range(3)]
SECONDS = float(os.environ.get("FLUXON_KV_STRESS_SECONDS", "3"))


def _writer(cfg: dict, wid: int, seconds: float, out: mp.Queue) -> None:
    store = new_store(cfg).unwrap()
    rng = np.random.default_rng(wid)
    n = 0
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        key = KEYS[n % len(KEYS)]
        stamp = wid * 1_000_000 + n
        length = int(rng.integers(1, 300_000))  # 8 B .. 2.3 MiB: spans many heap units
        payload = np.full(length, stamp, dtype=np.int64)
        res = store.put_blocking(key, {"stamp": stamp, "len": length, "data": payload})
        if res.is_ok():
            n += 1
        if n % 7 == 0:
            store.remove(key)  # KeyNotFound is fine: another writer may have removed it
    store.close()
    out.put(("writer", wid, n, 0))


def _reader(cfg: dict, rid: int, seconds: float, out: mp.Queue) -> None:
    store = new_store(cfg).unwrap()
    reads = torn = 0
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        for key in KEYS:
            res = store.get_blocking(key)
            if not res.is_ok():
                continue
            v = res.unwrap().access()
            data = v["data"]
            if len(data) != v["len"] or not (data == v["stamp"]).all():
                torn += 1
            reads += 1
    store.close()
    out.put(("reader", rid, reads, torn))


def test_writers_and_readers_never_see_torn_values(cluster):
    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    procs = [
        ctx.Process(target=_writer, args=(cluster.client_config(f"w{i}"), i, SECONDS, out))
        for i in range(2)
    ] + [
        ctx.Process(target=_reader, args=(cluster.client_config(f"r{i}"), i, SECONDS, out))
        for i in range(2)
    ]
    for p in procs:
        p.start()
    results = [out.get(timeout=120) for _ in procs]
    for p in procs:
        p.join(timeout=30)
        assert p.exitcode == 0
    writes = sum(r[2] for r in results if r[0] == "writer")
    reads = sum(r[2] for r in results if r[0] == "reader")
    torn = sum(r[3] for r in results if r[0] == "reader")
    assert writes > 0 and reads > 0
    assert torn == 0
    store = new_store(cluster.client_config("cleanup")).unwrap()
    for key in KEYS:
        store.remove(key)
    store.close()


def _holder(cfg: dict, ready: mp.Event) -> None:
    """Allocate blocks as a half-finished put would, then wait to be killed."""
    store = new_store(cfg).unwrap()
    for size in (100, 5000, 3 << 20):
        assert kheap.heap_alloc(store.pool.w, size, store.member_slot() + 1) >= 0
    # and a value that is published (it belongs to the KV, not to this process)
    store.put_blocking("survivor", {"x": np.arange(1000)}).unwrap()
    ready.set()
    time.sleep(600)


def test_sigkilled_client_blocks_are_reclaimed(fresh_cluster):
    observer = new_store(fresh_cluster.client_config("observer")).unwrap()
    try:
        baseline = observer.pool_stats().unwrap()["free_bytes"]
        ctx = mp.get_context("spawn")
        ready = ctx.Event()
        child = ctx.Process(target=_holder, args=(fresh_cluster.client_config("victim"), ready))
        child.start()
        assert ready.wait(60)
        held = baseline - observer.pool_stats().unwrap()["free_bytes"]
        assert held > 3 << 20
        os.kill(child.pid, signal.SIGKILL)
        child.join(10)
        survivor_bytes = observer.get_size("survivor").unwrap()
        unit = int(observer.pool.w[W_UNIT_SIZE])
        expected_free = baseline - -(-survivor_bytes // unit) * unit

        def externals():
            return [m.name for m in observer.pool.members() if m.kind_name == "external"]

        # The owner frees the dead member's blocks, then its slot: wait for both.
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            free_now = observer.pool_stats().unwrap()["free_bytes"]
            if free_now == expected_free and externals() == ["observer"]:
                break
            time.sleep(0.05)
        free_now = observer.pool_stats().unwrap()["free_bytes"]
        assert free_now == expected_free, (
            f"free {free_now}, expected {expected_free}, baseline {baseline}; members "
            f"{[m.to_dict() for m in observer.pool.members()]}\n{_owner_log(fresh_cluster)}"
        )
        assert externals() == ["observer"]
        got = observer.get_blocking("survivor").unwrap().access()
        assert np.array_equal(got["x"], np.arange(1000))
        # the dead member's instance key is free again
        again = new_store(fresh_cluster.client_config("victim")).unwrap()
        again.close()
        observer.remove("survivor").unwrap()
        assert observer.pool_stats().unwrap()["free_bytes"] == baseline
    finally:
        observer.close()


@pytest.mark.parametrize("n", [3])
def test_many_clients_attach_and_detach(cluster, n):
    stores = [new_store(cluster.client_config(f"many-{i}")).unwrap() for i in range(n)]
    slots = {s.member_slot() for s in stores}
    assert len(slots) == n
    for s in stores:
        s.close()


def _owner_log(cluster) -> str:
    try:
        with open(cluster.log_path("owner"), errors="replace") as fh:
            return fh.read()[-3000:]
    except OSError as exc:
        return f"(no owner log: {exc})"
