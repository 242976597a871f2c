"""Soak: several processes move messages and KV values for ``FLUXON_SOAK_SECONDS``.

An MPMC channel (2 producers, 2 consumers), an MPSC channel (1 producer, 1 consumer)
and two KV churners run side by side; once a second the test samples every
process's resident memory and the pool's free bytes. At the end: every acknowledged
message was delivered exactly once and in order per producer, every KV value read
back intact, no process's memory kept growing (last quarter against the first
quarter), and after everything closed and the channels expired the pool's free bytes
are back to the baseline. The default run is short; ``make soak`` runs 30 minutes.
"""

from __future__ import annotations

import os
import time

import pytest
from conftest import SOAK_SECONDS, record_figures, wait_until
from fault_procs import ConsumerLog, ProducerLog

from fluxon.api_ext_chan import ChanRole, new_or_bind_with_unique_key
from fluxon.channel_registry import ChannelRegistry

pytestmark = pytest.mark.timeout(300 + 2 * SOAK_SECONDS)


def _rss_kib(pid: int) -> int | None:
    """Private resident memory (``RssAnon``): the pool mapping is shared, not counted."""
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                if line.startswith("RssAnon:"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def _last_int(path: str, prefix: str) -> int:
    value = 0
    with open(path) as fh:
        for line in fh:
            if line.startswith(prefix):
                value = int(line.split()[1])
    return value


def test_soak(make_cluster, zygote, stores, tmp_path):
    cluster = make_cluster(with_master=True)
    checker = stores(cluster, "soak-checker")
    baseline = checker.pool_stats().unwrap()["free_bytes"]
    uid = os.urandom(4).hex()
    stop = str(tmp_path / "stop")
    plan = [  # (mode, channel type, how many)
        ("producer", "mpmc", 2),
        ("consumer", "mpmc", 2),
        ("producer", "mpsc", 1),
        ("consumer", "mpsc", 1),
        ("kv_churn", None, 2),
    ]
    keepers = {}
    for chan_type in ("mpmc", "mpsc"):
        keepers[chan_type] = new_or_bind_with_unique_key(
            checker, {"capacity": 32, "ttl_seconds": 30}, f"soak-{chan_type}-{uid}", chan_type,
            ChanRole.PRODUCER,
        ).unwrap()  # fmt: skip
    workers = []  # (mode, chan_type, pid, log, label)
    label = 0
    for mode, chan_type, count in plan:
        for i in range(count):
            label += 1
            log = str(tmp_path / f"{mode}-{chan_type}-{i}.log")
            cfg = cluster.client_config(f"soak-{mode}-{chan_type}-{i}")
            args = dict(cfg=cfg, log=log, stop=stop)
            if chan_type:
                args.update(key=f"soak-{chan_type}-{uid}", chan_type=chan_type, capacity=32, ttl=30)
            if mode == "producer":
                args.update(label=label, pads=[0, 100, 2000, 40000], pace=0.0005)
            elif mode == "kv_churn":
                args.update(prefix=f"soak-kv-{i}", pace=0.0005)
            workers.append((mode, chan_type, zygote.spawn(mode, **args), log, label))
    services = {"owner": cluster.owner_proc.pid, "master": cluster.master_proc.pid}
    pids = {f"{m}-{c}-{pid}": pid for m, c, pid, _log, _l in workers} | services
    samples = []  # (t, {name: rss_kib}, free_bytes)
    t0 = time.monotonic()
    while time.monotonic() - t0 < SOAK_SECONDS:
        time.sleep(1.0)
        for mode, _c, pid, log, _l in workers:
            status = zygote.wait(pid, 0.0)
            assert status is None, f"{mode} {pid} exited ({status}): {open(log).read()[-500:]}"
        rss = {name: _rss_kib(pid) for name, pid in pids.items()}
        samples.append((time.monotonic() - t0, rss, checker.pool_stats().unwrap()["free_bytes"]))
    open(stop, "w").close()
    for mode, _c, pid, log, _l in sorted(workers, key=lambda w: w[0] == "consumer"):
        assert zygote.wait(pid, 120) == 0, open(log).read()[-500:]

    # Every check below adds to ``failures``; the figures are recorded first (so a long
    # run that fails still leaves them in FLUXON_FAULT_REPORT), then the test asserts.
    failures: list[str] = []
    channels = {}
    for chan_type in ("mpmc", "mpsc"):
        acked = set()
        for mode, c, _pid, log, lab in workers:
            if mode == "producer" and c == chan_type:
                plog = ProducerLog(log)
                if not plog.closed or plog.errors:
                    failures.append(f"{chan_type} producer {lab}: {plog.errors or 'not closed'}")
                acked |= {(lab, s) for s in plog.acked}
        got = []
        out_of_order = 0
        for mode, c, pid, log, _l in workers:
            if mode == "consumer" and c == chan_type:
                clog = ConsumerLog(log)
                if not clog.closed or clog.errors or clog.bad:
                    failures.append(f"{chan_type} consumer {pid}: {clog.errors or clog.bad[:5]}")
                got += clog.delivered
                for lab in {p for p, _s in clog.delivered}:
                    seqs = [s for p, s in clog.delivered if p == lab]
                    out_of_order += sum(1 for a, b in zip(seqs, seqs[1:]) if b < a)
        figures = {
            "acked": len(acked),
            "delivered": len(got),
            "duplicates": len(got) - len(set(got)),
            "lost": len(acked - set(got)),
            "invented": len(set(got) - acked),
            "out_of_order": out_of_order,
        }
        channels[chan_type] = figures
        for name in ("duplicates", "lost", "invented", "out_of_order"):
            if figures[name]:
                failures.append(f"{chan_type}: {figures[name]} {name}")
        if not figures["delivered"]:
            failures.append(f"{chan_type}: no traffic")
    kv_ops = sum(_last_int(log, "K ") for mode, _c, _p, log, _l in workers if mode == "kv_churn")
    if not kv_ops:
        failures.append("no KV operations")

    # Memory: the last quarter of the run against the first quarter, per process.
    quarter = max(1, len(samples) // 4)
    growth = {}
    for name in pids:
        early = [s[1][name] for s in samples[:quarter] if s[1].get(name)]
        late = [s[1][name] for s in samples[-quarter:] if s[1].get(name)]
        if early and late:
            growth[name] = (max(early), max(late))
            if max(late) > 1.25 * max(early) + 24 * 1024:
                failures.append(f"{name} RSS grew: {growth[name]} KiB")
    min_free = min(s[2] for s in samples)
    # A sample a minute (or ten over a short run): t, owner/master/largest worker RSS, free.
    every = max(1, min(60, len(samples) // 10))
    series = [
        [
            round(t),
            rss.get("owner"),
            rss.get("master"),
            max((v for k, v in rss.items() if k not in services and v), default=None),
            free,
        ]
        for t, rss, free in samples[every - 1 :: every]
    ]

    registry = ChannelRegistry(checker._etcd, cluster.cluster_name)
    for chan_type, keeper in keepers.items():
        keeper.close()
        _mapping, desc = registry.lookup(f"soak-{chan_type}-{uid}")
        checker._etcd.revoke(desc.lease_id)
    try:
        wait_until(
            lambda: checker.pool_stats().unwrap()["free_bytes"] == baseline, 60, "the baseline", 0.2
        )
    except AssertionError as exc:
        failures.append(str(exc))
    final_free = checker.pool_stats().unwrap()["free_bytes"]
    record_figures(
        "soak",
        {
            "seconds": SOAK_SECONDS,
            "duration_s": round(time.monotonic() - t0, 1),
            "processes": len(workers),
            "messages_checked": sum(f["acked"] for f in channels.values()),
            "lost": sum(f["lost"] for f in channels.values()),
            "duplicates": sum(f["duplicates"] for f in channels.values()),
            "channels": channels,
            "kv_ops": kv_ops,
            "samples": len(samples),
            "rss_kib_first_vs_last_quarter": growth,
            "pool_free_baseline_bytes": baseline,
            "pool_free_min_bytes": min_free,
            "pool_used_max_bytes": baseline - min_free,
            "pool_free_after_bytes": final_free,
            "series_t_owner_master_worker_rss_kib_free_bytes": series,
            "failures": failures,
        },
    )
    assert not failures, failures
