"""Errors and ``Result``: how every fluxon call reports what went wrong.

Expected outcomes (timeout, closed, full, bad input) come back as ``Result`` values
holding an :class:`ApiError`; bugs raise. The names, codes and fields of the error
classes are those of the reference package, so ``except``/``isinstance`` checks written
for it keep working::

    res = producer.put_data({"seq": 1})
    if not res.is_ok():
        err = res.unwrap_error()
        if isinstance(err, ProducerClosedError):
            ...

:func:`error_from_status` is the one table translating kernel statuses
(:mod:`fluxon_kernels.status`) into these classes.

Unlike the reference, a ``Result`` nobody looked at is simply garbage collected: it
never raises or prints from ``__del__``.
"""

from __future__ import annotations

import builtins
import json
import sys
import traceback as _traceback
import types
from enum import Enum
from typing import Any, ClassVar, TypeVar

from fluxon_kernels import status as _status

T = TypeVar("T")
E = TypeVar("E")

__all__ = [
    "OK_NONE",
    "ApiError",
    "OkNone",
    "Result",
    "TransportName",
    "TransportUser",
    "error_from_status",
    "exception_to_error",
]


class OkNone:
    """Marker for an Ok result without a meaningful value (``Result.new_ok(OK_NONE)``).

    There is one instance, :data:`OK_NONE`; ``OkNone()`` returns it.
    """

    __slots__ = ()
    _instance: ClassVar[OkNone | None] = None

    def __new__(cls) -> OkNone:  # noqa: PYI034 - a singleton, not a new self
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return "OkNone"

    def __reduce__(self) -> str:
        return "OK_NONE"


OK_NONE = OkNone()


class TransportName(Enum):
    """Transport named in error diagnostics."""

    GRPC = "grpc"
    HTTP = "http"


class TransportUser(Enum):
    """Subsystem that issued a transport request."""

    ETCD = "etcd"


# --------------------------------------------------------------------------- ApiError
_BASE_FIELDS = ("message", "details", "transport", "transport_user")


def _render(value: Any) -> Any:
    return value.value if isinstance(value, Enum) else value


def _rebuild_api_error(cls: type, state: dict) -> ApiError:
    return cls(**state)


class ApiError(Exception):
    """Root of every fluxon error (``except ApiError`` catches them all).

    Construct a subclass with a message and, by keyword, the subclass's fields::

        ChannelClosedError("channel was closed", channel_id="7")

    Positional arguments follow the reference order: ``message, details, transport,
    transport_user``, then the subclass fields.

    Attributes
    ----------
    message : str
        What went wrong, for humans.
    details : dict
        Free-form diagnostics; :meth:`Result.new_error` adds ``"traceback"``.
    transport, transport_user : TransportName | TransportUser | None
        Which transport failed, for network errors.
    """

    #: The error code (reference numbering); ``None`` marks an abstract class.
    CODE: ClassVar[int | None] = None
    #: Extra fields of this class, in positional order.
    FIELDS: ClassVar[tuple[str, ...]] = ()

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        cls = type(self)
        if cls.CODE is None and cls.code is ApiError.code:
            raise TypeError(f"{cls.__name__} is abstract; raise one of its subclasses")
        names = _BASE_FIELDS + cls.FIELDS
        if len(args) > len(names):
            raise TypeError(
                f"{cls.__name__} takes at most {len(names)} positional arguments "
                f"({', '.join(names)}), got {len(args)}"
            )
        values = dict(zip(names, args))
        for name, value in kwargs.items():
            if name not in names:
                raise TypeError(
                    f"{cls.__name__} has no field {name!r}; its fields are {', '.join(names)}"
                )
            if name in values:
                raise TypeError(f"{cls.__name__} got field {name!r} twice")
            values[name] = value
        if "message" not in values:
            raise TypeError(f"{cls.__name__} needs a message")
        message = values["message"]
        super().__init__(message)
        self.message: str = message
        details = values.get("details")
        self.details: dict = dict(details) if details else {}
        self.transport = values.get("transport")
        self.transport_user = values.get("transport_user")
        for name in cls.FIELDS:
            setattr(self, name, values.get(name))

    def code(self) -> int:
        """The numeric error code of this class (e.g. 12001 for ChannelClosedError).

        A user-defined subclass may set ``CODE`` or override this method.
        """
        return type(self).CODE  # type: ignore[return-value]

    def fields(self) -> dict[str, Any]:
        """The set (non-None) extra fields, transport ones included."""
        out = {}
        for name in ("transport", "transport_user") + type(self).FIELDS:
            value = getattr(self, name, None)
            if value is not None:
                out[name] = _render(value)
        return out

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly form: ``error_type``, ``code``, ``message``, ``details``, ``fields``."""
        out: dict[str, Any] = {
            "error_type": type(self).__name__,
            "code": self.code(),
            "message": self.message,
            "details": self.details,
        }
        extra = self.fields()
        if extra:
            out["fields"] = extra
        return out

    def __str__(self) -> str:
        parts = [f"{self.code()}: {self.message}"]
        shown = {k: v for k, v in self.details.items() if k != "traceback"}
        if shown:
            parts.append(f"details: {shown}")
        parts.extend(f"{name}={value!r}" for name, value in self.fields().items())
        return f"{type(self).__name__}({', '.join(parts)})"

    __repr__ = __str__

    def __reduce__(self) -> tuple:
        state = {name: getattr(self, name) for name in _BASE_FIELDS + type(self).FIELDS}
        return (_rebuild_api_error, (type(self), state))


# ---- general and KV errors (1000-10999)


class GeneralError(ApiError):
    """Anything without a more specific class (e.g. using a closed store)."""

    CODE = 1000


class InvalidArgumentError(ApiError):
    """A value or argument the call cannot accept; nothing was changed."""

    CODE = 1001


class ApiTimeoutError(ApiError):
    """An operation did not finish in time."""

    CODE = 1002


class ResourceExhaustedError(ApiError):
    """Memory or another resource ran out."""

    CODE = 1003


class BackendNotFoundError(ApiError):
    """The requested backend does not exist."""

    CODE = 2000
    FIELDS = ("backend_name",)


class BackendUnavailableError(ApiError):
    """The backend exists but cannot be used now."""

    CODE = 2001
    FIELDS = ("backend_name",)


class BackendInitFailedError(ApiError):
    """The backend failed to start."""

    CODE = 2002
    FIELDS = ("backend_name",)


class StoreInitFailedError(ApiError):
    """The store could not be created."""

    CODE = 3000
    FIELDS = ("store_instance",)


class StoreClosedError(ApiError):
    """The store was closed."""

    CODE = 3001
    FIELDS = ("store_instance",)


class KeyNotFoundError(ApiError):
    """The key does not exist."""

    CODE = 4000
    FIELDS = ("key",)


class KeyAlreadyExistsError(ApiError):
    """The key exists and the call asked not to replace it."""

    CODE = 4001
    FIELDS = ("key",)


class InvalidKeyFormatError(ApiError):
    """The key is not acceptable (type, length, encoding)."""

    CODE = 4002
    FIELDS = ("key",)


class ValueTooLargeError(ApiError):
    """The value is larger than allowed."""

    CODE = 4003
    FIELDS = ("value_size", "max_size")


class KeyBeingWrittenError(ApiError):
    """Another writer is storing this key right now."""

    CODE = 4004
    FIELDS = ("key",)


class ValueSizeChangedError(ApiError):
    """The value's size changed between two steps of an operation."""

    CODE = 4005

    @classmethod
    def new(cls, key: str, old_size: int, new_size: int) -> ValueSizeChangedError:
        """Build the error for ``key`` whose size went from ``old_size`` to ``new_size``."""
        return cls(
            message=f"Value size changed for key '{key}' from {old_size} to {new_size}",
            details={"key": key, "old_size": old_size, "new_size": new_size},
        )


class BufferOverflowError(ApiError):
    """A buffer was too small for the data."""

    CODE = 5001
    FIELDS = ("buffer_size",)


class StorageFullError(ApiError):
    """No room in the pool (or one of its tables) right now."""

    CODE = 6000
    FIELDS = ("available_space",)


class StorageReadError(ApiError):
    """Reading from storage failed."""

    CODE = 6001
    FIELDS = ("storage_path",)


class StorageWriteError(ApiError):
    """Writing to storage failed."""

    CODE = 6002
    FIELDS = ("storage_path",)


class NetworkError(ApiError):
    """A network peer could not be reached or answered badly."""

    CODE = 7000
    FIELDS = ("endpoint",)


class TransferBlockFailedError(ApiError):
    """One block transfer failed (retryable)."""

    CODE = 7002
    FIELDS = ("endpoint", "task_id")


class EtcdTransactionFailedError(ApiError):
    """An etcd transaction did not commit."""

    CODE = 8000


class RequestFailedError(ApiError):
    """A request could not be completed."""

    CODE = 9000


class FileRelatedError(ApiError):
    """A file operation failed."""

    CODE = 10000


class ApiFileNotFoundError(ApiError):
    """A file does not exist (not named FileNotFoundError: that is a builtin)."""

    CODE = 10100
    FIELDS = ("filepath",)


class FileAccessDeniedError(ApiError):
    """A file cannot be accessed."""

    CODE = 10101
    FIELDS = ("filepath",)


class FileReadError(ApiError):
    """Reading a file failed."""

    CODE = 10102
    FIELDS = ("filepath", "offset", "length")


class InvalidRangeError(ApiError):
    """A byte range lies outside a file."""

    CODE = 10103
    FIELDS = ("filepath", "start_offset", "length", "file_size")


class CacheCorruptedError(ApiError):
    """Cached data is corrupt."""

    CODE = 10104
    FIELDS = ("cache_key",)


class CacheInvalidationError(ApiError):
    """A cache entry could not be invalidated."""

    CODE = 10105
    FIELDS = ("filepath",)


class FileWriteError(ApiError):
    """Writing a file failed."""

    CODE = 10106
    FIELDS = ("filepath", "offset")


# ---- channels: producer/consumer handles (12000-12999)


class ChannelNotFoundError(ApiError):
    """The channel does not exist."""

    CODE = 12000
    FIELDS = ("channel_id",)


class ChannelClosedError(ApiError):
    """The channel or consumer handle was closed (a normal shutdown signal for consumers)."""

    CODE = 12001
    FIELDS = ("channel_id",)


class ProducerRegistrationError(ApiError):
    """A producer could not join its channel."""

    CODE = 12002
    FIELDS = ("channel_id", "producer_idx", "max_retries")


class ProducerClosedError(ApiError):
    """The producer handle was closed (a normal shutdown signal for producers)."""

    CODE = 12003
    FIELDS = ("channel_id", "producer_idx")


class ConsumerInitError(ApiError):
    """A consumer could not join its channel."""

    CODE = 12004
    FIELDS = ("channel_id", "instance_name")


class MessageBufferFullError(ApiError):
    """The channel holds ``capacity`` undelivered messages."""

    CODE = 12005
    FIELDS = ("channel_id", "buffer_size")


class VersionConflictError(ApiError):
    """A versioned record changed under the caller."""

    CODE = 12007
    FIELDS = ("channel_id", "expected_version", "actual_version")


class ProducerDiscoveryError(ApiError):
    """The channel's producers could not be listed."""

    CODE = 12008
    FIELDS = ("channel_id",)


class MessageProductionError(ApiError):
    """A message could not be produced."""

    CODE = 12009
    FIELDS = ("channel_id", "producer_idx", "message_id")


class MessageConsumptionError(ApiError):
    """A message could not be consumed."""

    CODE = 12010
    FIELDS = ("channel_id", "producer_idx", "message_id")


class MessageConsumptionNoNewMessageError(ApiError):
    """No message arrived within ``try_time`` (not fatal: call again)."""

    CODE = 12011
    FIELDS = ("channel_id", "producer_idx", "message_id")


class PutDoneFailedError(ApiError):
    """The commit step of a put failed."""

    CODE = 12012
    FIELDS = ("channel_id", "producer_idx", "message_id", "detail")


class MqGetDataUnknownError(ApiError):
    """Last-resort wrapper for an unexpected exception inside ``get_data``."""

    CODE = 12013
    FIELDS = (
        "channel_id",
        "consumer_id",
        "inner_exc_type",
        "inner_exc_message",
        "inner_exc_traceback",
    )

    @classmethod
    def from_exception(
        cls, exc: BaseException, *, channel_id: str | None, consumer_id: str | None
    ) -> MqGetDataUnknownError:
        """Wrap ``exc`` raised while serving ``get_data`` on a channel/consumer."""
        tb = "".join(_traceback.format_exception(type(exc), exc, exc.__traceback__))
        return cls(
            message=f"unexpected exception from mq get_data: {type(exc).__name__}: {exc}",
            channel_id=channel_id,
            consumer_id=consumer_id,
            inner_exc_type=type(exc).__name__,
            inner_exc_message=str(exc),
            inner_exc_traceback=tb,
        )


class PayloadLeaseNotFoundError(ApiError):
    """A message payload's lease is gone or expired."""

    CODE = 12014
    FIELDS = ("lease_id",)


# ---- configuration and system (13000-13999)


class InvalidConfigurationError(ApiError):
    """A configuration value is missing, unknown, of the wrong type, or contradictory.

    ``config_key`` is the dotted path of the offending key (``fluxonkv_spec.cluster_name``).
    """

    CODE = 13001
    FIELDS = ("config_key", "config_value")


class ResourceCleanupError(ApiError):
    """Releasing a resource failed."""

    CODE = 13002
    FIELDS = ("resource_type", "resource_id")


class EtcdError(ApiError):
    """etcd is unreachable or answered badly."""

    CODE = 13003
    FIELDS = ("component",)


class JoinError(ApiError):
    """Joining a background task or cluster failed."""

    CODE = 13004
    FIELDS = ("component",)


class InternalError(ApiError):
    """Shared state is not what fluxon expects (corruption, a dead owner, a bug)."""

    CODE = 13005
    FIELDS = ("component",)


# ---- message (de)serialization (14000-14999)


class MsgSerializeError(ApiError):
    """A message could not be encoded."""

    CODE = 14010
    FIELDS = ("excption",)  # sic: the reference's field name


class MsgDeserializeError(ApiError):
    """Bytes could not be decoded as a message (corrupt or truncated encoding)."""

    CODE = 14011
    FIELDS = ("excption",)  # sic: the reference's field name


# ---- channel manager: create/bind by id or unique key (20000+)


class ChanKeyNotFoundError(ApiError):
    """No channel is registered under this unique key."""

    CODE = 20000
    FIELDS = ("chan_key",)


class ChanConfigEmptyError(ApiError):
    """The channel config is empty."""

    CODE = 20001
    FIELDS = ("chan_config",)


class ChanCreateError(ApiError):
    """A channel could not be created."""

    CODE = 20002


class ChanDeleteError(ApiError):
    """A channel could not be deleted."""

    CODE = 20003


class ChanBindError(ApiError):
    """A handle could not bind to a channel (wrong type or role, single consumer taken...)."""

    CODE = 20004


class ChanUnBindError(ApiError):
    """A handle could not unbind from its channel."""

    CODE = 20005


class ChanMessageConsumptionError(ApiError):
    """A message could not be consumed from a channel."""

    CODE = 20006
    FIELDS = ("chan_id", "consumer_idx", "producer_idx", "message_id")


class ChanMessageProduceError(ApiError):
    """A message could not be produced into a channel."""

    CODE = 20007
    FIELDS = ("chan_id", "producer_idx", "message_id")


class ChanIdxDuplicateError(ApiError):
    """A member index is used twice."""

    CODE = 20008
    FIELDS = ("chan_id", "producer_idx", "message_id")


class ConsumerRegistrationError(ApiError):
    """A consumer could not register with its channel."""

    CODE = 20009
    FIELDS = ("message_id", "channel_id", "consumer_idx")


class ConsumerUnBindError(ApiError):
    """A consumer could not unbind."""

    CODE = 20010
    FIELDS = ("chan_id", "consumer_idx")


# fluxon additions in the channel-manager range (not in the reference).


class ChanAlreadyExistsError(ChanCreateError):
    """A channel with this id or unique key already exists."""

    CODE = 20011
    FIELDS = ("chan_id",)


class ChanNotFoundError(ApiError):
    """No channel has this id (it was never created or has been reclaimed)."""

    CODE = 20012
    FIELDS = ("chan_id",)


class ChanTypeMismatchError(ChanBindError):
    """The channel exists with another type (MPSC vs MPMC); ``except ChanBindError`` catches it."""

    CODE = 20013
    FIELDS = ("chan_id", "expected_type", "actual_type")


class ChanCloseError(ApiError):
    """Closing a channel handle failed."""

    CODE = 20014
    FIELDS = ("chan_id",)


class ChanInternalError(ApiError):
    """Inconsistent channel state."""

    CODE = 20015
    FIELDS = ("chan_id",)


#: Other spellings of reference classes.
ChanUnbindError = ChanUnBindError
ChanMessageConsumeError = ChanMessageConsumptionError


def _all_error_classes() -> list[type[ApiError]]:
    found: list[type[ApiError]] = []
    todo = [ApiError]
    while todo:
        cls = todo.pop()
        for sub in cls.__subclasses__():
            if sub.__module__ == __name__ and sub not in found:
                found.append(sub)
                todo.append(sub)
    return sorted(found, key=lambda c: c.CODE or 0)


#: Every concrete error class, by name.
ERROR_CLASSES: dict[str, type[ApiError]] = {c.__name__: c for c in _all_error_classes()}
__all__ += sorted(ERROR_CLASSES) + ["ChanMessageConsumeError", "ChanUnbindError", "ERROR_CLASSES"]  # noqa: PLE0605


# --------------------------------------------------------------------------- Result
def _stack_text(skip: int) -> str:
    """A cheap stack summary of the caller (no source lines: this runs on error paths
    that may be frequent, e.g. polling timeouts)."""
    lines = ["Stack (most recent call last):\n"]
    frame = sys._getframe(skip + 1)
    frames = []
    while frame is not None and len(frames) < 24:
        frames.append(frame)
        frame = frame.f_back
    for f in reversed(frames):
        code = f.f_code
        lines.append(f'  File "{code.co_filename}", line {f.f_lineno}, in {code.co_name}\n')
    return "".join(lines)


class Result:
    """Either an Ok value or an error (usually an :class:`ApiError`).

    Build one with :meth:`new_ok` / :meth:`new_error` (or ``Result(ok_value=...)`` /
    ``Result(error_value=...)``, exactly one of them). ``None`` is not an Ok value:
    use :data:`OK_NONE`.

    A Result that is never unwrapped is fine: it does not raise or warn when collected.
    """

    __slots__ = ("_err", "_ok")

    def __class_getitem__(cls, params: Any) -> types.GenericAlias:
        """``Result[T]`` and ``Result[T, E]`` both work in annotations and at runtime."""
        return types.GenericAlias(cls, params)

    def __init__(self, ok_value: T | None = None, error_value: E | None = None) -> None:
        if ok_value is not None and error_value is not None:
            raise ValueError("Result cannot hold both an ok value and an error")
        if ok_value is None and error_value is None:
            raise ValueError("Result needs an ok value or an error (use OK_NONE for 'no value')")
        self._ok = ok_value
        self._err = error_value

    @classmethod
    def new_ok(cls, value: T) -> Result[T, E]:
        """An Ok result holding ``value`` (not None; use :data:`OK_NONE`)."""
        if value is None:
            raise ValueError("Result.new_ok(None) is not allowed; use OK_NONE")
        self = cls.__new__(cls)
        self._ok = value
        self._err = None
        return self

    @classmethod
    def new_error(cls, error: E) -> Result[T, E]:
        """An error result.

        For an :class:`ApiError`, ``error.details["traceback"]`` receives the traceback of
        where it was raised (or, if it never was, the stack of this call), and the live
        traceback is dropped so the error does not keep frames and their locals alive.
        """
        if error is None:
            raise ValueError("Result.new_error(None) is not allowed")
        if isinstance(error, ApiError):
            tb = error.__traceback__
            if tb is not None:
                text = "".join(_traceback.format_exception(type(error), error, tb))
                error.__traceback__ = None
            else:
                text = _stack_text(1)
            error.details["traceback"] = text
        self = cls.__new__(cls)
        self._ok = None
        self._err = error
        return self

    def is_ok(self) -> bool:
        """True for an Ok result."""
        return self._err is None

    def is_err(self) -> bool:
        """True for an error result."""
        return self._err is not None

    def unwrap(self, msg: str = "") -> T:
        """The Ok value.

        Raises
        ------
        ValueError
            For an error result; its text contains ``msg`` and the error, and its
            ``__cause__`` is the error itself.
        """
        err = self._err
        if err is None:
            return self._ok  # type: ignore[return-value]
        raise ValueError(f"Result is an error, msg: {msg}, error: {err}") from (
            err if isinstance(err, BaseException) else None
        )

    def unwrap_error(self, msg: str = "") -> E:
        """The error.

        Raises
        ------
        ValueError
            For an Ok result.
        """
        if self._err is None:
            raise ValueError(f"Result is ok, msg: {msg}, ok: {self._ok}")
        return self._err

    def __repr__(self) -> str:
        if self._err is None:
            return f"Ok({self._ok})"
        return f"Error({self._err})"

    __str__ = __repr__


#: Type aliases of the reference.
StoreResult = Result


# --------------------------------------------------------------------------- statuses
#: Kernel status -> (ApiError subclass, what it means). Every negative status of
#: :mod:`fluxon_kernels.status` is here (a test checks it).
_STATUS_TABLE: dict[int, tuple[type[ApiError], str]] = {
    _status.FULL: (StorageFullError, "no room right now"),
    _status.EMPTY: (MessageConsumptionNoNewMessageError, "nothing to take"),
    _status.CLOSED: (ChannelClosedError, "the object was closed"),
    _status.TOO_LARGE: (InvalidArgumentError, "the request can never fit"),
    _status.NOT_FOUND: (KeyNotFoundError, "no such key or object"),
    _status.RETRY: (InternalError, "concurrent writers kept changing the object"),
    _status.CORRUPT: (InternalError, "shared state is inconsistent"),
    _status.TABLE_FULL: (StorageFullError, "the KV index has no free bucket"),
    _status.BUFFER_TOO_SMALL: (InternalError, "the output buffer is too small"),
    _status.NO_SLOT: (StorageFullError, "no free slot in the member or channel table"),
    _status.NO_MEMORY: (StorageFullError, "the pool's heap has no free run right now"),
}


def error_from_status(status: int, context: str, **fields: Any) -> ApiError:
    """Translate a negative kernel status into its :class:`ApiError`.

    Parameters
    ----------
    status : int
        A negative status from :mod:`fluxon_kernels.status`.
    context : str
        What was being done (``"storing key 'a'"``); it starts the message.
    **fields
        Fields for the error class (e.g. ``channel_id``); those the class does not have
        go to ``details``.

    Returns
    -------
    ApiError
        The error to return in a ``Result`` (or raise).

    Raises
    ------
    ValueError
        For a non-negative or unknown status: calling this with one is a bug.
    """
    try:
        status = int(status)
        cls, meaning = _STATUS_TABLE[status]
    except (KeyError, TypeError, ValueError):
        raise ValueError(f"{context}: {status!r} is not a kernel error status") from None
    name = _status.STATUS_NAMES.get(status, str(status))
    known = {k: v for k, v in fields.items() if k in cls.FIELDS}
    extra = {k: v for k, v in fields.items() if k not in cls.FIELDS}
    if cls is InternalError and "component" not in known:
        known["component"] = "kernel"
    return cls(f"{context}: {name} ({meaning})", details=extra, **known)


# --------------------------------------------------------------------------- conversion
def exception_to_error(exc: BaseException) -> ApiError:
    """Map a standard exception to an :class:`ApiError` (ApiErrors pass through).

    ``ValueError`` -> InvalidArgumentError, ``TimeoutError`` -> ApiTimeoutError,
    ``MemoryError`` -> ResourceExhaustedError, ``ConnectionError`` -> NetworkError,
    ``json.JSONDecodeError`` -> MsgDeserializeError, anything else -> GeneralError.
    """
    if isinstance(exc, ApiError):
        return exc
    if isinstance(exc, json.JSONDecodeError):
        return MsgDeserializeError(f"JSON decode error: {exc}")
    if isinstance(exc, ValueError):
        return InvalidArgumentError(str(exc))
    if isinstance(exc, builtins.TimeoutError):
        return ApiTimeoutError(str(exc))
    if isinstance(exc, MemoryError):
        return ResourceExhaustedError(str(exc))
    if isinstance(exc, ConnectionError):
        return NetworkError(str(exc))
    return GeneralError(
        f"Unexpected error: {type(exc).__name__}: {exc}",
        details={"exception_type": type(exc).__name__},
    )
