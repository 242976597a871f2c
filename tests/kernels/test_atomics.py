"""Semantics of every atomic in ``fluxon_kernels.atomics``, compiled and as plain Python,
and their atomicity across processes sharing a file mapping."""

from __future__ import annotations

import multiprocessing as mp
import os
import time

import numpy as np
import pytest
from numba import njit

from fluxon_kernels import atomics as at
from fluxon_kernels.atomics import (
    cas,
    cpu_relax,
    fence_seq_cst,
    fetch_add,
    load_acquire,
    load_relaxed,
    store_relaxed,
    store_release,
    swap,
)
from tests.model import attach_pool_file

# ---------------------------------------------------------------------------
# Single-process semantics
# ---------------------------------------------------------------------------


@njit(nogil=True, cache=True)
def _j_load_acquire(a, i):
    return load_acquire(a, i)


@njit(nogil=True, cache=True)
def _j_load_relaxed(a, i):
    return load_relaxed(a, i)


@njit(nogil=True, cache=True)
def _j_store_release(a, i, v):
    store_release(a, i, v)


@njit(nogil=True, cache=True)
def _j_store_relaxed(a, i, v):
    store_relaxed(a, i, v)


@njit(nogil=True, cache=True)
def _j_cas(a, i, e, n):
    return cas(a, i, e, n)


@njit(nogil=True, cache=True)
def _j_fetch_add(a, i, d):
    return fetch_add(a, i, d)


@njit(nogil=True, cache=True)
def _j_swap(a, i, v):
    return swap(a, i, v)


@njit(nogil=True, cache=True)
def _j_fence_relax():
    fence_seq_cst()
    cpu_relax()
    return 1


JIT = {
    "load_acquire": _j_load_acquire,
    "load_relaxed": _j_load_relaxed,
    "store_release": _j_store_release,
    "store_relaxed": _j_store_relaxed,
    "cas": _j_cas,
    "fetch_add": _j_fetch_add,
    "swap": _j_swap,
}
PY = {name: getattr(at, name) for name in JIT}


@pytest.fixture(params=["jit", "python"])
def ops(request):
    return JIT if request.param == "jit" else PY


@pytest.mark.parametrize("dtype", [np.int64, np.int32, np.uint8])
def test_loads_and_stores(ops, dtype):
    a = np.zeros(4, dtype)
    ops["store_release"](a, 1, dtype(7))
    ops["store_relaxed"](a, 2, dtype(9))
    assert a.tolist() == [0, 7, 9, 0]
    assert ops["load_acquire"](a, 1) == 7
    assert ops["load_relaxed"](a, 2) == 9
    assert ops["load_acquire"](a, 3) == 0


def test_cas_success_and_failure(ops):
    a = np.array([5, -3], np.int64)
    # success: returns the expected value and stores the new one
    assert ops["cas"](a, 0, 5, 11) == 5
    assert a[0] == 11
    # failure: returns what is there and changes nothing
    assert ops["cas"](a, 0, 5, 99) == 11
    assert a[0] == 11
    # negative values and large tags (KV tags are > 2**32)
    assert ops["cas"](a, 1, -3, 1 << 40) == -3
    assert a[1] == 1 << 40
    assert a.tolist() == [11, 1 << 40]


def test_fetch_add_and_swap(ops):
    a = np.array([10, 0], np.int64)
    assert ops["fetch_add"](a, 0, 5) == 10
    assert ops["fetch_add"](a, 0, -20) == 15
    assert a[0] == -5
    assert ops["swap"](a, 1, 42) == 0
    assert ops["swap"](a, 1, -1) == 42
    assert a.tolist() == [-5, -1]


def test_fetch_add_wraps_like_int64():
    a = np.array([np.iinfo(np.int64).max], np.int64)
    assert _j_fetch_add(a, 0, 1) == np.iinfo(np.int64).max
    assert a[0] == np.iinfo(np.int64).min


def test_atomics_touch_only_their_element():
    a = np.arange(8, dtype=np.int64)
    _j_cas(a, 3, 3, 100)
    _j_fetch_add(a, 4, 10)
    _j_swap(a, 5, 50)
    _j_store_release(a, 6, 60)
    assert a.tolist() == [0, 1, 2, 100, 14, 50, 60, 7]


def test_fence_and_relax_are_callable():
    assert _j_fence_relax() == 1
    assert at.fence_seq_cst() is None
    assert at.cpu_relax() is None


def test_atomics_work_on_a_view_of_a_uint8_buffer():
    # Kernels see the pool as an int64 view of a uint8 buffer.
    b = np.zeros(64, np.uint8)
    w = b.view(np.int64)
    assert _j_fetch_add(w, 2, 0x0102) == 0
    assert b[16] == 0x02 and b[17] == 0x01


# ---------------------------------------------------------------------------
# Cross-process atomicity (MAP_SHARED file, spawn)
# ---------------------------------------------------------------------------

W_READY = 0
W_COUNTER = 8  # each shared word on its own cache line
W_LOCK = 16
W_OWNER = 24
W_PLAIN = 32
W_VIOLATIONS = 40
W_OVERLAP = 48  # evidence that the workers really ran at the same time
FILE_BYTES = 4096


@njit(nogil=True, cache=True)
def _add_loop(w, n):
    """n atomic increments; counts increments that saw another process's in between."""
    last = -2
    interleaved = 0
    for _ in range(n):
        v = fetch_add(w, W_COUNTER, 1)
        if v != last + 1:
            interleaved += 1
        last = v
    fetch_add(w, W_OVERLAP, interleaved - 1)  # the first increment always "jumps"


@njit(nogil=True, cache=True)
def _lock_loop(w, me, n):
    """n critical sections guarded by a CAS spin lock; counts exclusion violations."""
    contended = 0
    for _ in range(n):
        if cas(w, W_LOCK, 0, me) != 0:
            contended += 1
            while cas(w, W_LOCK, 0, me) != 0:
                cpu_relax()
        # Critical section: a non-atomic read-modify-write plus an owner check.
        store_relaxed(w, W_OWNER, me)
        v = load_relaxed(w, W_PLAIN)
        for _k in range(20):
            cpu_relax()
        store_relaxed(w, W_PLAIN, v + 1)
        if load_relaxed(w, W_OWNER) != me:
            fetch_add(w, W_VIOLATIONS, 1)
        store_release(w, W_LOCK, 0)
        for _k in range(20):
            cpu_relax()  # give the other workers a chance at the lock
    fetch_add(w, W_OVERLAP, contended)


@njit(nogil=True, cache=True)
def _arrive(w):
    return fetch_add(w, W_READY, 1)


@njit(nogil=True, cache=True)
def _spin_until_all(w, nprocs, max_spins):
    for _ in range(max_spins):
        if load_acquire(w, W_READY) >= nprocs:
            return True
        cpu_relax()
    return False


def _warm_up():
    """Compile (or load from the cache) every kernel a worker uses."""
    scratch = np.zeros(FILE_BYTES // 8, np.int64)
    _add_loop(scratch, 1)
    _lock_loop(scratch, 1, 1)
    _arrive(scratch)
    _spin_until_all(scratch, 0, 1)


def _wait_start(w, nprocs):
    """Start line: every worker is compiled and attached, then all start together."""
    _arrive(w)
    deadline = time.monotonic() + 60
    while not _spin_until_all(w, nprocs, 100_000) and time.monotonic() < deadline:
        pass


def _adder(path, nprocs, n):
    mm, _b, w = attach_pool_file(path)
    _warm_up()
    _wait_start(w, nprocs)
    _add_loop(w, n)
    del w, _b
    mm.close()


def _locker(path, nprocs, me, n):
    mm, _b, w = attach_pool_file(path)
    _warm_up()
    _wait_start(w, nprocs)
    _lock_loop(w, me, n)
    del w, _b
    mm.close()


def _make_file(path):
    with open(path, "wb") as f:
        f.write(b"\0" * FILE_BYTES)
    os.chmod(path, 0o600)


def _run_all(procs, timeout=120):
    for p in procs:
        p.start()
    try:
        for p in procs:
            p.join(timeout)
        stuck = [p.pid for p in procs if p.is_alive()]
        assert not stuck, f"worker processes did not finish: {stuck}"
        assert [p.exitcode for p in procs] == [0] * len(procs)
    finally:
        for p in procs:
            if p.is_alive():
                p.kill()
                p.join(5)


def _run_rounds(tmp_path, make_procs, check, rounds=5):
    """Run the workers until they demonstrably overlapped (checking every round)."""
    _warm_up()
    ctx = mp.get_context("spawn")
    overlap = 0
    for r in range(rounds):
        path = str(tmp_path / f"atomics{r}.pool")
        _make_file(path)
        _run_all(make_procs(ctx, path))
        mm, _b, w = attach_pool_file(path)
        try:
            check(w)
            overlap = int(w[W_OVERLAP])
        finally:
            del w, _b
            mm.close()
            os.unlink(path)
        if overlap > 0:
            break
    assert overlap > 0, "the worker processes never ran concurrently"


def test_fetch_add_is_atomic_across_processes(tmp_path):
    nprocs, n = 3, 200_000

    def make_procs(ctx, path):
        return [ctx.Process(target=_adder, args=(path, nprocs, n)) for _ in range(nprocs)]

    def check(w):
        assert w[W_COUNTER] == nprocs * n

    _run_rounds(tmp_path, make_procs, check)


def test_cas_lock_excludes_across_processes(tmp_path):
    nprocs, n = 3, 20_000

    def make_procs(ctx, path):
        return [
            ctx.Process(target=_locker, args=(path, nprocs, me, n)) for me in range(1, nprocs + 1)
        ]

    def check(w):
        assert w[W_VIOLATIONS] == 0
        assert w[W_PLAIN] == nprocs * n  # no lost update inside the critical section
        assert w[W_LOCK] == 0

    _run_rounds(tmp_path, make_procs, check)
