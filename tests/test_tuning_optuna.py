"""Optuna tuning: batched evaluation, SQLite storage, resume, failed and interrupted trials,
constraints, Pareto fronts, plots, the CLI. Real SQLite files, real subprocesses."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import optuna
import pytest
from optuna.trial import TrialState

from jaxsched.cli import main
from jaxsched.config import load_config
from jaxsched.errors import JaxschedError
from jaxsched.testing import small_tuning_config
from tuning.batch_evaluator import BatchEvaluator
from tuning.optuna_loop import run_optuna
from tuning.study_plots import save_plots
from tuning.study_storage import META_KEY
from tuning.tune_bench import bench_tune
from tuning.tune_job import prepare

def write_config(tmp_path: Path, tune: str = "", horizon: int = 120, workloads: int = 3,
                 name: str = "small.toml", policy: str = "flow_control") -> Path:
    path = tmp_path / name
    path.write_text(small_tuning_config("batch = 4\ntrials = 8\n" + tune, horizon, workloads,
                                        policy))
    return path


def sqlite(tmp_path: Path, name: str = "tune.db") -> str:
    return f"sqlite:///{tmp_path / name}"


def trials_of(url: str, study: str):
    return optuna.load_study(study_name=study, storage=url).get_trials(deepcopy=False)


# ------------------------------------------------------------------------------------------
# Batched evaluation.


def test_batched_evaluation_equals_one_at_a_time(tmp_path):
    cfg = load_config(write_config(tmp_path))
    job = prepare(cfg)
    big = BatchEvaluator(job, 4)
    one = BatchEvaluator(job, 1, big.keys, big.workloads)
    points = [{"budget": b} for b in (0.5, 1.0, 2.5, 4.0)]
    batched = big.evaluate_per_workload(points)
    assert batched["latency_p95"].shape == (4, 3)
    counts = ("evictions", "overflow_steps", "queue_final", "peak_memory")
    for i, p in enumerate(points):
        single = one.evaluate_per_workload([p])
        for k, v in batched.items():
            if k in counts:  # integer counts: exactly equal
                np.testing.assert_array_equal(v[i], single[k][0], err_msg=k)
            else:  # float sums may differ in the last bit (reduction order of another program)
                np.testing.assert_allclose(v[i], single[k][0], rtol=1e-6, err_msg=k)
    # padding: fewer points than K give the same rows, and no recompilation
    part = big.evaluate_per_workload(points[:2])
    for k in part:
        np.testing.assert_array_equal(part[k], batched[k][:2])
    assert big.calls == 2 and one.calls == 4
    # and the batch agrees with the plain simulate path (jaxsched.run) on the default point
    from jaxsched import api

    summary = api.run(cfg).summary
    mine = big.evaluate([big.default_point])[0]
    for k in ("completed_per_time", "latency_p95", "evictions"):
        assert mine[k] == pytest.approx(summary[k], rel=1e-6)


# ------------------------------------------------------------------------------------------
# SQLite storage, resume, study checks.


def test_sqlite_study_survives_and_resumes(tmp_path):
    url = sqlite(tmp_path)
    cfg = load_config(write_config(tmp_path))
    job = prepare(cfg)
    out = run_optuna(job, trials=6, batch=4, storage=url, study_name="s")
    assert out.evaluated == 6 and len(out.told) == 6 and out.batches == 2
    trials = trials_of(url, "s")
    assert [t.number for t in trials] == list(range(6))
    assert all(t.state == TrialState.COMPLETE for t in trials)
    # trial 0 is the config's own parameters, the baseline: score = 1 - 0.5
    assert trials[0].params == job.space.default_point()
    assert trials[0].values[0] == pytest.approx(0.5)
    for t in trials:
        assert set(t.user_attrs["metrics"]) >= {"completed_per_time", "latency_p95",
                                                "evictions_per_request"}
        assert t.user_attrs["worker"].count(":") == 2
    meta = optuna.load_study(study_name="s", storage=url).user_attrs[META_KEY]
    assert meta["fingerprint"] == job.fingerprint and meta["config"]["policy"]["name"] == "flow_control"

    # rerunning continues the study: the same target does nothing, a larger one adds trials
    again = run_optuna(prepare(load_config(write_config(tmp_path))), trials=6, batch=4,
                           storage=url, study_name="s")
    assert again.told == [] and again.evaluated == 6
    more = run_optuna(job, trials=9, batch=4, storage=url, study_name="s")
    assert more.told == [6, 7, 8] and more.evaluated == 9
    before = {t.number: t.values for t in trials}
    after = {t.number: t.values for t in trials_of(url, "s")}
    assert all(after[n] == v for n, v in before.items())
    assert out.best and out.best[0].values[0] >= 0.5

    # a different setup on the same study is refused
    other = prepare(load_config(write_config(tmp_path, 'weights = { completed_per_time = 1.0 }',
                                                 name="other.toml")))
    with pytest.raises(JaxschedError, match="was created for another setup"):
        run_optuna(other, trials=9, batch=4, storage=url, study_name="s")


def test_nonfinite_metrics_fail_the_trial_with_a_reason(tmp_path):
    url = sqlite(tmp_path)
    job = prepare(load_config(write_config(
        tmp_path, "[tune.space.budget]\nlow = 0.0\nhigh = 4.0")))
    run_optuna(job, trials=1, batch=4, storage=url, study_name="nan")
    study = optuna.load_study(study_name="nan", storage=url)
    study.enqueue_trial({"budget": 0.0})  # admits nothing: no latency at all
    out = run_optuna(job, trials=3, batch=4, storage=url, study_name="nan")
    bad = trials_of(url, "nan")[1]
    assert bad.params == {"budget": 0.0} and bad.state == TrialState.FAIL
    assert bad.user_attrs["fail_reason"] == "non-finite metrics: latency_p95=nan"
    assert out.failed == [1] and out.evaluated == 3  # a failed evaluation counts as evaluated
    assert trials_of(url, "nan")[2].state == TrialState.COMPLETE


def test_constraints_pareto_front_and_plots(tmp_path):
    url = sqlite(tmp_path)
    tune = """objective = "pareto"
sampler = "nsga2"
[[tune.constraints]]
metric = "evictions_per_request"
max = 0.05
"""
    job = prepare(load_config(write_config(tmp_path, tune)))
    assert job.objective.directions == ("maximize", "minimize")
    out = run_optuna(job, trials=12, batch=4, storage=url, study_name="p")
    trials = trials_of(url, "p")
    assert all(t.state == TrialState.COMPLETE for t in trials)
    name = "evictions_per_request<=0.05"
    for t in trials:
        assert t.constraints[name] == pytest.approx(t.user_attrs["metrics"]["evictions_per_request"] - 0.05)
    feasible = [t for t in trials if t.constraints[name] <= 0]
    front = out.best
    assert front and all(t.constraints[name] <= 0 for t in front)
    for t in front:  # nothing feasible dominates a front member
        for u in feasible:
            assert not (u.values[0] >= t.values[0] and u.values[1] <= t.values[1]
                        and tuple(u.values) != tuple(t.values))
    study = optuna.load_study(study_name="p", storage=url)
    paths, notes = save_plots(study, out.objective, tmp_path / "plots")
    names = {Path(p).name for p in paths}
    assert {"pareto_front.png", "optimization_history_completed_per_time.png"} <= names, notes
    for p in paths:
        assert Path(p).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("sampler", ["cmaes", "random"])
def test_other_samplers(tmp_path, sampler):
    job = prepare(load_config(write_config(tmp_path, policy="flow_control_known")))
    assert [d.name for d in job.space.dims] == ["budget[0]", "budget[1]"]
    out = run_optuna(job, trials=5, batch=4, storage=sqlite(tmp_path), study_name=sampler,
                         sampler=sampler)
    assert out.evaluated == 5 and out.sampler == sampler


# ------------------------------------------------------------------------------------------
# CLI.


def test_cli_tune_json_and_errors(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cfg = write_config(tmp_path)
    rc = main(["tune", str(cfg), "--trials", "4", "--batch", "4", "--json",
               "--plots", str(tmp_path / "plots")])
    out = json.loads(capsys.readouterr().out)
    assert rc == 0 and out["evaluated"] == 4 and out["study"] == "small-flow_control"
    assert out["storage"] == "sqlite:///jaxsched-tune.db" and (tmp_path / "jaxsched-tune.db").is_file()
    assert (tmp_path / "plots" / "optimization_history.png").is_file()
    assert out["best"][0]["values"]["score"] >= 0.5

    rc = main(["tune", str(cfg), "--method", "gradient", "--set", "tune.gradient.stepz=3"])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1
    assert "tune.gradient.stepz: unknown key" in err
    rc = main(["tune", str(cfg), "--storage", "nosuchdb://x"])
    err = capsys.readouterr().err
    assert rc == 2 and err.startswith("error: --storage nosuchdb://x: cannot open") and err.count("\n") == 1
    rc = main(["tune", str(write_config(tmp_path, 'sampler = "grid"', name="bad.toml"))])
    err = capsys.readouterr().err
    assert rc == 2 and "bad.toml: tune.sampler:" in err
    import jax

    many = len(jax.devices()) + 1
    rc = main(["tune", str(cfg), "--trials", "5", "--batch", "4", "--devices", str(many)])
    err = capsys.readouterr().err
    assert rc == 2 and f"error: --devices {many}: only" in err


# ------------------------------------------------------------------------------------------
# Kill and resume (a real process, SIGKILL mid-batch).


ENTRY = "import sys; from jaxsched.cli import main; sys.exit(main(sys.argv[1:]))"


def _env(tmp_path):
    env = dict(os.environ)
    env.update(JAX_COMPILATION_CACHE_DIR=str(tmp_path.parent / "jax-cache"),
               JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
               JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="-1")
    return env


def _kill_mid_batch(cmd, tmp_path, url) -> bool:
    """Start a worker, SIGKILL it while a batch is being simulated; True if trials were left
    running (the kill can race with the end of a batch)."""
    proc = subprocess.Popen(cmd, cwd=tmp_path, env=_env(tmp_path), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    storage = optuna.storages.RDBStorage(url)
    try:
        deadline = time.time() + 240
        study_id = None
        while time.time() < deadline and proc.poll() is None:
            if study_id is None:
                try:
                    study_id = storage.get_study_id_from_name("k")
                except KeyError:
                    time.sleep(0.1)
                    continue
            ts = storage.get_all_trials(study_id, deepcopy=False)
            done = [t for t in ts if t.state == TrialState.COMPLETE]
            running = [t for t in ts if t.state == TrialState.RUNNING and "worker" in t.user_attrs]
            if len(done) >= 4 and running:
                os.kill(proc.pid, signal.SIGKILL)
                break
            time.sleep(0.01)
    finally:
        proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL, proc.stderr.read().decode()[-2000:]
    return any(t.state == TrialState.RUNNING for t in trials_of(url, "k"))


def test_sigkill_mid_batch_loses_no_trial_and_resume_fails_the_interrupted(tmp_path):
    url = sqlite(tmp_path)
    cfg = write_config(tmp_path, horizon=600, workloads=16)
    cmd = [sys.executable, "-c", ENTRY, "tune", str(cfg), "--storage", url,
           "--study", "k", "--trials", "40", "--batch", "4", "--no-plots", "--json"]
    for _ in range(3):  # the kill may land just after a batch was told: try again
        if _kill_mid_batch(cmd, tmp_path, url):
            break
    snapshot = trials_of(url, "k")
    complete = {t.number: t.values for t in snapshot if t.state == TrialState.COMPLETE}
    killed_running = [t.number for t in snapshot if t.state == TrialState.RUNNING]
    assert complete and killed_running, "killed mid-batch: some trials were running"

    # Rerunning the same command continues the study.
    res = subprocess.run(cmd, cwd=tmp_path, env=_env(tmp_path), capture_output=True, timeout=400)
    assert res.returncode == 0, res.stderr.decode()[-2000:]
    out = json.loads(res.stdout)
    final = trials_of(url, "k")
    assert not [t for t in final if t.state == TrialState.RUNNING], "nothing stuck running"
    by_number = {t.number: t for t in final}
    for n, values in complete.items():  # no completed trial lost or changed
        assert by_number[n].state == TrialState.COMPLETE and by_number[n].values == values
    for n in killed_running:
        t = by_number[n]
        assert t.state == TrialState.FAIL
        assert t.user_attrs["fail_reason"].startswith("interrupted: worker ")
        assert t.user_attrs["fail_reason"].endswith(" exited")
    assert sorted(out["interrupted"]) == sorted(killed_running)
    assert out["evaluated"] == 40
    assert sum(t.state == TrialState.COMPLETE for t in final) == 40


# ------------------------------------------------------------------------------------------
# Benchmark.


def test_bench_tune_measures_both_ways(tmp_path):
    cfg = load_config(write_config(tmp_path))
    r = bench_tune(cfg, trials=8, batch=4)
    assert r.max_relative_difference < 1e-6
    assert r.batched_seconds > 0 and r.single_seconds > 0
    assert math.isclose(r.speedup, r.single_seconds / r.batched_seconds)


def test_bench_tune_reports_the_target_size_measured_or_projected(tmp_path):
    cfg = load_config(write_config(tmp_path))  # 3 workloads x 120 iterations
    r = bench_tune(cfg, trials=4, batch=4, single=False, target=(8, 6, 120))
    assert r.single_seconds is None and r.speedup is None and r.projected
    assert math.isclose(r.target_seconds, r.batched_compile_seconds + 4 * r.batched_seconds)
    same = bench_tune(cfg, trials=4, batch=4, single=False, target=(4, 3, 120))
    assert not same.projected
    assert math.isclose(same.target_seconds, same.batched_compile_seconds + same.batched_seconds)


def test_bench_tune_size_must_be_three_integers(capsys):
    assert main(["bench", "tune", "--size", "200x64"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == "error: --size '200x64': expected TRIALSxWORKLOADSxITERATIONS, e.g. 200x64x2000"
