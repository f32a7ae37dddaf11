"""Loading recorded LLM inference traces into numpy (:class:`Trace`).

Formats
-------
* ``"azure"``: CSV with a header naming the columns ``TIMESTAMP``, ``ContextTokens`` and
  ``GeneratedTokens`` (any order; other columns ignored), as in the Azure LLM inference
  traces. ``TIMESTAMP`` is ``YYYY-MM-DD HH:MM:SS[.fraction]`` (any number of fractional
  digits, e.g. ``2023-11-16 18:17:03.9799600``; a ``T`` separator and a ``Z`` or ``+HH:MM``
  suffix are accepted). ``ContextTokens`` is the prompt, ``GeneratedTokens`` the output.
* ``"mooncake"``: JSON lines, one object per request, with ``timestamp`` (milliseconds),
  ``input_length`` (prompt) and ``output_length`` (output); other keys (``hash_ids``...) are
  ignored; blank lines are skipped.
* ``"auto"``: by suffix, ``.csv`` -> azure, ``.jsonl``/``.json`` -> mooncake.

Result: arrival times in float64 seconds after the earliest request (so ``arrival[0] = 0``),
prompt and output lengths as int64, all sorted by arrival (stable: ties keep file order).

Rules for lengths: every prompt and output must be an integer in ``[1, 2^31 - 1]``; anything
else is refused with a :class:`JaxschedError` naming the file and line. The shipped Azure
traces have no zero-length rows (their smallest prompt is 2 tokens, smallest output 6). Some
other public traces record requests with zero generated tokens (failed or cancelled
requests); ``skip_zero_output=True`` drops exactly those rows (output == 0, prompt valid) and
counts them in :attr:`Trace.skipped`. Zero prompts and negative values are always refused.

Names: ``load_trace("azure_code")`` (or ``"azure_conv"``, ``"mooncake_sample"``) loads a
trace shipped inside the package (:func:`shipped_trace_path`); any other string is a path.

Parsed traces are cached per (resolved path, format, options) and reused while the file's
modification time and size are unchanged; their arrays are read-only.
"""

from __future__ import annotations

import csv
import dataclasses
import datetime as _dt
import io
import json
import math
import os
import re
from pathlib import Path

import numpy as np

from jaxsched.errors import JaxschedError

__all__ = [
    "Trace",
    "TRACE_FORMATS",
    "SHIPPED_TRACES",
    "shipped_trace_path",
    "resolve_trace_path",
    "load_trace",
    "clear_trace_cache",
]

TRACE_FORMATS = ("azure", "mooncake")
"""Formats :func:`load_trace` reads (plus ``"auto"``, by file suffix)."""

SHIPPED_TRACES = {
    "azure_code": ("azure_llm_2023_code.csv", "azure"),
    "azure_conv": ("azure_llm_2023_conv.csv", "azure"),
    "mooncake_sample": ("mooncake_sample.jsonl", "mooncake"),
}
"""Traces shipped in ``jaxsched/data/traces``: name -> (file name, format)."""

_AZURE_COLUMNS = ("TIMESTAMP", "ContextTokens", "GeneratedTokens")
_MOONCAKE_KEYS = ("timestamp", "input_length", "output_length")
_MAX_LEN = 2**31 - 1
_TIMESTAMP = re.compile(
    r"(\d{4})-(\d{2})-(\d{2})[ T](\d{2}):(\d{2}):(\d{2})(?:\.(\d+))?"
    r"(Z|[+-]\d{2}:?\d{2})?"
)
_EPOCH = _dt.datetime(1970, 1, 1, tzinfo=_dt.timezone.utc)


@dataclasses.dataclass(frozen=True, eq=False)
class Trace:
    """A recorded trace: one entry per request, sorted by arrival."""

    arrival: np.ndarray  # (T,) float64 seconds after the earliest request; arrival[0] = 0
    prompt: np.ndarray  # (T,) int64 prompt tokens, >= 1
    output: np.ndarray  # (T,) int64 output tokens, >= 1
    source: str  # where it came from: a shipped name or the path as given
    format: str = "azure"  # "azure" or "mooncake"
    skipped: int = 0  # rows dropped by skip_zero_output

    @property
    def num_requests(self) -> int:
        return int(self.arrival.shape[0])

    def __len__(self) -> int:
        return self.num_requests

    @property
    def span(self) -> float:
        """Seconds from the first to the last request."""
        return float(self.arrival[-1] - self.arrival[0])


# --------------------------------------------------------------------------------------------
# paths


def _traces_dir() -> Path:
    return Path(__file__).resolve().parents[1] / "data" / "traces"


def shipped_trace_path(name: str) -> Path:
    """Path of a trace shipped with the package: ``"azure_code"``, ``"azure_conv"`` or
    ``"mooncake_sample"`` (the file names themselves are accepted too)."""
    by_file = {f: n for n, (f, _) in SHIPPED_TRACES.items()}
    key = by_file.get(name, name)
    if key not in SHIPPED_TRACES:
        known = ", ".join(SHIPPED_TRACES)
        raise JaxschedError(f"unknown shipped trace {name!r}; known: {known}")
    return _traces_dir() / SHIPPED_TRACES[key][0]


def resolve_trace_path(path) -> tuple[Path, str | None, str]:
    """``(file path, format implied by a shipped name or None, display name)``.

    A string equal to a key of :data:`SHIPPED_TRACES` names a shipped trace; anything else is
    a file path (relative paths are relative to the working directory).
    """
    if isinstance(path, str) and path in SHIPPED_TRACES:
        return shipped_trace_path(path), SHIPPED_TRACES[path][1], path
    if not isinstance(path, (str, os.PathLike)):
        raise JaxschedError(f"trace path must be a string or path, got {type(path).__name__}")
    p = Path(path).expanduser()
    return p, None, str(path)


# --------------------------------------------------------------------------------------------
# parsing helpers


def _fail(where: str, line: int | None, message: str) -> JaxschedError:
    message = " ".join(str(message).split())  # one line, whatever the input held
    if line is None:
        return JaxschedError(f"{where}: {message}")
    return JaxschedError(f"{where} line {line}: {message}")


def _short(value, limit: int = 40) -> str:
    text = value if isinstance(value, str) else json.dumps(value)
    text = " ".join(text.split())
    if len(text) > limit:
        text = text[: limit - 3] + "..."
    return repr(text)


def _parse_length(raw, name: str, where: str, line: int, allow_zero: bool) -> int:
    """A length field: an integer in [1, 2^31 - 1] (or 0 when ``allow_zero``)."""
    value = None
    if isinstance(raw, str):
        s = raw.strip()
        if re.fullmatch(r"[+-]?\d+", s):
            value = int(s)
    elif isinstance(raw, bool):
        value = None
    elif isinstance(raw, int):
        value = raw
    elif isinstance(raw, float) and math.isfinite(raw) and raw.is_integer():
        value = int(raw)
    lowest = 0 if allow_zero else 1
    if value is None or value < lowest:
        raise _fail(where, line, f"{name} must be a positive integer, got {_short(raw)}")
    if value > _MAX_LEN:
        raise _fail(where, line, f"{name} must be at most {_MAX_LEN}, got {_short(raw)}")
    return value


def _parse_lengths(raw_prompt, raw_output, names: tuple[str, str], where: str, line: int,
                   skip_zero_output: bool) -> tuple[int, int] | None:
    """A record's ``(prompt, output)`` lengths (fields named ``names``), or None for a record
    with zero output that ``skip_zero_output`` drops."""
    prompt = _parse_length(raw_prompt, names[0], where, line, False)
    output = _parse_length(raw_output, names[1], where, line, skip_zero_output)
    return None if output == 0 else (prompt, output)


def _parse_timestamp(raw: str, where: str, line: int) -> tuple[int, float]:
    """``(whole seconds since 1970 UTC, fraction in [0, 1))`` of an Azure timestamp."""
    m = _TIMESTAMP.fullmatch(raw.strip())
    bad = f"TIMESTAMP must look like 'YYYY-MM-DD HH:MM:SS.fffffff', got {_short(raw)}"
    if m is None:
        raise _fail(where, line, bad)
    y, mo, d, h, mi, s, frac, tz = m.groups()
    try:
        zone = _dt.timezone.utc
        if tz and tz != "Z":
            sign = -1 if tz[0] == "-" else 1
            hh, mm = int(tz[1:3]), int(tz[-2:])
            zone = _dt.timezone(sign * _dt.timedelta(hours=hh, minutes=mm))
        stamp = _dt.datetime(int(y), int(mo), int(d), int(h), int(mi), int(s), tzinfo=zone)
    except ValueError:
        raise _fail(where, line, bad) from None
    whole = (stamp - _EPOCH) // _dt.timedelta(seconds=1)
    return int(whole), (int(frac) / 10 ** len(frac)) if frac else 0.0


def _read_text(path: Path, where: str) -> str:
    if not path.exists():
        raise _fail(where, None, "no such trace file")
    if path.is_dir():
        raise _fail(where, None, "is a directory, not a trace file")
    try:
        data = path.read_bytes()
    except OSError as err:
        raise _fail(where, None, f"cannot read trace file: {err.strerror or err}") from None
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        line = data[: err.start].count(b"\n") + 1
        raise _fail(where, line, "not UTF-8 text (is this a trace file?)") from None


def _parse_azure(text: str, where: str, skip_zero_output: bool):
    reader = csv.reader(io.StringIO(text, newline=""))
    try:
        header = next(reader, None)
        while header is not None and not any(h.strip() for h in header):
            header = next(reader, None)
    except csv.Error as err:
        raise _fail(where, reader.line_num, f"malformed CSV: {err}") from None
    if header is None:
        raise _fail(where, None, "empty trace file (no header, no requests)")
    header_line = reader.line_num
    names = [h.strip() for h in header]
    missing = [c for c in _AZURE_COLUMNS if c not in names]
    if missing:
        raise _fail(
            where, header_line,
            f"missing column(s) {', '.join(missing)} in header {_short(','.join(header), 80)}; "
            f"expected {','.join(_AZURE_COLUMNS)}",
        )
    dup = sorted({c for c in _AZURE_COLUMNS if names.count(c) > 1})
    if dup:
        raise _fail(where, header_line, f"duplicate column(s) {', '.join(dup)} in header")
    i_ts, i_ctx, i_gen = (names.index(c) for c in _AZURE_COLUMNS)
    width = len(names)

    whole, frac, prompt, output = [], [], [], []
    skipped = 0
    try:
        end = reader.line_num
        for row in reader:
            line, end = end + 1, reader.line_num  # the record spans lines line..end
            if end > line:
                raise _fail(where, line,
                            "a quoted field runs over several lines (unbalanced quote?)")
            if not row or (len(row) == 1 and not row[0].strip()):
                continue
            if len(row) != width:
                raise _fail(where, line,
                            f"expected {width} fields like the header, got {len(row)}")
            w, f = _parse_timestamp(row[i_ts], where, line)
            lengths = _parse_lengths(row[i_ctx], row[i_gen], ("ContextTokens", "GeneratedTokens"),
                                     where, line, skip_zero_output)
            if lengths is None:
                skipped += 1
                continue
            whole.append(w)
            frac.append(f)
            prompt.append(lengths[0])
            output.append(lengths[1])
    except csv.Error as err:
        raise _fail(where, reader.line_num, f"malformed CSV: {err}") from None
    whole_a = np.asarray(whole, np.int64)
    arrival = (whole_a - (whole_a.min() if whole_a.size else 0)).astype(np.float64)
    arrival += np.asarray(frac, np.float64)
    if arrival.size:
        arrival -= arrival.min()
    return arrival, prompt, output, skipped


def _parse_mooncake(text: str, where: str, skip_zero_output: bool):
    stamps, prompt, output = [], [], []
    skipped = 0
    for line, raw in enumerate(text.split("\n"), start=1):  # JSON strings may hold U+2028
        raw = raw.rstrip("\r")
        if not raw.strip():
            continue
        try:
            obj = json.loads(raw)
        except json.JSONDecodeError as err:
            raise _fail(where, line, f"invalid JSON: {err.msg} (column {err.colno})") from None
        if not isinstance(obj, dict):
            raise _fail(where, line, f"expected a JSON object, got {type(obj).__name__}")
        missing = [k for k in _MOONCAKE_KEYS if k not in obj]
        if missing:
            raise _fail(where, line, f"missing key(s) {', '.join(missing)}; expected "
                                     f"{', '.join(_MOONCAKE_KEYS)}")
        ts = obj["timestamp"]
        if isinstance(ts, bool) or not isinstance(ts, (int, float)) or not math.isfinite(ts):
            raise _fail(where, line, f"timestamp must be a finite number of milliseconds, "
                                     f"got {_short(ts)}")
        lengths = _parse_lengths(obj["input_length"], obj["output_length"],
                                 ("input_length", "output_length"), where, line, skip_zero_output)
        if lengths is None:
            skipped += 1
            continue
        stamps.append(ts)
        prompt.append(lengths[0])
        output.append(lengths[1])
    ms = np.asarray(stamps, np.float64)
    arrival = (ms - (ms.min() if ms.size else 0.0)) / 1000.0
    return arrival, prompt, output, skipped


# --------------------------------------------------------------------------------------------
# loading and caching

_CACHE: dict[tuple, tuple[tuple, Trace]] = {}
_CACHE_SIZE = 16


def clear_trace_cache() -> None:
    """Forget every parsed trace."""
    _CACHE.clear()


def _infer_format(path: Path, where: str) -> str:
    suffix = path.suffix.lower()
    if suffix == ".csv":
        return "azure"
    if suffix in (".jsonl", ".json", ".ndjson"):
        return "mooncake"
    raise _fail(where, None, f"cannot tell the trace format from suffix {suffix!r}; "
                             f"give format as one of {', '.join(TRACE_FORMATS)}")


def load_trace(path, format: str = "auto", *, skip_zero_output: bool = False) -> Trace:
    """Load a trace file (or a shipped trace by name) into a :class:`Trace`.

    Args:
      path: a file path, or a name from :data:`SHIPPED_TRACES` (``"azure_code"``...).
      format: ``"azure"``, ``"mooncake"`` or ``"auto"`` (from the suffix; a shipped name
        knows its format).
      skip_zero_output: drop rows whose output length is 0 (counted in ``Trace.skipped``)
        instead of refusing them.

    Raises:
      JaxschedError: one line naming the file (and line) on a missing or unreadable file,
        missing header columns or keys, a malformed timestamp or JSON line, a length that is
        not a positive integer, or a trace without requests.
    """
    file, implied, where = resolve_trace_path(path)
    fmt = str(format).lower()
    if fmt == "auto":
        fmt = implied or _infer_format(file, where)
    if fmt not in TRACE_FORMATS:
        raise _fail(where, None, f"unknown trace format {format!r}; known: "
                                 f"{', '.join(TRACE_FORMATS)}, auto")
    try:
        st = file.stat()
        key = (str(file.resolve()), fmt, bool(skip_zero_output))
        stamp = (st.st_mtime_ns, st.st_size)
    except OSError:
        key = stamp = None  # _read_text reports it
    if key is not None and key in _CACHE and _CACHE[key][0] == stamp:
        cached = _CACHE[key][1]
        if cached.source == where:
            return cached
        return dataclasses.replace(cached, source=where)

    text = _read_text(file, where)
    parse = _parse_azure if fmt == "azure" else _parse_mooncake
    arrival, prompt, output, skipped = parse(text, where, skip_zero_output)
    if arrival.size == 0:
        extra = f" ({skipped} rows with zero output skipped)" if skipped else ""
        raise _fail(where, None, f"trace has no requests{extra}")
    order = np.argsort(arrival, kind="stable")
    arrays = [arrival[order], np.asarray(prompt, np.int64)[order],
              np.asarray(output, np.int64)[order]]
    for a in arrays:
        a.flags.writeable = False
    trace = Trace(*arrays, source=where, format=fmt, skipped=skipped)
    if key is not None:
        if len(_CACHE) >= _CACHE_SIZE:
            _CACHE.pop(next(iter(_CACHE)))
        _CACHE[key] = (stamp, trace)
    return trace
