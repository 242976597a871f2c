"""ApiError classes, Result, and the kernel-status translation table."""

from __future__ import annotations

import pickle
import subprocess
import sys
import textwrap

import orjson
import pytest

from fluxon import api_error as ae
from fluxon.api_error import (
    OK_NONE,
    ApiError,
    ChanBindError,
    ChannelClosedError,
    ChanTypeMismatchError,
    InternalError,
    InvalidConfigurationError,
    OkNone,
    ProducerClosedError,
    Result,
    error_from_status,
)
from fluxon_kernels import status

#: Names and codes user programs written for the reference rely on.
REFERENCE_CODES = {
    "GeneralError": 1000,
    "InvalidArgumentError": 1001,
    "ApiTimeoutError": 1002,
    "ResourceExhaustedError": 1003,
    "BackendNotFoundError": 2000,
    "BackendUnavailableError": 2001,
    "BackendInitFailedError": 2002,
    "StoreInitFailedError": 3000,
    "StoreClosedError": 3001,
    "KeyNotFoundError": 4000,
    "KeyAlreadyExistsError": 4001,
    "InvalidKeyFormatError": 4002,
    "ValueTooLargeError": 4003,
    "KeyBeingWrittenError": 4004,
    "ValueSizeChangedError": 4005,
    "BufferOverflowError": 5001,
    "StorageFullError": 6000,
    "StorageReadError": 6001,
    "StorageWriteError": 6002,
    "NetworkError": 7000,
    "TransferBlockFailedError": 7002,
    "EtcdTransactionFailedError": 8000,
    "RequestFailedError": 9000,
    "FileRelatedError": 10000,
    "ApiFileNotFoundError": 10100,
    "FileAccessDeniedError": 10101,
    "FileReadError": 10102,
    "InvalidRangeError": 10103,
    "CacheCorruptedError": 10104,
    "CacheInvalidationError": 10105,
    "FileWriteError": 10106,
    "ChannelNotFoundError": 12000,
    "ChannelClosedError": 12001,
    "ProducerRegistrationError": 12002,
    "ProducerClosedError": 12003,
    "ConsumerInitError": 12004,
    "MessageBufferFullError": 12005,
    "VersionConflictError": 12007,
    "ProducerDiscoveryError": 12008,
    "MessageProductionError": 12009,
    "MessageConsumptionError": 12010,
    "MessageConsumptionNoNewMessageError": 12011,
    "PutDoneFailedError": 12012,
    "MqGetDataUnknownError": 12013,
    "PayloadLeaseNotFoundError": 12014,
    "InvalidConfigurationError": 13001,
    "ResourceCleanupError": 13002,
    "EtcdError": 13003,
    "JoinError": 13004,
    "InternalError": 13005,
    "MsgSerializeError": 14010,
    "MsgDeserializeError": 14011,
    "ChanKeyNotFoundError": 20000,
    "ChanConfigEmptyError": 20001,
    "ChanCreateError": 20002,
    "ChanDeleteError": 20003,
    "ChanBindError": 20004,
    "ChanUnBindError": 20005,
    "ChanMessageConsumptionError": 20006,
    "ChanMessageProduceError": 20007,
    "ChanIdxDuplicateError": 20008,
    "ConsumerRegistrationError": 20009,
    "ConsumerUnBindError": 20010,
}

#: fluxon's own additions (and alternative spellings) in the channel range.
FLUXON_CODES = {
    "ChanAlreadyExistsError": 20011,
    "ChanNotFoundError": 20012,
    "ChanTypeMismatchError": 20013,
    "ChanCloseError": 20014,
    "ChanInternalError": 20015,
    "ChanUnbindError": 20005,
    "ChanMessageConsumeError": 20006,
}


@pytest.mark.parametrize("name,code", sorted({**REFERENCE_CODES, **FLUXON_CODES}.items()))
def test_every_class_has_its_code(name, code):
    cls = getattr(ae, name)
    assert issubclass(cls, ApiError)
    assert issubclass(cls, Exception)
    assert cls.CODE == code
    err = cls(message="m")
    assert err.code() == code
    assert name in ae.__all__


def test_codes_are_unique():
    codes = [cls.CODE for cls in ae.ERROR_CLASSES.values()]
    assert len(codes) == len(set(codes))
    assert set(REFERENCE_CODES) <= set(ae.ERROR_CLASSES)


def test_api_error_itself_is_abstract():
    with pytest.raises(TypeError, match="abstract"):
        ApiError("x")


def test_user_subclasses():
    class AppError(ApiError):  # reference style: override code()
        def code(self) -> int:
            return 99001

    class AppClosed(ae.ChannelClosedError):
        pass

    assert str(AppError("app")) == "AppError(99001: app)"
    assert AppError("app").to_dict()["code"] == 99001
    assert AppClosed("c", channel_id="1").code() == 12001


def test_keyword_and_positional_construction():
    err = ChannelClosedError("closed", channel_id="7")
    assert err.message == "closed"
    assert err.channel_id == "7"
    assert err.details == {}
    assert err.args == ("closed",)
    # Positional order of the reference dataclass: message, details, transport,
    # transport_user, then the subclass fields.
    err = ProducerClosedError("gone", {"k": 1}, None, None, "3", "1")
    assert (err.channel_id, err.producer_idx, err.details) == ("3", "1", {"k": 1})
    assert ProducerClosedError(message="gone").producer_idx is None


def test_constructor_rejects_unknown_or_missing_fields():
    with pytest.raises(TypeError, match="no field 'producer_idx'"):
        ChannelClosedError("x", producer_idx="1")
    with pytest.raises(TypeError, match="needs a message"):
        ChannelClosedError(channel_id="1")
    with pytest.raises(TypeError, match="twice"):
        ChannelClosedError("x", message="y")
    with pytest.raises(TypeError, match="positional"):
        ChannelClosedError("x", None, None, None, "1", "extra")


def test_str_and_repr_show_code_message_and_set_fields():
    err = ChannelClosedError("closed", channel_id="7")
    assert str(err) == "ChannelClosedError(12001: closed, channel_id='7')"
    assert repr(err) == str(err)
    err = InvalidConfigurationError("bad", details={"hint": "x"}, config_key="a.b")
    assert (
        str(err)
        == "InvalidConfigurationError(13001: bad, details: {'hint': 'x'}, config_key='a.b')"
    )
    err.details["traceback"] = "long text"
    assert "long text" not in str(err)


def test_to_dict_is_json_ready():
    err = ProducerClosedError(
        "closed", channel_id="2", producer_idx="5", transport=ae.TransportName.GRPC
    )
    d = err.to_dict()
    assert d == {
        "error_type": "ProducerClosedError",
        "code": 12003,
        "message": "closed",
        "details": {},
        "fields": {"transport": "grpc", "channel_id": "2", "producer_idx": "5"},
    }
    orjson.dumps(d)


def test_errors_are_exceptions_caught_by_the_root():
    with pytest.raises(ApiError) as info:
        raise ChannelClosedError("closed", channel_id="1")
    assert isinstance(info.value, ChannelClosedError)
    assert isinstance(ChanTypeMismatchError("x"), ChanBindError)


def test_errors_pickle_with_their_fields():
    err = ProducerClosedError("closed", details={"a": 1}, channel_id="2", producer_idx="5")
    back = pickle.loads(pickle.dumps(err))
    assert type(back) is ProducerClosedError
    assert (back.message, back.details, back.channel_id, back.producer_idx) == (
        "closed",
        {"a": 1},
        "2",
        "5",
    )


def test_details_are_copied_not_shared():
    shared = {"a": 1}
    err = ae.GeneralError("x", details=shared)
    err.details["b"] = 2
    assert shared == {"a": 1}


def test_reference_constructors_and_conversion():
    err = ae.ValueSizeChangedError.new("k", 1, 2)
    assert err.details == {"key": "k", "old_size": 1, "new_size": 2}
    try:
        raise RuntimeError("boom")
    except RuntimeError as exc:
        wrapped = ae.MqGetDataUnknownError.from_exception(exc, channel_id="1", consumer_id="2")
    assert wrapped.inner_exc_type == "RuntimeError"
    assert wrapped.inner_exc_message == "boom"
    assert "Traceback" in wrapped.inner_exc_traceback
    assert isinstance(ae.exception_to_error(ValueError("v")), ae.InvalidArgumentError)
    assert isinstance(ae.exception_to_error(TimeoutError("t")), ae.ApiTimeoutError)
    assert isinstance(ae.exception_to_error(ConnectionError("c")), ae.NetworkError)
    assert isinstance(ae.exception_to_error(MemoryError()), ae.ResourceExhaustedError)
    assert isinstance(ae.exception_to_error(KeyError("k")), ae.GeneralError)
    same = ChannelClosedError("x")
    assert ae.exception_to_error(same) is same


# --------------------------------------------------------------------------- Result
def test_ok_result():
    res = Result.new_ok(5)
    assert res.is_ok() and not res.is_err()
    assert res.unwrap() == 5
    assert repr(res) == "Ok(5)" == str(res)
    with pytest.raises(ValueError, match="Result is ok, msg: why"):
        res.unwrap_error("why")
    assert Result(ok_value="v").unwrap() == "v"


def test_error_result():
    err = ChannelClosedError("closed", channel_id="7")
    res = Result.new_error(err)
    assert not res.is_ok() and res.is_err()
    assert res.unwrap_error() is err
    assert repr(res) == "Error(ChannelClosedError(12001: closed, channel_id='7'))"
    with pytest.raises(ValueError) as info:
        res.unwrap("while reading")
    text = str(info.value)
    assert "while reading" in text and "ChannelClosedError(12001: closed" in text
    assert info.value.__cause__ is err
    assert Result(error_value=err).unwrap_error() is err


def test_result_needs_exactly_one_side():
    with pytest.raises(ValueError):
        Result()
    with pytest.raises(ValueError):
        Result(ok_value=1, error_value=ChannelClosedError("x"))
    with pytest.raises(ValueError, match="OK_NONE"):
        Result.new_ok(None)
    with pytest.raises(ValueError):
        Result.new_error(None)


def test_result_can_be_subscripted_in_annotations():
    assert Result[int] is not None
    assert Result[int, ApiError] is not None


def test_ok_none_is_a_singleton():
    assert OkNone() is OK_NONE
    assert pickle.loads(pickle.dumps(OK_NONE)) is OK_NONE
    assert Result.new_ok(OK_NONE).unwrap() is OK_NONE
    assert repr(Result.new_ok(OK_NONE)) == "Ok(OkNone)"


def _raise_closed():
    raise ProducerClosedError("closed", channel_id="1", producer_idx="2")


def test_new_error_records_where_it_was_raised_and_drops_frames():
    try:
        _raise_closed()
    except ApiError as exc:
        res = Result.new_error(exc)
    err = res.unwrap_error()
    tb = err.details["traceback"]
    assert "Traceback" in tb and "_raise_closed" in tb
    assert err.__traceback__ is None  # no frames (and their locals) kept alive
    assert "traceback" not in str(err)


def test_new_error_of_an_unraised_error_records_the_call_stack():
    res = Result.new_error(ChannelClosedError("closed"))
    tb = res.unwrap_error().details["traceback"]
    assert "test_new_error_of_an_unraised_error_records_the_call_stack" in tb


def test_unconsumed_results_are_silent_when_collected():
    code = textwrap.dedent(
        """
        import gc
        from fluxon.api_error import Result, ChannelClosedError, OK_NONE
        for _ in range(100):
            Result.new_ok(OK_NONE)
            Result.new_error(ChannelClosedError("closed", channel_id="1"))
        r = Result.new_error(ChannelClosedError("closed"))
        del r
        gc.collect()
        """
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == "" and proc.stdout == ""
    assert not hasattr(Result, "__del__")


# --------------------------------------------------------------------------- statuses
EXPECTED_STATUS_CLASSES = {
    status.FULL: ae.StorageFullError,
    status.EMPTY: ae.MessageConsumptionNoNewMessageError,
    status.CLOSED: ae.ChannelClosedError,
    status.TOO_LARGE: ae.InvalidArgumentError,
    status.NOT_FOUND: ae.KeyNotFoundError,
    status.RETRY: ae.InternalError,
    status.CORRUPT: ae.InternalError,
    status.TABLE_FULL: ae.StorageFullError,
    status.BUFFER_TOO_SMALL: ae.InternalError,
    status.NO_SLOT: ae.StorageFullError,
    status.NO_MEMORY: ae.StorageFullError,
}


def test_every_kernel_error_status_is_translated():
    negative = {code for code in status.STATUS_NAMES if code < 0}
    assert negative == set(EXPECTED_STATUS_CLASSES)


@pytest.mark.parametrize("code,cls", sorted(EXPECTED_STATUS_CLASSES.items()))
def test_error_from_status(code, cls):
    err = error_from_status(code, "storing key 'k'")
    assert type(err) is cls
    assert err.message.startswith("storing key 'k': ")
    assert status.STATUS_NAMES[code] in err.message


def test_error_from_status_routes_fields():
    err = error_from_status(status.CLOSED, "put", channel_id="9", producer_idx="1")
    assert err.channel_id == "9"
    assert err.details == {"producer_idx": "1"}
    err = error_from_status(status.CORRUPT, "reading")
    assert isinstance(err, InternalError) and err.component == "kernel"
    err = error_from_status(status.CORRUPT, "reading", component="pool")
    assert err.component == "pool"


@pytest.mark.parametrize("bad", [0, 1, 17, -1000, "x", None])
def test_error_from_status_rejects_non_errors(bad):
    with pytest.raises(ValueError, match="not a kernel error status"):
        error_from_status(bad, "ctx")
