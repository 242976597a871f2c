"""Benchmark fixtures: one real service plane (etcd, master, owner) per session."""

from __future__ import annotations

import os
import sys
from typing import Iterator

import pytest

from fluxon.kvclient import KvClient, new_store
from fluxon.service.plane import ServicePlane

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from benchkit import client_config, service_plane  # noqa: E402


@pytest.fixture(scope="session")
def plane() -> Iterator[ServicePlane]:
    with service_plane("bench", "512MB") as (sp, _scratch):
        yield sp


@pytest.fixture(scope="session")
def kv_store(plane: ServicePlane) -> Iterator[KvClient]:
    store = new_store(
        client_config(plane.cluster_name, plane.share_mem_path, f"bench-{os.getpid()}")
    ).unwrap()
    yield store
    store.close()
