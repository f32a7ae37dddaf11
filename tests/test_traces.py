"""Trace loaders: shipped traces, round trips, caching and one-line errors naming file and line."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

import jaxsched
from jaxsched.workloads import traces as T
from jaxsched.errors import JaxschedError

HEADER = "TIMESTAMP,ContextTokens,GeneratedTokens\n"


def write(tmp_path: Path, name: str, text: str | bytes) -> Path:
    p = tmp_path / name
    if isinstance(text, bytes):
        p.write_bytes(text)
    else:
        p.write_text(text, newline="")
    return p


# ------------------------------------------------------------------------------------------
# shipped traces


@pytest.mark.parametrize("name, size", [("azure_code", 8819), ("azure_conv", 19366),
                                        ("mooncake_sample", 300)])
def test_shipped_traces_load(name, size):
    tr = T.load_trace(name)
    assert len(tr) == size and tr.source == name and tr.skipped == 0
    assert tr.arrival.dtype == np.float64 and tr.arrival[0] == 0.0
    assert np.all(np.diff(tr.arrival) >= 0)
    assert tr.prompt.min() >= 1 and tr.output.min() >= 1
    assert not tr.arrival.flags.writeable  # shared through the cache: read-only
    path = T.shipped_trace_path(name)
    assert path.is_file()
    package = Path(jaxsched.__file__).resolve().parent
    assert path.resolve().parent == package / "data" / "traces"


def test_shipped_azure_first_rows_and_license():
    tr = T.load_trace("azure_code")
    # 18:17:03.9799600, 18:17:04.0319600, 18:17:04.0781490
    np.testing.assert_allclose(tr.arrival[:3], [0.0, 0.052, 0.098189], atol=1e-9)
    np.testing.assert_array_equal(tr.prompt[:3], [4808, 3180, 110])
    np.testing.assert_array_equal(tr.output[:3], [10, 8, 27])
    folder = T.shipped_trace_path("azure_code").parent
    assert (folder / "LICENSE-azure-CC-BY-4.0.txt").is_file()
    readme = (folder / "README.md").read_text()
    assert "Splitwise" in readme and "Creative Commons Attribution 4.0" in readme
    assert "synthetic" in readme.lower()


def test_shipped_trace_path_by_file_name_and_unknown():
    assert T.shipped_trace_path("azure_llm_2023_conv.csv") == T.shipped_trace_path("azure_conv")
    with pytest.raises(JaxschedError, match="unknown shipped trace 'nope'"):
        T.shipped_trace_path("nope")


# ------------------------------------------------------------------------------------------
# round trips


def test_azure_round_trip(tmp_path):
    text = (
        "GeneratedTokens,Extra,TIMESTAMP,ContextTokens\r\n"  # any order, extra column, CRLF
        "5,x,2023-11-16 18:17:03.9799600,100\r\n"
        "7,y,2023-11-16 18:17:05.0000001,200\r\n"
        "\r\n"
        "9,z,2023-11-16 18:17:04.5,300\r\n"  # out of order: sorted on load
        "3,w,2023-11-16 18:18:03,400\r\n"
    )
    tr = T.load_trace(write(tmp_path, "a.csv", text))
    np.testing.assert_allclose(tr.arrival, [0.0, 0.52004, 1.0200401, 59.02004], atol=1e-9)
    np.testing.assert_array_equal(tr.prompt, [100, 300, 200, 400])
    np.testing.assert_array_equal(tr.output, [5, 9, 7, 3])
    assert tr.format == "azure" and tr.span == pytest.approx(59.02004)


def test_azure_timestamps_across_midnight_and_timezones(tmp_path):
    text = HEADER + ("2023-12-31 23:59:59.5,1,1\n"
                     "2024-01-01T00:00:00.25Z,1,1\n"
                     "2024-01-01 01:00:01+01:00,1,1\n")
    tr = T.load_trace(write(tmp_path, "m.csv", text), "azure")
    np.testing.assert_allclose(tr.arrival, [0.0, 0.75, 1.5])


def test_mooncake_round_trip(tmp_path):
    lines = [
        {"timestamp": 1000, "input_length": 10, "output_length": 3, "hash_ids": [1, 2]},
        {"timestamp": 1500.5, "input_length": 20, "output_length": 4, "other": "x"},
        {"timestamp": 1250, "input_length": 30, "output_length": 5},
    ]
    text = "\n".join(json.dumps(x) for x in lines) + "\n\n"
    tr = T.load_trace(write(tmp_path, "m.jsonl", text))
    assert tr.format == "mooncake"
    np.testing.assert_allclose(tr.arrival, [0.0, 0.25, 0.5005])
    np.testing.assert_array_equal(tr.prompt, [10, 30, 20])
    np.testing.assert_array_equal(tr.output, [3, 5, 4])
    # an explicit format overrides the suffix
    tr2 = T.load_trace(write(tmp_path, "m.txt", text), format="mooncake")
    np.testing.assert_array_equal(tr2.prompt, tr.prompt)


def test_cache_per_path_and_mtime(tmp_path):
    p = write(tmp_path, "c.csv", HEADER + "2023-11-16 18:17:03.0,10,5\n")
    first = T.load_trace(p)
    assert T.load_trace(p) is first
    p.write_text(HEADER + "2023-11-16 18:17:03.0,10,5\n2023-11-16 18:17:04.0,20,6\n")
    os.utime(p, ns=(first_ns := p.stat().st_mtime_ns + 10**9, first_ns))
    second = T.load_trace(p)
    assert second is not first and len(second) == 2
    T.clear_trace_cache()
    assert T.load_trace(p) is not second


def test_zero_output_rows_refused_by_default_or_skipped(tmp_path):
    text = HEADER + ("2023-11-16 18:17:03.0,10,5\n"
                     "2023-11-16 18:17:04.0,20,0\n"
                     "2023-11-16 18:17:05.0,30,6\n")
    p = write(tmp_path, "z.csv", text)
    with pytest.raises(JaxschedError) as err:
        T.load_trace(p)
    assert str(err.value) == f"{p} line 3: GeneratedTokens must be a positive integer, got '0'"
    tr = T.load_trace(p, skip_zero_output=True)
    assert tr.skipped == 1 and len(tr) == 2
    np.testing.assert_array_equal(tr.output, [5, 6])
    # zero prompts are never skipped
    q = write(tmp_path, "zp.csv", HEADER + "2023-11-16 18:17:03.0,0,5\n")
    with pytest.raises(JaxschedError, match="line 2: ContextTokens"):
        T.load_trace(q, skip_zero_output=True)
    allzero = write(tmp_path, "all0.csv", HEADER + "2023-11-16 18:17:03.0,3,0\n")
    with pytest.raises(JaxschedError, match=r"no requests \(1 rows with zero output skipped\)"):
        T.load_trace(allzero, skip_zero_output=True)


# ------------------------------------------------------------------------------------------
# malformed input: one line naming the file and the line

ROW = "2023-11-16 18:17:03.9799600,4808,10\n"

AZURE_CASES = [
    # (file content, line number or None, a fragment of the message)
    ("", None, "empty trace file"),
    ("\n\n", None, "empty trace file"),
    (HEADER, None, "no requests"),
    ("TIMESTAMP,Context,GeneratedTokens\n" + ROW, 1, "missing column(s) ContextTokens"),
    ("time,ContextTokens,Generated\n" + ROW, 1, "missing column(s) TIMESTAMP, GeneratedTokens"),
    ("TIMESTAMP,ContextTokens,GeneratedTokens,GeneratedTokens\n" + ROW.strip() + ",1\n", 1,
     "duplicate column(s) GeneratedTokens"),
    (HEADER + ROW + "2023/11/16 18:17:04,10,10\n", 3, "TIMESTAMP must look like"),
    (HEADER + ROW + "2023-13-16 18:17:04.0,10,10\n", 3, "TIMESTAMP must look like"),
    (HEADER + ROW + "yesterday,10,10\n", 3, "got 'yesterday'"),
    (HEADER + ROW * 3 + "2023-11-16 18:17:04.0,3.5,10\n", 5,
     "ContextTokens must be a positive integer, got '3.5'"),
    (HEADER + ROW + "2023-11-16 18:17:04.0,abc,10\n", 3, "ContextTokens must be a positive"),
    (HEADER + ROW + "2023-11-16 18:17:04.0,,10\n", 3, "got ''"),
    (HEADER + ROW + "2023-11-16 18:17:04.0,10,-3\n", 3,
     "GeneratedTokens must be a positive integer, got '-3'"),
    (HEADER + ROW + "2023-11-16 18:17:04.0,10,99999999999\n", 3, "must be at most"),
    (HEADER + ROW + "2023-11-16 18:17:04.0,10\n", 3, "expected 3 fields like the header, got 2"),
    (HEADER + ROW + "2023-11-16 18:17:04.0,10,10,7\n", 3, "expected 3 fields"),
    (HEADER + ROW + '"2023-11-16 18:17:04.0,10,10\nfoo\n', 3, "unbalanced quote"),
]


@pytest.mark.parametrize("content, line, fragment", AZURE_CASES)
def test_azure_malformed_one_line_error(tmp_path, content, line, fragment):
    p = write(tmp_path, "bad.csv", content)
    with pytest.raises(JaxschedError) as err:
        T.load_trace(p)
    msg = str(err.value)
    assert "\n" not in msg
    prefix = f"{p} line {line}: " if line is not None else f"{p}: "
    assert msg.startswith(prefix), msg
    assert fragment in msg


def test_non_utf8_names_the_line(tmp_path):
    p = write(tmp_path, "bin.csv", (HEADER + ROW).encode() + b"\xff\xfe,1,1\n")
    with pytest.raises(JaxschedError, match=r"bin\.csv line 3: not UTF-8"):
        T.load_trace(p)


MOONCAKE_CASES = [
    ('{"timestamp": 0, "input_length": 1, "output_length": 1}\n{"timestamp": 1, "input', 2,
     "invalid JSON"),
    ('[1, 2, 3]\n', 1, "expected a JSON object, got list"),
    ('{"timestamp": 0, "input_length": 5}\n', 1, "missing key(s) output_length"),
    ('{"timestamp": "noon", "input_length": 5, "output_length": 2}\n', 1,
     "timestamp must be a finite number of milliseconds, got 'noon'"),
    ('{"timestamp": 0, "input_length": 5, "output_length": 2}\n\n'
     '{"timestamp": 1, "input_length": -1, "output_length": 2}\n', 3,
     "input_length must be a positive integer, got '-1'"),
    ('{"timestamp": 0, "input_length": 5, "output_length": 2.5}\n', 1,
     "output_length must be a positive integer, got '2.5'"),
    ('{"timestamp": 0, "input_length": true, "output_length": 2}\n', 1, "got 'true'"),
    ('{"timestamp": 0, "input_length": 5, "output_length": 0}\n', 1, "got '0'"),
    ("\n\n", None, "no requests"),
]


@pytest.mark.parametrize("content, line, fragment", MOONCAKE_CASES)
def test_mooncake_malformed_one_line_error(tmp_path, content, line, fragment):
    p = write(tmp_path, "bad.jsonl", content)
    with pytest.raises(JaxschedError) as err:
        T.load_trace(p)
    msg = str(err.value)
    assert "\n" not in msg
    prefix = f"{p} line {line}: " if line is not None else f"{p}: "
    assert msg.startswith(prefix), msg
    assert fragment in msg


def test_file_level_errors(tmp_path):
    missing = tmp_path / "missing.csv"
    with pytest.raises(JaxschedError, match=r"missing\.csv: no such trace file$"):
        T.load_trace(missing)
    (tmp_path / "dir.csv").mkdir()
    with pytest.raises(JaxschedError, match="is a directory"):
        T.load_trace(tmp_path / "dir.csv")
    odd = write(tmp_path, "trace.parquet", "x")
    with pytest.raises(JaxschedError, match=r"trace\.parquet: cannot tell the trace format"):
        T.load_trace(odd)
    with pytest.raises(JaxschedError, match="unknown trace format 'excel'"):
        T.load_trace(write(tmp_path, "ok.csv", HEADER + ROW), format="excel")
    # a CSV read as mooncake fails on its first line, naming it
    with pytest.raises(JaxschedError, match=r"ok\.csv line 1: invalid JSON"):
        T.load_trace(tmp_path / "ok.csv", format="mooncake")


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root reads anything")
def test_unreadable_file(tmp_path):
    p = write(tmp_path, "locked.csv", HEADER + ROW)
    p.chmod(0)
    try:
        with pytest.raises(JaxschedError, match=r"locked\.csv: cannot read trace file"):
            T.load_trace(p)
    finally:
        p.chmod(0o644)
