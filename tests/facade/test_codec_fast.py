"""FlatDict codec fast path: specialised encoders/decoders agree with the general path."""

from __future__ import annotations

import math
import struct

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fluxon import codec
from fluxon.api_error import MsgDeserializeError
from fluxon_kernels.codec import match_const_words

KEYS = st.text(min_size=1, max_size=6)
SIMPLE_VALUES = st.one_of(
    st.integers(min_value=-(1 << 63), max_value=(1 << 63) - 1),
    st.floats(allow_nan=True, allow_infinity=True),
    st.booleans(),
    st.text(max_size=40),
    st.binary(max_size=300),
)
SIMPLE_DICTS = st.dictionaries(KEYS, SIMPLE_VALUES, min_size=1, max_size=8)


def same(a: dict, b: dict) -> bool:
    """Equal FlatDicts: same keys in the same order, same types, same values and bits."""
    if list(a) != list(b):
        return False
    for k in a:
        x, y = a[k], b[k]
        if type(x) is not type(y):
            return False
        if isinstance(x, np.ndarray):
            if x.dtype != y.dtype or x.shape != y.shape or x.tobytes() != y.tobytes():
                return False
        elif isinstance(x, float):
            if struct.pack("<d", x) != struct.pack("<d", y):
                return False
        elif x != y:
            return False
    return True


def fast_encode(value: dict, limit: int = 1 << 20) -> bytes | None:
    """``encode_fast`` into a dirty buffer once the shape is learnt (None if it declines)."""
    if len(codec._enc_by_shape) >= codec.MAX_FAST_SHAPES - 8:
        codec._forget_shapes()  # hypothesis makes many shapes
    got = None
    for _ in range(codec.FAST_AFTER + 1):
        buf = np.full(limit + 16, 0xAB, dtype=np.uint8)
        got = codec.encode_fast(value, buf, 8, limit)
    if got is None:
        return None
    assert got > 0
    assert (buf[:8] == 0xAB).all() and (buf[8 + got :] == 0xAB).all()
    return buf[8 : 8 + got].tobytes()


def learn_decoder(raw: bytes) -> None:
    if len(codec._dec_by_shape) >= codec.MAX_FAST_SHAPES - 8:
        codec._forget_shapes()
    for _ in range(codec.FAST_AFTER + 1):
        codec.decode(raw)


@settings(max_examples=300, deadline=None)
@given(SIMPLE_DICTS)
def test_fast_encoding_is_byte_identical(value):
    assert fast_encode(value) == codec.encode(value)


@settings(max_examples=300, deadline=None)
@given(SIMPLE_DICTS)
def test_fast_decoding_equals_general(value):
    raw = codec.encode(value)
    learn_decoder(raw)
    buf = np.frombuffer(raw, dtype=np.uint8)
    fast = codec._decode_fast(memoryview(buf), buf, 0, len(raw))
    assert fast is not None
    assert same(fast, codec._decode_general(buf, memoryview(buf), len(raw)))
    assert same(codec.decode(raw), value if not _has_nan(value) else codec.decode(raw))


def _has_nan(value: dict) -> bool:
    return any(isinstance(v, float) and math.isnan(v) for v in value.values())


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(SIMPLE_DICTS, st.data())
def test_corrupted_encodings_fast_path_never_disagrees(value, data):
    raw = bytearray(codec.encode(value))
    learn_decoder(bytes(raw))
    for _ in range(4):
        pos = data.draw(st.integers(0, len(raw) - 1))
        raw[pos] = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(0, len(raw)))
    buf = np.frombuffer(bytes(raw[:cut]), dtype=np.uint8)
    mv = memoryview(buf)
    fast = codec._decode_fast(mv, buf, 0, cut)
    try:
        general = codec._decode_general(buf, mv, cut)
    except MsgDeserializeError:
        assert fast is None
        return
    if fast is not None:
        assert same(fast, general)


def test_arrays_decode_on_the_fast_path():
    value = {"a": np.arange(6, dtype=">i4").reshape(2, 3), "n": 3, "z": np.zeros(0, np.float32)}
    raw = codec.encode(value)
    learn_decoder(raw)
    buf = np.frombuffer(raw, dtype=np.uint8)
    fast = codec._decode_fast(memoryview(buf), buf, 0, len(raw))
    assert fast is not None and same(fast, value)
    assert fast["a"].base is not None  # a view of the buffer, not a copy
    assert not fast["a"].flags.writeable  # read-only like the bytes it views


def test_encode_fast_declines_what_it_cannot_encode():
    good = {"seq": 1, "t": 2, "payload": b"x" * 10}
    assert fast_encode(good) == codec.encode(good)
    buf = np.zeros(256, dtype=np.uint8)
    for bad in (
        {"seq": 1, "t": 2, "payload": None},  # a type no shape may have
        {"seq": 1 << 63, "t": 2, "payload": b""},  # outside int64
        {"seq": 1, "t": 2, "payload": "\ud800"},  # str that is not UTF-8
        {"seq": 1, "t": 2, "payload": np.zeros(2)},  # arrays: general path
    ):
        for _ in range(codec.FAST_AFTER + 1):
            assert codec.encode_fast(bad, buf, 0, 256) is None
    assert codec.encode_fast(_Sub(good), buf, 0, 256) is None  # dict subclasses: general path
    assert codec.encode_fast([1], buf, 0, 256) is None
    # bool is not int, and another key order is another shape: both encoded as such
    for other in ({"seq": True, "t": 2, "payload": b""}, {"t": 2, "seq": 1, "payload": b""}):
        assert fast_encode(other) == codec.encode(other)


class _Sub(dict):
    pass


def test_encode_fast_writes_nothing_beyond_limit():
    value = {"seq": 1, "t": 2, "payload": b"y" * 200}
    size = codec.encoded_size(value)
    fast_encode(value)
    buf = np.full(size + 8, 0xCD, dtype=np.uint8)
    assert codec.encode_fast(value, buf, 0, size - 1) == -size
    assert (buf == 0xCD).all()
    assert codec.encode_fast(value, buf, 0, size) == size
    assert buf[:size].tobytes() == codec.encode(value)


def test_shapes_with_mixed_types_alternate():
    a = {"x": 1, "y": b"ab"}
    b = {"x": 1.5, "y": "ab"}
    for _ in range(3):
        assert fast_encode(a) == codec.encode(a)
        assert fast_encode(b) == codec.encode(b)


def test_decode_many_matches_decode_and_reports_bad_messages():
    msgs = [{"seq": i, "t": 7, "payload": bytes([i]) * (i * 3)} for i in range(20)]
    msgs.append({"other": "shape", "a": np.arange(3)})
    raws = [codec.encode(m) for m in msgs]
    offs, pos = [], 0
    for raw in raws:
        offs.append(pos)
        pos += (len(raw) + 7) & ~7
    buf = np.zeros(pos, dtype=np.uint8)
    for off, raw in zip(offs, raws):
        buf[off : off + len(raw)] = np.frombuffer(raw, dtype=np.uint8)
    lens = [len(r) for r in raws]
    for _ in range(3):
        out = codec.decode_many(buf, offs, lens)
        assert all(same(o, codec.decode(r)) for o, r in zip(out, raws))
    buf[offs[5]] ^= 0xFF  # bad magic
    with pytest.raises(MsgDeserializeError):
        codec.decode_many(buf, offs, lens)


def test_large_values_are_byte_identical():
    value = {"seq": 1, "blob": b"\x01" * (40 << 10), "text": "é" * (20 << 10), "x": 0.5}
    assert fast_encode(value, limit=1 << 17) == codec.encode(value)
    raw = codec.encode(value)
    learn_decoder(raw)
    assert same(codec.decode_detached(memoryview(raw), 0, len(raw)), value)


def test_decode_detached_declines_shapes_with_arrays():
    raw = codec.encode({"a": np.arange(3), "b": b"x"})
    learn_decoder(raw)
    assert codec.decode_detached(memoryview(raw), 0, len(raw)) is None
    assert codec.decode_detached(memoryview(b"\x00" * 4), 0, 4) is None


def test_shape_tables_stop_growing_at_their_limit(monkeypatch):
    codec._forget_shapes()
    monkeypatch.setattr(codec, "MAX_FAST_SHAPES", 2)
    values = [{f"k{i}": i} for i in range(4)]
    buf = np.zeros(64, dtype=np.uint8)
    for value in values:
        for _ in range(codec.FAST_AFTER + 1):
            codec.encode_fast(value, buf, 0, 64)
            codec.decode(codec.encode(value))
    assert len(codec._enc_by_shape) == 2 and len(codec._dec_by_shape) == 2
    for value in values:  # learnt or not, every value still encodes and decodes
        got = codec.encode_fast(value, buf, 0, 64)
        assert got is None or buf[:got].tobytes() == codec.encode(value)
        assert codec.decode(codec.encode(value)) == value
    codec._forget_shapes()


def _same_shape(value: dict, data) -> dict:
    """Another FlatDict with ``value``'s keys and value types (other values)."""
    by_type = {
        int: st.integers(min_value=-(1 << 63), max_value=(1 << 63) - 1),
        float: st.floats(),
        bool: st.booleans(),
        str: st.text(max_size=40),
        bytes: st.binary(max_size=300),
    }
    return {k: data.draw(by_type[type(v)]) for k, v in value.items()}


def _strided(raws: list) -> tuple:
    """The encodings ``raws`` at a common 8-aligned stride in one buffer."""
    stride = max((len(r) + 7) & ~7 for r in raws)
    buf = np.zeros(stride * len(raws), dtype=np.uint8)
    for i, raw in enumerate(raws):
        buf[i * stride : i * stride + len(raw)] = np.frombuffer(raw, dtype=np.uint8)
    return buf, stride


def _checked(buf: np.ndarray, stride: int, lens: list, dec) -> int:
    k = len(lens)
    return match_const_words(buf, stride, k, np.array(lens, np.int64), dec.fixed, dec.const_words)


@settings(max_examples=200, deadline=None)
@given(SIMPLE_DICTS, st.data())
def test_a_checked_batch_of_one_shape_decodes_trusted_like_decode(value, data):
    batch = [value] + [_same_shape(value, data) for _ in range(data.draw(st.integers(0, 5)))]
    raws = [codec.encode(v) for v in batch]
    learn_decoder(raws[0])
    dec = codec.last_decoder()
    buf, stride = _strided(raws)
    lens = [len(r) for r in raws]
    assert _checked(buf, stride, lens, dec) == len(raws)
    out = codec.decode_trusted(dec, buf, range(0, len(buf), stride), lens)
    assert out is not None
    assert all(same(o, codec.decode(r)) for o, r in zip(out, raws))


def _value_words(value: dict) -> set:
    """Indices of the 8-byte words of an encoding's fixed part that hold values: the
    total size, word ``a`` of every entry and word ``b`` of str/bytes entries."""
    words = {1}
    for i, v in enumerate(value.values()):
        words.add(3 + 3 * i)
        if isinstance(v, (str, bytes)):
            words.add(4 + 3 * i)
    return words


@settings(max_examples=100, deadline=None)
@given(SIMPLE_DICTS, st.data())
def test_const_words_check_every_constant_byte_of_the_fixed_part(value, data):
    raw = codec.encode(value)
    learn_decoder(raw)
    dec = codec.last_decoder()
    keys_end = 16 + 24 * len(value) + sum(len(k.encode()) for k in value)
    assert dec.fixed == (keys_end + 7) & ~7
    values = _value_words(value)
    for pos in range(dec.fixed):
        bad = bytearray(raw)
        bad[pos] ^= 1 << data.draw(st.integers(0, 7))
        buf, stride = _strided([bytes(bad)])
        matched = _checked(buf, stride, [len(raw)], dec) == 1
        # A value byte or the padding after the keys may change; nothing else.
        assert matched == (pos // 8 in values or pos >= keys_end), pos
    assert _checked(buf, stride, [dec.fixed - 1], dec) == 0  # too short to hold the shape


def test_decode_trusted_declines_values_out_of_bounds():
    value = {"seq": 1, "payload": b"abc"}
    raw = bytearray(codec.encode(value))
    learn_decoder(bytes(raw))
    dec = codec.last_decoder()
    struct.pack_into("<Q", raw, 16 + 24 + 16, 10_000)  # payload length past the end
    buf, stride = _strided([bytes(raw)])
    assert _checked(buf, stride, [len(raw)], dec) == 1  # constants are intact ...
    assert codec.decode_trusted(dec, buf, [0], [len(raw)]) is None  # ... a value is not
    with pytest.raises(MsgDeserializeError):
        codec.decode_many(buf, [0], [len(raw)])


@settings(max_examples=100, deadline=None)
@given(SIMPLE_DICTS)
def test_decode_many_of_one_message_equals_decode_learnt_or_not(value):
    raw = codec.encode(value)
    buf = np.frombuffer(raw, dtype=np.uint8)
    (got,) = codec.decode_many(buf, [0], [len(raw)])
    assert same(got, value)  # maybe another shape's decoder last
    learn_decoder(raw)
    (got,) = codec.decode_many(buf, [0], [len(raw)])
    assert same(got, value)
    with pytest.raises(MsgDeserializeError):
        codec.decode_many(buf, [0], [8])  # cut short
