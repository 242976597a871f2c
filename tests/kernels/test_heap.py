"""Heap kernels: named edge cases, an interleaving test of the claim rollback, and a
hypothesis state machine driving the kernels and ``tests.model.heap_model`` together."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    consumes,
    invariant,
    multiple,
    precondition,
    rule,
)

import fluxon_kernels.heap as heap_mod
from fluxon_kernels import status
from fluxon_kernels.heap import (
    heap_alloc,
    heap_alloc_many,
    heap_free,
    heap_free_many,
    heap_free_units,
    heap_reclaim_tag,
    heap_retag,
    heap_used_by_tag,
    make_ref,
    ref_nbytes,
    ref_start,
    unit_offset,
    units_for,
)
from fluxon_kernels.layout import pool_header as ph
from fluxon_kernels.layout.heap import KV_TAG_BASE, MAX_BLOCK_BYTES
from tests.model import heap_tags, make_pool
from tests.model.heap_model import HeapModel

UNIT = 1024
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
#: Examples per state machine (the NUMBA_DISABLE_JIT run lowers it).
MACHINE_EXAMPLES = int(os.environ.get("FLUXON_MACHINE_EXAMPLES", "60"))


def _pool(units):
    return make_pool(heap_units=units)


# ---------------------------------------------------------------------------
# References and geometry
# ---------------------------------------------------------------------------


def test_ref_packing_round_trips():
    for start, n in [(0, 1), (5, 1024), ((1 << 26) + 3, MAX_BLOCK_BYTES)]:
        ref = make_ref(start, n)
        assert ref > 0
        assert ref_start(ref) == start
        assert ref_nbytes(ref) == n
    assert ref_nbytes(0) == 0


def test_unit_offset_and_units_for():
    _b, w = _pool(16)
    assert unit_offset(w, 0) == w[ph.W_HEAP_OFF]
    assert unit_offset(w, 3) == w[ph.W_HEAP_OFF] + 3 * UNIT
    assert [units_for(w, n) for n in (1, UNIT, UNIT + 1, 3 * UNIT)] == [1, 1, 2, 3]
    assert unit_offset(w, 15) + UNIT <= len(_b)


# ---------------------------------------------------------------------------
# Named edge cases
# ---------------------------------------------------------------------------


def test_alloc_exact_heap_size_then_full():
    _b, w = _pool(16)
    assert heap_alloc(w, 16 * UNIT, 1) == 0
    assert heap_free_units(w) == 0
    assert heap_used_by_tag(w, 1) == 16
    assert heap_alloc(w, 1, 2) == status.FULL
    assert heap_free(w, 0, 16 * UNIT, 1) == 16
    assert heap_free_units(w) == 16


def test_too_large_and_invalid_sizes():
    _b, w = _pool(16)
    assert heap_alloc(w, 16 * UNIT + 1, 1) == status.TOO_LARGE
    assert heap_alloc(w, 0, 1) == status.TOO_LARGE
    assert heap_alloc(w, -5, 1) == status.TOO_LARGE
    assert heap_alloc(w, MAX_BLOCK_BYTES + 1, 1) == status.TOO_LARGE
    assert heap_alloc(w, 10, 0) == status.CORRUPT  # tag 0 would claim nothing
    assert heap_free_units(w) == 16


def test_full_then_free_then_alloc_again():
    _b, w = _pool(8)
    starts = [heap_alloc(w, UNIT, 1) for _ in range(8)]
    assert sorted(starts) == list(range(8))
    assert heap_alloc(w, 1, 1) == status.FULL
    assert heap_free(w, 5, UNIT, 1) == 1
    assert heap_alloc(w, 1, 2) == 5
    assert heap_alloc(w, 1, 2) == status.FULL


def test_fragmentation_gives_full_even_with_enough_free_units():
    _b, w = _pool(8)
    for _ in range(8):
        heap_alloc(w, UNIT, 1)
    for u in (1, 3, 5, 7):
        assert heap_free(w, u, UNIT, 1) == 1
    assert heap_free_units(w) == 4
    assert heap_alloc(w, 2 * UNIT, 1) == status.FULL
    assert heap_alloc(w, UNIT, 1) >= 0


def test_first_fit_from_cursor_and_wraparound():
    _b, w = _pool(10)
    assert heap_alloc(w, 3 * UNIT, 1) == 0
    assert w[ph.W_HEAP_HINT] == 3
    assert heap_alloc(w, 3 * UNIT, 1) == 3
    assert heap_alloc(w, 3 * UNIT, 1) == 6
    assert w[ph.W_HEAP_HINT] == 9
    heap_free(w, 0, 3 * UNIT, 1)
    # Only unit 9 is free after the cursor; a 2-unit run wraps to the start.
    assert heap_alloc(w, 2 * UNIT, 2) == 0
    assert w[ph.W_HEAP_HINT] == 2
    # A 1-unit block still goes first-fit after the cursor.
    assert heap_alloc(w, 1, 2) == 2
    assert heap_alloc(w, 1, 2) == 9
    assert w[ph.W_HEAP_HINT] == 0  # cursor wraps at the end
    assert heap_free_units(w) == 0


def test_out_of_range_cursor_is_ignored():
    _b, w = _pool(4)
    w[ph.W_HEAP_HINT] = 12345
    assert heap_alloc(w, 1, 1) == 0
    w[ph.W_HEAP_HINT] = -7
    assert heap_alloc(w, 1, 1) == 1


def test_free_with_wrong_tag_leaves_units():
    _b, w = _pool(8)
    s = heap_alloc(w, 2 * UNIT, 3)
    assert heap_free(w, s, 2 * UNIT, 4) == 0
    assert heap_used_by_tag(w, 3) == 2
    assert heap_free(w, s, 2 * UNIT, 0) == 0
    assert heap_free(w, s, 2 * UNIT, 3) == 2
    assert heap_free(w, s, 2 * UNIT, 3) == 0  # double free changes nothing
    assert heap_free_units(w) == 8


def test_free_outside_the_heap_is_corrupt():
    _b, w = _pool(8)
    assert heap_free(w, 7, 2 * UNIT, 1) == status.CORRUPT
    assert heap_free(w, -1, 1, 1) == status.CORRUPT
    assert heap_free(w, 0, 0, 1) == status.CORRUPT
    assert heap_retag(w, 8, 1, 1, 2) == status.CORRUPT
    assert heap_retag(w, 0, 1, 0, 2) == status.CORRUPT
    assert heap_retag(w, 0, 1, 1, 0) == status.CORRUPT


def test_retag_moves_only_units_of_the_old_holder():
    _b, w = _pool(8)
    s = heap_alloc(w, 3 * UNIT, 1)
    assert heap_retag(w, s, 3 * UNIT, 1, KV_TAG_BASE + 7) == 3
    assert heap_used_by_tag(w, KV_TAG_BASE + 7) == 3
    assert heap_retag(w, s, 3 * UNIT, 1, 2) == 0
    assert heap_free(w, s, 3 * UNIT, 1) == 0
    assert heap_free(w, s, 3 * UNIT, KV_TAG_BASE + 7) == 3


def test_reclaim_tag_frees_only_that_tag():
    _b, w = _pool(12)
    for tag in (1, 2, 1, 3, 1):
        assert heap_alloc(w, 2 * UNIT, tag) >= 0
    assert heap_reclaim_tag(w, 1) == 6
    assert heap_used_by_tag(w, 1) == 0
    assert heap_used_by_tag(w, 2) == 2
    assert heap_used_by_tag(w, 3) == 2
    assert heap_free_units(w) == 8
    assert heap_reclaim_tag(w, 1) == 0
    assert heap_reclaim_tag(w, 0) == 0  # free units are not "reclaimed"


def test_reclaim_over_a_million_units():
    # The owner reclaims with one linear scan of the tag table (correctness only;
    # speed belongs in bench/).
    b, w = make_pool(1 << 30)
    units = int(w[ph.W_HEAP_UNITS])
    assert units > 900_000
    base = int(w[ph.W_HEAP_TABLE_OFF]) // 8
    w[base + units - 1] = 9
    w[base + 12345] = 9
    assert heap_reclaim_tag(w, 9) == 2
    assert heap_free_units(w) == units
    del b


def test_batch_alloc_and_free():
    _b, w = _pool(8)
    sizes = np.array([UNIT, 2 * UNIT, 100, 5 * UNIT], np.int64)
    refs = np.zeros(4, np.int64)
    assert heap_alloc_many(w, sizes, 1, refs) == 3
    assert [ref_start(r) for r in refs[:3]] == [0, 1, 3]
    assert [ref_nbytes(r) for r in refs[:3]] == [UNIT, 2 * UNIT, 100]
    assert refs[3] == status.FULL
    assert heap_free_many(w, np.append(refs[:3], 0), 1) == 4
    assert heap_free_units(w) == 8
    assert heap_free_many(w, np.array([make_ref(7, 3 * UNIT)], np.int64), 1) == status.CORRUPT


# ---------------------------------------------------------------------------
# Interleaving: a concurrent claim in the middle of our run
# ---------------------------------------------------------------------------


def test_lost_cas_rolls_back_and_continues_past_the_conflict(monkeypatch):
    """Run the kernel's Python body with a CAS that lets a rival claim unit 2 first."""
    _b, w = _pool(10)
    base = int(w[ph.W_HEAP_TABLE_OFF]) // 8
    real_cas = heap_mod.cas
    seen = []

    def racing_cas(arr, idx, expected, new):
        seen.append(idx - base)
        if idx == base + 2 and arr[idx] == 0:
            arr[idx] = 99  # the rival wins unit 2 between our pre-scan and our CAS
        return real_cas(arr, idx, expected, new)

    monkeypatch.setattr(heap_mod, "cas", racing_cas)
    body = getattr(
        heap_mod.heap_alloc, "py_func", heap_mod.heap_alloc
    )  # plain with NUMBA_DISABLE_JIT
    start = body(w, 4 * UNIT, 5)
    assert start == 3
    tags = heap_tags(w).tolist()
    assert tags == [0, 0, 99, 5, 5, 5, 5, 0, 0, 0]
    assert seen[:3] == [0, 1, 2]  # claimed 0, 1, lost 2 -> rolled back 0, 1
    assert w[ph.W_HEAP_HINT] == 7


# ---------------------------------------------------------------------------
# State machine: kernel vs model
# ---------------------------------------------------------------------------

MACHINE_UNITS = 24
TAGS = [1, 2, 3, KV_TAG_BASE + 5]
sizes = st.one_of(
    st.integers(1, 3 * UNIT + 5),
    st.sampled_from([0, -1, UNIT, UNIT + 1, MACHINE_UNITS * UNIT, MACHINE_UNITS * UNIT + 1]),
)
tags = st.sampled_from(TAGS)


class HeapMachine(RuleBasedStateMachine):
    """Same random alloc/free/retag/reclaim on the kernel heap and on ``HeapModel``."""

    blocks = Bundle("blocks")

    def __init__(self):
        super().__init__()
        self.b, self.w = _pool(MACHINE_UNITS)
        self.model = HeapModel(MACHINE_UNITS, UNIT)

    @rule(target=blocks, nbytes=sizes, tag=st.one_of(tags, st.just(0)))
    def alloc(self, nbytes, tag):
        got = heap_alloc(self.w, nbytes, tag)
        assert got == self.model.alloc(nbytes, tag)
        if got < 0:
            return multiple()
        return (int(got), nbytes, tag)

    @rule(block=consumes(blocks))
    def free_block(self, block):
        start, nbytes, tag = block
        assert heap_free(self.w, start, nbytes, tag) == self.model.free(start, nbytes, tag)

    @rule(block=blocks, tag=tags)
    def free_maybe_wrong_tag(self, block, tag):
        start, nbytes, _ = block
        assert heap_free(self.w, start, nbytes, tag) == self.model.free(start, nbytes, tag)

    @rule(start=st.integers(-2, MACHINE_UNITS + 1), nbytes=st.integers(-2, 4 * UNIT), tag=tags)
    def free_anywhere(self, start, nbytes, tag):
        assert heap_free(self.w, start, nbytes, tag) == self.model.free(start, nbytes, tag)

    @rule(target=blocks, block=consumes(blocks), new_tag=tags)
    def retag(self, block, new_tag):
        start, nbytes, old = block
        got = heap_retag(self.w, start, nbytes, old, new_tag)
        assert got == self.model.retag(start, nbytes, old, new_tag)
        return (start, nbytes, new_tag)

    @rule(tag=st.one_of(tags, st.just(0)))
    def reclaim(self, tag):
        assert heap_reclaim_tag(self.w, tag) == self.model.reclaim_tag(tag)

    @precondition(lambda self: self.model.free_units() > 0)
    @rule(hint=st.integers(0, MACHINE_UNITS - 1))
    def move_cursor(self, hint):
        self.w[ph.W_HEAP_HINT] = hint
        self.model.hint = hint

    @invariant()
    def same_table_and_cursor(self):
        assert heap_tags(self.w).tolist() == self.model.tags
        assert self.w[ph.W_HEAP_HINT] == self.model.hint

    @invariant()
    def same_counts(self):
        assert heap_free_units(self.w) == self.model.free_units()
        for tag in TAGS:
            assert heap_used_by_tag(self.w, tag) == self.model.used_by_tag(tag)


HeapMachine.TestCase.settings = settings(
    max_examples=MACHINE_EXAMPLES, stateful_step_count=40, deadline=None
)
TestHeapMachine = HeapMachine.TestCase


# ---------------------------------------------------------------------------
# The same state machines with the kernels' pure-Python bodies
# ---------------------------------------------------------------------------


@pytest.mark.timeout(280)
def test_state_machines_pass_without_jit():
    env = dict(os.environ, NUMBA_DISABLE_JIT="1", FLUXON_MACHINE_EXAMPLES="8")
    cmd = [
        sys.executable,
        "-m",
        "pytest",
        "-q",
        "-p",
        "no:cacheprovider",
        "tests/kernels/test_heap.py::TestHeapMachine",
        "tests/kernels/test_heap.py::test_lost_cas_rolls_back_and_continues_past_the_conflict",
        "tests/kernels/test_kv.py::TestKvMachine",
    ]
    proc = subprocess.run(
        cmd, check=False, cwd=ROOT, env=env, capture_output=True, text=True, timeout=260
    )
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    assert "3 passed" in proc.stdout
