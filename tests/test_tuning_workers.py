"""Tuning faults: a baseline metric that is NaN, two worker processes on one SQLite study (the
target met exactly, the baseline evaluated once), and a worker killed during the baseline
trial. Real SQLite files, real subprocesses."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
from optuna.trial import TrialState

from jaxsched.config import load_config
from jaxsched.testing import small_tuning_config
from tuning.optuna_loop import run_optuna
from tuning.study_storage import open_storage, open_study
from tuning.trial_states import BASELINE_ATTR
from tuning.tune_job import prepare
from tuning.worker_liveness import Heartbeat, fail_trial, start_trial, surplus

ENTRY = "import sys; from jaxsched.cli import main; sys.exit(main(sys.argv[1:]))"


def write_config(tmp_path: Path, horizon: int = 120, workloads: int = 3) -> Path:
    path = tmp_path / "small.toml"
    path.write_text(small_tuning_config("", horizon, workloads))
    return path


def env(tmp_path: Path) -> dict:
    out = dict(os.environ)
    out.update(JAX_COMPILATION_CACHE_DIR=str(tmp_path.parent / "jax-cache"),
               JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
               JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="-1")
    return out


def check_study(trials, target: int, default: dict) -> None:
    """Exactly ``target`` evaluated trials; one baseline trial, complete, at the config's own
    point; every other failed trial a surplus one (never sampled)."""
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    assert len(complete) == target, [(t.number, t.state) for t in trials]
    baselines = [t for t in trials if t.user_attrs.get(BASELINE_ATTR)]
    assert len(baselines) == 1 and baselines[0].state == TrialState.COMPLETE
    assert baselines[0].params == default
    for t in trials:
        if t.state == TrialState.FAIL:
            assert t.user_attrs["fail_reason"].startswith("surplus: "), t.user_attrs
            assert not t.params
    assert sorted(t.number for t in trials) == list(range(len(trials)))


def test_nan_baseline_falls_back_to_scale_one_and_the_study_resumes(tmp_path):
    """The repro of the issue: a budget range that admits nothing makes every metric of the
    baseline NaN (or 0); the scales fall back to 1 and a rerun continues the study."""
    url = f"sqlite:///{tmp_path / 'nan.db'}"
    sets = ["tune.space.budget.low=0", "tune.space.budget.high=1e-6",
            "tune.weights.latency_p95=0.5"]
    job = prepare(load_config(write_config(tmp_path), sets))
    out = run_optuna(job, trials=6, batch=4, storage=url, study_name="nan")
    assert out.evaluated == 6 and out.baseline == 0
    assert "latency_p95" in out.baseline_fallback
    assert all(t.scale == 1.0 for t in out.objective.terms if t.metric in out.baseline_fallback)
    stored = optuna.load_study(study_name="nan", storage=url).user_attrs["baseline_metrics"]
    assert stored["latency_p95"] is None  # NaN, as JSON stores it
    again = run_optuna(prepare(load_config(write_config(tmp_path), sets)), trials=9,
                           batch=4, storage=url, study_name="nan")
    assert again.told == [6, 7, 8] and again.evaluated == 9


def test_two_workers_meet_the_target_exactly_and_evaluate_the_baseline_once(tmp_path):
    url = f"sqlite:///{tmp_path / 'two.db'}"
    cfg = write_config(tmp_path, horizon=200, workloads=4)
    target = 14

    def worker(seed):
        cmd = [sys.executable, "-c", ENTRY, "tune", str(cfg), "--storage", url, "--study",
               "two", "--trials", str(target), "--batch", "4", "--seed", str(seed),
               "--no-plots", "--json"]
        return subprocess.Popen(cmd, cwd=tmp_path, env=env(tmp_path), stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE)

    procs = [worker(1), worker(2)]
    outs = []
    for p in procs:
        stdout, stderr = p.communicate(timeout=400)
        assert p.returncode == 0, stderr.decode()[-2000:]
        outs.append(json.loads(stdout))
    told = [set(o["told"]) for o in outs]
    assert not told[0] & told[1]
    assert max(o["evaluated"] for o in outs) == target  # the last to finish sees all
    assert {o["baseline_trial"] for o in outs} <= {0, None}
    trials = optuna.load_study(study_name="two", storage=url).get_trials()
    job = prepare(load_config(cfg))
    check_study(trials, target, job.space.default_point())
    assert told[0] | told[1] == {t.number for t in trials if t.state == TrialState.COMPLETE}


def _kill_during_baseline(cmd, tmp_path, url, study: str) -> bool:
    """Start a worker and SIGKILL it while the baseline trial runs; True if it was killed
    then (False: the trial ended first)."""
    proc = subprocess.Popen(cmd, cwd=tmp_path, env=env(tmp_path), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    storage = optuna.storages.RDBStorage(url)
    killed = False
    try:
        deadline = time.time() + 240
        study_id = None
        while time.time() < deadline and proc.poll() is None:
            if study_id is None:
                try:
                    study_id = storage.get_study_id_from_name(study)
                except KeyError:
                    time.sleep(0.05)
                    continue
            ts = storage.get_all_trials(study_id, deepcopy=False)
            base = [t for t in ts if t.user_attrs.get(BASELINE_ATTR)]
            if base and base[0].state == TrialState.RUNNING and "worker" in base[0].user_attrs:
                os.kill(proc.pid, signal.SIGKILL)
                killed = True
                break
            if base and base[0].state.is_finished():
                break
            time.sleep(0.005)
    finally:
        if not killed:
            proc.kill()
        proc.wait(timeout=60)
    return killed


def test_a_worker_killed_during_the_baseline_trial_leaves_it_to_the_next(tmp_path):
    url = f"sqlite:///{tmp_path / 'kill.db'}"
    cfg = write_config(tmp_path, horizon=600, workloads=16)
    for attempt in range(3):  # the kill may land after the first batch was told: again
        study = f"k{attempt}"
        cmd = [sys.executable, "-c", ENTRY, "tune", str(cfg), "--storage", url, "--study",
               study, "--trials", "10", "--batch", "4", "--no-plots", "--json"]
        if _kill_during_baseline(cmd, tmp_path, url, study):
            break
    else:
        raise AssertionError("the worker was never killed during the baseline trial")
    res = subprocess.run(cmd, cwd=tmp_path, env=env(tmp_path), capture_output=True,
                         timeout=400)
    assert res.returncode == 0, res.stderr.decode()[-2000:]
    out = json.loads(res.stdout)
    trials = optuna.load_study(study_name=study, storage=url).get_trials()
    interrupted = [t for t in trials if t.state == TrialState.FAIL]
    assert interrupted and all(t.user_attrs["fail_reason"].startswith("interrupted: worker ")
                               for t in interrupted)
    assert sorted(out["interrupted"]) == sorted(t.number for t in interrupted)
    redone = [t for t in trials if t.user_attrs.get(BASELINE_ATTR)
              and t.state == TrialState.COMPLETE]
    default = prepare(load_config(cfg)).space.default_point()
    assert len(redone) == 1 and redone[0].params == default
    assert out["baseline_trial"] == redone[0].number
    assert out["evaluated"] == 10
    assert sum(t.state == TrialState.COMPLETE for t in trials) == 10


def test_trials_beyond_the_target_are_found_by_their_numbers(tmp_path):
    """The rule the workers apply after creating trials: a trial is surplus when at least
    ``target`` live trials (evaluated, running or waiting) have a smaller number; the
    baseline waits in the queue from the study's creation and is claimed first."""
    store = open_storage(f"sqlite:///{tmp_path / 'rank.db'}")
    job = prepare(load_config(write_config(tmp_path)))
    study = open_study(job, store, "rank", None, baseline=True)
    (waiting,) = study.get_trials(states=(TrialState.WAITING,))
    assert waiting.user_attrs[BASELINE_ATTR] and waiting.number == 0
    hb = Heartbeat(store)  # not started: its beats are recorded directly
    a = [start_trial(study, {"worker": "a"}, hb) for _ in range(2)]
    b = [start_trial(study, {"worker": "b"}, hb) for _ in range(2)]
    assert [claimed for _, claimed in a + b] == [True, False, False, False]
    ids = [i for i, _ in a + b]  # trials 0 (the baseline), 1, 2, 3
    assert surplus(study, ids[1:2], target=3) == []
    assert surplus(study, ids[2:], target=3) == [ids[3]]
    assert surplus(study, ids[2:], target=4) == []
    # the baseline's trial fails unevaluated: it is enqueued again (trial 4), once, and
    # holds its place: a trial created after it counts it
    assert fail_trial(study, store.get_trial(ids[0]), "interrupted: worker a exited")
    assert not fail_trial(study, store.get_trial(ids[0]), "again")
    requeued = study.get_trials(states=(TrialState.WAITING,))
    assert [t.number for t in requeued] == [4] and requeued[0].user_attrs[BASELINE_ATTR]
    assert requeued[0].system_attrs["fixed_params"] == job.space.default_point()
    assert surplus(study, ids[1:], target=3) == []  # 1, 2, 3: trial 0 left its place
    again, claimed = start_trial(study, {"worker": "c"}, hb)  # claimed before creating
    assert claimed and store.get_trial_number_from_id(again) == 4
    late, claimed = start_trial(study, {"worker": "c"}, hb)
    assert not claimed and store.get_trial_number_from_id(late) == 5
    assert surplus(study, [late], target=4) == [late]
    assert surplus(study, [late], target=5) == []
