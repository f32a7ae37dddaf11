"""The gradient tuner (tuning.gradient_search): settings, search quality against a fine grid,
checkpoint/resume, and the CLI path into an exportable study."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from typer.testing import CliRunner

from jaxsched.cli import _register_commands, app
from jaxsched.config import load_config
from jaxsched.errors import JaxschedError
from tuning.batch_evaluator import BatchEvaluator
from tuning.tune_job import prepare
from tuning.gradient_search import gradient_settings, run_gradient
from tuning.settings import tune_settings

from jaxsched.config import CONFIG_DIR

SMALL = CONFIG_DIR / "flow-control-small.toml"  # the flow-control setting scaled down by 4


def _overrides(tmp_path, horizon, steps, small=False):
    tiny = ["system.max_batch=128", "workload.num_workloads=1", "workload.warmup=20",
            "tune.gradient.restarts=2"] if small else []
    return tiny + [f"workload.horizon={horizon}", f"tune.gradient.steps={steps}",
            "tune.gradient.learning_rate=0.05", "tune.gradient.checkpoint_every=2",
            f"tune.storage=sqlite:///{tmp_path / 'tune.db'}"]


def _config(tmp_path, horizon=400, steps=25, small=False):
    return load_config(SMALL, _overrides(tmp_path, horizon, steps, small))


def _job(cfg):
    return prepare(cfg, tune_settings(cfg.tune, cfg.source))


def test_settings_are_validated_with_one_line_errors():
    with pytest.raises(JaxschedError, match=r"^x\.toml: tune\.gradient\.stepz: unknown key$"):
        gradient_settings({"stepz": 3}, "x.toml")
    with pytest.raises(JaxschedError, match=r"tune\.gradient\.learning_rate"):
        gradient_settings({"learning_rate": -1.0}, "x.toml")
    assert gradient_settings({"mode": "straight_through"}).mode == "straight_through"


def test_gradient_search_improves_and_ends_within_2pct_of_a_fine_grid(tmp_path):
    cfg = _config(tmp_path)
    job = _job(cfg)
    gs = gradient_settings(cfg.tune["gradient"], cfg.source)
    out = run_gradient(job, gs, seed=0, record=False)

    (dim,) = job.space.dims
    grid = np.exp(np.linspace(math.log(dim.low), math.log(dim.high), 96))
    ev = BatchEvaluator(job, len(grid))
    results = ev.evaluate([{dim.name: float(b)} for b in grid])
    grid_scores = np.array([out.objective.score(r) for r in results])
    best_grid = float(np.max(grid_scores))
    best = out.scores[out.best_index]
    assert best > out.baseline_score + 0.05, (best, out.baseline_score)
    assert best >= best_grid - 0.02 * abs(best_grid), (best, best_grid,
                                                        float(grid[np.argmax(grid_scores)]),
                                                        out.best_point)
    assert np.all(np.isfinite(out.history))


def test_killed_run_resumes_to_the_uninterrupted_result(tmp_path):
    cfg = _config(tmp_path, horizon=120, steps=5, small=True)
    job = _job(cfg)
    gs = gradient_settings(cfg.tune["gradient"], cfg.source)
    full = run_gradient(job, gs, seed=3, record=False)
    ckpt = tmp_path / "ckpt"
    first = run_gradient(job, gs, seed=3, record=False, checkpoint_dir=ckpt, stop_after=3)
    assert first.steps_done == 3 and first.resumed_from is None
    second = run_gradient(job, gs, seed=3, record=False, checkpoint_dir=ckpt)
    assert second.resumed_from == 2  # checkpoint_every = 2: step 3 was lost with the "kill"
    assert second.steps_done == gs.steps
    assert second.points == full.points
    np.testing.assert_array_equal(second.history, full.history)


def test_cli_gradient_writes_a_study_that_exports(tmp_path):
    sets = [a for o in _overrides(tmp_path, 120, 3, small=True) for a in ("--set", o)]
    cfg_path = SMALL
    _register_commands()
    runner = CliRunner()
    res = runner.invoke(app, ["tune", str(cfg_path), "--method", "gradient", "--trials", "2",
                              "--study", "g", "--plots", str(tmp_path / "plots"), "--json",
                              "--checkpoint-dir", str(tmp_path / "ck"), *sets])
    assert res.exit_code == 0, res.output
    data = json.loads(res.stdout.strip().splitlines()[-1])
    assert data["method"] == "gradient" and data["steps"] == 3 and len(data["points"]) == 2
    assert (tmp_path / "plots" / "gradient_history.png").stat().st_size > 1000
    out = tmp_path / "policy.json"
    res = runner.invoke(app, ["export", "--study", "g", "--storage",
                              f"sqlite:///{tmp_path / 'tune.db'}", "--out", str(out)])
    assert res.exit_code == 0, res.output
    policy = json.loads(out.read_text())
    assert policy["policy"]["name"] == "flow_control"
    assert policy["tuning"]["sampler"] == "gradient"
    assert policy["policy"]["params"]["budget"] == pytest.approx(data["best"]["point"]["budget"])
    # rerunning the finished run adds no duplicate trials
    res = runner.invoke(app, ["tune", str(cfg_path), "--method", "gradient", "--trials", "2",
                              "--study", "g", "--no-plots", "--json",
                              "--checkpoint-dir", str(tmp_path / "ck"), *sets])
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout.strip().splitlines()[-1])["trials"] == data["trials"]


def test_sigkilled_cli_run_resumes_to_the_uninterrupted_result(tmp_path):
    """A real kill: the CLI run is SIGKILLed once it has checkpointed; the same run resumed
    from its checkpoint folder ends exactly where an uninterrupted run does."""
    import os
    import signal
    import subprocess
    import sys
    import time

    steps = 30
    overrides = _overrides(tmp_path, 120, steps, small=True)
    ckpt = tmp_path / "ck"
    cmd = [sys.executable, "-m", "jaxsched", "tune", str(SMALL), "--method", "gradient",
           "--no-plots", "--json", "--checkpoint-dir", str(ckpt)]
    cmd += [a for o in overrides for a in ("--set", o)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env={**os.environ, "JAX_PLATFORMS": "cpu"})
    try:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and proc.poll() is None:
            saved = [int(p.name) for p in ckpt.glob("*") if p.name.isdigit()] if ckpt.exists() else []
            if saved and max(saved) >= 4:
                break
            time.sleep(0.05)
        assert proc.poll() is None, "the run ended before it could be killed"
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    cfg = load_config(SMALL, overrides)
    job = _job(cfg)
    gs = gradient_settings(cfg.tune["gradient"], cfg.source)
    resumed = run_gradient(job, gs, seed=0, record=False, checkpoint_dir=ckpt)
    assert resumed.resumed_from is not None and 4 <= resumed.resumed_from < steps
    full = run_gradient(job, gs, seed=0, record=False)
    assert resumed.points == full.points
    np.testing.assert_array_equal(resumed.history, full.history)


def test_bench_tune_gradient_times_both_tuners(tmp_path):
    """``jaxsched bench tune --gradient`` (small shapes): both tuners report a best value, the
    target is the better one less 2% unless given, and whoever reaches it says when."""
    sets = [a for o in _overrides(tmp_path, 120, 3, small=True) for a in ("--set", o)]
    _register_commands()
    res = CliRunner().invoke(app, ["bench", "tune", str(SMALL), "--gradient", "--trials", "4",
                                   "--batch", "2", "--steps", "3", "--json", *sets])
    assert res.exit_code == 0, res.output
    d = json.loads(res.stdout.strip().splitlines()[-1])
    best = max(d["gradient_best"], d["optuna_best"])
    assert d["target"] == pytest.approx(best - 0.02 * abs(best))
    winner = "gradient" if d["gradient_best"] >= d["optuna_best"] else "optuna"
    assert d[f"{winner}_seconds_to_target"] is not None
    assert d["optuna_trials"] == 4 and d["gradient_steps"] == 3
