"""CPU atomics for Numba kernels — the ONLY module that touches llvmlite.

Numba has no public CPU atomics, so each operation here is a Python function with a
plain reference body plus an ``@overload`` that, inside ``@njit`` code, lowers to an
LLVM ``cmpxchg`` / ``atomicrmw`` / atomic load / atomic store / fence. The operations
act on one element of a numpy integer array; because the arrays used by fluxon are
views of a ``MAP_SHARED`` file mapping, the atomicity holds across processes.

Called from Python (or with ``NUMBA_DISABLE_JIT=1``) the reference bodies run. They are
not atomic, which is exactly what the single-threaded models and hypothesis tests need.

The memory order is part of every name:

=====================  =========================================================
``load_acquire``       later loads/stores stay after it (pairs with a release)
``load_relaxed``       atomic, no ordering
``store_release``      earlier loads/stores stay before it (pairs with an acquire)
``store_relaxed``      atomic, no ordering
``cas``                compare-and-swap, acq_rel on success, acquire on failure;
                       returns the value seen (== expected means it succeeded)
``fetch_add``          atomic add, acq_rel; returns the previous value
``swap``               atomic exchange, acq_rel; returns the previous value
``fence_seq_cst``      full fence (store→load ordering, e.g. Dekker-style waits)
``cpu_relax``          x86 ``pause`` in spin loops (no memory effect)
``copy_bytes``         plain (non-atomic) memcpy between uint8 arrays
=====================  =========================================================

``copy_bytes`` lives here because it is the other llvmlite intrinsic the kernels
need: Numba compiles a byte loop or a slice assignment to a loop that runs at a
quarter of memcpy speed, and a ctypes ``memcpy`` would stop Numba from caching every
kernel that calls it. The LLVM ``memcpy`` intrinsic has neither problem.
"""

from __future__ import annotations

import platform

from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic, overload

__all__ = [
    "load_acquire",
    "load_relaxed",
    "store_release",
    "store_relaxed",
    "cas",
    "fetch_add",
    "swap",
    "fence_seq_cst",
    "cpu_relax",
    "copy_bytes",
]


# ---------------------------------------------------------------------------
# Reference bodies (Python / NUMBA_DISABLE_JIT). Not atomic; models only.
# ---------------------------------------------------------------------------


def load_acquire(arr, idx):
    """Load ``arr[idx]`` with acquire ordering; returns the value."""
    return arr[idx]


def load_relaxed(arr, idx):
    """Atomic load of ``arr[idx]`` without ordering; returns the value."""
    return arr[idx]


def store_release(arr, idx, value):
    """Store ``value`` into ``arr[idx]`` with release ordering."""
    arr[idx] = value


def store_relaxed(arr, idx, value):
    """Atomic store of ``value`` into ``arr[idx]`` without ordering."""
    arr[idx] = value


def cas(arr, idx, expected, new):
    """Compare-and-swap ``arr[idx]``: if it equals ``expected`` store ``new``.

    Returns the value that was there; the swap happened iff it equals ``expected``.
    """
    old = arr[idx]
    if old == expected:
        arr[idx] = new
    return old


def fetch_add(arr, idx, delta):
    """Atomically add ``delta`` to ``arr[idx]``; returns the previous value."""
    old = arr[idx]
    arr[idx] = old + delta
    return old


def swap(arr, idx, value):
    """Atomically replace ``arr[idx]`` with ``value``; returns the previous value."""
    old = arr[idx]
    arr[idx] = value
    return old


def fence_seq_cst():
    """Full sequentially consistent fence."""
    return None


def cpu_relax():
    """Spin-loop hint (``pause``); no memory effect."""
    return None


def copy_bytes(dst, dst_off, src, src_off, n):
    """Copy ``n`` bytes ``src[src_off:]`` -> ``dst[dst_off:]`` (uint8 arrays, no overlap)."""
    dst[dst_off : dst_off + n] = src[src_off : src_off + n]


# ---------------------------------------------------------------------------
# Lowering. Each intrinsic takes (array, index[, value...]) and computes the element
# pointer without wraparound or bounds checks: kernels own their index arithmetic.
# ---------------------------------------------------------------------------


def _elem_ptr(context, builder, arr_t, arr_v, idx_v):
    ary = context.make_array(arr_t)(context, builder, arr_v)
    return cgutils.get_item_pointer(context, builder, arr_t, ary, [idx_v], wraparound=False)


def _align(arr_t):
    return arr_t.dtype.bitwidth // 8


def _check_array(arr):
    return isinstance(arr, types.Array) and isinstance(arr.dtype, types.Integer)


def _make_load(order):
    @intrinsic
    def _load(typingctx, arr, idx):
        if not _check_array(arr):
            return None

        def codegen(context, builder, sig, args):
            ptr = _elem_ptr(context, builder, sig.args[0], args[0], args[1])
            return builder.load_atomic(ptr, order, _align(sig.args[0]))

        return arr.dtype(arr, types.intp), codegen

    return _load


def _make_store(order):
    @intrinsic
    def _store(typingctx, arr, idx, value):
        if not _check_array(arr):
            return None

        def codegen(context, builder, sig, args):
            ptr = _elem_ptr(context, builder, sig.args[0], args[0], args[1])
            builder.store_atomic(args[2], ptr, order, _align(sig.args[0]))
            return context.get_dummy_value()

        return types.none(arr, types.intp, arr.dtype), codegen

    return _store


def _make_rmw(op):
    @intrinsic
    def _rmw(typingctx, arr, idx, value):
        if not _check_array(arr):
            return None

        def codegen(context, builder, sig, args):
            ptr = _elem_ptr(context, builder, sig.args[0], args[0], args[1])
            return builder.atomic_rmw(op, ptr, args[2], "acq_rel")

        return arr.dtype(arr, types.intp, arr.dtype), codegen

    return _rmw


_i_load_acquire = _make_load("acquire")
_i_load_relaxed = _make_load("monotonic")
_i_store_release = _make_store("release")
_i_store_relaxed = _make_store("monotonic")
_i_fetch_add = _make_rmw("add")
_i_swap = _make_rmw("xchg")


@intrinsic
def _i_cas(typingctx, arr, idx, expected, new):
    if not _check_array(arr):
        return None

    def codegen(context, builder, sig, args):
        ptr = _elem_ptr(context, builder, sig.args[0], args[0], args[1])
        res = builder.cmpxchg(ptr, args[2], args[3], "acq_rel", "acquire")
        return builder.extract_value(res, 0)

    return arr.dtype(arr, types.intp, arr.dtype, arr.dtype), codegen


@intrinsic
def _i_fence(typingctx):
    def codegen(context, builder, sig, args):
        builder.fence("seq_cst")
        return context.get_dummy_value()

    return types.none(), codegen


_X86 = platform.machine().lower() in ("x86_64", "amd64", "i686", "x86")


@intrinsic
def _i_pause(typingctx):
    def codegen(context, builder, sig, args):
        if not _X86:
            return context.get_dummy_value()
        # llvm.x86.sse2.pause: inline asm cannot be used (no asm parser in the JIT).
        fnty = ir.FunctionType(ir.VoidType(), [])
        fn = cgutils.get_or_insert_function(builder.module, fnty, "llvm.x86.sse2.pause")
        builder.call(fn, [])
        return context.get_dummy_value()

    return types.none(), codegen


@intrinsic
def _i_copy(typingctx, dst, dst_off, src, src_off, n):
    ok = (
        isinstance(dst, types.Array)
        and isinstance(src, types.Array)
        and dst.dtype == types.uint8
        and src.dtype == types.uint8
    )
    if not ok:
        return None

    def codegen(context, builder, sig, args):
        d = context.make_array(sig.args[0])(context, builder, args[0])
        s = context.make_array(sig.args[2])(context, builder, args[2])
        dptr = builder.gep(d.data, [args[1]])
        sptr = builder.gep(s.data, [args[3]])
        cgutils.raw_memcpy(builder, dptr, sptr, args[4], 1)
        return context.get_dummy_value()

    return types.none(dst, types.intp, src, types.intp, types.intp), codegen


@overload(copy_bytes, inline="always")
def _ol_copy(dst, dst_off, src, src_off, n):
    return lambda dst, dst_off, src, src_off, n: _i_copy(dst, dst_off, src, src_off, n)


@overload(load_acquire, inline="always")
def _ol_load_acquire(arr, idx):
    return lambda arr, idx: _i_load_acquire(arr, idx)


@overload(load_relaxed, inline="always")
def _ol_load_relaxed(arr, idx):
    return lambda arr, idx: _i_load_relaxed(arr, idx)


@overload(store_release, inline="always")
def _ol_store_release(arr, idx, value):
    return lambda arr, idx, value: _i_store_release(arr, idx, value)


@overload(store_relaxed, inline="always")
def _ol_store_relaxed(arr, idx, value):
    return lambda arr, idx, value: _i_store_relaxed(arr, idx, value)


@overload(cas, inline="always")
def _ol_cas(arr, idx, expected, new):
    return lambda arr, idx, expected, new: _i_cas(arr, idx, expected, new)


@overload(fetch_add, inline="always")
def _ol_fetch_add(arr, idx, delta):
    return lambda arr, idx, delta: _i_fetch_add(arr, idx, delta)


@overload(swap, inline="always")
def _ol_swap(arr, idx, value):
    return lambda arr, idx, value: _i_swap(arr, idx, value)


@overload(fence_seq_cst, inline="always")
def _ol_fence():
    return lambda: _i_fence()


@overload(cpu_relax, inline="always")
def _ol_pause():
    return lambda: _i_pause()
