"""Fluxon: a shared-memory message queue and KV store for AI data pipelines.

Submodules are the API (as in the reference package): ``fluxon.config``,
``fluxon.kvclient``, ``fluxon.api_error``, ``fluxon.logging``, ``fluxon.runtime``.
The most used names are also available lazily from the package itself.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_LAZY = {
    "FluxonKvClientConfig": "fluxon.config",
    "new_store": "fluxon.kvclient",
    "KvClient": "fluxon.kvclient",
    "KvFuture": "fluxon.kvclient",
    "MemHolder": "fluxon.kvclient",
    "KvClientType": "fluxon.kvclient",
    "PutOptionalArgs": "fluxon.kvclient",
    "Result": "fluxon.api_error",
    "ApiError": "fluxon.api_error",
    "OkNone": "fluxon.api_error",
    "OK_NONE": "fluxon.api_error",
    "init_logger": "fluxon.logging",
    "ChanType": "fluxon.api_ext_chan",
    "ChanRole": "fluxon.api_ext_chan",
    "new_or_bind_with_unique_key": "fluxon.api_ext_chan",
    "MPMCChanProducer": "fluxon.api_ext_chan",
    "MPMCChanConsumer": "fluxon.api_ext_chan",
    "MPSCChanProducer": "fluxon.api_ext_chan",
    "MPSCChanConsumer": "fluxon.api_ext_chan",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'fluxon' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)


__all__ = sorted(_LAZY) + ["__version__"]
