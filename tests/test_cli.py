"""The CLI through its real entry point: exit codes, one-line errors, JSON keys, files."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from jaxsched.cli import main
from jaxsched.core.metrics import METRIC_KEYS

SMALL = ["--set", "workload.num_workloads=2", "--set", "workload.horizon=120",
         "--set", "workload.warmup=20"]


def _run(argv, capsys):
    code = main(argv)
    out, err = capsys.readouterr()
    return code, out, err


def test_simulate_json_has_exactly_the_documented_keys(capsys):
    code, out, _ = _run(["simulate", "--json", *SMALL], capsys)
    assert code == 0
    data = json.loads(out)  # exactly one JSON object on stdout
    assert set(data) == set(METRIC_KEYS) | {"num_workloads", "horizon", "sim_seconds",
                                            "compile_seconds", "run"}
    assert data["num_workloads"] == 2 and data["horizon"] == 120
    run = data["run"]  # what was run
    assert run["config"] == "embedded default config" and run["overrides"] == SMALL[1::2]
    assert run["policy"]["name"] == "greedy" and "max_num_seqs" in run["policy"]["params"]
    assert run["system"]["capacity"] > 0 and run["workload"]["horizon"] == 120
    assert data["completed_per_time"] > 0
    assert 0 < data["utilization"] <= 1


def test_simulate_per_workload_and_plot(tmp_path, capsys):
    png = tmp_path / "sim.png"
    code, out, _ = _run(["simulate", "--json", "--per-workload", "--plot", str(png), *SMALL], capsys)
    assert code == 0
    data = json.loads(out)
    assert len(data["per_workload"]["latency_p95"]) == 2
    assert png.stat().st_size > 10_000 and png.read_bytes()[:4] == b"\x89PNG"


def test_simulate_table_for_people(capsys):
    code, out, _ = _run(["simulate", *SMALL], capsys)
    assert code == 0
    assert "completed_per_time" in out and "latency_p95" in out


@pytest.mark.parametrize("overrides, fragment", [
    (["--set", "policy.name=nope"], "unknown policy 'nope'"),
    (["--set", "system.bogus=1"], "system.bogus: unknown key"),
    (["--set", "system.d2=-1"], "system.d2: Input should be greater than or equal to 0"),
    (["--set", "workload.warmup=5000"], "warmup (5000) must be smaller than horizon"),
    (["--set", "policy.max_num_seqs=-3"], "policy.max_num_seqs must be >= 1"),
    (["--set", "workload.classes.0.prompt_len=0"], "workload.classes.0.prompt_len"),
    (["--set", "workload.classes.0.prompt_len=5000"], "does not fit in system.capacity"),
    (["--set", "workload.classes.1.output_len=4000"], "could never complete"),
    (["--set", "policy.eviction=sideways"], "eviction must be one of"),
    (["--set", "system.capacity"], "expected section.key=value"),
    (["--stream", "--window", "10"], "--window 10: must be at least"),
])
def test_bad_input_is_one_line_and_exit_2(overrides, fragment, capsys):
    code, out, err = _run(["simulate", *overrides], capsys)
    assert code == 2
    assert out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ")
    assert fragment in lines[0]


def test_bad_files_name_the_file(tmp_path, capsys):
    missing = tmp_path / "missing.toml"
    code, _, err = _run(["simulate", str(missing)], capsys)
    assert code == 2 and "missing.toml: no such file" in err
    broken = tmp_path / "broken.toml"
    broken.write_text("[system\ncapacity = 1\n")
    code, _, err = _run(["simulate", str(broken)], capsys)
    assert code == 2 and "broken.toml: invalid TOML" in err and len(err.strip().splitlines()) == 1
    bad_trace = tmp_path / "t.csv"
    bad_trace.write_text("TIMESTAMP,ContextTokens,GeneratedTokens\n2023-11-16 18:17:03.97,12,x\n")
    cfg = tmp_path / "trace.toml"
    cfg.write_text(f"""
[system]
capacity = 1000
[workload]
kind = "trace"
path = "{bad_trace.name}"
format = "azure"
horizon = 10
""")
    code, _, err = _run(["simulate", str(cfg)], capsys)
    assert code == 2 and "t.csv line 2" in err and len(err.strip().splitlines()) == 1


def test_shipped_configs_validate_and_build():
    from jaxsched import api
    from jaxsched.config import load_config

    for name in ("flow-control", "saturated", "wait-low", "wait-high", "azure-code", "azure-conv"):
        cfg = load_config(f"configs/{name}.toml", ["workload.num_workloads=1"])
        exp = api.build_experiment(cfg)
        keys, workloads = api.build_workloads(cfg, min(exp.num_requests, 256), exp.duration)
        assert workloads.arrival.shape == (1, min(exp.num_requests, 256))
        assert cfg.capacity > 0 and exp.shape.horizon == cfg.workload.horizon


def test_theory_command_prints_the_papers_numbers(capsys):
    code, out, _ = _run(["theory", "configs/flow-control.toml", "--json"], capsys)
    assert code == 0
    rows = {(r["section"], r["quantity"]): r["value"] for r in json.loads(out)}
    assert rows[("flow_control", "w_k")] == [410.0, 1220.0, 2430.0]
    assert rows[("flow_control", "load sum lambda_k w_k")] == 20300.0


def test_bench_sim_measures_against_the_reference(capsys):
    code, out, _ = _run(["bench", "sim", "--json", "--workloads", "1,4", "--reference-workloads", "1",
                         "--set", "workload.horizon=100", "--set", "workload.warmup=10"], capsys)
    assert code == 0
    data = json.loads(out)
    assert [r["num_workloads"] for r in data["rows"]] == [1, 4]
    assert data["reference_agrees"] is True
    assert all(r["speedup_vs_reference"] > 0 and r["requests_per_second"] > 0 for r in data["rows"])


def test_console_script_entry_point():
    proc = subprocess.run([sys.executable, "-m", "jaxsched", "simulate", "--set", "policy.name=x"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip().startswith("error: unknown policy 'x'")
    assert "Traceback" not in proc.stderr
