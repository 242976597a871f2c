"""Attach as an external client and put / get / remove a FlatDict.

Start the service plane first (``python -m fluxon up`` or
``python examples/start_master_owner.py``), then::

    python examples/external_put_get_del.py [--cluster demo-kv-cluster]
                                            [--share-mem-path /dev/shm/fluxon_kv_demo]
"""

from __future__ import annotations

import argparse
import os
import sys

import numpy as np

from fluxon.api_error import KeyNotFoundError
from fluxon.config import FluxonKvClientConfig
from fluxon.kvclient import new_store
from fluxon.logging import init_logger


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cluster", default="demo-kv-cluster")
    parser.add_argument("--share-mem-path", default="/dev/shm/fluxon_kv_demo")
    parser.add_argument("--key", default=f"example/{os.getpid()}")
    args = parser.parse_args()
    log = init_logger("external_put_get_del")

    cfg = FluxonKvClientConfig(
        {
            "instance_key": f"external-example-{os.getpid()}",
            "fluxonkv_spec": {"cluster_name": args.cluster, "share_mem_path": args.share_mem_path},
        }
    )
    res = new_store(cfg)
    if not res.is_ok():
        log.error("new_store failed: %s", res.unwrap_error())
        return 1
    store = res.unwrap()
    try:
        value = {
            "step": 7,
            "loss": 0.125,
            "done": False,
            "tag": "batch-7",
            "raw": b"\x00\x01\x02",
            "tensor": np.arange(12, dtype=np.float32).reshape(3, 4),
        }
        store.put_blocking(args.key, value).unwrap()
        got = store.get_blocking(args.key).unwrap().access()
        assert got["step"] == 7 and got["tag"] == "batch-7" and got["raw"] == b"\x00\x01\x02"
        assert np.array_equal(got["tensor"], value["tensor"])
        log.info("put/get ok: %s keys under 'example/'", store.count_prefix("example/").unwrap())
        store.remove(args.key).unwrap()
        err = store.get_blocking(args.key).unwrap_error()
        assert isinstance(err, KeyNotFoundError)
        log.info("removed; get now says %s", type(err).__name__)
    finally:
        store.close().unwrap()
    return 0


if __name__ == "__main__":
    sys.exit(main())
