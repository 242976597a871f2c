"""Layout invariants: regions, cache-line separation, field fit."""

from __future__ import annotations

import itertools

import pytest

from fluxon_kernels.layout import heap as lh
from fluxon_kernels.layout import kv_bucket as kb
from fluxon_kernels.layout import member as mb
from fluxon_kernels.layout import pool_header as ph
from fluxon_kernels.layout.sizing import (
    CHAN_COUNT,
    CHAN_STRIDE,
    MIN_POOL_BYTES,
    PAGE,
    compute_layout,
    kv_bucket_count,
    max_block_bytes,
)

SIZES = [
    MIN_POOL_BYTES,
    MIN_POOL_BYTES + 12345,
    64 << 20,
    (512 << 20) + 4096 * 3 + 17,
    4 << 30,
    64 << 30,
]


def _regions(lay):
    """(name, start, end) of every region of a layout, in byte offsets."""
    return [
        ("header", 0, ph.HEADER_BYTES),
        (
            "members",
            lay[ph.W_MEMBER_OFF],
            lay[ph.W_MEMBER_OFF] + lay[ph.W_MEMBER_COUNT] * lay[ph.W_MEMBER_STRIDE],
        ),
        (
            "channels",
            lay[ph.W_CHAN_OFF],
            lay[ph.W_CHAN_OFF] + lay[ph.W_CHAN_COUNT] * lay[ph.W_CHAN_STRIDE],
        ),
        ("kv", lay[ph.W_KV_OFF], lay[ph.W_KV_OFF] + lay[ph.W_KV_BUCKETS] * lay[ph.W_KV_STRIDE]),
        (
            "heap_table",
            lay[ph.W_HEAP_TABLE_OFF],
            lay[ph.W_HEAP_TABLE_OFF] + lay[ph.W_HEAP_UNITS] * 8,
        ),
        (
            "heap",
            lay[ph.W_HEAP_OFF],
            lay[ph.W_HEAP_OFF] + lay[ph.W_HEAP_UNITS] * lay[ph.W_UNIT_SIZE],
        ),
    ]


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("unit", [64, 1024, 4096])
def test_regions_are_aligned_disjoint_and_inside_the_pool(size, unit):
    if size // unit >= 1 << (63 - lh.REF_LEN_BITS):
        # More units than a block reference can address: the owner must pick a
        # bigger unit, and the layout says so.
        with pytest.raises(ValueError, match="reference"):
            compute_layout(size, unit)
        return
    lay = compute_layout(size, unit)
    regions = _regions(lay)
    for name, start, end in regions:
        assert start % PAGE == 0, name
        assert end > start, name
        assert end <= size, name
    ordered = sorted(regions, key=lambda r: r[1])
    for (n1, _s1, e1), (n2, s2, _e2) in itertools.pairwise(ordered):
        assert e1 <= s2, f"{n1} overlaps {n2}"
    assert lay[ph.W_POOL_SIZE] == size
    assert lay[ph.W_UNIT_SIZE] == unit
    assert lay[ph.W_CHAN_COUNT] == CHAN_COUNT and lay[ph.W_CHAN_STRIDE] == CHAN_STRIDE
    assert lay[ph.W_KV_STRIDE] == kb.KV_STRIDE
    assert lay[ph.W_MEMBER_STRIDE] == mb.MEMBER_STRIDE


@pytest.mark.parametrize("size", SIZES)
def test_heap_uses_most_of_the_space_and_refs_fit(size):
    lay = compute_layout(size)
    units = lay[ph.W_HEAP_UNITS]
    # All but at most a few pages + the tables are heap units.
    table_to_end = size - lay[ph.W_HEAP_TABLE_OFF]
    assert units * (lay[ph.W_UNIT_SIZE] + 8) >= table_to_end - 3 * PAGE - lay[ph.W_UNIT_SIZE]
    # A reference to the last unit with the largest length still fits in an int64.
    ref = ((units - 1) << lh.REF_LEN_BITS) | lh.MAX_BLOCK_BYTES
    assert 0 < ref < 1 << 63
    assert max_block_bytes(lay) == min(units * lay[ph.W_UNIT_SIZE], lh.MAX_BLOCK_BYTES)


def test_kv_bucket_count_is_a_power_of_two_in_range():
    for size in SIZES + [1 << 44]:
        n = kv_bucket_count(size)
        assert n & (n - 1) == 0
        assert 1024 <= n <= 1 << 20


def test_too_small_pool_and_bad_unit_are_rejected():
    with pytest.raises(ValueError):
        compute_layout(MIN_POOL_BYTES - 1)
    with pytest.raises(ValueError):
        compute_layout(MIN_POOL_BYTES, 1000)
    with pytest.raises(ValueError):
        compute_layout(MIN_POOL_BYTES, 32)


def _line(word):
    return word * 8 // ph.CACHE_LINE


GEOMETRY_WORDS = [
    ph.W_MAGIC,
    ph.W_LAYOUT_VERSION,
    ph.W_POOL_SIZE,
    ph.W_OWNER_PID,
    ph.W_OWNER_START,
    ph.W_CREATED_NS,
    ph.W_UNIT_SIZE,
    ph.W_MEMBER_OFF,
    ph.W_MEMBER_COUNT,
    ph.W_MEMBER_STRIDE,
    ph.W_KV_OFF,
    ph.W_KV_BUCKETS,
    ph.W_KV_STRIDE,
    ph.W_CHAN_OFF,
    ph.W_CHAN_COUNT,
    ph.W_CHAN_STRIDE,
    ph.W_HEAP_TABLE_OFF,
    ph.W_HEAP_UNITS,
    ph.W_HEAP_OFF,
]
OTHER_WORDS = [ph.W_CLOSING, ph.W_CLUSTER_NAME_LEN, ph.W_OWNER_ID_LEN]


def test_concurrently_written_header_words_have_their_own_lines():
    hint, beat = _line(ph.W_HEAP_HINT), _line(ph.W_OWNER_HEARTBEAT_NS)
    assert hint != beat
    others = {_line(wd) for wd in GEOMETRY_WORDS + OTHER_WORDS}
    assert hint not in others
    assert beat not in others


def test_header_words_and_strings_fit_in_the_header():
    words = GEOMETRY_WORDS + OTHER_WORDS + [ph.W_HEAP_HINT, ph.W_OWNER_HEARTBEAT_NS]
    assert len(set(words)) == len(words), "two header fields share a word"
    top = (max(words) + 1) * 8
    assert top <= ph.CLUSTER_NAME_OFF
    assert ph.CLUSTER_NAME_OFF + ph.CLUSTER_NAME_MAX <= ph.OWNER_ID_OFF
    assert ph.OWNER_ID_OFF + ph.OWNER_ID_MAX <= ph.HEADER_BYTES
    assert ph.MAGIC_VALUE.to_bytes(8, "little") == b"FLUXPOOL"


def test_bucket_fields_fit_in_the_stride():
    fields = [kb.B_LOCK, kb.B_VERSION, kb.B_STATE, kb.B_HASH, kb.B_REF, kb.B_KEY_LEN]
    assert len(set(fields)) == len(fields)
    assert min(fields) >= 0
    assert (max(fields) + 1) * 8 <= kb.B_KEY_OFF
    assert kb.B_KEY_OFF + kb.KEY_MAX <= kb.KV_STRIDE
    # Buckets start on cache lines, and the words a writer touches share the first one.
    assert kb.KV_STRIDE % ph.CACHE_LINE == 0
    assert (max(fields) + 1) * 8 <= ph.CACHE_LINE
    assert kb.KEY_MAX >= 128
    states = {kb.STATE_EMPTY, kb.STATE_FULL, kb.STATE_TOMBSTONE}
    assert len(states) == 3 and kb.STATE_EMPTY == 0  # a zeroed bucket is EMPTY


def test_member_fields_fit_in_the_stride():
    words = [mb.M_STATE, mb.M_START_TIME, mb.M_KIND, mb.M_GENERATION, mb.M_HEARTBEAT_NS, mb.M_FLAGS]
    words.append(mb.M_NAME_LEN)
    assert len(set(words)) == len(words)
    assert (max(words) + 1) * 8 <= mb.M_NAME_OFF
    assert mb.M_NAME_OFF + mb.M_NAME_MAX <= mb.M_STATS_OFF
    assert mb.M_STATS_OFF + mb.M_STATS_BYTES <= mb.MEMBER_STRIDE
    assert mb.MEMBER_STRIDE % ph.CACHE_LINE == 0
    assert mb.member_tag(0) == 1


def test_tag_spaces_are_disjoint():
    member_tags = range(mb.member_tag(0), mb.member_tag(mb.MEMBER_COUNT - 1) + 1)
    assert lh.FREE_TAG not in member_tags
    assert max(member_tags) < lh.KV_TAG_BASE
    # Every bucket tag stays below the channel tags, whatever the bucket count.
    assert lh.KV_TAG_BASE + (1 << 20) < lh.CHAN_TAG_BASE
