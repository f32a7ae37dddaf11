"""``jaxsched bench tune``: Optuna trials asked, simulated and told K at a time against one
at a time, in an in-memory study, on the same workloads."""

from __future__ import annotations

import dataclasses
import math
import time
from typing import Callable

import jax
import numpy as np
import optuna

from jaxsched.config import Config
from tuning.batch_evaluator import BatchEvaluator
from tuning.optuna_logs import quiet
from tuning.samplers import make_sampler
from tuning.tune_job import TuneJob, prepare

__all__ = ["TuneBench", "bench_loop", "bench_tune"]


@dataclasses.dataclass
class TuneBench:
    config_source: str
    policy: str
    sampler: str
    num_workloads: int
    horizon: int
    trials: int
    batch: int
    device: str
    batched_compile_seconds: float
    batched_seconds: float  # ask + simulate + tell for all trials
    batched_trials_per_second: float
    single_compile_seconds: float
    single_seconds: float
    single_trials_per_second: float
    speedup: float  # batched trials/s / one-at-a-time trials/s
    max_relative_difference: float  # same points, batched vs one at a time
    identical: bool


def bench_loop(job: TuneJob, evaluator: BatchEvaluator, trials: int, sampler_name: str,
                seed: int, objective=None, on_batch=None) -> float:
    """Ask/simulate/tell ``trials`` trials ``evaluator.batch`` at a time in an in-memory study
    (``objective``: default the job's); ``on_batch(seconds, trials_done, metrics)`` after each
    batch. Returns the seconds taken."""
    objective = objective or job.objective
    sampler = make_sampler(sampler_name, seed, evaluator.batch, len(job.space.dims),
                            len(objective.directions))
    with quiet():
        study = optuna.create_study(directions=list(objective.directions), sampler=sampler)
    dists = job.space.distributions()
    if objective.needs_baseline:
        objective = objective.with_baseline(evaluator.evaluate([evaluator.default_point])[0])
    t0 = time.perf_counter()
    done = 0
    while done < trials:
        n = min(evaluator.batch, trials - done)
        with quiet():
            asked = [study.ask(dists) for _ in range(n)]
        results = evaluator.evaluate([dict(t.params) for t in asked])
        with quiet():
            for t, m in zip(asked, results):
                values = [float(v) for v in objective.values(m)]
                if objective.nonfinite_reason(m) or not all(map(math.isfinite, values)):
                    study.tell(t, state=optuna.trial.TrialState.FAIL)
                else:
                    study.tell(t, values)
        done += n
        if on_batch is not None:
            on_batch(time.perf_counter() - t0, done, results)
    return time.perf_counter() - t0


def bench_tune(cfg: Config, trials: int = 32, batch: int = 16, sampler: str | None = None,
               num_workloads: int | None = None, seed: int = 0,
               progress: Callable[[str], None] | None = None) -> TuneBench:
    """Time ``trials`` Optuna trials asked/simulated/told ``batch`` at a time against one at
    a time (in-memory study; compilation timed separately), and check that the same points
    give the same metrics both ways."""
    say = progress or (lambda msg: None)
    job = prepare(cfg, num_workloads=num_workloads)
    sampler_name = sampler or job.settings.resolved_sampler
    say(f"compiling: {batch} parameter sets per call")
    big = BatchEvaluator(job, batch)
    say("compiling: 1 parameter set per call")
    one = BatchEvaluator(job, 1, big.keys, big.workloads)
    say(f"checking {min(batch, 4)} points both ways")
    rng = np.random.default_rng(seed)
    pts = []
    for _ in range(min(batch, 4)):
        pts.append(job.space.point_from_unit(rng.uniform(size=len(job.space.dims))))
    a = big.evaluate_per_workload(pts)
    b = [one.evaluate_per_workload([p]) for p in pts]
    worst, identical = 0.0, True
    for k in a:
        for i in range(len(pts)):
            x, y = a[k][i], b[i][k][0]
            both_nan = np.isnan(x) & np.isnan(y)
            identical &= bool(np.all(both_nan | (x == y)))
            diff = np.where(both_nan, 0.0, np.abs(x - y) / np.maximum(np.abs(y), 1e-12))
            worst = max(worst, float(np.nanmax(diff)) if diff.size else 0.0)
    say(f"batched: {trials} trials, {batch} per call")
    t_big = bench_loop(job, big, trials, sampler_name, seed)
    say(f"one at a time: {trials} trials")
    t_one = bench_loop(job, one, trials, sampler_name, seed)
    return TuneBench(
        config_source=cfg.source,
        policy=job.experiment.policy.name,
        sampler=sampler_name,
        num_workloads=job.config.workload.num_workloads,
        horizon=job.config.workload.horizon,
        trials=trials,
        batch=batch,
        device=str(jax.devices()[0].device_kind),
        batched_compile_seconds=big.compile_seconds,
        batched_seconds=t_big,
        batched_trials_per_second=trials / t_big,
        single_compile_seconds=one.compile_seconds,
        single_seconds=t_one,
        single_trials_per_second=trials / t_one,
        speedup=t_one / t_big,
        max_relative_difference=worst,
        identical=identical,
    )
