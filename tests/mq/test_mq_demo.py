"""``examples/start_mpmc_demo.py``: messages flow, and Ctrl-C exits with status 130."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time

import pytest

_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DEMO = os.path.join(_ROOT, "examples", "start_mpmc_demo.py")


class Demo:
    """One demo process whose stderr is collected line by line."""

    def __init__(self, cluster, role: str, unique_id: str, *extra: str) -> None:
        env = dict(os.environ, FLUXON_LOG="INFO", PYTHONUNBUFFERED="1")
        self.proc = subprocess.Popen(
            [
                sys.executable,
                DEMO,
                "--role",
                role,
                "--unique-id",
                unique_id,
                "--cluster",
                cluster.cluster_name,
                "--share-mem-path",
                cluster.share_mem_path,
                *extra,
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
            cwd=_ROOT,
        )
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        for line in self.proc.stderr:
            self.lines.append(line.rstrip("\n"))

    def wait_for(self, needle: str, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while not any(needle in line for line in self.lines):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self._reader.join(2)
                raise AssertionError(f"{needle!r} never logged:\n" + "\n".join(self.lines[-40:]))
            time.sleep(0.05)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


@pytest.fixture
def demos():
    started: list[Demo] = []
    yield started
    for demo in started:
        demo.stop()


def test_demo_producer_and_consumer_exit_130_on_ctrl_c(cluster, key, demos):
    consumer = Demo(cluster, "consumer", key)
    demos.append(consumer)
    consumer.wait_for("bound to channel")
    # The consumer is blocked in get_data(batch_size=1) with no producer: Ctrl-C wakes it.
    time.sleep(0.3)
    producer = Demo(cluster, "producer", key, "--interval", "0.05")
    demos.append(producer)
    producer.wait_for("sent seq=3")
    consumer.wait_for("got seq=3")
    producer.proc.send_signal(signal.SIGINT)
    assert producer.proc.wait(30) == 130, "\n".join(producer.lines[-20:])
    time.sleep(0.3)
    consumer.proc.send_signal(signal.SIGINT)
    assert consumer.proc.wait(30) == 130, "\n".join(consumer.lines[-20:])
    assert any("stopped by Ctrl-C" in line for line in consumer.lines)


def test_demo_consumer_blocked_without_producer_exits_130(cluster, key, demos):
    consumer = Demo(cluster, "consumer", key)
    demos.append(consumer)
    consumer.wait_for("bound to channel")
    time.sleep(0.5)
    assert consumer.proc.poll() is None
    consumer.proc.send_signal(signal.SIGINT)
    assert consumer.proc.wait(30) == 130, "\n".join(consumer.lines[-20:])
