"""Minimal MQ example: one producer or one consumer on an MPMC channel.

Start the service plane first (``python -m fluxon up`` or
``python examples/start_master_owner.py``), then in two terminals::

    FLUXON_LOG=INFO  python examples/start_mpmc_demo.py --role producer
    FLUXON_LOG=DEBUG python examples/start_mpmc_demo.py --role consumer

The ownership chain is: one external ``KvClient`` (``store``), one producer or consumer
handle bound on top of it. Ctrl-C only requests shutdown: the callback closes the
handle once; the main loop then sees ProducerClosedError / ChannelClosedError (the
normal close-path signals), closes the store and exits with status 130.

The producer keeps a process-local ``seq``: restarting it starts again at 0.
"""

from __future__ import annotations

import argparse
import os
import sys
import threading

from fluxon.api_error import ChannelClosedError, ProducerClosedError
from fluxon.api_ext_chan import ChanRole, ChanType, new_or_bind_with_unique_key
from fluxon.config import FluxonKvClientConfig
from fluxon.kvclient import new_store
from fluxon.logging import init_logger
from fluxon.runtime import register_ctrlc_callback

EXIT_CTRL_C = 130


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--role", choices=("producer", "consumer"), required=True)
    parser.add_argument("--unique-id", default="demo-mpmc", help="channel unique key")
    parser.add_argument("--cluster", default="demo-kv-cluster", help="cluster name")
    parser.add_argument(
        "--share-mem-path", default="/dev/shm/fluxon_kv_demo", help="the owner's pool directory"
    )
    parser.add_argument(
        "--interval", type=float, default=1.0, help="producer: seconds between messages"
    )
    parser.add_argument("--capacity", type=int, default=128, help="channel capacity (creator)")
    parser.add_argument("--ttl-seconds", type=int, default=300, help="channel ttl (creator)")
    parser.add_argument(
        "--instance-key", default=None, help="client instance key (default: role + pid)"
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    log = init_logger("start_mpmc_demo")
    cfg = FluxonKvClientConfig(
        {
            "instance_key": args.instance_key or f"mpmc-demo-{args.role}-{os.getpid()}",
            "fluxonkv_spec": {"cluster_name": args.cluster, "share_mem_path": args.share_mem_path},
        }
    )
    res = new_store(cfg)
    if not res.is_ok():
        log.error("new_store failed (is the service plane running?): %s", res.unwrap_error())
        return 1
    store = res.unwrap()
    role = ChanRole.PRODUCER if args.role == "producer" else ChanRole.CONSUMER
    bound = new_or_bind_with_unique_key(
        store,
        {"capacity": args.capacity, "ttl_seconds": args.ttl_seconds},
        unique_id=args.unique_id,
        chan_type=ChanType.MPMC,
        chan_role=role,
    )
    if not bound.is_ok():
        log.error("new_or_bind_with_unique_key failed: %s", bound.unwrap_error())
        store.close()
        return 1
    handle = bound.unwrap()

    stopping = threading.Event()

    def on_ctrlc(reason: str) -> None:
        # Runs once, on a listener thread: only request shutdown by closing the handle.
        log.info("%s: closing the %s", reason, args.role)
        stopping.set()
        handle.close()

    restore = register_ctrlc_callback(on_ctrlc, thread_name="mpmc-demo-ctrlc")
    log.info(
        "%s %s bound to channel %s (unique id %r)",
        args.role,
        handle.get_producer_id() if role is ChanRole.PRODUCER else handle.get_consumer_id(),
        handle.get_chan_id(),
        args.unique_id,
    )
    try:
        if role is ChanRole.PRODUCER:
            seq = 0
            while True:
                res = handle.put_data({"seq": seq, "payload": f"hello {seq}".encode()})
                if not res.is_ok():
                    err = res.unwrap_error()
                    if isinstance(err, ProducerClosedError):
                        break
                    log.error("put_data failed: %s", err)
                    break
                log.info("sent seq=%d", seq)
                seq += 1
                if stopping.wait(args.interval):
                    continue  # the next put_data reports ProducerClosedError
        else:
            while True:
                res = handle.get_data(batch_size=1)
                if not res.is_ok():
                    err = res.unwrap_error()
                    if isinstance(err, ChannelClosedError):
                        break
                    log.error("get_data failed: %s", err)
                    break
                for msg in res.unwrap():
                    log.info("got seq=%s payload=%r", msg.get("seq"), msg.get("payload"))
    finally:
        handle.close()
        store.close()
        restore()
    if stopping.is_set():
        log.info("stopped by Ctrl-C")
        return EXIT_CTRL_C
    return 0


if __name__ == "__main__":
    sys.exit(main())
