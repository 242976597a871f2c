"""The local service plane as one object: etcd (embedded if absent) -> master -> owner.

Used by ``python -m fluxon up``, ``examples/start_master_owner.py``, the demo and the
benchmarks.
"""

from __future__ import annotations

import os
import socket
import time
import urllib.error
import urllib.request
from typing import Any

import orjson

from .. import naming
from ..procinfo import process_start_time

DEFAULT_WORKDIR = ".fluxon"
DEFAULT_ETCD = "127.0.0.1:2379"
DEFAULT_CLUSTER = "demo-kv-cluster"
DEFAULT_SHARE_MEM_PATH = "/dev/shm/fluxon_kv_demo"
DEFAULT_DRAM = "1GB"
DEFAULT_MASTER_PORT = 31000
DEFAULT_UI = "127.0.0.1:18080"


def _say(text: str) -> None:
    print(text, flush=True)


def _proc_entry(pid: int) -> dict:
    return {"pid": pid, "start_time": process_start_time(pid)}


def _http_ok(url: str, timeout: float = 1.0) -> bool:
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(url, timeout=timeout) as resp:
            return resp.status == 200
    except (urllib.error.URLError, OSError, ValueError):
        return False


class ServicePlane:
    """etcd (maybe embedded) + master + owner, started in order; used by ``up`` and the example.

    Parameters
    ----------
    workdir : str
        Holds configs, logs and the embedded etcd's data.
    etcd : str
        etcd client address; an embedded etcd is started there if nothing answers.
    cluster_name, share_mem_path : str
        Where the owner's pool lives: ``{share_mem_path}/{cluster_name}/``.
    dram : int or str
        Owner pool size (``"1GB"``, ``"64MB"``, or bytes).
    master_port : int
        The master's ``port`` config value.
    ui : str
        ``host:port`` of the master's HTTP server.
    with_master : bool
        Start the master (default) or only the owner.
    detached : bool
        Children outlive this process (``up``) instead of dying with it.
    owner_instance_key : str, optional
        Default ``owner-{hostname}``.
    """

    def __init__(
        self,
        *,
        workdir: str,
        etcd: str = DEFAULT_ETCD,
        cluster_name: str = DEFAULT_CLUSTER,
        share_mem_path: str = DEFAULT_SHARE_MEM_PATH,
        dram: int | str = DEFAULT_DRAM,
        master_port: int = DEFAULT_MASTER_PORT,
        ui: str = DEFAULT_UI,
        with_master: bool = True,
        detached: bool = False,
        owner_instance_key: str | None = None,
        sub_cluster: str = "default",
    ) -> None:
        self.workdir = os.path.abspath(workdir)
        self.etcd = etcd
        self.cluster_name = cluster_name
        self.share_mem_path = os.path.abspath(share_mem_path)
        self.dram = dram
        self.master_port = int(master_port)
        self.ui = ui
        self.with_master = with_master
        self.detached = detached
        self.owner_instance_key = owner_instance_key or f"owner-{socket.gethostname()}"
        self.sub_cluster = sub_cluster
        self.log_dir = os.path.join(self.workdir, "logs")
        self.etcd_server = None
        self._master_url: str | None = None
        self.master_proc = None
        self.owner_proc = None

    # configs ---------------------------------------------------------------
    def master_config(self) -> dict:
        """Config dict of the master."""
        return {
            "instance_key": f"master-{self.cluster_name}",
            "cluster_name": self.cluster_name,
            "port": self.master_port,
            "etcd_endpoints": [self.etcd],
            "log_dir": self.log_dir,
            "master_ui": {"http_listen_addr": self.ui},
        }

    def owner_config(self) -> dict:
        """Config dict of the owner (a FluxonKvClientConfig with a DRAM contribution)."""
        return {
            "instance_key": self.owner_instance_key,
            "fluxonkv_spec": {
                "cluster_name": self.cluster_name,
                "share_mem_path": self.share_mem_path,
                "etcd_addresses": [self.etcd],
                "sub_cluster": self.sub_cluster,
            },
            "contribute_to_cluster_pool_size": {"dram": self.dram},
        }

    @property
    def master_url(self) -> str:
        """Base URL of the master's monitoring server (as it registered it, once started)."""
        if self._master_url:
            return self._master_url
        host, _, port = self.ui.rpartition(":")
        if host in ("", "0.0.0.0", "::"):
            host = "127.0.0.1"
        return f"http://{host}:{port}"

    def _master_registered(self, session) -> bool:
        """Whether our master registered in etcd; records the URL it serves (port 0 resolved)."""
        raw = session.get(naming.master_key(self.cluster_name))
        if raw is None:
            return False
        record = orjson.loads(raw)
        if record.get("pid") != self.master_proc.pid:
            return False
        self._master_url = record.get("url")
        return _http_ok(self.master_url + "/healthz")

    # start -------------------------------------------------------------------
    def start(self, timeout: float = 60.0, log=_say) -> None:
        """Start etcd (if needed), master, owner; wait until the owner is ready.

        Raises
        ------
        RuntimeError
            If a service fails to start (everything started so far is stopped).
        """
        from ..etcd_server import EtcdServer, etcd_reachable, free_port, split_address
        from ..runtime import start_kv_master_process, start_owner_kvclient_process

        os.makedirs(self.log_dir, exist_ok=True)
        try:
            if etcd_reachable(self.etcd, timeout=1.0):
                log(f"etcd: using the server at {self.etcd}")
            else:
                host, port = split_address(self.etcd)
                self.etcd_server = EtcdServer(
                    os.path.join(self.workdir, "etcd-data"),
                    port,
                    free_port(host),
                    host=host,
                    die_with_parent=not self.detached,
                    log_path=os.path.join(self.log_dir, "etcd.log"),
                )
                self.etcd_server.start(timeout=30.0)
                log(f"etcd: started an embedded server at {self.etcd} (pid {self.etcd_server.pid})")
            if self.with_master:
                self.master_proc = start_kv_master_process(
                    workdir=self.workdir,
                    config=self.master_config(),
                    log_path=os.path.join(self.log_dir, "master.out"),
                    die_with_parent=not self.detached,
                )
                from ..etcd_client import connect

                with connect([self.etcd]) as session:
                    self._wait(
                        lambda: self._master_registered(session),
                        self.master_proc,
                        "master",
                        timeout,
                        self._logs("master"),
                    )
                log(
                    f"master: running (pid {self.master_proc.pid}), monitoring at {self.master_url}"
                )
            self.owner_proc = start_owner_kvclient_process(
                workdir=self.workdir,
                config=self.owner_config(),
                log_path=os.path.join(self.log_dir, "owner.out"),
                die_with_parent=not self.detached,
            )
            self._wait(
                self._owner_ready,
                self.owner_proc,
                "owner",
                timeout,
                self._logs("owner"),
            )
            log(
                f"owner: running (pid {self.owner_proc.pid}), pool "
                f"{naming.pool_file(self.share_mem_path, self.cluster_name)}"
            )
        except BaseException:
            self.stop()
            raise

    def _owner_ready(self) -> bool:
        try:
            with open(naming.shared_json(self.share_mem_path, self.cluster_name), "rb") as f:
                data = orjson.loads(f.read())
        except (OSError, orjson.JSONDecodeError):
            return False
        return isinstance(data, dict) and data.get("owner_pid") == self.owner_proc.pid

    def _logs(self, service: str) -> list[str]:
        """A service's console output and its own log file."""
        return [
            os.path.join(self.log_dir, f"{service}.out"),
            os.path.join(self.log_dir, f"{service}-{self.cluster_name}.log"),
        ]

    @staticmethod
    def _wait(ready, proc, label: str, timeout: float, log_paths: list[str]) -> None:
        deadline = time.monotonic() + timeout
        while not ready():
            code = proc.poll()
            if code is None and time.monotonic() < deadline:
                time.sleep(0.05)
                continue
            what = (
                f"exited with status {code}"
                if code is not None
                else f"not ready after {timeout:.0f} s"
            )
            logs = "\n".join(f"--- {os.path.basename(p)}:\n{_tail(p)}" for p in log_paths)
            raise RuntimeError(f"{label} {what} while starting:\n{logs}")

    # record / supervise / stop ------------------------------------------------
    def record(self) -> dict:
        """What ``fluxon-up.json`` holds."""
        etcd_entry: dict[str, Any] = {
            "address": self.etcd,
            "embedded": self.etcd_server is not None,
        }
        if self.etcd_server is not None:
            etcd_entry.update(_proc_entry(self.etcd_server.pid))
            etcd_entry["data_dir"] = self.etcd_server.data_dir
        data: dict[str, Any] = {
            "version": 1,
            "workdir": self.workdir,
            "cluster_name": self.cluster_name,
            "share_mem_path": self.share_mem_path,
            "etcd": etcd_entry,
            "owner": {
                **_proc_entry(self.owner_proc.pid),
                "instance_key": self.owner_instance_key,
                "pool_file": naming.pool_file(self.share_mem_path, self.cluster_name),
                "shared_json": naming.shared_json(self.share_mem_path, self.cluster_name),
            },
            "started_at": time.time(),
        }
        if self.master_proc is not None:
            data["master"] = {
                **_proc_entry(self.master_proc.pid),
                "url": self.master_url,
                "port": self.master_port,
            }
        return data

    def children(self) -> list:
        """The started processes as ManagedSubprocess, in start order."""
        from ..runtime import ManagedSubprocess

        out = []
        if self.etcd_server is not None and self.etcd_server.proc is not None:
            out.append(ManagedSubprocess("etcd", self.etcd_server.proc))
        if self.master_proc is not None:
            out.append(ManagedSubprocess("master", self.master_proc))
        if self.owner_proc is not None:
            out.append(ManagedSubprocess("owner", self.owner_proc))
        return out

    def stop(self, timeout: float = 10.0) -> None:
        """Stop owner, master, etcd (reverse order), by pid; idempotent."""
        from ..runtime.process_runner import stop_process

        for label, proc in (("owner", self.owner_proc), ("master", self.master_proc)):
            if proc is not None:
                stop_process(proc, timeout, label=label)
        if self.etcd_server is not None:
            self.etcd_server.stop(timeout)


def _tail(path: str, max_bytes: int = 3000) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - max_bytes))
            return f.read().decode("utf-8", errors="replace")
    except OSError:
        return "(no log)"
