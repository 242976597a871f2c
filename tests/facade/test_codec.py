"""FlatDict codec: round trips, every rejection, zero-copy views, corruption never crashes."""

from __future__ import annotations

import math
import struct

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from fluxon import codec
from fluxon.api_error import InvalidArgumentError, MsgDeserializeError

NUMERIC_DTYPES = [
    np.bool_,
    np.int8,
    np.uint8,
    np.int16,
    np.uint16,
    np.int32,
    np.uint32,
    np.int64,
    np.uint64,
    np.float16,
    np.float32,
    np.float64,
    np.longdouble,
    np.complex64,
    np.complex128,
]


# --------------------------------------------------------------------------- utilities
def roundtrip(value: dict, offset: int = 0) -> tuple[dict, np.ndarray]:
    prepared = codec.prepare(value)
    buf = np.full(offset + prepared.size + 5, 0xAB, dtype=np.uint8)
    assert codec.write(prepared, buf, offset) == prepared.size
    return codec.decode(buf[offset:]), buf


def same_float(a: float, b: float) -> bool:
    return struct.pack("<d", a) == struct.pack("<d", b)


def expected_value(v):
    """What the codec promises to return for an input value."""
    if isinstance(v, (bytearray, memoryview)):
        return bytes(v)
    if isinstance(v, np.ndarray):
        return v
    if isinstance(v, np.bool_):
        return bool(v)
    if isinstance(v, np.integer):
        return int(v)
    if isinstance(v, np.floating):
        return float(v)
    return v


def assert_same(original: dict, decoded: dict) -> None:
    assert list(decoded) == list(original)
    for key, value in original.items():
        want = expected_value(value)
        got = decoded[key]
        if isinstance(want, np.ndarray):
            assert isinstance(got, np.ndarray), key
            assert got.dtype == want.dtype and got.dtype.str == want.dtype.str, key
            assert got.shape == want.shape, key
            assert got.tobytes() == want.tobytes(), key
        elif isinstance(want, float):
            assert type(got) is float and same_float(got, want), key
        else:
            assert type(got) is type(want) and got == want, key


# --------------------------------------------------------------------------- strategies
dtypes = st.sampled_from(NUMERIC_DTYPES).flatmap(
    lambda t: st.sampled_from("<>").map(lambda order: np.dtype(t).newbyteorder(order))
)


@st.composite
def arrays(draw):
    dtype = draw(dtypes)
    native = dtype.newbyteorder("=")
    shape = draw(hnp.array_shapes(min_dims=0, max_dims=4, min_side=0, max_side=5))
    arr = draw(hnp.arrays(native, shape)).astype(dtype)
    if arr.ndim >= 2 and draw(st.booleans()):
        arr = arr.T  # not C-contiguous
    elif arr.ndim >= 1 and arr.shape[0] > 1 and draw(st.booleans()):
        arr = arr[::2]  # strided
    return arr


scalars = st.one_of(
    st.integers(min_value=-(2**63), max_value=2**63 - 1),
    st.floats(allow_nan=True, allow_infinity=True),
    st.booleans(),
    st.text(max_size=40),
    st.binary(max_size=300),
)
values = st.one_of(scalars, arrays())
flat_dicts = st.dictionaries(st.text(min_size=1, max_size=12), values, max_size=8)


# --------------------------------------------------------------------------- round trips
@settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(flat_dicts, st.integers(min_value=0, max_value=16))
def test_roundtrip(value, offset):
    decoded, _ = roundtrip(value, offset * 8)
    assert_same(value, decoded)
    assert codec.encoded_size(value) == len(codec.encode(value))


def test_common_message():
    msg = {"seq": 7, "t": 1_700_000_000_123_456_789, "payload": b"\x00\x01" * 50}
    decoded, _ = roundtrip(msg)
    assert decoded == msg
    assert type(decoded["payload"]) is bytes


def test_every_scalar_type_and_edge_value():
    value = {
        "min": -(2**63),
        "max": 2**63 - 1,
        "zero": 0,
        "t": True,
        "f": False,
        "nan": math.nan,
        "inf": -math.inf,
        "negzero": -0.0,
        "empty_str": "",
        "unicode": "añ中文🙂\x00",
        "empty_bytes": b"",
        "bytes": bytes(range(256)),
        "ключ🙂": 1,
    }
    decoded, _ = roundtrip(value)
    assert_same(value, decoded)
    assert decoded["t"] is True and decoded["f"] is False


@pytest.mark.parametrize("dtype", NUMERIC_DTYPES)
@pytest.mark.parametrize("shape", [(), (0,), (3,), (2, 0, 4), (2, 3, 4)])
def test_arrays_keep_dtype_and_shape(dtype, shape):
    arr = (np.arange(math.prod(shape)) % 3).astype(dtype).reshape(shape)
    decoded, _ = roundtrip({"a": arr, "b": arr.astype(np.dtype(dtype).newbyteorder(">"))})
    assert_same({"a": arr, "b": arr.astype(np.dtype(dtype).newbyteorder(">"))}, decoded)


def test_arrays_are_aligned_zero_copy_views():
    arr = np.arange(10, dtype=np.float64)
    prepared = codec.prepare({"k": "x", "s": "odd length", "a": arr, "b": np.ones(3, np.int16)})
    buf = np.zeros(prepared.size + 64, dtype=np.uint8)
    codec.write(prepared, buf, 64)
    out = codec.decode(buf[64:])
    for key in ("a", "b"):
        assert np.shares_memory(out[key], buf)
        assert out[key].ctypes.data % 8 == 0
    buf[:] = 0
    assert not out["a"].any()  # a view, not a copy


def test_decode_of_read_only_bytes_gives_read_only_arrays():
    out = codec.decode(codec.encode({"a": np.arange(4)}))
    assert not out["a"].flags.writeable
    np.testing.assert_array_equal(out["a"], np.arange(4))


def test_non_contiguous_arrays_are_stored_in_c_order():
    arr = np.arange(12, dtype=np.int32).reshape(3, 4)
    decoded, _ = roundtrip({"t": arr.T, "s": arr[:, ::2], "f": np.asfortranarray(arr)})
    np.testing.assert_array_equal(decoded["t"], arr.T)
    np.testing.assert_array_equal(decoded["s"], arr[:, ::2])
    np.testing.assert_array_equal(decoded["f"], arr)
    assert decoded["t"].flags.c_contiguous


class Subclass(np.ndarray):
    pass


def test_array_subclasses_become_plain_arrays():
    sub = np.arange(4).reshape(2, 2).view(Subclass)
    decoded, _ = roundtrip({"m": sub})
    assert type(decoded["m"]) is np.ndarray and decoded["m"].shape == (2, 2)
    np.testing.assert_array_equal(decoded["m"], np.arange(4).reshape(2, 2))


def test_bytes_like_and_numpy_scalars_are_converted():
    mv2d = memoryview(bytearray(b"abcdef")).cast("B", (2, 3))
    value = {
        "ba": bytearray(b"xyz"),
        "mv": memoryview(b"hello"),
        "mv2d": mv2d,
        "strided": memoryview(b"abcdef")[::2],
        "npbool": np.bool_(True),
        "npint": np.int16(-5),
        "npuint": np.uint64(2**63 - 1),
        "npf32": np.float32(1.5),
        "npf64": np.float64(2.25),
        "npstr": np.str_("text"),
        "npbytes": np.bytes_(b"raw"),
    }
    decoded, _ = roundtrip(value)
    assert decoded == {
        "ba": b"xyz",
        "mv": b"hello",
        "mv2d": b"abcdef",
        "strided": b"ace",
        "npbool": True,
        "npint": -5,
        "npuint": 2**63 - 1,
        "npf32": 1.5,
        "npf64": 2.25,
        "npstr": "text",
        "npbytes": b"raw",
    }
    assert type(decoded["npbool"]) is bool and type(decoded["npint"]) is int
    assert type(decoded["npstr"]) is str and type(decoded["npbytes"]) is bytes


def test_empty_dict():
    assert roundtrip({})[0] == {}


def test_encoding_is_deterministic_and_fills_every_byte():
    value = {"a": np.arange(3, dtype=np.int8), "s": "abc", "z": np.zeros((), np.complex64)}
    prepared = codec.prepare(value)
    dirty = np.full(prepared.size, 0xFF, dtype=np.uint8)
    codec.encode_into(dirty, 0, prepared)
    assert dirty.tobytes() == codec.encode(value) == codec.encode(value)


def test_validate_flat_dict_reports_stored_fields():
    fields = codec.validate_flat_dict({"a": np.int8(3), "b": bytearray(b"x"), "c": [1, 2][0]})
    assert [(k, type(v)) for k, v in fields] == [("a", int), ("b", bytearray), ("c", int)]


# --------------------------------------------------------------------------- dlpack
class CpuTensor:
    """Torch-like: exposes only the DLPack protocol."""

    def __init__(self, arr, device=(1, 0)):
        self._arr = arr
        self._device = device

    def __dlpack__(self, **kwargs):
        return self._arr.__dlpack__(**kwargs)

    def __dlpack_device__(self):
        return self._device


def test_dlpack_objects_come_back_as_arrays():
    arr = np.arange(6, dtype=np.float32).reshape(2, 3)
    decoded, _ = roundtrip({"t": CpuTensor(arr)})
    assert type(decoded["t"]) is np.ndarray
    np.testing.assert_array_equal(decoded["t"], arr)
    assert decoded["t"].dtype == np.float32


def test_dlpack_on_another_device_is_rejected():
    with pytest.raises(InvalidArgumentError) as info:
        codec.prepare({"gpu": CpuTensor(np.zeros(2), device=(2, 0))})
    assert info.value.details["field"] == "gpu"
    assert "CPU" in info.value.message


def test_broken_dlpack_is_rejected():
    class Broken:
        def __dlpack__(self, **kwargs):
            raise RuntimeError("Can't export tensors that require gradient")

        def __dlpack_device__(self):
            return (1, 0)

    with pytest.raises(InvalidArgumentError) as info:
        codec.prepare({"grad": Broken()})
    assert info.value.details["field"] == "grad"
    assert "require gradient" in info.value.message


# --------------------------------------------------------------------------- rejections
class Opaque:
    pass


@pytest.mark.parametrize(
    "field,value,type_name",
    [
        ("none", None, "NoneType"),
        ("nested", {"a": 1}, "dict"),
        ("list", [1, 2], "list"),
        ("tuple", (1,), "tuple"),
        ("set", {1}, "set"),
        ("obj", Opaque(), "Opaque"),
        ("big", 2**63, "int"),
        ("small", -(2**63) - 1, "int"),
        ("npbig", np.uint64(2**64 - 1), "int"),
        ("objarr", np.array([1, "a"], dtype=object), "ndarray"),
        ("strarr", np.array(["a", "b"]), "ndarray"),
        ("bytesarr", np.array([b"a"]), "ndarray"),
        ("voidarr", np.zeros(2, dtype="V4"), "ndarray"),
        ("recarr", np.zeros(2, dtype=[("x", "i4")]), "ndarray"),
        ("dates", np.array(["2024-01-01"], dtype="datetime64[D]"), "ndarray"),
        ("masked", np.ma.masked_array([1, 2], mask=[0, 1]), "MaskedArray"),
        ("cplx", np.complex64(1j), "complex64"),
        ("longd", np.longdouble(1), "longdouble"),
        ("surrogate", "\ud800", "str"),
        ("pyc", 1j, "complex"),
    ],
)
def test_rejections_name_the_field_and_type(field, value, type_name):
    bad = {"ok": 1, field: value, "after": b"x"}
    with pytest.raises(InvalidArgumentError) as info:
        codec.prepare(bad)
    err = info.value
    assert err.details["field"] == field
    assert err.details["type"] == type_name
    assert repr(field) in err.message


@pytest.mark.parametrize(
    "bad,field",
    [
        ({1: "x"}, "1"),
        ({b"k": "x"}, "b'k'"),
        ({None: 1}, "None"),
        ({"": 1}, ""),
        ({"\udcff": 1}, "\udcff"),
        ({"k" * 70000: 1}, "k" * 70000),
    ],
)
def test_bad_keys(bad, field):
    with pytest.raises(InvalidArgumentError) as info:
        codec.prepare(bad)
    assert info.value.details["field"] == field


@pytest.mark.parametrize("bad", [None, [("a", 1)], "abc", 5, b"x"])
def test_non_dicts_are_rejected(bad):
    with pytest.raises(InvalidArgumentError, match="must be a dict"):
        codec.prepare(bad)


def test_too_many_fields():
    with pytest.raises(InvalidArgumentError, match="at most"):
        codec.prepare({str(i): i for i in range(codec.MAX_FIELDS + 1)})


def test_nothing_is_written_for_a_bad_value():
    buf = np.zeros(4096, dtype=np.uint8)
    with pytest.raises(InvalidArgumentError):
        codec.write(codec.prepare({"good": b"x" * 100, "bad": None}), buf, 0)
    assert not buf.any()


def test_write_out_of_bounds_writes_nothing():
    prepared = codec.prepare({"a": b"x" * 100})
    buf = np.zeros(prepared.size + 10, dtype=np.uint8)
    for offset in (-1, 11, len(buf)):
        with pytest.raises(ValueError):
            codec.write(prepared, buf, offset)
    assert not buf.any()


# --------------------------------------------------------------------------- corruption
def _decode_or_named_error(data) -> None:
    try:
        out = codec.decode(data)
    except MsgDeserializeError as exc:
        assert exc.message.startswith("cannot decode FlatDict")
        return
    assert isinstance(out, dict)
    for value in out.values():
        assert isinstance(value, (int, float, bool, str, bytes, np.ndarray))
        if isinstance(value, np.ndarray):
            assert value.dtype.kind in "biufc"
            value.sum()  # touching the data must be safe


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(flat_dicts, st.data())
def test_corrupted_encodings_never_crash(value, data):
    raw = bytearray(codec.encode(value))
    flips = data.draw(
        st.lists(
            st.tuples(st.integers(0, len(raw) - 1), st.integers(0, 255)), min_size=1, max_size=6
        )
    )
    for index, byte in flips:
        raw[index] = byte
    cut = data.draw(st.integers(0, len(raw)))
    if data.draw(st.booleans()):
        raw = raw[:cut]
    _decode_or_named_error(bytes(raw))
    _decode_or_named_error(np.frombuffer(bytes(raw), dtype=np.uint8))


@settings(max_examples=150, deadline=None)
@given(st.binary(max_size=200))
def test_random_bytes_never_crash(raw):
    _decode_or_named_error(raw)
    _decode_or_named_error(codec.encode({}) + raw)


def test_every_truncation_is_detected():
    raw = codec.encode({"seq": 1, "payload": b"abc" * 10, "a": np.arange(5), "s": "é"})
    for cut in range(len(raw)):
        with pytest.raises(MsgDeserializeError):
            codec.decode(raw[:cut])
    codec.decode(raw + b"trailing bytes are ignored")


def test_object_dtype_code_is_never_decoded():
    raw = codec.encode({"a": np.zeros(2, dtype="<i8")})
    assert raw.count(b"<i8") == 1
    with pytest.raises(MsgDeserializeError, match="dtype"):
        codec.decode(raw.replace(b"<i8", b"|O8"))


@pytest.mark.parametrize(
    "patch,match",
    [
        (lambda r: b"XXXX" + r[4:], "magic"),
        (lambda r: r[:4] + struct.pack("<H", 99) + r[6:], "version"),
        (lambda r: r[:8] + struct.pack("<Q", len(r) + 1) + r[16:], "available"),
        (lambda r: r[:6] + struct.pack("<H", 5000) + r[8:], "entries"),
        (lambda r: r[:16] + b"\x09" + r[17:], "tag"),
    ],
)
def test_header_corruption_is_named(patch, match):
    raw = codec.encode({"key": b"value"})
    with pytest.raises(MsgDeserializeError, match=match):
        codec.decode(patch(raw))


def test_decode_input_types():
    raw = codec.encode({"x": 1, "a": np.arange(3)})
    for data in (raw, bytearray(raw), memoryview(raw), np.frombuffer(raw, np.uint8)):
        assert codec.decode(data)["x"] == 1
    strided = np.zeros(2 * len(raw), np.uint8)
    strided[::2] = np.frombuffer(raw, np.uint8)
    np.testing.assert_array_equal(codec.decode(strided[::2])["a"], np.arange(3))
    with pytest.raises(MsgDeserializeError):
        codec.decode(np.zeros(8, np.int64))
    with pytest.raises(MsgDeserializeError):
        codec.decode(12345)
