"""``python -m fluxon up|down|status``: the local service plane in one command.

``up`` starts, in order, an embedded etcd (only when nothing answers at ``--etcd``), the
master and the owner, waits until the owner has published ``shared.json``, records
what it started in ``{workdir}/fluxon-up.json`` and returns, leaving the services
running (or, with ``--foreground``, stays and stops them all on Ctrl-C). ``down`` stops
what ``fluxon-up.json`` lists, by pid, after checking each pid's start time, and
removes what a killed owner may have left. ``status`` prints the cluster's owners and
members as registered in etcd, and the master URL.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import socket
import sys
import time
import urllib.error
import urllib.request
from typing import Any

import orjson

from . import naming
from .procinfo import is_process_alive, process_start_time

UP_FILE = "fluxon-up.json"
DEFAULT_WORKDIR = ".fluxon"
DEFAULT_ETCD = "127.0.0.1:2379"
DEFAULT_CLUSTER = "demo-kv-cluster"
DEFAULT_SHARE_MEM_PATH = "/dev/shm/fluxon_kv_demo"
DEFAULT_DRAM = "1GB"
DEFAULT_MASTER_PORT = 31000
DEFAULT_UI = "127.0.0.1:18080"


def _say(text: str) -> None:
    print(text, flush=True)


def _fail(text: str) -> int:
    print(f"fluxon: {text}", file=sys.stderr, flush=True)
    return 1


def _up_path(workdir: str) -> str:
    return os.path.join(workdir, UP_FILE)


def _read_up(workdir: str) -> dict | None:
    try:
        with open(_up_path(workdir), "rb") as f:
            data = orjson.loads(f.read())
    except (OSError, orjson.JSONDecodeError):
        return None
    return data if isinstance(data, dict) else None


def _proc_entry(pid: int) -> dict:
    return {"pid": pid, "start_time": process_start_time(pid)}


def _entry_alive(entry: dict | None) -> bool:
    if not entry or not isinstance(entry.get("pid"), int):
        return False
    return is_process_alive(entry["pid"], entry.get("start_time"))


def _http_ok(url: str, timeout: float = 1.0) -> bool:
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(url, timeout=timeout) as resp:
            return resp.status == 200
    except (urllib.error.URLError, OSError, ValueError):
        return False


# ----------------------------------------------------------------------------- service plane
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
        from .etcd_server import EtcdServer, etcd_reachable, free_port, split_address
        from .runtime import start_kv_master_process, start_owner_kvclient_process

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
                from .etcd_client import connect

                with connect([self.etcd]) as session:
                    self._wait(
                        lambda: self._master_registered(session),
                        self.master_proc,
                        "master",
                        timeout,
                        os.path.join(self.log_dir, "master.out"),
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
                os.path.join(self.log_dir, "owner.out"),
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

    @staticmethod
    def _wait(ready, proc, label: str, timeout: float, log_path: str) -> None:
        deadline = time.monotonic() + timeout
        while not ready():
            code = proc.poll()
            if code is not None:
                raise RuntimeError(
                    f"{label} exited with status {code} while starting:\n{_tail(log_path)}"
                )
            if time.monotonic() >= deadline:
                raise RuntimeError(f"{label} not ready after {timeout:.0f} s:\n{_tail(log_path)}")
            time.sleep(0.05)

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
        from .runtime import ManagedSubprocess

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
        from .runtime.process_runner import stop_process

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


# ----------------------------------------------------------------------------- commands
def cmd_up(args: argparse.Namespace) -> int:
    """Start the service plane; see the module docstring."""
    workdir = os.path.abspath(args.workdir)
    previous = _read_up(workdir)
    if previous is not None:
        entries = [previous.get(k) for k in ("owner", "master") if previous.get(k)]
        if entries and all(_entry_alive(e) for e in entries):
            _say(
                f"fluxon is already up (see {_up_path(workdir)}); run `python -m fluxon down` first"
            )
            master = previous.get("master") or {}
            if master.get("url"):
                _say(f"monitoring: {master['url']}")
            return 0
        _say("a previous `up` left partly stopped services; cleaning them up first")
        _down(workdir, previous, timeout=10.0)
    os.makedirs(workdir, exist_ok=True)
    plane = ServicePlane(
        workdir=workdir,
        etcd=args.etcd,
        cluster_name=args.cluster,
        share_mem_path=args.share_mem_path,
        dram=args.dram,
        master_port=args.master_port,
        ui=args.ui,
        with_master=not args.without_master,
        detached=not args.foreground,
    )
    try:
        plane.start()
    except Exception as exc:  # noqa: BLE001 - report any start failure plainly
        return _fail(f"up failed: {exc}")
    record = plane.record()
    tmp = _up_path(workdir) + ".tmp"
    with open(tmp, "wb") as f:
        f.write(orjson.dumps(record, option=orjson.OPT_INDENT_2))
    os.replace(tmp, _up_path(workdir))
    _say(
        f"fluxon is up: cluster {plane.cluster_name}, etcd {plane.etcd}, "
        f"share_mem_path {plane.share_mem_path}"
    )
    if plane.master_proc is not None:
        _say(f"monitoring: {plane.master_url}")
    if not args.foreground:
        _say(f"stop it with: python -m fluxon down --workdir {workdir}")
        return 0
    from .runtime import wait_subproc_or_ctrlc

    _say("running in the foreground; Ctrl-C stops everything")
    try:
        wait_subproc_or_ctrlc(plane.children(), stop_timeout_seconds=10.0)
    except SystemExit as exc:
        _cleanup_after_stop(workdir, record)
        _say("fluxon stopped")
        return int(exc.code or 0)
    except RuntimeError as exc:
        _cleanup_after_stop(workdir, record)
        return _fail(str(exc))
    return 0


def _terminate(entry: dict | None, label: str, timeout: float) -> str:
    """SIGTERM (then SIGKILL) a recorded process if it is still the same process."""
    if not entry or not isinstance(entry.get("pid"), int):
        return "not recorded"
    pid, start = entry["pid"], entry.get("start_time")
    if not is_process_alive(pid, start):
        return "not running"
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return "not running"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not is_process_alive(pid, start):
            return f"stopped (pid {pid})"
        time.sleep(0.05)
    if is_process_alive(pid, start):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        deadline = time.monotonic() + 5.0
        while time.monotonic() < deadline and is_process_alive(pid, start):
            time.sleep(0.05)
        return f"killed (pid {pid}; it ignored SIGTERM for {timeout:.0f} s)"
    return f"stopped (pid {pid})"


def _cleanup_after_stop(workdir: str, record: dict) -> list[str]:
    """Remove what dead services left: the owner's pool files, embedded etcd data, the up file."""
    notes = []
    owner = record.get("owner") or {}
    shared_path = owner.get("shared_json")
    pool_path = owner.get("pool_file")
    if shared_path and pool_path:
        try:
            with open(shared_path, "rb") as f:
                shared = orjson.loads(f.read())
        except (OSError, orjson.JSONDecodeError):
            shared = None
        # only files of the owner this `up` started, and only once it is gone
        if (
            isinstance(shared, dict)
            and shared.get("owner_pid") == owner.get("pid")
            and not _entry_alive(owner)
        ):
            for path in (shared_path, pool_path):
                try:
                    os.unlink(path)
                    notes.append(f"removed {path}")
                except FileNotFoundError:
                    pass
        if not _entry_alive(owner):
            try:
                os.rmdir(os.path.dirname(pool_path))
            except OSError:
                pass
    etcd = record.get("etcd") or {}
    if etcd.get("embedded") and etcd.get("data_dir") and not _entry_alive(etcd):
        shutil.rmtree(etcd["data_dir"], ignore_errors=True)
    try:
        os.unlink(_up_path(workdir))
    except FileNotFoundError:
        pass
    return notes


def _down(workdir: str, record: dict, timeout: float) -> list[str]:
    lines = []
    lines.append(f"owner: {_terminate(record.get('owner'), 'owner', timeout)}")
    if record.get("master"):
        lines.append(f"master: {_terminate(record.get('master'), 'master', timeout)}")
    etcd = record.get("etcd") or {}
    if etcd.get("embedded"):
        lines.append(f"etcd: {_terminate(etcd, 'etcd', timeout)}")
    lines.extend(_cleanup_after_stop(workdir, record))
    return lines


def cmd_down(args: argparse.Namespace) -> int:
    """Stop what ``up`` recorded in the workdir."""
    workdir = os.path.abspath(args.workdir)
    record = _read_up(workdir)
    if record is None:
        _say(f"nothing to stop: no {UP_FILE} in {workdir}")
        return 0
    for line in _down(workdir, record, timeout=args.timeout):
        _say(line)
    _say("fluxon is down")
    return 0


def _format_table(rows: list[dict], columns: list[str]) -> str:
    cells = [[str(r.get(c, "")) if r.get(c) is not None else "" for c in columns] for r in rows]
    widths = [max([len(c)] + [len(row[i]) for row in cells]) for i, c in enumerate(columns)]
    line = "  ".join(c.ljust(w) for c, w in zip(columns, widths))
    out = [line, "  ".join("-" * w for w in widths)]
    out += ["  ".join(v.ljust(w) for v, w in zip(row, widths)) for row in cells]
    return "\n".join(text.rstrip() for text in out)


def cmd_status(args: argparse.Namespace) -> int:
    """Print the cluster's owners and members (from etcd) and the master URL."""
    from .api_error import EtcdError
    from .etcd_client import connect
    from .service.master import read_cluster_view

    workdir = os.path.abspath(args.workdir)
    record = _read_up(workdir) or {}
    etcd = args.etcd or (record.get("etcd") or {}).get("address") or DEFAULT_ETCD
    cluster = args.cluster or record.get("cluster_name") or DEFAULT_CLUSTER
    try:
        with connect([etcd], timeout=args.timeout) as session:
            view = read_cluster_view(session, cluster)
    except EtcdError as exc:
        if args.json:
            print(orjson.dumps({"error": str(exc), "etcd": etcd, "cluster_name": cluster}).decode())
        return _fail(f"cannot read the cluster state: {exc}")
    master = view.get("master") or {}
    master_url = master.get("url") or (record.get("master") or {}).get("url")
    if args.json:
        out = {"etcd": etcd, "master_url": master_url, "up": record or None, **view}
        print(orjson.dumps(out, option=orjson.OPT_INDENT_2).decode())
        return 0
    _say(f"cluster: {cluster}   etcd: {etcd}")
    _say(f"master: {master_url or '(none registered)'}")
    _say("")
    _say(f"Owners ({len(view['owners'])})")
    _say(
        _format_table(
            view["owners"],
            [
                "owner_id",
                "host",
                "pid",
                "segment_len",
                "free_bytes",
                "attached_members",
                "pool_file",
            ],
        )
    )
    _say("")
    _say(f"Members ({len(view['members'])})")
    _say(
        _format_table(
            view["members"],
            ["instance_key", "kind", "host", "pid", "owner_id", "sub_cluster", "status"],
        )
    )
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The ``python -m fluxon`` argument parser."""
    parser = argparse.ArgumentParser(
        prog="python -m fluxon", description="fluxon local service plane"
    )
    sub = parser.add_subparsers(dest="command", required=True)

    up = sub.add_parser("up", help="start etcd (if needed), master and owner")
    up.add_argument(
        "--workdir", default=DEFAULT_WORKDIR, help="state, configs and logs (default .fluxon)"
    )
    up.add_argument(
        "--etcd",
        default=DEFAULT_ETCD,
        help="etcd address; embedded etcd started there if none answers",
    )
    up.add_argument("--cluster", default=DEFAULT_CLUSTER, help="cluster name")
    up.add_argument(
        "--share-mem-path", default=DEFAULT_SHARE_MEM_PATH, help="directory of the pool"
    )
    up.add_argument("--dram", default=DEFAULT_DRAM, help="owner pool size, e.g. 1GB, 256MB")
    up.add_argument(
        "--master-port", type=int, default=DEFAULT_MASTER_PORT, help="master port config value"
    )
    up.add_argument(
        "--ui", default=DEFAULT_UI, help="master HTTP listen address host:port (port 0: any)"
    )
    up.add_argument("--without-master", action="store_true", help="start only the owner (and etcd)")
    up.add_argument(
        "--foreground", action="store_true", help="stay in the foreground; Ctrl-C stops all"
    )
    up.set_defaults(func=cmd_up)

    down = sub.add_parser("down", help="stop what `up` started")
    down.add_argument("--workdir", default=DEFAULT_WORKDIR)
    down.add_argument(
        "--timeout", type=float, default=10.0, help="seconds between SIGTERM and SIGKILL"
    )
    down.set_defaults(func=cmd_down)

    status = sub.add_parser("status", help="show the cluster's owners and members")
    status.add_argument("--workdir", default=DEFAULT_WORKDIR)
    status.add_argument("--etcd", default=None, help="etcd address (default: from fluxon-up.json)")
    status.add_argument(
        "--cluster", default=None, help="cluster name (default: from fluxon-up.json)"
    )
    status.add_argument("--json", action="store_true", help="print JSON")
    status.add_argument("--timeout", type=float, default=3.0, help="etcd call deadline")
    status.set_defaults(func=cmd_status)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``python -m fluxon`` and of the ``fluxon`` console script."""
    args = build_parser().parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
