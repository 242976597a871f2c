"""What the benchmark scripts and fixtures share: a private service plane and the
machine line of a report."""

from __future__ import annotations

import os
import platform
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any


@contextmanager
def service_plane(name: str, dram: str, timeout: float = 60.0) -> Iterator[tuple[Any, str]]:
    """Run etcd, master and owner for cluster ``name`` on free loopback ports, the pool
    under ``/dev/shm``; yields ``(plane, scratch_dir)`` and removes everything after."""
    from fluxon.etcd_server import free_port
    from fluxon.service.plane import ServicePlane

    workdir = tempfile.mkdtemp(prefix=f"fluxon-{name}-")
    shm = "/dev/shm" if os.path.isdir("/dev/shm") else None
    share = tempfile.mkdtemp(prefix=f"fluxon_{name}_", dir=shm)
    plane = ServicePlane(
        workdir=os.path.join(workdir, "plane"),
        etcd=f"127.0.0.1:{free_port()}",
        cluster_name=name,
        share_mem_path=share,
        dram=dram,
        master_port=free_port(),
        ui=f"127.0.0.1:{free_port()}",
    )
    try:
        plane.start(timeout=timeout, log=lambda _msg: None)
        yield plane, workdir
    finally:
        plane.stop()
        shutil.rmtree(share, ignore_errors=True)
        shutil.rmtree(workdir, ignore_errors=True)


def client_config(cluster_name: str, share_mem_path: str, instance_key: str) -> dict:
    """``new_store`` config of an external client of a plane's cluster."""
    return {
        "instance_key": instance_key,
        "fluxonkv_spec": {"cluster_name": cluster_name, "share_mem_path": share_mem_path},
    }


def machine_line() -> str:
    """CPU count and model, Python, numpy, numba."""
    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    import numba
    import numpy

    return (
        f"{os.cpu_count()} CPU {model}, Python {platform.python_version()}, "
        f"numpy {numpy.__version__}, numba {numba.__version__}"
    )
