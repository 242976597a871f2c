"""Channel layout: header, producer table, consumer table, message slots, producer rings.

Channel ``c`` has a fixed entry in the pool's channel table at
``CHAN_OFF + c * CHAN_STRIDE`` (16 KiB)::

    +0      +--------------------------------------------------------------------+
    line 0  | STATE | CREATOR | CHAN_ID | TYPE | CAPACITY | SLOTS_REF | GENERATION |
            | CREATED_NS                                        (read-mostly)     |
    line 1  | FREE_HINT           (producers' free-slot cursor, own line)         |
    line 2  | DATA_SEQ (futex word) | CONSUMER_WAITERS   (consumers sleep here)   |
    line 3  | SPACE_SEQ (futex word) | PRODUCER_WAITERS  (producers sleep here)   |
    line 4  | REDELIVER           (messages waiting to be redelivered)           |
    line 5  | MPSC_CONSUMER (tag of the single MPSC consumer)                    |
    +1024   +--------------------------------------------------------------------+
            | producer entry 0 .. MAX_PRODUCERS-1, 128 B each:                    |
            |   line A (producer writes): STATE | PRODUCE | WEIGHT | RING_REF |   |
            |                             MEMBER_ID | GENERATION | STATS_REF      |
            |   line B (consumers write): CLAIM | DONE                           |
    +9216   +--------------------------------------------------------------------+
            | consumer entry 0 .. MAX_CONSUMERS-1, 64 B each: STATE | MEMBER_ID | |
            |                                                STATS_REF           |
    +13312  +--------------------------------------------------------------------+

Message slots (``capacity`` of them, in a heap block tagged with the channel) hold one
message each; a slot is the unit of the capacity gate, so at most ``capacity``
messages are undelivered at any time::

    +0   STATE  = (offset << 12) | (tag << 3) | kind      one CAS word, ABA-proof
    +8   PRODUCER (producer entry index)
    +16  REF    (heap block ref of a large payload, 0 when inline)
    +24  LEN    (encoded payload bytes; -1 once a consumer has begun completing it)
    +32  inline payload (up to SLOT_INLINE bytes)

Slot kinds: FREE -> HELD (producer writing) -> PUBLISHED -> CLAIMED (consumer) -> FREE,
and CLAIMED -> REDELIVER -> CLAIMED when a consumer dies or returns prefetched messages.

Each producer entry owns a ring (heap block tagged with the channel) of ``capacity``
int64 slot indices: ``ring[offset % capacity]`` is the slot of the producer's message
``offset``. ``PRODUCE`` (next offset to write) is written only by the producer;
``CLAIM`` (next offset to hand out) advances by CAS; ``DONE`` counts delivered messages,
so the backlog ``PRODUCE - DONE`` is exact.
"""

HEADER_BYTES = 1024

C_STATE = 0
C_CREATOR = 1
C_CHAN_ID = 2
C_TYPE = 3
C_CAPACITY = 4
C_SLOTS_REF = 5
C_GENERATION = 6
C_CREATED_NS = 7
C_FREE_HINT = 8
C_DATA_SEQ = 16
C_CONSUMER_WAITERS = 17
C_SPACE_SEQ = 24
C_PRODUCER_WAITERS = 25
C_REDELIVER = 32
C_MPSC_CONSUMER = 40

#: Channel entry states (while creating, the low byte is CHAN_CREATING and the
#: creator's tag sits in the bits above it).
CHAN_FREE = 0
CHAN_CREATING = 1
CHAN_ACTIVE = 2

TYPE_MPMC = 1
TYPE_MPSC = 2

MAX_PRODUCERS = 64
PROD_OFF = HEADER_BYTES
PROD_STRIDE = 128
P_STATE = 0
P_PRODUCE = 1
P_WEIGHT = 2
P_RING_REF = 3
P_MEMBER_ID = 4
P_GENERATION = 5
#: Heap ref of the producer handle's stats block (monitoring), 0 = none.
P_STATS_REF = 6
P_CLAIM = 8
P_DONE = 9

#: Producer entry states besides a live producer's tag (1..).
PROD_FREE = 0
PROD_RETIRED = -1

MAX_CONSUMERS = 64
CONS_OFF = PROD_OFF + MAX_PRODUCERS * PROD_STRIDE
CONS_STRIDE = 64
K_STATE = 0
K_MEMBER_ID = 1
#: Heap ref of the consumer handle's stats block (monitoring), 0 = none.
K_STATS_REF = 2

TABLE_BYTES = CONS_OFF + MAX_CONSUMERS * CONS_STRIDE

SLOT_STRIDE = 256
S_STATE = 0
S_PRODUCER = 1
S_REF = 2
S_LEN = 3
S_INLINE_OFF = 32
SLOT_INLINE = SLOT_STRIDE - S_INLINE_OFF
#: Spacing of inline messages copied out by ``cons_copy_inline`` (8-aligned).
INLINE_STRIDE = (SLOT_INLINE + 7) & ~7

KIND_FREE = 0
KIND_HELD = 1
KIND_PUBLISHED = 2
KIND_CLAIMED = 3
KIND_REDELIVER = 4
KIND_BITS = 3
TAG_BITS = 9
OFFSET_SHIFT = KIND_BITS + TAG_BITS
KIND_MASK = (1 << KIND_BITS) - 1
TAG_MASK = (1 << TAG_BITS) - 1

#: Largest capacity a channel may have.
MAX_CAPACITY = 1 << 20
