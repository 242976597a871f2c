"""``make demo``: the whole stack on one machine, start to clean stop.

1. Start the service plane: an embedded etcd, the master and an owner with a 256 MiB
   pool (free loopback ports and a private pool directory, so nothing on this machine
   is disturbed).
2. Two separate processes exchange a FlatDict holding a 1 MiB float32 ndarray through
   the KV store: a writer puts it, a reader waits for it, checks it and acknowledges.
3. The MQ: ``examples/start_mpmc_demo.py`` runs as one producer and one consumer on an
   MPMC channel for a few seconds; then both get Ctrl-C (SIGINT), close their handles
   and exit with status 130, as in the seed's example.
4. Stop everything and check that no pool file is left behind.

Run directly with ``python examples/demo.py``.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time

import numpy as np

from fluxon import naming
from fluxon.etcd_server import free_port
from fluxon.kvclient import new_store
from fluxon.logging import init_logger
from fluxon.service.plane import ServicePlane

log = init_logger("demo")
KEY = "demo/frame"
ACK = "demo/ack"


def client_config(args: argparse.Namespace, name: str) -> dict:
    return {
        "instance_key": name,
        "fluxonkv_spec": {"cluster_name": args.cluster, "share_mem_path": args.share_mem_path},
    }


def run_writer(args: argparse.Namespace) -> int:
    store = new_store(client_config(args, "demo-writer")).unwrap()
    frame = np.random.default_rng(7).random((512, 512), dtype=np.float32)  # 1 MiB
    value = {
        "frame_id": 7,
        "camera": "front-left",
        "exposure": 0.0125,
        "keyframe": True,
        "sha256": hashlib.sha256(frame.tobytes()).hexdigest().encode(),
        "pixels": frame,
    }
    t0 = time.perf_counter()
    store.put_blocking(KEY, value).unwrap()
    log.info(
        "writer: put %r (%d bytes encoded) in %.0f us",
        KEY,
        store.get_size(KEY).unwrap(),
        (time.perf_counter() - t0) * 1e6,
    )
    deadline = time.monotonic() + 30
    while not store.is_exist(ACK).unwrap():
        if time.monotonic() > deadline:
            log.error("writer: no acknowledgement from the reader")
            return 1
        time.sleep(0.01)
    log.info("writer: reader acknowledged: %s", store.get_blocking(ACK).unwrap().access())
    store.remove(KEY).unwrap()
    store.remove(ACK).unwrap()
    store.close().unwrap()
    return 0


def run_reader(args: argparse.Namespace) -> int:
    store = new_store(client_config(args, "demo-reader")).unwrap()
    deadline = time.monotonic() + 30
    while not store.is_exist(KEY).unwrap():
        if time.monotonic() > deadline:
            log.error("reader: %r never appeared", KEY)
            return 1
        time.sleep(0.01)
    t0 = time.perf_counter()
    value = store.get_blocking(KEY).unwrap().access()
    took = (time.perf_counter() - t0) * 1e6
    pixels = value["pixels"]
    ok = hashlib.sha256(pixels.tobytes()).hexdigest().encode() == value["sha256"]
    log.info(
        "reader: got frame %d from %s: %s %s, checksum %s, in %.0f us",
        value["frame_id"],
        value["camera"],
        pixels.dtype,
        pixels.shape,
        "ok" if ok else "MISMATCH",
        took,
    )
    store.put_blocking(ACK, {"reader_pid": os.getpid(), "checksum_ok": ok}).unwrap()
    store.close().unwrap()
    return 0 if ok else 1


def run_mq(common: list[str], seconds: float = 4.0) -> bool:
    """One producer and one consumer of examples/start_mpmc_demo.py, then Ctrl-C both."""
    script = os.path.join(os.path.dirname(os.path.abspath(__file__)), "start_mpmc_demo.py")
    chan = ["--unique-id", "demo-mpmc", *common]
    log.info("MQ: starting a consumer and a producer (start_mpmc_demo.py) for %.0f s", seconds)
    consumer = subprocess.Popen([sys.executable, script, "--role", "consumer", *chan])
    producer = subprocess.Popen(
        [sys.executable, script, "--role", "producer", "--interval", "0.25", *chan]
    )
    time.sleep(seconds)
    log.info("MQ: Ctrl-C to producer and consumer")
    for proc in (producer, consumer):
        proc.send_signal(signal.SIGINT)
    codes = [producer.wait(timeout=30), consumer.wait(timeout=30)]
    log.info("MQ: producer exited %d, consumer exited %d (130 = stopped by Ctrl-C)", *codes)
    return codes == [130, 130]


def run_demo() -> int:
    workdir = tempfile.mkdtemp(prefix="fluxon-demo-")
    share = tempfile.mkdtemp(
        prefix="fluxon_demo_", dir="/dev/shm" if os.path.isdir("/dev/shm") else None
    )
    plane = ServicePlane(
        workdir=workdir,
        etcd=f"127.0.0.1:{free_port()}",
        cluster_name="demo-kv-cluster",
        share_mem_path=share,
        dram="256MB",
        master_port=free_port(),
        ui=f"127.0.0.1:{free_port()}",
    )
    code = 1
    try:
        log.info("starting the service plane (etcd -> master -> owner) in %s", workdir)
        plane.start(log=log.info)
        log.info("monitoring: %s/api/members", plane.master_url)
        common = ["--cluster", plane.cluster_name, "--share-mem-path", share]
        me = os.path.abspath(__file__)
        reader = subprocess.Popen([sys.executable, me, "--role", "reader", *common])
        writer = subprocess.Popen([sys.executable, me, "--role", "writer", *common])
        codes = [writer.wait(timeout=120), reader.wait(timeout=120)]
        code = 0 if codes == [0, 0] and run_mq(common) else 1
    finally:
        log.info("stopping the service plane")
        plane.stop()
        left = os.path.exists(naming.pool_file(share, "demo-kv-cluster"))
        shutil.rmtree(share, ignore_errors=True)
        shutil.rmtree(workdir, ignore_errors=True)
        if left:
            log.error("the owner left its pool file behind")
            code = 1
    log.info("demo %s", "finished cleanly" if code == 0 else "FAILED")
    return code


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--role", choices=["demo", "writer", "reader"], default="demo")
    parser.add_argument("--cluster", default="demo-kv-cluster")
    parser.add_argument("--share-mem-path", default="/dev/shm/fluxon_kv_demo")
    args = parser.parse_args()
    if args.role == "writer":
        return run_writer(args)
    if args.role == "reader":
        return run_reader(args)
    return run_demo()


if __name__ == "__main__":
    sys.exit(main())
