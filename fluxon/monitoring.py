"""MQ monitoring: the Channels and Members tables, Prometheus text, optional push export.

Everything is read, nothing is asked of user processes: channel descriptors, unique
keys and member records come from etcd (:mod:`fluxon.channel_registry`); offsets,
liveness and latency summaries come from the owners' pools, which the reader maps
(:class:`PoolSet`, no member slot is taken): the channel table gives every producer's
``produce``/``consume`` offsets, and each handle's stats block
(:mod:`fluxon_kernels.layout.stats`) its counters and percentiles.

:func:`collect` returns ``{"channels": [...], "members": [...]}``:

* a **channel** row: ``chan_id``, ``unique_keys``, ``type``, ``capacity``,
  ``ttl_seconds``, ``producer_offsets`` (``"producer_<id>: produce/consume, ..."``,
  ids are producer ids as returned by ``get_producer_id()``), ``current_inflight`` =
  sum over producers of ``max(produce - consume, 0)``, ``producer_count``,
  ``consumer_count``, latency columns (consumers' worst window p50/p99/max, summed
  calls/timeouts, producers' worst p99, ...), ``owner_id``, ``status``;
* a **member** row (one per producer/consumer handle): ``kind``, ``member_id``,
  ``channel_unique_keys``, ``chan_id``, ``owner_id``, ``external_client_id``,
  ``produce_offset``/``consume_offset`` (a producer's own; for a consumer, the
  channel's totals), ``status`` (``alive``/``dead``) and the handle's latency fields.

:func:`prometheus_families` turns the same data into metric families,
:func:`render_prometheus` into Prometheus text (format 0.0.4);
:class:`MetricsExporter` pushes them to a Prometheus remote-write endpoint
(protobuf + snappy, remote-write 1.0) and/or an OTLP/HTTP endpoint (JSON
``/v1/metrics``), logging a failing target once rather than at every push.
"""

from __future__ import annotations

import html
import logging
import math
import os
import struct
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import orjson

from fluxon_kernels import channel as kchan
from fluxon_kernels import stats as kstats
from fluxon_kernels.layout import channel as cl
from fluxon_kernels.layout import stats as sl

from . import naming
from .channel_registry import ChannelRegistry
from .procinfo import is_process_alive
from .stats import summary_dict

__all__ = [
    "CHANNEL_COLUMNS",
    "MEMBER_COLUMNS",
    "MetricFamily",
    "MetricsExporter",
    "PoolSet",
    "collect",
    "prometheus_families",
    "render_index_html",
    "render_prometheus",
    "warm_up_kernels",
]

_log = logging.getLogger("fluxon.monitoring")

#: Columns of the Channels table, in display order.
CHANNEL_COLUMNS = [
    "chan_id", "unique_keys", "type", "capacity", "ttl_seconds", "producer_offsets",
    "current_inflight", "producer_count", "consumer_count",
    "get_calls", "get_timeouts", "get_avg_ms", "get_p50_ms", "get_p99_ms", "get_max_ms",
    "wait_rx_avg_ms", "get_handle_avg_ms", "handle_await_avg_ms", "prefetch_queue",
    "put_calls", "put_full_waits", "put_p50_ms", "put_p99_ms", "owner_id", "status",
]  # fmt: skip
#: Columns of the Members table, in display order.
MEMBER_COLUMNS = [
    "kind", "member_id", "channel_unique_keys", "chan_id", "owner_id", "external_client_id",
    "pid", "produce_offset", "consume_offset", "status",
    "calls", "messages", "timeouts", "waits", "avg_ms", "p50_ms", "p99_ms", "max_ms",
    "wait_rx_avg_ms", "kernel_avg_ms", "codec_avg_ms", "prefetch_queue", "prefetch_target",
    "prefetch_hit_ratio", "get_handle_avg_ms", "handle_await_avg_ms", "idle_ms", "stats_age_s",
]  # fmt: skip
#: The narrower sets ``python -m fluxon status`` prints (``--wide`` prints all).
CHANNEL_COLUMNS_SHORT = [
    "chan_id", "unique_keys", "type", "capacity", "ttl_seconds", "producer_offsets",
    "current_inflight", "producer_count", "consumer_count", "get_p50_ms", "get_p99_ms",
    "put_p99_ms",
]  # fmt: skip
MEMBER_COLUMNS_SHORT = [
    "kind", "member_id", "channel_unique_keys", "chan_id", "owner_id", "external_client_id",
    "produce_offset", "consume_offset", "status", "calls", "p50_ms", "p99_ms",
    "wait_rx_avg_ms",
]  # fmt: skip


def _ms(ns: float | int | None) -> float | None:
    return None if ns is None else round(ns / 1e6, 4)


# ----------------------------------------------------------------------------- pools
@dataclass
class _Attached:
    pool: Any
    ident: tuple[int, int]


class PoolSet:
    """The pools of this host's owners, mapped for reading (no member slot is taken).

    A pool is re-attached when its owner restarts (a new file) and closed when its
    owner is gone, so a reader never keeps a dead owner's memory mapped.

    Parameters
    ----------
    cluster_name : str
        The cluster.
    share_mem_paths : iterable of str
        Extra places to look for a pool besides the owners registered in etcd.
    """

    def __init__(self, cluster_name: str, share_mem_paths: Iterable[str] = ()) -> None:
        self.cluster_name = cluster_name
        self.share_mem_paths = [p for p in share_mem_paths if p]
        self._pools: dict[str, _Attached] = {}  # pool file -> attachment
        self._lock = threading.Lock()

    def refresh(self, owners: Iterable[Mapping[str, Any]] = ()) -> dict[str, Any]:
        """Attach new pools, drop stale ones; returns ``{owner_id: Pool}``."""
        from .pool import Pool

        paths = list(self.share_mem_paths)
        for rec in owners:
            path = rec.get("share_mem_path")
            if isinstance(path, str) and path not in paths:
                paths.append(path)
        out: dict[str, Any] = {}
        with self._lock:
            wanted = set()
            for share in paths:
                file = naming.pool_file(share, self.cluster_name)
                wanted.add(file)
                att = self._pools.get(file)
                if att is not None and not self._still_valid(file, att):
                    self._close(file)
                    att = None
                if att is None:
                    if not os.path.exists(file):
                        continue
                    try:
                        pool = Pool.attach(share, self.cluster_name, wait_ready_s=0.0)
                    except Exception as exc:  # noqa: BLE001 - a pool we cannot read is skipped
                        _log.debug("monitoring cannot attach %s: %s", file, exc)
                        continue
                    st = os.fstat(pool._fd)
                    att = _Attached(pool, (st.st_dev, st.st_ino))
                    if not pool.owner_alive():
                        pool.close()
                        continue
                    self._pools[file] = att
                out[att.pool.owner_id] = att.pool
            for file in list(self._pools):
                if file not in wanted:
                    self._close(file)
        return out

    def prune(self) -> int:
        """Unmap pools whose owner is gone or replaced (no etcd needed); returns how many."""
        with self._lock:
            stale = [f for f, att in self._pools.items() if not self._still_valid(f, att)]
            for file in stale:
                self._close(file)
        return len(stale)

    @staticmethod
    def _still_valid(file: str, att: _Attached) -> bool:
        try:
            st = os.stat(file)
        except OSError:
            return False
        return (st.st_dev, st.st_ino) == att.ident and att.pool.owner_alive()

    def _close(self, file: str) -> None:
        att = self._pools.pop(file, None)
        if att is not None:
            att.pool.close()

    def close(self) -> None:
        """Unmap every pool."""
        with self._lock:
            for file in list(self._pools):
                self._close(file)


def warm_up_kernels() -> None:
    """Compile (or load from the cache) the kernels :func:`collect` calls, on a dummy
    array shaped like a pool whose channel table is empty."""
    w = np.zeros(cl.TABLE_BYTES // 8 + 64, dtype=np.int64)
    prod = np.zeros((cl.MAX_PRODUCERS, 7), dtype=np.int64)
    cons = np.zeros((cl.MAX_CONSUMERS, 3), dtype=np.int64)
    buf = np.zeros(sl.WORDS, dtype=np.int64)
    kchan.chan_is_active(w, 0, 1)
    kstats.chan_entries_snapshot(w, 0, prod, cons)
    kstats.stats_read_at(w, int(kstats.stats_ref_word(w, 0, sl.ROLE_CONSUMER, 0)), buf)


# ----------------------------------------------------------------------------- collect
def _unique_keys(session: Any, cluster_name: str) -> dict[int, list[str]]:
    prefix = naming.chan_unique_prefix(cluster_name)
    out: dict[int, list[str]] = {}
    for key, raw in session.get_prefix(prefix):
        try:
            chan_id = int(raw)
        except ValueError:
            continue
        out.setdefault(chan_id, []).append(key[len(prefix) :])
    return out


def _member_alive(pool: Any, tag: int) -> tuple[bool, int | None, str]:
    """(alive, pid, instance key) of the process holding member tag ``tag``."""
    if tag <= 0:
        return False, None, ""
    info = pool._member_at(tag - 1)
    if info is None:
        return False, None, ""
    return is_process_alive(info.pid, info.start_time or None), info.pid, info.name


def _latency_fields(kind: str, s: dict | None, now_ns: int) -> dict:
    """Member latency columns from a stats block summary (``None`` -> empty columns)."""
    if s is None:
        return {"has_stats": False}
    calls = s["win_calls"]
    messages = s["win_messages"]
    updated = s["updated_ns"]
    out = {
        "calls": s["calls"],
        "messages": s["messages"],
        "timeouts": s["timeouts"],
        "waits": s["waits"],
        "window_s": round(s["window_ns"] / 1e9, 3),
        "window_calls": calls,
        "avg_ms": _ms(s["avg_ns"]),
        "p50_ms": _ms(s["p50_ns"]),
        "p99_ms": _ms(s["p99_ns"]),
        "max_ms": _ms(s["max_ns"]),
        "wait_rx_avg_ms": _ms(s["avg_wait_ns"]),
        # Producers do not time encode vs kernel (it would cost their hot path): empty.
        "kernel_avg_ms": None,
        "codec_avg_ms": None,
        "stats_age_s": round(max(0, now_ns - updated) / 1e9, 3) if updated else None,
        "has_stats": True,
    }
    if kind == "consumer":
        out.update(
            kernel_avg_ms=_ms(s["avg_kernel_ns"]),
            codec_avg_ms=_ms(s["avg_codec_ns"]),
            prefetch_queue=s["pf_queue"],
            prefetch_target=s["pf_target"],
            prefetch_hit_ratio=round(s["pf_hit_ppm"] / 1e6, 4) if messages else None,
            get_handle_avg_ms=(_ms(s["claim_avg_ns"] + s["avg_wait_ns"]) if calls else None),
            claim_avg_ms=_ms(s["claim_avg_ns"]),
            handle_await_avg_ms=_ms(s["take_avg_ns"]),
            idle_ms=_ms(s["idle_ns"]),
        )
    return out


def _read_block(w: np.ndarray, ref_word: int, buf: np.ndarray) -> dict | None:
    rc = int(kstats.stats_read_at(w, ref_word, buf))
    return summary_dict(buf) if rc == 1 else None


def _channel_from_pool(
    pool: Any, desc: Any, records: list[dict], now_ns: int
) -> tuple[dict, list[dict]]:
    """Offsets, counts and member rows of one channel read from its pool."""
    w = pool.w
    c = desc.entry
    prod = np.zeros((cl.MAX_PRODUCERS, 7), dtype=np.int64)
    cons = np.zeros((cl.MAX_CONSUMERS, 3), dtype=np.int64)
    kstats.chan_entries_snapshot(w, c, prod, cons)
    buf = np.zeros(sl.WORDS, dtype=np.int64)
    by_member = {(r.get("role"), int(r.get("member_id", -1))): r for r in records}
    producers, members = [], []
    total_produce = total_consume = 0
    for e in range(cl.MAX_PRODUCERS):
        state = int(prod[e, 0])
        if state == cl.PROD_FREE:
            continue
        produce, consume = int(prod[e, 1]), int(prod[e, 2])
        backlog = max(produce - consume, 0)
        member_id = int(prod[e, 5])
        live_entry = state > 0
        if not live_entry and backlog == 0:
            continue  # a closed producer whose messages were all delivered
        total_produce += produce
        total_consume += consume
        producers.append(
            {
                "producer_idx": f"producer_{member_id}",
                "member_id": member_id,
                "entry": e,
                "produce_offset": produce,
                "consume_offset": consume,
                "claim_offset": int(prod[e, 3]),
                "backlog": backlog,
                "weight": int(prod[e, 4]),
                "state": "attached" if live_entry else "closed",
            }
        )
        if not live_entry:
            continue
        alive, pid, name = _member_alive(pool, state)
        ref_word = int(kstats.stats_ref_word(w, c, sl.ROLE_PRODUCER, e))
        stats = _read_block(w, ref_word, buf)
        members.append(
            {
                "kind": "producer",
                "member_id": member_id,
                "entry": e,
                "pid": pid,
                "external_client_id": name,
                "produce_offset": produce,
                "consume_offset": consume,
                "backlog": backlog,
                "weight": int(prod[e, 4]),
                "status": "alive" if alive else "dead",
                "registered": ("producer", member_id) in by_member,
                **_latency_fields("producer", stats, now_ns),
            }
        )
    for k in range(cl.MAX_CONSUMERS):
        state = int(cons[k, 0])
        if state == 0:
            continue
        member_id = int(cons[k, 1])
        alive, pid, name = _member_alive(pool, state)
        ref_word = int(kstats.stats_ref_word(w, c, sl.ROLE_CONSUMER, k))
        stats = _read_block(w, ref_word, buf)
        members.append(
            {
                "kind": "consumer",
                "member_id": member_id,
                "entry": k,
                "pid": pid,
                "external_client_id": name,
                "produce_offset": total_produce,
                "consume_offset": total_consume,
                "status": "alive" if alive else "dead",
                "registered": ("consumer", member_id) in by_member,
                **_latency_fields("consumer", stats, now_ns),
            }
        )
    inflight = sum(p["backlog"] for p in producers)
    row = {
        "producer_offsets": ", ".join(
            f"{p['producer_idx']}: {p['produce_offset']}/{p['consume_offset']}" for p in producers
        ),
        "producers": producers,
        "current_inflight": inflight,
        "producer_count": sum(1 for m in members if m["kind"] == "producer"),
        "consumer_count": sum(1 for m in members if m["kind"] == "consumer"),
        "status": "active",
    }
    return row, members


def _worst(values: list[Any]) -> Any:
    present = [v for v in values if v is not None]
    return max(present) if present else None


def _channel_latency(members: list[dict]) -> dict:
    cons = [m for m in members if m["kind"] == "consumer" and m.get("has_stats")]
    prods = [m for m in members if m["kind"] == "producer" and m.get("has_stats")]
    return {
        "get_calls": sum(m["calls"] for m in cons) if cons else None,
        "get_timeouts": sum(m["timeouts"] for m in cons) if cons else None,
        "get_avg_ms": _worst([m["avg_ms"] for m in cons]),
        "get_p50_ms": _worst([m["p50_ms"] for m in cons]),
        "get_p99_ms": _worst([m["p99_ms"] for m in cons]),
        "get_max_ms": _worst([m["max_ms"] for m in cons]),
        "wait_rx_avg_ms": _worst([m["wait_rx_avg_ms"] for m in cons]),
        "get_handle_avg_ms": _worst([m.get("get_handle_avg_ms") for m in cons]),
        "handle_await_avg_ms": _worst([m.get("handle_await_avg_ms") for m in cons]),
        "prefetch_queue": sum(m.get("prefetch_queue") or 0 for m in cons) if cons else None,
        "put_calls": sum(m["calls"] for m in prods) if prods else None,
        "put_timeouts": sum(m["timeouts"] for m in prods) if prods else None,
        "put_full_waits": sum(m["waits"] for m in prods) if prods else None,
        "put_avg_ms": _worst([m["avg_ms"] for m in prods]),
        "put_p50_ms": _worst([m["p50_ms"] for m in prods]),
        "put_p99_ms": _worst([m["p99_ms"] for m in prods]),
        "put_max_ms": _worst([m["max_ms"] for m in prods]),
    }


def collect(cluster_name: str, etcd_session: Any, pools: Mapping[str, Any] | Iterable[Any]) -> dict:
    """The Channels and Members tables of a cluster, read from etcd and the pools.

    Parameters
    ----------
    cluster_name : str
        The cluster.
    etcd_session : fluxon.etcd_client.EtcdSession
        Open etcd session.
    pools : mapping owner_id -> Pool, or iterable of Pool
        Pools this process can read (see :class:`PoolSet`); channels of other owners
        are listed from etcd only (no offsets, status from their etcd lease).

    Returns
    -------
    dict
        ``{"cluster_name", "generated_at", "channels": [...], "members": [...]}``.

    Raises
    ------
    EtcdError
        If etcd cannot be read.
    """
    if not isinstance(pools, Mapping):
        pools = {p.owner_id: p for p in pools}
    registry = ChannelRegistry(etcd_session, cluster_name)
    descs = registry.list_descriptors()
    unique = _unique_keys(etcd_session, cluster_name)
    records_by_chan: dict[int, list[dict]] = {}
    for rec in registry.list_members():
        try:
            records_by_chan.setdefault(int(rec.get("chan_id")), []).append(rec)
        except (TypeError, ValueError):
            continue
    now_ns = time.time_ns()
    channels, members = [], []
    for desc in sorted(descs, key=lambda d: d.chan_id):
        keys = sorted(unique.get(desc.chan_id, []))
        if not keys and desc.unique_id:
            keys = [desc.unique_id]
        records = records_by_chan.pop(desc.chan_id, [])
        row = {
            "chan_id": desc.chan_id,
            "unique_keys": ", ".join(keys),
            "unique_key_list": keys,
            "type": desc.type,
            "capacity": desc.capacity,
            "ttl_seconds": desc.ttl_seconds,
            "owner_id": desc.owner_id,
            "entry": desc.entry,
            "lease_id": desc.lease_id,
            "created_at": desc.created_at,
            "creator": desc.creator,
        }
        pool = pools.get(desc.owner_id)
        chan_members: list[dict] = []
        if pool is not None and int(kchan.chan_is_active(pool.w, desc.entry, desc.chan_id)):
            live, chan_members = _channel_from_pool(pool, desc, records, now_ns)
            row.update(live)
            by_key = {(r.get("role"), r.get("member_id")): r for r in records}
            for m in chan_members:
                rec = by_key.pop((m["kind"], m["member_id"]), None)
                if rec is not None:
                    m["external_client_id"] = rec.get("instance_key") or m["external_client_id"]
                    if rec.get("pid") and m["pid"] is None:
                        m["pid"] = rec.get("pid")
                    m["created_at"] = rec.get("created_at")
            # etcd still lists these, the pool no longer holds them: closed or reaped,
            # their record lingers until its lease expires.
            for rec in by_key.values():
                chan_members.append(_record_row(rec, "dead"))
        else:
            row.update(
                producer_offsets="",
                producers=[],
                current_inflight=None,
                producer_count=sum(1 for r in records if r.get("role") == "producer"),
                consumer_count=sum(1 for r in records if r.get("role") == "consumer"),
                status="stale" if pool is not None else "not readable here",
            )
            chan_members = [
                _record_row(rec, "dead" if pool is not None else "alive") for rec in records
            ]
        row.update(_channel_latency(chan_members))
        for m in chan_members:
            m.update(
                chan_id=desc.chan_id,
                chan_type=desc.type,
                channel_unique_keys=", ".join(keys),
                owner_id=desc.owner_id,
            )
        channels.append(row)
        members.extend(
            sorted(chan_members, key=lambda m: (m["kind"] != "producer", m["member_id"]))
        )
    # Member records of channels without a descriptor (expired channel, lingering lease).
    for chan_id, records in sorted(records_by_chan.items()):
        for rec in records:
            m = _record_row(rec, "dead")
            m.update(chan_id=chan_id, channel_unique_keys=rec.get("unique_id", ""))
            members.append(m)
    return {
        "cluster_name": cluster_name,
        "generated_at": time.time(),
        "channels": channels,
        "members": members,
    }


def _record_row(rec: Mapping[str, Any], status: str) -> dict:
    return {
        "kind": rec.get("role"),
        "member_id": rec.get("member_id"),
        "entry": rec.get("entry"),
        "pid": rec.get("pid"),
        "external_client_id": rec.get("instance_key", ""),
        "owner_id": rec.get("owner_id"),
        "produce_offset": None,
        "consume_offset": None,
        "status": status,
        "registered": True,
        "weight": rec.get("weight"),
        "created_at": rec.get("created_at"),
    }


# ----------------------------------------------------------------------------- Prometheus
@dataclass
class MetricFamily:
    """One metric: name, type (``gauge``/``counter``), help and labelled samples."""

    name: str
    type: str
    help: str
    samples: list[tuple[dict[str, str], float]] = field(default_factory=list)


def _label_value(value: Any) -> str:
    return str(value).replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _num(value: Any) -> float:
    if value is None:
        return math.nan
    return float(value)


def prometheus_families(data: Mapping[str, Any]) -> list[MetricFamily]:
    """Metric families of a :func:`collect` result (channels, producers, members)."""
    fams: dict[str, MetricFamily] = {}

    def add(name: str, kind: str, text: str, labels: dict[str, str], value: Any) -> None:
        if value is None:
            return
        fam = fams.get(name)
        if fam is None:
            fam = fams[name] = MetricFamily(name, kind, text)
        fam.samples.append((labels, _num(value)))

    for ch in data.get("channels", []):
        base = {
            "chan_id": str(ch["chan_id"]),
            "unique_key": ch.get("unique_keys", ""),
            "type": ch.get("type", ""),
        }
        add("fluxon_channel_inflight", "gauge",
            "Undelivered messages of the channel: sum over producers of produce - consume.",
            base, ch.get("current_inflight"))  # fmt: skip
        add("fluxon_channel_capacity", "gauge", "Channel capacity (messages).", base,
            ch.get("capacity"))  # fmt: skip
        add("fluxon_channel_ttl_seconds", "gauge", "Channel retention TTL.", base,
            ch.get("ttl_seconds"))  # fmt: skip
        add("fluxon_channel_producers", "gauge", "Attached producers.", base,
            ch.get("producer_count"))  # fmt: skip
        add("fluxon_channel_consumers", "gauge", "Attached consumers.", base,
            ch.get("consumer_count"))  # fmt: skip
        for p in ch.get("producers", []):
            labels = {**base, "producer": p["producer_idx"]}
            add("fluxon_channel_produce_offset", "gauge",
                "Next offset the producer writes.", labels, p["produce_offset"])  # fmt: skip
            add("fluxon_channel_consume_offset", "gauge",
                "Next offset to commit for the producer's messages.", labels,
                p["consume_offset"])  # fmt: skip
    for m in data.get("members", []):
        labels = {
            "kind": str(m.get("kind")),
            "member_id": str(m.get("member_id")),
            "chan_id": str(m.get("chan_id")),
            "unique_key": str(m.get("channel_unique_keys", "")),
            "external_client_id": str(m.get("external_client_id") or ""),
        }
        add("fluxon_member_up", "gauge", "1 if the member's process is alive, else 0.", labels,
            1 if m.get("status") == "alive" else 0)  # fmt: skip
        add("fluxon_member_calls_total", "counter", "put_data/get_data calls.", labels,
            m.get("calls"))  # fmt: skip
        add("fluxon_member_messages_total", "counter", "Messages published/delivered.",
            labels, m.get("messages"))  # fmt: skip
        add("fluxon_member_timeouts_total", "counter",
            "Calls that timed out (put Ok(False), get NoNewMessage).", labels,
            m.get("timeouts"))  # fmt: skip
        add("fluxon_member_waits_total", "counter",
            "Calls that waited (consumer: channel empty, producer: channel full).", labels,
            m.get("waits"))  # fmt: skip
        for stat in ("avg", "p50", "p99", "max"):
            value = m.get(f"{stat}_ms")
            add("fluxon_member_latency_seconds", "gauge",
                "put_data/get_data latency over the current window (stat = avg, p50, p99, max).",
                {**labels, "stat": stat}, None if value is None else value / 1e3)  # fmt: skip
        if m.get("kind") == "consumer":
            wait = m.get("wait_rx_avg_ms")
            add("fluxon_member_wait_seconds_avg", "gauge",
                "Average time a get_data call waited for a message (window).", labels,
                None if wait is None else wait / 1e3)  # fmt: skip
            add("fluxon_member_prefetch_queue", "gauge", "Messages held in the prefetch queue.",
                labels, m.get("prefetch_queue"))  # fmt: skip
            add("fluxon_member_prefetch_hit_ratio", "gauge",
                "Messages served from the prefetch queue / all delivered (window).", labels,
                m.get("prefetch_hit_ratio"))  # fmt: skip
    return list(fams.values())


def _format_value(value: float) -> str:
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if value == int(value) and abs(value) < 1 << 53:
        return str(int(value))
    return repr(value)


def render_prometheus(data: Mapping[str, Any] | list[MetricFamily]) -> str:
    """Prometheus text exposition (0.0.4) of a :func:`collect` result."""
    fams = data if isinstance(data, list) else prometheus_families(data)
    lines = []
    for fam in fams:
        lines.append(f"# HELP {fam.name} {fam.help}")
        lines.append(f"# TYPE {fam.name} {fam.type}")
        for labels, value in fam.samples:
            text = ",".join(f'{k}="{_label_value(v)}"' for k, v in labels.items())
            lines.append(f"{fam.name}{{{text}}} {_format_value(value)}")
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------- push export
def _varint(n: int) -> bytes:
    n &= (1 << 64) - 1
    out = bytearray()
    while True:
        byte = n & 0x7F
        n >>= 7
        if n:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _pb_bytes(field_no: int, data: bytes) -> bytes:
    return _varint((field_no << 3) | 2) + _varint(len(data)) + data


def remote_write_body(families: list[MetricFamily], timestamp_ms: int) -> bytes:
    """A Prometheus remote-write 1.0 ``WriteRequest`` (protobuf, not yet compressed)."""
    out = bytearray()
    for fam in families:
        for labels, value in fam.samples:
            if math.isnan(value):
                continue
            pairs = sorted({"__name__": fam.name, **labels}.items())
            series = b"".join(
                _pb_bytes(1, _pb_bytes(1, k.encode()) + _pb_bytes(2, str(v).encode()))
                for k, v in pairs
            )
            sample = b"\x09" + struct.pack("<d", value) + b"\x10" + _varint(timestamp_ms)
            series += _pb_bytes(2, sample)
            out += _pb_bytes(1, series)
    return bytes(out)


def snappy_literal(data: bytes) -> bytes:
    """Snappy block format made of literals only (valid input for any snappy decoder)."""
    out = bytearray(_varint(len(data)))
    for start in range(0, len(data), 65536):
        chunk = data[start : start + 65536]
        n = len(chunk) - 1
        if n < 60:
            out.append(n << 2)
        elif n < 256:
            out += bytes((60 << 2, n))
        else:
            out += bytes((61 << 2,)) + n.to_bytes(2, "little")
        out += chunk
    return bytes(out)


def otlp_metrics_body(families: list[MetricFamily], cluster_name: str, time_ns: int) -> bytes:
    """An OTLP/HTTP JSON ``ExportMetricsServiceRequest`` of the families."""
    metrics = []
    for fam in families:
        points = [
            {
                "attributes": [
                    {"key": k, "value": {"stringValue": str(v)}} for k, v in labels.items()
                ],
                "timeUnixNano": str(time_ns),
                "asDouble": value,
            }
            for labels, value in fam.samples
            if not math.isnan(value)
        ]
        if fam.type == "counter":
            body = {"sum": {"dataPoints": points, "aggregationTemporality": 2, "isMonotonic": True}}
        else:
            body = {"gauge": {"dataPoints": points}}
        metrics.append({"name": fam.name, "description": fam.help, **body})
    resource = {
        "attributes": [
            {"key": "service.name", "value": {"stringValue": "fluxon-master"}},
            {"key": "fluxon.cluster_name", "value": {"stringValue": cluster_name}},
        ]
    }
    request = {
        "resourceMetrics": [
            {
                "resource": resource,
                "scopeMetrics": [{"scope": {"name": "fluxon"}, "metrics": metrics}],
            }
        ]
    }
    return orjson.dumps(request)


@dataclass
class _Target:
    kind: str  # "remote_write" or "otlp"
    url: str
    failing: bool = False
    pushes: int = 0
    failures: int = 0
    last_error: str = ""


class MetricsExporter:
    """Pushes metrics to the endpoints named in the master's ``monitoring`` config.

    Accepted keys: ``prometheus_remote_write_url`` / ``prom_remote_write_url`` (a URL
    or a list of URLs; Prometheus remote-write 1.0: protobuf ``WriteRequest``, snappy)
    and ``otlp_log_api.otlp_endpoint`` (OTLP/HTTP JSON metrics, posted to
    ``{endpoint}/v1/metrics`` unless the URL already ends with it). A target that
    cannot be reached is logged once (WARNING) and again only when it recovers.

    Parameters
    ----------
    monitoring : mapping
        The master's ``monitoring`` config section.
    cluster_name : str
        Sent as a resource attribute (OTLP).
    timeout_s : float
        Deadline of each HTTP POST.
    """

    def __init__(
        self, monitoring: Mapping[str, Any] | None, cluster_name: str, timeout_s: float = 2.0
    ):
        self.cluster_name = cluster_name
        self.timeout_s = timeout_s
        self.targets: list[_Target] = []
        monitoring = monitoring or {}
        for key in ("prometheus_remote_write_url", "prom_remote_write_url"):
            urls = monitoring.get(key)
            if isinstance(urls, str):
                urls = [urls]
            for url in urls or []:
                if isinstance(url, str) and url and url not in [t.url for t in self.targets]:
                    self.targets.append(_Target("remote_write", url))
        otlp = monitoring.get("otlp_log_api")
        endpoint = otlp.get("otlp_endpoint") if isinstance(otlp, Mapping) else None
        if isinstance(endpoint, str) and endpoint:
            url = (
                endpoint
                if endpoint.rstrip("/").endswith("/v1/metrics")
                else (endpoint.rstrip("/") + "/v1/metrics")
            )
            self.targets.append(_Target("otlp", url))
        self._opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))

    def __bool__(self) -> bool:
        return bool(self.targets)

    def push(self, families: list[MetricFamily]) -> None:
        """Send ``families`` to every target (errors are logged, never raised)."""
        now_ns = time.time_ns()
        for target in self.targets:
            if target.kind == "remote_write":
                body = snappy_literal(remote_write_body(families, now_ns // 1_000_000))
                headers = {
                    "Content-Type": "application/x-protobuf",
                    "Content-Encoding": "snappy",
                    "X-Prometheus-Remote-Write-Version": "0.1.0",
                    "User-Agent": "fluxon-master",
                }
            else:
                body = otlp_metrics_body(families, self.cluster_name, now_ns)
                headers = {"Content-Type": "application/json", "User-Agent": "fluxon-master"}
            self._post(target, body, headers)

    def _post(self, target: _Target, body: bytes, headers: dict) -> None:
        request = urllib.request.Request(target.url, data=body, headers=headers, method="POST")
        try:
            with self._opener.open(request, timeout=self.timeout_s) as resp:
                resp.read()
        except (urllib.error.URLError, OSError, ValueError) as exc:
            target.failures += 1
            target.last_error = str(exc)
            if not target.failing:
                target.failing = True
                _log.warning(
                    "metrics push to %s (%s) failed: %s; retrying quietly until it works",
                    target.url,
                    target.kind,
                    exc,
                )
            else:
                _log.debug("metrics push to %s failed again: %s", target.url, exc)
            return
        target.pushes += 1
        if target.failing:
            target.failing = False
            _log.info("metrics push to %s (%s) works again", target.url, target.kind)


# ----------------------------------------------------------------------------- web page
_PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>fluxon __CLUSTER__ monitoring</title>
<style>
body{font-family:system-ui,sans-serif;margin:16px;color:#222}
h1{font-size:20px;margin:0 0 8px}h2{font-size:16px;margin:18px 0 6px}
table{border-collapse:collapse;font-size:12px}
td,th{border:1px solid #ccc;padding:2px 6px;white-space:nowrap}
th{background:#f0f0f0;position:sticky;top:0}
tr.dead td{color:#a00}.num{text-align:right}
#bar{display:flex;gap:16px;align-items:center;margin-bottom:8px}
#search{width:280px;padding:3px}#state{color:#666;font-size:12px}
.wrap{overflow-x:auto;max-width:100%}
</style></head><body>
<h1>fluxon cluster <span id="cluster">__CLUSTER__</span></h1>
<div id="bar"><label>unique key <input id="search" type="search"
placeholder="filter by unique key" value="__QUERY__"></label>
<span id="state">__STATE__</span></div>
<h2>Channels (<span id="channels-count">__NCHAN__</span>)</h2>
<div class="wrap"><table id="channels">__CHANNELS__</table></div>
<h2>Members (<span id="members-count">__NMEM__</span>)</h2>
<div class="wrap"><table id="members">__MEMBERS__</table></div>
<h2>Owners</h2><div class="wrap"><table id="owners">__OWNERS__</table></div>
<h2>Cluster processes</h2><div class="wrap"><table id="processes">__PROCESSES__</table></div>
<p style="font-size:12px">JSON: <a href="/api/channels">/api/channels</a>,
<a href="/api/members">/api/members</a>, <a href="/api/mq">/api/mq</a>;
Prometheus: <a href="/metrics">/metrics</a>__PROM__</p>
<script>
const COLS = __COLS__;
const REFRESH_MS = __REFRESH_MS__;
function esc(v){if(v===null||v===undefined)return "";return String(v).replace(/[&<>"]/g,
 c=>({"&":"&amp;","<":"&lt;",">":"&gt;",'"':"&quot;"}[c]));}
function table(id, rows, cols, keyField){
 const q=document.getElementById("search").value.trim().toLowerCase();
 const shown=rows.filter(r=>!q||String(r[keyField]||"").toLowerCase().includes(q));
 let h="<tr>"+cols.map(c=>"<th>"+esc(c)+"</th>").join("")+"</tr>";
 for(const r of shown){h+="<tr"+(r.status==="dead"?" class='dead'":"")+">"+cols.map(c=>
  "<td"+(typeof r[c]==="number"?" class='num'":"")+">"+esc(r[c])+"</td>").join("")+"</tr>";}
 document.getElementById(id).innerHTML=h;
 const n=document.getElementById(id+"-count"); if(n) n.textContent=shown.length;
}
let last=null;
function render(){ if(!last) return;
 table("channels", last.channels, COLS.channels, "unique_keys");
 table("members", last.members, COLS.members, "channel_unique_keys");
 table("owners", last.owners||[], COLS.owners, "");
 table("processes", last.processes||[], COLS.processes, ""); }
async function refresh(){
 try{const r=await fetch("/api/mq",{cache:"no-store"}); last=await r.json();
  if(last.error){throw new Error(last.error);} render();
  document.getElementById("state").textContent="updated "+new Date().toLocaleTimeString()+
   " (every "+(REFRESH_MS/1000)+" s)";}
 catch(e){document.getElementById("state").textContent="refresh failed: "+e;}
}
document.getElementById("search").addEventListener("input", render);
refresh(); setInterval(refresh, REFRESH_MS);
</script></body></html>
"""

OWNER_COLUMNS = [
    "owner_id", "host", "pid", "pool_file", "segment_len", "free_bytes", "attached_members",
    "status",
]  # fmt: skip
PROCESS_COLUMNS = ["instance_key", "kind", "host", "pid", "owner_id", "sub_cluster", "status"]


def _html_rows(rows: list[dict], columns: list[str], key_field: str = "", query: str = "") -> str:
    head = "<tr>" + "".join(f"<th>{html.escape(c)}</th>" for c in columns) + "</tr>"
    body = []
    q = query.strip().lower()
    for r in rows:
        if q and key_field and q not in str(r.get(key_field, "")).lower():
            continue
        cls = " class='dead'" if r.get("status") == "dead" else ""
        cells = "".join(
            f"<td>{html.escape('' if r.get(c) is None else str(r.get(c)))}</td>" for c in columns
        )
        body.append(f"<tr{cls}>{cells}</tr>")
    return head + "".join(body)


def render_index_html(
    cluster_name: str,
    data: Mapping[str, Any],
    *,
    query: str = "",
    refresh_ms: int = 2000,
    prometheus_base_url: str | None = None,
) -> str:
    """The monitoring page: Channels and Members tables (rendered now, refreshed by JS).

    No external resources: the page is one HTML document with inline CSS and JS that
    fetches ``/api/mq`` every ``refresh_ms`` and filters both tables by unique key.
    """
    channels = data.get("channels", [])
    members = data.get("members", [])
    cols = {
        "channels": CHANNEL_COLUMNS,
        "members": MEMBER_COLUMNS,
        "owners": OWNER_COLUMNS,
        "processes": PROCESS_COLUMNS,
    }
    prom = ""
    if prometheus_base_url:
        prom = f"; Prometheus server: {html.escape(prometheus_base_url)}"
    state = data.get("error") or time.strftime("rendered %H:%M:%S")
    subs = {
        "__CLUSTER__": html.escape(cluster_name),
        "__QUERY__": html.escape(query, quote=True),
        "__STATE__": html.escape(str(state)),
        "__NCHAN__": str(len(channels)),
        "__NMEM__": str(len(members)),
        "__CHANNELS__": _html_rows(channels, CHANNEL_COLUMNS, "unique_keys", query),
        "__MEMBERS__": _html_rows(members, MEMBER_COLUMNS, "channel_unique_keys", query),
        "__OWNERS__": _html_rows(data.get("owners", []), OWNER_COLUMNS),
        "__PROCESSES__": _html_rows(data.get("processes", []), PROCESS_COLUMNS),
        "__PROM__": prom,
        "__COLS__": orjson.dumps(cols).decode().replace("</", "<\\/"),
        "__REFRESH_MS__": str(int(refresh_ms)),
    }
    page = _PAGE
    for key, value in subs.items():
        page = page.replace(key, value)
    return page
