"""Pure-Python model of :mod:`fluxon_kernels.heap` (single-threaded oracle).

A list of unit tags and a cursor, with the kernel's first-fit search order and
statuses. Without concurrency a kernel CAS never fails, so the kernel's
claim-and-roll-back loop reduces to "the first all-free run in cursor order".
"""

from __future__ import annotations

from fluxon_kernels import status
from fluxon_kernels.layout.heap import FREE_TAG, MAX_BLOCK_BYTES


class HeapModel:
    """Reference heap of ``units`` units of ``unit_size`` bytes.

    Parameters
    ----------
    units : int
        Number of heap units.
    unit_size : int
        Bytes per unit.
    """

    def __init__(self, units: int, unit_size: int) -> None:
        self.units = units
        self.unit_size = unit_size
        self.tags = [FREE_TAG] * units
        self.hint = 0

    def units_for(self, nbytes: int) -> int:
        """Units a block of ``nbytes`` bytes occupies."""
        return -(-nbytes // self.unit_size)

    def _block(self, start: int, nbytes: int) -> range | None:
        if nbytes <= 0 or start < 0:
            return None
        need = self.units_for(nbytes)
        if start + need > self.units:
            return None
        return range(start, start + need)

    def alloc(self, nbytes: int, tag: int) -> int:
        """Start unit of a new block, or ``TOO_LARGE`` / ``FULL`` / ``CORRUPT``."""
        if tag == FREE_TAG:
            return status.CORRUPT
        if nbytes <= 0 or nbytes > MAX_BLOCK_BYTES:
            return status.TOO_LARGE
        need = self.units_for(nbytes)
        if need > self.units:
            return status.TOO_LARGE
        start = self.hint if 0 <= self.hint < self.units else 0
        last = self.units - need  # last possible start
        order = list(range(start, last + 1)) + list(range(min(start, last + 1)))
        for pos in order:
            if all(t == FREE_TAG for t in self.tags[pos : pos + need]):
                for u in range(pos, pos + need):
                    self.tags[u] = tag
                nxt = pos + need
                self.hint = 0 if nxt >= self.units else nxt
                return pos
        return status.FULL

    def free(self, start: int, nbytes: int, tag: int) -> int:
        """Units freed (those carrying ``tag``), or ``CORRUPT`` for a block outside the heap."""
        block = self._block(start, nbytes)
        if block is None:
            return status.CORRUPT
        if tag == FREE_TAG:
            return 0
        n = 0
        for u in block:
            if self.tags[u] == tag:
                self.tags[u] = FREE_TAG
                n += 1
        return n

    def retag(self, start: int, nbytes: int, old_tag: int, new_tag: int) -> int:
        """Units moved from ``old_tag`` to ``new_tag``, or ``CORRUPT``."""
        block = self._block(start, nbytes)
        if block is None or old_tag == FREE_TAG or new_tag == FREE_TAG:
            return status.CORRUPT
        n = 0
        for u in block:
            if self.tags[u] == old_tag:
                self.tags[u] = new_tag
                n += 1
        return n

    def reclaim_tag(self, tag: int) -> int:
        """Free every unit tagged ``tag``; returns the count."""
        if tag == FREE_TAG:
            return 0
        n = 0
        for u, t in enumerate(self.tags):
            if t == tag:
                self.tags[u] = FREE_TAG
                n += 1
        return n

    def free_units(self) -> int:
        """Number of free units."""
        return self.tags.count(FREE_TAG)

    def used_by_tag(self, tag: int) -> int:
        """Number of units carrying ``tag``."""
        return self.tags.count(tag)
