"""Hostile input (hypothesis): FlatDicts, keys, chan_configs, config files, pool files,
hand-edited ``shared.json``.

Every call returns a ``Result``: either it works (and then exactly: a message or value
comes back equal to what was sent) or it fails with a named ``ApiError`` and changes
nothing. Nothing raises, hangs or crashes, and a sentinel channel and KV key that
live beside the fuzzing are intact afterwards. Damaged pool files run in a child
process (``hostile_pool_fuzz.py``) so that a crash would be reported, not suffered.

``FLUXON_FAULT_EXAMPLES`` scales the number of examples (default 1.0; ``make soak``
uses 10).
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import numpy as np
import orjson
import pytest
import yaml
from conftest import FAULT_EXAMPLES
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from fluxon.api_error import (
    ApiError,
    InvalidArgumentError,
    InvalidConfigurationError,
    KeyNotFoundError,
    MessageConsumptionNoNewMessageError,
)
from fluxon.api_ext_chan import ChanRole, ChanType, new_or_bind_with_unique_key
from fluxon.config import FluxonKvClientConfig
from fluxon.kvclient import new_store

SCALE = FAULT_EXAMPLES
#: Per-test time limit: the work grows with the example counts (the default run takes
#: well under a minute per test on two cores; the limit only catches hangs).
TIME_LIMIT_S = int(300 * max(1.0, SCALE / 2))

pytestmark = pytest.mark.timeout(TIME_LIMIT_S)
_HERE = os.path.dirname(os.path.abspath(__file__))


def _settings(n: int):
    return settings(
        max_examples=max(5, int(n * SCALE)),
        deadline=None,
        database=None,
        suppress_health_check=list(HealthCheck),
    )


# --------------------------------------------------------------------------- values
_DTYPES = ["bool", "int8", "uint8", "int16", "int32", "int64", "uint64", "float16", "float32",
           "float64", "complex64", "complex128"]  # fmt: skip
_BAD_DTYPES = ["object", "U3", "S2", "datetime64[s]", "timedelta64[ms]", [("x", "i4")]]


@st.composite
def _arrays(draw):
    dtype = np.dtype(draw(st.sampled_from(_DTYPES)))
    shape = tuple(draw(st.lists(st.integers(0, 5), max_size=3)))
    n = int(np.prod(shape)) if shape else 1
    raw = draw(st.binary(min_size=n * dtype.itemsize, max_size=n * dtype.itemsize))
    arr = np.frombuffer(raw, dtype=dtype).reshape(shape).copy() if n else np.zeros(shape, dtype)
    if draw(st.booleans()) and arr.ndim == 1 and arr.size > 2:
        arr = arr[::2]  # not contiguous
    return arr


_GOOD_VALUES = st.one_of(
    st.integers(-(1 << 63), (1 << 63) - 1),
    st.floats(allow_nan=True, allow_infinity=True),
    st.booleans(),
    st.text(max_size=300),
    st.binary(max_size=3000),
    _arrays(),
)
_BAD_VALUES = st.one_of(
    st.none(),
    st.integers(1 << 63, 1 << 80),
    st.integers(-(1 << 80), -(1 << 63) - 1),
    st.lists(st.integers(), max_size=3),
    st.dictionaries(st.text(max_size=3), st.integers(), max_size=2),
    st.tuples(st.integers()),
    st.sets(st.integers(), max_size=2),
    st.sampled_from(_BAD_DTYPES).map(lambda dt: np.zeros(2, dtype=dt)),
    st.builds(object),
    st.text(alphabet=st.characters(categories=["Cs"]), min_size=1, max_size=3),
)
_GOOD_KEYS = st.text(alphabet=st.characters(blacklist_categories=["Cs"]), min_size=1, max_size=40)
_BAD_KEYS = st.one_of(
    st.just(""),
    st.integers(),
    st.binary(max_size=4),
    st.none(),
    st.text(alphabet=st.characters(categories=["Cs"]), min_size=1, max_size=2),
)


@st.composite
def _flatdicts(draw):
    """(value, expected): expected is "ok", "error" or "either"."""
    if draw(st.integers(0, 9)) == 0:
        junk = st.one_of(st.none(), st.lists(st.integers()), st.text(), st.integers())
        return draw(junk), "error"
    good = draw(st.dictionaries(_GOOD_KEYS, _GOOD_VALUES, max_size=6))
    kind = draw(st.sampled_from(["good", "good", "bad_value", "bad_key"]))
    if kind == "bad_value":
        good[draw(_GOOD_KEYS)] = draw(_BAD_VALUES)
        return good, "error"
    if kind == "bad_key":
        good[draw(_BAD_KEYS)] = draw(_GOOD_VALUES)
        return good, "error"
    return good, "ok"


def _same(a, b) -> bool:
    if isinstance(a, np.ndarray):
        return (
            isinstance(b, np.ndarray)
            and a.dtype == b.dtype
            and a.shape == b.shape
            and a.tobytes() == np.ascontiguousarray(b).tobytes()
        )
    if isinstance(a, float):
        return isinstance(b, float) and (a == b or (math.isnan(a) and math.isnan(b)))
    if isinstance(a, bool):
        return b is a
    return type(a) is type(b) and a == b


def _same_dict(sent: dict, got: dict) -> bool:
    return sent.keys() == got.keys() and all(_same(sent[k], got[k]) for k in sent)


@pytest.fixture
def hostile_cluster(make_cluster):
    return make_cluster(with_master=False)


@pytest.fixture
def sentinel(hostile_cluster, stores, key):
    """A channel holding one message and a KV key that no fuzzing may disturb."""
    store = stores(hostile_cluster, "sentinel")
    producer = new_or_bind_with_unique_key(
        store, {"capacity": 4}, key + "-sentinel", ChanType.MPSC, ChanRole.PRODUCER
    ).unwrap()
    blob = np.arange(5000, dtype=np.float64)
    assert producer.put_data({"sentinel": 1, "blob": blob}).unwrap()
    store.put_blocking("sentinel-key", {"v": b"\x01" * 4000}).unwrap()

    def check() -> None:
        consumer = new_or_bind_with_unique_key(
            store, {}, key + "-sentinel", ChanType.MPSC, ChanRole.CONSUMER
        ).unwrap()
        (msg,) = consumer.get_data(try_time=5).unwrap()
        assert msg["sentinel"] == 1 and np.array_equal(msg["blob"], blob)
        consumer.close()
        assert store.get_blocking("sentinel-key").unwrap().access() == {"v": b"\x01" * 4000}

    return check


def test_hostile_flatdicts_through_a_channel_and_the_kv_store(
    hostile_cluster, stores, key, sentinel
):
    store = stores(hostile_cluster)
    producer = new_or_bind_with_unique_key(
        store, {"capacity": 64}, key, ChanType.MPMC, ChanRole.PRODUCER
    ).unwrap()
    consumer = new_or_bind_with_unique_key(store, {}, key, ChanType.MPMC, ChanRole.CONSUMER)
    consumer = consumer.unwrap()
    counts = {"ok": 0, "error": 0}

    @_settings(250)
    @given(_flatdicts())
    def check(case):
        value, expected = case
        res = producer.put_data(value, try_time=1.0)
        if res.is_ok():
            assert res.unwrap() is True
            assert expected != "error", f"accepted {value!r}"
            (got,) = consumer.get_data(try_time=5).unwrap()
            assert _same_dict(value, got), (value, got)
            counts["ok"] += 1
        else:
            err = res.unwrap_error()
            assert isinstance(err, InvalidArgumentError), err
            assert expected != "ok", f"refused {value!r}: {err}"
            res = consumer.get_data(try_time=0)  # nothing was written
            assert isinstance(res.unwrap_error(), MessageConsumptionNoNewMessageError)
            counts["error"] += 1
        kv = store.put_blocking("fuzz-value", value)
        if kv.is_ok():
            assert expected != "error"
            assert _same_dict(value, store.get_blocking("fuzz-value").unwrap().access())
        else:
            assert isinstance(kv.unwrap_error(), InvalidArgumentError), kv.unwrap_error()
            assert expected != "ok"

    check()
    print("flatdicts:", counts)
    assert counts["ok"] and counts["error"]
    sentinel()


@_settings(150)
@given(key=st.one_of(_GOOD_KEYS, _BAD_KEYS, st.text(min_size=200, max_size=400)))
def _kv_key_case(store, key):
    res = store.put_blocking(key, {"k": 1})
    if res.is_ok():
        assert store.get_blocking(key).unwrap().access() == {"k": 1}
        assert store.is_exist(key).unwrap() is True
        store.remove(key).unwrap()
        assert isinstance(store.get_blocking(key).unwrap_error(), KeyNotFoundError)
    else:
        assert isinstance(res.unwrap_error(), InvalidArgumentError), res.unwrap_error()
        for call in (store.get_blocking, store.remove, store.is_exist, store.get_size):
            assert isinstance(call(key).unwrap_error(), InvalidArgumentError)


def test_hostile_kv_keys(hostile_cluster, stores, sentinel):
    _kv_key_case(stores(hostile_cluster))
    sentinel()


_CONFIG_VALUES = st.one_of(
    st.none(),
    st.integers(-5, 5),
    st.integers(-(1 << 70), 1 << 70),
    st.floats(),
    st.booleans(),
    st.text(max_size=8),
    st.lists(st.integers(), max_size=2),
    st.dictionaries(st.text(max_size=4), st.integers(), max_size=2),
)


def _mostly(draw, good, bad, odds_bad: int = 4):
    """``good`` most of the time, ``bad`` one time in ``odds_bad``."""
    # hypothesis leans towards small integers: the rare branch is the largest one
    return draw(bad) if draw(st.integers(0, odds_bad - 1)) == odds_bad - 1 else draw(good)


@st.composite
def _chan_args(draw):
    fields = st.dictionaries(
        st.one_of(
            st.sampled_from(["capacity", "ttl_seconds", "weight", "payload_backend"]),
            st.text(max_size=6),
        ),
        st.one_of(st.integers(1, 64), _CONFIG_VALUES),
        max_size=4,
    )
    known = st.fixed_dictionaries(
        {},
        optional={
            "capacity": st.one_of(st.integers(1, 64), _CONFIG_VALUES),
            "ttl_seconds": st.one_of(st.integers(1, 600), _CONFIG_VALUES),
            "weight": st.one_of(st.integers(1, 9), _CONFIG_VALUES),
        },
    )
    config = _mostly(draw, known, st.one_of(st.none(), st.integers(), st.text(max_size=5), fields))
    unique_id = _mostly(draw, _GOOD_KEYS, st.one_of(_BAD_KEYS, st.just("k" * 300)))
    types = st.sampled_from([ChanType.MPMC, ChanType.MPSC, "mpmc", "MPSC"])
    chan_type = _mostly(draw, types, _CONFIG_VALUES)
    roles = st.sampled_from([ChanRole.PRODUCER, ChanRole.CONSUMER, "consumer", "PRODUCER"])
    role = _mostly(draw, roles, _CONFIG_VALUES)
    return config, unique_id, chan_type, role


def test_hostile_chan_configs(hostile_cluster, stores, sentinel):
    store = stores(hostile_cluster)
    seen: dict = {}

    @_settings(80)
    @given(_chan_args())
    # Valid binds are a minority of the draws: these make sure every run has some.
    @example(({"capacity": 4}, "hostile-valid", ChanType.MPMC, ChanRole.PRODUCER))
    @example(({"capacity": 8, "ttl_seconds": 5}, "hostile-valid-2", "MPSC", "consumer"))
    def check(args):
        config, unique_id, chan_type, role = args
        if isinstance(config, dict) and isinstance(config.get("capacity"), int):
            config["capacity"] = min(config["capacity"], 4096)  # keep the pool usable
        seen["n"] = seen.get("n", 0) + 1
        if isinstance(unique_id, str) and unique_id and seen["n"] % 3:
            unique_id += f"-{seen['n']}"  # mostly fresh keys; some reused ones
        res = new_or_bind_with_unique_key(store, config, unique_id, chan_type, role)
        if res.is_ok():
            handle = res.unwrap()
            assert handle.close().is_ok()
            seen["ok"] = seen.get("ok", 0) + 1
        else:
            err = res.unwrap_error()
            assert isinstance(err, ApiError) and err.message, err
            seen[type(err).__name__] = seen.get(type(err).__name__, 0) + 1

    check()
    seen.pop("n")
    print("chan_configs:", seen)
    assert "ok" in seen and len(seen) > 2, seen
    sentinel()


# --------------------------------------------------------------------------- config files
_YAMLISH = st.recursive(
    st.one_of(
        st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False), st.text(max_size=10)
    ),
    lambda children: st.one_of(
        st.lists(children, max_size=3), st.dictionaries(st.text(max_size=12), children, max_size=4)
    ),
    max_leaves=12,
)


@st.composite
def _config_texts(draw, cluster):
    base = cluster.client_config("fuzz-client")
    kind = draw(st.sampled_from(["garbage", "structure", "mutated", "mutated"]))
    if kind == "garbage":
        return draw(st.binary(max_size=300))
    if kind == "structure":
        return yaml.safe_dump(draw(_YAMLISH)).encode()
    cfg = orjson.loads(orjson.dumps(base))
    section = draw(st.sampled_from([cfg, cfg["fluxonkv_spec"]]))
    field = draw(st.one_of(st.sampled_from(sorted(section)), st.text(min_size=1, max_size=10)))
    if draw(st.booleans()) and field in section:
        del section[field]
    else:
        section[field] = draw(_YAMLISH)
    return yaml.safe_dump(cfg).encode()


def test_hostile_config_files(hostile_cluster, tmp_path, sentinel):
    path = str(tmp_path / "config.yaml")
    outcomes: dict = {}

    @_settings(120)
    @given(_config_texts(hostile_cluster))
    def check(text):
        with open(path, "wb") as fh:
            fh.write(text)
        try:
            FluxonKvClientConfig.from_file(path)
        except InvalidConfigurationError as exc:
            assert exc.message
        res = new_store(path)
        if res.is_ok():
            store = res.unwrap()
            store.put_blocking("cfg-fuzz", {"x": 1}).unwrap()
            assert store.close().is_ok()
            outcomes["ok"] = outcomes.get("ok", 0) + 1
        else:
            err = res.unwrap_error()
            assert isinstance(err, ApiError) and err.message
            outcomes[type(err).__name__] = outcomes.get(type(err).__name__, 0) + 1

    check()
    print("config files:", outcomes)
    assert "InvalidConfigurationError" in outcomes, outcomes
    sentinel()


# --------------------------------------------------------------------------- shared.json
_JSONISH = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(1 << 70), 1 << 70),
    st.floats(allow_nan=False),
    st.text(max_size=20),
    st.lists(st.one_of(st.text(max_size=20), st.integers()), max_size=3),
    st.dictionaries(st.text(max_size=5), st.integers(), max_size=2),
    st.sampled_from(["127.0.0.1:1", ["127.0.0.1:1"], "not-an-address", [""], 1, os.getpid()]),
)


def test_hand_edited_shared_json(hostile_cluster, stores, sentinel):
    path = hostile_cluster.shared_json
    with open(path, "rb") as fh:
        original = fh.read()
    mode = os.stat(path).st_mode & 0o777
    cfg = hostile_cluster.client_config("edited")
    outcomes: dict = {}

    @_settings(60)
    @given(
        st.one_of(
            st.binary(max_size=200),
            st.lists(
                st.tuples(st.sampled_from(sorted(orjson.loads(original))), st.booleans(), _JSONISH),
                min_size=1,
                max_size=3,
            ),
        )
    )
    def check(edit):
        if isinstance(edit, bytes):
            text = edit
        else:
            data = orjson.loads(original)
            for field, delete, value in edit:
                if delete:
                    data.pop(field, None)
                else:
                    data[field] = value
            text = json.dumps(data).encode()  # big ints too, which orjson refuses
        with open(path, "wb") as fh:
            fh.write(text)
        os.chmod(path, mode)
        res = new_store(cfg)
        if res.is_ok():
            store = res.unwrap()
            store.put_blocking("edited", {"x": 2}).unwrap()
            assert store.get_blocking("edited").unwrap().access() == {"x": 2}
            assert store.close().is_ok()
            outcomes["ok"] = outcomes.get("ok", 0) + 1
        else:
            err = res.unwrap_error()
            assert isinstance(err, ApiError) and err.message, err
            outcomes[type(err).__name__] = outcomes.get(type(err).__name__, 0) + 1

    try:
        check()
    finally:
        with open(path, "wb") as fh:
            fh.write(original)
    print("shared.json:", outcomes)
    assert len(outcomes) > 1, outcomes
    stores(hostile_cluster).put_blocking("after", {"x": 3}).unwrap()
    sentinel()


# --------------------------------------------------------------------------- pool files
def test_truncated_and_corrupted_pool_files():
    examples = max(50, int(300 * SCALE))
    done = subprocess.run(
        [sys.executable, os.path.join(_HERE, "hostile_pool_fuzz.py"), str(examples), "20240611"],
        capture_output=True,
        text=True,
        timeout=TIME_LIMIT_S - 20,
    )
    tail = "\n".join(done.stderr.splitlines()[-40:])
    assert done.returncode == 0, f"status {done.returncode}\n{done.stdout}\n{tail}"
    assert "adopted" in done.stdout and "refused" in done.stdout, done.stdout
