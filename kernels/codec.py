"""Codec kernel: check the fixed part of many encodings against one shape at once.

A FlatDict encoding (see ``fluxon.codec``) starts with a fixed part -- header, one
entry per field, the keys -- whose bytes are the same for every message of one shape
except the value words. ``fluxon.codec`` describes a shape's constant bytes as 8-byte
words (index, value, mask); this kernel compares them for a whole batch of encodings
laid out at a fixed stride, so the per-message decoders can skip the comparison.
"""

from __future__ import annotations

import numpy as np
from numba import njit


@njit(nogil=True, cache=True)
def match_const_words(buf, stride, k, lens, min_len, const_words):
    """How many of the ``k`` encodings, the first ones, have the expected constant words.

    Parameters
    ----------
    buf : uint8[:]
        Encoding ``i`` starts at ``i * stride``; ``stride`` is a multiple of 8.
    lens : int64[:]
        Length of each encoding.
    min_len : int
        The shape's fixed part; a shorter encoding does not match (every word in
        ``index`` lies inside it).
    const_words : uint64[3, m]
        Rows ``index, value, mask``: word ``index[j]`` (8-byte words from the start of
        an encoding, ascending) matches when ``word & mask[j] == value[j]``.

    Returns
    -------
    int
        The number of leading encodings that match (``k`` when all do): one that is
        too short, would reach past ``buf``, or differs in a constant word stops it.
    """
    size = buf.shape[0]
    words = buf[: size - size % 8].view(np.uint64)
    step = stride // 8
    index, value, mask = const_words[0], const_words[1], const_words[2]
    m = index.shape[0]
    for i in range(k):
        if lens[i] < min_len or i * stride + min_len > size:
            return i
        base = i * step
        for j in range(m):
            if words[base + index[j]] & mask[j] != value[j]:
                return i
    return k
