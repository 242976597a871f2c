"""Console logging for fluxon and for programs using it.

``init_logger(name)`` gives a logger that writes to stderr (coloured only on a terminal)
with a threshold taken from the ``FLUXON_LOG`` environment variable (``DEBUG``,
``INFO`` (default), ``WARNING``, ``ERROR``, ``CRITICAL``)::

    from fluxon.logging import init_logger
    log = init_logger(__name__)
    log.info("started")

``update_log_level("DEBUG")`` retunes every logger made so far and updates ``FLUXON_LOG``
so that child processes inherit the level.
"""

from __future__ import annotations

import logging
import os
import sys
import threading

__all__ = ["LOG_ENV", "init_logger", "level_from_env", "update_log_level"]

#: Environment variable holding the console threshold.
LOG_ENV = "FLUXON_LOG"
_DEFAULT_LEVEL = logging.INFO
_LEVELS = {
    "DEBUG": logging.DEBUG,
    "INFO": logging.INFO,
    "WARNING": logging.WARNING,
    "WARN": logging.WARNING,
    "ERROR": logging.ERROR,
    "CRITICAL": logging.CRITICAL,
    "FATAL": logging.CRITICAL,
}
_FORMAT = "%(asctime)s.%(msecs)03d %(levelname)-8s %(process)d %(name)s: %(message)s"
_DATEFMT = "%Y-%m-%d %H:%M:%S"
_COLOURS = {
    logging.DEBUG: "\x1b[36m",  # cyan
    logging.INFO: "\x1b[32m",  # green
    logging.WARNING: "\x1b[33m",  # yellow
    logging.ERROR: "\x1b[31m",  # red
    logging.CRITICAL: "\x1b[1;31m",  # bold red
}
_RESET = "\x1b[0m"

_lock = threading.Lock()
#: Handlers installed by init_logger, by logger name (retuned by update_log_level).
_handlers: dict[str, logging.Handler] = {}


def _parse_level(value: str | int | None) -> int | None:
    if value is None:
        return None
    if isinstance(value, int) and not isinstance(value, bool):
        return value if value in _LEVELS.values() else None
    if isinstance(value, str):
        text = value.strip().upper()
        if text.isdigit():
            number = int(text)
            return number if number in _LEVELS.values() else None
        return _LEVELS.get(text)
    return None


def level_from_env() -> int:
    """The threshold named by ``FLUXON_LOG``; INFO when unset or unreadable."""
    level = _parse_level(os.environ.get(LOG_ENV))
    return _DEFAULT_LEVEL if level is None else level


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is at emit time (works with redirection and
    pytest capture)."""

    def __init__(self) -> None:
        logging.Handler.__init__(self)

    @property
    def stream(self):  # type: ignore[override]
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:  # setStream() support; the stream is always stderr
        pass


class _Formatter(logging.Formatter):
    """Colours the level name when stderr is a terminal (and ``NO_COLOR`` is unset)."""

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        stream = sys.stderr
        if os.environ.get("NO_COLOR") or not getattr(stream, "isatty", lambda: False)():
            return text
        colour = _COLOURS.get(record.levelno)
        if colour is None:
            return text
        name = record.levelname
        return text.replace(name, f"{colour}{name}{_RESET}", 1)


def init_logger(name: str = "fluxon") -> logging.Logger:
    """A console logger whose threshold is ``FLUXON_LOG``.

    Replaces the logger's handlers with one stderr handler, stops propagation to the
    root logger, and leaves the logger itself at DEBUG (the handler filters), so that
    extra handlers added later can see everything. Calling it again is harmless.

    Parameters
    ----------
    name : str
        Logger name, usually ``__name__``.

    Returns
    -------
    logging.Logger
    """
    logger = logging.getLogger(name)
    handler = _StderrHandler()
    handler.setFormatter(_Formatter(_FORMAT, _DATEFMT))
    handler.setLevel(level_from_env())
    with _lock:
        for old in list(logger.handlers):
            logger.removeHandler(old)
        logger.addHandler(handler)
        logger.setLevel(logging.DEBUG)
        logger.propagate = False
        _handlers[name] = handler
    return logger


def update_log_level(level: str | int) -> int:
    """Set the console threshold of every logger made by :func:`init_logger`.

    Also writes ``FLUXON_LOG`` so that loggers created later, and child processes,
    use the same level.

    Parameters
    ----------
    level : str | int
        ``"DEBUG"`` ... ``"CRITICAL"`` (any case) or a ``logging`` level number.

    Returns
    -------
    int
        The numeric level now in force.

    Raises
    ------
    ValueError
        For an unknown level.
    """
    number = _parse_level(level)
    if number is None:
        raise ValueError(
            f"unknown log level {level!r}; use one of DEBUG, INFO, WARNING, ERROR, CRITICAL"
        )
    os.environ[LOG_ENV] = logging.getLevelName(number)
    with _lock:
        for handler in _handlers.values():
            handler.setLevel(number)
    return number
