"""Owner restart: kill -9 the owner while clients are attached, start it again.

Defined behaviour (README "Guarantees"):

* the pool file survives an owner SIGKILL; a restarted owner with the same config adopts
  it: undelivered messages, prefetched/claimed messages, channels and KV keys survive;
* while the owner is down, calls of attached clients fail with an ``InternalError``
  saying the owner is not running (nothing is written by a failed call); once the
  restarted owner has adopted the pool the same store and handles work again, and
  ``new_store`` attaches again;
* members that died while the owner was down are reaped by the new owner (their
  claimed messages are redelivered, their memory freed);
* a pool of another size or owner instance key is not adopted: if it still holds
  anything the owner refuses to start (exit status 4), otherwise it is replaced;
* a file that is not a usable pool (bad header, inconsistent tables) is replaced, and
  clients still mapping it get a final "create a new store" error.
"""

from __future__ import annotations

import os
import signal
import time

import numpy as np
import pytest
from conftest import wait_until
from fault_procs import ConsumerLog
from mq_procs import make_message

from fluxon.api_error import InternalError, MessageConsumptionNoNewMessageError
from fluxon.api_ext_chan import ChanRole, ChanType, new_or_bind_with_unique_key
from fluxon.kvclient import new_store
from fluxon.pool import Pool
from fluxon.runtime import start_owner_kvclient_process
from fluxon.service.owner import EXIT_POOL_IN_USE
from fluxon_kernels.layout import pool_header as ph

pytestmark = pytest.mark.timeout(240)


def _bind(store, key, role, chan_type=ChanType.MPMC, **config):
    config.setdefault("capacity", 64)
    config.setdefault("ttl_seconds", 30)
    return new_or_bind_with_unique_key(
        store, config, unique_id=key, chan_type=chan_type, chan_role=role
    ).unwrap()


def _kill_owner(cluster) -> None:
    proc, cluster.owner_proc = cluster.owner_proc, None
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(10)


def _inode(path: str) -> int:
    return os.stat(path).st_ino


def _owner_log(cluster) -> str:
    with open(cluster.log_path("owner"), errors="replace") as fh:
        return fh.read()


def _drain(consumer, timeout=1.0):
    got = []
    while True:
        res = consumer.get_data(batch_size=64, try_time=timeout)
        if not res.is_ok():
            assert isinstance(res.unwrap_error(), MessageConsumptionNoNewMessageError)
            return got
        got += res.unwrap()


def test_killed_owner_is_adopted_and_clients_continue(make_cluster, stores, key):
    cluster = make_cluster(with_master=False)
    store = stores(cluster)
    producer = _bind(store, key, ChanRole.PRODUCER)
    consumer = _bind(store, key, ChanRole.CONSUMER)
    big = np.arange(50_000, dtype=np.int64)  # a heap block, not an inline slot
    for seq in range(20):
        assert producer.put_data(make_message(1, seq, pad=3000 if seq % 3 else 0)).unwrap()
    store.put_blocking("k-small", {"v": 1}).unwrap()
    store.put_blocking("k-big", {"arr": big}).unwrap()
    first = consumer.get_data(batch_size=5, try_time=5, prefetch_num=4).unwrap()
    assert [m["seq"] for m in first] == [0, 1, 2, 3, 4]
    inode = _inode(cluster.pool_file)
    chan_id = producer.get_chan_id()

    _kill_owner(cluster)
    assert os.path.exists(cluster.pool_file) and _inode(cluster.pool_file) == inode

    # While the owner is down: a clear error, nothing written.
    wait_until(lambda: store.owner_problem() == "dead", 10, "the client to notice the owner died")
    err = producer.put_data(make_message(1, 999)).unwrap_error()
    assert isinstance(err, InternalError) and "owner" in err.message
    err = consumer.get_data(try_time=0).unwrap_error()
    assert isinstance(err, InternalError) and "owner" in err.message
    err = store.get_blocking("k-small").unwrap_error()
    assert isinstance(err, InternalError) and "not running" in err.message
    assert not new_store(cluster.client_config("late-client")).is_ok()

    cluster.start_owner()
    assert "adopted the pool" in _owner_log(cluster)
    assert _inode(cluster.pool_file) == inode
    probe = Pool.attach(cluster.share_mem_path, cluster.cluster_name)
    try:
        assert probe.owner_pid == cluster.owner_proc.pid
        assert not probe.w[ph.W_CLOSING]
    finally:
        probe.close()

    # The same store and handles work again; nothing acknowledged was lost.
    wait_until(lambda: store.owner_problem() == "", 10, "the client to see the new owner")
    rest = [m["seq"] for m in _drain(consumer)]
    assert rest == list(range(5, 20))  # the 4 prefetched first, then the rest, in order
    assert store.get_blocking("k-small").unwrap().access() == {"v": 1}
    np.testing.assert_array_equal(store.get_blocking("k-big").unwrap().access()["arr"], big)
    assert producer.put_data(make_message(1, 20)).unwrap()
    assert [m["seq"] for m in consumer.get_data(try_time=5).unwrap()] == [20]

    # A new client attaches and binds the same channel.
    other = stores(cluster)
    again = _bind(other, key, ChanRole.PRODUCER)
    assert again.get_chan_id() == chan_id
    assert again.put_data({"p": 2, "seq": 0}).unwrap()
    assert consumer.get_data(try_time=5).unwrap() == [{"p": 2, "seq": 0}]


def test_members_that_died_while_the_owner_was_down_are_reaped(
    make_cluster, stores, zygote, key, tmp_path
):
    cluster = make_cluster(with_master=False)
    store = stores(cluster)
    producer = _bind(store, key, ChanRole.PRODUCER)
    for seq in range(30):
        assert producer.put_data(make_message(1, seq, pad=2000)).unwrap()
    baseline_members = {m.pid for m in store.pool.members()}
    log = str(tmp_path / "holder.log")
    holder = zygote.spawn(
        "hold",
        cfg=cluster.client_config("holder"),
        key=key,
        chan_type="mpmc",
        capacity=64,
        log=log,
        batch=2,
        prefetch=6,
    )
    wait_until(lambda: "P " in open(log).read() if os.path.exists(log) else False, 60, "holder")
    held = ConsumerLog(log).delivered
    assert len(held) == 2

    _kill_owner(cluster)
    zygote.kill(holder)
    assert zygote.wait(holder, 10) is not None
    cluster.start_owner()

    # The new owner reaps the holder: its 6 prefetched messages come back, its slot frees.
    wait_until(lambda: {m.pid for m in store.pool.members()} == baseline_members, 20, "the reaping")
    wait_until(lambda: store.owner_problem() == "", 10, "the client to see the new owner")
    consumer = _bind(store, key, ChanRole.CONSUMER)
    got = {(m["p"], m["seq"]) for m in _drain(consumer)}
    assert got | set(held) == {(1, s) for s in range(30)}
    assert not got & set(held)  # what the holder received is not redelivered
    assert "reaped dead member 'holder'" in _owner_log(cluster)


def test_other_size_is_refused_while_the_pool_holds_data(make_cluster, stores, key):
    cluster = make_cluster(with_master=False)
    store = stores(cluster)
    producer = _bind(store, key, ChanRole.PRODUCER)
    consumer = _bind(store, key, ChanRole.CONSUMER)
    assert producer.put_data({"n": 1}).unwrap()
    inode = _inode(cluster.pool_file)
    _kill_owner(cluster)

    bigger = dict(cluster.owner_config, contribute_to_cluster_pool_size={"dram": 80 << 20})
    proc = start_owner_kvclient_process(config=bigger, log_path=cluster.log_path("owner"))
    assert proc.wait(120) == EXIT_POOL_IN_USE
    text = _owner_log(cluster)
    assert "cannot be adopted" in text and "still holds" in text and "live client" in text
    assert _inode(cluster.pool_file) == inode  # untouched

    cluster.start_owner()  # the original size adopts it
    wait_until(lambda: store.owner_problem() == "", 10, "the client to see the new owner")
    assert consumer.get_data(try_time=5).unwrap() == [{"n": 1}]


def test_other_size_replaces_an_idle_pool(make_cluster):
    cluster = make_cluster(with_master=False)
    # Hold the old file open: once it is unlinked and nothing refers to it, the file
    # system may give its inode number to the new file (ext4 does), so comparing
    # numbers alone would not tell a replaced file from the same one.
    old_fd = os.open(cluster.pool_file, os.O_RDONLY)
    try:
        _kill_owner(cluster)
        cluster.owner_config["contribute_to_cluster_pool_size"] = {"dram": 80 << 20}
        cluster.start_owner()
        assert os.path.getsize(cluster.pool_file) == 80 << 20
        assert os.fstat(old_fd).st_nlink == 0  # the old file was unlinked ...
        assert _inode(cluster.pool_file) != os.fstat(old_fd).st_ino  # ... and a new one made
    finally:
        os.close(old_fd)
    assert "replacing the existing pool file" in _owner_log(cluster)


@pytest.mark.parametrize("damage", ["magic", "channel_table", "heap_tag"])
def test_a_corrupt_pool_is_replaced_and_its_clients_told(make_cluster, stores, key, damage):
    cluster = make_cluster(with_master=False)
    store = stores(cluster)
    producer = _bind(store, key, ChanRole.PRODUCER, capacity=8)
    assert producer.put_data({"n": 1}).unwrap()
    inode = _inode(cluster.pool_file)
    _kill_owner(cluster)
    w = store.pool.w
    if damage == "magic":
        w[ph.W_MAGIC] = 0
    elif damage == "channel_table":
        cw = (int(w[ph.W_CHAN_OFF]) + producer._c * int(w[ph.W_CHAN_STRIDE])) // 8
        w[cw + 4] = -5  # capacity
    else:
        w[int(w[ph.W_HEAP_TABLE_OFF]) // 8 + 3] = 12345678  # a tag naming nobody
    cluster.start_owner()
    assert _inode(cluster.pool_file) != inode
    assert "replacing the existing pool file" in _owner_log(cluster)
    wait_until(lambda: store.owner_problem() == "replaced", 10, "the client to see the new pool")
    err = producer.put_data({"n": 2}).unwrap_error()
    assert isinstance(err, InternalError) and "create a new store" in err.message
    fresh = stores(cluster)
    assert fresh.pool_stats().unwrap()["free_bytes"] == fresh.pool.heap_bytes()


def test_a_clean_stop_is_final_for_attached_clients(make_cluster, stores):
    cluster = make_cluster(with_master=False)
    store = stores(cluster)
    cluster.stop_owner()
    wait_until(lambda: store.owner_problem() in ("closing", "replaced"), 10, "the client")
    cluster.start_owner()
    time.sleep(1.0)  # the watchdog runs: a final problem stays final
    assert store.owner_problem() in ("closing", "replaced")
    err = store.get_blocking("x").unwrap_error()
    assert isinstance(err, InternalError) and "create a new store" in err.message
    stores(cluster).put_blocking("x", {"v": 1}).unwrap()
