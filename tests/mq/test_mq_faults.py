"""Faults and lifetime: consumers SIGKILLed at random points, idle cost, retention, leases."""

from __future__ import annotations

import json
import os
import random
import threading
import time

from mq_procs import make_message

from fluxon import naming
from fluxon.api_error import MessageConsumptionNoNewMessageError
from fluxon.api_ext_chan import ChanRole, ChanType, new_or_bind_with_unique_key
from fluxon.channel_reaper import reap_expired_channels
from fluxon.etcd_client import IDLE_CLOSE_S, connect
from fluxon.kvclient import new_store
from fluxon_kernels import channel as kchan

#: SIGKILL trials of the victim test (more with FLUXON_KILL_TRIALS).
KILL_TRIALS = int(os.environ.get("FLUXON_KILL_TRIALS", "30"))


def _bind(store, key, role, chan_type=ChanType.MPMC, **config):
    config.setdefault("capacity", 16)
    return new_or_bind_with_unique_key(
        store, config, unique_id=key, chan_type=chan_type, chan_role=role
    ).unwrap()


def _parse_victim_log(path):
    """(delivered ids, batch size of a get that started but never logged its end)."""
    delivered, open_batch = [], 0
    try:
        with open(path) as fh:
            lines = fh.read().splitlines()
    except FileNotFoundError:
        return delivered, 0
    for line in lines:
        if line.startswith("B "):
            open_batch = int(line[2:])
        elif line.startswith("E"):
            open_batch = 0
            body = line[2:]
            if body:
                delivered += [tuple(map(int, item.split(":"))) for item in body.split(",")]
    return delivered, open_batch


def _run_and_wakeups(pid):
    """CPU seconds and times scheduled of every thread of ``pid`` (schedstat: exact to the
    ns, and a count that grows by one each time a thread gets a CPU, e.g. per wake-up)."""
    seconds = runs = 0
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid}/schedstat") as fh:
                run_ns, _wait_ns, slices = map(int, fh.read().split())
        except (FileNotFoundError, ProcessLookupError):
            continue  # a thread that just ended
        seconds += run_ns / 1e9
        runs += slices
    return seconds, runs


def test_sigkilled_consumers_lose_nothing(cluster, zygote, store, key, tmp_path):
    """Victims consume with prefetch and are SIGKILLed at random points; nothing is lost.

    Every message whose put_data returned Ok(True) is delivered at least once: it is in a
    victim's log, in the final drain, or it belongs to the get_data a victim was inside
    when killed (delivered to a process that died before it could log it; at most that
    get's batch size per killed victim).
    """
    rng = random.Random(1234)
    capacity = 24
    producer = _bind(store, key, ChanRole.PRODUCER, capacity=capacity)
    acked = []
    stop = threading.Event()

    def produce():
        seq = 0
        while not stop.is_set():
            if producer.put_data(make_message(5, seq), try_time=0.05).unwrap():
                acked.append(seq)
                seq += 1

    feeder = threading.Thread(target=produce)
    feeder.start()
    logs, in_flight, kills = [], 0, 0
    try:
        for trial in range(KILL_TRIALS):
            log = str(tmp_path / f"victim{trial}.log")
            pid = zygote.spawn(
                "victim",
                cfg=cluster.client_config(f"{key}-v{trial}"),
                key=key,
                capacity=capacity,
                log=log,
                seed=trial,
            )
            logs.append(log)
            time.sleep(rng.uniform(0.1, 0.3))
            zygote.kill(pid)
            assert zygote.wait(pid, 10.0) is not None
            kills += 1
        # The channel keeps flowing: a fresh consumer drains everything.
        time.sleep(0.2)
        stop.set()
        feeder.join(30)
        consumer = _bind(store, key, ChanRole.CONSUMER)
        drained = []
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            res = consumer.get_data(batch_size=64, try_time=1.5)
            if not res.is_ok():
                assert isinstance(res.unwrap_error(), MessageConsumptionNoNewMessageError)
                break
            drained += [(m["p"], m["seq"]) for m in res.unwrap()]
    finally:
        stop.set()
        feeder.join(30)
    delivered = list(drained)
    victims_consumed = 0
    for log in logs:
        got, open_batch = _parse_victim_log(log)
        delivered += got
        victims_consumed += len(got)
        in_flight += open_batch
    assert kills == KILL_TRIALS
    assert victims_consumed > 0, "no victim consumed anything: the test did not test"
    seen = {seq for _p, seq in delivered}
    missing = [seq for seq in acked if seq not in seen]
    stats = (
        f"kills={kills} victims_consumed={victims_consumed} in_flight={in_flight} "
        f"drained={len(drained)} acked={len(acked)} missing={missing[:20]}"
    )
    assert len(missing) <= in_flight, stats
    assert seen <= set(acked)  # nothing invented
    assert len(acked) > capacity  # the channel kept flowing past the victims


def test_idle_blocked_consumer_uses_no_cpu(cluster, zygote, key, tmp_path):
    out = str(tmp_path / "idle.json")
    pid = zygote.spawn(
        "hold", cfg=cluster.client_config(f"{key}-idle"), key=key, out=out, block=True
    )
    deadline = time.monotonic() + 60
    while not os.path.exists(out):
        assert time.monotonic() < deadline
        time.sleep(0.05)
    # Now inside get_data(try_time=None). Idle means after the client closed its gRPC
    # channel (IDLE_CLOSE_S after its last etcd call, the bind).
    time.sleep(IDLE_CLOSE_S + 1.0)
    # Ten seconds: idle here is a few wake-ups a second (the owner watchdog, a lease
    # refresh every 10 s, the statistics flush).
    (c0, r0), t0 = _run_and_wakeups(pid), time.monotonic()
    time.sleep(10.0)
    (c1, r1), t1 = _run_and_wakeups(pid), time.monotonic()
    zygote.kill(pid)
    zygote.wait(pid, 10.0)
    # No thread spins and none polls often (about 1.6 wake-ups/s measured). What each
    # wake-up costs varies several-fold over a day on this VM (bench/README.md, idle CPU),
    # so the CPU bound only catches spinning; the 1 % idle target is measured by
    # bench/idle_cpu.py, not asserted here.
    cpu, rate = (c1 - c0) / (t1 - t0), (r1 - r0) / (t1 - t0)
    assert rate < 10, f"{rate:.1f} wake-ups/s"
    assert cpu < 0.05, f"{cpu:.2%} of a core"


def test_an_idle_store_closes_its_grpc_channel_and_binds_again(store, key):
    """No etcd call for IDLE_CLOSE_S: the store's gRPC channel (and its threads) go away;
    the next bind opens it again."""
    producer = _bind(store, key, ChanRole.PRODUCER, capacity=8)
    session = store._etcd
    deadline = time.monotonic() + IDLE_CLOSE_S + 10
    while session.grpc_open:
        assert time.monotonic() < deadline, "the gRPC channel stayed open"
        time.sleep(0.1)
    consumer = _bind(store, key, ChanRole.CONSUMER)
    assert session.grpc_open
    producer.put_data(make_message(1, 0)).unwrap()
    assert len(consumer.get_data(try_time=5).unwrap()) == 1
    producer.close()
    consumer.close()


def test_retention_reclaims_channel_mapping_and_memory(fresh_cluster, key):
    cluster = fresh_cluster
    store = new_store(cluster.client_config(f"{key}-ret")).unwrap()
    try:
        baseline = store.pool_stats().unwrap()["free_bytes"]
        producer = _bind(store, key, ChanRole.PRODUCER, capacity=64, ttl_seconds=2)
        consumer = _bind(store, key, ChanRole.CONSUMER)
        for seq in range(20):
            producer.put_data(make_message(1, seq, pad=5000 if seq % 2 else 10)).unwrap()
        consumer.get_data(batch_size=5, try_time=5, prefetch_num=3).unwrap()
        chan_id, entry = int(producer.get_chan_id()), producer._c
        assert store.pool_stats().unwrap()["free_bytes"] < baseline
        producer.close()
        consumer.close()
        with connect(cluster.etcd_addresses) as etcd:
            ukey = naming.chan_unique_key(cluster.cluster_name, key)
            dkey = naming.chan_desc_key(cluster.cluster_name, chan_id)
            deadline = time.monotonic() + 30
            while etcd.get(dkey) is not None or etcd.get(ukey) is not None:
                assert time.monotonic() < deadline, "the channel lease never expired"
                time.sleep(0.2)
            # The owner's loop finds the expired channel and reclaims its entry.
            pool = store.pool
            deadline = time.monotonic() + 30
            while kchan.chan_is_active(pool.w, entry, chan_id):
                assert time.monotonic() < deadline, "the owner never reclaimed the channel"
                time.sleep(0.1)
            deadline = time.monotonic() + 10
            while store.pool_stats().unwrap()["free_bytes"] != baseline:
                assert time.monotonic() < deadline, "pool free bytes never returned to baseline"
                time.sleep(0.1)
        # The key is free again: a new bind creates a new channel.
        again = _bind(store, key, ChanRole.PRODUCER, capacity=4)
        assert int(again.get_chan_id()) != chan_id
    finally:
        store.close()


def test_reaper_spares_channels_in_use(store, cluster, key):
    """An entry whose descriptor is gone but that has live members is not reaped."""
    producer = _bind(store, key, ChanRole.PRODUCER, capacity=4, ttl_seconds=30)
    chan_id, entry = int(producer.get_chan_id()), producer._c
    with connect(cluster.etcd_addresses) as etcd:
        assert entry not in reap_expired_channels(store.pool, etcd, cluster.cluster_name, 0.0)
        assert kchan.chan_is_active(store.pool.w, entry, chan_id)
    producer.close()


def test_lost_channel_lease_is_published_again(store, cluster, key):
    producer = _bind(store, key, ChanRole.PRODUCER, capacity=4, ttl_seconds=3)
    chan_id = producer.get_chan_id()
    with connect(cluster.etcd_addresses) as etcd:
        ukey = naming.chan_unique_key(cluster.cluster_name, key)
        desc = json.loads(etcd.get(naming.chan_desc_key(cluster.cluster_name, chan_id)))
        etcd.revoke(desc["lease_id"])  # as if etcd had been unreachable for a whole ttl
        assert etcd.get(ukey) is None
        deadline = time.monotonic() + 15
        while etcd.get(ukey) is None:
            assert time.monotonic() < deadline, "the mapping was never published again"
            time.sleep(0.1)
        assert etcd.get(ukey).decode() == chan_id
    consumer = _bind(store, key, ChanRole.CONSUMER)
    assert consumer.get_chan_id() == chan_id
    producer.put_data({"a": 1}).unwrap()
    assert consumer.get_data(try_time=5).unwrap() == [{"a": 1}]


def test_a_dead_owner_is_a_clear_error_not_a_hang(fresh_cluster, key):
    cluster = fresh_cluster
    store = new_store(cluster.client_config(f"{key}-orphan")).unwrap()
    try:
        producer = _bind(store, key, ChanRole.PRODUCER, capacity=4)
        consumer = _bind(store, key, ChanRole.CONSUMER)
        outcome = {}
        getter = threading.Thread(target=lambda: outcome.setdefault("get", consumer.get_data()))
        getter.start()
        time.sleep(0.2)
        cluster.stop_owner()
        getter.join(30)
        assert not getter.is_alive()
        err = outcome["get"].unwrap_error()
        assert "owner" in err.message
        assert "owner" in producer.put_data({"a": 1}).unwrap_error().message
    finally:
        store.close()
