"""Latency recorders of MQ handles: histograms, the periodic log lines, the pool stats block.

Every producer/consumer handle owns one recorder (:class:`ProducerStats`,
:class:`ConsumerStats`). The hot path only adds to plain counters and bumps one
histogram bucket (a fixed log-scale bucket array, no allocation per message); all
arithmetic on the histogram (percentiles) happens off the hot path, when a recorder
*flushes*, which it does from the calling thread at most every
``publish_interval_s`` (default 0.5 s) and only when the handle is used:

* **publish**: a summary (lifetime counters, window percentiles, prefetch state) is
  written into the handle's stats block in the pool (:mod:`fluxon_kernels.layout.stats`,
  seqlocked), where the master and ``python -m fluxon status`` read it without asking
  the process anything;
* **log**: every ``FLUXON_LATENCY_LOG_INTERVAL_S`` seconds (default 30) the window is
  logged at INFO and a new window starts. Consumers log ``py-get latency``,
  ``get_one breakdown`` and ``MpscConsumer prefetch``; producers log
  ``py-put latency`` (the keywords of the latency-triage table).

**Sampling.** A handle times only one in ``every`` of its ``put_data``/``get_data``
calls that neither slept nor timed out (they went through at once, or after spinning
briefly): that call reads the clock, measures its breakdown and is recorded, standing
for the calls of its cycle; the others only count down ``skip`` (consumers add their
messages). ``every`` (a power of two, 1 to :data:`MAX_EVERY`) follows the call rate so
that timed calls come :data:`TIMED_GAP_NS` apart: each timed call doubles it if it came
sooner after the previous one, lowers it to what the gap says if later. So about 125
to 500 calls a second are timed (a timed call costs some 300 ns; every call while fewer
than 500 a second come, more above 128 000 a second), and a burst after an idle spell
is sampled within a few milliseconds. The flush (publish, log) happens in timed calls
and in waiting ones, so after a burst at most ``every`` further calls may pass before
the next flush. A call that slept on the futex or timed out is always timed and
recorded on its own, so the tail (p99, max) and the waiting time stay exact. Counts
(calls, messages, timeouts, waits, sleeps) are exact; percentiles come from the sampled
durations; times (averages, the breakdown, spinning) count each timed call for its
cycle. Calls that fail (closed handle, bad arguments) are not recorded.

What a handle calls (``now_ns`` = ``time.perf_counter_ns()``, already taken by the
caller for its own timing)::

    stats = ConsumerStats(chan_id, member_id, unique_id, logger=log, block=block)
    stats.record_get(total_ns, n_messages, now_ns)   # once per get_data (0 = timeout)
    stats.kernel_ns += ...; stats.claim_ns += ...    # breakdown, plain attributes
    stats.close()                                     # final publish (no log)

Histogram buckets: values below 16 ns have a bucket each; above, every power of two is
split into 8 buckets, so a bucket is at most 12.5 % wide and a percentile (the bucket's
midpoint, clamped to the window's min and max) is within about 6 % of the truth.
"""

from __future__ import annotations

import logging
import math
import os
import threading
import time
from typing import Any

import numpy as np

from fluxon_kernels import stats as kstats
from fluxon_kernels.layout import stats as sl

__all__ = [
    "ConsumerStats",
    "LatencyHistogram",
    "NullConsumerStats",
    "NullProducerStats",
    "ProducerStats",
    "StatsBlock",
    "attach_stats_block",
    "log_interval_s",
    "new_handle_stats",
    "read_stats_block",
    "release_stats_block",
    "stats_enabled",
    "summary_dict",
]

#: Environment variable overriding the log interval (seconds).
LOG_INTERVAL_ENV = "FLUXON_LATENCY_LOG_INTERVAL_S"
#: Older name of the same setting, still honoured.
LOG_INTERVAL_ENV_OLD = "FLUXON_MQ_STATS_INTERVAL_S"
DEFAULT_LOG_INTERVAL_S = 30.0
#: Environment variable switching handle statistics off (``0``).
STATS_ENV = "FLUXON_MQ_STATS"
#: Most often a recorder writes its summary into the pool.
DEFAULT_PUBLISH_INTERVAL_S = 0.5

#: Histogram geometry: 2**SUB_BITS buckets per power of two.
SUB_BITS = 3
N_BUCKETS = 512
_EXACT = 1 << (SUB_BITS + 1)  # below this every value has its own bucket
_LAST = N_BUCKETS - 1

_log = logging.getLogger("fluxon.stats")


def _bucket_bounds() -> tuple[np.ndarray, np.ndarray]:
    lower = np.zeros(N_BUCKETS, dtype=np.float64)
    upper = np.zeros(N_BUCKETS, dtype=np.float64)
    for i in range(N_BUCKETS):
        if i < _EXACT:
            lower[i], upper[i] = i, i + 1
        else:
            shift = (i >> SUB_BITS) - 1
            top = (i & ((1 << SUB_BITS) - 1)) | (1 << SUB_BITS)
            lower[i], upper[i] = float(top << shift), float((top + 1) << shift)
    return lower, upper


_LOWER, _UPPER = _bucket_bounds()
_MID = (_LOWER + _UPPER) / 2.0


def bucket_index(ns: int) -> int:
    """Histogram bucket of a duration (ns); the hot paths inline the same arithmetic."""
    if ns < _EXACT:
        return ns if ns > 0 else 0
    shift = ns.bit_length() - SUB_BITS - 1
    i = (shift << SUB_BITS) + (ns >> shift)
    return i if i < _LAST else _LAST


def log_interval_s() -> float:
    """The latency log interval: env ``FLUXON_LATENCY_LOG_INTERVAL_S`` (default 30 s)."""
    for name in (LOG_INTERVAL_ENV, LOG_INTERVAL_ENV_OLD):
        raw = os.environ.get(name)
        if raw:
            try:
                value = float(raw)
            except ValueError:
                _log.warning("%s=%r is not a number of seconds; ignored", name, raw)
                continue
            if value > 0 and math.isfinite(value):
                return value
            _log.warning("%s=%r must be > 0; ignored", name, raw)
    return DEFAULT_LOG_INTERVAL_S


class LatencyHistogram:
    """Fixed log-scale histogram of durations in ns (numpy int64 buckets).

    :meth:`record` allocates nothing that outlives the call and touches one bucket
    through a memoryview of the array (cheaper than numpy item access); percentiles
    are computed on demand.
    """

    __slots__ = ("count", "counts", "max_ns", "min_ns", "total_ns", "_mv")

    def __init__(self) -> None:
        self.counts = np.zeros(N_BUCKETS, dtype=np.int64)
        self._mv = memoryview(self.counts)
        self.count = 0
        self.total_ns = 0
        self.max_ns = 0
        self.min_ns = 0

    def record(self, ns: int) -> None:
        """Add one duration (ns, an int >= 0)."""
        if ns < _EXACT:
            i = ns if ns > 0 else 0
        else:
            shift = ns.bit_length() - SUB_BITS - 1
            i = (shift << SUB_BITS) + (ns >> shift)
            if i > _LAST:
                i = _LAST
        self._mv[i] += 1
        if not self.count or ns < self.min_ns:
            self.min_ns = ns
        self.count += 1
        self.total_ns += ns
        if ns > self.max_ns:
            self.max_ns = ns

    def reset(self) -> None:
        """Forget everything (start a new window)."""
        self.counts[:] = 0
        self.count = self.total_ns = self.max_ns = self.min_ns = 0

    def quantile(self, q: float) -> float:
        """Estimated ``q``-quantile (0..1) in ns; 0.0 when empty."""
        return float(self.quantiles((q,))[0])

    def quantiles(self, qs: tuple[float, ...]) -> np.ndarray:
        """Estimated quantiles (ns) for each ``q`` in ``qs`` (one pass)."""
        n = int(self.counts.sum())
        out = np.zeros(len(qs), dtype=np.float64)
        if n == 0:
            return out
        cum = np.cumsum(self.counts)
        for j, q in enumerate(qs):
            rank = max(1, math.ceil(min(max(q, 0.0), 1.0) * n))
            i = int(np.searchsorted(cum, rank))
            value = min(_MID[i], float(self.max_ns)) if self.max_ns else _MID[i]
            out[j] = max(value, float(self.min_ns))
        return out

    @property
    def avg_ns(self) -> float:
        """Mean duration (ns); 0.0 when empty."""
        return self.total_ns / self.count if self.count else 0.0


# --------------------------------------------------------------------------- pool block
class StatsBlock:
    """A handle's stats block in the pool (see :func:`attach_stats_block`).

    Attributes
    ----------
    base : int
        Word index of the block in ``pool.w``.
    c, role, entry : int
        Channel entry, ``ROLE_PRODUCER``/``ROLE_CONSUMER``, producer/consumer entry.
    """

    def __init__(self, pool: Any, c: int, role: int, entry: int, base: int) -> None:
        self._w = pool.w
        self.c = c
        self.role = role
        self.entry = entry
        self.base = base
        self._lock = threading.Lock()
        self.closed = False

    def publish(self, summary: np.ndarray) -> bool:
        """Seqlock-write ``summary`` (int64[WORDS]); False once released."""
        with self._lock:
            if self.closed:
                return False
            return int(kstats.stats_publish(self._w, self.base, summary)) >= 0

    def read(self) -> dict | None:
        """The block's current contents as a dict (``None`` if unreadable)."""
        out = np.zeros(sl.WORDS, dtype=np.int64)
        with self._lock:
            if self.closed:
                return None
            rc = int(kstats.stats_read(self._w, self.c, self.role, self.entry, out))
        return summary_dict(out) if rc == 1 else None

    def release(self) -> None:
        """Unpublish and free the block (idempotent)."""
        with self._lock:
            if self.closed:
                return
            self.closed = True
            kstats.stats_block_release(self._w, self.c, self.role, self.entry, self.base)


def _role_code(role: Any) -> int:
    if role in (sl.ROLE_PRODUCER, sl.ROLE_CONSUMER) and not isinstance(role, str):
        return int(role)
    name = str(getattr(role, "value", role)).lower()
    if name == "producer":
        return sl.ROLE_PRODUCER
    if name == "consumer":
        return sl.ROLE_CONSUMER
    raise ValueError(f"role must be 'producer' or 'consumer', got {role!r}")


def attach_stats_block(pool: Any, c: int, role: Any, entry: int) -> StatsBlock | None:
    """Allocate the stats block of a producer/consumer entry and publish its reference.

    The block is a heap block tagged with the channel (``chan_tag(c)``), so channel
    retention frees it with everything else; its reference goes into ``P_STATS_REF``
    / ``K_STATS_REF`` of the entry. Identity (chan_id, member_id) is read from the
    channel entry, so call it after ``prod_attach``/``cons_attach``.

    Parameters
    ----------
    pool : fluxon.pool.Pool
        The pool holding the channel.
    c : int
        Channel entry index (``ChannelDescriptor.entry``).
    role : str, ChanRole or int
        ``"producer"``/``"consumer"`` (or ``ROLE_PRODUCER``/``ROLE_CONSUMER``).
    entry : int
        The handle's producer/consumer entry index.

    Returns
    -------
    StatsBlock or None
        ``None`` if the heap has no room right now (monitoring then shows no
        latency for this handle; nothing else changes).
    """
    from fluxon_kernels import channel as kchan
    from fluxon_kernels.layout import channel as cl

    code = _role_code(role)
    w = pool.w
    cw = int(kchan.chan_word(w, c))
    chan_id = int(w[cw + cl.C_CHAN_ID])
    if code == sl.ROLE_PRODUCER:
        member_id = int(w[cw + (cl.PROD_OFF + entry * cl.PROD_STRIDE) // 8 + cl.P_MEMBER_ID])
    else:
        member_id = int(w[cw + (cl.CONS_OFF + entry * cl.CONS_STRIDE) // 8 + cl.K_MEMBER_ID])
    base = int(kstats.stats_block_attach(w, c, code, entry, chan_id, member_id, os.getpid()))
    if base < 0:
        _log.debug("no pool room for the stats block of channel entry %d: %d", c, base)
        return None
    return StatsBlock(pool, c, code, entry, base)


def release_stats_block(block: StatsBlock | None) -> None:
    """Free a block from :func:`attach_stats_block` (on close; ``None`` is ignored)."""
    if block is not None:
        block.release()


def read_stats_block(w: np.ndarray, c: int, role: Any, entry: int) -> dict | None:
    """Read the stats block of an entry from any process (``None`` if none/unreadable)."""
    out = np.zeros(sl.WORDS, dtype=np.int64)
    rc = int(kstats.stats_read(w, c, _role_code(role), entry, out))
    return summary_dict(out) if rc == 1 else None


def summary_dict(words: np.ndarray) -> dict:
    """Block words -> ``{field: int}`` (names of :data:`FIELD_NAMES`, minus magic/seq)."""
    values = words.tolist()
    return {name: values[i] for i, name in enumerate(sl.FIELD_NAMES) if i > sl.S_SEQ}


# --------------------------------------------------------------------------- recorders
def _ms(ns: float) -> float:
    return ns / 1e6


#: Samples a recorder buffers before folding them into its histogram (one numpy pass).
SAMPLE_BUFFER = 4096
#: Low bits of a buffered sample holding its weight - 1 (how many calls it stands for).
WEIGHT_BITS = 10
WEIGHT_MASK = (1 << WEIGHT_BITS) - 1
#: Sampling: the gap (ns) wanted between timed calls, low and high bound.
TIMED_GAP_NS = (2_000_000, 8_000_000)
#: Most calls one timed call stands for (a burst followed by silence leaves at most this
#: many calls counted but not yet flushed).
MAX_EVERY = 256
#: A handle that waits flushes (publish, log) while it waits; one that never waits
#: does it in a record call this much (ns) later.
FLUSH_GRACE_NS = 25_000_000


def bucket_indices(ns: np.ndarray) -> np.ndarray:
    """:func:`bucket_index` of every element of an int64 array of durations (>= 0).

    The drain of a full sample buffer runs on the hot path (one call in
    :data:`SAMPLE_BUFFER` pays for it), so this is a few whole-array operations: the
    bit length comes from the float exponent (``frexp``), which is exact below 2**53
    and at most one too large above (a value just under a power of two rounds up),
    corrected by one shift.
    """
    t = np.maximum(ns, 0)
    bits = np.frexp(t.astype(np.float64))[1].astype(np.int64)  # bit_length (0 for 0)
    bits -= ((t >> np.maximum(bits - 1, 0)) == 0) & (t > 0)
    shift = np.maximum(bits - SUB_BITS - 1, 0)
    idx = np.where(t < _EXACT, t, (shift << SUB_BITS) + (t >> shift))
    return np.minimum(idx, _LAST)


class _HandleStats:
    """What producer and consumer recorders share: window, lifetime, flush schedule.

    The hot path only appends the call's duration to a sample buffer (a numpy array
    written through a memoryview; ``ns << WEIGHT_BITS | weight - 1``, a timed-out call
    stored complemented, i.e. negative), and while sampling (``every > 1``) only one
    fast call in ``every`` does even that. The buffer is folded into the window
    (calls, timeouts, total, max, histogram) in one vectorised pass when it is full or
    a flush is due, so a record call costs one Python call and a few integer
    operations. Several threads using one handle at once may lose or double count a
    sample; nothing worse.
    """

    __slots__ = (
        "_due_ns",
        "idle_due_ns",
        "_flush_lock",
        "_buf",
        "_buf_mv",
        "_n",
        "_last_timed_ns",
        "_last_window",
        "_life",
        "_next_log_ns",
        "_next_publish_ns",
        "_summary",
        "_window_start_ns",
        "block",
        "calls",
        "every",
        "skip",
        "chan_id",
        "codec_ns",
        "hist",
        "kernel_ns",
        "log_interval_ns",
        "logger",
        "max_ns",
        "member_id",
        "messages",
        "min_ns",
        "publish_interval_ns",
        "timeouts",
        "total_ns",
        "unique_id",
        "wait_ns",
        "waits",
    )

    ROLE = 0
    _WINDOW_FIELDS: tuple[str, ...] = (
        "calls",
        "timeouts",
        "messages",
        "waits",
        "wait_ns",
        "kernel_ns",
        "codec_ns",
        "total_ns",
    )

    def __init__(
        self,
        chan_id: int | str,
        member_id: int | str,
        unique_id: str = "",
        *,
        logger: logging.Logger | None = None,
        block: StatsBlock | None = None,
        log_interval: float | None = None,
        publish_interval: float = DEFAULT_PUBLISH_INTERVAL_S,
    ) -> None:
        self.chan_id = chan_id
        self.member_id = member_id
        self.unique_id = unique_id
        self.logger = logger
        self.block = block
        self.log_interval_ns = int((log_interval or log_interval_s()) * 1e9)
        self.publish_interval_ns = int(publish_interval * 1e9)
        self.hist = LatencyHistogram()
        self._buf = np.zeros(SAMPLE_BUFFER, dtype=np.int64)
        self._buf_mv = memoryview(self._buf)
        self._n = 0
        # Sampling of fast calls (put_data/get_data returning at once): 1 = every call timed.
        self.every = 1
        self.skip = 1
        self._last_timed_ns = 0
        self._reset_window()
        self._life = dict.fromkeys(self._WINDOW_FIELDS, 0)
        self._last_window: dict | None = None
        self._summary = np.zeros(sl.WORDS, dtype=np.int64)
        now = time.perf_counter_ns()
        self._window_start_ns = now
        self._next_log_ns = now + self.log_interval_ns
        self._next_publish_ns = now + self.publish_interval_ns if block is not None else 1 << 62
        self._schedule()
        self._flush_lock = threading.Lock()

    # ------------------------------------------------------------- window
    def _reset_window(self) -> None:
        self.calls = 0
        self.timeouts = 0
        self.messages = 0
        self.waits = 0
        self.wait_ns = 0
        self.kernel_ns = 0
        self.codec_ns = 0
        self.total_ns = 0
        self.max_ns = 0
        self.min_ns = -1  # none yet
        self.hist.reset()

    def _drain(self) -> None:
        """Fold the buffered samples into the window (vectorised).

        A sample is ``ns << WEIGHT_BITS | (weight - 1)`` (complemented for a timeout):
        a sampled fast call stands for ``weight`` calls (itself and the untimed ones
        before it). Untimed fast calls since the last sample are counted here too, at
        the mean duration of this batch's samples, so call and message counts stay exact.
        """
        n = self._n
        self._n = 0
        pending = self.every - self.skip
        self.skip = self.every
        if n <= 0 and pending <= 0:
            return
        v = self._buf[: min(n, SAMPLE_BUFFER)]
        timed_out = v < 0
        raw = np.where(timed_out, ~v, v)
        t = raw >> WEIGHT_BITS
        wt = (raw & WEIGHT_MASK) + 1
        calls = int(wt.sum())
        timeouts = int(timed_out.sum())
        total = int((t * wt).sum())
        if pending > 0:
            total += (total // calls if calls else 0) * pending
            calls += pending
        self.calls += calls
        self.timeouts += timeouts
        self._count_published(calls - timeouts)
        self.total_ns += total
        if len(v):
            self.max_ns = max(self.max_ns, int(t.max()))
            low = int(t.min())
            self.min_ns = low if self.min_ns < 0 else min(self.min_ns, low)
            self.hist.counts += np.bincount(
                bucket_indices(t), weights=wt, minlength=N_BUCKETS
            ).astype(np.int64)

    def _record_sampled(self, total_ns: int, ok: bool, now_ns: int) -> None:
        """Record the timed call that ends a sampling cycle: it stands for ``every`` calls
        (``ok`` False: it timed out; the untimed ones counted their own timeouts)."""
        every = self.every
        weight = every - self.skip  # calls of this cycle (every, unless a flush cut it)
        gap = now_ns - self._last_timed_ns
        self._last_timed_ns = now_ns
        if gap < TIMED_GAP_NS[0]:
            if every < MAX_EVERY:
                self.every = every = every << 1
        elif gap > TIMED_GAP_NS[1] and every > 1:  # (down at once to what the gap says)
            self.every = every = max(1, every >> (gap // TIMED_GAP_NS[1]).bit_length())
        self.skip = every  # the cycle ends here (before a _drain, which counts pending calls)
        v = (total_ns << WEIGHT_BITS) | (max(1, min(weight, MAX_EVERY)) - 1)
        self._append(v if ok else ~v, now_ns)

    def _append(self, sample: int, now_ns: int) -> None:
        """Buffer one sample (see :meth:`_drain`); flush if due."""
        i = self._n
        if i >= SAMPLE_BUFFER:
            self._drain()
            i = 0
        self._buf_mv[i] = sample
        self._n = i + 1
        if now_ns >= self._due_ns:
            self.flush(now_ns)

    def flush_waiting(self, now_ns: int) -> None:
        """The flush a handle runs once it is due and a call starts to wait (the periodic
        work done while idle). That call is not over: it belongs to the cycle after the
        flush, not to the one the flush closes."""
        self.skip += 1
        self.flush(now_ns)
        self.skip -= 1

    def _count_published(self, n: int) -> None:
        """Producers count messages from their samples; consumers count batch sizes."""

    def window(self, now_ns: int | None = None) -> dict:
        """The current window's figures (what the log lines print), as a dict."""
        now = time.perf_counter_ns() if now_ns is None else now_ns
        self._drain()
        h = self.hist
        # The record methods count calls and times on the recorder, not on ``hist``.
        h.count, h.total_ns, h.max_ns = self.calls, self.total_ns, self.max_ns
        h.min_ns = max(self.min_ns, 0)
        p50, p99 = h.quantiles((0.5, 0.99))
        out = {f: getattr(self, f) for f in self._WINDOW_FIELDS}
        out.update(
            window_ns=max(0, now - self._window_start_ns),
            avg_ns=self.total_ns / self.calls if self.calls else 0.0,
            p50_ns=float(p50),
            p99_ns=float(p99),
            max_ns=self.max_ns,
        )
        out.update(self._extra_window())
        return out

    def _extra_window(self) -> dict:
        return {}

    # ------------------------------------------------------------- flush
    def flush(self, now_ns: int | None = None, force_publish: bool = False) -> None:
        """Publish and/or log if due (called by the record methods; cheap to call)."""
        now = time.perf_counter_ns() if now_ns is None else now_ns
        if not self._flush_lock.acquire(blocking=False):
            return  # another thread is flushing this recorder
        try:
            self._drain()
            if now >= self._next_publish_ns or force_publish:
                self._next_publish_ns = now + self.publish_interval_ns
                self.publish(now)
            if now >= self._next_log_ns:
                self._next_log_ns = now + self.log_interval_ns
                self._roll(now)
            if self.block is None:
                self._next_publish_ns = 1 << 62
            self._schedule()
        finally:
            self._flush_lock.release()

    def _schedule(self) -> None:
        """When the next flush is due: ``idle_due_ns`` for a handle about to wait (its
        waiting loop flushes then, off the path of the next message), ``_due_ns`` (a
        grace later) for the record calls of a handle that never waits."""
        due = min(self._next_log_ns, self._next_publish_ns)
        self.idle_due_ns = due
        self._due_ns = due + FLUSH_GRACE_NS

    def _roll(self, now: int) -> None:
        """End the window: log it (if it saw calls), fold it into the lifetime totals."""
        win = self.window(now)
        if win["calls"]:
            if self.logger is not None:
                try:
                    self._log_window(win)
                except Exception:  # noqa: BLE001 - a broken handler must not break put/get
                    _log.debug("latency log failed", exc_info=True)
            self._last_window = win
        for f in self._WINDOW_FIELDS:
            self._life[f] += getattr(self, f)
        self._reset_window()
        self._window_start_ns = now

    def lifetime(self) -> dict:
        """Totals since the handle was created (closed windows + the current one)."""
        self._drain()
        return {f: self._life[f] + getattr(self, f) for f in self._WINDOW_FIELDS}

    def summary(self, now_ns: int | None = None) -> np.ndarray:
        """The block words (int64[WORDS]) a publish writes, computed now."""
        now = time.perf_counter_ns() if now_ns is None else now_ns
        s = self._summary
        life = self.lifetime()
        win = self.window(now) if self.calls or self._last_window is None else self._last_window
        calls = win["calls"]
        s[sl.S_UPDATED_NS] = time.time_ns()
        s[sl.S_CALLS] = life["calls"]
        s[sl.S_MESSAGES] = life["messages"]
        s[sl.S_TIMEOUTS] = life["timeouts"]
        s[sl.S_WAITS] = life["waits"]
        s[sl.S_WAIT_NS] = life["wait_ns"]
        s[sl.S_KERNEL_NS] = life["kernel_ns"]
        s[sl.S_CODEC_NS] = life["codec_ns"]
        s[sl.S_WINDOW_NS] = win["window_ns"]
        s[sl.S_WIN_CALLS] = calls
        s[sl.S_WIN_TIMEOUTS] = win["timeouts"]
        s[sl.S_WIN_MESSAGES] = win["messages"]
        s[sl.S_AVG_NS] = int(win["avg_ns"])
        s[sl.S_P50_NS] = int(win["p50_ns"])
        s[sl.S_P99_NS] = int(win["p99_ns"])
        s[sl.S_MAX_NS] = int(win["max_ns"])
        per_call = 1.0 / calls if calls else 0.0
        s[sl.S_AVG_WAIT_NS] = int(win["wait_ns"] * per_call)
        s[sl.S_AVG_KERNEL_NS] = int(win["kernel_ns"] * per_call)
        s[sl.S_AVG_CODEC_NS] = int(win["codec_ns"] * per_call)
        self._extra_summary(s, win)
        return s

    def _extra_summary(self, s: np.ndarray, win: dict) -> None:
        pass

    def publish(self, now_ns: int | None = None) -> bool:
        """Write the summary into the handle's stats block now (False without a block)."""
        block = self.block
        if block is None:
            return False
        try:
            return block.publish(self.summary(now_ns))
        except Exception:  # noqa: BLE001 - monitoring must never break put/get
            _log.debug("stats publish failed", exc_info=True)
            return False

    def close(self) -> None:
        """Publish a last summary (the block is released by :func:`release_stats_block`)."""
        self.publish()

    def _log_window(self, win: dict) -> None:
        raise NotImplementedError


class ConsumerStats(_HandleStats):
    """Recorder of a consumer handle.

    Window fields the handle adds to directly (ints, ns for times):

    ``calls``/``messages``/``timeouts``
        Maintained by :meth:`record_get`.
    ``kernel_ns``
        Time inside channel kernels (claim + copy-out/complete), all of it.
    ``claim_ns``, ``claim_calls``, ``claimed``
        The claim kernel alone: time, calls, messages it claimed.
    ``take_ns``
        The copy-out + completion kernels alone (per message: ``handle_await``).
    ``codec_ns``
        Decoding the payloads.
    ``waits``, ``wait_ns``, ``sleeps``
        Calls that found nothing and waited, time spent waiting (spinning and
        sleeping on the futex), futex sleeps. Waiting happens only when nothing is
        available, so ``wait_ns`` is also the producer-idle time of the prefetch line.
    ``prefetch_hits``
        Messages handed out from the prefetch queue (claimed by an earlier call).
    ``prefetch_queue``, ``prefetch_target``
        Messages held in the handle now; ``batch_size + prefetch_num`` of the last call.
    """

    __slots__ = (
        "claim_calls",
        "claim_ns",
        "claimed",
        "prefetch_hits",
        "prefetch_queue",
        "prefetch_target",
        "sleeps",
        "take_ns",
    )

    ROLE = sl.ROLE_CONSUMER
    _WINDOW_FIELDS = _HandleStats._WINDOW_FIELDS + (
        "claim_ns",
        "claim_calls",
        "claimed",
        "take_ns",
        "sleeps",
        "prefetch_hits",
    )

    def _reset_window(self) -> None:
        super()._reset_window()
        self.claim_ns = 0
        self.claim_calls = 0
        self.claimed = 0
        self.take_ns = 0
        self.sleeps = 0
        self.prefetch_hits = 0
        if not hasattr(self, "prefetch_queue"):
            self.prefetch_queue = 0
            self.prefetch_target = 0

    def record_get(self, total_ns: int, n_messages: int, now_ns: int) -> None:
        """One ``get_data`` call finished after ``total_ns``; 0 messages = a timeout."""
        self.messages += n_messages
        v = total_ns << WEIGHT_BITS
        self._append(v if n_messages else ~v, now_ns)

    def record_get_sampled(self, total_ns: int, n_messages: int, now_ns: int) -> None:
        """The timed call of a sampling cycle returned ``n_messages`` (0: timed out) after
        ``total_ns``; it stands for the ``every`` calls of its cycle (the untimed ones
        added their messages to ``messages`` themselves)."""
        self.messages += n_messages
        self._record_sampled(total_ns, n_messages > 0, now_ns)

    def _extra_window(self) -> dict:
        return {"prefetch_queue": self.prefetch_queue, "prefetch_target": self.prefetch_target}

    def _extra_summary(self, s: np.ndarray, win: dict) -> None:
        messages = win["messages"]
        s[sl.S_PF_QUEUE] = self.prefetch_queue
        s[sl.S_PF_TARGET] = self.prefetch_target
        s[sl.S_PF_HIT_PPM] = int(win["prefetch_hits"] * 1_000_000 / messages) if messages else 0
        s[sl.S_CLAIM_AVG_NS] = (
            int(win["claim_ns"] / win["claim_calls"]) if win["claim_calls"] else 0
        )
        s[sl.S_TAKE_AVG_NS] = int(win["take_ns"] / messages) if messages else 0
        s[sl.S_IDLE_NS] = win["wait_ns"]

    def _log_window(self, win: dict) -> None:
        log = self.logger
        calls = win["calls"]
        messages = win["messages"]
        window_s = win["window_ns"] / 1e9
        avg = win["avg_ns"]
        kernel = win["kernel_ns"] / calls
        wait = win["wait_ns"] / calls
        decode = win["codec_ns"] / calls
        log.info(
            "py-get latency chan=%s key=%s consumer=%s window_s=%.1f calls=%d timeouts=%d "
            "messages=%d avg_ms=%.3f p50_ms=%.3f p99_ms=%.3f max_ms=%.3f",
            self.chan_id,
            self.unique_id,
            self.member_id,
            window_s,
            calls,
            win["timeouts"],
            messages,
            _ms(avg),
            _ms(win["p50_ns"]),
            _ms(win["p99_ns"]),
            _ms(win["max_ns"]),
        )
        log.info(
            "get_one breakdown chan=%s consumer=%s calls=%d avg_total_ms=%.3f "
            "avg_kernel_ms=%.3f avg_wait_rx_ms=%.3f avg_decode_ms=%.3f avg_other_ms=%.3f "
            "waits=%d sleeps=%d",
            self.chan_id,
            self.member_id,
            calls,
            _ms(avg),
            _ms(kernel),
            _ms(wait),
            _ms(decode),
            _ms(max(0.0, avg - kernel - wait - decode)),
            win["waits"],
            win["sleeps"],
        )
        claim_calls = win["claim_calls"]
        log.info(
            "MpscConsumer prefetch chan=%s consumer=%s inflight_queue_size=%d "
            "target_inflight=%d hit_ratio=%.3f avg_get_handle_ms=%.3f avg_claim_ms=%.4f "
            "avg_handle_await_ms=%.4f claim_calls=%d claimed=%d producer_idle_ms=%.1f "
            "idle_ratio=%.3f",
            self.chan_id,
            self.member_id,
            win["prefetch_queue"],
            win["prefetch_target"],
            win["prefetch_hits"] / messages if messages else 0.0,
            _ms((win["claim_ns"] + win["wait_ns"]) / calls),
            _ms(win["claim_ns"] / claim_calls) if claim_calls else 0.0,
            _ms(win["take_ns"] / messages) if messages else 0.0,
            claim_calls,
            win["claimed"],
            _ms(win["wait_ns"]),
            win["wait_ns"] / win["window_ns"] if win["window_ns"] else 0.0,
        )


class ProducerStats(_HandleStats):
    """Recorder of a producer handle.

    Window fields the handle adds to directly: ``waits``/``wait_ns``/``sleeps`` (calls
    that found the channel full and waited for room; time waiting; futex sleeps);
    optionally ``kernel_ns``/``codec_ns`` (published in the block, not logged). ``calls``,
    ``messages`` (published) and ``timeouts`` (``Ok(False)``) are maintained by
    :meth:`record_put`.
    """

    __slots__ = ("sleeps",)

    ROLE = sl.ROLE_PRODUCER
    _WINDOW_FIELDS = _HandleStats._WINDOW_FIELDS + ("sleeps",)

    def _reset_window(self) -> None:
        super()._reset_window()
        self.sleeps = 0

    def record_put(self, total_ns: int, published: bool, now_ns: int) -> None:
        """One ``put_data`` call finished after ``total_ns`` (``published`` = Ok(True))."""
        v = total_ns << WEIGHT_BITS
        self._append(v if published else ~v, now_ns)

    def record_put_sampled(self, total_ns: int, published: bool, now_ns: int) -> None:
        """The timed call of a sampling cycle (see ``skip``/``every``) ended after
        ``total_ns`` (``published``: Ok(True)); it stands for the ``every`` calls of its
        cycle."""
        self._record_sampled(total_ns, published, now_ns)

    def record_put_many(self, total_ns: int, n_published: int, complete: bool, now_ns: int) -> None:
        """One batch call (``put_data_many``) published ``n_published`` messages; it
        counts as one call, and as a timeout unless ``complete``."""
        # _drain counts one message per completed sample; the batch adds the rest.
        self.messages += n_published - (1 if complete else 0)
        v = total_ns << WEIGHT_BITS
        self._append(v if complete else ~v, now_ns)

    def _count_published(self, n: int) -> None:
        self.messages += n

    def _log_window(self, win: dict) -> None:
        waits = win["waits"]
        self.logger.info(
            "py-put latency chan=%s key=%s producer=%s window_s=%.1f calls=%d timeouts=%d "
            "full_waits=%d avg_ms=%.3f p50_ms=%.3f p99_ms=%.3f max_ms=%.3f "
            "avg_wait_full_ms=%.3f wait_full_ms=%.1f sleeps=%d",
            self.chan_id,
            self.unique_id,
            self.member_id,
            win["window_ns"] / 1e9,
            win["calls"],
            win["timeouts"],
            waits,
            _ms(win["avg_ns"]),
            _ms(win["p50_ns"]),
            _ms(win["p99_ns"]),
            _ms(win["max_ns"]),
            _ms(win["wait_ns"] / waits) if waits else 0.0,
            _ms(win["wait_ns"]),
            win["sleeps"],
        )


class _Off:
    """What the null recorders share: they never time a call and never flush."""

    __slots__ = ()

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.every = self.skip = 1 << 62  # never samples: put_data/get_data read no timer
        self.idle_due_ns = 1 << 62

    def flush(self, now_ns: int | None = None, force_publish: bool = False) -> None:
        """Do nothing."""


class NullConsumerStats(_Off, ConsumerStats):
    """A consumer recorder that records nothing (statistics switched off)."""

    __slots__ = ()

    def record_get(self, total_ns: int, n_messages: int, now_ns: int) -> None:
        """Do nothing."""

    def record_get_sampled(self, total_ns: int, n_messages: int, now_ns: int) -> None:
        """Do nothing."""


class NullProducerStats(_Off, ProducerStats):
    """A producer recorder that records nothing (statistics switched off)."""

    __slots__ = ()

    def record_put(self, total_ns: int, published: bool, now_ns: int) -> None:
        """Do nothing."""

    def record_put_sampled(self, total_ns: int, published: bool, now_ns: int) -> None:
        """Do nothing."""

    def record_put_many(self, total_ns: int, n_published: int, complete: bool, now_ns: int) -> None:
        """Do nothing."""


def stats_enabled() -> bool:
    """Whether handles record statistics: env ``FLUXON_MQ_STATS`` (default on; ``0``,
    ``off``, ``false`` or ``no`` switch it off, e.g. for a same-run benchmark)."""
    return os.environ.get(STATS_ENV, "1").strip().lower() not in ("0", "off", "false", "no")


def new_handle_stats(
    pool: Any,
    c: int,
    role: Any,
    entry: int,
    chan_id: int | str,
    member_id: int | str,
    unique_id: str,
    logger: logging.Logger | None,
) -> tuple[_HandleStats, StatsBlock | None]:
    """The recorder (and stats block) of a new handle, honouring :func:`stats_enabled`.

    Returns ``(recorder, block)``; the handle keeps both, records into the recorder,
    and on close calls ``recorder.close()`` then ``release_stats_block(block)`` while
    it still holds its channel entry.
    """
    code = _role_code(role)
    if not stats_enabled():
        cls = NullProducerStats if code == sl.ROLE_PRODUCER else NullConsumerStats
        return cls(chan_id, member_id, unique_id), None
    block = attach_stats_block(pool, c, code, entry)
    cls = ProducerStats if code == sl.ROLE_PRODUCER else ConsumerStats
    recorder = cls(chan_id, member_id, unique_id, logger=logger, block=block)
    # A first (empty) summary now: the handle shows on the monitoring page at once, and
    # the publishing kernel is loaded here, not in the first flush (about 3 ms, on the
    # path of whatever message arrives then).
    recorder.publish()
    return recorder, block
