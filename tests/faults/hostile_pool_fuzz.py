"""Truncated and corrupted pool files, as a script (a segfault must not take pytest down).

``python hostile_pool_fuzz.py EXAMPLES SEED`` builds a small pool holding channels
(with published, claimed and large messages), KV keys, a live member and a dead one,
then lets hypothesis truncate it or overwrite bytes and words in every region. For
each damaged copy:

* ``Pool.attach`` either works or raises an ``ApiError``;
* ``Pool.adopt`` either works or raises ``PoolNotAdoptable`` (an ``ApiError``);
* after an adoption, everything the owner then runs on the pool (reaping the dead
  member, repairing channels for other tags, reclaiming heap tags, destroying
  channels, statistics) completes, and the pool still passes ``find_corruption``.

Exit status 0 when every example behaved; a crash shows as a signal exit, with the
last example printed on stderr.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile

_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)

import numpy as np  # noqa: E402
from hypothesis import HealthCheck, given, seed, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from fluxon.api_error import ApiError  # noqa: E402
from fluxon.pool import Pool, find_corruption  # noqa: E402
from fluxon_kernels import channel as kchan  # noqa: E402
from fluxon_kernels import heap as kheap  # noqa: E402
from fluxon_kernels import kv as kkv  # noqa: E402
from fluxon_kernels import pool as kpool  # noqa: E402
from fluxon_kernels.layout import channel as cl  # noqa: E402
from fluxon_kernels.layout import member as ml  # noqa: E402
from fluxon_kernels.layout import pool_header as ph  # noqa: E402

CLUSTER = "fuzz"
OWNER = "fuzz-owner"
SIZE = 16 << 20


def _dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def build(share: str) -> tuple[bytes, dict]:
    """A pool with some of everything; returns its bytes and the regions' byte spans."""
    pool = Pool.create(share, CLUSTER, OWNER, SIZE)
    b, w = pool.b, pool.w
    live = pool.register_member(ml.KIND_EXTERNAL, "live") + 1
    dead = int(kpool.member_claim(w, _dead_pid(), 1, ml.KIND_EXTERNAL, 1)) + 1
    for chan_id, chan_type in ((1, cl.TYPE_MPMC), (2, cl.TYPE_MPSC)):
        c = int(kchan.chan_create(b, w, live, chan_id, chan_type, 8, 1))
        e = int(kchan.prod_attach(b, w, c, live, 1, 10 + chan_id))
        kchan.cons_attach(w, c, dead, 20 + chan_id, 1 if chan_type == cl.TYPE_MPSC else 0)
        for i in range(6):
            if i % 2:
                s = int(kchan.prod_reserve(b, w, c, e, live, 3000))
                off = int(kchan.slot_payload_offset(b, w, c, s))
                b[off : off + 3000] = i
                kchan.prod_publish(b, w, c, e, live, s)
            else:
                kchan.prod_put(b, w, c, e, live, np.full(40, i, np.uint8), 40)
        out = np.zeros(8, np.int64)
        kchan.cons_claim(b, w, c, dead, np.zeros(cl.MAX_PRODUCERS, np.int64), out, 3)
    for i in range(5):
        n = 500 + 2000 * i
        start = int(kheap.heap_alloc(w, n, live))
        key = np.frombuffer(f"key-{i}".encode(), np.uint8).copy()
        kkv.kv_put(b, w, key, int(kheap.make_ref(start, n)), live, 100)
    raw = bytes(pool.b)
    spans = {
        "header": (0, ph.HEADER_BYTES),
        "members": (int(w[ph.W_MEMBER_OFF]), int(w[ph.W_MEMBER_OFF]) + 4 * ml.MEMBER_STRIDE),
        "channels": (int(w[ph.W_CHAN_OFF]), int(w[ph.W_CHAN_OFF]) + 2 * int(w[ph.W_CHAN_STRIDE])),
        "kv": (int(w[ph.W_KV_OFF]), int(w[ph.W_KV_OFF]) + int(w[ph.W_KV_BUCKETS]) * 256),
        "heap_table": (int(w[ph.W_HEAP_TABLE_OFF]), int(w[ph.W_HEAP_TABLE_OFF]) + 64 * 8),
        "heap": (int(w[ph.W_HEAP_OFF]), int(w[ph.W_HEAP_OFF]) + 64 * 1024),
        "anywhere": (0, SIZE),
    }
    pool.close()
    return raw, spans


_WORDS = st.one_of(
    st.integers(-(1 << 63), (1 << 63) - 1),
    st.integers(-4, 300),
    st.sampled_from([0, 1, 2, -1, 1 << 32, 2 << 32, (2 << 32) + 1, (1 << 36) + 8, 1 << 62]),
)


def damage_strategy(spans: dict):
    region = st.sampled_from(sorted(spans))
    edit = st.one_of(
        st.tuples(st.just("byte"), region, st.floats(0, 1, exclude_max=True), st.integers(0, 255)),
        st.tuples(st.just("word"), region, st.floats(0, 1, exclude_max=True), _WORDS),
    )
    truncate = st.one_of(
        st.none(),
        st.none(),
        st.none(),
        st.integers(0, SIZE - 1),
        st.sampled_from([0, 7, ph.HEADER_BYTES - 1, ph.HEADER_BYTES, SIZE // 2, SIZE - 4096]),
    )
    return st.tuples(st.lists(edit, min_size=0, max_size=6), truncate)


def apply(raw: bytes, spans: dict, damage) -> bytearray:
    edits, truncate = damage
    data = bytearray(raw)
    for kind, region, where, value in edits:
        lo, hi = spans[region]
        if kind == "byte":
            data[lo + int(where * (hi - lo))] = value
        else:
            off = (lo + int(where * (hi - lo))) & ~7
            data[off : off + 8] = int(value).to_bytes(8, "little", signed=True)
    if truncate is not None:
        del data[truncate:]
    return data


def exercise(share: str) -> str:
    """Attach and adopt the damaged pool in place; returns what happened."""
    outcome = []
    try:
        client = Pool.attach(share, CLUSTER, wait_ready_s=0.0)
    except ApiError as exc:
        outcome.append(f"attach refused ({type(exc).__name__})")
    else:
        client.members()
        client.free_bytes()
        client.close()
        outcome.append("attached")
    try:
        pool = Pool.adopt(share, CLUSTER, OWNER, SIZE)
    except ApiError as exc:
        outcome.append(f"adopt refused ({type(exc).__name__})")
        return ", ".join(outcome)
    try:
        pool.contents_summary()
        pool.reap_dead_members()
        b, w = pool.b, pool.w
        for tag in (1, 2, 3, 255, 256):
            kkv.kv_repair_dead(b, w, tag)
            kchan.chan_repair_dead(b, w, tag)
            kheap.heap_reclaim_tag(w, tag)
        for c in range(int(w[ph.W_CHAN_COUNT])):
            cw = int(kchan.chan_word(w, c))
            if int(w[cw + cl.C_STATE]) == cl.CHAN_ACTIVE:
                kchan.chan_destroy(b, w, c)
        pool.free_bytes()
        problem = find_corruption(pool)
        assert problem is None, f"repairs left a corrupt pool: {problem}"
        outcome.append("adopted and repaired")
    finally:
        pool.close()
    return ", ".join(outcome)


def main(examples: int, seed_value: int) -> int:
    base = tempfile.mkdtemp(prefix="fluxon-fuzz-", dir="/dev/shm")
    try:
        share = os.path.join(base, "shm")
        raw, spans = build(share)
        path = os.path.join(share, CLUSTER, "mmap.file")
        seen: dict[str, int] = {}

        @seed(seed_value)
        @settings(
            max_examples=examples,
            deadline=None,
            database=None,
            suppress_health_check=list(HealthCheck),
        )
        @given(damage_strategy(spans))
        def check(damage) -> None:
            sys.stderr.write(f"example: {damage!r}\n")
            sys.stderr.flush()
            data = apply(raw, spans, damage)
            tmp = path + ".tmp"
            with open(tmp, "wb") as fh:
                fh.write(data)
            os.replace(tmp, path)
            what = exercise(share)
            seen[what] = seen.get(what, 0) + 1

        check()
        for what, n in sorted(seen.items()):
            print(f"{n:5d}  {what}")
        assert any("adopted" in what for what in seen), "no damaged pool adopted: weak test"
        assert any("adopt refused" in what for what in seen), "nothing refused: weak test"
        return 0
    finally:
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main(int(sys.argv[1]), int(sys.argv[2])))
