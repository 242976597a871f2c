"""``python -m fluxon up|down|status``: the local service plane in one command.

``up`` starts, in order, an embedded etcd (only when nothing answers at ``--etcd``), the
master and the owner, waits until the owner has published ``shared.json``, records
what it started in ``{workdir}/fluxon-up.json`` and returns, leaving the services
running (or, with ``--foreground``, stays and stops them all on Ctrl-C). ``down`` stops
what ``fluxon-up.json`` lists, by pid, after checking each pid's start time, and
removes what a killed owner may have left. ``status`` prints the MQ ``Channels`` and
``Members`` tables (read from etcd and the local pools, see :mod:`fluxon.monitoring`), the
owners and processes registered in etcd, and the monitoring URL; ``--json`` prints the
same data, ``--watch`` refreshes it.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import socket
import sys
import time

import orjson

from . import naming
from .procinfo import is_process_alive
from .service.plane import (  # noqa: F401 - ServicePlane is re-exported for callers
    DEFAULT_CLUSTER,
    DEFAULT_DRAM,
    DEFAULT_ETCD,
    DEFAULT_MASTER_PORT,
    DEFAULT_SHARE_MEM_PATH,
    DEFAULT_UI,
    DEFAULT_WORKDIR,
    ServicePlane,
    _http_ok,
    _proc_entry,
    _say,
    _tail,
)

UP_FILE = "fluxon-up.json"


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


def _entry_alive(entry: dict | None) -> bool:
    if not entry or not isinstance(entry.get("pid"), int):
        return False
    return is_process_alive(entry["pid"], entry.get("start_time"))


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


def _status_target(args: argparse.Namespace) -> tuple[str, str, str, dict]:
    """(etcd, cluster, share_mem_path, up record): flags, then ``fluxon-up.json``, then the
    pool's ``shared.json``, then the defaults of the examples."""
    record = _read_up(os.path.abspath(args.workdir)) or {}
    cluster = args.cluster or record.get("cluster_name") or DEFAULT_CLUSTER
    share = args.share_mem_path or record.get("share_mem_path") or DEFAULT_SHARE_MEM_PATH
    etcd = args.etcd or (record.get("etcd") or {}).get("address")
    if not etcd:
        try:
            with open(naming.shared_json(share, cluster), "rb") as f:
                shared = orjson.loads(f.read())
            addresses = shared.get("etcd_addresses") if isinstance(shared, dict) else None
            if isinstance(addresses, list) and addresses:
                etcd = ",".join(str(a) for a in addresses)
        except (OSError, orjson.JSONDecodeError):
            pass
    return etcd or DEFAULT_ETCD, cluster, share, record


def _status_snapshot(session, cluster: str, pool_set, record: dict) -> dict:
    from .monitoring import collect
    from .service.master import read_cluster_view

    view = read_cluster_view(session, cluster)
    host = socket.gethostname()
    local_owners = [o for o in view["owners"] if o.get("host") in (None, host)]
    mq = collect(cluster, session, pool_set.refresh(local_owners))
    master = view.get("master") or {}
    url = master.get("url") or (record.get("master") or {}).get("url")
    return {
        **view,
        "master_url": url,
        "monitoring_url": f"{url}/" if url else None,
        "channels": mq["channels"],
        "mq_members": mq["members"],
    }


def _print_status(snap: dict, etcd: str, cluster: str, wide: bool) -> None:
    from .monitoring import (
        CHANNEL_COLUMNS,
        CHANNEL_COLUMNS_SHORT,
        MEMBER_COLUMNS,
        MEMBER_COLUMNS_SHORT,
    )

    url = snap["master_url"]
    _say(f"cluster: {cluster}   etcd: {etcd}")
    _say(f"master: {url or '(none registered)'}")
    if url:
        _say(f"monitoring: {url}/   (JSON {url}/api/channels, {url}/api/members; {url}/metrics)")
    _say("")
    _say(f"Channels ({len(snap['channels'])})")
    _say(_format_table(snap["channels"], CHANNEL_COLUMNS if wide else CHANNEL_COLUMNS_SHORT))
    _say("")
    _say(f"Members ({len(snap['mq_members'])})")
    _say(_format_table(snap["mq_members"], MEMBER_COLUMNS if wide else MEMBER_COLUMNS_SHORT))
    _say("")
    _say(f"Owners ({len(snap['owners'])})")
    _say(
        _format_table(
            snap["owners"],
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
    _say(f"Processes ({len(snap['members'])})")
    _say(
        _format_table(
            snap["members"],
            ["instance_key", "kind", "host", "pid", "owner_id", "sub_cluster", "status"],
        )
    )


def cmd_status(args: argparse.Namespace) -> int:
    """Print the MQ Channels and Members tables, owners, processes and the monitoring URL."""
    from .api_error import EtcdError
    from .etcd_client import connect
    from .monitoring import PoolSet

    etcd, cluster, share, record = _status_target(args)
    pool_set = PoolSet(cluster, [share])
    try:
        with connect(etcd.split(","), timeout=args.timeout) as session:
            while True:
                snap = _status_snapshot(session, cluster, pool_set, record)
                if args.json:
                    out = {"etcd": etcd, "cluster_name": cluster, "up": record or None, **snap}
                    print(orjson.dumps(out, option=orjson.OPT_INDENT_2).decode(), flush=True)
                else:
                    if args.watch:
                        print("\033[H\033[2J", end="")  # clear the terminal
                        _say(time.strftime("%Y-%m-%d %H:%M:%S") + f"  (every {args.watch:g} s)")
                    _print_status(snap, etcd, cluster, args.wide)
                if not args.watch:
                    return 0
                time.sleep(args.watch)
    except EtcdError as exc:
        if args.json:
            print(orjson.dumps({"error": str(exc), "etcd": etcd, "cluster_name": cluster}).decode())
        return _fail(f"cannot read the cluster state: {exc}")
    except KeyboardInterrupt:
        return 0
    finally:
        pool_set.close()


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

    status = sub.add_parser(
        "status", help="show channels, MQ members, owners and the monitoring URL"
    )
    status.add_argument("--workdir", default=DEFAULT_WORKDIR)
    status.add_argument(
        "--etcd",
        default=None,
        help="etcd address (default: fluxon-up.json, then the pool's shared.json, then "
        f"{DEFAULT_ETCD})",
    )
    status.add_argument(
        "--cluster",
        default=None,
        help=f"cluster name (default: fluxon-up.json, then {DEFAULT_CLUSTER})",
    )
    status.add_argument(
        "--share-mem-path",
        default=None,
        help=f"where the pool lives (default: fluxon-up.json, then {DEFAULT_SHARE_MEM_PATH})",
    )
    status.add_argument("--json", action="store_true", help="print JSON (same data, with the URL)")
    status.add_argument(
        "--watch",
        type=float,
        nargs="?",
        const=2.0,
        default=None,
        metavar="SECONDS",
        help="refresh every SECONDS (default 2) until Ctrl-C",
    )
    status.add_argument("--wide", action="store_true", help="print every column")
    status.add_argument("--timeout", type=float, default=3.0, help="etcd call deadline")
    status.set_defaults(func=cmd_status)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``python -m fluxon`` and of the ``fluxon`` console script."""
    args = build_parser().parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
