"""match_const_words against its pure-Python model."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from fluxon_kernels.codec import match_const_words
from tests.model.codec_model import match_const_words as model

U64 = st.integers(0, (1 << 64) - 1)


@st.composite
def cases(draw):
    stride = 8 * draw(st.integers(1, 6))
    k = draw(st.integers(0, 6))
    min_len = 8 * draw(st.integers(1, stride // 8))
    n_words = min_len // 8
    template = draw(st.binary(min_size=min_len, max_size=min_len))
    indices = sorted(draw(st.sets(st.integers(0, n_words - 1), min_size=1)))
    words = []
    for i in indices:
        mask = draw(st.sampled_from([(1 << 64) - 1, (1 << 24) - 1, 0xFF00FF]))
        value = int.from_bytes(template[8 * i : 8 * i + 8], "little") & mask
        words.append((i, value, mask))
    # Most encodings copy the template; some differ in a byte; the buffer may end early.
    raw = bytearray()
    for _ in range(k):
        enc = bytearray(template + bytes(stride - min_len))
        if draw(st.booleans()):
            pos = draw(st.integers(0, stride - 1))
            enc[pos] = draw(st.integers(0, 255))
        raw += enc
    cut = draw(st.integers(0, len(raw))) if draw(st.booleans()) else len(raw)
    lens = [draw(st.integers(0, stride)) if draw(st.booleans()) else min_len for _ in range(k)]
    return bytes(raw[:cut]), stride, k, lens, min_len, words


@settings(max_examples=400, deadline=None)
@given(cases())
def test_match_const_words_agrees_with_the_model(case):
    raw, stride, k, lens, min_len, words = case
    buf = np.frombuffer(raw, dtype=np.uint8).copy() if raw else np.zeros(0, dtype=np.uint8)
    table = np.array(words, dtype=np.uint64).T.copy()
    got = match_const_words(buf, stride, k, np.array(lens, dtype=np.int64), min_len, table)
    assert got == model(raw, stride, k, lens, min_len, words)
