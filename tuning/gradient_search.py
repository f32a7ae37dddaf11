"""Gradient search: tune policy parameters by descending the relaxed simulator with optax.

The simulator's relaxed mode (``jaxsched.core.model.RELAX_MODES``) weights every admission by a
smooth mass ``sigmoid(margin / temperature)``, so the objective of :mod:`tuning.objectives`
(``Objective.loss``: minus the weighted score plus squared constraint penalties) has a
gradient with respect to the policy's parameters. One run:

1. the baseline (the config's own parameters) in the hard simulator resolves the objective's
   scales, as the Optuna tuner does;
2. ``restarts`` starting points in the unit cube of the search space (the config's point,
   then uniform draws from the seed) descend together: the R parameter sets x W workloads are
   ONE vmapped relaxed-simulator call per step; optax (adam by default, constant, cosine or
   exponential learning-rate schedule) updates the coordinates, which are then projected back
   onto the cube (the feasible box of every parameter); the temperature anneals geometrically
   from ``temperature`` to ``final_temperature`` (traced: no recompilation);
3. the last ``candidates`` iterates of every restart (integers rounded) are evaluated in the
   hard simulator (R points per vmapped call); each restart's best is its final point, and
   the final points are recorded as complete trials of an Optuna study (the config's metrics, constraints and the study
   snapshot exactly as the Optuna tuner writes them), so ``jaxsched export`` reads the best one.

Checkpoints (orbax): the coordinates, the optimizer state, the step and the loss history
every ``checkpoint_every`` steps (the starting points come from ``seed``, the descent draws
nothing at random); a run started again with the same checkpoint
directory resumes from the last one and ends exactly where an uninterrupted run would (every
step is a deterministic function of the checkpointed state).

Settings live in the config's ``[tune.gradient]`` table (:class:`GradientSettings`).
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from pathlib import Path
from typing import Any, Callable, Literal, Mapping

import jax
import jax.numpy as jnp
import numpy as np
import optax
import optuna
import orbax.checkpoint as ocp
import typer
from optuna.trial import TrialState
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from jaxsched import api
from jaxsched.config import format_validation
from jaxsched.core.metrics import jsonable
from jaxsched.core.sim import SimParams
from jaxsched.errors import JaxschedError
from tuning.batch_evaluator import BatchEvaluator
from tuning.nested_remat import DEFAULT_LEAF, balanced_plan, compiled_relaxed_simulator
from tuning.objectives import Objective, add_derived, aggregate, measured_time
from tuning.study_storage import open_storage, open_study, redact_url
from tuning.tune_bench import bench_loop
from tuning.tune_job import TuneJob, prepare
from tuning.worker_liveness import worker_id

__all__ = [
    "GradientSettings",
    "gradient_settings",
    "GradientOutcome",
    "RelaxedObjective",
    "run_gradient",
    "record_trials",
    "save_history_plot",
    "tune_command",
    "GradientBench",
    "remat_segment",
    "bench_gradient_vs_optuna",
]


class GradientSettings(BaseModel):
    """``[tune.gradient]``: the gradient tuner's settings."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    steps: int = Field(60, ge=1, description="optimizer steps")
    restarts: int = Field(8, ge=1, description="starting points descending together (vmapped)")
    learning_rate: float = Field(0.05, gt=0, description="in unit-cube coordinates per step")
    optimizer: Literal["adam", "adamw", "sgd"] = "adam"
    schedule: Literal["constant", "cosine", "exponential"] = "cosine"
    mode: Literal["relaxed", "straight_through"] = "relaxed"
    temperature: float = Field(1.0, gt=0, description="initial relaxation temperature")
    final_temperature: float = Field(0.1, gt=0, description="temperature at the last step")
    penalty: float = Field(10.0, ge=0, description="weight of squared constraint violations")
    checkpoint_every: int = Field(10, ge=1, description="steps between orbax checkpoints")
    candidates: int = Field(8, ge=1, description="last iterates of each restart evaluated in "
                                                 "the hard simulator")
    remat: int | None = Field(None, ge=0, description="iterations per leaf segment of the "
                              "relaxed scan recomputed in the backward pass (two-level "
                              "jax.checkpoint, tuning.nested_remat; 0: keep every iteration's "
                              "residuals; default: remat_segment)")


def gradient_settings(raw: Mapping[str, Any] | None, source: str = "<config>") -> GradientSettings:
    """Validate ``[tune.gradient]``; one line naming the file and the key on error."""
    try:
        return GradientSettings(**dict(raw or {}))
    except ValidationError as e:
        raise JaxschedError(format_validation(source, e, "tune.gradient.")) from None


# ------------------------------------------------------------------------------------------
# The relaxed objective.

def remat_segment(horizon: int) -> int:
    """Iterations per leaf segment by default: a fixed chunk
    (:data:`tuning.nested_remat.DEFAULT_LEAF`), so that the backward pass's memory is that
    chunk's residuals plus a few compact carries, whatever the horizon
    (:mod:`tuning.nested_remat`)."""
    return int(min(horizon, DEFAULT_LEAF))


class RelaxedObjective:
    """``loss(u (R, D), temperature) -> (R,)``: the objective's loss of R unit-cube points in
    the relaxed simulator over the job's W workloads (one vmapped call), differentiable in
    ``u`` and in the system parameters."""

    def __init__(self, job: TuneJob, objective: Objective, mode: str, penalty: float,
                 keys, workloads, restarts: int, remat: int | None = None):
        exp = job.experiment
        self.job, self.objective, self.penalty = job, objective, penalty
        self.keys, self.workloads = keys, workloads
        self.shape = dataclasses.replace(exp.shape, relax=mode, leap=False)
        self.restarts = restarts
        self._system = jax.tree.map(lambda x: jnp.broadcast_to(x, (restarts,) + x.shape),
                                    exp.params.system)
        leaf = remat if remat is not None else remat_segment(exp.shape.horizon)
        self.plan = balanced_plan(exp.shape.horizon, leaf) if leaf else None
        # kept < output: the boundary carries hold it in the narrowest type of the longest output
        bounds = (("kept", int(np.max(np.asarray(workloads.output), initial=0))),)
        self._fn = compiled_relaxed_simulator(exp.policy, self.shape, self.plan, bounds)
        cfg = job.config
        self._time = (cfg.workload.horizon, cfg.workload.warmup, float(cfg.d0),
                      max(cfg.d1_prefill, cfg.d1_context))
        self._d2 = float(cfg.d2)

    def params(self, u):
        """The traced policy parameters (leading axis R) of unit-cube points ``u`` (R, D)."""
        return jax.vmap(lambda ur: self.job.space.from_unit(ur))(u)

    def metrics(self, u, temperature):
        """Workload-averaged relaxed metrics of each point: dict of (R,) arrays."""
        temp = jnp.broadcast_to(jnp.asarray(temperature, jnp.float32), (self.restarts,))
        params = SimParams(system=self._system, policy=self.params(u), temperature=temp)
        res = self._fn(self.keys, self.workloads, params)
        elapsed = measured_time(*self._time, res.final_time, d2=self._d2)
        return aggregate(add_derived(res.metrics, elapsed), xp=jnp)

    def loss(self, u, temperature):
        return self.objective.loss(self.metrics(u, temperature), self.penalty)


# ------------------------------------------------------------------------------------------
# The loop.


@dataclasses.dataclass
class GradientOutcome:
    study_name: str
    storage: str
    objective: Objective
    settings: GradientSettings
    points: list[dict]  # final point of each restart (integers rounded)
    results: list[dict]  # hard-simulator metrics of each point
    scores: list[float]  # hard objective value of each point (weighted score)
    best_index: int
    baseline: dict
    baseline_score: float
    history: np.ndarray  # (steps, R) relaxed loss per step
    trail: np.ndarray  # (steps, R, D) unit-cube iterates after every step
    step_times: np.ndarray  # (steps done here,) wall seconds since the first step of this call
    steps_done: int
    resumed_from: int | None
    trials: list[int]  # Optuna trial numbers written
    compile_seconds: float
    wall_seconds: float
    plots: list[str] = dataclasses.field(default_factory=list)

    @property
    def best_point(self) -> dict:
        return self.points[self.best_index]

    def to_json(self) -> dict:
        return {
            "method": "gradient",
            "study": self.study_name,
            "storage": self.storage,
            "best": {"point": self.best_point, "score": self.scores[self.best_index],
                     "metrics": {k: jsonable(v) for k, v in self.results[self.best_index].items()}},
            "baseline_score": self.baseline_score,
            "scores": self.scores,
            "points": self.points,
            "steps": self.steps_done,
            "resumed_from": self.resumed_from,
            "trials": self.trials,
            "compile_seconds": self.compile_seconds,
            "wall_seconds": self.wall_seconds,
            "plots": self.plots,
        }


def _optimizer(gs: GradientSettings):
    lr = gs.learning_rate
    if gs.schedule == "cosine":
        lr = optax.cosine_decay_schedule(gs.learning_rate, gs.steps)
    elif gs.schedule == "exponential":
        lr = optax.exponential_decay(gs.learning_rate, gs.steps, 0.1)
    make = {"adam": optax.adam, "adamw": optax.adamw, "sgd": optax.sgd}[gs.optimizer]
    return make(lr)


def _temperature(gs: GradientSettings, step: int) -> float:
    """Geometric annealing from ``temperature`` (step 0) to ``final_temperature`` (last)."""
    frac = step / max(gs.steps - 1, 1)
    return float(gs.temperature * (gs.final_temperature / gs.temperature) ** frac)


def _initial_points(job: TuneJob, restarts: int, seed: int) -> np.ndarray:
    """(R, D): the config's own point, then uniform draws from ``seed``."""
    rng = np.random.default_rng(seed)
    u = rng.uniform(size=(restarts, len(job.space.dims)))
    u[0] = np.clip(job.space.to_unit(job.space.default_point()), 0.0, 1.0)
    return u.astype(np.float32)


class _Checkpoints:
    """Orbax checkpoints of the descent's state in ``directory`` (None: none)."""

    def __init__(self, directory: str | Path | None, every: int):
        self.mngr = None
        if directory is not None:
            path = Path(directory).absolute()
            path.mkdir(parents=True, exist_ok=True)
            self.mngr = ocp.CheckpointManager(
                path, options=ocp.CheckpointManagerOptions(max_to_keep=2, create=True))
        self.every = every

    def latest(self, template):
        if self.mngr is None or self.mngr.latest_step() is None:
            return None
        step = self.mngr.latest_step()
        return self.mngr.restore(step, args=ocp.args.StandardRestore(template))

    def save(self, step: int, state, force: bool = False):
        if self.mngr is None or not (force or step % self.every == 0):
            return
        self.mngr.save(step, args=ocp.args.StandardSave(state), force=True)
        self.mngr.wait_until_finished()

    def close(self):
        if self.mngr is not None:
            self.mngr.wait_until_finished()
            self.mngr.close()


def run_gradient(job: TuneJob, gs: GradientSettings, *, seed: int = 0, storage=None,
                 study_name: str | None = None, checkpoint_dir: str | Path | None = None,
                 progress: Callable[[int, int, float, float], None] | None = None,
                 status: Callable[[str], None] | None = None,
                 stop_after: int | None = None, record: bool = True) -> GradientOutcome:
    """Run the gradient search of ``job`` (see the module docstring).

    ``progress(step, steps, best_relaxed_loss, temperature)`` after every step;
    ``stop_after``: return after that many steps of this call (checkpointed; for tests of
    resumption), ``record``: write the final trials into the study.
    """
    say = status or (lambda msg: None)
    t_start = time.perf_counter()
    exp = job.experiment
    r = gs.restarts
    keys, workloads = api.build_workloads(job.config, exp.num_requests, exp.duration)

    say(f"compiling the hard simulator for {r} parameter sets x {job.config.workload.num_workloads} workloads")
    evaluator = BatchEvaluator(job, r, keys, workloads)
    baseline = evaluator.evaluate([evaluator.default_point])[0]
    objective = job.objective
    if objective.kind != "weighted":
        objective = dataclasses.replace(objective, kind="weighted")
    if objective.needs_baseline:
        objective = objective.with_baseline(baseline)
    baseline_score = float(objective.score(baseline))

    opt = _optimizer(gs)
    u0 = jnp.asarray(_initial_points(job, r, seed))
    state = {"u": u0, "opt_state": opt.init(u0), "step": jnp.zeros((), jnp.int32),
             "history": jnp.full((gs.steps, r), jnp.nan, jnp.float32),
             "trail": jnp.zeros((gs.steps, r, len(job.space.dims)), jnp.float32)}
    ckpt = _Checkpoints(checkpoint_dir, gs.checkpoint_every)
    resumed_from = None
    restored = ckpt.latest(state)
    if restored is not None:
        state = restored
        resumed_from = int(state["step"])
        say(f"resuming from the checkpoint at step {resumed_from}")

    say(f"compiling the relaxed simulator ({gs.mode})")
    t0 = time.perf_counter()
    sig = (job.fingerprint, gs.model_dump_json(), json.dumps(objective.to_dict(), default=str),
           r, repr(jax.tree.map(lambda x: (x.shape, str(x.dtype)), (keys, workloads))))
    update_c = _UPDATES.get(sig)
    if update_c is None:
        update_c = _compile_update(job, objective, gs, keys, workloads, opt, state)
        _UPDATES[sig] = update_c
        while len(_UPDATES) > 4:
            _UPDATES.pop(next(iter(_UPDATES)))
    compile_seconds = evaluator.compile_seconds + time.perf_counter() - t0


    u, opt_state = state["u"], state["opt_state"]
    history, trail = np.array(state["history"]), np.array(state["trail"])
    step = int(state["step"])
    done_here = 0
    step_times = []
    t_loop = time.perf_counter()
    try:
        while step < gs.steps:
            if stop_after is not None and done_here >= stop_after:
                break
            temp = _temperature(gs, step)
            u, opt_state, losses = update_c(u, opt_state, jnp.float32(temp))
            history[step] = np.asarray(losses)
            trail[step] = np.asarray(u)
            step_times.append(time.perf_counter() - t_loop)
            step += 1
            done_here += 1
            state = {"u": u, "opt_state": opt_state, "step": jnp.asarray(step, jnp.int32),
                     "history": jnp.asarray(history),
                     "trail": jnp.asarray(trail)}
            ckpt.save(step, state, force=step == gs.steps)
            if progress is not None:
                finite = history[step - 1][np.isfinite(history[step - 1])]
                progress(step, gs.steps, float(finite.min()) if finite.size else math.nan, temp)
    finally:
        ckpt.close()

    say("evaluating the last iterates in the hard simulator")
    points, results = _best_iterates(job, objective, evaluator, trail[max(step - gs.candidates, 0):step]
                                     if step else np.asarray(u)[None])
    scores = [float(objective.score(m)) for m in results]
    feasible = [objective.feasible(m) and math.isfinite(s) for m, s in zip(results, scores)]
    order = [i for i in range(r) if feasible[i]] or list(range(r))
    best = max(order, key=lambda i: scores[i] if math.isfinite(scores[i]) else -math.inf)

    name = study_name or job.settings.study or f"{job.default_study_name}-gradient"
    store = None
    trials: list[int] = []
    if record and step >= gs.steps:
        store = (open_storage(storage or job.settings.storage)
                 if storage is None or isinstance(storage, str) else storage)
        recorded = job.objective
        if recorded.needs_baseline:
            recorded = recorded.with_baseline(baseline)
        trials = record_trials(job, store, name, recorded, baseline, points, results, gs, seed)
    return GradientOutcome(
        study_name=name,
        storage=redact_url(store.url) if store is not None else "",
        objective=objective, settings=gs, points=points, results=results, scores=scores,
        best_index=best, baseline=baseline, baseline_score=baseline_score,
        history=history[:step], trail=trail[:step], step_times=np.asarray(step_times),
        steps_done=step, resumed_from=resumed_from, trials=trials,
        compile_seconds=compile_seconds, wall_seconds=time.perf_counter() - t_start,
    )


# Compiled descent steps, by job, settings, objective and shapes. A dict, not an lru_cache:
# compiling needs the job, the settings (a pydantic model) and the workload arrays, none of
# them hashable, and reads the workloads' values; the key is their fingerprint.
_UPDATES: dict = {}


def _compile_update(job, objective, gs, keys, workloads, opt, state):
    """The compiled step ``(u, opt_state, temperature) -> (u', opt_state', losses (R,))``:
    the relaxed loss's gradient, an optax update, the projection onto the unit cube."""
    relaxed = RelaxedObjective(job, objective, gs.mode, gs.penalty, keys, workloads,
                               state["u"].shape[0], gs.remat)

    def total_loss(u, temperature):
        losses = relaxed.loss(u, temperature)
        return jnp.sum(losses), losses

    def update(u, opt_state, temperature):
        (_, losses), grad = jax.value_and_grad(total_loss, has_aux=True)(u, temperature)
        grad = jnp.where(jnp.isfinite(grad), grad, 0.0)
        upd, opt_state = opt.update(grad, opt_state, u)
        return jnp.clip(optax.apply_updates(u, upd), 0.0, 1.0), opt_state, losses

    return jax.jit(update).lower(state["u"], state["opt_state"], jnp.float32(1.0)).compile()


def _rank(objective: Objective, metrics: dict) -> tuple:
    """Sort key of hard results: feasible first, then the score (NaN last)."""
    s = float(objective.score(metrics))
    return (objective.feasible(metrics), s if math.isfinite(s) else -math.inf)


def _best_iterates(job: TuneJob, objective: Objective, evaluator: BatchEvaluator,
                   iterates: np.ndarray) -> tuple[list[dict], list[dict]]:
    """Each restart's best point among ``iterates`` (T, R, D) in the hard simulator (one
    vmapped call of R points per iterate) and its metrics."""
    best_points: list[dict | None] = [None] * iterates.shape[1]
    best_results: list[dict | None] = [None] * iterates.shape[1]
    for it in iterates:
        points = [job.space.point_from_unit(row) for row in it]
        for i, (p, m) in enumerate(zip(points, evaluator.evaluate(points))):
            if best_results[i] is None or _rank(objective, m) > _rank(objective, best_results[i]):
                best_points[i], best_results[i] = p, m
    return best_points, best_results


def record_trials(job: TuneJob, store, name: str, objective: Objective, baseline: dict,
                  points: list[dict], results: list[dict], gs: GradientSettings,
                  seed: int) -> list[int]:
    """Write the final points as complete trials of study ``name`` (created with the job's
    snapshot if new), in the format of the Optuna tuner. A second call with the same run
    (settings and seed) writes nothing again. Returns the trial numbers."""
    study = open_study(job, store, name, None)
    if study.user_attrs.get("baseline_metrics") is None:
        study.set_user_attr("baseline_metrics", {k: jsonable(v) for k, v in baseline.items()})
    run_id = json.dumps({"settings": gs.model_dump(), "seed": seed}, sort_keys=True)
    existing = [t.number for t in study.get_trials(deepcopy=False)
                if t.user_attrs.get("gradient_run") == run_id]
    if existing:
        return existing
    dists = job.space.distributions()
    numbers = []
    worker = worker_id()
    for i, (point, metrics) in enumerate(zip(points, results)):
        attrs = {"metrics": {k: jsonable(v) for k, v in metrics.items()}, "worker": worker,
                 "sampler": "gradient", "gradient_run": run_id, "restart": i}
        reason = objective.nonfinite_reason(metrics)
        if reason is not None:
            attrs["fail_reason"] = reason
            trial = optuna.trial.create_trial(params=point, distributions=dists,
                                              user_attrs=attrs, state=TrialState.FAIL)
        else:
            cons = [float(g) for g in objective.constraint_values(metrics)]
            system = {"constraints": cons} if cons else {}
            trial = optuna.trial.create_trial(
                params=point, distributions=dists, user_attrs=attrs, system_attrs=system,
                values=[float(v) for v in objective.values(metrics)])
        study.add_trial(trial)
        numbers.append(len(study.get_trials(deepcopy=False)) - 1)
    return numbers


def save_history_plot(outcome: GradientOutcome, path: str | Path) -> str:
    """PNG of the relaxed loss of every restart over the steps, with the hard score of the
    best final point and of the baseline."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    steps = np.arange(1, outcome.history.shape[0] + 1)
    for i in range(outcome.history.shape[1]):
        ax.plot(steps, -outcome.history[:, i], lw=1, alpha=0.7,
                label="restarts (relaxed score)" if i == 0 else None)
    ax.axhline(outcome.scores[outcome.best_index], color="k", ls="--",
               label="best final point, hard simulator")
    ax.axhline(outcome.baseline_score, color="gray", ls=":", label="config's point, hard")
    ax.set_xlabel("step")
    ax.set_ylabel("objective (score; higher is better)")
    ax.set_title(f"gradient search ({outcome.settings.mode}, {outcome.settings.optimizer})")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return str(path)


# ------------------------------------------------------------------------------------------
# CLI entry (``jaxsched tune CONFIG --method gradient``).


def tune_command(cfg, settings, *, trials=None, storage=None, study=None, seed=None, plots=None,
                 as_json=False, checkpoint_dir=None, steps=None, restarts=None,
                 workloads=None) -> GradientOutcome:
    """Run the gradient tuner from the CLI: rich progress, a table of the final points, the
    PNG of the objective over steps, and the trials in the study (``jaxsched export``)."""
    gs = gradient_settings(settings.gradient, cfg.source)
    update = {}
    if steps is not None:
        update["steps"] = steps
    if restarts is not None or trials is not None:
        update["restarts"] = restarts or trials
    if update:
        gs = gs.model_copy(update=update)
    seed = settings.seed if seed is None else seed
    job = prepare(cfg, settings, num_workloads=workloads)
    name = study or settings.study or f"{job.default_study_name}-gradient"
    ckpt = checkpoint_dir if checkpoint_dir is not None else Path("out") / "tune" / name / "checkpoints"
    err = Console(stderr=True)
    columns = (TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
               TextColumn("{task.fields[info]}"), TimeElapsedColumn())
    with Progress(*columns, console=err, disable=as_json and not err.is_terminal) as bar:
        task = bar.add_task("starting", total=gs.steps, info="")

        def status(msg):
            bar.update(task, description=msg)

        def progress(step, total, best, temp):
            bar.update(task, completed=step, description=f"descending ({gs.restarts} restarts)",
                       info=f"best relaxed score {-best:.4g}  T={temp:.3g}")

        outcome = run_gradient(job, gs, seed=seed, storage=storage, study_name=name,
                               checkpoint_dir=ckpt, progress=progress, status=status)
    if plots is not False:
        out_dir = Path(plots) if plots else Path("out") / "tune" / name
        outcome.plots = [save_history_plot(outcome, out_dir / "gradient_history.png")]
    if as_json:
        typer.echo(json.dumps(outcome.to_json()))
        return outcome
    console = Console()
    table = Table(title=f"gradient search, study {name!r} (hard simulator)")
    table.add_column("restart")
    for d in job.space.dims:
        table.add_column(d.name)
    table.add_column("score")
    metrics = list(outcome.objective.metrics)
    for m in metrics:
        table.add_column(m)
    for i, (p, res, s) in enumerate(zip(outcome.points, outcome.results, outcome.scores)):
        mark = " *" if i == outcome.best_index else ""
        table.add_row(f"{i}{mark}", *[f"{p[d.name]:.4g}" for d in job.space.dims], f"{s:.4g}",
                      *[f"{res.get(m, math.nan):.4g}" for m in metrics])
    console.print(table)
    console.print(f"baseline (config's point) score {outcome.baseline_score:.4g}; best "
                  f"{outcome.scores[outcome.best_index]:.4g} (restart {outcome.best_index}); "
                  f"{outcome.steps_done} steps, compile {outcome.compile_seconds:.1f} s, total "
                  f"{outcome.wall_seconds:.1f} s"
                  + (f", resumed from step {outcome.resumed_from}" if outcome.resumed_from else ""))
    console.print(f"trials {outcome.trials} in study {name!r} ({outcome.storage}); "
                  f"export with: jaxsched export --study {name} --storage {outcome.storage}")
    for p in outcome.plots:
        console.print(f"wrote {p}")
    return outcome


# ------------------------------------------------------------------------------------------
# Benchmark: wall time to reach an objective value, gradient search vs Optuna.


@dataclasses.dataclass
class GradientBench:
    config_source: str
    policy: str
    num_workloads: int
    horizon: int
    target: float  # the objective value both runs try to reach
    baseline_score: float
    optuna_trials: int
    optuna_batch: int
    optuna_sampler: str
    optuna_compile_seconds: float
    optuna_best: float
    optuna_seconds_to_target: float | None  # None: not reached
    optuna_trials_to_target: int | None
    gradient_steps: int
    gradient_restarts: int
    gradient_compile_seconds: float
    gradient_best: float
    gradient_seconds_to_target: float | None
    gradient_steps_to_target: int | None
    device: str


def bench_gradient_vs_optuna(cfg, *, optuna_trials: int = 64, batch: int = 16,
                             sampler: str | None = None, steps: int | None = None,
                             restarts: int | None = None, target: float | None = None,
                             seed: int = 0, num_workloads: int | None = None,
                             progress: Callable[[str], None] | None = None) -> GradientBench:
    """Wall time (compilation excluded, reported apart) for each tuner to first reach
    ``target`` in the hard simulator on the same config, workloads and objective.

    Optuna: batched ask/simulate/tell (:class:`tuning.batch_evaluator.BatchEvaluator`), the best
    value after every batch. Gradient: the descent's time up to step s plus the hard
    evaluation a run of s steps ends with (its last ``candidates`` iterates, one timed call
    each); the best hard value of the iterates up to step s. ``target`` defaults to the best
    value either reached, less 2% of its magnitude.
    """
    say = progress or (lambda msg: None)
    job = prepare(cfg, num_workloads=num_workloads)
    gs = gradient_settings(job.settings.gradient, cfg.source)
    update = {k: v for k, v in (("steps", steps), ("restarts", restarts)) if v is not None}
    gs = gs.model_copy(update=update) if update else gs

    say("gradient search")
    out = run_gradient(job, gs, seed=seed, record=False, status=say)
    objective = out.objective
    # the hard value of every iterate (not part of the gradient run's time)
    evaluator = BatchEvaluator(job, gs.restarts)
    t0 = time.perf_counter()
    best_by_step = []
    best = -math.inf
    for it in out.trail:
        pts = [job.space.point_from_unit(row) for row in it]
        for m in evaluator.evaluate(pts):
            if objective.feasible(m):
                best = max(best, float(objective.score(m)))
        best_by_step.append(best)
    eval_call = (time.perf_counter() - t0) / max(len(out.trail), 1)

    say(f"Optuna: {optuna_trials} trials, {batch} per call")
    ev = BatchEvaluator(job, batch, evaluator.keys, evaluator.workloads)
    curve = []  # (seconds, trials, best feasible score so far)

    def track(seconds, done, results):
        scores = [float(objective.score(m)) for m in results
                  if objective.feasible(m) and not objective.nonfinite_reason(m)]
        best = max([curve[-1][2] if curve else -math.inf]
                   + [v for v in scores if math.isfinite(v)])
        curve.append((seconds, done, best))

    sampler_name = sampler or job.settings.resolved_sampler
    bench_loop(job, ev, optuna_trials, sampler_name, seed, objective=objective,
                on_batch=track)
    obest = curve[-1][2] if curve else -math.inf

    gbest = best_by_step[-1] if best_by_step else -math.inf
    if target is None:
        top = max(gbest, obest)
        target = top - 0.02 * abs(top)
    o_time = o_trials = g_time = g_steps = None
    for sec, n, b in curve:
        if b >= target:
            o_time, o_trials = sec, n
            break
    for s_idx, b in enumerate(best_by_step):
        if b >= target:
            g_steps = s_idx + 1
            g_time = float(out.step_times[s_idx]) + eval_call * min(g_steps, gs.candidates)
            break
    return GradientBench(
        config_source=cfg.source, policy=job.experiment.policy.name,
        num_workloads=job.config.workload.num_workloads, horizon=job.config.workload.horizon,
        target=float(target), baseline_score=out.baseline_score,
        optuna_trials=optuna_trials, optuna_batch=batch, optuna_sampler=sampler_name,
        optuna_compile_seconds=ev.compile_seconds, optuna_best=obest,
        optuna_seconds_to_target=o_time, optuna_trials_to_target=o_trials,
        gradient_steps=gs.steps, gradient_restarts=gs.restarts,
        gradient_compile_seconds=out.compile_seconds, gradient_best=gbest,
        gradient_seconds_to_target=g_time, gradient_steps_to_target=g_steps,
        device=str(jax.devices()[0].device_kind),
    )
