"""Pure-Python model of :mod:`fluxon_kernels.kv` (single-threaded oracle).

A dict from key to value, where a removed key stays as a tombstone (``None``): the
kernel keeps a removed key in its bucket, so it still occupies a bucket and only a
put of the same key revives it. A new key fails with ``TABLE_FULL`` exactly when
every bucket holds a key (live or tombstoned), because linear probing visits every
bucket before giving up.
"""

from __future__ import annotations

from fluxon_kernels import status
from fluxon_kernels.layout.kv_bucket import KEY_MAX


class KvModel:
    """Reference KV index with ``buckets`` buckets.

    Parameters
    ----------
    buckets : int
        Number of buckets of the table being modelled.
    """

    def __init__(self, buckets: int) -> None:
        self.buckets = buckets
        self.placed: dict[bytes, bytes | None] = {}

    @staticmethod
    def _key_ok(key: bytes) -> bool:
        return 0 < len(key) <= KEY_MAX

    def put(self, key: bytes, value: bytes) -> int:
        """``OK``, ``TOO_LARGE`` (bad key length) or ``TABLE_FULL``."""
        if not self._key_ok(key):
            return status.TOO_LARGE
        if key not in self.placed and len(self.placed) >= self.buckets:
            return status.TABLE_FULL
        self.placed[key] = value
        return status.OK

    def remove(self, key: bytes) -> int:
        """``OK`` or ``NOT_FOUND``."""
        if self.placed.get(key) is None:
            return status.NOT_FOUND
        self.placed[key] = None
        return status.OK

    def get(self, key: bytes) -> bytes | int:
        """The value, or ``NOT_FOUND``."""
        value = self.placed.get(key)
        return status.NOT_FOUND if value is None else value

    def count_prefix(self, prefix: bytes) -> int:
        """Number of live keys starting with ``prefix``."""
        return sum(1 for k, v in self.placed.items() if v is not None and k.startswith(prefix))

    def live(self) -> dict[bytes, bytes]:
        """The live key -> value mapping."""
        return {k: v for k, v in self.placed.items() if v is not None}
