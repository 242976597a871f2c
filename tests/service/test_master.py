"""The master: config validation, etcd registration, HTTP API, clean stop."""

from __future__ import annotations

import urllib.error
import urllib.request

import orjson
import pytest

from fluxon import naming
from fluxon.api_error import InvalidConfigurationError
from fluxon.etcd_client import connect
from fluxon.etcd_server import free_port
from fluxon.runtime import start_kv_master_process
from fluxon.runtime.process_runner import stop_process
from fluxon.service.master import EXIT_ALREADY_RUNNING, EXIT_CONFIG, validate_master_config

_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def _get(url: str) -> tuple[int, bytes, str]:
    try:
        with _OPENER.open(url, timeout=10) as resp:
            return resp.status, resp.read(), resp.headers.get("Content-Type", "")
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read(), exc.headers.get("Content-Type", "")
    except OSError:  # not listening yet
        return 0, b"", ""


def _config(**overrides) -> dict:
    cfg = {
        "instance_key": "m",
        "cluster_name": "c",
        "port": 31000,
        "etcd_endpoints": ["127.0.0.1:2379"],
        "log_dir": "/tmp/logs",
    }
    cfg.update(overrides)
    return cfg


def test_config_defaults():
    cfg = validate_master_config(_config(monitoring={"prometheus_base_url": "http://x"}))
    assert cfg["master_ui"]["http_listen_addr"] == "127.0.0.1:18080"
    assert cfg["etcd_endpoints"] == ["127.0.0.1:2379"]


@pytest.mark.parametrize(
    "overrides, key",
    [
        ({"port": "31000"}, "port"),
        ({"port": True}, "port"),
        ({"port": 70000}, "port"),
        ({"cluster_name": ""}, "cluster_name"),
        ({"etcd_endpoints": []}, "etcd_endpoints"),
        ({"etcd_endpoints": ["nohost"]}, "etcd_endpoints[0]"),
        ({"log_dir": 5}, "log_dir"),
        ({"colour": "red"}, "colour"),
        ({"monitoring": {"grafana": 1}}, "monitoring.grafana"),
        ({"master_ui": {"http_listen_addr": "localhost"}}, "master_ui.http_listen_addr"),
        ({"master_ui": {"listen": "x:1"}}, "master_ui.listen"),
    ],
)
def test_bad_config_names_the_key(overrides, key):
    with pytest.raises(InvalidConfigurationError) as info:
        validate_master_config(_config(**overrides))
    assert info.value.config_key == key


def test_missing_key_is_named():
    cfg = _config()
    del cfg["etcd_endpoints"]
    with pytest.raises(InvalidConfigurationError) as info:
        validate_master_config(cfg)
    assert info.value.config_key == "etcd_endpoints"


def test_healthz_and_unknown_path(cluster):
    status, body, ctype = _get(cluster.master_url + "/healthz")
    assert (status, body) == (200, b"ok") and ctype.startswith("text/plain")
    status, body, _ = _get(cluster.master_url + "/no/such/page")
    assert status == 404 and b"no such path" in body


def test_members_api_shows_the_owner(cluster):
    status, body, ctype = _get(cluster.master_url + "/api/members")
    assert status == 200 and ctype == "application/json"
    view = orjson.loads(body)
    assert view["cluster_name"] == cluster.cluster_name
    assert [o["owner_id"] for o in view["owners"]] == [cluster.owner_instance_key]
    assert view["owners"][0]["pool_file"] == cluster.pool_file
    kinds = {m["instance_key"]: m["kind"] for m in view["members"]}
    assert kinds == {cluster.owner_instance_key: "owner"}
    assert view["master"]["url"] == cluster.master_url


def test_index_page_lists_the_owner(cluster):
    status, body, ctype = _get(cluster.master_url + "/")
    assert status == 200 and ctype.startswith("text/html")
    assert cluster.owner_instance_key.encode() in body


def test_master_registers_and_deregisters(cluster_factory, etcd_server, tmp_path):
    c = cluster_factory(start=False)
    with connect([etcd_server.client_address]) as session:
        # started from a workdir: the config travels as a file
        proc = start_kv_master_process(
            workdir=str(tmp_path), config=c.master_config, log_path=c.log_path("master")
        )
        c.master_proc = proc
        c.wait_master(proc)  # port 0 in the config: the URL comes from etcd
        assert c.master_url.startswith("http://127.0.0.1:") and not c.master_url.endswith(":0")
        assert (tmp_path / "master_config.json").exists()
        record = orjson.loads(session.get(naming.master_key(c.cluster_name)))
        assert record["pid"] == proc.pid and record["url"] == c.master_url
        assert record["instance_key"] == c.master_config["instance_key"]
        lease_id = session._client.get_response(naming.master_key(c.cluster_name)).kvs[0].lease
        assert lease_id != 0  # leased: it vanishes if the master dies

        # a second master of the same cluster is refused while the first lives
        second = start_kv_master_process(config=c.master_config, log_path=c.log_path("second"))
        assert second.wait(60) == EXIT_ALREADY_RUNNING

        assert stop_process(proc, 15) == 0
        c.master_proc = None
        assert session.get(naming.master_key(c.cluster_name)) is None
    assert (tmp_path / "master_config.json").exists()


def test_master_with_bad_config_exits(cluster_factory):
    c = cluster_factory(start=False)
    proc = start_kv_master_process(
        config=dict(c.master_config, port="x"), log_path=c.log_path("master")
    )
    assert proc.wait(60) == EXIT_CONFIG
    with open(c.log_path("master")) as f:
        assert "config_key='port'" in f.read()


def test_master_with_unreachable_etcd_exits(cluster_factory):
    c = cluster_factory(start=False)
    address = f"127.0.0.1:{free_port()}"
    proc = start_kv_master_process(
        config=dict(c.master_config, etcd_endpoints=[address]), log_path=c.log_path("master")
    )
    assert proc.wait(60) not in (0, None)
    with open(c.log_path("master")) as f:
        text = f.read()
    assert "EtcdError" in text and address in text
