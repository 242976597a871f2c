"""Fixtures of the observability tests: log capture, headless Chromium, a live channel.

``live_channel`` (module): on the module's ``cluster``, one store holding two producers
and one consumer of an MPMC channel with a known backlog (producer A put 5 messages,
producer B put 3, the consumer took 2, one message per call); each handle's own stats
recorder has published those calls into the handle's stats block.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest

from fluxon.api_ext_chan import ChanRole, ChanType, new_or_bind_with_unique_key
from fluxon.kvclient import new_store
from fluxon.stats import ConsumerStats, ProducerStats

#: Loggers whose records the tests read (the MQ logger does not propagate).
CAPTURED_LOGGERS = ("fluxon.mq", "fluxon.monitoring", "fluxon.test.stats")


@pytest.fixture
def stats_caplog(caplog) -> Iterator[Any]:
    """``caplog`` that also sees the non-propagating ``fluxon.mq`` logger."""
    loggers = [logging.getLogger(name) for name in CAPTURED_LOGGERS]
    for logger in loggers:
        caplog.set_level(logging.DEBUG, logger=logger.name)
    loggers = [logger for logger in loggers if not logger.propagate]  # others reach caplog
    for logger in loggers:
        logger.addHandler(caplog.handler)
    try:
        yield caplog
    finally:
        for logger in loggers:
            logger.removeHandler(caplog.handler)


def _find_chromium() -> str | None:
    for name in ("chromium", "chromium-browser"):
        path = shutil.which(name)
        if path:
            return path
    return "/usr/bin/chromium" if os.access("/usr/bin/chromium", os.X_OK) else None


@pytest.fixture(scope="session")
def chromium() -> str:
    """Path of a headless-capable Chromium; installs Debian's ``chromium`` if missing."""
    path = _find_chromium()
    if path is None:
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
        steps = (["apt-get", "update", "-q"], ["apt-get", "install", "-y", "-q", "chromium"])
        try:
            for cmd in steps:
                done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
                if done.returncode != 0:
                    why = done.stderr[-500:]
                    pytest.skip(f"cannot install chromium: {' '.join(cmd)} failed: {why}")
        except (OSError, subprocess.TimeoutExpired) as exc:
            pytest.skip(f"cannot install chromium with apt-get: {exc}")
        path = _find_chromium()
        if path is None:
            pytest.skip("apt-get installed chromium but no chromium binary was found")
    return path


@dataclass
class LiveChannel:
    """What ``live_channel`` built (see the module docstring)."""

    key: str
    store: Any
    producers: list[Any]
    consumer: Any
    produced: list[int]
    consumed_from: list[int]
    recorders: dict[str, Any] = field(default_factory=dict)

    @property
    def chan_id(self) -> int:
        return int(self.consumer.get_chan_id())


@pytest.fixture(scope="module")
def live_channel(cluster) -> Iterator[LiveChannel]:
    """Two producers (5 and 3 messages) and one consumer (took 2) on one MPMC channel."""
    key = f"obs-{uuid.uuid4().hex[:10]}"
    store = new_store(cluster.client_config(f"obs-client-{uuid.uuid4().hex[:6]}")).unwrap()
    handles: list[Any] = []
    try:

        def bind(role: ChanRole) -> Any:
            res = new_or_bind_with_unique_key(
                store, {"capacity": 32, "ttl_seconds": 30}, key, ChanType.MPMC, role
            )
            handles.append(res.unwrap())
            return handles[-1]

        prod_a, prod_b = bind(ChanRole.PRODUCER), bind(ChanRole.PRODUCER)
        consumer = bind(ChanRole.CONSUMER)
        produced = [5, 3]
        for label, (producer, n) in enumerate(zip((prod_a, prod_b), produced)):
            for seq in range(n):
                assert producer.put_data({"producer": label, "seq": seq}, try_time=5).unwrap()
        consumed_from = [0, 0]
        for _ in range(2):
            msgs = consumer.get_data(batch_size=1, try_time=5).unwrap()
            for msg in msgs:
                consumed_from[msg["producer"]] += 1
        live = LiveChannel(key, store, [prod_a, prod_b], consumer, produced, consumed_from)
        # The handles' own recorders publish what the member rows must show.
        for name, handle in (
            ("producer_a", prod_a),
            ("producer_b", prod_b),
            ("consumer", consumer),
        ):
            recorder = handle._stats
            assert isinstance(recorder, (ConsumerStats, ProducerStats))
            assert handle._stats_block is not None, "no pool room for a stats block"
            recorder.flush(force_publish=True)
            live.recorders[name] = recorder
        yield live
    finally:
        for handle in reversed(handles):
            handle.close()
        store.close()
