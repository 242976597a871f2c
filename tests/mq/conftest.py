"""Fixtures of the MQ tests: a zygote for worker processes, stores, unique keys."""

from __future__ import annotations

import logging
import os
import sys
import uuid
from collections.abc import Iterator

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from mq_procs import Zygote  # noqa: E402

from fluxon.kvclient import new_store  # noqa: E402


@pytest.fixture(scope="module")
def zygote(tmp_path_factory) -> Iterator[Zygote]:
    """A pre-warmed process that forks MQ workers (see ``mq_procs``)."""
    log = str(tmp_path_factory.mktemp("zygote") / "zygote.log")
    zyg = Zygote(log)
    try:
        yield zyg
    finally:
        zyg.close()


@pytest.fixture
def key() -> str:
    """A fresh channel unique key."""
    return f"mq-test-{uuid.uuid4().hex[:12]}"


@pytest.fixture
def store(cluster) -> Iterator:
    """An external client of the module's cluster (closed at teardown)."""
    client = new_store(cluster.client_config(f"mq-test-{uuid.uuid4().hex[:8]}")).unwrap()
    try:
        yield client
    finally:
        client.close()


@pytest.fixture
def mq_caplog(caplog) -> Iterator:
    """``caplog`` that also sees the ``fluxon.mq`` logger (it does not propagate)."""
    logger = logging.getLogger("fluxon.mq")
    logger.addHandler(caplog.handler)
    caplog.set_level(logging.DEBUG, logger="fluxon.mq")
    try:
        yield caplog
    finally:
        logger.removeHandler(caplog.handler)
