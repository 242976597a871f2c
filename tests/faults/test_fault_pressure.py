"""Disk and pool pressure: a pool full of huge messages, a full /dev/shm.

Defined behaviour (README "Guarantees"):

* a pool full of undelivered messages makes producers wait (``put_data`` returns
  Ok(False) after ``try_time``) and KV puts fail with ``StorageFullError``, writing
  nothing; once consumers free memory the producers carry on; every acknowledged
  message arrives intact and the pool's free bytes come back to the baseline;
* a message larger than the whole pool is refused with ``InvalidArgumentError``;
* an owner whose pool does not fit in the file system fails at start with a clear
  error (exit status 1, "only N bytes are free"), leaving nothing behind;
* the pool's memory is reserved when it is created: filling the file system
  afterwards does not disturb traffic (no SIGBUS).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
import uuid

import pytest
from conftest import wait_until
from fault_procs import ConsumerLog, ProducerLog
from mq_procs import make_message

from fluxon.api_error import InvalidArgumentError, StorageFullError
from fluxon.api_ext_chan import ChanRole, ChanType, new_or_bind_with_unique_key
from fluxon.runtime import start_owner_kvclient_process
from fluxon.service.owner import EXIT_ERROR

pytestmark = pytest.mark.timeout(180)

POOL = 24 << 20
MB = 1 << 20


def _acked(path: str) -> int:
    return len(ProducerLog(path).acked)


def _settled(read, timeout: float, quiet_s: float = 1.0):
    """``read()`` once it stopped changing for ``quiet_s`` seconds."""
    last = read()
    deadline = time.monotonic() + timeout
    while True:
        time.sleep(quiet_s)
        now = read()
        if now == last:
            return now
        assert time.monotonic() < deadline, "still changing"
        last = now


def test_full_pool_of_huge_messages(make_cluster, zygote, stores, key, tmp_path):
    cluster = make_cluster(with_master=False, pool_bytes=POOL)
    store = stores(cluster)
    baseline = store.pool_stats().unwrap()["free_bytes"]
    keeper = new_or_bind_with_unique_key(
        store, {"capacity": 64, "ttl_seconds": 30}, key, ChanType.MPMC, ChanRole.PRODUCER
    ).unwrap()
    stop = str(tmp_path / "stop")
    common = dict(key=key, chan_type="mpmc", capacity=64, ttl=30, stop=stop)
    plogs = [str(tmp_path / f"p{i}.log") for i in range(2)]
    producers = [
        zygote.spawn(
            "producer",
            cfg=cluster.client_config(f"big-p{i}"),
            log=plogs[i],
            label=i + 1,
            pads=[3 * MB, 5 * MB, 1 * MB, 100],
            **common,
        )
        for i in range(2)
    ]
    # No consumer yet: the heap fills up, then the producers wait.
    wait_until(lambda: store.pool_stats().unwrap()["free_bytes"] < 5 * MB, 60, "a full pool")
    counts = _settled(lambda: [_acked(p) for p in plogs], 30)  # the producers now wait
    free = store.pool_stats().unwrap()["free_bytes"]
    err = store.put_blocking("big-key", {"blob": b"x" * (6 * MB)}).unwrap_error()
    assert isinstance(err, StorageFullError), err
    assert not store.is_exist("big-key").unwrap()
    assert keeper.put_data(make_message(9, 0, 6 * MB), try_time=0.3).unwrap() is False
    assert store.pool_stats().unwrap()["free_bytes"] == free  # nothing was written
    err = keeper.put_data({"blob": b"x" * (POOL + 1)}).unwrap_error()
    assert isinstance(err, InvalidArgumentError) and "bytes" in err.message

    clog = str(tmp_path / "c.log")
    consumer = zygote.spawn(
        "consumer", cfg=cluster.client_config("big-c"), log=clog, max_batch=2, **common
    )
    before = sum(counts)
    wait_until(lambda: sum(_acked(p) for p in plogs) > before + 20, 60, "the producers to resume")
    open(stop, "w").close()
    for pid in [*producers, consumer]:
        assert zygote.wait(pid, 60) == 0
    acked = {(i + 1, s) for i, p in enumerate(plogs) for s in ProducerLog(p).acked}
    log = ConsumerLog(clog)
    assert not log.bad and not log.errors
    assert sorted(log.delivered) == sorted(acked)

    keeper.close()
    from fluxon.channel_registry import ChannelRegistry

    _mapping, desc = ChannelRegistry(store._etcd, cluster.cluster_name).lookup(key)
    store._etcd.revoke(desc.lease_id)  # expire the channel now
    wait_until(
        lambda: store.pool_stats().unwrap()["free_bytes"] == baseline, 60, "the baseline", 0.2
    )


def test_owner_refuses_a_pool_larger_than_the_free_space(make_cluster):
    cluster = make_cluster(start=False, with_master=False)
    usage = shutil.disk_usage(os.path.dirname(cluster.share_mem_path))
    cfg = dict(cluster.owner_config)
    cfg["contribute_to_cluster_pool_size"] = {"dram": usage.free + (1 << 30)}
    proc = start_owner_kvclient_process(config=cfg, log_path=cluster.log_path("owner"))
    assert proc.wait(120) == EXIT_ERROR
    with open(cluster.log_path("owner")) as fh:
        text = fh.read()
    assert "cannot create a" in text and "bytes are free there" in text
    assert not os.path.exists(cluster.pool_file)


@pytest.fixture
def small_tmpfs():
    """A 24 MiB tmpfs mounted for this test (skipped where mounting is not allowed)."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    path = tempfile.mkdtemp(prefix="fluxon-tmpfs-")
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=24m,mode=0700", "tmpfs", path],
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        os.rmdir(path)
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", path], capture_output=True)
        os.rmdir(path)


def test_nearly_full_shm_at_owner_start_and_after(make_cluster, stores, small_tmpfs, key):
    cluster = make_cluster(start=False, with_master=False, pool_bytes=16 << 20)
    share = os.path.join(small_tmpfs, "shm")
    cluster.share_mem_path = share
    cluster.owner_config["fluxonkv_spec"]["share_mem_path"] = share
    # Nearly full: 12 MiB taken, a 16 MiB pool does not fit.
    filler = os.path.join(small_tmpfs, "filler")
    with open(filler, "wb") as fh:
        fh.write(b"\0" * (12 << 20))
    proc = start_owner_kvclient_process(
        config=cluster.owner_config, log_path=cluster.log_path("owner")
    )
    assert proc.wait(120) == EXIT_ERROR
    with open(cluster.log_path("owner")) as fh:
        assert "bytes are free there" in fh.read()
    assert not os.path.exists(cluster.pool_file)

    # Room for the pool; then the file system fills up completely: traffic goes on.
    os.unlink(filler)
    cluster.start_owner()
    with open(filler, "wb", buffering=0) as fh:
        try:
            while True:
                fh.write(b"\0" * (64 << 10))
        except OSError:
            pass
    assert shutil.disk_usage(small_tmpfs).free < 1 << 20
    store = stores(cluster, f"tmpfs-{uuid.uuid4().hex[:6]}")
    producer = new_or_bind_with_unique_key(
        store, {"capacity": 8}, key, ChanType.MPMC, ChanRole.PRODUCER
    ).unwrap()
    consumer = new_or_bind_with_unique_key(store, {}, key, ChanType.MPMC, ChanRole.CONSUMER)
    consumer = consumer.unwrap()
    for seq in range(40):
        assert producer.put_data(make_message(1, seq, 2 * MB), try_time=10).unwrap()
        (msg,) = consumer.get_data(try_time=10).unwrap()
        assert msg["seq"] == seq and len(msg["pad"]) == 2 * MB
    store.put_blocking("k", {"blob": b"y" * (4 * MB)}).unwrap()
    assert len(store.get_blocking("k").unwrap().access()["blob"]) == 4 * MB
    producer.close()
    consumer.close()
    store.close()
    cluster.stop_owner()
