"""The one error type users see: a one-line message naming the file, line or key."""

from __future__ import annotations

__all__ = ["JaxschedError"]


class JaxschedError(Exception):
    """Bad input or an impossible request. ``str(err)`` is one line, meant for the user."""
