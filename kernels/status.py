"""The closed set of kernel statuses.

Every kernel returns an ``int64``: ``>= 0`` is success (a count, an index, an offset),
a negative value is one of the statuses below. The facade translates them to
``ApiError`` subclasses in exactly one table (``fluxon.api_error``).
"""

OK = 0
#: No room right now (heap full, ring full); retrying later may succeed.
FULL = -1
#: Nothing to take (empty ring, no message).
EMPTY = -2
#: The object was closed.
CLOSED = -3
#: The request can never fit (larger than the whole heap / table).
TOO_LARGE = -4
#: The key or object does not exist.
NOT_FOUND = -5
#: A concurrent writer changed the object while it was read; read again.
RETRY = -6
#: Shared state is inconsistent (wrong magic, impossible value).
CORRUPT = -7
#: The KV index has no free bucket for a new key.
TABLE_FULL = -8
#: The caller's output buffer is too small for the value.
BUFFER_TOO_SMALL = -9
#: No free slot (member table, channel table).
NO_SLOT = -10

#: The pool's heap has no free run for the payload right now.
NO_MEMORY = -11

STATUS_NAMES = {
    OK: "OK",
    FULL: "FULL",
    EMPTY: "EMPTY",
    CLOSED: "CLOSED",
    TOO_LARGE: "TOO_LARGE",
    NOT_FOUND: "NOT_FOUND",
    RETRY: "RETRY",
    CORRUPT: "CORRUPT",
    TABLE_FULL: "TABLE_FULL",
    BUFFER_TOO_SMALL: "BUFFER_TOO_SMALL",
    NO_SLOT: "NO_SLOT",
    NO_MEMORY: "NO_MEMORY",
}
