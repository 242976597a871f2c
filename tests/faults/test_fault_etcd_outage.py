"""etcd outage: etcd stopped (or frozen) while messages flow.

Defined behaviour (README "Guarantees"):

* the hot path needs no etcd: producers and consumers already bound keep moving
  messages, none lost, none duplicated, per-producer order kept;
* a bind during the outage fails with an error naming etcd (``EtcdError``) within a
  bounded time (each etcd call is bounded by the session timeout, 3 s); ``new_store``
  fails with ``EtcdError``; ``close()`` completes locally and returns Ok (the etcd
  records it could not delete expire with their leases);
* when etcd returns, lease keepalives resume; a channel whose lease expired meanwhile
  (etcd frozen longer than ``ttl_seconds``) is published again by its members;
* nothing is reaped wrongly because of the outage: the channel keeps its id, its
  pool entry and its undelivered messages, and new binders get the same channel.
"""

from __future__ import annotations

import os
import signal
import threading
import time

import pytest
from conftest import wait_until
from fault_procs import ConsumerLog, ProducerLog

from fluxon import naming
from fluxon.api_error import ChanBindError, EtcdError
from fluxon.api_ext_chan import ChanRole, ChanType, new_or_bind_with_unique_key
from fluxon.kvclient import new_store
from fluxon_kernels import channel as kchan

pytestmark = pytest.mark.timeout(240)

#: Channel TTL; the freeze lasts longer than this.
TTL_S = 4
#: How long etcd stays away.
OUTAGE_S = 6.0


def _in_thread(fn, timeout: float):
    """Run ``fn`` in a thread; fail the test if it does not return within ``timeout``."""
    out: dict = {}

    def run():
        t0 = time.monotonic()
        out["value"] = fn()
        out["seconds"] = time.monotonic() - t0

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(timeout)
    assert not thread.is_alive(), f"call still blocked after {timeout} s"
    return out["value"], out["seconds"]


def _etcd_named(err) -> bool:
    # EtcdError itself, or (until the facade passes it through unchanged) the bind
    # error that wraps it.
    return isinstance(err, EtcdError) or (
        isinstance(err, ChanBindError) and "etcd" in err.message.lower()
    )


def _delivered_count(path: str) -> int:
    return len(ConsumerLog(path).delivered)


@pytest.mark.parametrize("mode", ["stop", "freeze"])
def test_hot_path_survives_an_etcd_outage(
    private_etcd, make_cluster, zygote, stores, key, tmp_path, mode
):
    cluster = make_cluster(etcd=[private_etcd.client_address], with_master=True)
    store = stores(cluster, "etcd-test")
    chan_cfg = {"capacity": 16, "ttl_seconds": TTL_S}
    keeper = new_or_bind_with_unique_key(
        store, chan_cfg, key, ChanType.MPMC, ChanRole.PRODUCER
    ).unwrap()
    chan_id, entry = int(keeper.get_chan_id()), keeper._c
    stop = str(tmp_path / "stop")
    plogs, clogs, pids = [], [], []
    for i in range(2):
        plogs.append(str(tmp_path / f"p{i}.log"))
        pids.append(
            zygote.spawn(
                "producer",
                cfg=cluster.client_config(f"etcd-p{i}"),
                key=key,
                chan_type="mpmc",
                capacity=16,
                ttl=TTL_S,
                log=plogs[-1],
                label=i + 1,
                pads=[0, 500],
                pace=0.002,
                stop=stop,
            )
        )
    clogs.append(str(tmp_path / "c0.log"))
    consumer_pid = zygote.spawn(
        "consumer",
        cfg=cluster.client_config("etcd-c0"),
        key=key,
        chan_type="mpmc",
        capacity=16,
        ttl=TTL_S,
        log=clogs[0],
        max_batch=4,
        max_prefetch=4,
        stop=stop,
    )
    pids.append(consumer_pid)
    wait_until(lambda: _delivered_count(clogs[0]) > 100, 60, "traffic to start")
    spare = new_or_bind_with_unique_key(
        store, {}, key, ChanType.MPMC, ChanRole.CONSUMER
    ).unwrap()  # closed during the outage

    # ---- the outage
    if mode == "stop":
        private_etcd.stop()
    else:
        os.kill(private_etcd.pid, signal.SIGSTOP)
    try:
        t_down = time.monotonic()
        before = _delivered_count(clogs[0])
        res, _ = _in_thread(
            lambda: new_or_bind_with_unique_key(
                store, chan_cfg, key + "-new", ChanType.MPMC, ChanRole.PRODUCER
            ),
            60,
        )
        assert _etcd_named(res.unwrap_error()), res.unwrap_error()
        res, _ = _in_thread(lambda: new_store(cluster.client_config("etcd-late")), 60)
        assert isinstance(res.unwrap_error(), EtcdError), res.unwrap_error()
        res, _ = _in_thread(spare.close, 60)
        assert res.is_ok() and spare.is_closed()
        # Messages keep flowing between the processes already bound.
        wait_until(
            lambda: _delivered_count(clogs[0]) > before + 200, 30, "traffic during the outage"
        )
        time.sleep(max(0.0, OUTAGE_S - (time.monotonic() - t_down)))
        during = _delivered_count(clogs[0]) - before
    finally:
        if mode == "stop":
            private_etcd.start(timeout=60)
        else:
            os.kill(private_etcd.pid, signal.SIGCONT)

    # ---- etcd is back: leases resume, nothing was reaped
    ukey = naming.chan_unique_key(cluster.cluster_name, key)
    etcd = store._etcd
    wait_until(lambda: _get_quietly(etcd, ukey) == str(chan_id).encode(), 30, "the mapping")
    assert kchan.chan_is_active(store.pool.w, entry, chan_id)
    member = naming.member_key(cluster.cluster_name, "etcd-test")
    wait_until(lambda: _get_quietly(etcd, member) is not None, 30, "the store's member record")
    again = new_or_bind_with_unique_key(store, {}, key, ChanType.MPMC, ChanRole.CONSUMER)
    assert int(again.unwrap().get_chan_id()) == chan_id  # the same channel, not a new one
    again.unwrap().close()
    wait_until(lambda: new_store(cluster.client_config("etcd-after")).is_ok(), 30, "new_store")

    # ---- every acknowledged message delivered exactly once, in order per producer
    open(stop, "w").close()
    for pid in pids:
        assert zygote.wait(pid, 60) == 0
    acked = {(i + 1, s) for i, path in enumerate(plogs) for s in ProducerLog(path).acked}
    clog = ConsumerLog(clogs[0])
    assert not clog.errors and not clog.bad and clog.closed
    assert len(clog.delivered) == len(set(clog.delivered))
    assert set(clog.delivered) == acked
    for label in (1, 2):
        seqs = [s for p, s in clog.delivered if p == label]
        assert seqs == sorted(seqs)
    assert during > 200
    keeper.close()


def _get_quietly(etcd, key):
    try:
        return etcd.get(key)
    except EtcdError:
        return None
