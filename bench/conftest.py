"""Benchmark fixtures: one real service plane (etcd, master, owner) per session."""

from __future__ import annotations

import os
import shutil
import tempfile
from typing import Iterator

import pytest

from fluxon.etcd_server import free_port
from fluxon.kvclient import KvClient, new_store
from fluxon.service.plane import ServicePlane


@pytest.fixture(scope="session")
def plane() -> Iterator[ServicePlane]:
    workdir = tempfile.mkdtemp(prefix="fluxon-bench-")
    shm = "/dev/shm" if os.path.isdir("/dev/shm") else None
    share = tempfile.mkdtemp(prefix="fluxon_bench_", dir=shm)
    sp = ServicePlane(
        workdir=workdir,
        etcd=f"127.0.0.1:{free_port()}",
        cluster_name="bench",
        share_mem_path=share,
        dram="512MB",
        master_port=free_port(),
        ui=f"127.0.0.1:{free_port()}",
    )
    sp.start(log=lambda _msg: None)
    try:
        yield sp
    finally:
        sp.stop()
        shutil.rmtree(share, ignore_errors=True)
        shutil.rmtree(workdir, ignore_errors=True)


@pytest.fixture(scope="session")
def kv_store(plane: ServicePlane) -> Iterator[KvClient]:
    cfg = {
        "instance_key": f"bench-{os.getpid()}",
        "fluxonkv_spec": {
            "cluster_name": plane.cluster_name,
            "share_mem_path": plane.share_mem_path,
        },
    }
    store = new_store(cfg).unwrap()
    yield store
    store.close()
