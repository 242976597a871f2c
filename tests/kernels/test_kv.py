"""KV index kernels: named edge cases (collision chains on a tiny table, tombstones,
full table, key limits, prefixes, lock and seqlock behaviour) and a hypothesis state
machine driving the kernels and ``tests.model.kv_model`` together."""

from __future__ import annotations

import os
import random

import numpy as np
import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from fluxon_kernels import status
from fluxon_kernels.heap import (
    heap_alloc,
    heap_free,
    heap_free_units,
    heap_used_by_tag,
    make_ref,
    unit_offset,
    units_for,
)
from fluxon_kernels.kv import (
    kv_count_prefix,
    kv_hash,
    kv_key_at,
    kv_list_keys,
    kv_lookup,
    kv_put,
    kv_read,
    kv_remove,
    kv_repair_dead,
    kv_value_size,
)
from fluxon_kernels.layout import kv_bucket as kb
from fluxon_kernels.layout import pool_header as ph
from fluxon_kernels.layout.heap import KV_TAG_BASE
from tests.model import make_pool
from tests.model.kv_model import KvModel

UNIT = 1024
ME = 1  # member tag of the test "process"
MACHINE_EXAMPLES = int(os.environ.get("FLUXON_MACHINE_EXAMPLES", "60"))


def K(s: str | bytes) -> np.ndarray:
    """Key bytes as the kernels take them."""
    return np.frombuffer(s.encode() if isinstance(s, str) else s, np.uint8)


def bucket_word(w, i, field):
    return (int(w[ph.W_KV_OFF]) + i * int(w[ph.W_KV_STRIDE])) // 8 + field


def put(b, w, key, value: bytes, tag=ME, max_spins=0):
    """Allocate, fill and publish like the facade; free the block if not published."""
    start = heap_alloc(w, len(value), tag)
    assert start >= 0, start
    off = unit_offset(w, start)
    b[off : off + len(value)] = np.frombuffer(value, np.uint8)
    r = kv_put(b, w, K(key), make_ref(start, len(value)), tag, max_spins)
    if r != status.OK:
        assert heap_free(w, start, len(value), tag) == units_for(w, len(value))
    return r


def get(b, w, key, cap=8 * UNIT):
    out = np.zeros(cap, np.uint8)
    n = kv_read(b, w, K(key), out)
    return n if n < 0 else out[:n].tobytes()


def keys_with_home(w, home, count, prefix="k"):
    """``count`` distinct keys whose probe sequence starts at bucket ``home``."""
    mask = int(w[ph.W_KV_BUCKETS]) - 1
    found = []
    i = 0
    while len(found) < count:
        key = f"{prefix}{i}"
        if kv_hash(K(key)) & mask == home:
            found.append(key)
        i += 1
    return found


# ---------------------------------------------------------------------------
# Hash
# ---------------------------------------------------------------------------


def _fnv1a(data: bytes) -> int:
    h = 0xCBF29CE484222325
    for c in data:
        h = ((h ^ c) * 0x100000001B3) & (2**64 - 1)
    return h - 2**64 if h >= 2**63 else h


@pytest.mark.parametrize(
    "data", [b"a", b"hello", b"\xff" * 200, bytes(range(256))[: kb.KEY_MAX], "ключ/ü".encode()]
)
def test_hash_is_fnv1a_64(data):
    assert kv_hash(K(data)) == _fnv1a(data)


def test_hash_of_empty_input_is_the_offset_basis():
    assert kv_hash(np.zeros(0, np.uint8)) == _fnv1a(b"") != 0


# ---------------------------------------------------------------------------
# Named edge cases
# ---------------------------------------------------------------------------


@pytest.fixture
def kvpool():
    return make_pool(kv_buckets=8, heap_units=64)


def test_put_get_replace_remove_round_trip(kvpool):
    b, w = kvpool
    total = heap_free_units(w)
    assert get(b, w, "x") == status.NOT_FOUND
    assert put(b, w, "x", b"one") == status.OK
    assert get(b, w, "x") == b"one"
    assert kv_value_size(b, w, K("x")) == 3
    i = kv_lookup(b, w, K("x"))
    assert i == kv_hash(K("x")) & 7
    assert heap_used_by_tag(w, KV_TAG_BASE + i) == 1
    assert heap_used_by_tag(w, ME) == 0  # the block moved from the writer to the bucket

    big = bytes(random.Random(1).randbytes(3 * UNIT + 7))
    assert put(b, w, "x", big) == status.OK
    assert get(b, w, "x") == big
    assert heap_used_by_tag(w, KV_TAG_BASE + i) == 4  # old 1-unit block freed
    assert heap_free_units(w) == total - 4

    assert kv_remove(b, w, K("x"), ME, 0) == status.OK
    assert get(b, w, "x") == status.NOT_FOUND
    assert kv_value_size(b, w, K("x")) == status.NOT_FOUND
    assert kv_lookup(b, w, K("x")) == status.NOT_FOUND
    assert kv_remove(b, w, K("x"), ME, 0) == status.NOT_FOUND
    assert heap_free_units(w) == total


def test_collision_chain_and_tombstones(kvpool):
    b, w = kvpool
    k1, k2, k3, k4 = keys_with_home(w, 3, 4)
    for k in (k1, k2, k3):
        assert put(b, w, k, k.encode()) == status.OK
    assert [kv_lookup(b, w, K(k)) for k in (k1, k2, k3)] == [3, 4, 5]
    # Removing the middle key leaves a tombstone that later keys probe past.
    assert kv_remove(b, w, K(k2), ME, 0) == status.OK
    assert get(b, w, k3) == k3.encode()
    assert kv_lookup(b, w, K(k3)) == 5
    st_word = bucket_word(w, 4, kb.B_STATE)
    assert w[st_word] == kb.STATE_TOMBSTONE
    # A different key does not take the tombstone...
    assert put(b, w, k4, b"four") == status.OK
    assert kv_lookup(b, w, K(k4)) == 6
    # ...the same key revives it in place.
    assert put(b, w, k2, b"again") == status.OK
    assert kv_lookup(b, w, K(k2)) == 4
    assert get(b, w, k2) == b"again"
    assert kv_count_prefix(b, w, K("")) == 4


def test_probing_wraps_around_the_end_of_the_table(kvpool):
    b, w = kvpool
    ks = keys_with_home(w, 7, 3)
    for k in ks:
        assert put(b, w, k, b"v") == status.OK
    assert [kv_lookup(b, w, K(k)) for k in ks] == [7, 0, 1]
    assert all(get(b, w, k) == b"v" for k in ks)


def test_lookup_stops_at_the_first_empty_bucket(kvpool):
    b, w = kvpool
    k1, k2 = keys_with_home(w, 2, 2)
    assert put(b, w, k1, b"1") == status.OK
    # k2 would go to bucket 3; it is absent, and bucket 3 is EMPTY.
    assert kv_lookup(b, w, K(k2)) == status.NOT_FOUND
    assert kv_remove(b, w, K(k2), ME, 0) == status.NOT_FOUND


def test_table_full_and_tombstones_are_not_reused_by_other_keys(kvpool):
    b, w = kvpool
    keys = [f"key{i}" for i in range(8)]
    for k in keys:
        assert put(b, w, k, b"x") == status.OK
    assert put(b, w, "one-more", b"x") == status.TABLE_FULL
    assert kv_remove(b, w, K(keys[0]), ME, 0) == status.OK
    assert put(b, w, "one-more", b"x") == status.TABLE_FULL
    assert put(b, w, keys[0], b"back") == status.OK
    assert get(b, w, keys[0]) == b"back"
    assert get(b, w, "one-more") == status.NOT_FOUND  # probes all 8 buckets, no EMPTY


def test_key_length_limits(kvpool):
    b, w = kvpool
    longest = "k" * kb.KEY_MAX
    assert put(b, w, longest, b"ok") == status.OK
    assert get(b, w, longest) == b"ok"
    assert put(b, w, "k" * (kb.KEY_MAX + 1), b"no") == status.TOO_LARGE
    assert put(b, w, "", b"no") == status.TOO_LARGE
    assert get(b, w, "k" * (kb.KEY_MAX + 1)) == status.NOT_FOUND
    assert get(b, w, "") == status.NOT_FOUND
    assert kv_remove(b, w, K(""), ME, 0) == status.NOT_FOUND
    out = np.zeros(kb.KEY_MAX, np.uint8)
    i = kv_lookup(b, w, K(longest))
    assert kv_key_at(b, w, i, out) == kb.KEY_MAX
    assert out.tobytes() == longest.encode()


def test_count_prefix(kvpool):
    b, w = kvpool
    for k in ("a/1", "a/2", "b/1", "a", "ab"):
        assert put(b, w, k, b"v") == status.OK
    assert kv_count_prefix(b, w, K("")) == 5
    assert kv_count_prefix(b, w, K("a")) == 4
    assert kv_count_prefix(b, w, K("a/")) == 2
    assert kv_count_prefix(b, w, K("a/1")) == 1
    assert kv_count_prefix(b, w, K("a/1/longer")) == 0
    assert kv_count_prefix(b, w, K("c")) == 0
    kv_remove(b, w, K("a/1"), ME, 0)
    assert kv_count_prefix(b, w, K("a/")) == 1  # tombstones do not count


def test_list_keys_and_key_at(kvpool):
    b, w = kvpool
    for k in ("p", "q", "r"):
        put(b, w, k, b"v")
    q_bucket = kv_lookup(b, w, K("q"))
    kv_remove(b, w, K("q"), ME, 0)
    idx = np.zeros(8, np.int64)
    n = kv_list_keys(b, w, idx)
    assert n == 2
    out = np.zeros(kb.KEY_MAX, np.uint8)
    names = sorted(out[: kv_key_at(b, w, i, out)].tobytes() for i in idx[:n])
    assert names == [b"p", b"r"]
    assert kv_list_keys(b, w, np.zeros(1, np.int64)) == 1
    # A tombstone still has its key; an EMPTY bucket or a bad index has none.
    assert kv_key_at(b, w, q_bucket, out) == 1 and out[0] == ord("q")
    empty = next(i for i in range(8) if w[bucket_word(w, i, kb.B_STATE)] == kb.STATE_EMPTY)
    assert kv_key_at(b, w, empty, out) == status.NOT_FOUND
    assert kv_key_at(b, w, 8, out) == status.NOT_FOUND
    assert kv_key_at(b, w, -1, out) == status.NOT_FOUND
    assert kv_key_at(b, w, int(idx[0]), np.zeros(0, np.uint8)) == status.BUFFER_TOO_SMALL
    w[bucket_word(w, int(idx[0]), kb.B_KEY_LEN)] = kb.KEY_MAX + 1
    assert kv_key_at(b, w, int(idx[0]), out) == status.CORRUPT


def test_read_into_a_small_buffer(kvpool):
    b, w = kvpool
    put(b, w, "k", b"0123456789")
    assert kv_read(b, w, K("k"), np.zeros(9, np.uint8)) == status.BUFFER_TOO_SMALL
    out = np.zeros(10, np.uint8)
    assert kv_read(b, w, K("k"), out) == 10
    assert out.tobytes() == b"0123456789"


def test_put_of_a_block_not_held_by_the_caller_changes_nothing(kvpool):
    b, w = kvpool
    free0 = heap_free_units(w)
    s = heap_alloc(w, 100, 2)  # held by member 2, not by ME
    assert kv_put(b, w, K("k"), make_ref(s, 100), ME, 0) == status.CORRUPT
    assert heap_used_by_tag(w, 2) == 1
    assert kv_put(b, w, K("k"), make_ref(60, 5 * UNIT), ME, 0) == status.CORRUPT  # off the end
    assert kv_put(b, w, K("k"), 0, ME, 0) == status.CORRUPT
    assert kv_put(b, w, K("k"), make_ref(s, 100), 0, 0) == status.CORRUPT
    assert kv_lookup(b, w, K("k")) == status.NOT_FOUND
    assert kv_count_prefix(b, w, K("")) == 0
    heap_free(w, s, 100, 2)
    assert heap_free_units(w) == free0


def test_busy_lock_gives_retry_and_changes_nothing(kvpool):
    b, w = kvpool
    put(b, w, "k", b"old")
    i = kv_lookup(b, w, K("k"))
    w[bucket_word(w, i, kb.B_LOCK)] = 7  # another member holds the bucket
    free0 = heap_free_units(w)
    assert put(b, w, "k", b"new", max_spins=50) == status.RETRY
    assert kv_remove(b, w, K("k"), ME, 50) == status.RETRY
    assert heap_free_units(w) == free0
    assert get(b, w, "k") == b"old"  # readers never lock
    w[bucket_word(w, i, kb.B_LOCK)] = 0
    assert put(b, w, "k", b"new") == status.OK
    assert get(b, w, "k") == b"new"


def test_new_key_behind_a_locked_empty_bucket_gives_retry(kvpool):
    b, w = kvpool
    (k,) = keys_with_home(w, 5, 1)
    w[bucket_word(w, 5, kb.B_LOCK)] = 7
    assert put(b, w, k, b"v", max_spins=10) == status.RETRY
    w[bucket_word(w, 5, kb.B_LOCK)] = 0
    assert put(b, w, k, b"v") == status.OK


def test_reader_gives_retry_while_a_writer_keeps_the_version_odd(kvpool):
    b, w = kvpool
    put(b, w, "k", b"v")
    vw = bucket_word(w, kv_lookup(b, w, K("k")), kb.B_VERSION)
    w[vw] += 1  # a writer is mid-publish (or died there)
    assert kv_read(b, w, K("k"), np.zeros(8, np.uint8)) == status.RETRY
    assert kv_value_size(b, w, K("k")) == status.RETRY
    w[vw] += 1
    assert get(b, w, "k") == b"v"


def test_writers_bump_the_version_by_two(kvpool):
    b, w = kvpool
    put(b, w, "k", b"v")
    vw = bucket_word(w, kv_lookup(b, w, K("k")), kb.B_VERSION)
    assert w[vw] == 2
    put(b, w, "k", b"w")
    kv_remove(b, w, K("k"), ME, 0)
    assert w[vw] == 6
    assert w[bucket_word(w, kv_hash(K("k")) & 7, kb.B_LOCK)] == 0


def test_repair_of_a_member_that_holds_nothing_is_a_no_op(kvpool):
    b, w = kvpool
    put(b, w, "k", b"v")
    before = w.copy()
    assert kv_repair_dead(b, w, 5) == 0
    assert kv_repair_dead(b, w, 0) == 0
    assert np.array_equal(before, w)


# ---------------------------------------------------------------------------
# State machine: kernel vs model
# ---------------------------------------------------------------------------

MACHINE_BUCKETS = 16
MACHINE_UNITS = 128
_alphabet = ["a", "b", "/"]
_short = [x + y + z for x in _alphabet for y in [""] + _alphabet for z in [""] + _alphabet]
KEYS = sorted(set(_short)) + ["k" * kb.KEY_MAX, "k" * (kb.KEY_MAX + 1)]
PREFIXES = ["", "a", "b", "/", "a/", "ab", "b/a", "aaa", "k"]

keys = st.sampled_from(KEYS)
values = st.builds(
    lambda seed, n: random.Random(seed).randbytes(n),
    st.integers(0, 2**32),
    st.one_of(st.integers(1, 3 * UNIT + 10), st.sampled_from([1, UNIT, UNIT + 1])),
)


class KvMachine(RuleBasedStateMachine):
    """Same random put/remove/get/count on the kernel index and on ``KvModel``."""

    def __init__(self):
        super().__init__()
        self.b, self.w = make_pool(kv_buckets=MACHINE_BUCKETS, heap_units=MACHINE_UNITS)
        self.model = KvModel(MACHINE_BUCKETS)
        self.out = np.zeros(4 * UNIT, np.uint8)

    @rule(key=keys, value=values)
    def put(self, key, value):
        assert put(self.b, self.w, key, value) == self.model.put(key.encode(), value)

    @rule(key=keys)
    def remove(self, key):
        assert kv_remove(self.b, self.w, K(key), ME, 0) == self.model.remove(key.encode())

    @rule(key=keys)
    def read(self, key):
        expect = self.model.get(key.encode())
        n = kv_read(self.b, self.w, K(key), self.out)
        if isinstance(expect, int):
            assert n == expect
            assert kv_value_size(self.b, self.w, K(key)) == expect
            assert kv_lookup(self.b, self.w, K(key)) == status.NOT_FOUND
        else:
            assert n == len(expect)
            assert self.out[:n].tobytes() == expect
            assert kv_value_size(self.b, self.w, K(key)) == len(expect)
            assert kv_lookup(self.b, self.w, K(key)) >= 0

    @rule(key=keys, cap=st.integers(0, 64))
    def read_small_buffer(self, key, cap):
        expect = self.model.get(key.encode())
        n = kv_read(self.b, self.w, K(key), self.out[:cap])
        if isinstance(expect, int):
            assert n == expect
        elif len(expect) > cap:
            assert n == status.BUFFER_TOO_SMALL
        else:
            assert n == len(expect) and self.out[:n].tobytes() == expect

    @rule(prefix=st.sampled_from(PREFIXES))
    def count_prefix(self, prefix):
        assert kv_count_prefix(self.b, self.w, K(prefix)) == self.model.count_prefix(
            prefix.encode()
        )

    @invariant()
    def heap_holds_exactly_the_live_values(self):
        live = self.model.live()
        used = sum(units_for(self.w, len(v)) for v in live.values())
        assert heap_free_units(self.w) == MACHINE_UNITS - used
        assert heap_used_by_tag(self.w, ME) == 0

    @invariant()
    def buckets_are_quiescent(self):
        nb = MACHINE_BUCKETS
        for i in range(nb):
            assert self.w[bucket_word(self.w, i, kb.B_LOCK)] == 0
            assert self.w[bucket_word(self.w, i, kb.B_VERSION)] % 2 == 0

    def teardown(self):
        for key in list(self.model.live()):
            assert kv_remove(self.b, self.w, K(key), ME, 0) == status.OK
        assert heap_free_units(self.w) == MACHINE_UNITS
        assert kv_count_prefix(self.b, self.w, K("")) == 0


KvMachine.TestCase.settings = settings(
    max_examples=MACHINE_EXAMPLES, stateful_step_count=40, deadline=None
)
TestKvMachine = KvMachine.TestCase
