"""FlatDict binary codec: how a message or KV value is laid out in the pool (no pickle).

A FlatDict is ``dict[str, int | float | bool | str | bytes | numpy.ndarray]``: flat,
no ``None``. Encoding is two phases so that nothing is written before everything is
checked: :func:`prepare` validates, converts and computes the exact size, then
:func:`write` copies into a ``uint8`` buffer (a slice of the shared pool). Each
``bytes`` value and each array buffer is copied with one memcpy; numbers are inline.
:func:`decode` returns arrays as zero-copy views of the buffer.

Layout (little-endian; ``a`` and ``b`` are the two value words of an entry)::

    0      u32 magic "FLXD"  u16 version  u16 nfields  u64 total bytes
    16     entries, nfields x 24 bytes:
             u8 tag  u8 ndim  u16 key_len  u32 meta_len  8 bytes a  u64 b
             INT    a = int64 value
             FLOAT  a = float64 value
             BOOL   a = 0 or 1
             STR    a = offset in the var region, b = UTF-8 length
             BYTES  a = offset in the var region, b = length
             NDARRAY a = offset of its meta in the var region, b = data bytes;
                    meta = shape (ndim x u64) + dtype.str (meta_len bytes),
                    then zero padding to 8, then the C-order data
    16+24n keys: every key's UTF-8 bytes, in entry order
           zero padding to a multiple of 8
    var    str / bytes / array items in entry order (array meta and data 8-aligned)

Accepted values and what comes back:

- ``bool`` (checked before ``int``), ``int`` in int64 range, ``float``, ``str``, ``bytes``
  come back as themselves; ``numpy`` bool/integer/float scalars come back as Python
  ``bool``/``int``/``float``;
- ``bytearray`` and ``memoryview`` are accepted as bytes and come back as ``bytes``;
- ``numpy.ndarray`` of any bool/integer/float/complex dtype (either byte order), any
  shape including 0-d and empty, comes back with the same dtype and shape (C order);
- objects exposing ``__dlpack__`` on the CPU (e.g. torch tensors) are converted with
  ``numpy.from_dlpack`` and come back as ndarrays.

Anything else (``None``, nested containers, object/str/void/datetime arrays, non-str or
empty keys, ints outside int64) raises :class:`InvalidArgumentError` naming the field.
A buffer that does not hold a valid encoding raises :class:`MsgDeserializeError`.
"""

from __future__ import annotations

import struct
from functools import lru_cache
from typing import Any

import numpy as np

from .api_error import InvalidArgumentError, MsgDeserializeError

__all__ = [
    "FlatDict",
    "Prepared",
    "decode",
    "decode_detached",
    "decode_many",
    "decode_trusted",
    "encode",
    "encode_fast",
    "encode_into",
    "encoded_size",
    "last_decoder",
    "prepare",
    "validate_flat_dict",
    "write",
]

FlatDict = dict  # dict[str, int | float | bool | str | bytes | np.ndarray]

MAGIC = 0x44584C46  # b"FLXD" read as a little-endian u32
VERSION = 1
HEADER_BYTES = 16
ENTRY_BYTES = 24
MAX_FIELDS = 0xFFFF
MAX_KEY_BYTES = 0xFFFF
MAX_NDIM = 64

TAG_INT = 1
TAG_FLOAT = 2
TAG_BOOL = 3
TAG_STR = 4
TAG_BYTES = 5
TAG_NDARRAY = 6

_INT64_MIN = -(1 << 63)
_INT64_MAX = (1 << 63) - 1
_KDLCPU = 1

_HEADER = struct.Struct("<IHHQ")
_F64_AT = struct.Struct("<d")
_ENTRY_FORMATS = {TAG_INT: "BBHIqQ", TAG_FLOAT: "BBHIdQ", TAG_BOOL: "BBHIqQ"}
_VAR_ENTRY_FORMAT = "BBHIqQ"

#: dtype.str -> dtype for every accepted array dtype (bool, ints, floats, complex,
#: both byte orders). One table for encoding checks and decoding lookups.
_DTYPES: dict[str, np.dtype] = {}
for _t in (
    np.bool_, np.int8, np.uint8, np.int16, np.uint16, np.int32, np.uint32, np.int64, np.uint64,
    np.float16, np.float32, np.float64, np.longdouble, np.complex64, np.complex128,
    np.clongdouble,
):  # fmt: skip
    for _order in "<>":
        _dt = np.dtype(_t).newbyteorder(_order)
        _DTYPES[_dt.str] = _dt
_DTYPES_BY_BYTES = {k.encode("ascii"): v for k, v in _DTYPES.items()}
_SHAPE_STRUCTS = [struct.Struct(f"<{n}Q") for n in range(MAX_NDIM + 1)]
_ALLOWED = "int, float, bool, str, bytes or a numeric/bool numpy array"


def _align8(x: int) -> int:
    return (x + 7) & ~7


def _bad(key: Any, problem: str, value: Any = None) -> InvalidArgumentError:
    return InvalidArgumentError(
        f"FlatDict field {key!r}: {problem}",
        details={"field": key, "type": type(value).__name__},
    )


def _check_key(key: Any) -> str:
    if not isinstance(key, str):
        raise InvalidArgumentError(
            f"FlatDict key {key!r} is a {type(key).__name__}; keys must be str",
            details={"field": repr(key), "type": type(key).__name__},
        )
    return str(key)


def _array_tag(key: str, arr: np.ndarray) -> np.ndarray:
    """Check an ndarray's dtype and make it C-contiguous."""
    if isinstance(arr, np.ma.MaskedArray):
        raise _bad(key, "masked arrays are not supported (the mask would be lost)", arr)
    if type(arr) is not np.ndarray:
        arr = np.asarray(arr)
    if arr.dtype.str not in _DTYPES:
        raise _bad(
            key,
            f"numpy dtype {arr.dtype} is not supported; arrays must be bool, integer, "
            "float or complex",
            arr,
        )
    if not arr.flags.c_contiguous:
        arr = np.ascontiguousarray(arr)
    return arr


def _normalise(key: str, value: Any) -> tuple[int, Any]:
    """Tag and canonical value of anything that is not exactly a fast-path type."""
    if isinstance(value, bool):
        return TAG_BOOL, bool(value)
    if isinstance(value, int):
        return TAG_INT, int(value)
    if isinstance(value, float):
        return TAG_FLOAT, float(value)
    if isinstance(value, str):
        return TAG_STR, str(value)
    if isinstance(value, bytes):
        return TAG_BYTES, bytes(value)
    if isinstance(value, bytearray):
        return TAG_BYTES, value
    if isinstance(value, memoryview):
        if value.c_contiguous:
            return TAG_BYTES, value.cast("B") if value.ndim != 1 or value.format != "B" else value
        return TAG_BYTES, value.tobytes()
    if isinstance(value, np.ndarray):
        return TAG_NDARRAY, value
    if isinstance(value, np.generic):
        if isinstance(value, np.bool_):
            return TAG_BOOL, bool(value)
        if isinstance(value, np.integer):
            return TAG_INT, int(value)
        if isinstance(value, np.floating) and value.dtype.itemsize <= 8:
            return TAG_FLOAT, float(value)
        raise _bad(
            key,
            f"numpy scalar {type(value).__name__} is not supported; wrap it with "
            "numpy.asarray() to store it as a 0-d array",
            value,
        )
    if value is None:
        raise _bad(key, f"None is not allowed (values must be {_ALLOWED})", value)
    if isinstance(value, (dict, list, tuple, set, frozenset)):
        raise _bad(
            key,
            f"nested {type(value).__name__} is not allowed; a FlatDict is flat "
            f"(values must be {_ALLOWED})",
            value,
        )
    if hasattr(type(value), "__dlpack__"):
        return TAG_NDARRAY, _from_dlpack(key, value)
    raise _bad(key, f"values of type {type(value).__name__} are not supported ({_ALLOWED})", value)


def _from_dlpack(key: str, value: Any) -> np.ndarray:
    device = getattr(value, "__dlpack_device__", None)
    if device is not None:
        try:
            dev_type = int(device()[0])
        except Exception as exc:  # noqa: BLE001 - any failure of a foreign object
            raise _bad(key, f"__dlpack_device__() failed: {exc}", value) from None
        if dev_type != _KDLCPU:
            raise _bad(
                key,
                f"{type(value).__name__} lives on DLPack device type {dev_type}, not the CPU; "
                "copy it to the CPU first (e.g. tensor.cpu())",
                value,
            )
    try:
        return np.from_dlpack(value)
    except Exception as exc:  # noqa: BLE001 - any failure of a foreign object
        raise _bad(
            key,
            f"cannot read {type(value).__name__} through DLPack ({type(exc).__name__}: {exc})",
            value,
        ) from None


_FAST_TAGS = {
    int: TAG_INT,
    float: TAG_FLOAT,
    bool: TAG_BOOL,
    str: TAG_STR,
    bytes: TAG_BYTES,
    np.ndarray: TAG_NDARRAY,
}


@lru_cache(maxsize=512)
def _layout_struct(tags: bytes, keys_len: int) -> struct.Struct:
    """Header + entries + keys + zero padding, packed by one ``pack_into`` call."""
    entries = "".join(_ENTRY_FORMATS.get(t, _VAR_ENTRY_FORMAT) for t in tags)
    fixed = HEADER_BYTES + ENTRY_BYTES * len(tags) + keys_len
    return struct.Struct(f"<IHHQ{entries}{keys_len}s{_align8(fixed) - fixed}x")


class Prepared:
    """A validated FlatDict, ready to be written (see :func:`prepare`).

    Attributes
    ----------
    size : int
        Exact number of bytes :func:`write` will write.
    """

    __slots__ = ("_args", "_copies", "_keys", "_struct", "_values", "size")

    def __init__(self, size, layout, args, copies, keys, values) -> None:
        self.size: int = size
        self._struct: struct.Struct = layout
        self._args: list = args
        self._copies: list = copies
        self._keys: list = keys
        self._values: list = values

    def fields(self) -> list[tuple[str, Any]]:
        """The fields as they will be stored (converted values, e.g. dlpack -> ndarray)."""
        return list(zip(self._keys, self._values))

    def __repr__(self) -> str:
        return f"Prepared(size={self.size}, fields={self._keys!r})"


def prepare(value: Any) -> Prepared:
    """Validate a FlatDict and compute its encoding; nothing is written yet.

    Parameters
    ----------
    value : dict
        The FlatDict.

    Returns
    -------
    Prepared
        Pass it to :func:`write`; ``.size`` is the exact encoded size.

    Raises
    ------
    InvalidArgumentError
        Naming the offending field (``details["field"]``) and its type.
    """
    if not isinstance(value, dict):
        raise InvalidArgumentError(
            f"a FlatDict must be a dict, got {type(value).__name__}",
            details={"field": None, "type": type(value).__name__},
        )
    n = len(value)
    if n > MAX_FIELDS:
        raise InvalidArgumentError(f"a FlatDict has at most {MAX_FIELDS} fields, got {n}")
    tags = bytearray()
    args: list = [MAGIC, VERSION, n, 0]
    copies: list = []  # (offset in the var region, bytes-like or uint8 ndarray)
    key_parts: list = []
    keys: list = []
    values: list = []
    cursor = 0  # end of the var region so far
    keys_len = 0
    for k, v in value.items():
        if type(k) is not str:
            k = _check_key(k)
        try:
            kb = k.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise _bad(k, f"the key is not valid UTF-8 text ({exc.reason})", k) from None
        klen = len(kb)
        if not klen:
            raise InvalidArgumentError(
                "FlatDict keys must not be empty", details={"field": "", "type": "str"}
            )
        if klen > MAX_KEY_BYTES:
            raise _bad(k, f"the key is {klen} bytes long; at most {MAX_KEY_BYTES} are allowed", k)
        tag = _FAST_TAGS.get(type(v))
        if tag is None:
            tag, v = _normalise(k, v)
        if tag == TAG_INT:
            if not _INT64_MIN <= v <= _INT64_MAX:
                raise _bad(k, f"int {v} does not fit in int64", v)
            args += (TAG_INT, 0, klen, 0, v, 0)
        elif tag == TAG_BYTES:
            size = len(v) if type(v) is not memoryview else v.nbytes
            args += (TAG_BYTES, 0, klen, 0, cursor, size)
            if size:
                copies.append((cursor, v))
            cursor += size
        elif tag == TAG_FLOAT:
            args += (TAG_FLOAT, 0, klen, 0, v, 0)
        elif tag == TAG_BOOL:
            args += (TAG_BOOL, 0, klen, 0, 1 if v else 0, 0)
        elif tag == TAG_STR:
            try:
                raw = v.encode("utf-8")
            except UnicodeEncodeError as exc:
                raise _bad(k, f"the str is not valid UTF-8 text ({exc.reason})", v) from None
            size = len(raw)
            args += (TAG_STR, 0, klen, 0, cursor, size)
            if size:
                copies.append((cursor, raw))
            cursor += size
        else:  # TAG_NDARRAY
            v = _array_tag(k, v)
            dstr = v.dtype.str.encode("ascii")
            ndim = v.ndim
            meta_start = _align8(cursor)
            meta_len = len(dstr)
            data_start = _align8(meta_start + 8 * ndim + meta_len)
            meta = b"".join(
                (
                    bytes(meta_start - cursor),
                    _SHAPE_STRUCTS[ndim].pack(*v.shape),
                    dstr,
                    bytes(data_start - meta_start - 8 * ndim - meta_len),
                )
            )
            nbytes = v.nbytes
            args += (TAG_NDARRAY, ndim, klen, meta_len, meta_start, nbytes)
            copies.append((cursor, meta))
            if nbytes:
                copies.append((data_start, v.reshape(-1).view(np.uint8)))
            cursor = data_start + nbytes
        tags.append(tag)
        key_parts.append(kb)
        keys_len += klen
        keys.append(k)
        values.append(v)
    layout = _layout_struct(bytes(tags), keys_len)
    total = layout.size + cursor
    args[3] = total
    args.append(b"".join(key_parts))
    return Prepared(total, layout, args, copies, keys, values)


def write(prepared: Prepared, buf: Any, offset: int = 0) -> int:
    """Write a prepared FlatDict into ``buf[offset : offset + prepared.size]``.

    Parameters
    ----------
    prepared : Prepared
        From :func:`prepare`.
    buf : numpy.ndarray | bytearray | memoryview
        A writable 1-D byte buffer (usually a ``uint8`` view of the pool).
    offset : int
        Where the encoding starts (keep it 8-aligned so array data stays aligned).

    Returns
    -------
    int
        Bytes written (``prepared.size``).

    Raises
    ------
    ValueError
        If the range does not fit in ``buf`` (a caller bug: nothing is written).
    """
    mv = memoryview(buf)
    if mv.ndim != 1 or mv.itemsize != 1:
        mv = mv.cast("B")
    size = prepared.size
    if offset < 0 or offset + size > mv.nbytes:
        raise ValueError(
            f"cannot write {size} bytes at offset {offset} into a buffer of {mv.nbytes} bytes"
        )
    layout = prepared._struct
    layout.pack_into(mv, offset, *prepared._args)
    base = offset + layout.size
    for rel, data in prepared._copies:
        start = base + rel
        mv[start : start + len(data)] = data
    return size


def encode_into(buf: Any, offset: int, prepared: Prepared) -> int:
    """Same as :func:`write` with the arguments in buffer-first order."""
    return write(prepared, buf, offset)


def encoded_size(value: Any) -> int:
    """Exact encoded size of a FlatDict (validates it)."""
    return prepare(value).size


def validate_flat_dict(value: Any) -> list[tuple[str, Any]]:
    """Validate a FlatDict without encoding it.

    Returns
    -------
    list of (str, value)
        The fields as they would be stored (numpy scalars as Python numbers,
        bytearray/memoryview as bytes-like, dlpack objects as ndarrays).

    Raises
    ------
    InvalidArgumentError
        Naming the offending field.
    """
    return prepare(value).fields()


def encode(value: Any) -> bytes:
    """A FlatDict's encoding as ``bytes`` (convenience for tests and small messages)."""
    prepared = prepare(value)
    out = bytearray(prepared.size)
    write(prepared, out, 0)
    return bytes(out)


# --------------------------------------------------------------------------- decode
@lru_cache(maxsize=256)
def _entries_struct(n: int) -> struct.Struct:
    return struct.Struct("<" + "BBHIqQ" * n)


def _corrupt(reason: str) -> MsgDeserializeError:
    return MsgDeserializeError(f"cannot decode FlatDict: {reason}")


def decode(buf: np.ndarray | bytes | bytearray | memoryview) -> dict:
    """Decode a FlatDict written by :func:`write`.

    Parameters
    ----------
    buf : numpy.ndarray (uint8, 1-D) | bytes | bytearray | memoryview
        Starts with an encoding; bytes after it are ignored.

    Returns
    -------
    dict
        The FlatDict. Arrays are zero-copy views of ``buf`` (read-only when ``buf`` is);
        ``bytes`` and ``str`` values are copies.

    Raises
    ------
    MsgDeserializeError
        If ``buf`` does not start with a complete, valid encoding.
    """
    if type(buf) is not np.ndarray:
        try:
            buf = np.frombuffer(buf, dtype=np.uint8)
        except (TypeError, ValueError) as exc:
            raise _corrupt(f"cannot read a {type(buf).__name__} as bytes ({exc})") from None
    elif buf.dtype != np.uint8 or buf.ndim != 1:
        raise _corrupt(f"expected a 1-D uint8 array, got {buf.dtype} with shape {buf.shape}")
    if not buf.flags.c_contiguous:
        buf = np.ascontiguousarray(buf)
    length = buf.shape[0]
    mv = memoryview(buf)
    out = _decode_fast(mv, buf, 0, length)
    if out is not None:
        return out
    return _decode_general(buf, mv, length)


def _decode_general(buf: np.ndarray, mv: memoryview, length: int) -> dict:
    """:func:`decode` of any encoding, with the precise error of a bad one."""
    if length < HEADER_BYTES:
        raise _corrupt(f"{length} bytes is shorter than the {HEADER_BYTES}-byte header")
    magic, version, n, total = _HEADER.unpack_from(mv, 0)
    if magic != MAGIC:
        raise _corrupt(f"bad magic 0x{magic:08x} (expected 0x{MAGIC:08x})")
    if version != VERSION:
        raise _corrupt(f"encoding version {version} is not supported (this fluxon reads {VERSION})")
    if total > length:
        raise _corrupt(f"the encoding is {total} bytes but only {length} are available")
    keys_at = HEADER_BYTES + ENTRY_BYTES * n
    if keys_at > total:
        raise _corrupt(f"{n} entries do not fit in {total} bytes")
    e = _entries_struct(n).unpack_from(mv, HEADER_BYTES)
    keys_len = sum(e[2::6])
    var = _align8(keys_at + keys_len)
    if var > total:
        raise _corrupt("the keys run past the end of the encoding")
    keys_raw = mv[keys_at : keys_at + keys_len].tobytes()
    try:
        keys_text = keys_raw.decode("utf-8")
        ascii_keys = len(keys_text) == keys_len
        out: dict = {}
        kp = 0
        for i in range(0, 6 * n, 6):
            tag = e[i]
            klen = e[i + 2]
            if ascii_keys:
                key = keys_text[kp : kp + klen]
            else:
                key = keys_raw[kp : kp + klen].decode("utf-8")
            kp += klen
            if not key or key in out:
                raise _corrupt(f"empty or repeated key {key!r}")
            a = e[i + 4]
            if tag == TAG_INT:
                out[key] = a
                continue
            if tag == TAG_FLOAT:
                out[key] = _F64_AT.unpack_from(mv, HEADER_BYTES + 4 * i + 8)[0]
                continue
            if tag == TAG_BOOL:
                if a != 0 and a != 1:
                    raise _corrupt(f"field {key!r}: bool word {a}")
                out[key] = a == 1
                continue
            b = e[i + 5]
            start = var + a
            if tag == TAG_BYTES or tag == TAG_STR:
                end = start + b
                if a < 0 or end > total:
                    raise _corrupt(f"field {key!r}: value runs past the end of the encoding")
                out[key] = (
                    mv[start:end].tobytes() if tag == TAG_BYTES else str(mv[start:end], "utf-8")
                )
                continue
            if tag != TAG_NDARRAY:
                raise _corrupt(f"field {key!r}: unknown tag {tag}")
            ndim = e[i + 1]
            meta_len = e[i + 3]
            shape_end = start + 8 * ndim
            meta_end = shape_end + meta_len
            if a < 0 or ndim > MAX_NDIM or meta_len > 8 or meta_end > total:
                raise _corrupt(f"field {key!r}: bad array header")
            dtype = _DTYPES_BY_BYTES.get(mv[shape_end:meta_end].tobytes())
            if dtype is None:
                raise _corrupt(f"field {key!r}: unsupported dtype code")
            shape = _SHAPE_STRUCTS[ndim].unpack_from(mv, start)
            data = _align8(meta_end)
            count = 1
            for dim in shape:
                count *= dim
            if data + b > total or count * dtype.itemsize != b:
                raise _corrupt(f"field {key!r}: array data does not match its shape and dtype")
            out[key] = buf[data : data + b].view(dtype).reshape(shape)
    except (UnicodeDecodeError, ValueError, TypeError, OverflowError, struct.error) as exc:
        raise _corrupt(f"{type(exc).__name__}: {exc}") from None
    _learn_decoder(n, e, keys_raw)
    return out


# --------------------------------------------------------------------------- fast path
# A stream of messages usually repeats one shape: the same keys in the same order with
# the same value types (``{"seq": int, "t": int, "payload": bytes}``). For a shape seen
# FAST_AFTER times the codec compiles a function specialised to it: encoding is one
# ``struct.pack_into`` of header, entries, keys, padding and every str/bytes value;
# decoding is one ``unpack_from`` of header, entries and keys, a comparison of the
# constant parts (magic, version, field count, tags, key lengths, keys) with the
# shape's, and the value fields. The bytes written and the dicts returned are exactly
# those of the general path; anything unusual (other types, an int outside int64, a
# constant part that differs, a bad offset, any exception) makes the specialised
# function decline (``None``) and the general path, with its precise errors, decides.
# Generated code only ever names fields through bound constants (K0, C1, ...): keys
# never become source text.

#: How many times a shape is seen before its specialised encoder/decoder is compiled.
FAST_AFTER = 2
#: Most shapes compiled for each direction (later shapes use the general path).
MAX_FAST_SHAPES = 256
#: Shapes with more fields than this use the general path.
MAX_FAST_FIELDS = 64
#: Most per-length structs cached per encoder shape (str/bytes lengths vary).
_MAX_LENGTH_STRUCTS = 64
#: Encodings at least this large copy their str/bytes values by slice assignment.
_BIG_VALUE_BYTES = 32 << 10

_SIMPLE_TYPES = {int: TAG_INT, float: TAG_FLOAT, bool: TAG_BOOL, str: TAG_STR, bytes: TAG_BYTES}
_ENTRY_HEAD = struct.Struct("<BBHI")
_HEAD_WORD = struct.Struct("<Q")
_BOOL_WORDS = {0: False, 1: True}

_enc_by_keys: dict[tuple, Any] = {}  # keys -> encoder of the types last seen with them
_enc_by_shape: dict[tuple, Any] = {}  # (keys, types) -> encoder
_enc_seen: dict[tuple, int] = {}
_dec_by_head: dict[int, list] = {}  # first header word -> decoders of that field count
_dec_by_shape: dict[tuple, Any] = {}
_dec_seen: dict[tuple, int] = {}
_dec_last: list = [None]  # the decoder that matched last
_enc_last: list = [None]  # the encoder that took the last message


class _OutOfBounds(Exception):
    """A trusted decoder's encoding has a value out of its bounds (see decode_trusted)."""


class _Fmt:
    """Builds a struct format whose constant runs are merged into ``Ns`` items."""

    def __init__(self) -> None:
        self.fmt: list[str] = []
        self.args: list[str] = []  # source expression of each item
        self.consts: dict[str, bytes] = {}
        self._pending = bytearray()

    def const(self, raw: bytes) -> None:
        self._pending += raw

    def var(self, code: str, expr: str) -> None:
        self.flush()
        self.fmt.append(code)
        self.args.append(expr)

    def flush(self) -> None:
        if self._pending:
            name = f"C{len(self.consts)}"
            self.consts[name] = bytes(self._pending)
            self.fmt.append(f"{len(self._pending)}s")
            self.args.append(name)
            self._pending = bytearray()


def _compile(source: str, name: str, namespace: dict) -> Any:
    exec(compile(source, f"<fluxon.codec {name}>", "exec"), namespace)  # noqa: S102
    return namespace[name]


def _build_encoder(keys: tuple, types: tuple) -> Any:
    """The specialised encoder of one shape (see :func:`encode_fast`), or None."""
    kbs = []
    for k in keys:
        try:
            kb = k.encode("utf-8")
        except UnicodeEncodeError:
            return None
        if not kb or len(kb) > MAX_KEY_BYTES:
            return None
        kbs.append(kb)
    n = len(keys)
    keys_len = sum(len(kb) for kb in kbs)
    fixed_raw = HEADER_BYTES + ENTRY_BYTES * n + keys_len
    fixed = _align8(fixed_raw)
    f = _Fmt()
    f.const(struct.pack("<IHH", MAGIC, VERSION, n))
    f.var("Q", "total")
    names = [f"v{i}" for i in range(n)]
    # Checks its own shape (the caller may try it on any value): a dict with these keys
    # in this order (``!=`` on the same str object is a pointer compare).
    key_checks = " or ".join(f"k{i} != K{i}" for i in range(n))
    body = [
        f"    if type(value) is not dict or len(value) != {n}:\n        return None",
        f"    {', '.join(f'k{i}' for i in range(n))}, = value",
        f"    if {key_checks}:\n        return None",
        f"    {', '.join(names)}, = value.values()",
    ]
    checks = " or ".join(f"type(v{i}) is not T{i}" for i in range(n))
    body.append(f"    if {checks}:\n        return None")
    var_items: list[tuple[str, str]] = []  # (value expr, length name)
    cursor = "0"
    for i, (kb, t) in enumerate(zip(kbs, types)):
        tag = _SIMPLE_TYPES[t]
        f.const(_ENTRY_HEAD.pack(tag, 0, len(kb), 0))
        if tag == TAG_INT:
            body.append(f"    if not {_INT64_MIN} <= v{i} <= {_INT64_MAX}:\n        return None")
            f.var("q", f"v{i}")
            f.const(bytes(8))
        elif tag == TAG_FLOAT:
            f.var("d", f"v{i}")
            f.const(bytes(8))
        elif tag == TAG_BOOL:
            f.var("q", f"v{i}")
            f.const(bytes(8))
        else:
            src = f"v{i}"
            if tag == TAG_STR:
                body.append(f"    r{i} = v{i}.encode('utf-8')")
                src = f"r{i}"
            body.append(f"    n{i} = len({src})")
            f.var("q", cursor)
            f.var("Q", f"n{i}")
            body.append(f"    c{i} = {cursor} + n{i}")
            cursor = f"c{i}"
            var_items.append((src, f"n{i}"))
    f.const(b"".join(kbs))
    f.const(bytes(fixed - fixed_raw))
    f.flush()
    fixed_fmt = "<" + "".join(f.fmt)
    namespace: dict[str, Any] = dict(f.consts)
    namespace.update({f"T{i}": t for i, t in enumerate(types)})
    namespace.update({f"K{i}": k for i, k in enumerate(keys)})
    body.append(f"    total = {fixed} + {cursor}")
    body.append("    if total > limit:\n        return -total")
    args = ", ".join(f.args + [src for src, _ in var_items])
    if var_items:
        # Large str/bytes values: slice copies beat struct's "Ns" (which also fills).
        namespace.update(FIXED=struct.Struct(fixed_fmt), BIG=_pack_big)
        body.append(f"    if total >= {_BIG_VALUE_BYTES}:")
        body.append(
            f"        return BIG(FIXED, dst, offset, ({', '.join(f.args)},), "
            f"({', '.join(src for src, _ in var_items)},), total)"
        )
        lens = ", ".join(ln for _, ln in var_items)
        lens_key = lens if len(var_items) == 1 else f"({lens},)"
        structs: dict[Any, struct.Struct] = {}

        def make(lengths: Any) -> struct.Struct:
            seq = lengths if isinstance(lengths, tuple) else (lengths,)
            made = struct.Struct(fixed_fmt + "".join(f"{ln}s" for ln in seq))
            if len(structs) < _MAX_LENGTH_STRUCTS:
                structs[lengths] = made
            return made

        namespace.update(SC=structs, MAKE=make)
        body.append(f"    S = SC.get({lens_key})")
        body.append(f"    if S is None:\n        S = MAKE({lens_key})")
    else:
        namespace["S"] = struct.Struct(fixed_fmt)
    body.append(f"    S.pack_into(dst, offset, {args})")
    body.append("    return total")
    source = "def encode(value, dst, offset, limit):\n" + "\n".join(body) + "\n"
    return _compile(source, "encode", namespace)


def _pack_big(
    fixed: struct.Struct, dst: Any, offset: int, args: tuple, items: tuple, total: int
) -> int:
    """Write a large encoding: the fixed part with ``fixed``, then each value by slice copy."""
    fixed.pack_into(dst, offset, *args)
    mv = memoryview(dst)
    if mv.ndim != 1 or mv.itemsize != 1:
        mv = mv.cast("B")
    pos = offset + fixed.size
    for item in items:
        end = pos + len(item)
        mv[pos:end] = item
        pos = end
    return total


def _learn_encoder(value: dict, keys: tuple) -> Any:
    """Count ``value``'s shape; the shape's encoder once compiled, else None."""
    types = tuple(map(type, value.values()))
    shape = (keys, types)
    enc = _enc_by_shape.get(shape)
    if enc is None:
        if (
            len(_enc_by_shape) >= MAX_FAST_SHAPES
            or not 0 < len(keys) <= MAX_FAST_FIELDS
            or any(t not in _SIMPLE_TYPES for t in types)
            or any(type(k) is not str for k in keys)
        ):
            return None
        seen = _enc_seen.get(shape, 0) + 1
        if seen < FAST_AFTER:
            if len(_enc_seen) > 16 * MAX_FAST_SHAPES:
                _enc_seen.clear()
            _enc_seen[shape] = seen
            return None
        enc = _build_encoder(keys, types)
        if enc is None:
            return None
        _enc_by_shape[shape] = enc
        _enc_seen.pop(shape, None)
    _enc_by_keys[keys] = enc
    return enc


def encode_fast(value: Any, dst: Any, offset: int, limit: int) -> int | None:
    """Encode ``value`` straight into ``dst`` if its shape has a specialised encoder.

    The hot-path companion of :func:`prepare` + :func:`write`: same bytes, a fraction of
    the cost, for dicts whose keys, key order and value types (exactly ``int``,
    ``float``, ``bool``, ``str``, ``bytes``) repeat an earlier message's. Never raises
    for a bad value: it declines, and :func:`prepare` reports the problem.

    Parameters
    ----------
    value : Any
        The candidate FlatDict.
    dst : numpy.ndarray | bytearray | memoryview
        Writable byte buffer holding at least ``offset + limit`` bytes.
    offset : int
        Where the encoding starts (8-aligned keeps array data aligned).
    limit : int
        Most bytes that may be written.

    Returns
    -------
    int or None
        The encoded size when written; minus the encoded size when it exceeds ``limit``
        (nothing written); ``None`` when there is no fast path for ``value`` (use
        :func:`prepare` and :func:`write`).
    """
    last = _enc_last[0]
    if last is not None:  # most messages repeat the last one's shape
        try:
            got = last(value, dst, offset, limit)
        except Exception:  # noqa: BLE001 - e.g. a str that is not UTF-8: general path
            return None
        if got is not None:
            return got
    if type(value) is not dict:
        return None
    keys = tuple(value)
    enc = _enc_by_keys.get(keys)
    if enc is not None and enc is not last:
        try:
            got = enc(value, dst, offset, limit)
        except Exception:  # noqa: BLE001 - general path
            return None
        if got is not None:
            _enc_last[0] = enc
            return got
    enc2 = _learn_encoder(value, keys)
    if enc2 is None or enc2 is enc or enc2 is last:
        return None
    try:
        got = enc2(value, dst, offset, limit)
    except Exception:  # noqa: BLE001 - general path
        return None
    if got is not None:
        _enc_last[0] = enc2
    return got


def _fast_array(
    mv: memoryview, buf: Any, off: int, start: int, ndim: int, meta_len: int, nbytes: int,
    total: int,
) -> Any:  # fmt: skip
    """An array field for a specialised decoder (``start`` relative to ``off``), or None."""
    shape_end = start + 8 * ndim
    meta_end = shape_end + meta_len
    if meta_end > total:
        return None
    dtype = _DTYPES_BY_BYTES.get(mv[off + shape_end : off + meta_end].tobytes())
    if dtype is None:
        return None
    shape = _SHAPE_STRUCTS[ndim].unpack_from(mv, off + start)
    data = _align8(meta_end)
    count = 1
    for dim in shape:
        count *= dim
    if data + nbytes > total or count * dtype.itemsize != nbytes:
        return None
    return buf[off + data : off + data + nbytes].view(dtype).reshape(shape)


def _build_decoder(n: int, heads: tuple, keys_raw: bytes) -> Any:
    """The specialised decoder of one encoded shape, or None."""
    keys = []
    kp = 0
    for _tag, _ndim, klen, _meta in heads:
        try:
            keys.append(keys_raw[kp : kp + klen].decode("utf-8"))
        except UnicodeDecodeError:
            return None
        kp += klen
    if len(set(keys)) != n or not all(keys):
        return None
    keys_len = len(keys_raw)
    fixed_raw = HEADER_BYTES + ENTRY_BYTES * n + keys_len
    fixed = _align8(fixed_raw)
    f = _Fmt()
    f.const(struct.pack("<IHH", MAGIC, VERSION, n))
    f.var("Q", "total")
    vals = []  # per field: ("u", index) | ("code", name)
    body: list[str] = []
    for i, (tag, ndim, klen, meta_len) in enumerate(heads):
        f.const(_ENTRY_HEAD.pack(tag, ndim, klen, meta_len))
        if tag in (TAG_INT, TAG_FLOAT, TAG_BOOL):
            f.var("d" if tag == TAG_FLOAT else "q", f"a{i}")
            f.const(bytes(8))
        elif tag in (TAG_STR, TAG_BYTES, TAG_NDARRAY):
            if tag == TAG_NDARRAY and (ndim > MAX_NDIM or meta_len > 8):
                return None
            f.var("q", f"a{i}")
            f.var("Q", f"b{i}")
        else:
            return None
    f.const(keys_raw)
    f.flush()
    fmt = "<" + "".join(f.fmt)  # the zero padding after the keys is not read
    # Unpack every item into a local: constant runs as c0, c1, ... (compared with the
    # shape's C0, C1, ...), values as total, a0, b0, ... The trusted variant skips the
    # constant runs (its caller compared them, see _const_words).
    targets = [f"c{name[1:]}" if name in f.consts else name for name in f.args]
    checks = " or ".join(f"c{name[1:]} != {name}" for name in f.consts)
    variables = [name for name in f.args if name not in f.consts]
    trusted_fmt = "<" + "".join(
        f"{len(f.consts[name])}x" if name in f.consts else code for name, code in zip(f.args, f.fmt)
    )
    body.append(f"    if length < {fixed}:\n        return None")
    body.append(f"    {', '.join(targets)}, = S.unpack_from(mv, off)")
    body.append(f"    if {checks}:\n        return None")
    checked_head = len(body)
    body.append(f"    if total > length or total < {fixed}:\n        return None")
    for i, (tag, ndim, _klen, meta_len) in enumerate(heads):
        a = f"a{i}"
        if tag in (TAG_INT, TAG_FLOAT):
            vals.append(a)
            continue
        if tag == TAG_BOOL:
            body.append(f"    x{i} = BOOL.get({a})")
            body.append(f"    if x{i} is None:\n        return None")
            vals.append(f"x{i}")
            continue
        b = f"b{i}"
        body.append(f"    if {a} < 0:\n        return None")
        body.append(f"    s{i} = {a}")
        if tag == TAG_NDARRAY:
            body.append(
                f"    x{i} = ARRAY(mv, buf, off, {fixed} + s{i}, {ndim}, {meta_len}, {b}, total)"
            )
            body.append(f"    if x{i} is None:\n        return None")
            vals.append(f"x{i}")
            continue
        body.append(f"    s{i} += {fixed}")
        body.append(f"    e{i} = s{i} + {b}")
        body.append(f"    if e{i} > total:\n        return None")
        if tag == TAG_BYTES:
            vals.append(f"mv[off + s{i} : off + e{i}].tobytes()")
        else:
            vals.append(f"str(mv[off + s{i} : off + e{i}], 'utf-8')")
    items = ", ".join(f"K{i}: {v}" for i, v in enumerate(vals))
    body.append(f"    return {{{items}}}")
    namespace: dict[str, Any] = dict(f.consts)
    namespace.update({f"K{i}": k for i, k in enumerate(keys)})
    namespace.update(S=struct.Struct(fmt), BOOL=_BOOL_WORDS, ARRAY=_fast_array)
    source = "def decode(mv, buf, off, length):\n" + "\n".join(body) + "\n"
    dec = _compile(source, "decode", namespace)
    dec.has_arrays = any(tag == TAG_NDARRAY for tag, _d, _k, _m in heads)
    trusted_body = [
        f"    if length < {fixed}:\n        return None",
        f"    {', '.join(variables)}, = T.unpack_from(mv, off)",
        *body[checked_head:],
    ]
    # It raises instead of returning None: decode_trusted builds its list without a check.
    trusted_body = [line.replace("return None", "raise OUT") for line in trusted_body]
    namespace.update(T=struct.Struct(trusted_fmt), OUT=_OutOfBounds)
    source = "def trusted(mv, buf, off, length):\n" + "\n".join(trusted_body) + "\n"
    dec.trusted = _compile(source, "trusted", namespace)
    dec.fixed = fixed
    dec.const_words = _const_words(f)
    return dec


def _const_words(f: _Fmt) -> np.ndarray:
    """The constant runs of a decoder's format as 8-byte words: ``uint64[3, m]`` with
    rows ``index, value, mask`` (word ``index`` of an encoding must equal ``value`` in
    the bits of ``mask``). Every run starts 8-aligned (values are 8-byte words at
    8-aligned offsets); the last, the keys, may end inside a word."""
    words = []
    pos = 0
    for name in f.args:
        if name not in f.consts:
            pos += 8  # "q", "Q" or "d"
            continue
        raw = f.consts[name]
        for start in range(0, len(raw), 8):
            chunk = raw[start : start + 8]
            mask = (1 << (8 * len(chunk))) - 1
            words.append(((pos + start) // 8, int.from_bytes(chunk, "little"), mask))
        pos += len(raw)
    return np.array(words, dtype=np.uint64).T.copy()


def _learn_decoder(n: int, e: tuple, keys_raw: bytes) -> None:
    """Count a shape the general decoder just read; compile its decoder when due."""
    if len(_dec_by_shape) >= MAX_FAST_SHAPES or not 0 < n <= MAX_FAST_FIELDS:
        return
    heads = tuple(zip(e[0::6], e[1::6], e[2::6], e[3::6]))
    shape = (n, heads, keys_raw)
    if shape in _dec_by_shape:
        return
    seen = _dec_seen.get(shape, 0) + 1
    if seen < FAST_AFTER:
        if len(_dec_seen) > 16 * MAX_FAST_SHAPES:
            _dec_seen.clear()
        _dec_seen[shape] = seen
        return
    _dec_seen.pop(shape, None)
    dec = _build_decoder(n, heads, keys_raw)
    if dec is None:
        return
    _dec_by_shape[shape] = dec
    head = MAGIC | (VERSION << 32) | (n << 48)
    _dec_by_head.setdefault(head, []).append(dec)
    _dec_last[0] = dec


def _forget_shapes() -> None:
    """Drop every learnt shape (tests)."""
    for table in (_enc_by_keys, _enc_by_shape, _enc_seen, _dec_by_head, _dec_by_shape, _dec_seen):
        table.clear()
    _dec_last[0] = _enc_last[0] = None


def _decode_fast(mv: memoryview, buf: Any, off: int, length: int) -> dict | None:
    """Decode with a specialised decoder (the last one that matched first), or None."""
    dec = _dec_last[0]
    if dec is not None:
        try:
            out = dec(mv, buf, off, length)
        except Exception:  # noqa: BLE001 - the general path decides (and names the error)
            out = None
        if out is not None:
            return out
    if length < 8:
        return None
    for other in _dec_by_head.get(_HEAD_WORD.unpack_from(mv, off)[0], ()):
        if other is dec:
            continue
        try:
            out = other(mv, buf, off, length)
        except Exception:  # noqa: BLE001 - as above
            continue
        if out is not None:
            _dec_last[0] = other
            return out
    return None


def decode_detached(mv: memoryview, offset: int, length: int) -> dict | None:
    """Decode in place when the result holds no views of ``mv`` (no ndarray field).

    For a large message in shared memory that is about to be freed: its ``bytes`` and
    ``str`` values are copied out once, with no private copy of the whole encoding
    first. Only shapes with a specialised decoder qualify.

    Parameters
    ----------
    mv : memoryview
        1-D byte view holding the encoding at ``offset``.
    offset, length : int
        Where the encoding starts and how many bytes it may use.

    Returns
    -------
    dict or None
        The FlatDict, or None (the caller copies the encoding out and uses
        :func:`decode`): no array-free specialised decoder matched.
    """
    if length < 8:
        return None
    for dec in _dec_by_head.get(_HEAD_WORD.unpack_from(mv, offset)[0], ()):
        if dec.has_arrays:
            continue
        try:
            out = dec(mv, None, offset, length)
        except Exception:  # noqa: BLE001 - the caller's general path decides
            continue
        if out is not None:
            return out
    return None


def last_decoder() -> Any:
    """The specialised decoder that matched last, or None.

    Its ``const_words`` (``uint64[3, m]``, see
    :func:`fluxon_kernels.codec.match_const_words`) and ``fixed`` describe its shape's
    constant bytes; :func:`decode_trusted` decodes encodings checked against them.
    """
    return _dec_last[0]


def decode_trusted(dec: Any, buf: np.ndarray, offsets: Any, lengths: list) -> list | None:
    """Decode encodings whose constant words the caller found equal to ``dec``'s.

    The fast half of :func:`decode_many` for a batch of one shape: ``dec`` (from
    :func:`last_decoder`) reads only the value words and still checks every offset and
    length against the encoding's bounds. Returns None, not an error, if any encoding
    fails that: :func:`decode_many` then decodes (and names the problem).
    """
    mv = memoryview(buf)
    trusted = dec.trusted
    try:
        return [trusted(mv, buf, off, ln) for off, ln in zip(offsets, lengths)]
    except Exception:  # noqa: BLE001 - _OutOfBounds, a str that is not UTF-8: general path
        return None


def decode_many(buf: np.ndarray, offsets: list, lengths: list) -> list:
    """Decode ``len(offsets)`` encodings laid out in one ``uint8`` buffer.

    Parameters
    ----------
    buf : numpy.ndarray
        1-D C-contiguous ``uint8`` array; arrays in the results are views of it.
    offsets, lengths : list of int
        Where each encoding starts (8-aligned) and how many bytes it may use.

    Returns
    -------
    list of dict
        The FlatDicts, in order.

    Raises
    ------
    MsgDeserializeError
        If any of them does not decode (decode them one by one to skip it).
    """
    mv = memoryview(buf)
    dec = _dec_last[0]
    if dec is not None and len(lengths) == 1:  # one message: no loop to set up
        try:
            got = dec(mv, buf, offsets[0], lengths[0])
        except Exception:  # noqa: BLE001 - the general path decides
            got = None
        if got is not None:
            return [got]
    out = []
    append = out.append
    for off, ln in zip(offsets, lengths):
        got = None
        if dec is not None:
            try:
                got = dec(mv, buf, off, ln)
            except Exception:  # noqa: BLE001 - the general path decides
                got = None
        if got is None:
            got = _decode_fast(mv, buf, off, ln)
            if got is None:
                got = decode(buf[off : off + ln])
            dec = _dec_last[0]
        append(got)
    return out
