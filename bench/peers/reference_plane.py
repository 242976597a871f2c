"""Service plane of the reference package, run by that package's own interpreter.

``python reference_plane.py CONFIG.json`` starts the reference master and owner with the
package's ``fluxon_py.runtime`` start helpers (they SIGTERM themselves when their parent
exits, so this process stays alive as their parent), waits until the owner has written
``shared.json``, prints one line ``READY {"master_pid": .., "owner_pid": ..}`` and then
waits until its standard input closes (or SIGTERM/SIGINT), stops both and exits.

The master config names a Prometheus base URL with no server behind it: the reference
requires the key, and nothing in this run needs metrics. etcd is started by the runner.
"""

from __future__ import annotations

import ctypes
import json
import os
import signal
import socket
import sys
import threading
import time
from pathlib import Path


def _stop(proc, timeout: float = 15.0) -> None:
    if proc is None or proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout)
    except Exception:  # noqa: BLE001 - escalate below
        proc.kill()
        proc.wait(5)


def _wait_port(port: int, proc, timeout: float) -> None:
    """Wait until the master's HTTP port accepts connections (it is up)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.1)


def _die_with_parent() -> None:
    """SIGTERM this process (which then stops master and owner) when the runner dies."""
    try:
        ctypes.CDLL(None).prctl(1, signal.SIGTERM, 0, 0, 0)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def main() -> int:
    """Start master + owner, report READY, wait for stdin EOF, stop them."""
    _die_with_parent()
    with open(sys.argv[1]) as f:
        cfg = json.load(f)
    from fluxon_py.runtime import start_kv_master_process, start_owner_kvclient_process

    work = Path(cfg["workdir"])
    work.mkdir(parents=True, exist_ok=True)
    cluster = cfg["cluster_name"]
    shm = cfg["share_mem_path"]
    network = {"tcp_reactor_mode": "event_driven"}  # what the package's quick_start uses
    master_cfg = {
        "instance_key": f"master-{cluster}",
        "cluster_name": cluster,
        "port": int(cfg["master_port"]),
        "etcd_endpoints": [cfg["etcd"]],
        "log_dir": str(work / "master-log"),
        "network": network,
        "monitoring": {"prometheus_base_url": f"http://127.0.0.1:{cfg['prom_port']}/v1/prometheus"},
        "master_ui": {"http_listen_addr": f"127.0.0.1:{cfg['ui_port']}"},
    }
    owner_cfg = {
        "instance_key": f"owner-{cluster}",
        "network": network,
        "fluxonkv_spec": {
            "cluster_name": cluster,
            "share_mem_path": shm,
            "etcd_addresses": [cfg["etcd"]],
            "sub_cluster": "default",
            "large_file_paths": [str(work / "large")],
        },
        "contribute_to_cluster_pool_size": {"dram": int(cfg["dram"]), "vram": {}},
        "test_spec_config": {"protocol_type": "tcp"},
    }
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    master = owner = None
    try:
        master = start_kv_master_process(
            workdir=work / "master", config=master_cfg, log_path=work / "master.log"
        )
        _wait_port(int(cfg["ui_port"]), master, float(cfg.get("timeout", 120)))
        owner = start_owner_kvclient_process(
            workdir=work / "owner", config=owner_cfg, log_path=work / "owner.log"
        )
        shared = Path(shm) / cluster / "shared.json"
        deadline = time.monotonic() + float(cfg.get("timeout", 120))
        while not shared.exists():
            for label, proc in (("master", master), ("owner", owner)):
                if proc.poll() is not None:
                    print(f"FAILED {label} exited with status {proc.returncode}", flush=True)
                    return 1
            if time.monotonic() > deadline or stop.is_set():
                print("FAILED owner did not write shared.json in time", flush=True)
                return 1
            time.sleep(0.1)
        print("READY " + json.dumps({"master_pid": master.pid, "owner_pid": owner.pid}), flush=True)

        def _stdin_closed() -> None:
            try:
                while os.read(0, 4096):
                    pass
            except OSError:
                pass
            stop.set()

        threading.Thread(target=_stdin_closed, daemon=True).start()
        while not stop.wait(0.5):
            for label, proc in (("master", master), ("owner", owner)):
                if proc.poll() is not None:
                    print(f"EXITED {label} status {proc.returncode}", flush=True)
                    return 1
        return 0
    finally:
        _stop(owner)
        _stop(master)


if __name__ == "__main__":
    sys.exit(main())
