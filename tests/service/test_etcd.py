"""The embedded etcd server and the time-bounded etcd session."""

from __future__ import annotations

import threading
import time
import uuid

import pytest

from fluxon.api_error import EtcdError
from fluxon.etcd_client import connect
from fluxon.etcd_server import (
    EtcdServer,
    etcd_reachable,
    find_etcd_binary,
    free_port,
    split_address,
)
from fluxon.procinfo import is_process_alive


@pytest.fixture
def session(etcd_server):
    s = connect([etcd_server.client_address], timeout=3.0)
    yield s
    s.close()


@pytest.fixture
def prefix(session):
    p = f"/fluxon-test/{uuid.uuid4().hex}/"
    yield p
    session.delete_prefix(p)


@pytest.fixture
def private_etcd(tmp_path):
    """An etcd of our own, free to stop and restart."""
    server = EtcdServer(str(tmp_path / "data"), free_port(), free_port())
    server.start(timeout=60)
    yield server
    server.stop()


def test_binary_is_found():
    assert find_etcd_binary()


def test_split_address():
    assert split_address("127.0.0.1:2379") == ("127.0.0.1", 2379)
    assert split_address("http://localhost:1234/") == ("localhost", 1234)
    assert split_address("[::1]:5") == ("::1", 5)
    assert split_address("host") == ("host", 2379)
    with pytest.raises(EtcdError):
        split_address("host:port")


def test_server_start_stop(private_etcd):
    assert etcd_reachable(private_etcd.client_address)
    pid = private_etcd.pid
    private_etcd.stop()
    assert not private_etcd.is_running()
    assert not is_process_alive(pid)
    assert not etcd_reachable(private_etcd.client_address, timeout=0.5)
    private_etcd.stop()  # idempotent


@pytest.mark.timeout(60)
def test_unreachable_etcd_gives_etcd_error():
    address = f"127.0.0.1:{free_port()}"
    with pytest.raises(EtcdError) as info:
        connect([address], timeout=2.0)
    assert address in str(info.value) and "status" in str(info.value)
    s = connect([address], timeout=2.0, probe=False)
    try:
        for op in (lambda: s.get("/k"), lambda: s.put("/k", "v"), lambda: s.grant_lease(5)):
            with pytest.raises(EtcdError) as info:
                op()
            assert address in str(info.value)
    finally:
        s.close()
    assert not etcd_reachable(address, timeout=0.5)


def test_key_value_operations(session, prefix):
    session.put(prefix + "a", "1")
    session.put(prefix + "b", b"\x00\xff")
    assert session.get(prefix + "a") == b"1"
    assert session.get_str(prefix + "a") == "1"
    assert session.get(prefix + "missing") is None
    assert session.get_prefix(prefix) == [(prefix + "a", b"1"), (prefix + "b", b"\x00\xff")]
    assert session.count_prefix(prefix) == 2
    assert session.put_if_absent(prefix + "a", "2") is False
    assert session.get(prefix + "a") == b"1"
    assert session.put_if_absent(prefix + "c", "3") is True
    assert session.compare_and_swap(prefix + "c", "wrong", "4") is False
    assert session.compare_and_swap(prefix + "c", "3", "4") is True
    assert session.compare_and_swap(prefix + "d", None, "5") is True
    assert session.delete_if_value(prefix + "c", "3") is False
    assert session.delete_if_value(prefix + "c", "4") is True
    assert session.delete(prefix + "a") is True
    assert session.delete(prefix + "a") is False
    assert session.delete_prefix(prefix) == 2


def test_counter_is_unique_under_concurrency(session, prefix):
    key = prefix + "counter"
    assert session.incr_counter(key) == 1
    got: list[int] = []
    lock = threading.Lock()

    def worker():
        with connect(session.addresses) as own:
            for _ in range(10):
                value = own.incr_counter(key)
                with lock:
                    got.append(value)

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert sorted(got) == list(range(2, 42))


def test_lease_keepalive_and_revoke(session, prefix):
    lease = session.grant_lease(2)
    session.put(prefix + "leased", "v", lease=lease)
    handle = session.keepalive(lease, 0.3)
    time.sleep(3.0)  # longer than the TTL: only the keepalive keeps the key
    assert session.get(prefix + "leased") == b"v"
    assert session.lease_ttl(lease) > 0
    handle.stop()
    assert not handle.running
    session.revoke(lease)
    assert session.get(prefix + "leased") is None


def test_lease_expires_without_keepalive(session, prefix):
    lease = session.grant_lease(1)
    session.put(prefix + "short", "v", lease=lease)
    deadline = time.monotonic() + 30
    while session.get(prefix + "short") is not None and time.monotonic() < deadline:
        time.sleep(0.2)
    assert session.get(prefix + "short") is None
    assert session.refresh_lease(lease) == 0


def test_keepalive_reports_a_lost_lease(session, prefix):
    lease = session.grant_lease(5)
    lost = threading.Event()
    handle = session.keepalive(lease, 0.2, on_lost=lambda _id: lost.set())
    with connect(session.addresses) as other:
        other.revoke(lease)
    assert lost.wait(30)
    deadline = time.monotonic() + 10
    while handle.running and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not handle.running


@pytest.mark.timeout(120)
def test_keepalive_survives_an_outage(private_etcd):
    s = connect([private_etcd.client_address], timeout=2.0)
    try:
        lease = s.grant_lease(6)
        s.put("/outage/k", "v", lease=lease)
        handle = s.keepalive(lease, 0.3)
        private_etcd.stop()
        deadline = time.monotonic() + 30
        while not handle.failing and time.monotonic() < deadline:
            time.sleep(0.05)
        assert handle.failing and handle.running  # failed refreshes are logged, not raised
        with pytest.raises(EtcdError):
            s.get("/outage/k")
        private_etcd.start(timeout=60)
        restarted = time.monotonic()
        while handle.last_ok < restarted and time.monotonic() < restarted + 30:
            time.sleep(0.05)
        assert handle.last_ok >= restarted and not handle.failing  # it resumed by itself
        assert s.get("/outage/k") == b"v"
        assert handle.running
    finally:
        s.close()
    assert not handle.running
    with pytest.raises(EtcdError):
        s.get("/outage/k")  # a closed session refuses calls


def test_idle_session_closes_its_grpc_channel_and_reopens_it(session, prefix):
    s = connect(session.addresses, timeout=3.0, idle_close_s=0.3)
    try:
        s.put(prefix + "k", "v")
        lease = s.grant_lease(5)
        assert s.grpc_open
        handle = s.keepalive(lease, 0.2)
        deadline = time.monotonic() + 20
        while s.grpc_open and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not s.grpc_open  # closed by the keepalive thread after 0.3 s without a call
        last_ok = handle.last_ok
        time.sleep(0.5)
        assert handle.last_ok > last_ok and not handle.failing  # refreshes need no channel
        assert s.get(prefix + "k") == b"v"  # the next call opens it again
        assert s.grpc_open
        assert session.lease_ttl(lease) > 0
    finally:
        s.close()
    assert not s.grpc_open
    with pytest.raises(EtcdError):
        s.refresh_lease(lease)  # a closed session refuses refreshes too


def test_idle_channel_closes_on_time_between_refreshes(session):
    s = connect(session.addresses, timeout=3.0, idle_close_s=0.3)
    try:
        lease = s.grant_lease(60)
        handle = s.keepalive(lease, 20.0)  # no refresh during the test
        t0 = time.monotonic()
        while s.grpc_open and time.monotonic() < t0 + 10:
            time.sleep(0.02)
        assert not s.grpc_open
        assert time.monotonic() - t0 < 3.0  # about idle_close_s after the last call
        assert handle.last_ok == 0.0 and handle.running
        s.lease_ttl(lease)  # reopens; and closes again
        t1 = time.monotonic()
        while s.grpc_open and time.monotonic() < t1 + 10:
            time.sleep(0.02)
        assert not s.grpc_open and time.monotonic() - t1 < 3.0
    finally:
        s.close()


def test_session_without_idle_close_keeps_its_channel(session, prefix):
    lease = session.grant_lease(5)
    handle = session.keepalive(lease, 0.1)
    time.sleep(0.6)
    assert session.grpc_open and handle.last_ok > 0
    handle.stop()


def test_refresh_falls_back_to_grpc_where_no_gateway_is_served(session):
    """An endpoint answering 404 on the gateway path: refreshes go over gRPC from then on."""
    import http.server

    class NotFound(http.server.BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802 - http.server's naming
            self.send_response(404)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args):
            pass

    httpd = http.server.HTTPServer(("127.0.0.1", 0), NotFound)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    s = connect(session.addresses, timeout=3.0)
    try:
        s._gateway._targets = [httpd.server_address]  # the gateway "lives" elsewhere
        lease = s.grant_lease(5)
        assert s.via_gateway
        assert s.refresh_lease(lease) > 0  # answered over gRPC
        assert not s.via_gateway
        assert s.refresh_lease(lease) > 0
        s.revoke(lease)
        assert s.refresh_lease(lease) == 0
    finally:
        s.close()
        httpd.shutdown()
        httpd.server_close()


def test_gateway_refresh_reports_an_unreachable_etcd(session):
    s = connect(session.addresses, timeout=3.0)
    try:
        lease = s.grant_lease(5)
        s._gateway._targets = [("127.0.0.1", free_port())]  # nothing listens there
        with pytest.raises(EtcdError, match="refresh_lease"):
            s.refresh_lease(lease, timeout=1.0)
    finally:
        s.close()
