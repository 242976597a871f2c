"""FluxonKvClientConfig: accepted shapes, normalisation, and every rejection naming its key."""

from __future__ import annotations

import copy
import enum
import json
import pickle
import types

import orjson
import pytest

from fluxon.api_error import InvalidConfigurationError
from fluxon.config import FluxonKvClientConfig, parse_etcd_addresses, parse_size

EXTERNAL = {
    "instance_key": "producer-1",
    "fluxonkv_spec": {"cluster_name": "demo-kv-cluster", "share_mem_path": "/dev/shm/fluxon_demo"},
}

OWNER = {
    "instance_key": "owner-1",
    "contribute_to_cluster_pool_size": {"dram": "1GB", "vram": {}},
    "fluxonkv_spec": {
        "etcd_addresses": ["127.0.0.1:2379"],
        "cluster_name": "demo-kv-cluster",
        "share_mem_path": "/dev/shm/fluxon_demo",
    },
}


def with_changes(base: dict, **paths) -> dict:
    """Deep copy of ``base`` with ``a__b=value`` set (``...=DELETE`` removes the key)."""
    out = copy.deepcopy(base)
    for path, value in paths.items():
        parts = path.split("__")
        node = out
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        if value is DELETE:
            node.pop(parts[-1], None)
        else:
            node[parts[-1]] = value
    return out


DELETE = object()


def rejected(cfg) -> InvalidConfigurationError:
    with pytest.raises(InvalidConfigurationError) as info:
        FluxonKvClientConfig(cfg)
    return info.value


# --------------------------------------------------------------------------- accepted
def test_minimal_external_client():
    cfg = FluxonKvClientConfig(EXTERNAL)
    assert isinstance(cfg, dict)
    assert cfg.instance_key == "producer-1"
    assert cfg.cluster_name == "demo-kv-cluster"
    assert cfg.share_mem_path == "/dev/shm/fluxon_demo"
    assert cfg.is_external and cfg.dram_bytes == 0
    assert cfg.etcd_addresses == []
    assert cfg.sub_cluster is None
    assert cfg.config_dict is cfg
    assert cfg.fluxonkv_spec_cluster_name == "demo-kv-cluster"
    assert cfg.fluxonkv_spec_share_mem_path == "/dev/shm/fluxon_demo"
    assert cfg.fluxonkv_spec_etcd_addresses is None
    assert cfg == EXTERNAL


def test_zero_contribution_block_is_external():
    cfg = FluxonKvClientConfig(
        with_changes(EXTERNAL, contribute_to_cluster_pool_size={"dram": 0, "vram": {"0": "0MB"}})
    )
    assert cfg.is_external
    assert cfg["contribute_to_cluster_pool_size"] == {"dram": 0, "vram": {"0": 0}}


def test_owner_config_is_normalised():
    cfg = FluxonKvClientConfig(OWNER)
    assert not cfg.is_external
    assert cfg.dram_bytes == 1 << 30
    assert cfg["contribute_to_cluster_pool_size"]["dram"] == 1 << 30
    assert cfg.etcd_addresses == ["127.0.0.1:2379"]
    assert cfg.sub_cluster == "default"
    assert cfg.fluxonkv_spec_sub_cluster == "default"


def test_owner_accepts_reference_extras():
    cfg = FluxonKvClientConfig(
        with_changes(
            OWNER,
            fluxonkv_spec__etcd_addresses="10.0.0.1:2379, 10.0.0.2:2379",
            fluxonkv_spec__sub_cluster="rack-a",
            fluxonkv_spec__large_file_paths={"root_paths": ["/data/large"]},
            fluxonkv_spec__large_limit_size="64MB",
            fluxonkv_spec__p2p_listen_port=31001,
            fluxonkv_spec__redis_compat={"listen_addr": "127.0.0.1:16379"},
            network={"rdma_device_names": ["mlx5_0"], "tcp_reactor_mode": "thread"},
            pprof_duration_seconds=30,
            test_spec_config={"protocol_type": "tcp", "disable_prefix_index": True},
        )
    )
    assert cfg.etcd_addresses == ["10.0.0.1:2379", "10.0.0.2:2379"]
    assert cfg.sub_cluster == "rack-a"
    assert cfg["fluxonkv_spec"]["large_limit_size"] == 64 << 20
    assert cfg.pprof_duration_seconds == 30
    FluxonKvClientConfig(with_changes(OWNER, fluxonkv_spec__large_file_paths=["/a", "/b"]))


def test_config_is_plain_serialisable_data():
    cfg = FluxonKvClientConfig(OWNER)
    again = FluxonKvClientConfig(orjson.loads(orjson.dumps(cfg)))
    assert again == cfg
    assert json.loads(json.dumps(cfg)) == cfg
    back = pickle.loads(pickle.dumps(cfg))
    assert type(back) is FluxonKvClientConfig and back == cfg and back.dram_bytes == 1 << 30
    assert cfg.to_dict() == cfg and type(cfg.to_dict()) is dict
    assert FluxonKvClientConfig(cfg) == cfg
    for duplicate in (copy.copy(cfg), copy.deepcopy(cfg)):
        assert type(duplicate) is FluxonKvClientConfig and duplicate == cfg
        assert duplicate.cluster_name == cfg.cluster_name


def test_mappings_enums_and_tuples_are_converted():
    class Mode(enum.Enum):
        TCP = "tcp"

    cfg = FluxonKvClientConfig(
        types.MappingProxyType(
            with_changes(
                OWNER,
                fluxonkv_spec__etcd_addresses=("127.0.0.1:2379",),
                test_spec_config={"protocol_type": Mode.TCP},
            )
        )
    )
    assert cfg.etcd_addresses == ["127.0.0.1:2379"]
    assert cfg["test_spec_config"] == {"protocol_type": "tcp"}
    orjson.dumps(cfg)


def test_input_is_not_modified():
    original = copy.deepcopy(OWNER)
    FluxonKvClientConfig(original)
    assert original == OWNER


# --------------------------------------------------------------------------- parse_size
@pytest.mark.parametrize(
    "value,expected",
    [
        (0, 0),
        (1234, 1234),
        (1e9, 1_000_000_000),
        ("1024", 1024),
        ("512MB", 512 << 20),
        ("512 MiB", 512 << 20),
        ("16m", 16 << 20),
        ("1GB", 1 << 30),
        ("1gib", 1 << 30),
        ("1.5GiB", 3 << 29),
        (" 2 KB ", 2048),
        ("1T", 1 << 40),
        ("10B", 10),
        (".5K", 512),
    ],
)
def test_parse_size(value, expected):
    assert parse_size(value, "k") == expected


@pytest.mark.parametrize(
    "value", [-1, "-1MB", "abc", "1XB", "", "1.2.3", "MB", True, None, 1.5, -2.0, [1], "1 G B"]
)
def test_parse_size_rejects(value):
    with pytest.raises(InvalidConfigurationError) as info:
        parse_size(value, "contribute_to_cluster_pool_size.dram")
    assert info.value.config_key == "contribute_to_cluster_pool_size.dram"
    assert "contribute_to_cluster_pool_size.dram" in info.value.message


def test_parse_etcd_addresses():
    assert parse_etcd_addresses("a:1,b:2") == ["a:1", "b:2"]
    assert parse_etcd_addresses(["[::1]:2379"]) == ["[::1]:2379"]
    for bad in ([], "", ["a"], ["a:0"], ["a:70000"], ["http://a:1"], [1], 5, ["a:b"]):
        with pytest.raises(InvalidConfigurationError):
            parse_etcd_addresses(bad)


# --------------------------------------------------------------------------- rejected
@pytest.mark.parametrize(
    "changes,key",
    [
        ({"colour": "blue"}, "colour"),
        ({"fluxonkv_spec__shared_file_path": "/x"}, "fluxonkv_spec.shared_file_path"),
        ({"network": {"mtu": 9000}}, "network.mtu"),
        (
            {"contribute_to_cluster_pool_size": {"dram": 0, "hbm": 1}},
            "contribute_to_cluster_pool_size.hbm",
        ),
    ],
)
def test_unknown_keys_are_named(changes, key):
    err = rejected(with_changes(EXTERNAL, **changes))
    assert err.config_key == key
    assert repr(key) in err.message and "unknown" in err.message


def test_unknown_nested_owner_keys_are_named():
    err = rejected(with_changes(OWNER, fluxonkv_spec__redis_compat={"listen_addr": "a:1", "x": 1}))
    assert err.config_key == "fluxonkv_spec.redis_compat.x"


@pytest.mark.parametrize(
    "changes,key",
    [
        ({"instance_key": DELETE}, "instance_key"),
        ({"fluxonkv_spec": DELETE}, "fluxonkv_spec"),
        ({"fluxonkv_spec__cluster_name": DELETE}, "fluxonkv_spec.cluster_name"),
        ({"fluxonkv_spec__share_mem_path": DELETE}, "fluxonkv_spec.share_mem_path"),
    ],
)
def test_missing_required_keys_are_named(changes, key):
    err = rejected(with_changes(EXTERNAL, **changes))
    assert err.config_key == key
    assert "required" in err.message


@pytest.mark.parametrize(
    "changes,key",
    [
        ({"instance_key": 5}, "instance_key"),
        ({"instance_key": ""}, "instance_key"),
        ({"instance_key": "a/b"}, "instance_key"),
        ({"instance_key": " a"}, "instance_key"),
        ({"instance_key": "x" * 300}, "instance_key"),
        ({"fluxonkv_spec__cluster_name": "a/b"}, "fluxonkv_spec.cluster_name"),
        ({"fluxonkv_spec__cluster_name": ".."}, "fluxonkv_spec.cluster_name"),
        ({"fluxonkv_spec__cluster_name": "has space"}, "fluxonkv_spec.cluster_name"),
        ({"fluxonkv_spec__cluster_name": 3}, "fluxonkv_spec.cluster_name"),
        ({"fluxonkv_spec__share_mem_path": "relative/dir"}, "fluxonkv_spec.share_mem_path"),
        ({"fluxonkv_spec__share_mem_path": ""}, "fluxonkv_spec.share_mem_path"),
        ({"fluxonkv_spec__p2p_listen_port": 70000}, "fluxonkv_spec.p2p_listen_port"),
        ({"fluxonkv_spec__p2p_listen_port": "80"}, "fluxonkv_spec.p2p_listen_port"),
        ({"fluxonkv_spec": "not a mapping"}, "fluxonkv_spec"),
        ({"network": ["x"]}, "network"),
        ({"network": {"rdma_device_names": "mlx5_0"}}, "network.rdma_device_names"),
        ({"pprof_duration_seconds": 0}, "pprof_duration_seconds"),
        ({"pprof_duration_seconds": True}, "pprof_duration_seconds"),
        ({"test_spec_config": [1]}, "test_spec_config"),
        ({"contribute_to_cluster_pool_size": {"vram": {}}}, "contribute_to_cluster_pool_size.dram"),
        (
            {"contribute_to_cluster_pool_size": {"dram": "lots"}},
            "contribute_to_cluster_pool_size.dram",
        ),
        ({"contribute_to_cluster_pool_size": {"dram": -1}}, "contribute_to_cluster_pool_size.dram"),
        ({"contribute_to_cluster_pool_size": 5}, "contribute_to_cluster_pool_size"),
        (
            {"contribute_to_cluster_pool_size": {"dram": 0, "vram": {"0": "1GB"}}},
            "contribute_to_cluster_pool_size.vram.0",
        ),
        (
            {"contribute_to_cluster_pool_size": {"dram": 0, "vram": [1]}},
            "contribute_to_cluster_pool_size.vram",
        ),
    ],
)
def test_bad_values_are_named(changes, key):
    err = rejected(with_changes(EXTERNAL, **changes))
    assert err.config_key == key, err


def test_non_mapping_config():
    with pytest.raises(InvalidConfigurationError):
        FluxonKvClientConfig(["instance_key"])
    with pytest.raises(InvalidConfigurationError):
        FluxonKvClientConfig({**EXTERNAL, 1: 2})


def test_mooncake_is_not_supported():
    err = rejected(with_changes(EXTERNAL, mooncake_spec={"local_buffer_size": 1}))
    assert err.config_key == "mooncake_spec"
    assert "not supported" in err.message


@pytest.mark.parametrize(
    "key,value",
    [
        ("etcd_addresses", ["127.0.0.1:2379"]),
        ("sub_cluster", "default"),
        ("large_file_paths", ["/data"]),
        ("large_limit_size", "1GB"),
        ("redis_compat", {"listen_addr": "127.0.0.1:16379"}),
    ],
)
def test_external_client_must_not_set_owner_keys(key, value):
    err = rejected(with_changes(EXTERNAL, **{f"fluxonkv_spec__{key}": value}))
    assert err.config_key == f"fluxonkv_spec.{key}"
    assert "shared.json" in err.message
    # Also with an explicit zero contribution.
    err = rejected(
        with_changes(
            EXTERNAL,
            contribute_to_cluster_pool_size={"dram": 0},
            **{f"fluxonkv_spec__{key}": value},
        )
    )
    assert err.config_key == f"fluxonkv_spec.{key}"


@pytest.mark.parametrize(
    "changes,key",
    [
        ({"fluxonkv_spec__etcd_addresses": DELETE}, "fluxonkv_spec.etcd_addresses"),
        ({"fluxonkv_spec__etcd_addresses": []}, "fluxonkv_spec.etcd_addresses"),
        ({"fluxonkv_spec__etcd_addresses": ["nope"]}, "fluxonkv_spec.etcd_addresses[0]"),
        ({"fluxonkv_spec__sub_cluster": ""}, "fluxonkv_spec.sub_cluster"),
        ({"fluxonkv_spec__sub_cluster": " a "}, "fluxonkv_spec.sub_cluster"),
        ({"fluxonkv_spec__large_file_paths": "/data"}, "fluxonkv_spec.large_file_paths"),
        ({"fluxonkv_spec__large_limit_size": "big"}, "fluxonkv_spec.large_limit_size"),
        (
            {"fluxonkv_spec__redis_compat": {"listen_addr": 5}},
            "fluxonkv_spec.redis_compat.listen_addr",
        ),
        ({"contribute_to_cluster_pool_size__dram": "1MB"}, "contribute_to_cluster_pool_size.dram"),
        (
            {"contribute_to_cluster_pool_size__vram": {"0": "1GB"}},
            "contribute_to_cluster_pool_size.vram.0",
        ),
    ],
)
def test_owner_rejections(changes, key):
    err = rejected(with_changes(OWNER, **changes))
    assert err.config_key == key, err


# --------------------------------------------------------------------------- from_file
def test_from_yaml_file(tmp_path):
    path = tmp_path / "config.yaml"
    path.write_text(
        "instance_key: owner-1\n"
        "contribute_to_cluster_pool_size:\n"
        "  dram: 512MB\n"
        "  vram:\n"
        "    0: 0\n"
        "fluxonkv_spec:\n"
        '  etcd_addresses: ["127.0.0.1:2379"]\n'
        "  cluster_name: demo\n"
        "  share_mem_path: /dev/shm/fluxon_demo\n"
    )
    cfg = FluxonKvClientConfig.from_file(str(path))
    assert cfg.dram_bytes == 512 << 20
    assert cfg["contribute_to_cluster_pool_size"]["vram"] == {"0": 0}
    assert cfg.cluster_name == "demo"
    assert FluxonKvClientConfig.from_file(path) == cfg  # os.PathLike works too


def test_from_json_file(tmp_path):
    path = tmp_path / "client.json"
    path.write_bytes(orjson.dumps(EXTERNAL))
    assert FluxonKvClientConfig.from_file(str(path)) == EXTERNAL


def test_default_path_is_config_yaml_in_cwd(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "config.yaml").write_text(orjson.dumps(EXTERNAL).decode())  # JSON is YAML
    assert FluxonKvClientConfig.from_file() == EXTERNAL


@pytest.mark.parametrize(
    "name,text",
    [
        ("bad.yaml", "instance_key: [unclosed\n"),
        ("bad.json", "{not json"),
        ("empty.yaml", ""),
        ("list.yaml", "- a\n- b\n"),
    ],
)
def test_unreadable_files(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(InvalidConfigurationError) as info:
        FluxonKvClientConfig.from_file(str(path))
    assert info.value.config_key == "path"
    assert str(path) in info.value.message


def test_missing_file(tmp_path):
    with pytest.raises(InvalidConfigurationError) as info:
        FluxonKvClientConfig.from_file(str(tmp_path / "nope.yaml"))
    assert info.value.config_key == "path"
    assert "nope.yaml" in info.value.message


def test_invalid_file_content_names_file_and_key(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(
        "instance_key: a\nfluxonkv_spec: {cluster_name: c, share_mem_path: /x, bogus: 1}\n"
    )
    with pytest.raises(InvalidConfigurationError) as info:
        FluxonKvClientConfig.from_file(str(path))
    assert info.value.config_key == "fluxonkv_spec.bogus"
    assert str(path) in info.value.message and "bogus" in str(info.value)
