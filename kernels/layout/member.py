"""Member table: one slot per attached process (owner, external clients).

Slot ``i`` starts at byte ``MEMBER_OFF + i * MEMBER_STRIDE``; its words are
``w[(MEMBER_OFF + i * MEMBER_STRIDE) // 8 + M_*]``::

    +0    +-----------------------------------------------------------------+
          | STATE: 0 = free, otherwise the pid that claimed it (CAS 0 -> pid) |
          | START_TIME (/proc/<pid>/stat field 22, clock ticks since boot)    |
          | KIND | GENERATION | HEARTBEAT_NS | FLAGS                          |
    +64   +-----------------------------------------------------------------+
          | NAME_LEN | NAME bytes (instance key, up to 184 bytes)             |
    +256  +-----------------------------------------------------------------+
          | STATS area (counters/latency summaries published by the member)   |
    +512  +-----------------------------------------------------------------+

The *member tag* of slot ``i`` is ``i + 1``; heap units and KV locks held by the
member carry that tag, so the owner can find and reclaim them when it dies. The
owner clears a dead member's slot only after it has reclaimed everything tagged
with it, so a reused slot never inherits stale state.
"""

MEMBER_STRIDE = 512
#: Upper bound on attached processes per pool (tags 1..MEMBER_COUNT).
MEMBER_COUNT = 256

M_STATE = 0
M_START_TIME = 1
M_KIND = 2
M_GENERATION = 3
M_HEARTBEAT_NS = 4
M_FLAGS = 5

M_NAME_LEN = 8
#: Byte offset of the name inside the slot.
M_NAME_OFF = 72
M_NAME_MAX = 184

#: Byte offset and size of the stats area inside the slot.
M_STATS_OFF = 256
M_STATS_BYTES = 256

KIND_OWNER = 1
KIND_EXTERNAL = 2


def member_tag(slot: int) -> int:
    """Tag carried by what member slot ``slot`` holds (heap units, KV locks)."""
    return slot + 1
