"""Pure-Python model of one channel of :mod:`fluxon_kernels.channel` (single-threaded oracle).

The model keeps what the kernels keep, in plain Python objects: ``capacity`` slots
(kind, holder tag, producer entry, offset, payload), the producer table (state,
weight, ``PRODUCE``/``CLAIM``/``DONE``, ring), the consumer table, the MPSC mark,
the redelivery count and the waiter counts. Single-threaded, a kernel CAS never
fails, so each kernel reduces to a deterministic step the model repeats:

* a put takes the first FREE slot at or after the free-slot cursor (wrapping) and
  moves the cursor past it;
* a claim serves REDELIVER slots first (lowest slot index first, while the
  redelivery count is positive), then picks producers by smooth weighted round
  robin: among the entries that are not FREE and have ``CLAIM < PRODUCE``, add the
  weight (at least 1) to the consumer's current weight, pick the largest (lowest
  index on ties), subtract the total of the eligible weights, claim that producer's
  message ``CLAIM`` (skipping offsets whose message is no longer PUBLISHED);
* crash repair follows ``chan_repair_dead`` rule by rule.

Statuses and wake flags are the kernels' (``FULL``, ``NO_SLOT``, ``NOT_FOUND``,
``TOO_LARGE``; ``1`` = the caller must futex-wake). The heap is not modelled: tests
use a heap large enough that ``NO_MEMORY`` cannot happen.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from fluxon_kernels import status
from fluxon_kernels.layout import channel as cl

__all__ = ["ChannelModel", "ProducerEntry", "Slot", "slot_state_word"]


def slot_state_word(offset: int, tag: int, kind: int) -> int:
    """The kernel's slot ``STATE`` word: ``(offset << 12) | (tag << 3) | kind``."""
    return (offset << cl.OFFSET_SHIFT) | (tag << cl.KIND_BITS) | kind


@dataclass
class Slot:
    """One message slot.

    ``large`` messages live in a heap block (``prod_reserve``), the others inline.
    ``completing`` marks a CLAIMED slot whose consumer began ``cons_take``'s
    completion (payload copied, completion mark stored) before it died.
    """

    kind: int = cl.KIND_FREE
    tag: int = 0
    producer: int = -1
    offset: int = 0
    payload: bytes = b""
    large: bool = False
    completing: bool = False

    def state_word(self) -> int:
        """The kernel's STATE word for this slot."""
        if self.kind == cl.KIND_FREE:
            return 0
        tag = self.tag if self.kind in (cl.KIND_HELD, cl.KIND_CLAIMED) else 0
        return slot_state_word(self.offset, tag, self.kind)


@dataclass
class ProducerEntry:
    """One producer entry: ``state`` is PROD_FREE, PROD_RETIRED or the producer's tag."""

    capacity: int
    state: int = cl.PROD_FREE
    weight: int = 0
    produce: int = 0
    claim: int = 0
    done: int = 0
    has_ring: bool = False
    ring: list[int] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not self.ring:
            self.ring = [-1] * self.capacity

    def backlog(self) -> int:
        """``PRODUCE - DONE``."""
        return self.produce - self.done


class ChannelModel:
    """Reference channel with ``capacity`` slots.

    Parameters
    ----------
    capacity : int
        Number of message slots (``1 .. MAX_CAPACITY``).
    chan_type : int
        ``TYPE_MPMC`` or ``TYPE_MPSC`` (informational; exclusivity is per attach).
    """

    def __init__(self, capacity: int, chan_type: int = cl.TYPE_MPMC) -> None:
        self.capacity = capacity
        self.chan_type = chan_type
        self.slots = [Slot() for _ in range(capacity)]
        self.producers = [ProducerEntry(capacity) for _ in range(cl.MAX_PRODUCERS)]
        self.consumers = [0] * cl.MAX_CONSUMERS
        self.mpsc_consumer = 0
        self.free_hint = 0
        self.redeliver = 0
        self.consumer_waiters = 0
        self.producer_waiters = 0
        self.data_seq = 0
        self.space_seq = 0

    # ------------------------------------------------------------------ members
    def prod_attach(self, tag: int, weight: int) -> int:
        """Entry index (first FREE, or first RETIRED with a drained backlog) or NO_SLOT."""
        for e, p in enumerate(self.producers):
            if p.state == cl.PROD_FREE:
                p.has_ring = True
            elif p.state == cl.PROD_RETIRED:
                if p.done != p.produce:
                    continue
                p.produce = p.done = p.claim = 0
            else:
                continue
            p.state = tag
            p.weight = weight
            return e
        return status.NO_SLOT

    def prod_detach(self, e: int, tag: int) -> int:
        """Retire entry ``e`` held by ``tag``: OK or NOT_FOUND."""
        p = self.producers[e]
        if p.state != tag:
            return status.NOT_FOUND
        p.state = cl.PROD_RETIRED
        return status.OK

    def cons_attach(self, tag: int, exclusive: bool = False) -> int:
        """Consumer entry index, FULL (MPSC taken) or NO_SLOT."""
        if exclusive:
            if self.mpsc_consumer != 0:
                return status.FULL
            self.mpsc_consumer = tag
        for k, t in enumerate(self.consumers):
            if t == 0:
                self.consumers[k] = tag
                return k
        if exclusive:
            self.mpsc_consumer = 0
        return status.NO_SLOT

    def cons_detach(self, k: int, tag: int) -> int:
        """Unregister entry ``k`` (and the MPSC mark if it is ``tag``'s): OK or NOT_FOUND."""
        if self.mpsc_consumer == tag:
            self.mpsc_consumer = 0
        if self.consumers[k] != tag:
            return status.NOT_FOUND
        self.consumers[k] = 0
        return status.OK

    # ---------------------------------------------------------------- producing
    def _take_free_slot(self, tag: int, offset: int) -> int:
        hint = self.free_hint if 0 <= self.free_hint < self.capacity else 0
        for i in range(self.capacity):
            s = (hint + i) % self.capacity
            if self.slots[s].kind == cl.KIND_FREE:
                self.slots[s] = Slot(cl.KIND_HELD, tag, -1, offset)
                self.free_hint = (s + 1) % self.capacity
                return s
        return status.FULL

    def _publish(self, e: int, s: int, count: bool = True) -> int:
        p = self.producers[e]
        o = p.produce
        p.ring[o % self.capacity] = s
        slot = self.slots[s]
        slot.kind, slot.tag, slot.offset = cl.KIND_PUBLISHED, 0, o
        if not count:
            return 0  # the producer died before PRODUCE += 1
        p.produce = o + 1
        if self.consumer_waiters > 0:
            self.data_seq += 1
            return 1
        return 0

    def prod_put(self, e: int, tag: int, payload: bytes) -> int:
        """Publish an inline message: 0/1 (wake), FULL or TOO_LARGE."""
        if len(payload) > cl.SLOT_INLINE:
            return status.TOO_LARGE
        s = self._take_free_slot(tag, self.producers[e].produce)
        if s < 0:
            return s
        slot = self.slots[s]
        slot.producer, slot.payload, slot.large = e, bytes(payload), False
        return self._publish(e, s)

    def prod_put_many(self, e: int, tag: int, payloads: list[bytes]) -> int:
        """Publish messages (inline or in a block) up to the first that finds no slot or
        is empty and too large for a slot: ``done + (wake << 32)``."""
        done = wake = 0
        for payload in payloads:
            if len(payload) <= cl.SLOT_INLINE:
                r = self.prod_put(e, tag, payload)
            else:
                r = self.prod_reserve(e, tag, payload)
                if r >= 0:
                    r = self._publish(e, r)
            if r < 0:
                break
            wake |= r
            done += 1
        return done + (wake << 32)

    def prod_reserve(self, e: int, tag: int, payload: bytes) -> int:
        """Take a slot for a large message: the slot index, FULL or TOO_LARGE (empty)."""
        s = self._take_free_slot(tag, self.producers[e].produce)
        if s < 0:
            return s
        if len(payload) <= 0:
            self.slots[s] = Slot()
            return status.TOO_LARGE
        slot = self.slots[s]
        slot.producer, slot.payload, slot.large = e, bytes(payload), True
        return s

    def prod_publish(self, e: int, s: int, count: bool = True) -> int:
        """Publish a reserved slot: 0/1 (wake).

        ``count=False``: the producer dies after ``STATE = PUBLISHED``, before
        ``PRODUCE += 1`` (the repair counts it).
        """
        return self._publish(e, s, count)

    def prod_abort(self, s: int) -> int:
        """Give a reserved slot back: 0/1 (wake a sleeping producer)."""
        self.slots[s] = Slot()
        if self.producer_waiters > 0:
            self.space_seq += 1
            return 1
        return 0

    # ---------------------------------------------------------------- consuming
    def _eligible(self, e: int) -> bool:
        p = self.producers[e]
        return p.state != cl.PROD_FREE and p.claim < p.produce

    def _claim_one(self, e: int, tag: int) -> int:
        p = self.producers[e]
        for _ in range(4 * self.capacity + 64):
            o = p.claim
            if o >= p.produce:
                return -1
            s = p.ring[o % self.capacity]
            slot = self.slots[s]
            p.claim = o + 1  # claimed now, or skipped (claimed earlier by someone else)
            if slot.kind == cl.KIND_PUBLISHED and slot.offset == o and slot.producer == e:
                slot.kind, slot.tag = cl.KIND_CLAIMED, tag
                return s
        return -1

    def cons_claim(self, tag: int, cw_state: list[int], max_n: int) -> list[int]:
        """Claimed slot indices (redelivered first, then SWRR over producer backlogs).

        ``cw_state`` is the consumer's current-weight list (``MAX_PRODUCERS`` ints),
        updated in place like the kernel's array.
        """
        out: list[int] = []
        if self.redeliver > 0:
            for s, slot in enumerate(self.slots):
                if len(out) >= max_n or self.redeliver <= 0:
                    break
                if slot.kind == cl.KIND_REDELIVER:
                    slot.kind, slot.tag = cl.KIND_CLAIMED, tag
                    self.redeliver -= 1
                    out.append(s)
        while len(out) < max_n:
            total = 0
            best = -1
            for e in range(cl.MAX_PRODUCERS):
                if not self._eligible(e):
                    continue
                wt = max(self.producers[e].weight, 1)
                cw_state[e] += wt
                total += wt
                if best < 0 or cw_state[e] > cw_state[best]:
                    best = e
            if best < 0:
                break
            cw_state[best] -= total
            s = self._claim_one(best, tag)
            if s >= 0:
                out.append(s)
        return out

    def cons_take(self, tag: int, slots: list[int]) -> tuple[list[bytes], int]:
        """Deliver claimed ``slots``: (payloads, wake flag for sleeping producers)."""
        payloads = [self.slots[s].payload for s in slots]
        for s in slots:
            self._complete(s)
        if self.producer_waiters > 0:
            self.space_seq += 1
            return payloads, 1
        return payloads, 0

    def _complete(self, s: int) -> None:
        e = self.slots[s].producer
        self.slots[s] = Slot()
        self.producers[e].done += 1

    def cons_return(self, tag: int, slots: list[int]) -> int:
        """Give claimed slots back for redelivery: wake flag for sleeping consumers."""
        for s in slots:
            slot = self.slots[s]
            if slot.kind != cl.KIND_CLAIMED or slot.tag != tag:
                continue
            slot.kind, slot.tag = cl.KIND_REDELIVER, 0
            self.redeliver += 1
        if self.consumer_waiters > 0:
            self.data_seq += 1
            return 1
        return 0

    def available(self) -> int:
        """``chan_available``: 1 if a claim could return something now."""
        if self.redeliver > 0:
            return 1
        return int(any(self._eligible(e) for e in range(cl.MAX_PRODUCERS)))

    # ------------------------------------------------------------------ waiting
    def wait_begin(self, space: int) -> int:
        """Register a waiter; returns the sequence value."""
        if space:
            self.producer_waiters += 1
            return self.space_seq
        self.consumer_waiters += 1
        return self.data_seq

    def wait_end(self, space: int) -> None:
        """Unregister a waiter."""
        if space:
            self.producer_waiters -= 1
        else:
            self.consumer_waiters -= 1

    # ------------------------------------------------------------------- repair
    def mark_completing(self, s: int) -> None:
        """The consumer holding ``s`` died after it began completing it."""
        self.slots[s].completing = True

    def repair_dead(self, dead: int) -> int:
        """``chan_repair_dead`` for this channel; returns the number of repaired items."""
        fixed = 0
        for e, p in enumerate(self.producers):
            if p.state != dead:
                continue
            if not p.has_ring:
                p.state = cl.PROD_FREE
                fixed += 1
                continue
            while True:
                s = p.ring[p.produce % self.capacity]
                if not 0 <= s < self.capacity:
                    break
                slot = self.slots[s]
                if (
                    slot.kind == cl.KIND_PUBLISHED
                    and slot.offset == p.produce
                    and slot.producer == e
                ):
                    p.produce += 1
                    fixed += 1
                else:
                    break
            p.state = cl.PROD_RETIRED
            fixed += 1
        if self.mpsc_consumer == dead:
            self.mpsc_consumer = 0
        for k, t in enumerate(self.consumers):
            if t == dead:
                self.consumers[k] = 0
                fixed += 1
        for s, slot in enumerate(self.slots):
            if slot.kind not in (cl.KIND_HELD, cl.KIND_CLAIMED) or slot.tag != dead:
                continue
            if slot.kind == cl.KIND_HELD:
                self.slots[s] = Slot()
            elif slot.completing:
                self._complete(s)
            else:
                slot.kind, slot.tag = cl.KIND_REDELIVER, 0
                self.redeliver += 1
            fixed += 1
        if fixed:
            self.data_seq += 1
            self.space_seq += 1
        return fixed

    # ------------------------------------------------------------ observation
    def offsets(self) -> list[tuple[int, int, int, int, int]]:
        """Per entry ``(state, produce, done, claim, weight)`` like ``chan_producer_offsets``."""
        return [(p.state, p.produce, p.done, p.claim, p.weight) for p in self.producers]

    def backlog(self) -> int:
        """``sum(PRODUCE - DONE)`` over the entries that are not FREE."""
        return sum(p.backlog() for p in self.producers if p.state != cl.PROD_FREE)

    def undelivered(self) -> int:
        """Slots that are not FREE (never more than ``capacity``)."""
        return sum(1 for slot in self.slots if slot.kind != cl.KIND_FREE)
