"""Config faults end in one line at validation: non-UTF-8 bytes, numbers the simulator's
float32/int32 arrays cannot hold, memory sums that could wrap int32, huge values in messages;
and a fuzz test (random bytes and values) that never sees a traceback."""

from __future__ import annotations

import subprocess
import sys

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from jaxsched.config import load_config
from jaxsched.errors import JaxschedError

BASE = b"""[system]
capacity = 3000
max_batch = 64
[workload]
kind = "poisson"
horizon = 50
[[workload.classes]]
prompt_len = 10
output_len = 20
rate = 1.0
"""


def jaxsched(*args):
    return subprocess.run([sys.executable, "-m", "jaxsched", *args], capture_output=True,
                          text=True, timeout=120)


def one_line_exit_2(proc) -> str:
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    return lines[0]


def test_non_utf8_config_names_file_and_line(tmp_path):
    path = tmp_path / "latin1.toml"
    path.write_bytes(BASE + "# caf\xe9\n".encode("latin-1"))
    line = one_line_exit_2(jaxsched("simulate", str(path)))
    assert "latin1.toml line 11: not UTF-8 text (byte 0xe9" in line


@pytest.mark.parametrize("override, fragment", [
    ("policy.budget=1e39", "policy.budget: 1e+39 is beyond float32"),
    ("system.d0=1e-40", "system.d0: 1e-40 underflows float32"),
    ("system.capacity=1e40", "system.capacity: 1e+40 is beyond float32"),
    ("system.capacity=inf", "system.capacity: must be finite"),
    ("workload.classes.0.rate=nan", "workload.classes.0.rate: must be finite"),
    ("workload.horizon=3000000000", "workload.horizon: 3000000000 is beyond int32"),
    ("system.capacity=2e10", "system.capacity: 2e+10 tokens is beyond int32"),
    ("system.max_batch=100000000", "could wrap the int32 memory sum"),
])
def test_unrepresentable_numbers_are_refused_at_validation(tmp_path, override, fragment):
    path = tmp_path / "c.toml"
    path.write_bytes(BASE.replace(b'[workload]', b'[policy]\nname = "flow_control"\n[workload]')
                     if override.startswith("policy.") else BASE)
    assert fragment in one_line_exit_2(jaxsched("simulate", str(path), "--set", override))


def test_a_huge_offending_value_is_not_repeated(tmp_path):
    path = tmp_path / "c.toml"
    path.write_bytes(BASE.replace(b"capacity = 3000", b'capacity = "' + b"x" * 1_000_000 + b'"'))
    line = one_line_exit_2(jaxsched("simulate", str(path)))
    assert "system.capacity" in line and len(line) < 400 and "(1000002 chars)" in line


def test_memory_at_the_int32_limit_is_accepted():
    cfg = load_config("configs/flow-control.toml",
                      ["system.capacity=2147483647", "system.max_batch=1000"])
    assert cfg.capacity == 2**31 - 1


# --- fuzz ----------------------------------------------------------------------------------

_KEYS = ["system.capacity", "system.d0", "system.d1", "system.max_batch", "system.queue_size",
         "workload.horizon", "workload.warmup", "workload.kind", "workload.classes.0.prompt_len",
         "workload.classes.0.rate", "policy.name", "policy.budget", "workload.num_workloads"]
_VALUES = st.one_of(
    st.integers(-2**40, 2**40).map(str),
    st.floats(allow_nan=True, allow_infinity=True).map(lambda x: repr(x).replace("inf", "inf")),
    st.text(max_size=30).map(lambda s: '"' + s.replace("\\", "").replace('"', "") + '"'),
    st.sampled_from(["true", "[1, 2]", "{}", "1e39", "1e-40", "-0.0", '"greedy"']),
)


def _load_one_line(data: bytes, overrides=()) -> None:
    """Either a config, or a one-line JaxschedError of bounded length: never another error."""
    import tempfile
    from pathlib import Path

    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "fuzz.toml"
        path.write_bytes(data)
        try:
            load_config(path, list(overrides))
        except JaxschedError as err:
            text = str(err)
            assert "\n" not in text and len(text) < 600, text


@settings(max_examples=150, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=300), st.integers(0, len(BASE)))
def test_fuzz_random_bytes_in_a_config(junk, at):
    _load_one_line(BASE[:at] + junk + BASE[at:])


@settings(max_examples=150, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(st.sampled_from(_KEYS), _VALUES), min_size=1, max_size=4))
def test_fuzz_random_values_in_a_config(pairs):
    _load_one_line(BASE, [f"{k}={v}" for k, v in pairs])


def test_fuzzed_configs_through_the_command_line(tmp_path):
    """A handful of the fuzz cases through a real subprocess: one line, no traceback."""
    import random

    rng = random.Random(0)
    for i in range(4):
        junk = bytes(rng.randrange(256) for _ in range(40))
        path = tmp_path / f"f{i}.toml"
        path.write_bytes(BASE[:20 * i] + junk + BASE[20 * i:])
        proc = jaxsched("theory", str(path))
        assert "Traceback" not in proc.stderr, proc.stderr
        if proc.returncode != 0:
            one_line_exit_2(proc)
