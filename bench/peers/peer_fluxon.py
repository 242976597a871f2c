"""fluxon (this project): MPMC channel in the owner's shared-memory pool.

The runner starts the whole service plane (etcd, master, owner) in a private directory,
with the pool in ``/dev/shm``; every worker is an external client (``new_store``) bound
to one MPMC channel per payload size with ``capacity`` = the run's capacity. Competing
consumers; consumers use ``get_data(batch_size=B)`` (returns whatever is ready, up to B),
producers ``put_data_many`` (B messages in one call: the small ones are published in one
kernel call) in the max-throughput runs and ``put_data`` in the latency runs.
"""

from __future__ import annotations

import os
import shutil
import tempfile

from .harness import SENT, TIMED_OUT
from .peerbase import Peer, SkipPeer


class FluxonPeer(Peer):
    """Runner side: the fluxon service plane for the whole peer run."""

    key = "fluxon"
    label = "fluxon"
    batching = "put_data_many / get_data(batch_size=B)"
    module = __name__
    static_notes = ("one MPMC channel per size, capacity = the run's capacity",)
    hello_timeout = 120.0  # first import may compile kernels
    setup_timeout = 60.0

    def __init__(self, ctx) -> None:
        super().__init__(ctx)
        self.plane = None
        self._share = None
        self._topo = ""

    def unavailable(self) -> str | None:
        try:
            import fluxon.api_ext_chan  # noqa: F401
            import fluxon.kvclient  # noqa: F401
        except ImportError as exc:
            return f"fluxon MQ facade not importable: {exc}"
        return None

    def start(self) -> None:
        from fluxon.etcd_server import free_port

        try:
            from fluxon.service.plane import ServicePlane
        except ImportError:  # older layout
            from fluxon.__main__ import ServicePlane

        workdir = os.path.join(self.ctx.run_dir, "fluxon-plane")
        os.makedirs(workdir, exist_ok=True)
        shm = "/dev/shm" if os.path.isdir("/dev/shm") else None
        self._share = tempfile.mkdtemp(prefix=f"fxb{self.ctx.run_id}-fluxon-", dir=shm)
        self.plane = ServicePlane(
            workdir=workdir,
            etcd=f"127.0.0.1:{free_port()}",
            cluster_name=f"fxb-{self.ctx.run_id}",
            share_mem_path=self._share,
            dram=self.ctx.pool_dram,
            master_port=free_port(),
            ui=f"127.0.0.1:{free_port()}",
        )
        try:
            self.plane.start(timeout=120.0, log=lambda _m: None)
        except Exception as exc:  # noqa: BLE001 - reported, the run goes on
            self.stop()
            raise SkipPeer(f"service plane did not start: {exc}") from exc
        self.notes.append(
            f"service plane: etcd + master + owner, pool {self.ctx.pool_dram} in /dev/shm"
        )

    def service_names(self) -> dict[int, str]:
        p = self.plane
        if p is None:
            return {}
        procs = {"etcd": p.etcd_server, "master": p.master_proc, "owner": p.owner_proc}
        return {proc.pid: name for name, proc in procs.items() if proc is not None and proc.pid}

    def worker_config(self, n_prod: int, n_cons: int) -> dict:
        return {
            "cluster_name": self.plane.cluster_name,
            "share_mem_path": self.plane.share_mem_path,
            "chan_keys": [f"fxb-{self.ctx.run_id}-{n_prod}x{n_cons}-{s}" for s in self.ctx.sizes],
            "capacities": [self.ctx.capacity(s) for s in self.ctx.sizes],
        }

    def stop(self) -> None:
        if self.plane is not None:
            try:
                self.plane.stop()
            finally:
                self.plane = None
        if self._share:
            shutil.rmtree(self._share, ignore_errors=True)
            self._share = None


PEER = FluxonPeer


class _Endpoint:
    def __init__(self, role: str, index: int, cfg: dict) -> None:
        from fluxon.api_error import MessageConsumptionNoNewMessageError
        from fluxon.api_ext_chan import ChanRole, ChanType, new_or_bind_with_unique_key
        from fluxon.kvclient import new_store

        self._none = MessageConsumptionNoNewMessageError
        self._bind = new_or_bind_with_unique_key
        self._type = ChanType.MPMC
        self._role = ChanRole.PRODUCER if role == "producer" else ChanRole.CONSUMER
        self.cfg = cfg
        self.store = new_store(
            {
                "instance_key": f"fxb-{role}{index}-{os.getpid()}",
                "fluxonkv_spec": {
                    "cluster_name": cfg["cluster_name"],
                    "share_mem_path": cfg["share_mem_path"],
                },
            }
        ).unwrap()
        self.handles: dict[int, object] = {}
        self.h = None

    def use_size(self, size_idx: int) -> None:
        h = self.handles.get(size_idx)
        if h is None:
            h = self._bind(
                self.store,
                {"capacity": self.cfg["capacities"][size_idx], "ttl_seconds": 60},
                unique_id=self.cfg["chan_keys"][size_idx],
                chan_type=self._type,
                chan_role=self._role,
            ).unwrap()
            self.handles[size_idx] = h
        self.h = h

    def send(self, msg: dict) -> int:
        r = self.h.put_data(msg, try_time=0.2)
        if r.is_ok():
            return SENT if r.unwrap() else TIMED_OUT
        raise r.unwrap_error()

    def send_many(self, msgs: list) -> int:
        r = self.h.put_data_many(msgs, try_time=0.2)
        if r.is_ok():
            return r.unwrap()
        raise r.unwrap_error()

    def recv(self, max_n: int, timeout: float) -> list:
        r = self.h.get_data(batch_size=max_n, try_time=timeout)
        if r.is_ok():
            return r.unwrap()
        err = r.unwrap_error()
        if isinstance(err, self._none):
            return []
        raise err

    def close(self) -> None:
        for h in self.handles.values():
            h.close()
        self.handles = {}
        if self.store is not None:
            self.store.close()
            self.store = None


def open_endpoint(role: str, index: int, cfg: dict, endpoint) -> _Endpoint:
    """Worker side: attach to the owner's pool as an external client."""
    return _Endpoint(role, index, cfg)
