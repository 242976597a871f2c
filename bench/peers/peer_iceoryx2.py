"""iceoryx2 publish/subscribe (its Python bindings), zero-copy shared memory without a daemon.

Publish/subscribe delivers every sample to every subscriber: there are no competing
consumers, so ``n -> n`` runs as ``n`` independent services, producer i to consumer i
(partitioned). Each service is a ``Slice[c_uint8]`` pub/sub service holding pickled
messages, created with ``enable_safe_overflow(False)`` and a publisher back-pressure
strategy of ``RetryUntilDelivered``: the default overflow silently overwrites the oldest
unread sample, which would lose messages. The subscriber buffer holds the run's capacity.
A consumer waits for data on an iceoryx2 event service (the producer notifies after each
send); it drains every sample that is ready on each wake-up. A send that reached no
subscriber is counted as sent and lost.

All files carry a prefix unique to the run (in ``/dev/shm`` and iceoryx2's root path),
removed when the peer stops.
"""

from __future__ import annotations

import ctypes
import os
import shutil
import time

from .harness import DROPPED, SENT
from .peerbase import Peer, pickle_dumps, pickle_loads, pickled_size

_SLACK = 64


def _config(prefix: str):
    import iceoryx2 as iox2

    cfg = iox2.config.default()
    cfg.global_cfg.prefix = iox2.FileName.new(prefix)
    return cfg


class Iceoryx2Peer(Peer):
    """Runner side: no always-on process; cleans the run's files at the end."""

    key = "iceoryx2"
    label = "iceoryx2 pub/sub"
    batching = "consumer drains all ready samples per wake-up"
    partitioned = True
    module = __name__
    static_notes = (
        "n -> n runs as n independent services (pub/sub delivers every sample to every "
        "subscriber: no competing consumers)",
        "enable_safe_overflow(False) + RetryUntilDelivered (the default overflow silently "
        "overwrites the oldest sample); subscriber buffer = capacity; consumers wait on an "
        "event service the producer notifies after each send",
    )

    def unavailable(self) -> str | None:
        try:
            import iceoryx2  # noqa: F401
        except ImportError:
            return "iceoryx2 is not installed (pip install '.[bench]')"
        return None

    @property
    def prefix(self) -> str:
        return f"fxb{self.ctx.run_id}_"

    def worker_config(self, n_prod: int, n_cons: int) -> dict:
        if n_prod != n_cons:
            raise ValueError("partitioned pub/sub pairs need as many producers as consumers")
        names = [
            [f"fxb/{self.ctx.run_id}/{n_prod}x{n_cons}/s{i}/pair{p}" for p in range(n_prod)]
            for i in range(len(self.ctx.sizes))
        ]
        caps = [self.ctx.capacity(s) for s in self.ctx.sizes]
        lens = [pickled_size(s) + _SLACK for s in self.ctx.sizes]
        return {
            "iox2_prefix": self.prefix,
            "iox2_services": names,
            "iox2_caps": caps,
            "iox2_lens": lens,
        }

    def stop(self) -> None:
        """Remove every file of this run (services, nodes, data segments)."""
        try:
            import iceoryx2 as iox2

            root = iox2.config.default().global_cfg.root_path.to_string()
        except Exception:  # noqa: BLE001 - fall back to the documented default
            root = "/tmp/iceoryx2/"
        prefix = self.prefix
        for d in ("/dev/shm", os.path.join(root, "services"), os.path.join(root, "nodes")):
            try:
                entries = os.listdir(d)
            except OSError:
                continue
            for name in entries:
                path = os.path.join(d, name)
                if name.startswith(prefix):
                    _remove(path)
                elif os.path.isdir(path) and d.endswith("nodes"):
                    # a node's own folder: ours if every file in it carries our prefix
                    try:
                        inner = os.listdir(path)
                    except OSError:
                        continue
                    if inner and all(x.startswith(prefix) for x in inner):
                        _remove(path)


def _remove(path: str) -> None:
    try:
        if os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path, ignore_errors=True)
        else:
            os.unlink(path)
    except OSError:
        pass


PEER = Iceoryx2Peer


def _open_or_create(builder_fn, attempts: int = 50):
    """Concurrent open_or_create of one service by both ends can race: retry briefly."""
    last = None
    for _ in range(attempts):
        try:
            return builder_fn()
        except Exception as exc:  # noqa: BLE001 - iceoryx2 raises its own error types
            last = exc
            time.sleep(0.02)
    raise RuntimeError(f"iceoryx2 service could not be opened: {last!r}")


class _Endpoint:
    def __init__(self, role: str, index: int, cfg: dict) -> None:
        import iceoryx2 as iox2

        iox2.set_log_level(iox2.LogLevel.Error)
        self._iox2 = iox2
        self.role = role
        self.node = (
            iox2.NodeBuilder.new().config(_config(cfg["iox2_prefix"])).create(iox2.ServiceType.Ipc)
        )
        self.ports = []
        for i, names in enumerate(cfg["iox2_services"]):
            name = iox2.ServiceName.new(names[index])
            cap = cfg["iox2_caps"][i]

            def pubsub(name=name, cap=cap):
                return (
                    self.node.service_builder(name)
                    .publish_subscribe(iox2.Slice[ctypes.c_uint8])
                    .max_publishers(1)
                    .max_subscribers(1)
                    .history_size(0)
                    .subscriber_max_buffer_size(cap)
                    .enable_safe_overflow(False)
                    .open_or_create()
                )

            def event(name=name):
                return self.node.service_builder(name).event().open_or_create()

            svc = _open_or_create(pubsub)
            evt = _open_or_create(event)
            if role == "producer":
                pub = (
                    svc.publisher_builder()
                    .initial_max_slice_len(cfg["iox2_lens"][i])
                    .backpressure_strategy(iox2.BackpressureStrategy.RetryUntilDelivered)
                    .create()
                )
                self.ports.append((svc, evt, pub, evt.notifier_builder().create()))
            else:
                sub = svc.subscriber_builder().buffer_size(cap).create()
                self.ports.append((svc, evt, sub, evt.listener_builder().create()))
        self.use_size(0)

    def use_size(self, size_idx: int) -> None:
        _svc, _evt, self.port, self.signal = self.ports[size_idx]
        if self.role == "producer":
            # wait (bounded) until the subscriber is there, so no warm-up sample goes nowhere
            deadline = time.monotonic() + 10.0
            svc = self.ports[size_idx][0]
            while svc.dynamic_config.number_of_subscribers < 1 and time.monotonic() < deadline:
                time.sleep(0.005)
            self.port.update_connections()

    def send(self, msg: dict) -> int:
        data = pickle_dumps(msg)
        n = len(data)
        sample = self.port.loan_slice_uninit(n)
        ctypes.memmove(sample.payload_ptr, data, n)
        reached = sample.assume_init().send()
        self.signal.notify()
        return SENT if reached else DROPPED

    def recv(self, max_n: int, timeout: float) -> list:
        sub = self.port
        sample = sub.receive()
        if sample is None:
            self.signal.timed_wait(self._iox2.Duration.from_micros(int(timeout * 1e6)))
            sample = sub.receive()
            if sample is None:
                return []
        out = []
        while sample is not None:
            out.append(pickle_loads(sample.payload().as_memory_view()))
            sample.delete()
            if len(out) >= max_n:
                break
            sample = sub.receive()
        return out

    def close(self) -> None:
        for _svc, _evt, port, signal in self.ports:
            for obj in (signal, port):
                try:
                    obj.delete()
                except Exception:  # noqa: BLE001 - best effort
                    pass
        self.ports = []
        self.node = None


def open_endpoint(role: str, index: int, cfg: dict, endpoint) -> _Endpoint:
    """Worker side: open this pair's services and ports."""
    return _Endpoint(role, index, cfg)
