"""The one error type users see: a one-line message naming the file, line or key."""

from __future__ import annotations

__all__ = ["JaxschedError", "PolicyError"]


class JaxschedError(Exception):
    """Bad input or an impossible request. ``str(err)`` is one line, meant for the user."""


class PolicyError(JaxschedError, ValueError):
    """A bad policy name, option or parameter; the message names the key."""
