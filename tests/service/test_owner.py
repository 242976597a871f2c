"""The owner process: pool + shared.json + etcd registration, refusal, shutdown, reaping."""

from __future__ import annotations

import os
import signal
import stat
import subprocess
import sys
import textwrap
import time

import orjson
import pytest

import fluxon_kernels
from fluxon import naming
from fluxon.etcd_client import connect
from fluxon.etcd_server import free_port
from fluxon.procinfo import is_process_alive, process_start_time
from fluxon.runtime import start_owner_kvclient_process
from fluxon.service.owner import EXIT_ALREADY_OWNED, EXIT_CONFIG


def _mode(path: str) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def _etcd_record(session, key: str):
    raw = session.get(key)
    return None if raw is None else orjson.loads(raw)


def _wait_for(predicate, timeout: float = 30.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


@pytest.fixture
def session(etcd_server):
    s = connect([etcd_server.client_address])
    yield s
    s.close()


def test_owner_creates_pool_and_registers(cluster_factory, session):
    c = cluster_factory(with_master=False)
    assert _mode(c.pool_file) == 0o600
    assert os.path.getsize(c.pool_file) == c.pool_bytes
    assert _mode(c.shared_json) == 0o600
    with open(c.shared_json, "rb") as f:
        shared = orjson.loads(f.read())
    pid = c.owner_proc.pid
    assert shared["owner_id"] == c.owner_instance_key
    assert shared["owner_pid"] == pid
    assert shared["owner_start_time"] == process_start_time(pid)
    assert shared["segment_len"] == c.pool_bytes
    assert shared["pool_file"] == c.pool_file
    assert shared["cluster_name"] == c.cluster_name
    assert shared["share_mem_path"] == c.share_mem_path
    assert shared["etcd_addresses"] == c.etcd_addresses
    assert shared["sub_cluster"] == "default"
    assert shared["layout_version"] == fluxon_kernels.LAYOUT_VERSION
    assert isinstance(shared["write_ts"], int) and isinstance(shared["node_start_time"], int)
    assert "shared_file_path" not in shared  # retired field of the reference

    owner = _etcd_record(session, naming.owner_key(c.cluster_name, c.owner_instance_key))
    assert owner["owner_id"] == c.owner_instance_key and owner["pid"] == pid
    assert owner["pool_file"] == c.pool_file and owner["segment_len"] == c.pool_bytes
    member = _etcd_record(session, naming.member_key(c.cluster_name, c.owner_instance_key))
    assert member["kind"] == "owner" and member["pid"] == pid


def test_sigterm_removes_everything(cluster_factory, session):
    c = cluster_factory(with_master=False)
    pool_dir = naming.pool_dir(c.share_mem_path, c.cluster_name)
    assert c.stop_owner() == 0
    assert not os.path.exists(c.pool_file)
    assert not os.path.exists(c.shared_json)
    assert not os.path.exists(pool_dir)
    assert session.get_prefix(naming.cluster_prefix(c.cluster_name)) == []


def test_second_owner_for_the_same_dir_is_refused(cluster_factory):
    c = cluster_factory(with_master=False)
    first_pid = c.owner_proc.pid
    other = dict(c.owner_config, instance_key="another-owner")
    second = start_owner_kvclient_process(config=other, log_path=c.log_path("second"))
    assert second.wait(60) == EXIT_ALREADY_OWNED
    with open(c.log_path("second")) as f:
        assert "another live owner already owns" in f.read()
    # the first owner and its files are untouched
    assert c.owner_proc.poll() is None
    with open(c.shared_json, "rb") as f:
        assert orjson.loads(f.read())["owner_pid"] == first_pid
    assert os.path.exists(c.pool_file)


def test_owner_with_unreachable_etcd_fails_cleanly(cluster_factory):
    c = cluster_factory(with_master=False, start=False)
    address = f"127.0.0.1:{free_port()}"
    cfg = dict(c.owner_config)
    cfg["fluxonkv_spec"] = dict(cfg["fluxonkv_spec"], etcd_addresses=[address])
    proc = start_owner_kvclient_process(config=cfg, log_path=c.log_path("owner"))
    assert proc.wait(60) not in (0, None)
    with open(c.log_path("owner")) as f:
        text = f.read()
    assert "EtcdError" in text and address in text
    assert not os.path.exists(c.share_mem_path)  # it removed what it created


def test_owner_with_bad_config_names_the_key(cluster_factory):
    c = cluster_factory(with_master=False, start=False)
    cfg = dict(c.owner_config, contribute_to_cluster_pool_size={"dram": "lots"})
    proc = start_owner_kvclient_process(config=cfg, log_path=c.log_path("owner"))
    assert proc.wait(60) == EXIT_CONFIG
    with open(c.log_path("owner")) as f:
        assert "contribute_to_cluster_pool_size.dram" in f.read()


def test_owner_takes_over_after_a_killed_owner(cluster_factory, session):
    c = cluster_factory(with_master=False)
    old = c.owner_proc
    os.kill(old.pid, signal.SIGKILL)
    old.wait(10)
    assert os.path.exists(c.shared_json)  # left behind by the killed owner
    c.start_owner()  # a new owner must not be refused by the dead one's leftovers
    assert c.owner_proc.pid != old.pid
    member = _etcd_record(session, naming.member_key(c.cluster_name, c.owner_instance_key))
    assert member["pid"] == c.owner_proc.pid


_VICTIM = textwrap.dedent(
    """
    import sys, time, orjson
    from fluxon import naming
    from fluxon.etcd_client import connect
    from fluxon.pool import Pool
    from fluxon.procinfo import process_start_time
    from fluxon_kernels.layout.member import KIND_EXTERNAL
    import os
    share, cluster, etcd, name = sys.argv[1:5]
    pool = Pool.attach(share, cluster)
    pool.register_member(KIND_EXTERNAL, name)
    s = connect([etcd])
    lease = s.grant_lease(60)
    rec = {"instance_key": name, "pid": os.getpid(), "start_time": process_start_time(os.getpid())}
    s.put(naming.member_key(cluster, name), orjson.dumps(rec), lease=lease)
    print("ready", flush=True)
    time.sleep(600)
    """
)


def test_owner_reaps_a_killed_member(cluster_factory, session):
    c = cluster_factory(with_master=False)
    name = "victim"
    victim = subprocess.Popen(
        [
            sys.executable,
            "-c",
            _VICTIM,
            c.share_mem_path,
            c.cluster_name,
            c.etcd_addresses[0],
            name,
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert victim.stdout.readline().strip() == "ready"
        key = naming.member_key(c.cluster_name, name)
        assert _etcd_record(session, key)["pid"] == victim.pid
        from fluxon.pool import Pool

        pool = Pool.attach(c.share_mem_path, c.cluster_name)
        try:
            assert [m.name for m in pool.members()] == [name]
            os.kill(victim.pid, signal.SIGKILL)
            victim.wait(10)
            _wait_for(lambda: pool.members() == [], what="the owner to free the member slot")
        finally:
            pool.close()
        # its etcd member record goes too (it had a 60 s lease: the owner deleted it)
        _wait_for(lambda: session.get(key) is None, what="the member key to be deleted")
        with open(c.log_path("owner")) as f:
            assert "reaped dead member 'victim'" in f.read()
    finally:
        if victim.poll() is None:
            victim.kill()
            victim.wait()
    assert c.owner_proc.poll() is None
    assert is_process_alive(c.owner_proc.pid)


def _grpc_threads(pid: int) -> list[str]:
    """Names of the gRPC core threads of process ``pid`` (event engine, timer manager)."""
    names = []
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid}/comm") as f:
                name = f.read().strip()
        except OSError:
            continue
        if name.startswith(("event_engine", "grpc_global_tim")):
            names.append(name)
    return names


def test_idle_owner_and_master_close_their_grpc_channels(cluster_factory):
    """With nothing to tell etcd, the owner and the master close their gRPC channels, and
    gRPC's threads (which wake about 25 times a second) end; leases stay alive."""
    c = cluster_factory()
    with connect(c.etcd_addresses) as etcd:
        etcd.get("/any")
        assert _grpc_threads(os.getpid())  # the thread names are right: the wait can fail
    pids = {"owner": c.owner_proc.pid, "master": c.master_proc.pid}
    deadline = time.monotonic() + 40
    while any(_grpc_threads(pid) for pid in pids.values()):
        assert time.monotonic() < deadline, {k: _grpc_threads(p) for k, p in pids.items()}
        time.sleep(0.2)
    with connect(c.etcd_addresses) as etcd:
        # their records (leased) are still there after more than one lease TTL
        time.sleep(12)
        assert etcd.get(naming.owner_key(c.cluster_name, c.owner_instance_key)) is not None
        assert etcd.get(naming.master_key(c.cluster_name)) is not None
    assert all(is_process_alive(pid) for pid in pids.values())
