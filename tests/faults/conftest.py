"""Fixtures of the fault-injection suite (``tests/faults``).

Knobs (environment):

- ``FLUXON_FAULT_KILLS``: SIGKILLs of the kill matrix (default 36; ``make soak`` uses 240).
- ``FLUXON_SOAK_SECONDS``: length of the soak test (default 12; ``make soak`` uses 1800).
- ``FLUXON_FAULT_SEED``: seed of the random kill schedule (default: random, printed).
- ``FLUXON_FAULT_EXAMPLES``: scale of the hypothesis example counts (default 1; ``make
  soak`` uses 10).
- ``FLUXON_FAULT_REPORT``: a file the kill matrix and the soak append their figures to,
  one JSON object a line (default: none; ``make soak`` uses ``.fault-report.jsonl``).
"""

from __future__ import annotations

import json
import os
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest

_HERE = os.path.dirname(os.path.abspath(__file__))
if _HERE not in sys.path:
    sys.path.insert(0, _HERE)

from fault_procs import Zygote  # noqa: E402

from fluxon.etcd_server import EtcdServer, free_port  # noqa: E402
from fluxon.kvclient import new_store  # noqa: E402

#: SIGKILLs of the kill matrix.
FAULT_KILLS = int(os.environ.get("FLUXON_FAULT_KILLS") or 36)
#: Seconds of the soak test.
SOAK_SECONDS = float(os.environ.get("FLUXON_SOAK_SECONDS") or 12)
#: Scale of the hypothesis example counts.
FAULT_EXAMPLES = float(os.environ.get("FLUXON_FAULT_EXAMPLES") or 1.0)


def record_figures(test: str, figures: dict[str, Any]) -> None:
    """Print ``figures`` and append them to ``FLUXON_FAULT_REPORT`` (if set) as one line.

    The long run (``make soak``) keeps this file: tests/faults/README.md quotes it.
    """
    line = json.dumps({"test": test, "time": time.strftime("%Y-%m-%dT%H:%M:%S"), **figures})
    print(f"{test}: {line}")
    report = os.environ.get("FLUXON_FAULT_REPORT")
    if report:
        with open(report, "a") as fh:
            fh.write(line + "\n")


def wait_until(predicate: Callable[[], Any], timeout: float, what: str, step: float = 0.05) -> Any:
    """Poll ``predicate`` until it returns something truthy; fail after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(step)


def _root_conftest(config: pytest.Config) -> Any:
    """The ``tests/conftest.py`` plugin module (it defines ``ClusterHandle``)."""
    for plugin in config.pluginmanager.get_plugins():
        if getattr(plugin, "ClusterHandle", None) is not None:
            return plugin
    raise RuntimeError("tests/conftest.py is not loaded")


@pytest.fixture(scope="module")
def zygote(tmp_path_factory) -> Iterator[Zygote]:
    """A pre-warmed process forking fault workers (see ``fault_procs``)."""
    zyg = Zygote(str(tmp_path_factory.mktemp("zygote") / "zygote.log"))
    try:
        yield zyg
    finally:
        zyg.close()


@pytest.fixture
def make_cluster(request, etcd_addresses) -> Iterator[Callable[..., Any]]:
    """Start local clusters (master + owner); every one is stopped at teardown.

    ``make_cluster(etcd=None, start=True, with_master=True, pool_bytes=...)``; ``etcd``
    is a list of addresses (default: the session etcd).
    """
    cluster_cls = _root_conftest(request.config).ClusterHandle
    started: list[Any] = []

    def make(*, etcd: list[str] | None = None, start: bool = True, **kwargs: Any) -> Any:
        handle = cluster_cls(etcd or etcd_addresses, name_prefix="fault", **kwargs)
        started.append(handle)
        return handle.start() if start else handle

    try:
        yield make
    finally:
        for handle in reversed(started):
            handle.stop()


@pytest.fixture
def private_etcd(tmp_path) -> Iterator[EtcdServer]:
    """An etcd of this test alone (it may be stopped and started again, same data)."""
    server = EtcdServer(
        str(tmp_path / "etcd-data"), free_port(), free_port(), log_path=str(tmp_path / "etcd.log")
    )
    server.start(timeout=60.0)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def stores() -> Iterator[Callable[..., Any]]:
    """``stores(cluster, name=None)``: external clients closed at teardown."""
    opened: list[Any] = []

    def make(cluster: Any, name: str | None = None) -> Any:
        store = new_store(cluster.client_config(name or f"fault-{uuid.uuid4().hex[:8]}")).unwrap()
        opened.append(store)
        return store

    try:
        yield make
    finally:
        for store in reversed(opened):
            store.close()


@pytest.fixture
def key() -> str:
    """A fresh channel unique key."""
    return f"fault-{uuid.uuid4().hex[:12]}"
