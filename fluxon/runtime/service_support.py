"""What the owner and master processes share: logging setup, atomic JSON files, host facts."""

from __future__ import annotations

import logging
import os
import socket
import sys
from typing import Any

import orjson

_FORMAT = "%(asctime)s %(levelname)s %(name)s[%(process)d]: %(message)s"


def setup_service_logging(process_name: str, log_dir: str | None = None) -> logging.Logger:
    """Configure the ``fluxon`` logger tree for a service process.

    Console output goes to stderr with the threshold of ``FLUXON_LOG`` (default INFO),
    through :func:`fluxon.logging.init_logger` when available; with ``log_dir`` the same
    records are also appended to ``{log_dir}/{process_name}.log``.

    Returns
    -------
    logging.Logger
        The ``fluxon.{process_name}`` logger.
    """
    try:
        from ..logging import init_logger

        root = init_logger("fluxon")
    except ImportError:
        root = logging.getLogger("fluxon")
        root.handlers.clear()
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter(_FORMAT))
        handler.setLevel(os.environ.get("FLUXON_LOG", "INFO").upper())
        root.addHandler(handler)
        root.setLevel(logging.DEBUG)
        root.propagate = False
    if log_dir:
        os.makedirs(log_dir, exist_ok=True)
        file_handler = logging.FileHandler(os.path.join(log_dir, f"{process_name}.log"))
        file_handler.setFormatter(logging.Formatter(_FORMAT))
        file_handler.setLevel(os.environ.get("FLUXON_LOG", "INFO").upper())
        root.addHandler(file_handler)
    return logging.getLogger(f"fluxon.{process_name}")


def write_json_atomic(path: str, data: Any, mode: int = 0o600) -> None:
    """Write ``data`` as JSON to ``path`` atomically (temp file + rename), with ``mode``."""
    directory = os.path.dirname(os.path.abspath(path))
    tmp = os.path.join(directory, f".{os.path.basename(path)}.tmp.{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as f:
            f.write(orjson.dumps(data, option=orjson.OPT_INDENT_2))
            f.flush()
            os.fsync(f.fileno())
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    os.replace(tmp, path)


def read_json(path: str) -> Any:
    """Parse the JSON file at ``path`` (``None`` if missing or unreadable)."""
    try:
        with open(path, "rb") as f:
            return orjson.loads(f.read())
    except (OSError, orjson.JSONDecodeError):
        return None


def host_name() -> str:
    """This node's host name."""
    return socket.gethostname()
