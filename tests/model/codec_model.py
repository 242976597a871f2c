"""Pure-Python model of :func:`fluxon_kernels.codec.match_const_words` (the oracle)."""

from __future__ import annotations


def match_const_words(
    buf: bytes, stride: int, k: int, lens: list, min_len: int, words: list
) -> int:
    """How many leading encodings (at ``i * stride`` in ``buf``) are at least ``min_len``
    long, lie inside ``buf`` and have ``word & mask == value`` for every
    ``(index, value, mask)`` in ``words`` (``index`` counts 8-byte little-endian words)."""
    for i in range(k):
        start = i * stride
        if lens[i] < min_len or start + min_len > len(buf):
            return i
        for index, value, mask in words:
            at = start + 8 * index
            if int.from_bytes(buf[at : at + 8], "little") & mask != value:
                return i
    return k
