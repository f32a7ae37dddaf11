"""Output for people: warnings on results that mean nothing, tables that fit 80 columns, the
plots' empty-panel case; through real ``python -m jaxsched`` subprocesses."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from jaxsched.cli.sanity import comparison_warnings, reproduction_warnings
from jaxsched.tools.reproduce import PolicyRow, Reproduction

COLS80 = {**os.environ, "COLUMNS": "80"}


def jaxsched(*args, env=None):
    return subprocess.run([sys.executable, "-m", "jaxsched", *args], capture_output=True,
                          text=True, timeout=300, env=env)


def warnings_of(proc) -> list[str]:
    assert "Traceback" not in proc.stderr
    return [line for line in proc.stderr.splitlines() if line.startswith("warning:")]


def test_a_replay_where_nothing_completes_warns_and_plots_no_empty_cdf(tmp_path):
    png = tmp_path / "empty.png"
    proc = jaxsched("simulate", "azure-conv", "--set", "workload.horizon=50", "--set",
                    "workload.warmup=0", "--set", "workload.num_workloads=1", "--json",
                    "--plot", str(png))
    assert proc.returncode == 0, proc.stderr
    (line,) = warnings_of(proc)
    assert "no request completed after the warm-up in any of the 1 workloads" in line
    assert json.loads(proc.stdout)["latency_mean"] is None
    assert png.read_bytes()[:4] == b"\x89PNG"


def test_few_completions_warn_about_the_percentiles():
    proc = jaxsched("simulate", "--json", "--set", "workload.num_workloads=1", "--set",
                    "workload.horizon=25", "--set", "workload.warmup=5")
    assert proc.returncode == 0, proc.stderr
    (line,) = warnings_of(proc)
    assert "too few for latency_p95 (wants 20), latency_p99 (wants 100)" in line


def test_a_healthy_run_prints_no_warning():
    proc = jaxsched("simulate", "--json", "--set", "workload.num_workloads=2", "--set",
                    "workload.horizon=600", "--set", "workload.warmup=50")
    assert proc.returncode == 0 and warnings_of(proc) == []


def test_tables_fit_80_columns_or_turn_vertical():
    theory = jaxsched("theory", "configs/flow-control.toml", env=COLS80)
    assert theory.returncode == 0, theory.stderr
    lines = theory.stdout.splitlines()
    assert all(len(line) <= 80 for line in lines) and "…" not in theory.stdout
    assert "wait compute-stable" in lines  # vertical: the row's heading on its own line
    sim = jaxsched("simulate", "--per-workload", "--set", "workload.num_workloads=8", "--set",
                   "workload.horizon=120", "--set", "workload.warmup=20", env=COLS80)
    assert sim.returncode == 0, sim.stderr
    assert all(len(line) <= 80 for line in sim.stdout.splitlines()) and "…" not in sim.stdout
    assert "completed_per_time" in sim.stdout and "w7: " in sim.stdout


def test_theory_does_not_call_an_overloaded_setting_stable():
    proc = jaxsched("theory", "configs/flow-control.toml", "--json")
    rows = {(r["section"], r["quantity"]): r for r in json.loads(proc.stdout)}
    assert ("wait", "stable") not in rows
    row = rows[("wait", "compute-stable")]
    assert row["value"] is True and "memory is the feasibility row" in row["note"]
    assert rows[("wait", "feasible (C >= M*)")]["value"] is False


def _flow_rep(greedy_ratio, known_ratio, known_evictions=0.0):
    def row(label, ratio, ev):
        return PolicyRow(label, {"evictions": ev, "completed_per_time": ratio * 12.0}, ratio)
    return Reproduction("flow-control", [], [], {}, [],
                        [row("greedy (LIFO)", greedy_ratio, 1e4),
                         row("flow_control_known b=4", known_ratio, known_evictions)])


def test_reproduction_warns_when_its_finding_does_not_hold():
    assert reproduction_warnings(_flow_rep(0.80, 0.97), 0.5) == []  # the README's run
    (line,) = reproduction_warnings(_flow_rep(0.938, 0.943), 0.1)  # what --scale 0.1 gives
    assert line.startswith("flow-control: the README's finding does not hold at --scale 0.1")
    assert "93.8%" in line and "94.3%" in line
    assert len(reproduction_warnings(_flow_rep(0.8, 0.97, known_evictions=3), 1)) == 1


def test_comparison_warns_beyond_the_tolerance():
    assert comparison_warnings({"completed": 0.0, "latency_mean": 0.05}, 0.15) == []
    (line,) = comparison_warnings({"completed": 0.0, "latency_mean": 0.35,
                                   "evictions": float("nan")}, 0.15)
    assert "latency_mean 35%" in line and "evictions n/a" in line and "completed" not in line


def test_reproduction_at_a_small_scale_warns_that_its_finding_does_not_hold(tmp_path):
    """At --scale 0.03 flow control no longer lifts throughput over greedy (measured by hand:
    43.5% vs 54.3% of the memory bound): the reproduction says so on stderr."""
    proc = jaxsched("reproduce", "flow-control", "--scale", "0.03", "--only",
                    "greedy,flow_control_known", "--out", str(tmp_path))
    assert proc.returncode == 0, proc.stderr
    (line,) = warnings_of(proc)
    assert line.startswith("warning: flow-control: the README's finding does not hold at "
                           "--scale 0.03: flow_control_known reaches")
    assert (tmp_path / "flow-control.png").is_file()
