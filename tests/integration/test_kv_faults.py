"""new_store against broken surroundings: wrong layout, dead owner, unreachable etcd."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import orjson
import pytest

from fluxon import naming
from fluxon.api_error import EtcdError, InternalError
from fluxon.etcd_server import free_port
from fluxon.kvclient import new_store
from fluxon.pool import Pool
from fluxon.procinfo import process_start_time
from fluxon_kernels.layout import pool_header as ph


@pytest.fixture
def fake_owner(tmp_path):
    """This test process plays the owner of a small pool in a private directory."""
    share = str(tmp_path / "shm")
    pool = Pool.create(share, "fake-cluster", "fake-owner", 16 << 20)

    def write_shared(**overrides):
        data = {
            "owner_id": "fake-owner",
            "owner_pid": os.getpid(),
            "owner_start_time": process_start_time(os.getpid()),
            "cluster_name": "fake-cluster",
            "share_mem_path": share,
            "etcd_addresses": [f"127.0.0.1:{free_port()}"],
            "segment_len": pool.size,
        }
        data.update(overrides)
        with open(naming.shared_json(share, "fake-cluster"), "wb") as fh:
            fh.write(orjson.dumps(data))

    cfg = {
        "instance_key": "fake-client",
        "fluxonkv_spec": {"cluster_name": "fake-cluster", "share_mem_path": share},
    }
    yield pool, write_shared, cfg
    pool.close()
    pool.unlink()
    shutil.rmtree(share, ignore_errors=True)


def test_unreachable_etcd_gives_etcd_error(fake_owner):
    pool, write_shared, cfg = fake_owner
    write_shared()
    err = new_store(cfg).unwrap_error()
    assert isinstance(err, EtcdError), err
    # the failed attach left no member slot behind
    assert pool.members() == []


def test_pool_of_another_layout_version_is_refused(fake_owner):
    pool, write_shared, cfg = fake_owner
    write_shared()
    pool.w[ph.W_LAYOUT_VERSION] = 99
    err = new_store(cfg).unwrap_error()
    assert isinstance(err, InternalError) and "layout version 99" in str(err)


def test_pool_with_bad_magic_is_refused(fake_owner):
    pool, write_shared, cfg = fake_owner
    write_shared()
    pool.w[ph.W_MAGIC] = 0
    err = new_store(cfg).unwrap_error()
    assert isinstance(err, InternalError) and "not initialised" in str(err)


def test_dead_owner_is_reported(fake_owner):
    _, write_shared, cfg = fake_owner
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    write_shared(owner_pid=child.pid, owner_start_time=1)
    err = new_store(cfg).unwrap_error()
    assert isinstance(err, InternalError) and "not running" in str(err)


def test_shared_json_of_another_cluster_is_refused(fake_owner):
    _, write_shared, cfg = fake_owner
    write_shared(cluster_name="someone-else")
    err = new_store(cfg).unwrap_error()
    assert "someone-else" in str(err)


def test_garbage_shared_json_is_reported(fake_owner):
    pool, _, cfg = fake_owner
    with open(
        naming.shared_json(cfg["fluxonkv_spec"]["share_mem_path"], "fake-cluster"), "w"
    ) as fh:
        fh.write("{not json")
    err = new_store(cfg).unwrap_error()
    assert isinstance(err, InternalError) and "shared.json" in str(err)
