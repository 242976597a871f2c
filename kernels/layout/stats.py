"""Per-handle stats block: what a producer or consumer handle publishes for monitoring.

Each handle owns one block in the heap, tagged with its channel (so retention frees it
with the channel). Its heap reference sits in the handle's channel entry
(``P_STATS_REF`` of a producer entry, ``K_STATS_REF`` of a consumer entry, see
:mod:`.channel`), so a reader finds every handle's block from the channel table alone
and never asks a user process anything. 32 int64 words (256 bytes)::

    word 0  +-------------------------------------------------------------------+
    line 0  | MAGIC | SEQ (seqlock: odd while the owner writes) | ROLE | CHAN_ID  |
            | MEMBER_ID | ENTRY | PID | UPDATED_NS (wall clock of the publish) |
    word 8  +-------------------------------------------------------------------+
    line 1  | lifetime: CALLS | MESSAGES | TIMEOUTS | WAITS | WAIT_NS |          |
            |           KERNEL_NS | CODEC_NS | WINDOW_NS (span of lines 2-3)    |
    word 16 +-------------------------------------------------------------------+
    line 2  | window: WIN_CALLS | WIN_TIMEOUTS | AVG_NS | P50_NS | P99_NS |      |
            |         MAX_NS | AVG_WAIT_NS | AVG_KERNEL_NS                      |
    word 24 +-------------------------------------------------------------------+
    line 3  | window: AVG_CODEC_NS | PF_QUEUE | PF_TARGET | PF_HIT_PPM |        |
            |         CLAIM_AVG_NS | TAKE_AVG_NS | IDLE_NS | WIN_MESSAGES        |
    word 32 +-------------------------------------------------------------------+

Only the handle's process writes the block (one writer). Identity words (line 0 up to
``PID``) are written once before the reference is published; every publish rewrites
``UPDATED_NS`` and lines 1-3 between an odd and an even ``SEQ`` (seqlock), so a reader
that sees the same even ``SEQ`` before and after its copy has an untorn summary. A
released block has ``MAGIC`` cleared and ``SEQ`` left odd before it is freed; a reader
also re-checks the entry's reference, so a block freed and reused under it is
discarded.

Meaning of the fields (all times in ns; "window" = since the last latency log line,
or the previous window when the current one has no call yet):

* ``CALLS``/``MESSAGES``/``TIMEOUTS``: ``get_data``/``put_data`` calls, messages
  delivered/published, calls that ended without a message (NoNewMessage) or with
  ``Ok(False)``.
* ``WAITS``/``WAIT_NS``: calls that had to wait (consumer: channel empty; producer:
  channel full) and the time spent waiting.
* ``KERNEL_NS``/``CODEC_NS``: time inside channel kernels; time decoding/encoding.
* ``AVG/P50/P99/MAX_NS``: latency of whole calls in the window.
* ``PF_QUEUE``/``PF_TARGET``: messages held in the consumer's prefetch queue now, and
  the ``batch_size + prefetch_num`` it tops up to.
* ``PF_HIT_PPM``: messages served from the prefetch queue per million delivered.
* ``CLAIM_AVG_NS``: average cost of one claim kernel call (taking messages from the
  channel); ``TAKE_AVG_NS``: average copy-out + completion cost per message.
* ``IDLE_NS``: time the consumer waited with nothing available (producers idle).
"""

#: ``b"FLXSTAT1"`` read as a little-endian int64.
MAGIC_VALUE = int.from_bytes(b"FLXSTAT1", "little")

WORDS = 32
BLOCK_BYTES = WORDS * 8

ROLE_PRODUCER = 1
ROLE_CONSUMER = 2

# --- line 0: identity and seqlock -----------------------------------------------
S_MAGIC = 0
S_SEQ = 1
S_ROLE = 2
S_CHAN_ID = 3
S_MEMBER_ID = 4
S_ENTRY = 5
S_PID = 6
S_UPDATED_NS = 7

# --- line 1: lifetime counters ----------------------------------------------------
S_CALLS = 8
S_MESSAGES = 9
S_TIMEOUTS = 10
S_WAITS = 11
S_WAIT_NS = 12
S_KERNEL_NS = 13
S_CODEC_NS = 14
S_WINDOW_NS = 15

# --- line 2: window latency ---------------------------------------------------------
S_WIN_CALLS = 16
S_WIN_TIMEOUTS = 17
S_AVG_NS = 18
S_P50_NS = 19
S_P99_NS = 20
S_MAX_NS = 21
S_AVG_WAIT_NS = 22
S_AVG_KERNEL_NS = 23

# --- line 3: window codec and prefetch ---------------------------------------------
S_AVG_CODEC_NS = 24
S_PF_QUEUE = 25
S_PF_TARGET = 26
S_PF_HIT_PPM = 27
S_CLAIM_AVG_NS = 28
S_TAKE_AVG_NS = 29
S_IDLE_NS = 30
S_WIN_MESSAGES = 31

#: First word rewritten by every publish (``UPDATED_NS`` .. the end).
SUMMARY_FIRST = S_UPDATED_NS

#: Field name of every word (JSON and Prometheus use these, lower case).
FIELD_NAMES = (
    "magic",
    "seq",
    "role",
    "chan_id",
    "member_id",
    "entry",
    "pid",
    "updated_ns",
    "calls",
    "messages",
    "timeouts",
    "waits",
    "wait_ns",
    "kernel_ns",
    "codec_ns",
    "window_ns",
    "win_calls",
    "win_timeouts",
    "avg_ns",
    "p50_ns",
    "p99_ns",
    "max_ns",
    "avg_wait_ns",
    "avg_kernel_ns",
    "avg_codec_ns",
    "pf_queue",
    "pf_target",
    "pf_hit_ppm",
    "claim_avg_ns",
    "take_avg_ns",
    "idle_ns",
    "win_messages",
)
