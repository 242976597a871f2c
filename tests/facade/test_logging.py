"""init_logger / update_log_level and the FLUXON_LOG threshold."""

from __future__ import annotations

import io
import itertools
import logging
import os
import re

import pytest

from fluxon import logging as flog

_names = itertools.count()


@pytest.fixture
def name(monkeypatch):
    """A fresh logger name; FLUXON_LOG and every handler level are restored afterwards."""
    original = flog.level_from_env()
    monkeypatch.delenv(flog.LOG_ENV, raising=False)
    yield f"fluxon.test.logger{next(_names)}"
    flog.update_log_level(original)  # monkeypatch then restores FLUXON_LOG itself


def test_logger_shape(name):
    log = flog.init_logger(name)
    assert log.name == name
    assert log.level == logging.DEBUG
    assert log.propagate is False
    assert len(log.handlers) == 1
    assert log.handlers[0].level == logging.INFO
    assert flog.init_logger(name) is log
    assert len(log.handlers) == 1  # re-initialising replaces, never stacks


def test_default_name():
    assert flog.init_logger().name == "fluxon"


def test_existing_handlers_are_replaced(name):
    log = logging.getLogger(name)
    log.addHandler(logging.NullHandler())
    log.addHandler(logging.NullHandler())
    flog.init_logger(name)
    assert len(log.handlers) == 1
    assert not isinstance(log.handlers[0], logging.NullHandler)


@pytest.mark.parametrize(
    "env,level",
    [
        ("DEBUG", logging.DEBUG),
        ("debug", logging.DEBUG),
        ("INFO", logging.INFO),
        ("WARNING", logging.WARNING),
        ("warn", logging.WARNING),
        ("ERROR", logging.ERROR),
        ("CRITICAL", logging.CRITICAL),
        (" error ", logging.ERROR),
        ("10", logging.DEBUG),
        ("", logging.INFO),
        ("verbose", logging.INFO),
        ("info,fluxon=debug", logging.INFO),
        ("7", logging.INFO),
    ],
)
def test_threshold_from_env(name, monkeypatch, env, level):
    monkeypatch.setenv(flog.LOG_ENV, env)
    assert flog.level_from_env() == level
    assert flog.init_logger(name).handlers[0].level == level


def test_messages_go_to_stderr_above_the_threshold(name, monkeypatch, capsys):
    monkeypatch.setenv(flog.LOG_ENV, "WARNING")
    log = flog.init_logger(name)
    log.info("quiet message")
    log.warning("loud message %d", 42)
    captured = capsys.readouterr()
    assert captured.out == ""
    assert "quiet message" not in captured.err
    line = captured.err.strip()
    assert re.fullmatch(
        rf"\d{{4}}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{{3}} WARNING +\d+ "
        rf"{re.escape(name)}: loud message 42",
        line,
    ), line
    assert "\x1b[" not in captured.err  # not a terminal: no colour


def test_does_not_propagate_to_root(name, caplog):
    log = flog.init_logger(name)
    with caplog.at_level(logging.DEBUG):
        log.warning("only on our handler")
    assert "only on our handler" not in caplog.text


class _Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_colour_only_on_a_terminal(name, monkeypatch):
    log = flog.init_logger(name)
    tty = _Tty()
    monkeypatch.setattr("sys.stderr", tty)
    log.error("red alert")
    assert "\x1b[31mERROR" in tty.getvalue()
    monkeypatch.setenv("NO_COLOR", "1")
    log.error("plain")
    assert "\x1b[" not in tty.getvalue().splitlines()[-1]
    plain = io.StringIO()
    monkeypatch.delenv("NO_COLOR")
    monkeypatch.setattr("sys.stderr", plain)
    log.error("again")
    assert "\x1b[" not in plain.getvalue() and "again" in plain.getvalue()


def test_update_log_level_retunes_existing_loggers(name, capsys):
    first = flog.init_logger(name)
    second = flog.init_logger(name + ".child")
    first.debug("hidden")
    assert "hidden" not in capsys.readouterr().err

    assert flog.update_log_level("debug") == logging.DEBUG
    assert flog.level_from_env() == logging.DEBUG
    assert os.environ[flog.LOG_ENV] == "DEBUG"
    first.debug("now visible")
    second.debug("child visible")
    err = capsys.readouterr().err
    assert "now visible" in err and "child visible" in err

    flog.update_log_level(logging.ERROR)
    assert os.environ[flog.LOG_ENV] == "ERROR"
    first.warning("suppressed")
    assert "suppressed" not in capsys.readouterr().err
    # A logger created later picks the level up from the environment.
    assert flog.init_logger(name + ".late").handlers[0].level == logging.ERROR


@pytest.mark.parametrize("bad", ["loud", "", 7, None, True])
def test_update_log_level_rejects_unknown_levels(name, bad):
    with pytest.raises(ValueError, match="unknown log level"):
        flog.update_log_level(bad)
