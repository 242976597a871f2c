"""Optional push export: Prometheus remote-write and OTLP/HTTP, a failing target logged once.

A local HTTP server stands in for Prometheus/Greptime: it decodes what it receives
(snappy block format, protobuf ``WriteRequest``; OTLP JSON) with decoders written
here from the formats' specifications, independently of the encoder.
"""

from __future__ import annotations

import struct
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import orjson
import pytest
from prometheus_client.parser import text_string_to_metric_families

from fluxon.api_error import InvalidConfigurationError
from fluxon.etcd_server import free_port
from fluxon.monitoring import (
    MetricsExporter,
    prometheus_families,
    render_prometheus,
)
from fluxon.service.master import validate_master_config

DATA = {
    "channels": [
        {
            "chan_id": 4,
            "unique_keys": 'odd "key"\\with\nnewline',
            "type": "mpsc",
            "capacity": 8,
            "ttl_seconds": 60,
            "current_inflight": 3,
            "producer_count": 1,
            "consumer_count": 1,
            "producers": [
                {"producer_idx": "producer_9", "produce_offset": 5, "consume_offset": 2},
            ],
        }
    ],
    "members": [
        {
            "kind": "consumer",
            "member_id": 10,
            "chan_id": 4,
            "channel_unique_keys": "k",
            "external_client_id": "client-a",
            "status": "alive",
            "calls": 12,
            "messages": 11,
            "timeouts": 1,
            "waits": 3,
            "avg_ms": 2.5,
            "p50_ms": 2.0,
            "p99_ms": 9.0,
            "max_ms": 10.0,
            "wait_rx_avg_ms": 1.5,
            "prefetch_queue": 2,
            "prefetch_hit_ratio": 0.25,
        }
    ],
}


# --------------------------------------------------------------------------- decoders
def _uvarint(buf: bytes, pos: int) -> tuple[int, int]:
    shift = value = 0
    while True:
        byte = buf[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, pos
        shift += 7


def snappy_decode(buf: bytes) -> bytes:
    """Snappy block format (literals and all three copy kinds)."""
    size, pos = _uvarint(buf, 0)
    out = bytearray()
    while pos < len(buf):
        tag = buf[pos]
        pos += 1
        kind = tag & 3
        if kind == 0:
            n = tag >> 2
            if n >= 60:
                extra = n - 59
                n = int.from_bytes(buf[pos : pos + extra], "little")
                pos += extra
            n += 1
            out += buf[pos : pos + n]
            pos += n
            continue
        if kind == 1:
            length = ((tag >> 2) & 7) + 4
            offset = ((tag >> 5) << 8) | buf[pos]
            pos += 1
        elif kind == 2:
            length = (tag >> 2) + 1
            offset = int.from_bytes(buf[pos : pos + 2], "little")
            pos += 2
        else:
            length = (tag >> 2) + 1
            offset = int.from_bytes(buf[pos : pos + 4], "little")
            pos += 4
        for _ in range(length):
            out.append(out[-offset])
    assert len(out) == size
    return bytes(out)


def _pb_fields(buf: bytes) -> Iterator[tuple[int, int, object]]:
    pos = 0
    while pos < len(buf):
        key, pos = _uvarint(buf, pos)
        field_no, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = _uvarint(buf, pos)
        elif wire == 1:
            value = struct.unpack("<d", buf[pos : pos + 8])[0]
            pos += 8
        elif wire == 2:
            n, pos = _uvarint(buf, pos)
            value = buf[pos : pos + n]
            pos += n
        else:
            raise AssertionError(f"unexpected wire type {wire}")
        yield field_no, wire, value


def decode_write_request(raw: bytes) -> list[tuple[dict[str, str], float, int]]:
    """``WriteRequest`` -> [(labels, value, timestamp_ms)]."""
    series = []
    for field_no, _w, ts in _pb_fields(raw):
        assert field_no == 1
        labels: dict[str, str] = {}
        samples = []
        for f, _w2, part in _pb_fields(ts):
            if f == 1:
                pair = {k: v.decode() for k, _w3, v in _pb_fields(part)}
                labels[pair[1]] = pair[2]
            elif f == 2:
                sample = {k: v for k, _w3, v in _pb_fields(part)}
                samples.append((sample[1], sample[2]))
        assert list(labels) == sorted(labels), "labels must be sorted by name"
        for value, stamp in samples:
            series.append((labels, value, stamp))
    return series


# --------------------------------------------------------------------------- receiver
class _Receiver:
    def __init__(self) -> None:
        self.requests: list[tuple[str, dict, bytes]] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                receiver.requests.append((self.path, dict(self.headers), body))
                self.send_response(204)
                self.end_headers()

            def log_message(self, *args) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=10)


@pytest.fixture
def receiver() -> Iterator[_Receiver]:
    rec = _Receiver()
    try:
        yield rec
    finally:
        rec.close()


# --------------------------------------------------------------------------- tests
def test_prometheus_text_escapes_labels():
    families = {f.name: f for f in text_string_to_metric_families(render_prometheus(DATA))}
    (sample,) = families["fluxon_channel_inflight"].samples
    assert sample.labels["unique_key"] == DATA["channels"][0]["unique_keys"]
    assert sample.value == 3
    latency = {s.labels["stat"]: s.value for s in families["fluxon_member_latency_seconds"].samples}
    assert latency == {"avg": 0.0025, "p50": 0.002, "p99": 0.009, "max": 0.01}
    assert families["fluxon_member_timeouts"].samples[0].value == 1


def test_remote_write_and_otlp_push(receiver):
    exporter = MetricsExporter(
        {
            "prometheus_remote_write_url": receiver.url + "/api/v1/write",
            "otlp_log_api": {"otlp_endpoint": receiver.url + "/v1/otlp"},
        },
        "push-cluster",
    )
    before_ms = int(time.time() * 1000)
    exporter.push(prometheus_families(DATA))
    assert [t.pushes for t in exporter.targets] == [1, 1]
    by_path = {path: (headers, body) for path, headers, body in receiver.requests}

    headers, body = by_path["/api/v1/write"]
    assert headers["Content-Encoding"] == "snappy"
    assert headers["Content-Type"] == "application/x-protobuf"
    assert headers["X-Prometheus-Remote-Write-Version"] == "0.1.0"
    series = decode_write_request(snappy_decode(body))
    inflight = [s for s in series if s[0]["__name__"] == "fluxon_channel_inflight"]
    assert len(inflight) == 1
    labels, value, stamp = inflight[0]
    assert value == 3.0 and labels["chan_id"] == "4" and labels["type"] == "mpsc"
    assert stamp >= before_ms
    offsets = [s for s in series if s[0]["__name__"] == "fluxon_channel_produce_offset"]
    assert [(s[0]["producer"], s[1]) for s in offsets] == [("producer_9", 5.0)]

    headers, body = by_path["/v1/otlp/v1/metrics"]
    assert headers["Content-Type"] == "application/json"
    request = orjson.loads(body)
    (resource,) = request["resourceMetrics"]
    attrs = {a["key"]: a["value"]["stringValue"] for a in resource["resource"]["attributes"]}
    assert attrs["fluxon.cluster_name"] == "push-cluster"
    metrics = {m["name"]: m for m in resource["scopeMetrics"][0]["metrics"]}
    (point,) = metrics["fluxon_channel_inflight"]["gauge"]["dataPoints"]
    assert point["asDouble"] == 3.0
    assert metrics["fluxon_member_calls_total"]["sum"]["isMonotonic"] is True


def test_unreachable_target_is_logged_once(receiver, caplog):
    dead_url = f"http://127.0.0.1:{free_port()}/api/v1/write"
    exporter = MetricsExporter({"prom_remote_write_url": [dead_url]}, "c", timeout_s=1.0)
    families = prometheus_families(DATA)
    with caplog.at_level("DEBUG", logger="fluxon.monitoring"):
        for _ in range(4):
            exporter.push(families)
    warnings = [r for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 1 and dead_url in warnings[0].getMessage()
    assert exporter.targets[0].failures == 4
    # the target comes back: one INFO line, and the next failure warns again
    exporter.targets[0].url = receiver.url + "/api/v1/write"
    with caplog.at_level("INFO", logger="fluxon.monitoring"):
        exporter.push(families)
    assert any("works again" in r.getMessage() for r in caplog.records)
    assert not exporter.targets[0].failing


def test_master_config_accepts_the_monitoring_keys():
    base = {
        "instance_key": "m",
        "cluster_name": "c",
        "port": 31000,
        "etcd_endpoints": ["127.0.0.1:2379"],
        "log_dir": "/tmp/logs",
    }
    cfg = validate_master_config(
        dict(
            base,
            monitoring={
                "prometheus_base_url": "http://127.0.0.1:34030",
                "prom_remote_write_url": ["http://127.0.0.1:34030/v1/prometheus/write"],
                "prometheus_remote_write_url": "http://127.0.0.1:9090/api/v1/write",
                "otlp_log_api": {"otlp_endpoint": "http://127.0.0.1:34030/v1/otlp"},
                "push_interval_s": 2,
            },
        )
    )
    assert len(MetricsExporter(cfg["monitoring"], "c").targets) == 3
    assert not MetricsExporter({"prometheus_base_url": "http://x"}, "c")
    for bad in ({"push_interval_s": 0}, {"push_interval_s": "2"}, {"otlp_log_api": "x"}):
        with pytest.raises(InvalidConfigurationError) as info:
            validate_master_config(dict(base, monitoring=bad))
        assert info.value.config_key.startswith("monitoring.")


def test_master_pushes_and_logs_a_dead_target_once(cluster_factory, receiver):
    c = cluster_factory(start=False)
    dead = f"http://127.0.0.1:{free_port()}/api/v1/write"
    c.master_config["monitoring"] = {
        "prom_remote_write_url": [receiver.url + "/api/v1/write", dead],
        "push_interval_s": 0.3,
    }
    c.start()
    deadline = time.monotonic() + 60
    while len(receiver.requests) < 3:
        assert time.monotonic() < deadline, "the master never pushed"
        time.sleep(0.1)
    path, headers, body = receiver.requests[-1]
    assert path == "/api/v1/write" and headers["Content-Encoding"] == "snappy"
    decode_write_request(snappy_decode(body))  # well formed (no channel yet: may be empty)
    time.sleep(1.0)  # several more pushes to the dead target
    with open(c.log_path("master")) as f:
        log = f.read()
    assert log.count(f"metrics push to {dead}") == 1, log[-3000:]
