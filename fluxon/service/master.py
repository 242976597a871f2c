"""The master: one per cluster; registers in etcd and serves the monitoring HTTP API.

Routes (stdlib ``ThreadingHTTPServer``, bound to 127.0.0.1 unless configured otherwise):

====================  ==========================================================
``GET /``             the monitoring page: ``Channels`` and ``Members`` tables (MQ),
                      searchable by unique key, refreshed every 2 s from ``/api/mq``;
                      owners and cluster processes below
``GET /api/channels`` JSON ``{"cluster_name", "generated_at", "channels": [...]}``
``GET /api/members``  JSON: the cluster's members and owners as registered in etcd
                      (``members``, ``owners``, ``master``) plus the MQ member rows
                      under ``mq_members``
``GET /api/mq``       JSON: both MQ tables, owners and processes in one document
``GET /metrics``      Prometheus text (format 0.0.4) of the same data
``GET /healthz``      ``200 ok``
====================  ==========================================================

Channel offsets and handle latency come from the owners' pools on this host, mapped
read-only in practice (:class:`fluxon.monitoring.PoolSet`); see :mod:`fluxon.monitoring`.
When ``monitoring`` names a Prometheus remote-write URL or an OTLP endpoint, the same
metrics are pushed there every ``monitoring.push_interval_s`` seconds (default 5).

Other layers extend it with :meth:`MasterService.add_route` and
:meth:`MasterService.add_periodic_task` (e.g. the channel reaper).

Run it as ``python -m fluxon.service.master --config-b64 B64 | --config PATH``.
"""

from __future__ import annotations

import argparse
import logging
import os
import socket
import sys
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

import orjson

from .. import naming
from ..api_error import ApiError, EtcdError, InvalidConfigurationError
from ..procinfo import is_process_alive, process_start_time
from ..runtime.ctrlc import register_ctrlc_callback
from ..runtime.launch import add_config_arguments, config_from_arguments
from ..runtime.service_support import host_name, setup_service_logging

_log = logging.getLogger("fluxon.master")

DEFAULT_HTTP_LISTEN_ADDR = "127.0.0.1:18080"
#: TTL of the master's etcd lease; renewed every third of it.
LEASE_TTL_S = 10
#: Deadline of each etcd call made by the master.
ETCD_TIMEOUT_S = 3.0
#: Poll interval of the HTTP server loop (it wakes for requests; shutdown knocks).
HTTP_POLL_S = 5.0

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_CONFIG = 2
EXIT_ALREADY_RUNNING = 3

_REQUIRED_KEYS = ("instance_key", "cluster_name", "port", "etcd_endpoints", "log_dir")
_OPTIONAL_KEYS = ("monitoring", "master_ui")
_MONITORING_KEYS = (
    "prometheus_base_url",
    "prom_remote_write_url",
    "prometheus_remote_write_url",
    "otlp_log_api",
    "push_interval_s",
)
#: Seconds between metric pushes when a push target is configured.
DEFAULT_PUSH_INTERVAL_S = 5.0
#: How long a collected MQ view is reused by concurrent requests.
MQ_VIEW_CACHE_S = 0.5
#: Auto-refresh period of the monitoring page.
PAGE_REFRESH_MS = 2000
_MASTER_UI_KEYS = ("http_listen_addr",)


class MasterAlreadyRunning(RuntimeError):
    """Another live master is registered for this cluster."""


def _bad(key: str, value: Any, why: str) -> InvalidConfigurationError:
    return InvalidConfigurationError(
        f"master config {key}: {why} (got {value!r})", config_key=key, config_value=str(value)
    )


def _parse_host_port(key: str, value: Any, allow_zero: bool) -> tuple[str, int]:
    if not isinstance(value, str) or ":" not in value:
        raise _bad(key, value, "expected 'host:port'")
    host, _, port_text = value.rpartition(":")
    host = host.strip("[]")
    try:
        port = int(port_text)
    except ValueError:
        raise _bad(key, value, "port is not an integer") from None
    if not host or not (0 if allow_zero else 1) <= port <= 65535:
        raise _bad(key, value, "expected 'host:port' with a valid port")
    return host, port


def validate_master_config(config: Mapping[str, Any]) -> dict:
    """Check a master config and fill defaults.

    Parameters
    ----------
    config : mapping
        ``instance_key``, ``cluster_name``, ``port`` (int), ``etcd_endpoints``
        (list of ``"host:port"``), ``log_dir``, optional ``monitoring``
        (``prometheus_remote_write_url`` / ``prom_remote_write_url``: URL or list of URLs
        for Prometheus remote-write; ``otlp_log_api.otlp_endpoint``: OTLP/HTTP base URL;
        ``prometheus_base_url``: shown on the page; ``push_interval_s``: push period)
        and ``master_ui.http_listen_addr`` (default ``127.0.0.1:18080``; port 0 picks
        a free port).

    Returns
    -------
    dict
        A normalised copy.

    Raises
    ------
    InvalidConfigurationError
        Naming the offending key.
    """
    if not isinstance(config, Mapping):
        raise InvalidConfigurationError(
            f"master config must be a mapping, got {type(config).__name__}", config_key="<root>"
        )
    for key in config:
        if key not in _REQUIRED_KEYS and key not in _OPTIONAL_KEYS:
            raise _bad(
                str(key),
                config[key],
                f"unknown key; allowed: {', '.join(_REQUIRED_KEYS + _OPTIONAL_KEYS)}",
            )
    for key in _REQUIRED_KEYS:
        if key not in config:
            raise InvalidConfigurationError(f"master config is missing {key!r}", config_key=key)
    out: dict[str, Any] = {}
    for key in ("instance_key", "cluster_name", "log_dir"):
        value = config[key]
        if not isinstance(value, str) or not value.strip():
            raise _bad(key, value, "expected a non-empty string")
        out[key] = value
    port = config["port"]
    if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 65535:
        raise _bad("port", port, "expected an integer port 0..65535")
    out["port"] = port
    endpoints = config["etcd_endpoints"]
    if isinstance(endpoints, str):
        endpoints = [e for e in endpoints.split(",") if e.strip()]
    if not isinstance(endpoints, (list, tuple)) or not endpoints:
        raise _bad("etcd_endpoints", endpoints, "expected a non-empty list of 'host:port'")
    for i, endpoint in enumerate(endpoints):
        _parse_host_port(f"etcd_endpoints[{i}]", endpoint, allow_zero=False)
    out["etcd_endpoints"] = [str(e) for e in endpoints]
    monitoring = config.get("monitoring")
    if monitoring is not None:
        if not isinstance(monitoring, Mapping):
            raise _bad("monitoring", monitoring, "expected a mapping")
        for key in monitoring:
            if key not in _MONITORING_KEYS:
                raise _bad(
                    f"monitoring.{key}",
                    monitoring[key],
                    f"unknown key; allowed: {', '.join(_MONITORING_KEYS)}",
                )
        interval = monitoring.get("push_interval_s", DEFAULT_PUSH_INTERVAL_S)
        if (
            isinstance(interval, bool)
            or not isinstance(interval, (int, float))
            or not 0.1 <= interval <= 3600
        ):
            raise _bad("monitoring.push_interval_s", interval, "expected seconds in 0.1..3600")
        otlp = monitoring.get("otlp_log_api")
        if otlp is not None and not isinstance(otlp, Mapping):
            raise _bad("monitoring.otlp_log_api", otlp, "expected a mapping")
        out["monitoring"] = dict(monitoring)
    ui = config.get("master_ui") or {}
    if not isinstance(ui, Mapping):
        raise _bad("master_ui", ui, "expected a mapping")
    for key in ui:
        if key not in _MASTER_UI_KEYS:
            raise _bad(
                f"master_ui.{key}", ui[key], f"unknown key; allowed: {', '.join(_MASTER_UI_KEYS)}"
            )
    listen = ui.get("http_listen_addr", DEFAULT_HTTP_LISTEN_ADDR)
    _parse_host_port("master_ui.http_listen_addr", listen, allow_zero=True)
    out["master_ui"] = {"http_listen_addr": listen}
    return out


@dataclass
class HttpResponse:
    """What a route returns."""

    status: int
    body: bytes
    content_type: str = "application/json"


Route = Callable[["MasterService", dict], HttpResponse]


def json_response(data: Any, status: int = 200) -> HttpResponse:
    """A JSON (orjson) response."""
    return HttpResponse(
        status, orjson.dumps(data, option=orjson.OPT_NON_STR_KEYS), "application/json"
    )


def _route_healthz(_master: MasterService, _query: dict) -> HttpResponse:
    return HttpResponse(200, b"ok", "text/plain; charset=utf-8")


def _route_members(master: MasterService, _query: dict) -> HttpResponse:
    try:
        view = master.cluster_view()
        try:
            view["mq_members"] = master.mq_view()["members"]
        except Exception as exc:  # noqa: BLE001 - the cluster view stays available
            _log.exception("MQ member rows unavailable")
            view["mq_members"], view["mq_error"] = [], f"{type(exc).__name__}: {exc}"
        return json_response(view)
    except EtcdError as exc:
        return json_response({"error": str(exc), "cluster_name": master.cluster_name}, status=503)


def _route_channels(master: MasterService, _query: dict) -> HttpResponse:
    try:
        data = master.mq_view()
    except EtcdError as exc:
        return json_response({"error": str(exc), "cluster_name": master.cluster_name}, status=503)
    return json_response(
        {
            "cluster_name": master.cluster_name,
            "generated_at": data["generated_at"],
            "channels": data["channels"],
        }
    )


def _route_mq(master: MasterService, _query: dict) -> HttpResponse:
    try:
        data = dict(master.mq_view())
        view = master.cluster_view()
    except EtcdError as exc:
        return json_response({"error": str(exc), "cluster_name": master.cluster_name}, status=503)
    data.update(owners=view["owners"], processes=view["members"], url=master.url)
    return json_response(data)


def _route_metrics(master: MasterService, _query: dict) -> HttpResponse:
    from ..monitoring import render_prometheus

    try:
        data = master.mq_view()
    except EtcdError as exc:
        return HttpResponse(503, f"# etcd unavailable: {exc}\n".encode(), "text/plain")
    return HttpResponse(
        200, render_prometheus(data).encode(), "text/plain; version=0.0.4; charset=utf-8"
    )


def _route_index(master: MasterService, query: dict) -> HttpResponse:
    from ..monitoring import render_index_html

    try:
        data = dict(master.mq_view())
        view = master.cluster_view()
        data.update(owners=view["owners"], processes=view["members"])
        status = 200
    except EtcdError as exc:
        data = {"error": f"etcd unavailable: {exc}"}
        status = 503
    page = render_index_html(
        master.cluster_name,
        data,
        query=(query.get("q") or [""])[0],
        refresh_ms=PAGE_REFRESH_MS,
        prometheus_base_url=(master.config.get("monitoring") or {}).get("prometheus_base_url"),
    )
    return HttpResponse(status, page.encode(), "text/html; charset=utf-8")


class _Handler(BaseHTTPRequestHandler):
    server_version = "fluxon-master"
    master: MasterService  # set on the per-server subclass

    def do_GET(self) -> None:
        parts = urlsplit(self.path)
        route = self.master.routes.get(parts.path.rstrip("/") or "/")
        if route is None:
            resp = json_response({"error": f"no such path: {parts.path}"}, status=404)
        else:
            try:
                resp = route(self.master, parse_qs(parts.query))
            except Exception as exc:  # noqa: BLE001 - a failing route must not kill the server
                _log.exception("route %s failed", parts.path)
                resp = json_response({"error": f"{type(exc).__name__}: {exc}"}, status=500)
        self.send_response(resp.status)
        self.send_header("Content-Type", resp.content_type)
        self.send_header("Content-Length", str(len(resp.body)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        self.wfile.write(resp.body)

    def log_message(self, fmt: str, *args: Any) -> None:
        _log.debug("http %s: " + fmt, self.address_string(), *args)


def _stop_serving(httpd: ThreadingHTTPServer, thread: threading.Thread) -> None:
    """Stop ``serve_forever`` on ``thread`` without waiting out its poll interval: ask
    for the shutdown, then knock on the listening socket until the loop has seen it."""
    stopper = threading.Thread(target=httpd.shutdown, name="fluxon-master-http-stop", daemon=True)
    stopper.start()
    deadline = time.monotonic() + 5.0
    while thread.is_alive() and time.monotonic() < deadline:
        try:
            socket.create_connection(httpd.server_address[:2], timeout=0.2).close()
        except OSError:
            pass
        thread.join(timeout=0.05)
    stopper.join(timeout=max(0.0, deadline - time.monotonic()))


class MasterService:
    """The master's state; :func:`run_master_blocking` drives it.

    Parameters
    ----------
    config : mapping
        See :func:`validate_master_config`.
    """

    def __init__(self, config: Mapping[str, Any]) -> None:
        self.config = validate_master_config(config)
        self.instance_key: str = self.config["instance_key"]
        self.cluster_name: str = self.config["cluster_name"]
        self.etcd_endpoints: list[str] = self.config["etcd_endpoints"]
        self.log_dir: str = self.config["log_dir"]
        self.pid = os.getpid()
        self.start_time = process_start_time(self.pid)
        self.host = host_name()
        self.started_at = time.time()
        self.routes: dict[str, Route] = {
            "/": _route_index,
            "/healthz": _route_healthz,
            "/api/members": _route_members,
            "/api/channels": _route_channels,
            "/api/mq": _route_mq,
            "/metrics": _route_metrics,
        }
        self._periodic: list[list[Any]] = []  # [name, fn, interval, next_due]
        self.session = None
        self.lease = None
        self._keepalive = None
        self._lease_lost = threading.Event()
        self.httpd: ThreadingHTTPServer | None = None
        self._http_thread: threading.Thread | None = None
        from ..monitoring import MetricsExporter, PoolSet

        self.pool_set = PoolSet(self.cluster_name)
        self._mq_lock = threading.Lock()
        self._mq_cache: tuple[float, dict] | None = None
        monitoring = self.config.get("monitoring") or {}
        self.exporter = MetricsExporter(monitoring, self.cluster_name)
        self._push_thread: threading.Thread | None = None
        # A dead owner's pool must not stay mapped here (its memory would outlive it).
        self.add_periodic_task("monitoring-prune", lambda m: m.pool_set.prune(), 2.0)
        if self.exporter:
            self.add_periodic_task(
                "metrics-push",
                MasterService._push_metrics,
                float(monitoring.get("push_interval_s", DEFAULT_PUSH_INTERVAL_S)),
            )

    # ------------------------------------------------------------- extension points
    def add_route(self, path: str, route: Route) -> None:
        """Serve ``GET path`` with ``route(master, query) -> HttpResponse``."""
        self.routes[path.rstrip("/") or "/"] = route

    def add_periodic_task(
        self, name: str, fn: Callable[[MasterService], None], interval_s: float
    ) -> None:
        """Run ``fn(master)`` every ``interval_s`` seconds on the master's main loop."""
        self._periodic.append([name, fn, float(interval_s), time.monotonic() + interval_s])

    # ------------------------------------------------------------- addresses
    @property
    def http_address(self) -> str:
        """``host:port`` the HTTP server listens on (actual port once started)."""
        if self.httpd is not None:
            host, port = self.httpd.server_address[:2]
            return f"{host}:{port}"
        return self.config["master_ui"]["http_listen_addr"]

    @property
    def url(self) -> str:
        """Base URL of the monitoring server."""
        host, _, port = self.http_address.rpartition(":")
        if host in ("0.0.0.0", "", "::"):
            host = "127.0.0.1"
        return f"http://{host}:{port}"

    # ------------------------------------------------------------- start / stop
    def start(self) -> None:
        """Connect to etcd, bind the HTTP server, register ``master_key`` (leased).

        Raises
        ------
        EtcdError
            If etcd is unreachable.
        MasterAlreadyRunning
            If another live master holds the cluster's master key.
        OSError
            If the HTTP address cannot be bound.
        """
        from ..etcd_client import IDLE_CLOSE_S, connect

        try:
            os.makedirs(self.log_dir, exist_ok=True)
            self.session = connect(
                self.etcd_endpoints, timeout=ETCD_TIMEOUT_S, idle_close_s=IDLE_CLOSE_S
            )
            host, port = _parse_host_port(
                "master_ui.http_listen_addr", self.config["master_ui"]["http_listen_addr"], True
            )
            handler = type("MasterHandler", (_Handler,), {"master": self})
            self.httpd = ThreadingHTTPServer((host, port), handler)
            self.httpd.daemon_threads = True
            self._register_etcd()
        except BaseException:
            self.shutdown()
            raise
        self._http_thread = threading.Thread(
            target=self.httpd.serve_forever,
            kwargs={"poll_interval": HTTP_POLL_S},
            name="fluxon-master-http",
            daemon=True,
        )
        self._http_thread.start()
        threading.Thread(target=self.warm_up, name="fluxon-master-warmup", daemon=True).start()
        _log.info(
            "master %s of cluster %s ready: monitoring %s, etcd %s",
            self.instance_key,
            self.cluster_name,
            self.url,
            ",".join(self.etcd_endpoints),
        )

    def _record(self) -> dict:
        return {
            "instance_key": self.instance_key,
            "cluster_name": self.cluster_name,
            "pid": self.pid,
            "start_time": self.start_time,
            "host": self.host,
            "port": self.config["port"],
            "http_address": self.http_address,
            "url": self.url,
            "started_at": self.started_at,
        }

    def _register_etcd(self) -> None:
        session = self.session
        key = naming.master_key(self.cluster_name)
        value = orjson.dumps(self._record())
        lease = session.grant_lease(LEASE_TTL_S)
        deadline = time.monotonic() + LEASE_TTL_S + 2.0
        while not session.put_if_absent(key, value, lease=lease):
            previous = session.get(key)
            rec: Any = None
            if previous is not None:
                try:
                    rec = orjson.loads(previous)
                except orjson.JSONDecodeError:
                    rec = None
            # Same host: the pid tells whether that master lives. Another host: wait for its
            # lease, which expires within one TTL if it died.
            same_host_alive = False
            if isinstance(rec, dict) and rec.get("host") == self.host:
                pid, start = rec.get("pid"), rec.get("start_time")
                if pid == self.pid or not (isinstance(pid, int) and is_process_alive(pid, start)):
                    _log.info("taking over the master key of a dead master (pid %s)", pid)
                    session.put(key, value, lease=lease)
                    break
                same_host_alive = True
            if same_host_alive or time.monotonic() >= deadline:
                session.revoke(lease)
                who = rec if isinstance(rec, dict) else {}
                raise MasterAlreadyRunning(
                    f"another master is running for cluster {self.cluster_name!r} "
                    f"(instance {who.get('instance_key')!r}, host {who.get('host')}, "
                    f"pid {who.get('pid')}, {who.get('url')})"
                )
            time.sleep(0.5)  # a previous master's lease may be about to expire
        self.lease = lease
        self._lease_lost.clear()
        self._keepalive = session.keepalive(
            lease,
            LEASE_TTL_S / 3.0,
            on_lost=lambda _id: self._lease_lost.set(),
            name="fluxon-master-lease",
        )

    def idle_s(self) -> float:
        """How long the main loop may sleep: until the next periodic task is due, at
        least 0.05 s and at most 1 s (a lost lease is noticed within that)."""
        due = min((task[3] for task in self._periodic), default=time.monotonic() + 1.0)
        return min(1.0, max(0.05, due - time.monotonic()))

    def step(self) -> None:
        """One pass of the main loop: re-register after a lost lease, run periodic tasks."""
        if self._lease_lost.is_set():
            try:
                if self._keepalive is not None:
                    self._keepalive.stop()
                self._register_etcd()
                _log.info("master registered again in etcd")
            except (EtcdError, MasterAlreadyRunning) as exc:
                _log.warning("master re-registration deferred: %s", exc)
        now = time.monotonic()
        for task in self._periodic:
            name, fn, interval, due = task
            if now >= due:
                task[3] = now + interval
                try:
                    fn(self)
                except Exception:  # noqa: BLE001 - one failing task must not stop the master
                    _log.exception("periodic task %s failed", name)

    def shutdown(self) -> None:
        """Stop serving, deregister from etcd (bounded, best effort). Idempotent."""
        httpd, self.httpd = self.httpd, None
        if httpd is not None:
            if self._http_thread is not None:
                _stop_serving(httpd, self._http_thread)
            httpd.server_close()
        if self._keepalive is not None:
            self._keepalive.stop()
        session, self.session = self.session, None
        if session is not None:
            if self.lease is not None:
                try:
                    current = session.get(naming.master_key(self.cluster_name))
                    if current is not None and orjson.loads(current).get("pid") == self.pid:
                        session.delete(naming.master_key(self.cluster_name))
                    session.revoke(self.lease)
                except (ApiError, orjson.JSONDecodeError) as exc:
                    _log.warning(
                        "etcd unreachable during shutdown; the key expires with its lease: %s", exc
                    )
            session.close()
        self.pool_set.close()

    # ------------------------------------------------------------- data
    def cluster_view(self) -> dict:
        """Members and owners of the cluster, read from etcd.

        Returns
        -------
        dict
            ``{"cluster_name", "master", "members": [...], "owners": [...]}``; each record
            is the JSON its process registered, plus ``key`` and ``status``.
        """
        session = self.session
        if session is None:
            raise EtcdError("the master is not connected to etcd")
        return read_cluster_view(session, self.cluster_name, self._record())

    def mq_view(self) -> dict:
        """The MQ Channels and Members tables (:func:`fluxon.monitoring.collect`).

        Pools of this host's owners are (re)attached as owners come and go. A result
        is reused for :data:`MQ_VIEW_CACHE_S` so a page, its JSON refresh and a scrape
        arriving together cost one collection.
        """
        from ..monitoring import collect

        session = self.session
        if session is None:
            raise EtcdError("the master is not connected to etcd")
        with self._mq_lock:
            now = time.monotonic()
            if self._mq_cache is not None and now - self._mq_cache[0] < MQ_VIEW_CACHE_S:
                return self._mq_cache[1]
            owners = [
                rec
                for _key, raw in session.get_prefix(naming.owners_prefix(self.cluster_name))
                for rec in [_loads_dict(raw)]
                if rec is not None and rec.get("host") in (None, self.host)
            ]
            pools = self.pool_set.refresh(owners)
            data = collect(self.cluster_name, session, pools)
            self._mq_cache = (time.monotonic(), data)
            return data

    def _push_metrics(self) -> None:
        """Periodic task: push the metrics from a side thread (a slow target never
        delays the main loop; a push still running skips this period)."""
        if self._push_thread is not None and self._push_thread.is_alive():
            return

        def run() -> None:
            from ..monitoring import prometheus_families

            try:
                self.exporter.push(prometheus_families(self.mq_view()))
            except EtcdError as exc:
                _log.debug("metrics push skipped: %s", exc)
            except Exception:  # noqa: BLE001 - exporting must never stop the master
                _log.exception("metrics push failed")

        self._push_thread = threading.Thread(target=run, name="fluxon-metrics-push", daemon=True)
        self._push_thread.start()

    def warm_up(self) -> None:
        """Compile/load the monitoring kernels now rather than at the first request."""
        from ..monitoring import warm_up_kernels

        try:
            warm_up_kernels()
            self.mq_view()
        except Exception as exc:  # noqa: BLE001 - best effort
            _log.debug("monitoring warm-up: %s", exc)


def _loads_dict(raw: bytes) -> dict | None:
    try:
        rec = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None
    return rec if isinstance(rec, dict) else None


def _records(session: Any, prefix: str, host: str) -> list[dict]:
    out = []
    for key, raw in session.get_prefix(prefix):
        try:
            rec = orjson.loads(raw)
        except orjson.JSONDecodeError:
            rec = {"raw": raw.decode("utf-8", errors="replace")}
        if not isinstance(rec, dict):
            rec = {"value": rec}
        rec["key"] = key
        # Leased: the key exists only while its holder renews it. On this host the pid
        # tells more: a killed process shows as dead until its owner or lease removes it.
        status = "alive"
        pid = rec.get("pid")
        if rec.get("host") == host and isinstance(pid, int):
            start = rec.get("start_time")
            status = (
                "alive"
                if is_process_alive(pid, start if isinstance(start, int) else None)
                else "dead"
            )
        rec.setdefault("status", status)
        out.append(rec)
    return out


def read_cluster_view(session: Any, cluster_name: str, master: dict | None = None) -> dict:
    """Members, owners and master of ``cluster_name`` as registered in etcd.

    Parameters
    ----------
    session : EtcdSession
        Open etcd session.
    cluster_name : str
        The cluster.
    master : dict, optional
        The master record to report (default: read ``master_key``).

    Returns
    -------
    dict
    """
    if master is None:
        raw = session.get(naming.master_key(cluster_name))
        master = orjson.loads(raw) if raw is not None else None
    host = host_name()
    return {
        "cluster_name": cluster_name,
        "master": master,
        "members": _records(session, naming.members_prefix(cluster_name), host),
        "owners": _records(session, naming.owners_prefix(cluster_name), host),
    }


def run_master_blocking(
    config: Mapping[str, Any],
    *,
    stop_event: threading.Event | None = None,
    install_signal_handlers: bool = True,
    ready: Callable[[MasterService], None] | None = None,
) -> int:
    """Run the master in this process until SIGINT/SIGTERM (or ``stop_event``).

    Parameters
    ----------
    config : mapping
        See :func:`validate_master_config`.
    stop_event : threading.Event, optional
        Set it to stop the master from another thread.
    install_signal_handlers : bool
        Stop on SIGINT/SIGTERM (via :func:`fluxon.runtime.register_ctrlc_callback`).
    ready : callable, optional
        Called with the started :class:`MasterService`.

    Returns
    -------
    int
        0 after a clean stop, 2 for a bad config, 3 if another master runs, 1 otherwise.
    """
    stop = stop_event or threading.Event()
    restore = (
        register_ctrlc_callback(lambda reason: stop.set(), thread_name="fluxon-master-ctrlc")
        if install_signal_handlers
        else None
    )
    try:
        try:
            master = MasterService(config)
        except InvalidConfigurationError as exc:
            _log.error("bad master configuration: %s", exc)
            return EXIT_CONFIG
        setup_service_logging(f"master-{master.cluster_name}", master.log_dir)
        try:
            master.start()
        except MasterAlreadyRunning as exc:
            _log.error("%s", exc)
            return EXIT_ALREADY_RUNNING
        except EtcdError as exc:
            _log.error("master cannot start: etcd is unreachable: %s", exc)
            return EXIT_ERROR
        except (ApiError, OSError) as exc:
            _log.error("master cannot start: %s", exc)
            return EXIT_ERROR
        if ready is not None:
            ready(master)
        try:
            while not stop.wait(master.idle_s()):
                master.step()
        finally:
            _log.info("master %s stopping", master.instance_key)
            master.shutdown()
        _log.info("master %s stopped", master.instance_key)
        return EXIT_OK
    finally:
        if restore is not None:
            restore()


def main(argv: list[str] | None = None) -> int:
    """``python -m fluxon.service.master --config-b64 B64 | --config PATH``."""
    parser = argparse.ArgumentParser(
        prog="python -m fluxon.service.master", description=__doc__.split("\n")[0]
    )
    add_config_arguments(parser)
    args = parser.parse_args(argv)
    setup_service_logging("master")
    try:
        config = config_from_arguments(args)
    except (OSError, ValueError, TypeError) as exc:
        _log.error("cannot read the master config: %s", exc)
        return EXIT_CONFIG
    return run_master_blocking(config)


if __name__ == "__main__":
    sys.exit(main())
