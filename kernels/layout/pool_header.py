"""Pool header: the first 4 KiB of every pool file.

The whole pool is viewed twice by every process: ``b`` (uint8, byte offsets) and ``w``
(int64, word indices; ``word = byte // 8``). Header fields are words of ``w``::

    byte 0      +--------------------------------------------------------------+
    line 0      | MAGIC (ready signal, store_release LAST) | LAYOUT_VERSION       |
                | POOL_SIZE | OWNER_PID | OWNER_START | CREATED_NS | UNIT_SIZE  |
    byte 64     +--------------------------------------------------------------+
    line 1      | MEMBER_OFF | MEMBER_COUNT | MEMBER_STRIDE                     |
                | KV_OFF | KV_BUCKETS | KV_STRIDE | CHAN_OFF | CHAN_COUNT       |
    byte 128    +--------------------------------------------------------------+
    line 2      | CHAN_STRIDE | HEAP_TABLE_OFF | HEAP_UNITS | HEAP_OFF          |
    byte 192    +--------------------------------------------------------------+
    line 3      | HEAP_HINT  (allocation cursor, written by every allocator)    |
    byte 256    +--------------------------------------------------------------+
    line 4      | OWNER_HEARTBEAT_NS (written by the owner only)                |
    byte 320    +--------------------------------------------------------------+
    line 5      | CLOSING (owner shutting down) | CLUSTER_NAME_LEN | OWNER_ID_LEN |
    byte 512    +--------------------------------------------------------------+
                | CLUSTER_NAME bytes (256)                                     |
    byte 768    +--------------------------------------------------------------+
                | OWNER_ID bytes (256)                                         |
    byte 1024   +--------------------------------------------------------------+
                | reserved up to HEADER_BYTES                                  |
    byte 4096   +--------------------------------------------------------------+

The creator writes every field, then stores ``MAGIC`` with release ordering; an
attacher loads ``MAGIC`` with acquire ordering before reading anything else.
``HEAP_HINT`` and ``OWNER_HEARTBEAT_NS`` are written concurrently by different
processes, so each sits alone on its own 64-byte line.
"""

HEADER_BYTES = 4096
CACHE_LINE = 64

#: ``b"FLUXPOOL"`` read as a little-endian int64.
MAGIC_VALUE = int.from_bytes(b"FLUXPOOL", "little")

# --- line 0: identity ------------------------------------------------------
W_MAGIC = 0
W_LAYOUT_VERSION = 1
W_POOL_SIZE = 2
W_OWNER_PID = 3
W_OWNER_START = 4
W_CREATED_NS = 5
W_UNIT_SIZE = 6

# --- line 1/2: region table (byte offsets, counts, strides) ------------------
W_MEMBER_OFF = 8
W_MEMBER_COUNT = 9
W_MEMBER_STRIDE = 10
W_KV_OFF = 11
W_KV_BUCKETS = 12
W_KV_STRIDE = 13
W_CHAN_OFF = 14
W_CHAN_COUNT = 15
W_CHAN_STRIDE = 16
W_HEAP_TABLE_OFF = 17
W_HEAP_UNITS = 18
W_HEAP_OFF = 19

# --- line 3: shared allocation cursor (own line) ----------------------------
W_HEAP_HINT = 24

# --- line 4: owner liveness (own line) --------------------------------------
W_OWNER_HEARTBEAT_NS = 32

# --- line 5: lifecycle and string lengths -----------------------------------
W_CLOSING = 40
W_CLUSTER_NAME_LEN = 41
W_OWNER_ID_LEN = 42

# --- strings (bytes of ``b``) -----------------------------------------------
CLUSTER_NAME_OFF = 512
CLUSTER_NAME_MAX = 256
OWNER_ID_OFF = 768
OWNER_ID_MAX = 256
