"""Pure-Python reference models of the kernels, and pool builders to drive kernels in tests.

The models (``heap_model``, ``kv_model``) are the oracles of the hypothesis state
machines: the same random operations go to a kernel and to its model, and the
observable results must agree.

:func:`make_pool` builds an in-process pool (``b`` uint8 view, ``w`` int64 view of one
buffer) with the header geometry of :func:`fluxon_kernels.layout.sizing.compute_layout`,
optionally shrunk (fewer KV buckets, fewer heap units) so that tests reach "full"
states quickly. :func:`create_pool_file` / :func:`attach_pool_file` do the same over a
file mapped ``MAP_SHARED`` for cross-process tests.
"""

from __future__ import annotations

import mmap
import os

import numpy as np

from fluxon_kernels.layout import pool_header as ph
from fluxon_kernels.layout.sizing import MIN_POOL_BYTES, compute_layout

__all__ = ["attach_pool_file", "create_pool_file", "heap_tags", "make_pool", "pool_words"]


def pool_words(
    size: int = MIN_POOL_BYTES,
    *,
    kv_buckets: int | None = None,
    heap_units: int | None = None,
    unit_size: int | None = None,
) -> dict[int, int]:
    """Header words of a test pool: ``compute_layout`` with optional shrinking.

    Parameters
    ----------
    size : int
        Pool size in bytes (at least ``MIN_POOL_BYTES``).
    kv_buckets : int, optional
        Use only this many KV buckets (a power of two, at most the layout's).
    heap_units : int, optional
        Use only this many heap units (at most the layout's).
    unit_size : int, optional
        Heap unit size (power of two >= 64); default the layout default.

    Returns
    -------
    dict
        ``{header word index: value}``.
    """
    layout = compute_layout(size) if unit_size is None else compute_layout(size, unit_size)
    if kv_buckets is not None:
        if kv_buckets <= 0 or kv_buckets & (kv_buckets - 1):
            raise ValueError("kv_buckets must be a power of two")
        if kv_buckets > layout[ph.W_KV_BUCKETS]:
            raise ValueError("kv_buckets exceeds the KV region")
        layout[ph.W_KV_BUCKETS] = kv_buckets
    if heap_units is not None:
        if not 0 < heap_units <= layout[ph.W_HEAP_UNITS]:
            raise ValueError("heap_units out of range")
        layout[ph.W_HEAP_UNITS] = heap_units
    return layout


def _write_header(w: np.ndarray, layout: dict[int, int]) -> None:
    for word, value in layout.items():
        w[word] = value
    w[ph.W_LAYOUT_VERSION] = 1
    w[ph.W_MAGIC] = ph.MAGIC_VALUE


def make_pool(size: int = MIN_POOL_BYTES, **shrink: int) -> tuple[np.ndarray, np.ndarray]:
    """An in-process zeroed pool with its header written.

    Parameters
    ----------
    size : int
        Pool size in bytes.
    **shrink
        ``kv_buckets``, ``heap_units``, ``unit_size`` (see :func:`pool_words`).

    Returns
    -------
    tuple of numpy.ndarray
        ``(b, w)``: the uint8 view and the int64 view of the same buffer.
    """
    layout = pool_words(size, **shrink)
    b = np.zeros(size, np.uint8)
    w = b.view(np.int64)
    _write_header(w, layout)
    return b, w


def create_pool_file(path: str, size: int = MIN_POOL_BYTES, **shrink: int) -> None:
    """Create a zero-filled pool file at ``path`` (mode 0600) with its header written.

    Parameters
    ----------
    path : str
        File to create (must not exist).
    size : int
        Pool size in bytes.
    **shrink
        ``kv_buckets``, ``heap_units``, ``unit_size`` (see :func:`pool_words`).
    """
    layout = pool_words(size, **shrink)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.ftruncate(fd, size)
        with mmap.mmap(fd, size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE) as mm:
            w = np.frombuffer(mm, np.int64)
            _write_header(w, layout)
            del w
    finally:
        os.close(fd)


def attach_pool_file(path: str) -> tuple[mmap.mmap, np.ndarray, np.ndarray]:
    """Map a pool file ``MAP_SHARED``.

    Parameters
    ----------
    path : str
        The pool file.

    Returns
    -------
    tuple
        ``(mm, b, w)``: the mapping (keep it alive while the views are used) and its
        uint8 and int64 views.
    """
    fd = os.open(path, os.O_RDWR)
    try:
        size = os.fstat(fd).st_size
        mm = mmap.mmap(fd, size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
    finally:
        os.close(fd)
    b = np.frombuffer(mm, np.uint8)
    w = b.view(np.int64)
    return mm, b, w


def heap_tags(w: np.ndarray) -> np.ndarray:
    """Copy of the heap's tag table (one int64 per unit)."""
    base = int(w[ph.W_HEAP_TABLE_OFF]) // 8
    return w[base : base + int(w[ph.W_HEAP_UNITS])].copy()
