"""Master down: traffic continues; monitoring returns when the master restarts.

The master is not on the data path (binds talk to etcd and the pool, messages move
through shared memory), so killing it changes nothing for producers and consumers;
a restarted master takes over the master key of the dead one and serves the same
channels and members again.
"""

from __future__ import annotations

import json
import os
import signal
import urllib.request

import pytest
from conftest import wait_until
from fault_procs import ConsumerLog, ProducerLog

from fluxon.api_ext_chan import ChanRole, ChanType, new_or_bind_with_unique_key
from fluxon.runtime import start_kv_master_process

pytestmark = pytest.mark.timeout(180)


def _get(url: str):
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(url, timeout=10) as resp:
        return resp.read()


def _up(url: str) -> bool:
    try:
        return _get(url + "/healthz") is not None
    except OSError:
        return False


def test_traffic_continues_without_the_master(make_cluster, zygote, stores, key, tmp_path):
    cluster = make_cluster(with_master=True)
    stop = str(tmp_path / "stop")
    plog, clog = str(tmp_path / "p.log"), str(tmp_path / "c.log")
    common = dict(key=key, chan_type="mpmc", capacity=32, ttl=30, stop=stop)
    producer = zygote.spawn(
        "producer", cfg=cluster.client_config("m-p"), log=plog, label=1, pace=0.001, **common
    )
    consumer = zygote.spawn("consumer", cfg=cluster.client_config("m-c"), log=clog, **common)
    wait_until(lambda: len(ConsumerLog(clog).delivered) > 100, 60, "traffic to start")
    old_url = cluster.master_url
    assert key in _get(old_url + "/api/channels").decode()

    proc, cluster.master_proc = cluster.master_proc, None
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(10)
    assert not _up(old_url)
    before = len(ConsumerLog(clog).delivered)
    wait_until(lambda: len(ConsumerLog(clog).delivered) > before + 500, 30, "traffic")

    # A store and a bind work without the master.
    store = stores(cluster)
    handle = new_or_bind_with_unique_key(store, {}, key, ChanType.MPMC, ChanRole.PRODUCER)
    assert handle.unwrap().put_data({"p": 99, "seq": 0}).unwrap()

    cluster.master_proc = start_kv_master_process(
        config=cluster.master_config, log_path=cluster.log_path("master")
    )
    url = cluster.wait_master(cluster.master_proc)
    channels = json.loads(_get(url + "/api/channels"))
    assert key in json.dumps(channels)
    members = json.dumps(json.loads(_get(url + "/api/members")))
    assert "m-p" in members and "m-c" in members
    assert b"fluxon" in _get(url + "/metrics")

    open(stop, "w").close()
    assert zygote.wait(producer, 60) == 0 and zygote.wait(consumer, 60) == 0
    acked = {(1, s) for s in ProducerLog(plog).acked}
    got = ConsumerLog(clog).delivered
    assert len(got) == len(set(got))
    assert acked <= set(got) <= acked | {(99, 0)}
