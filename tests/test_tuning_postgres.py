"""Tuning on a real PostgreSQL server: one study, resumed, and two worker processes at once.

.ci/run starts a throwaway server on 127.0.0.1 and sets JAXSCHED_TEST_POSTGRES_URL (e.g.
``postgresql+psycopg://postgres@127.0.0.1:PORT/jaxsched_test``); without it these tests are
skipped.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from jaxsched.config import load_config
from jaxsched.testing import small_tuning_config
from tuning.optuna_loop import run_optuna
from tuning.study_storage import load_study, open_storage
from tuning.trial_states import BASELINE_ATTR, evaluated_count
from tuning.tune_job import prepare

URL = os.environ.get("JAXSCHED_TEST_POSTGRES_URL")
pytestmark = pytest.mark.skipif(
    not URL, reason="JAXSCHED_TEST_POSTGRES_URL is not set (.ci/run starts a PostgreSQL server "
                    "on 127.0.0.1 and sets it)")

ENTRY = "import sys; from jaxsched.cli import main; sys.exit(main(sys.argv[1:]))"


def write_config(tmp_path: Path, horizon=120, workloads=3) -> Path:
    path = tmp_path / "pg.toml"
    path.write_text(small_tuning_config(horizon=horizon, workloads=workloads))
    return path


def test_postgres_storage_and_resume(tmp_path):
    name = f"pg-{uuid.uuid4().hex[:8]}"
    job = prepare(load_config(write_config(tmp_path)))
    out = run_optuna(job, trials=6, batch=4, storage=URL, study_name=name)
    assert out.evaluated == 6 and out.storage.startswith("postgresql+psycopg://postgres@127.0.0.1")
    more = run_optuna(job, trials=9, batch=4, storage=URL, study_name=name)
    assert more.told == [6, 7, 8]
    storage = open_storage(URL)
    trials = optuna.load_study(study_name=name, storage=storage).get_trials()
    assert [t.number for t in trials] == list(range(9))
    assert all(t.state == TrialState.COMPLETE for t in trials)
    # a plain postgresql:// URL works too (psycopg 3 picked when psycopg2 is absent)
    plain = URL.replace("postgresql+psycopg://", "postgresql://")
    assert evaluated_count(load_study(open_storage(plain), name)) == 9


def test_two_workers_share_one_study_and_every_trial_lands_once(tmp_path):
    name = f"two-{uuid.uuid4().hex[:8]}"
    cfg = write_config(tmp_path, horizon=200, workloads=6)
    env = dict(os.environ)
    env.update(JAX_COMPILATION_CACHE_DIR=str(tmp_path / "jax-cache"),
               JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
               JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="-1")
    target = 30

    def worker(seed):
        cmd = [sys.executable, "-c", ENTRY, "tune", str(cfg), "--storage", URL, "--study", name,
               "--trials", str(target), "--batch", "2", "--seed", str(seed), "--no-plots", "--json"]
        return subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE)

    procs = [worker(1), worker(2)]
    outs = []
    for p in procs:
        stdout, stderr = p.communicate(timeout=500)
        assert p.returncode == 0, stderr.decode()[-2000:]
        outs.append(json.loads(stdout))
    told = [set(o["told"]) for o in outs]
    assert not told[0] & told[1], "no trial told by both workers"
    study = optuna.load_study(study_name=name, storage=open_storage(URL))
    trials = study.get_trials()
    numbers = [t.number for t in trials]
    assert sorted(numbers) == list(range(len(trials)))
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    assert told[0] | told[1] == {t.number for t in complete}, \
        "every trial was told by exactly one worker"
    # the target is met exactly: a trial created beyond it by a race is failed unsampled
    assert len(complete) == target and max(o["evaluated"] for o in outs) == target
    for t in trials:
        if t.state != TrialState.COMPLETE:
            assert t.state == TrialState.FAIL and not t.params
            assert t.user_attrs["fail_reason"].startswith("surplus: ")
    # the config's own point, evaluated once, by whichever worker claimed it
    baselines = [t for t in trials if t.user_attrs.get(BASELINE_ATTR)]
    job = prepare(load_config(cfg))
    assert len(baselines) == 1 and baselines[0].state == TrialState.COMPLETE
    assert baselines[0].params == job.space.default_point()
    workers = {t.user_attrs["worker"] for t in complete}
    assert len(workers) == 2 and all(told), "both workers evaluated trials"
