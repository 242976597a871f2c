"""Ctrl-C / SIGTERM handling that keeps blocking work out of the signal frame.

:func:`register_ctrlc_callback` turns the first SIGINT or SIGTERM into one call of a user
callback on a dedicated listener thread. The signal handler itself only records the
reason and wakes that thread, so the callback may block (close handles, join threads,
talk to etcd) without running inside an arbitrary frame of the main thread.
"""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Callable

_log = logging.getLogger("fluxon.runtime")

_SIGNALS = (signal.SIGINT, signal.SIGTERM)


def _reason(signum: int) -> str:
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"


def register_ctrlc_callback(
    cb: Callable[[str], None], *, thread_name: str = "fluxon-ctrlc"
) -> Callable[[], None]:
    """Run ``cb(reason)`` once, on a listener thread, at the first SIGINT or SIGTERM.

    Parameters
    ----------
    cb : callable
        Called with ``"SIGINT"`` or ``"SIGTERM"``. Runs at most once, never in the signal
        frame. Exceptions it raises are logged.
    thread_name : str
        Name of the listener thread.

    Returns
    -------
    callable
        ``restore_fn()``: stops the listener and restores the previous signal handlers
        (idempotent).

    Notes
    -----
    Called on the main thread it installs Python signal handlers. Called on another
    thread (where ``signal.signal`` is not allowed) it blocks SIGINT/SIGTERM in the calling
    thread and waits for them with ``sigwait`` on the listener; the signals reach it only if
    every other thread blocks them too.
    """
    fired = threading.Event()
    stop = threading.Event()
    wake = threading.Event()
    state: dict[str, str | None] = {"reason": None}
    lock = threading.Lock()

    def deliver(reason: str) -> None:
        with lock:
            if fired.is_set() or stop.is_set():
                return
            fired.set()
        try:
            cb(reason)
        except Exception:  # noqa: BLE001 - a shutdown callback must not kill the listener
            _log.exception("ctrl-c callback failed (%s)", reason)

    if threading.current_thread() is threading.main_thread():
        previous = {sig: signal.getsignal(sig) for sig in _SIGNALS}

        def on_signal(signum: int, _frame: object) -> None:
            if state["reason"] is None:
                state["reason"] = _reason(signum)
                wake.set()
            else:
                _log.info("%s received again; shutdown already in progress", _reason(signum))

        def listen() -> None:
            wake.wait()
            if not stop.is_set() and state["reason"] is not None:
                deliver(state["reason"])

        for sig in _SIGNALS:
            signal.signal(sig, on_signal)
        listener = threading.Thread(target=listen, name=thread_name, daemon=True)
        listener.start()

        def restore() -> None:
            if stop.is_set():
                return
            stop.set()
            wake.set()
            if threading.current_thread() is threading.main_thread():
                for sig, handler in previous.items():
                    if signal.getsignal(sig) is on_signal:
                        signal.signal(sig, handler if handler is not None else signal.SIG_DFL)
            if listener is not threading.current_thread():
                listener.join(timeout=1.0)

        return restore

    # Off the main thread: sigwait on the listener.
    old_mask = signal.pthread_sigmask(signal.SIG_BLOCK, _SIGNALS)

    def listen_sigwait() -> None:
        signal.pthread_sigmask(signal.SIG_BLOCK, _SIGNALS)
        while not stop.is_set():
            signum = signal.sigtimedwait(_SIGNALS, 0.2)
            if signum is None:
                continue
            if stop.is_set():
                return
            deliver(_reason(signum.si_signo))
            return

    listener = threading.Thread(target=listen_sigwait, name=thread_name, daemon=True)
    listener.start()

    def restore_sigwait() -> None:
        if stop.is_set():
            return
        stop.set()
        if listener is not threading.current_thread():
            listener.join(timeout=1.0)
        signal.pthread_sigmask(signal.SIG_SETMASK, old_mask)

    return restore_sigwait
