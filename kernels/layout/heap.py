"""Heap: payload blocks allocated in fixed-size units, each unit tagged with its holder.

::

    HEAP_TABLE_OFF                      HEAP_OFF
    +----+----+----+----+- ... -+       +--------+--------+--------+- ... -+
    | t0 | t1 | t2 | t3 |       |       | unit 0 | unit 1 | unit 2 |       |
    +----+----+----+----+- ... -+       +--------+--------+--------+- ... -+
     int64 tag per unit                  UNIT_SIZE bytes each

A block is a run of consecutive units. Every unit of a block carries the same tag:

* ``0``                               — free
* ``1 .. MEMBER_COUNT``               — held by member slot ``tag - 1`` (being written / read)
* ``KV_TAG_BASE + bucket``            — the published value of KV bucket ``bucket``
* ``CHAN_TAG_BASE + channel``         — a message of channel ``channel``

A unit is claimed with ``cas(tag, 0, holder)``; a crash at any point therefore leaves
every unit either free or tagged with a holder the owner can judge (dead member,
bucket, channel). There is no separate free list to repair.

A *block reference* (stored in KV buckets and ring slots) packs the first unit and the
byte length into one int64, so it is published with a single store::

    ref = (start_unit << REF_LEN_BITS) | nbytes        (0 = no block; nbytes > 0)
"""

#: Default heap unit; the owner may choose a larger power of two for huge pools.
UNIT_SIZE_DEFAULT = 1024

FREE_TAG = 0
KV_TAG_BASE = 1 << 32
CHAN_TAG_BASE = 2 << 32

REF_LEN_BITS = 36
REF_LEN_MASK = (1 << REF_LEN_BITS) - 1
#: Largest block a reference can describe (64 GiB - 1).
MAX_BLOCK_BYTES = REF_LEN_MASK
