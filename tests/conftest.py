"""Shared fixtures: a real etcd for the session, and local clusters (master + owner).

- ``etcd_server`` (session): an embedded etcd on free loopback ports, tmp data dir.
- ``cluster`` (module): one master + owner with a 64 MiB pool in a tmp share path and a
  unique cluster name, shared by the tests of a module.
- ``fresh_cluster`` (function): the same, private to one test (for tests that kill things).
- ``cluster_factory`` (function): start more clusters with custom options.

Every process is started with ``die_with_parent`` (PR_SET_PDEATHSIG) and stopped by pid
at teardown; directories are removed even when a test fails.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator

import orjson
import pytest

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)

from fluxon import naming  # noqa: E402
from fluxon.etcd_client import connect  # noqa: E402
from fluxon.etcd_server import EtcdServer, free_port  # noqa: E402
from fluxon.runtime import start_kv_master_process, start_owner_kvclient_process  # noqa: E402
from fluxon.runtime.process_runner import stop_process  # noqa: E402

#: Default pool size of test clusters.
TEST_POOL_BYTES = 64 << 20
#: Seconds a test cluster may take to become ready (first start may compile kernels).
START_TIMEOUT_S = 180.0


def _tail(path: str, max_bytes: int = 4000) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - max_bytes))
            return f.read().decode("utf-8", errors="replace")
    except OSError:
        return "(no log)"


def _http_ok(url: str) -> bool:
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(url, timeout=1.0) as resp:
            return resp.status == 200
    except OSError:
        return False


class ClusterHandle:
    """A running local cluster: master (optional) + owner, sharing the session etcd.

    Attributes
    ----------
    cluster_name, share_mem_path : str
        Where the owner's pool lives.
    etcd_addresses : list[str]
        The etcd the cluster registers in.
    master_url : str or None
        Base URL of the master's HTTP server.
    owner_proc, master_proc : subprocess.Popen
        The service processes.
    owner_config, master_config : dict
        Their configs.
    base_dir : str
        Temp directory holding the share path and logs (removed by :meth:`stop`).
    """

    def __init__(
        self,
        etcd_addresses: list[str],
        *,
        pool_bytes: int = TEST_POOL_BYTES,
        with_master: bool = True,
        name_prefix: str = "test",
    ) -> None:
        self.base_dir = tempfile.mkdtemp(prefix="fluxon-cluster-")
        self.cluster_name = f"{name_prefix}-{uuid.uuid4().hex[:10]}"
        self.share_mem_path = os.path.join(self.base_dir, "shm")
        self.log_dir = os.path.join(self.base_dir, "logs")
        os.makedirs(self.log_dir)
        self.etcd_addresses = list(etcd_addresses)
        self.pool_bytes = pool_bytes
        self.owner_instance_key = f"owner-{self.cluster_name}"
        self.owner_config = {
            "instance_key": self.owner_instance_key,
            "fluxonkv_spec": {
                "cluster_name": self.cluster_name,
                "share_mem_path": self.share_mem_path,
                "etcd_addresses": self.etcd_addresses,
                "sub_cluster": "default",
            },
            "contribute_to_cluster_pool_size": {"dram": pool_bytes},
        }
        self.master_config: dict | None = None
        self.master_url: str | None = None
        if with_master:
            self.master_config = {
                "instance_key": f"master-{self.cluster_name}",
                "cluster_name": self.cluster_name,
                "port": free_port(),
                "etcd_endpoints": self.etcd_addresses,
                "log_dir": self.log_dir,
                # port 0: the master binds a free port and publishes its URL in etcd
                "master_ui": {"http_listen_addr": "127.0.0.1:0"},
            }
        self.master_proc = None
        self.owner_proc = None

    # ------------------------------------------------------------- paths
    @property
    def pool_file(self) -> str:
        """The owner's pool file."""
        return naming.pool_file(self.share_mem_path, self.cluster_name)

    @property
    def shared_json(self) -> str:
        """The owner's shared.json."""
        return naming.shared_json(self.share_mem_path, self.cluster_name)

    def log_path(self, label: str) -> str:
        """stdout/stderr capture of a service (``"owner"``, ``"master"``)."""
        return os.path.join(self.log_dir, f"{label}.out")

    # ------------------------------------------------------------- configs
    def client_config(self, instance_key: str) -> dict:
        """Config dict of an external (zero-contribution) client of this cluster."""
        return {
            "instance_key": instance_key,
            "fluxonkv_spec": {
                "cluster_name": self.cluster_name,
                "share_mem_path": self.share_mem_path,
            },
        }

    # ------------------------------------------------------------- lifecycle
    def start(self, timeout: float = START_TIMEOUT_S) -> ClusterHandle:
        """Start master (if configured) then owner; wait until both are ready."""
        try:
            if self.master_config is not None:
                self.master_proc = start_kv_master_process(
                    config=self.master_config, log_path=self.log_path("master")
                )
                self.wait_master(self.master_proc, timeout)
            self.start_owner(timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def wait_master(self, proc, timeout: float = START_TIMEOUT_S) -> str:
        """Wait until master ``proc`` registered in etcd and answers; sets :attr:`master_url`."""
        record: dict = {}

        def registered() -> bool:
            raw = session.get(naming.master_key(self.cluster_name))
            if raw is None:
                return False
            record.update(orjson.loads(raw))
            return record.get("pid") == proc.pid

        with connect(self.etcd_addresses) as session:
            self._wait(registered, proc, "master", timeout)
        self.master_url = record["url"]
        self._wait(lambda: _http_ok(self.master_url + "/healthz"), proc, "master", timeout)
        return self.master_url

    def start_owner(self, timeout: float = START_TIMEOUT_S):
        """(Re)start the owner and wait for its shared.json; returns the Popen."""
        self.owner_proc = start_owner_kvclient_process(
            config=self.owner_config, log_path=self.log_path("owner")
        )
        self._wait(self.owner_ready, self.owner_proc, "owner", timeout)
        return self.owner_proc

    def owner_ready(self) -> bool:
        """Whether the current owner process has published shared.json."""
        try:
            with open(self.shared_json, "rb") as f:
                data = orjson.loads(f.read())
        except (OSError, orjson.JSONDecodeError):
            return False
        return self.owner_proc is not None and data.get("owner_pid") == self.owner_proc.pid

    def _wait(self, ready: Callable[[], bool], proc, label: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not ready():
            if proc.poll() is not None:
                raise RuntimeError(
                    f"{label} exited with status {proc.returncode} while starting:\n"
                    f"{_tail(self.log_path(label))}"
                )
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"{label} not ready after {timeout:.0f} s:\n{_tail(self.log_path(label))}"
                )
            time.sleep(0.05)

    def stop_owner(self, timeout: float = 15.0) -> int | None:
        """Stop the owner (SIGTERM, then SIGKILL); returns its exit status."""
        proc, self.owner_proc = self.owner_proc, None
        if proc is None:
            return None
        return stop_process(proc, timeout, label="owner")

    def stop(self) -> None:
        """Stop owner then master and remove every file of the cluster (idempotent)."""
        self.stop_owner()
        proc, self.master_proc = self.master_proc, None
        if proc is not None:
            stop_process(proc, 15.0, label="master")
        shutil.rmtree(self.base_dir, ignore_errors=True)

    def __enter__(self) -> ClusterHandle:  # noqa: PYI034 - typing.Self needs Python 3.11
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


@pytest.fixture(scope="session")
def etcd_server(tmp_path_factory) -> Iterator[EtcdServer]:
    """A real etcd on free loopback ports for the whole session."""
    base = tmp_path_factory.mktemp("etcd")
    server = EtcdServer(
        str(base / "data"), free_port(), free_port(), log_path=str(base / "etcd.log")
    )
    server.start(timeout=60.0)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def etcd_addresses(etcd_server) -> list[str]:
    """``["127.0.0.1:port"]`` of the session etcd."""
    return [etcd_server.client_address]


@pytest.fixture
def cluster_factory(etcd_addresses) -> Iterator[Callable[..., ClusterHandle]]:
    """Start clusters with custom options; all are stopped at teardown.

    ``cluster_factory(pool_bytes=..., with_master=..., start=True)``
    """
    started: list[ClusterHandle] = []

    def make(*, start: bool = True, **kwargs) -> ClusterHandle:
        handle = ClusterHandle(etcd_addresses, **kwargs)
        started.append(handle)
        return handle.start() if start else handle

    try:
        yield make
    finally:
        for handle in reversed(started):
            handle.stop()


@pytest.fixture(scope="module")
def cluster(etcd_server) -> Iterator[ClusterHandle]:
    """A master + owner (64 MiB pool) shared by the tests of one module."""
    handle = ClusterHandle([etcd_server.client_address])
    try:
        yield handle.start()
    finally:
        handle.stop()


@pytest.fixture
def fresh_cluster(etcd_server) -> Iterator[ClusterHandle]:
    """A master + owner (64 MiB pool) private to one test: kill what you like."""
    handle = ClusterHandle([etcd_server.client_address])
    try:
        yield handle.start()
    finally:
        handle.stop()
