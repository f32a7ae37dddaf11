"""``jaxsched bench tune``: Optuna trials asked, simulated and told K at a time against one
at a time, in an in-memory study, on the same workloads; and the wall time of a tuning run of
a target size (issue 14: 200 trials x 64 workloads x 2000 iterations of
``configs/flow-control.toml``), measured when the run has that size, else projected from it.

Projection: the loop's time (asking, simulating, telling; compilation apart) is proportional
to trials x workloads x iterations at a fixed batch K (one compiled call per K trials, each K x
W rollouts of H scanned iterations), so

    T(target) = compile + loop_seconds * (trials' W' H') / (trials W H),

exact in the trials (the same call repeated) and an estimate in W and H (a call's cost is
linear in H up to the per-request arrays, and in W once K x W fills the machine's vector
units). Run at the target's W and a shorter H or fewer trials to stay close to it.
"""

from __future__ import annotations

import dataclasses
import math
import os
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

__all__ = ["TARGET", "TuneBench", "bench_loop", "bench_tune"]

TARGET = (200, 64, 2000)
"""Issue 14's tuning run: trials, workloads per trial, iterations."""


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
    single_compile_seconds: float | None  # None: the one-at-a-time run was skipped
    single_seconds: float | None
    single_trials_per_second: float | None
    speedup: float | None  # batched trials/s / one-at-a-time trials/s
    max_relative_difference: float | None  # same points, batched vs one at a time
    identical: bool | None
    target_trials: int = TARGET[0]
    target_workloads: int = TARGET[1]
    target_horizon: int = TARGET[2]
    target_seconds: float = math.nan  # compile + the batched loop scaled to the target
    projected: bool = True  # False: this run had the target's size (measured)
    load_average: tuple[float, float] = (math.nan, math.nan)  # 1-minute, at start and end


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


def _load() -> float:
    try:
        return round(os.getloadavg()[0], 2)
    except OSError:
        return math.nan


def _compare(big: BatchEvaluator, one: BatchEvaluator, job: TuneJob, batch: int, seed: int):
    """The largest relative difference of the same points batched and one at a time, and
    whether they are identical."""
    rng = np.random.default_rng(seed)
    pts = [job.space.point_from_unit(rng.uniform(size=len(job.space.dims)))
           for _ in range(min(batch, 4))]
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
    return worst, identical


def bench_tune(cfg: Config, trials: int = 32, batch: int = 16, sampler: str | None = None,
               num_workloads: int | None = None, seed: int = 0,
               progress: Callable[[str], None] | None = None, single: bool = True,
               target: tuple[int, int, int] = TARGET) -> TuneBench:
    """Time ``trials`` Optuna trials asked/simulated/told ``batch`` at a time and (``single``)
    one at a time (in-memory study; compilation timed separately), check that the same points
    give the same metrics both ways, and give the time of a run of ``target`` (trials,
    workloads, iterations; see the module for the projection)."""
    say = progress or (lambda msg: None)
    load_start = _load()
    job = prepare(cfg, num_workloads=num_workloads)
    sampler_name = sampler or job.settings.resolved_sampler
    say(f"compiling: {batch} parameter sets per call")
    big = BatchEvaluator(job, batch)
    say(f"batched: {trials} trials, {batch} per call")
    t_big = bench_loop(job, big, trials, sampler_name, seed)
    t_one = one_compile = worst = identical = None
    if single:
        say("compiling: 1 parameter set per call")
        one = BatchEvaluator(job, 1, big.keys, big.workloads)
        one_compile = one.compile_seconds
        say(f"checking {min(batch, 4)} points both ways")
        worst, identical = _compare(big, one, job, batch, seed)
        say(f"one at a time: {trials} trials")
        t_one = bench_loop(job, one, trials, sampler_name, seed)
    w, h = job.config.workload.num_workloads, job.config.workload.horizon
    scale = (target[0] * target[1] * target[2]) / (trials * w * h)
    return TuneBench(
        config_source=cfg.source,
        policy=job.experiment.policy.name,
        sampler=sampler_name,
        num_workloads=w,
        horizon=h,
        trials=trials,
        batch=batch,
        device=str(jax.devices()[0].device_kind),
        batched_compile_seconds=big.compile_seconds,
        batched_seconds=t_big,
        batched_trials_per_second=trials / t_big,
        single_compile_seconds=one_compile,
        single_seconds=t_one,
        single_trials_per_second=None if t_one is None else trials / t_one,
        speedup=None if t_one is None else t_one / t_big,
        max_relative_difference=worst,
        identical=identical,
        target_trials=target[0],
        target_workloads=target[1],
        target_horizon=target[2],
        target_seconds=big.compile_seconds + t_big * scale,
        projected=(trials, w, h) != tuple(target),
        load_average=(load_start, _load()),
    )
