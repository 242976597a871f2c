"""The master's monitoring on a live channel: JSON, Prometheus, the web page, the CLI.

One live MPMC channel per module (``live_channel``): producer A put 5 messages,
producer B put 3, the consumer took 2, so the offsets and ``current_inflight`` are
known exactly; every handle has published latency into its stats block.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request

import orjson
import pytest
from prometheus_client.parser import text_string_to_metric_families

_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def _get(url: str) -> tuple[int, bytes, str]:
    try:
        with _OPENER.open(url, timeout=30) as resp:
            return resp.status, resp.read(), resp.headers.get("Content-Type", "")
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read(), exc.headers.get("Content-Type", "")


def _wait_for(fetch, ready, timeout: float = 60.0):
    """Poll ``fetch()`` until ``ready(value)``; returns the last value."""
    deadline = time.monotonic() + timeout
    while True:
        value = fetch()
        if ready(value) or time.monotonic() > deadline:
            return value
        time.sleep(0.2)


def _channel_row(data: dict, chan_id: int) -> dict | None:
    rows = [c for c in data.get("channels", []) if c["chan_id"] == chan_id]
    return rows[0] if rows else None


def _api(cluster, path: str) -> dict:
    status, body, ctype = _get(cluster.master_url + path)
    assert status == 200, body[:500]
    assert ctype == "application/json"
    return orjson.loads(body)


def _expected_offsets(live) -> str:
    parts = []
    for producer, produced, consumed in zip(live.producers, live.produced, live.consumed_from):
        parts.append(f"producer_{producer.get_producer_id()}: {produced}/{consumed}")
    return ", ".join(parts)


def _members_ready(live):
    def ready(data: dict) -> bool:
        rows = [m for m in data.get("mq_members", []) if m.get("chan_id") == live.chan_id]
        return len(rows) == 3 and all(m.get("calls") for m in rows)

    return ready


def test_api_channels_reports_exact_offsets(cluster, live_channel):
    live = live_channel
    data = _wait_for(
        lambda: _api(cluster, "/api/channels"),
        lambda d: _channel_row(d, live.chan_id) is not None,
    )
    row = _channel_row(data, live.chan_id)
    assert row is not None, data
    assert row["unique_keys"] == live.key and row["type"] == "mpmc"
    assert (row["capacity"], row["ttl_seconds"]) == (32, 30)
    assert row["producer_offsets"] == _expected_offsets(live)
    assert sum(live.consumed_from) == 2
    assert row["current_inflight"] == 8 - 2
    assert (row["producer_count"], row["consumer_count"]) == (2, 1)
    by_id = {p["member_id"]: p for p in row["producers"]}
    for producer, produced, consumed in zip(live.producers, live.produced, live.consumed_from):
        entry = by_id[int(producer.get_producer_id())]
        assert (entry["produce_offset"], entry["consume_offset"]) == (produced, consumed)
        assert entry["backlog"] == produced - consumed


def test_api_members_lists_the_handles_with_latency(cluster, live_channel):
    live = live_channel
    data = _wait_for(lambda: _api(cluster, "/api/members"), _members_ready(live))
    # The cluster view stays as it was (compatibility) ...
    assert [o["owner_id"] for o in data["owners"]] == [cluster.owner_instance_key]
    # ... and the MQ members come under "mq_members".
    rows = {
        (m["kind"], m["member_id"]): m for m in data["mq_members"] if m["chan_id"] == live.chan_id
    }
    ids = [("producer", int(p.get_producer_id())) for p in live.producers]
    ids.append(("consumer", int(live.consumer.get_consumer_id())))
    assert sorted(rows) == sorted(ids)
    recorders = dict(
        zip(ids, [live.recorders[n] for n in ("producer_a", "producer_b", "consumer")])
    )
    instance_key = live.store.instance_key().unwrap()
    for ident, m in rows.items():
        assert m["status"] == "alive"
        assert m["pid"] == os.getpid()
        assert m["external_client_id"] == instance_key
        assert m["owner_id"] == cluster.owner_instance_key
        assert m["channel_unique_keys"] == live.key
        assert m["calls"] == recorders[ident].lifetime()["calls"]
        assert m["p50_ms"] is not None and m["p99_ms"] >= m["p50_ms"] > 0
    for producer, produced, consumed in zip(live.producers, live.produced, live.consumed_from):
        m = rows[("producer", int(producer.get_producer_id()))]
        assert (m["produce_offset"], m["consume_offset"]) == (produced, consumed)
    consumer = rows[("consumer", int(live.consumer.get_consumer_id()))]
    assert (consumer["produce_offset"], consumer["consume_offset"]) == (8, 2)
    # The rows count exactly the calls the fixture made: one message per call.
    assert (consumer["calls"], consumer["messages"], consumer["timeouts"]) == (2, 2, 0)
    for producer, produced in zip(live.producers, live.produced):
        m = rows[("producer", int(producer.get_producer_id()))]
        assert (m["calls"], m["messages"], m["timeouts"], m["waits"]) == (produced, produced, 0, 0)


def test_metrics_parse_as_prometheus_text(cluster, live_channel):
    live = live_channel
    _wait_for(lambda: _api(cluster, "/api/members"), _members_ready(live))
    status, body, ctype = _get(cluster.master_url + "/metrics")
    assert status == 200 and ctype.startswith("text/plain")
    families = {f.name: f for f in text_string_to_metric_families(body.decode())}
    inflight = [
        s for s in families["fluxon_channel_inflight"].samples
        if s.labels["chan_id"] == str(live.chan_id)
    ]  # fmt: skip
    assert len(inflight) == 1
    assert inflight[0].labels["unique_key"] == live.key and inflight[0].value == 6
    assert families["fluxon_channel_inflight"].type == "gauge"
    produce = {
        s.labels["producer"]: s.value
        for s in families["fluxon_channel_produce_offset"].samples
        if s.labels["chan_id"] == str(live.chan_id)
    }
    assert produce == {
        f"producer_{p.get_producer_id()}": n for p, n in zip(live.producers, live.produced)
    }
    calls = families["fluxon_member_calls"]  # the parser drops the counter's _total suffix
    assert calls.type == "counter"
    assert any(s.labels["chan_id"] == str(live.chan_id) for s in calls.samples)
    up = [
        s for s in families["fluxon_member_up"].samples if s.labels["chan_id"] == str(live.chan_id)
    ]
    assert len(up) == 3 and all(s.value == 1 for s in up)


def _status_cli(cluster, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [
            sys.executable, "-m", "fluxon", "status",
            "--workdir", cluster.base_dir,
            "--etcd", cluster.etcd_addresses[0],
            "--cluster", cluster.cluster_name,
            "--share-mem-path", cluster.share_mem_path,
            *extra,
        ],
        cwd=_ROOT, capture_output=True, text=True, timeout=240, check=False,
    )  # fmt: skip


def test_status_cli_prints_the_channel_row(cluster, live_channel):
    live = live_channel
    done = _status_cli(cluster)
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert f"monitoring: {cluster.master_url}/" in out
    assert "Channels (" in out and "Members (" in out
    rows = [line for line in out.splitlines() if line.startswith(f"{live.chan_id} ")]
    assert rows, out
    row = rows[0]
    assert live.key in row and "mpmc" in row and _expected_offsets(live) in row
    assert re.search(r"\s6\s+2\s+1\s", row), row  # current_inflight, producers, consumers

    done = _status_cli(cluster, "--json")
    assert done.returncode == 0, done.stderr
    data = orjson.loads(done.stdout)
    assert data["master_url"] == cluster.master_url
    assert data["monitoring_url"] == cluster.master_url + "/"
    row = _channel_row(data, live.chan_id)
    assert row["producer_offsets"] == _expected_offsets(live) and row["current_inflight"] == 6
    assert {m["kind"] for m in data["mq_members"] if m["chan_id"] == live.chan_id} == {
        "producer",
        "consumer",
    }


def _run_chromium(chromium: str, args: list[str], timeout: float = 120.0) -> str:
    proc = subprocess.Popen(
        [chromium, *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # its helper processes share our new group: kill them all
    )
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        pytest.fail(f"chromium did not finish within {timeout} s")
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)  # leftover helpers of the group we started
        except ProcessLookupError:
            pass
    assert proc.returncode == 0, err[-2000:]
    return out


def test_web_page_in_headless_chromium(cluster, live_channel, chromium, tmp_path):
    live = live_channel
    _wait_for(lambda: _api(cluster, "/api/members"), _members_ready(live))
    url = cluster.master_url + "/"
    common = [
        "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync",
        "--disable-dev-shm-usage", "--window-size=1400,900", "--virtual-time-budget=5000",
    ]  # fmt: skip
    shot = tmp_path / "page.png"
    _run_chromium(
        chromium,
        [*common, f"--user-data-dir={tmp_path / 'profile-shot'}", f"--screenshot={shot}", url],
    )
    assert shot.exists() and shot.stat().st_size > 1000
    dom = _run_chromium(
        chromium, [*common, f"--user-data-dir={tmp_path / 'profile-dom'}", "--dump-dom", url]
    )

    def table(table_id: str) -> str:
        match = re.search(rf'<table id="{table_id}">(.*?)</table>', dom, re.S)
        assert match, f"no table {table_id} in the page"
        return match.group(1)

    channels = table("channels")
    assert "<th>chan_id</th>" in channels and "<th>producer_offsets</th>" in channels
    chan_rows = [r for r in channels.split("<tr") if live.key in r]
    assert len(chan_rows) == 1
    assert _expected_offsets(live) in chan_rows[0]
    assert f'<td class="num">{live.chan_id}</td>' in chan_rows[0]
    assert '<td class="num">6</td>' in chan_rows[0]  # current_inflight
    members = table("members")
    assert "<th>external_client_id</th>" in members
    member_rows = [r for r in members.split("<tr") if live.key in r]
    assert len(member_rows) == 3 and all("alive" in r for r in member_rows)
    # class="num" cells are written by the page's script: the table was refreshed from
    # /api/mq in the browser, not only rendered by the server.
    state = re.search(r'<span id="state">(.*?)</span>', dom, re.S).group(1)
    assert state.startswith("updated "), state
