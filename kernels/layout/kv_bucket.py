"""KV index: open-addressing hash table of fixed-size buckets (linear probing).

Bucket ``i`` starts at byte ``KV_OFF + i * KV_STRIDE``::

    +0    +------------------------------------------------------------------+
          | LOCK: 0 = free, else the member tag of the writer holding it       |
          | VERSION: seqlock counter, odd while a writer publishes             |
          | STATE: 0 EMPTY, 1 FULL, 2 TOMBSTONE                                |
          | HASH (64-bit FNV-1a of the key) | REF (heap block ref, 0 = none)   |
          | KEY_LEN                                                            |
    +64   +------------------------------------------------------------------+
          | KEY bytes (up to KEY_MAX)                                          |
    +256  +------------------------------------------------------------------+

Writers serialise on LOCK (CAS 0 -> tag). Readers never lock: they read VERSION
(acquire), the fields and the value bytes, then VERSION again, and retry if it moved
or was odd. A key, once written into a bucket, stays there (a removed key leaves a
TOMBSTONE that only the same key revives), so probing never skips a live key.

Holder invariant used for crash repair: the only heap block tagged
``KV_TAG_BASE + i`` that may exist while bucket ``i`` is unlocked is the one REF
points to.
"""

KV_STRIDE = 256

B_LOCK = 0
B_VERSION = 1
B_STATE = 2
B_HASH = 3
B_REF = 4
B_KEY_LEN = 5

#: Byte offset of the key inside the bucket.
B_KEY_OFF = 64
KEY_MAX = KV_STRIDE - B_KEY_OFF

STATE_EMPTY = 0
STATE_FULL = 1
STATE_TOMBSTONE = 2
