"""Ctrl-C and SIGTERM end a command in one line on stderr with exit 130 or 143.

A Python signal handler runs in the main thread between two bytecodes of whatever Python code
runs there. An exception raised from it inside library code (numpy's import, a JAX tracing
callback, a gc callback) can abort the process, and a handler that waits for JAX to finish a
compilation keeps the user waiting for seconds; the interpreter's finalization with XLA's
threads running can crash (exit 139). So:

* when the signal lands in jaxsched's own code (the ``jaxsched`` and ``tuning`` packages), a
  safe point, the handler raises :class:`Interrupted` (a ``KeyboardInterrupt``) so that
  ``finally`` blocks run (a progress bar closes, a tuner ends its batch); ``main()`` then prints
  the line and leaves with ``os._exit``, skipping finalization;
* when it lands anywhere else, the handler prints the line and calls ``os._exit`` at once;
* a watchdog thread, woken at once through ``signal.set_wakeup_fd``, does the same if the
  process is still there ``GRACE_S`` seconds later (the main thread is inside a compilation,
  or code swallowed the exception), and at once on a second signal.

Exit codes follow the shell's convention 128 + signal number: 130 for SIGINT, 143 for SIGTERM.
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
import sys
import threading

from jaxsched.errors import exit_for_signal, signal_exit_code, signal_message

__all__ = ["GRACE_S", "Interrupted", "exit_code", "exit_now", "handle_signals",
           "message", "SignalState"]

GRACE_S = 1.5  # seconds the main thread gets to reach a safe point after a signal


class Interrupted(KeyboardInterrupt):
    """Raised in the main thread by the handler; ``signum`` is the signal received."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum


_PACKAGE_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_OWN_DIRS = tuple(os.path.join(d, "") for d in
                  (_PACKAGE_DIR, os.path.join(os.path.dirname(_PACKAGE_DIR), "tuning")))


def _is_own_code(frame) -> bool:
    """Whether ``frame`` runs code of the jaxsched or tuning packages (a safe point)."""
    return frame is not None and frame.f_code.co_filename.startswith(_OWN_DIRS)


exit_code = signal_exit_code
message = signal_message


_exit_lock = threading.Lock()


def exit_now(signum: int) -> None:
    """Print the one line and leave the process without finalization (no XLA teardown)."""
    with _exit_lock:  # the watchdog and the main thread never both print
        exit_for_signal(signum)


class SignalState:
    """What :func:`handle_signals` saw: ``received`` lists the signals in order."""

    def __init__(self):
        self.received: list[int] = []


@contextlib.contextmanager
def handle_signals():
    """Install the SIGINT/SIGTERM handlers and the watchdog for the body; yields a
    :class:`SignalState`. Outside the main thread it installs nothing."""
    state = SignalState()
    if threading.current_thread() is not threading.main_thread():
        yield state
        return
    watched = (signal.SIGINT, signal.SIGTERM)
    r, w = os.pipe()
    os.set_blocking(w, False)

    def next_signal(timeout: float | None) -> int | None:
        """The next SIGINT/SIGTERM byte on the wakeup pipe; None on timeout or close."""
        while True:
            ready, _, _ = select.select([r], [], [], timeout)
            if not ready:
                return None
            data = os.read(r, 16)
            if not data:
                return None
            hits = [b for b in data if b in watched]
            if hits:
                return hits[0]

    def watchdog() -> None:
        try:
            first = next_signal(None)
            if first is None:
                return
            second = next_signal(GRACE_S)
            exit_now(second if second is not None else first)
        finally:
            os.close(r)

    def handler(signum, frame):
        state.received.append(signum)
        if len(state.received) == 1 and _is_own_code(frame):
            raise Interrupted(signum)
        exit_now(signum)

    old_hook = sys.unraisablehook

    def unraisable(info) -> None:
        # raised where Python cannot propagate it (a gc callback, a __del__): exit from here
        if isinstance(info.exc_value, Interrupted):
            exit_now(info.exc_value.signum)
        old_hook(info)

    sys.unraisablehook = unraisable
    old_fd = signal.set_wakeup_fd(w, warn_on_full_buffer=False)
    old = {s: signal.signal(s, handler) for s in watched}
    thread = threading.Thread(target=watchdog, name="jaxsched-signals", daemon=True)
    thread.start()
    try:
        yield state
    finally:
        for s, h in old.items():
            signal.signal(s, h)
        signal.set_wakeup_fd(old_fd)
        sys.unraisablehook = old_hook
        os.close(w)  # the watchdog's wait ends
