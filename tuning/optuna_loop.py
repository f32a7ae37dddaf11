"""The Optuna tuning loop at batch scale: ask K trials, simulate K parameter sets x W workloads
in one vmapped call (:class:`tuning.batch_evaluator.BatchEvaluator`), tell K.

Trial bookkeeping:

* every trial records ``metrics`` (all metrics, averaged over the workloads) and ``worker``
  (``host:pid:start``) as user attributes; constraint values go through Optuna's constraints
  mechanism (``Trial.set_constraint``);
* NaN or infinite objective/constraint metrics: the trial is told ``FAIL`` with the reason in
  the user attribute ``fail_reason``;
* trials left ``RUNNING`` by dead workers are failed by the next worker
  (:mod:`tuning.worker_liveness`);
* ``trials`` is the study's target: trials evaluated (complete, or failed for non-finite
  metrics), counting earlier runs and other workers; interrupted trials do not count and are
  redone. Workers count it with the study's trials in the order of their numbers: a trial
  created beyond the target while other workers were creating theirs (a race) is failed at
  once, unsampled, with ``fail_reason`` ``"surplus: ..."``, so the study ends with exactly
  ``trials`` evaluated;
* the baseline, the config's own parameters, is enqueued once (``Study.enqueue_trial``, user
  attribute ``baseline``) by the worker that creates the study, so it is trial 0 and whichever
  worker claims it evaluates it; a baseline trial that is interrupted is enqueued again by
  the worker that fails it (an atomic state change: exactly one does).
"""

from __future__ import annotations

import dataclasses
import time
from typing import Callable

import optuna
from optuna.distributions import IntDistribution
from optuna.trial import TrialState

from jaxsched.core.metrics import jsonable
from tuning.batch_evaluator import BatchEvaluator
from tuning.objectives import Objective
from tuning.optuna_logs import quiet
from tuning.samplers import make_sampler
from tuning.search_space import SearchSpace
from tuning.study_storage import is_storage, open_storage, open_study, redact_url
from tuning.trial_states import BASELINE_ATTR, baseline_metrics, baseline_trial, best_trials, \
    evaluated_count, is_evaluated, trial_summary
from tuning.tune_job import TuneJob
from tuning.worker_liveness import Heartbeat, fail_interrupted, fail_trial, start_trial, \
    surplus, worker_id

__all__ = ["Progress", "TuneOutcome", "sample_trial", "run_optuna"]


@dataclasses.dataclass
class Progress:
    """What a progress callback sees after every batch."""

    evaluated: int  # in the study
    target: int
    told_here: int  # trials this worker evaluated in this run
    best: tuple | None  # best values (weighted: (score,)); None before the first feasible
    pareto_size: int  # feasible Pareto-optimal trials (pareto objectives)
    trials_per_second: float  # this worker, per second of evaluation (compilation excluded)
    batch_seconds: float
    failed_here: int


@dataclasses.dataclass
class TuneOutcome:
    study_name: str
    storage: str  # redacted URL
    objective: Objective  # scales resolved
    space: SearchSpace
    target: int
    evaluated: int
    told: list[int]  # trial numbers this worker told (complete or failed)
    failed: list[int]  # of those, failed for non-finite metrics
    interrupted: list[int]  # trials of dead workers failed by this one
    best: list  # FrozenTrial(s): best or Pareto set
    compile_seconds: float
    sim_seconds: float
    wall_seconds: float
    batches: int
    batch: int
    sampler: str
    baseline: int | None = None  # number of the trial of the config's own parameters
    baseline_fallback: tuple[str, ...] = ()  # baseline-scaled metrics scaled by 1 instead
    eval_seconds: float = 0.0  # asking, simulating and telling: the run less compilation
    plots: list[str] = dataclasses.field(default_factory=list)
    plot_notes: list[str] = dataclasses.field(default_factory=list)

    @property
    def trials_per_second(self) -> float:
        """Trials this worker told per second of its whole run (compilation included)."""
        return len(self.told) / self.wall_seconds if self.wall_seconds > 0 else float("nan")

    @property
    def eval_trials_per_second(self) -> float:
        """Trials this worker told per second of evaluation (compilation excluded; the
        progress bar's rate)."""
        return len(self.told) / self.eval_seconds if self.eval_seconds > 0 else float("nan")

    def to_json(self) -> dict:
        return {
            "study": self.study_name,
            "storage": self.storage,
            "objective": self.objective.to_dict(),
            "target": self.target,
            "evaluated": self.evaluated,
            "told": self.told,
            "failed": self.failed,
            "interrupted": self.interrupted,
            "best": [trial_summary(t, self.objective) for t in self.best],
            "compile_seconds": self.compile_seconds,
            "sim_seconds": self.sim_seconds,
            "wall_seconds": self.wall_seconds,
            "trials_per_second": self.trials_per_second,
            "eval_trials_per_second": self.eval_trials_per_second,
            "eval_seconds": self.eval_seconds,
            "baseline_trial": self.baseline,
            "baseline_fallback": list(self.baseline_fallback),
            "batches": self.batches,
            "batch": self.batch,
            "sampler": self.sampler,
            "plots": self.plots,
        }



def sample_trial(study, trial_id: int, distributions: dict):
    """The started trial as an ``optuna.Trial`` with its parameters sampled (or fixed by
    its enqueued values)."""
    # Private, unavoidable: like Study.ask, drop the trial cache so that samplers read the
    # study's trials afresh (Study.ask cannot start a trial with its owner already recorded).
    if hasattr(study, "_thread_local"):
        study._thread_local.cached_all_trials = None
    trial = optuna.trial.Trial(study, trial_id)
    for name, dist in distributions.items():
        if isinstance(dist, IntDistribution):
            trial.suggest_int(name, dist.low, dist.high, log=dist.log)
        else:
            trial.suggest_float(name, dist.low, dist.high, log=dist.log)
    return trial



def run_optuna(job: TuneJob, *, trials: int | None = None, batch: int | None = None,
               storage=None, study_name: str | None = None,
               sampler: str | None = None, seed: int | None = None,
               progress: Callable[[Progress], None] | None = None,
               status: Callable[[str], None] | None = None) -> TuneOutcome:
    """Tune ``job`` with Optuna until the study has ``trials`` evaluated trials (``storage``: a
    URL, an opened storage, or None for ``tune.storage`` /
    :data:`tuning.study_storage.DEFAULT_STORAGE`)."""
    s = job.settings
    trials = trials or s.trials
    batch = batch or s.batch
    sampler_name = sampler or s.resolved_sampler
    seed = s.seed if seed is None else seed
    name = study_name or s.study or job.default_study_name
    say = status or (lambda msg: None)

    store = storage if is_storage(storage) else open_storage(storage or s.storage)
    say(f"opening study {name!r}")
    study = open_study(job, store, name, None, baseline=True)
    n_existing = len(study.get_trials(deepcopy=False))
    sampler_obj = make_sampler(sampler_name, seed + n_existing, batch, len(job.space.dims),
                                len(job.objective.directions))
    with quiet():
        study = optuna.load_study(study_name=name, storage=store, sampler=sampler_obj)
    interrupted = fail_interrupted(study)

    evaluator = None  # compiled when there is something to evaluate
    objective = job.objective
    baseline = baseline_metrics(study)
    if objective.needs_baseline and baseline is not None:
        objective = objective.with_baseline(baseline)

    distributions = job.space.distributions()
    worker = worker_id()
    told: list[int] = []
    failed: list[int] = []
    batches = 0
    loop_start = time.perf_counter()
    eval_time = 0.0

    def current_best():
        b = best_trials(study, objective)
        if not b:
            return None, 0
        return (tuple(b[0].values) if objective.kind == "weighted" else None), len(b)

    with Heartbeat(store) as hb:
        while True:
            interrupted += fail_interrupted(study) if batches else []
            all_trials = study.get_trials(deepcopy=False)
            done = sum(is_evaluated(t) for t in all_trials)
            running = sum(t.state == TrialState.RUNNING for t in all_trials)
            remaining = trials - done - running
            if remaining <= 0:
                break
            if evaluator is None:
                say(f"compiling the simulator for {batch} parameter sets x "
                    f"{job.config.workload.num_workloads} workloads")
                evaluator = BatchEvaluator(job, batch)
            need_baseline = objective.needs_baseline
            queued = any(t.state == TrialState.WAITING and t.user_attrs.get(BASELINE_ATTR)
                         for t in all_trials)  # this batch claims it: no extra slot needed
            n = min(batch - (1 if need_baseline and not queued and batch > 1 else 0), remaining)
            n = max(n, 1)
            t0 = time.perf_counter()
            asked = []
            started: list[tuple[int, bool]] = []
            try:
                attrs = {"worker": worker, "sampler": sampler_name}
                with quiet():
                    for _ in range(n):
                        started.append(start_trial(study, attrs, hb))
                    extra = set(surplus(study, [i for i, claimed in started if not claimed],
                                           trials))
                    for i, _claimed in started:
                        if i in extra:
                            fail_trial(study, store.get_trial(i),
                                        f"surplus: the study reached its target of {trials} "
                                        "trials while this one was being created")
                    started = [(i, c) for i, c in started if i not in extra]
                    asked = [sample_trial(study, i, distributions) for i, _ in started]
                if not asked:
                    continue
                hb.beat([i for i, _ in started])
                points = [dict(t.params) for t in asked]
                own = [j for j, t in enumerate(asked) if t.user_attrs.get(BASELINE_ATTR)]
                if need_baseline and own:  # the baseline trial is in this batch
                    results = evaluator.evaluate(points)
                    base = results[own[0]]
                    if baseline_metrics(study) is None:
                        study.set_user_attr("baseline_metrics",
                                            {k: jsonable(v) for k, v in base.items()})
                    objective = objective.with_baseline(baseline_metrics(study))
                elif need_baseline:
                    points_eval = points + [evaluator.default_point]
                    if len(points_eval) > batch:  # batch == 1: a separate call for the baseline
                        base = evaluator.evaluate([evaluator.default_point])[0]
                        points_eval = points
                    else:
                        base = None
                    results = evaluator.evaluate(points_eval)
                    base = base if base is not None else results[-1]
                    results = results[: len(points)]
                    stored = baseline_metrics(study)
                    if stored is None:
                        study.set_user_attr("baseline_metrics",
                                            {k: jsonable(v) for k, v in base.items()})
                        stored = baseline_metrics(study)
                    objective = objective.with_baseline(stored)
                else:
                    results = evaluator.evaluate(points)
                for trial, metrics in zip(asked, results):
                    trial.set_user_attr("metrics", {k: jsonable(v) for k, v in metrics.items()})
                    reason = objective.nonfinite_reason(metrics)
                    with quiet():
                        if reason is not None:
                            trial.set_user_attr("fail_reason", reason)
                            study.tell(trial, state=TrialState.FAIL)
                            failed.append(trial.number)
                        else:
                            for c, g in zip(objective.constraints,
                                            objective.constraint_values(metrics)):
                                trial.set_constraint(c.name, float(g))
                            study.tell(trial, [float(v) for v in objective.values(metrics)])
                    told.append(trial.number)
                hb.beat([])
            except BaseException:
                hb.beat([])
                told_ids = {i for (i, _), t in zip(started, asked) if t.number in told}
                for trial_id, _claimed in started:
                    if trial_id not in told_ids:
                        fail_trial(study, store.get_trial(trial_id),
                                    "interrupted: worker stopped")
                raise
            batches += 1
            dt = time.perf_counter() - t0
            eval_time += dt
            best_vals, front = current_best()
            if progress is not None:
                progress(Progress(
                    evaluated=done + len(asked), target=trials, told_here=len(told),
                    best=best_vals, pareto_size=front, trials_per_second=len(told) / max(eval_time, 1e-9),
                    batch_seconds=dt, failed_here=len(failed),
                ))

    evaluated = evaluated_count(study)
    base = baseline_trial(study)
    stored = baseline_metrics(study)
    return TuneOutcome(
        study_name=name,
        storage=redact_url(store.url),
        objective=objective,
        space=job.space,
        target=trials,
        evaluated=evaluated,
        told=told,
        failed=failed,
        interrupted=sorted(set(interrupted)),
        best=best_trials(study, objective),
        compile_seconds=evaluator.compile_seconds if evaluator else 0.0,
        sim_seconds=evaluator.sim_seconds if evaluator else 0.0,
        wall_seconds=time.perf_counter() - loop_start,
        batches=batches,
        batch=batch,
        sampler=sampler_name,
        baseline=base.number if base is not None else None,
        baseline_fallback=job.objective.fallback_scales(stored) if stored is not None else (),
        eval_seconds=eval_time,
    )
