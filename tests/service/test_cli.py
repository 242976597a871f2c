"""``python -m fluxon up|status|down`` and ``examples/start_master_owner.py`` end to end."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid

import orjson
import pytest

from fluxon import naming
from fluxon.etcd_server import etcd_reachable, free_port
from fluxon.procinfo import is_process_alive

_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _fluxon(*args: str, timeout: float = 180) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "fluxon", *args],
        cwd=_ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def _kill_recorded(workdir: str) -> None:
    """Teardown safety net: kill what a failed test left running (pid + start time checked)."""
    try:
        with open(os.path.join(workdir, "fluxon-up.json"), "rb") as f:
            record = orjson.loads(f.read())
    except (OSError, orjson.JSONDecodeError):
        return
    for name in ("owner", "master", "etcd"):
        entry = record.get(name) or {}
        pid = entry.get("pid")
        if isinstance(pid, int) and is_process_alive(pid, entry.get("start_time")):
            os.kill(pid, signal.SIGKILL)


def _wait_dead(entry: dict, timeout: float = 20.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not is_process_alive(entry["pid"], entry.get("start_time")):
            return True
        time.sleep(0.05)
    return False


@pytest.mark.parametrize("embedded_etcd", [True, False], ids=["embedded-etcd", "external-etcd"])
def test_up_status_down(tmp_path, etcd_server, embedded_etcd):
    workdir = str(tmp_path / "work")
    share = str(tmp_path / "shm")
    cluster = f"cli-{uuid.uuid4().hex[:8]}"
    etcd = f"127.0.0.1:{free_port()}" if embedded_etcd else etcd_server.client_address
    # an explicit UI port, or port 0 (the master picks one and registers its URL)
    ui = f"127.0.0.1:{free_port()}" if embedded_etcd else "127.0.0.1:0"
    try:
        up = _fluxon(
            "up", "--workdir", workdir, "--etcd", etcd, "--cluster", cluster,
            "--share-mem-path", share, "--dram", "64MB",
            "--master-port", str(free_port()), "--ui", ui,
        )  # fmt: skip
        assert up.returncode == 0, up.stdout + up.stderr
        assert "fluxon is up" in up.stdout
        with open(os.path.join(workdir, "fluxon-up.json"), "rb") as f:
            record = orjson.loads(f.read())
        assert record["etcd"]["embedded"] is embedded_etcd
        for name in ("owner", "master") + (("etcd",) if embedded_etcd else ()):
            assert is_process_alive(record[name]["pid"], record[name]["start_time"]), name
        pool_file = naming.pool_file(share, cluster)
        assert os.path.exists(pool_file) and os.path.exists(naming.shared_json(share, cluster))
        url = record["master"]["url"]
        assert url == f"http://{ui}" if embedded_etcd else not url.endswith(":0")
        assert f"monitoring: {url}" in up.stdout

        # `up` returned; the services keep running without it
        status = _fluxon("status", "--workdir", workdir)
        assert status.returncode == 0, status.stderr
        assert record["owner"]["instance_key"] in status.stdout
        assert f"master: {url}" in status.stdout
        status_json = _fluxon("status", "--workdir", workdir, "--json")
        assert status_json.returncode == 0, status_json.stderr
        view = orjson.loads(status_json.stdout)
        assert [o["owner_id"] for o in view["owners"]] == [record["owner"]["instance_key"]]
        assert view["master_url"] == url

        # a second `up` notices the running services
        again = _fluxon("up", "--workdir", workdir)
        assert again.returncode == 0 and "already up" in again.stdout

        down = _fluxon("down", "--workdir", workdir)
        assert down.returncode == 0, down.stdout + down.stderr
        for name in ("owner", "master") + (("etcd",) if embedded_etcd else ()):
            assert _wait_dead(record[name]), name
        assert not os.path.exists(pool_file)
        assert not os.path.exists(naming.pool_dir(share, cluster))
        assert not os.path.exists(os.path.join(workdir, "fluxon-up.json"))
        if embedded_etcd:
            assert not etcd_reachable(etcd, timeout=0.5)
            assert not os.path.exists(os.path.join(workdir, "etcd-data"))
        else:
            assert etcd_reachable(etcd)  # not ours: left running

        # down again: nothing to do
        assert _fluxon("down", "--workdir", workdir).returncode == 0
    finally:
        _kill_recorded(workdir)


def test_status_without_etcd_fails_clearly(tmp_path):
    etcd = f"127.0.0.1:{free_port()}"
    status = _fluxon("status", "--workdir", str(tmp_path), "--etcd", etcd, "--cluster", "nope")
    assert status.returncode == 1
    assert "EtcdError" in status.stderr and etcd in status.stderr


def test_down_after_a_killed_owner_cleans_its_files(tmp_path, etcd_server):
    workdir = str(tmp_path / "work")
    share = str(tmp_path / "shm")
    cluster = f"cli-{uuid.uuid4().hex[:8]}"
    try:
        up = _fluxon(
            "up", "--workdir", workdir, "--etcd", etcd_server.client_address, "--cluster", cluster,
            "--share-mem-path", share, "--dram", "64MB", "--without-master",
        )  # fmt: skip
        assert up.returncode == 0, up.stdout + up.stderr
        with open(os.path.join(workdir, "fluxon-up.json"), "rb") as f:
            record = orjson.loads(f.read())
        assert "master" not in record
        os.kill(record["owner"]["pid"], signal.SIGKILL)
        assert _wait_dead(record["owner"])
        assert os.path.exists(naming.pool_file(share, cluster))  # the killed owner left it
        down = _fluxon("down", "--workdir", workdir)
        assert down.returncode == 0, down.stderr
        assert not os.path.exists(naming.pool_file(share, cluster))
        assert not os.path.exists(naming.shared_json(share, cluster))
    finally:
        _kill_recorded(workdir)


def test_start_master_owner_example(tmp_path):
    workdir = str(tmp_path / "work")
    share = str(tmp_path / "shm")
    cluster = f"ex-{uuid.uuid4().hex[:8]}"
    etcd = f"127.0.0.1:{free_port()}"  # nothing there: the example starts an embedded etcd
    ui_port = free_port()
    log_path = tmp_path / "example.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [
                sys.executable, os.path.join(_ROOT, "examples", "start_master_owner.py"),
                "--etcd", etcd, "--cluster", cluster, "--share-mem-path", share, "--dram", "64MB",
                "--master-port", str(free_port()), "--ui", f"127.0.0.1:{ui_port}",
                "--workdir", workdir,
            ],
            cwd=_ROOT, stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip
    try:
        deadline = time.monotonic() + 180
        while "service plane ready" not in log_path.read_text():
            assert proc.poll() is None, log_path.read_text()
            assert time.monotonic() < deadline, log_path.read_text()
            time.sleep(0.05)
        with open(naming.shared_json(share, cluster), "rb") as f:
            owner_pid = orjson.loads(f.read())["owner_pid"]
        assert etcd_reachable(etcd)
        proc.send_signal(signal.SIGINT)
        assert proc.wait(60) == 130, log_path.read_text()
        assert not is_process_alive(owner_pid)
        assert not os.path.exists(naming.pool_file(share, cluster))
        assert not os.path.exists(naming.pool_dir(share, cluster))
        assert not etcd_reachable(etcd, timeout=0.5)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
