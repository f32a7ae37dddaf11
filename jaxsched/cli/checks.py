"""Options checked before any work: a bad ``--plot``/``--out``/``--plots`` or integer list
(``--batches 1,2,4``) is one line.

A run that fails to write its result after minutes of simulation loses the result; so each
command checks its output options first: the format from the suffix, and that the folder
exists (or can be made, for folder options) and is writable. Nothing is created by a check
except a folder option's folder.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from jaxsched.errors import JaxschedError

__all__ = ["IMAGE_SUFFIXES", "check_output_dir", "check_output_file", "check_existing_sqlite",
           "parse_int_list"]

IMAGE_SUFFIXES = (".png", ".svg", ".pdf")  # formats matplotlib writes from the suffix


def _writable_dir(folder: Path) -> bool:
    """Whether a file can be made in ``folder``: tried, not guessed from the mode bits (root
    passes ``os.access`` on a read-only file system)."""
    if not folder.is_dir():
        return False
    try:
        fd, probe = tempfile.mkstemp(dir=folder, prefix=".jaxsched-probe-")
    except OSError:
        return False
    os.close(fd)
    os.unlink(probe)
    return True


def check_output_file(path: Path | None, flag: str, suffixes: tuple[str, ...] | None = None) -> None:
    """``path`` can be written as a new or replaced file with one of ``suffixes``."""
    if path is None:
        return
    path = Path(path)
    if suffixes is not None and path.suffix.lower() not in suffixes:
        raise JaxschedError(f"{flag} {path}: expected a {' or '.join(suffixes)} file "
                            f"(got {path.suffix or 'no suffix'!r})")
    if path.is_dir():
        raise JaxschedError(f"{flag} {path}: is a folder, expected a file")
    folder = path.parent if str(path.parent) else Path(".")
    if not folder.exists():
        raise JaxschedError(f"{flag} {path}: folder {folder} does not exist")
    if not _writable_dir(folder):
        raise JaxschedError(f"{flag} {path}: folder {folder} is not writable")
    if path.exists() and not os.access(path, os.W_OK):
        raise JaxschedError(f"{flag} {path}: file exists and is not writable")


def check_output_dir(path: Path | None, flag: str) -> None:
    """``path`` is a writable folder, made (with its parents) if missing."""
    if path is None:
        return
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise JaxschedError(f"{flag} {path}: is a file, expected a folder")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise JaxschedError(f"{flag} {path}: cannot create the folder ({exc.strerror})") from None
    if not _writable_dir(path):
        raise JaxschedError(f"{flag} {path}: folder is not writable")


def check_existing_sqlite(storage: str | None, flag: str = "--storage") -> None:
    """A SQLite storage that is read (not created) must exist: a typo would make an empty one."""
    if storage is None:
        from tuning.study_storage import DEFAULT_STORAGE

        storage = DEFAULT_STORAGE
    s = str(storage)
    if "://" in s:
        if not s.startswith("sqlite:///"):
            return  # a server database: its own client reports a bad URL
        s = s[len("sqlite:///"):]
        if s in ("", ":memory:"):
            return
    if not Path(s).is_file():
        raise JaxschedError(f"{flag} {storage}: no such SQLite file")


def parse_int_list(text: str, option: str) -> tuple[int, ...]:
    """``"1,2,4"`` -> ``(1, 2, 4)``; a one-line :class:`JaxschedError` naming ``option``
    otherwise (not integers, none, or one below 1)."""
    try:
        values = tuple(int(x) for x in str(text).split(",") if x.strip())
    except ValueError:
        raise JaxschedError(f"{option} {text!r}: expected comma-separated integers") from None
    if not values or min(values) < 1:
        raise JaxschedError(f"{option} {text!r}: values must be >= 1")
    return values
