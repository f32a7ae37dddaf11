"""The engine commands through the real entry point: serve (a real subprocess on 127.0.0.1),
calibrate (profile fields, simulate with it), compare-sim (table keys, PNG), bench engine, and
one-line errors for bad policy files."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import tomllib

import httpx
import numpy as np
import pytest

from jaxsched.cli import main
from jaxsched.engine.compare import COMPARE_KEYS


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def profile(tmp_path_factory):
    """A profile from a small calibration grid (shared by the tests below)."""
    out = tmp_path_factory.mktemp("cal") / "profile.toml"
    rc = main(["calibrate", "--out", str(out), "--batches", "1,4", "--prompts", "8,48",
               "--output-len", "4", "--serve-runs", "2", "--num-requests", "8",
               "--timer", "cpu", "--probe"])
    assert rc == 0
    return out


def test_calibrate_writes_profile(profile, tmp_path, capsys):
    data = tomllib.loads(profile.read_text())
    system = data["system"]
    for key in ("name", "model", "device", "capacity", "d0", "d1_prefill", "d1_context", "d2",
                "fit_rms", "fit_rel_error", "samples"):
        assert key in system, key
    assert "d1" not in system and "block_size" not in system  # token memory: the default
    assert system["capacity"] == 1024  # the default EngineConfig's C
    assert min(system["d0"], system["d1_prefill"], system["d1_context"], system["d2"]) >= 0
    assert system["fit_rms"] >= 0 and system["samples"] >= 2
    assert data["engine"]["max_batch"] == 8
    cal = data["calibration"]  # how it was measured, and the single-d1 comparison fits
    assert cal["timer"] == "cpu" and cal["probe_reference_s"] > 0  # --probe
    for key in ("mean_abs_rel_error", "overhead_s", "single_d1_d0", "single_d1_d1",
                "single_d1_d2", "single_d1_rel_error", "single_d1_mean_abs_rel_error",
                "without_d2_d0", "without_d2_d1", "without_d2_rel_error",
                "without_d2_mean_abs_rel_error"):
        assert key in cal, key
    # The split fit includes the single-d1 one (d1_prefill = d1_context), which includes the
    # one without d2: each error is never larger than the next.
    assert system["fit_rel_error"] <= cal["single_d1_rel_error"] + 1e-12
    assert cal["single_d1_rel_error"] <= cal["without_d2_rel_error"] + 1e-12

    # A config includes it and simulate runs with it.
    cfg = tmp_path / "cfg.toml"
    cfg.write_text(
        f'[system]\nprofile = "{profile.name}"\nmax_batch = 8\nqueue_size = 16\n'
        '[workload]\nkind = "poisson"\nhorizon = 200\nnum_workloads = 2\n'
        '[[workload.classes]]\nprompt_len = 32\noutput_len = 8\nrate = 50.0\n'
        '[policy]\nname = "greedy"\n')
    (tmp_path / profile.name).write_text(profile.read_text())
    capsys.readouterr()
    assert main(["simulate", str(cfg), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["completed_per_time"] > 0

    from jaxsched.config import load_config

    loaded = load_config(cfg)
    assert loaded.capacity == 1024 and loaded.d2 == pytest.approx(system["d2"])
    assert loaded.d1_prefill == pytest.approx(system["d1_prefill"])
    assert loaded.d1_context == pytest.approx(system["d1_context"])


def test_fit_tau_recovers_d2_and_keeps_coefficients_non_negative():
    from jaxsched.engine.calibrate import fit_tau

    rng = np.random.default_rng(0)
    tokens = rng.integers(0, 400, 200).astype(float)
    reqs = rng.integers(0, 5, 200).astype(float)
    times = 2e-3 + 5e-6 * tokens + 3e-3 * reqs
    d0, d1, d2, rms, rel, _ = fit_tau(tokens, times, reqs)
    assert (d0, d1, d2) == pytest.approx((2e-3, 5e-6, 3e-3), rel=1e-9)
    assert rms < 1e-12 and rel < 1e-9
    before = fit_tau(tokens, times)
    assert before[2] == 0.0 and before[4] > 0.1  # without d2 the fit is far off
    # A negative unconstrained d2 (time falls with R) is clipped to 0: the fit without it.
    d0, d1, d2, *_ = fit_tau(tokens, 2e-3 + 5e-6 * tokens - 1e-4 * reqs, reqs)
    assert d2 == 0.0 and d0 >= 0 and d1 >= 0


def test_fit_split_tau_recovers_prefill_and_context_coefficients():
    from jaxsched.engine.calibrate import fit_split_tau, fit_tau

    rng = np.random.default_rng(1)
    prefill = rng.integers(0, 300, 300).astype(float) * (rng.random(300) < 0.3)
    context = rng.integers(0, 3000, 300).astype(float)
    reqs = (prefill > 0) * rng.integers(1, 4, 300).astype(float)
    # A100-like: a prefill token 200x a context token
    times = 4e-3 + 6e-5 * prefill + 3e-7 * context + 1e-3 * reqs
    d0, dp, dc, d2, rms, rel, _ = fit_split_tau(prefill, context, times, reqs)
    assert (d0, dp, dc, d2) == pytest.approx((4e-3, 6e-5, 3e-7, 1e-3), rel=1e-7)
    assert rms < 1e-12
    single = fit_tau(prefill + context, times, reqs)
    assert single[4] > 0.05  # one d1 for both cannot follow these times
    # a negative unconstrained coefficient is clipped to 0
    d0, dp, dc, d2, *_ = fit_split_tau(prefill, context, 4e-3 + 6e-5 * prefill - 1e-8 * context)
    assert dc == 0.0 and d2 == 0.0 and dp > 0


def test_calibrate_table_reports_fit_error(tmp_path, capsys):
    out = tmp_path / "p.toml"
    assert main(["calibrate", "--out", str(out), "--batches", "2", "--prompts", "8",
                 "--output-len", "3"]) == 0
    text = capsys.readouterr().out
    assert "fit error" in text and "RMS" in text and "d1_prefill =" in text
    assert "d1_context =" in text and "one d1 for both kinds" in text
    assert out.is_file()


def test_calibrate_samples_serving_runs(tmp_path, capsys):
    out = tmp_path / "p.toml"
    assert main(["calibrate", "--out", str(out), "--batches", "2", "--prompts", "8",
                 "--output-len", "3", "--serve-runs", "1", "--num-requests", "6",
                 "--workload", "saturated", "--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    runs = [r["run"] for r in d["rows"]]
    assert runs[0] == "grid b=2 l=8" and runs[1].startswith("serve saturated")
    assert d["samples"] == sum(r["iterations"] for r in d["rows"])
    assert d["timer"] == "wall"
    assert main(["calibrate", "--out", str(out), "--timer", "gpu"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and "--timer" in err and "\n" not in err


def test_compare_sim_table_and_plot(profile, tmp_path, capsys):
    png = tmp_path / "mem.png"
    capsys.readouterr()
    rc = main(["compare-sim", "--policy", "greedy", "--profile", str(profile), "--plot",
               str(png), "--num-requests", "10", "--max-output", "8", "--json"])
    assert rc == 0
    out = json.loads(capsys.readouterr().out)
    assert set(out) >= {"engine", "sim", "rel_error"}
    for side in ("engine", "sim", "rel_error"):
        assert set(out[side]) == set(COMPARE_KEYS)
    assert out["engine"]["completed"] == out["sim"]["completed"] == 10
    cal = tomllib.loads(profile.read_text())["calibration"]
    assert out["probe_reference_s"] == cal["probe_reference_s"]  # as calibrated
    assert png.is_file() and png.stat().st_size > 1000
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_compare_sim_from_workload_config(profile, tmp_path, capsys):
    capsys.readouterr()
    rc = main(["compare-sim", "--policy", "greedy", "--profile", str(profile), "--workload",
               "saturated", "--num-requests", "8", "--max-output", "6"])
    assert rc == 0
    text = capsys.readouterr().out
    for key in COMPARE_KEYS:
        assert key in text


def test_compare_sim_probe_needs_a_probed_profile(profile, tmp_path, capsys):
    """--probe with a profile calibrated without it is a one-line error; --no-probe turns the
    profile's normalization off."""
    text = profile.read_text()
    bare = tmp_path / "bare.toml"
    bare.write_text("\n".join(line for line in text.splitlines()
                              if not line.startswith("probe_reference_s")))
    capsys.readouterr()
    rc = main(["compare-sim", "--policy", "greedy", "--profile", str(bare), "--probe",
               "--num-requests", "2"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and "probe_reference_s" in err and "\n" not in err
    negative = tmp_path / "negative.toml"
    negative.write_text("\n".join("probe_reference_s = -1.0"
                                  if line.startswith("probe_reference_s") else line
                                  for line in text.splitlines()))
    rc = main(["compare-sim", "--policy", "greedy", "--profile", str(negative),
               "--num-requests", "2"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and "calibration.probe_reference_s: expected a positive" in err
    assert "\n" not in err
    rc = main(["compare-sim", "--policy", "greedy", "--profile", str(profile), "--no-probe",
               "--num-requests", "4", "--max-output", "4", "--json"])
    assert rc == 0 and json.loads(capsys.readouterr().out)["probe_reference_s"] is None


@pytest.mark.parametrize("content", ["{not json", '{"schema_version": 99}'])
def test_bad_policy_file_is_one_line(tmp_path, capsys, content):
    bad = tmp_path / "policy.json"
    bad.write_text(content)
    rc = main(["compare-sim", "--policy", str(bad), "--num-requests", "2"])
    err = capsys.readouterr().err.strip()
    assert rc == 2
    assert err.startswith("error:") and "\n" not in err


def test_missing_policy_file_is_one_line(tmp_path, capsys):
    rc = main(["serve", "--policy", str(tmp_path / "nope.json"), "--port", "1"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and err.startswith("error:") and "\n" not in err


def test_bench_engine(capsys):
    assert main(["bench", "engine", "--batches", "1,2", "--output-len", "4", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert [r["batch"] for r in out["rows"]] == [1, 2]
    assert all(r["decode_tokens_per_s"] > 0 for r in out["rows"])
    assert main(["bench", "engine", "--batches", "1", "--output-len", "3"]) == 0
    text = capsys.readouterr().out
    if not out["gpu"]:
        assert "no GPU available" in text


def test_serve_subprocess():
    port = _free_port()
    code = "import sys; from jaxsched.cli import main; sys.exit(main(sys.argv[1:]))"
    proc = subprocess.Popen(
        [sys.executable, "-c", code, "serve", "--port", str(port), "--host", "127.0.0.1",
         "--log-level", "warning"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=dict(os.environ))
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None, proc.stdout.read().decode(errors="replace")
            try:
                if httpx.get(f"{base}/health", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "server did not become healthy"
            time.sleep(0.2)
        r = httpx.post(f"{base}/v1/completions", json={"prompt": "hello", "max_tokens": 4,
                                                       "temperature": 0, "ignore_eos": True},
                       timeout=60)
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["usage"]["completion_tokens"] == 4
        assert body["choices"][0]["finish_reason"] == "length"
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)
    assert proc.returncode is not None


def test_compare_sim_with_exported_policy_file(profile, tmp_path, capsys):
    ex = pytest.importorskip("jaxsched.export.policy_file")
    snapshot = {
        "system": {"capacity": 1024.0, "d0": 0.002, "d1": 3e-6, "max_batch": 8,
                   "queue_size": 16, "restart_on_evict": False},
        "workload": {"kind": "poisson", "horizon": 100, "warmup": 10, "num_workloads": 2,
                     "seed": 0, "classes": [{"prompt_len": 16, "output_len": 8, "rate": 50.0}]},
        "policy": {"name": "vllm"},
    }
    doc = ex.policy_document(snapshot, {"max_num_seqs": 4, "max_num_batched_tokens": 128,
                                        "watermark": 0.05},
                             {k: 1.0 for k in ex.REQUIRED_METRICS}, source="t.toml",
                             hardware=None, fingerprint="sha256:" + "0" * 64)
    path = ex.write_policy(doc, tmp_path / "policy.json")
    capsys.readouterr()
    rc = main(["compare-sim", "--policy", str(path), "--profile", str(profile),
               "--num-requests", "6", "--max-output", "6", "--json"])
    assert rc == 0
    out = json.loads(capsys.readouterr().out)
    assert out["policy"] == "vllm"
    assert out["engine"]["completed"] == out["sim"]["completed"] == 6


def test_compare_sim_warns_beyond_its_tolerance(profile):
    """A replay whose simulator misses the engine by more than --rtol prints one warning line
    on stderr naming the metrics (here --rtol 0: any difference is a miss)."""
    proc = subprocess.run([sys.executable, "-m", "jaxsched", "compare-sim", "--policy", "greedy",
                           "--profile", str(profile), "--num-requests", "8", "--max-output",
                           "6", "--rtol", "0", "--json"],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    rel = json.loads(proc.stdout)["rel_error"]
    missed = [k for k, v in rel.items() if v is None or v > 0]
    warnings = [line for line in proc.stderr.splitlines() if line.startswith("warning:")]
    if missed:
        assert len(warnings) == 1 and "beyond the tolerance 0%" in warnings[0]
        assert all(k in warnings[0] for k in missed)
    else:
        assert warnings == []
