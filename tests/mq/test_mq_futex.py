"""fluxon.futex: shared futex wait/wake on a numpy word."""

from __future__ import annotations

import threading
import time

import numpy as np

from fluxon.futex import futex_wait, futex_wake, seq_expected


def test_seq_expected_is_the_low_word_as_int32():
    assert seq_expected(5) == 5
    assert seq_expected((7 << 32) | 9) == 9
    assert seq_expected(0xFFFFFFFF) == -1
    assert seq_expected(0x80000000) == -(1 << 31)


def test_wait_returns_at_once_when_the_word_changed_and_times_out_otherwise():
    word = np.zeros(1, dtype=np.int64)
    addr = word.ctypes.data
    assert futex_wait(addr, 1, 5.0) is True  # the word holds 0, not 1
    t0 = time.monotonic()
    assert futex_wait(addr, 0, 0.05) is False
    assert time.monotonic() - t0 >= 0.04
    assert futex_wait(addr, 0, 0) is False


def test_wake_releases_a_sleeping_thread():
    word = np.zeros(1, dtype=np.int64)
    addr = word.ctypes.data
    result = {}
    sleeper = threading.Thread(target=lambda: result.setdefault("r", futex_wait(addr, 0, 30.0)))
    sleeper.start()
    deadline = time.monotonic() + 30
    woken = 0
    while sleeper.is_alive() and time.monotonic() < deadline:
        word[0] += 1
        woken += futex_wake(addr)
        sleeper.join(0.05)
    assert not sleeper.is_alive()
    assert result["r"] is True
