"""Region sizes and offsets of a pool, from its total size (pure functions).

::

    0          HEADER_BYTES                                                    pool_size
    +----------+---------------+---------------+-----------+------------+--------------+
    | header   | member table  | channel table | KV index  | heap table | heap units   |
    | 4 KiB    | 256 x 512 B   | CHAN x stride | buckets   | int64/unit | (page aligned)|
    +----------+---------------+---------------+-----------+------------+--------------+

Every region starts on a 4 KiB boundary.
"""

from __future__ import annotations

from . import pool_header as ph
from .heap import MAX_BLOCK_BYTES, REF_LEN_BITS, UNIT_SIZE_DEFAULT
from .kv_bucket import KV_STRIDE
from .member import MEMBER_COUNT, MEMBER_STRIDE

PAGE = 4096
#: Smallest pool the owner will create.
MIN_POOL_BYTES = 16 << 20
#: Channel headers (their layout arrives with the MQ rings).
CHAN_COUNT = 128
CHAN_STRIDE = 16384


def _align_up(x: int, a: int) -> int:
    return (x + a - 1) // a * a


def kv_bucket_count(pool_size: int) -> int:
    """Number of KV buckets for a pool: a power of two, about one per 16 KiB."""
    target = max(1024, min(1 << 20, pool_size // (16 << 10)))
    return 1 << (target.bit_length() - 1)


def compute_layout(pool_size: int, unit_size: int = UNIT_SIZE_DEFAULT) -> dict[int, int]:
    """Header words describing the regions of a pool of ``pool_size`` bytes.

    Parameters
    ----------
    pool_size : int
        Total bytes of the pool file (at least ``MIN_POOL_BYTES``).
    unit_size : int
        Heap unit in bytes, a power of two >= 64.

    Returns
    -------
    dict
        ``{header word index: value}`` for every geometry word of the header.
    """
    if pool_size < MIN_POOL_BYTES:
        raise ValueError(f"pool_size {pool_size} is below the minimum {MIN_POOL_BYTES}")
    if unit_size < 64 or unit_size & (unit_size - 1):
        raise ValueError(f"unit_size {unit_size} must be a power of two >= 64")
    off = ph.HEADER_BYTES
    member_off = off
    off = _align_up(off + MEMBER_COUNT * MEMBER_STRIDE, PAGE)
    chan_off = off
    off = _align_up(off + CHAN_COUNT * CHAN_STRIDE, PAGE)
    kv_buckets = kv_bucket_count(pool_size)
    kv_off = off
    off = _align_up(off + kv_buckets * KV_STRIDE, PAGE)
    table_off = off
    remaining = pool_size - table_off
    units = (remaining - PAGE) // (unit_size + 8)
    heap_off = _align_up(table_off + units * 8, PAGE)
    units = min(units, (pool_size - heap_off) // unit_size)
    if units <= 0:
        raise ValueError(f"pool_size {pool_size} leaves no room for the heap")
    if units >= 1 << (63 - REF_LEN_BITS):
        raise ValueError("pool too large for the block reference format")
    return {
        ph.W_POOL_SIZE: pool_size,
        ph.W_UNIT_SIZE: unit_size,
        ph.W_MEMBER_OFF: member_off,
        ph.W_MEMBER_COUNT: MEMBER_COUNT,
        ph.W_MEMBER_STRIDE: MEMBER_STRIDE,
        ph.W_CHAN_OFF: chan_off,
        ph.W_CHAN_COUNT: CHAN_COUNT,
        ph.W_CHAN_STRIDE: CHAN_STRIDE,
        ph.W_KV_OFF: kv_off,
        ph.W_KV_BUCKETS: kv_buckets,
        ph.W_KV_STRIDE: KV_STRIDE,
        ph.W_HEAP_TABLE_OFF: table_off,
        ph.W_HEAP_UNITS: units,
        ph.W_HEAP_OFF: heap_off,
    }


def max_block_bytes(layout: dict[int, int]) -> int:
    """Largest block the heap of ``layout`` could ever hold."""
    return min(layout[ph.W_HEAP_UNITS] * layout[ph.W_UNIT_SIZE], MAX_BLOCK_BYTES)
