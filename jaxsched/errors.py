"""The one error type users see: a one-line message naming the file, line or key; and the one
line a signal ends a command with."""

from __future__ import annotations

import os
import signal
import sys

__all__ = ["JaxschedError", "PolicyError", "exit_for_signal", "exit_on_signals",
           "signal_exit_code", "signal_message"]

_SIGNAL_NAMES = {signal.SIGINT: "interrupted (SIGINT)", signal.SIGTERM: "terminated (SIGTERM)"}


class JaxschedError(Exception):
    """Bad input or an impossible request. ``str(err)`` is one line, meant for the user."""


class PolicyError(JaxschedError, ValueError):
    """A bad policy name, option or parameter; the message names the key."""


def signal_exit_code(signum: int) -> int:
    """The shell's convention: 128 + the signal number (130 for SIGINT, 143 for SIGTERM)."""
    return 128 + int(signum)


def signal_message(signum: int) -> str:
    return f"error: {_SIGNAL_NAMES.get(signum, f'signal {signum}')}"


def exit_for_signal(signum: int) -> None:
    """Write the signal's one line to stderr and leave at once (no finalization)."""
    try:
        os.write(sys.stderr.fileno(), (signal_message(signum) + "\n").encode())
    finally:
        os._exit(signal_exit_code(signum))


def exit_on_signals() -> None:
    """Until the CLI installs its own handlers (:mod:`jaxsched.cli.signals`), SIGINT and
    SIGTERM end the process at once with the one line: a signal while the CLI is still
    importing (typer, rich) leaves no traceback."""
    for signum in _SIGNAL_NAMES:
        signal.signal(signum, lambda s, frame: exit_for_signal(s))
