"""Optuna tuning at batch scale: ask K trials, simulate K parameter sets x W workloads in one
vmapped call, tell K.

Storage is any SQLAlchemy URL (an SQLite file by default, PostgreSQL for several workers on
one or many machines). A study remembers the config it tunes (a self-contained snapshot, its
fingerprint, the objective and the search space, as the study's user attribute ``jaxsched``),
so rerunning the same command continues it and a different setup is refused.

Trial bookkeeping:

* every trial records ``metrics`` (all metrics, averaged over the workloads) and ``worker``
  (``host:pid:start``) as user attributes; constraint values go through Optuna's constraints
  mechanism (``Trial.set_constraint``);
* NaN or infinite objective/constraint metrics: the trial is told ``FAIL`` with the reason in
  the user attribute ``fail_reason``;
* a worker records Optuna heartbeats for its running trials; a trial left ``RUNNING`` by a
  worker that died (SIGKILL, power loss) is failed by the next worker: at once when the dead
  worker ran on the same host (its process is gone; ``fail_reason`` says so), else when its
  heartbeat is older than the grace period;
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

import contextlib
import dataclasses
import datetime
import hashlib
import json
import math
import os
import socket
import threading
import time
import warnings
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from jaxsched.config import Config, config_snapshot, workload_fingerprint
from jaxsched.errors import JaxschedError
from jaxsched.core.metrics import jsonable
from tuning.objectives import ALL_METRICS, Objective, add_derived, aggregate, measured_time, \
    objective_from_settings
from tuning.search_space import SearchSpace, build_search_space
from tuning.settings import TuneSettings, tune_settings

__all__ = [
    "DEFAULT_STORAGE",
    "HEARTBEAT_INTERVAL",
    "GRACE_PERIOD",
    "META_KEY",
    "BASELINE_ATTR",
    "TuneJob",
    "BatchEvaluator",
    "Progress",
    "TuneOutcome",
    "prepare",
    "storage_url",
    "redact_url",
    "open_storage",
    "load_study",
    "study_meta",
    "fail_interrupted",
    "best_trials",
    "evaluated_count",
    "run_optuna",
    "save_plots",
    "TuneBench",
    "bench_tune",
]

DEFAULT_STORAGE = "sqlite:///jaxsched-tune.db"
"""Storage when neither ``--storage`` nor ``tune.storage`` is given: an SQLite file in the
working directory."""

HEARTBEAT_INTERVAL = 10
"""Seconds between a worker's heartbeats for its running trials."""

GRACE_PERIOD = 60
"""Seconds without a heartbeat after which another worker fails a running trial."""

META_KEY = "jaxsched"
"""Study user attribute holding the tuned setup."""

BASELINE_ATTR = "baseline"
"""Trial user attribute (True) of the trial that evaluates the config's own parameters."""

_META_WAIT = 15.0
"""Seconds a worker waits for the worker that created a study to record its setup."""

_NONFINITE_PREFIX = "non-finite metrics"


# ------------------------------------------------------------------------------------------
# The job: config, experiment, search space, objective.


@dataclasses.dataclass(frozen=True)
class TuneJob:
    """Everything a tuning run needs, built from a config and its ``[tune]`` table."""

    config: Config  # with workload.num_workloads = the workloads per trial
    settings: TuneSettings
    experiment: Any  # jaxsched.api.Experiment
    space: SearchSpace
    objective: Objective  # scales possibly unresolved ("baseline")
    snapshot: dict  # self-contained config (jaxsched.config.config_snapshot)
    fingerprint: str  # of snapshot + objective + space
    workload_fingerprint: str

    @property
    def default_study_name(self) -> str:
        src = self.config.source
        stem = Path(src).stem if src.endswith(".toml") else "default" if "default" in src else "config"
        return f"{stem}-{self.experiment.policy.name}"

    def meta(self) -> dict:
        from jaxsched import __version__

        return {
            "version": 1,
            "fingerprint": self.fingerprint,
            "workload_fingerprint": self.workload_fingerprint,
            "source": self.config.source,
            "hardware": self.config.resolved.get("hardware"),
            "config": self.snapshot,
            "objective": self.objective.to_dict(),
            "space": self.space.to_dict(),
            "jaxsched_version": __version__,
        }


def _digest(obj) -> str:
    text = json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)
    return "sha256:" + hashlib.sha256(text.encode()).hexdigest()


def prepare(cfg: Config, settings: TuneSettings | None = None, objective_kind: str | None = None,
            num_workloads: int | None = None) -> TuneJob:
    """Build the tuning job of a config (validating ``[tune]``)."""
    from jaxsched import api

    settings = settings or tune_settings(cfg.tune, cfg.source)
    w = num_workloads or settings.num_workloads
    if w is not None and w != cfg.workload.num_workloads:
        cfg = cfg.model_copy(update={"workload": cfg.workload.model_copy(update={"num_workloads": w})})
    exp = api.build_experiment(cfg)
    space = build_search_space(exp.policy, cfg.num_classes, exp.params.policy, cfg.capacity,
                               settings.space, cfg.source)
    if not space.dims:
        raise JaxschedError(
            f"{cfg.source}: policy {exp.policy.name!r} has no parameter to search "
            f"(parameters: {', '.join(exp.policy.params) or 'none'}; see tune.space)"
        )
    objective = objective_from_settings(settings, cfg.source, objective_kind)
    snapshot = config_snapshot(cfg)
    fp = _digest({"config": snapshot, "objective": objective.to_dict(), "space": space.to_dict()})
    return TuneJob(cfg, settings, exp, space, objective, snapshot, fp, workload_fingerprint(cfg))


# ------------------------------------------------------------------------------------------
# Batched evaluation.


_jsonable = jsonable  # TODO(issue 16): gradient_search imports this name; use jaxsched.core.metrics.jsonable there


_COMPILED: dict = {}  # (policy, shape, K, argument shapes) -> compiled simulator


class BatchEvaluator:
    """K parameter sets x W workloads in one compiled, vmapped simulator call.

    The simulator is compiled once for the batch size (ahead of time, kept for later
    evaluators of the same policy, shape and sizes in this process); a batch with fewer points
    is padded with the reference point, so no batch recompiles.

    Devices: ``tune.devices`` (``--devices``; default every device). With more than one, the
    K x W batch goes through :func:`jaxsched.running.chunked.run_chunked`, its parameter-set and
    workload axes sharded over a device mesh (compiled on the first call, cached), with the
    same metrics, bit for bit, as on one device.
    """

    def __init__(self, job: TuneJob, batch: int, keys=None, workloads=None):
        import jax
        import jax.numpy as jnp

        from jaxsched import api
        from jaxsched.running import sharding
        from jaxsched.core.rollout import compiled_simulator
        from jaxsched.core.sim import SimParams

        self.job = job
        self.batch = int(batch)
        self._devices = sharding.select_devices(job.settings.devices)  # bad --devices: now
        exp = job.experiment
        if workloads is None:
            keys, workloads = api.build_workloads(job.config, exp.num_requests, exp.duration)
        self.keys, self.workloads = keys, workloads
        k = self.batch
        self._system = jax.tree.map(lambda x: jnp.broadcast_to(x, (k,) + x.shape), exp.params.system)
        self._sim_params = SimParams
        self._default = job.space.default_point()
        self.compile_seconds = 0.0
        self.sim_seconds = 0.0
        self.calls = 0
        self._compiled = None
        if len(self._devices) > 1:  # sharded: run_chunked compiles on the first call
            return
        example = SimParams(system=self._system,
                            policy={n: jnp.asarray(v) for n, v in job.space.stack([self._default] * k).items()})
        fn = compiled_simulator(exp.policy, exp.shape, batched_params=True)
        sig = (exp.policy, exp.shape, k, jax.tree.map(lambda x: (x.shape, str(x.dtype)),
                                                      (keys, workloads, example)).__repr__())
        t0 = time.perf_counter()
        self._compiled = _COMPILED.get(sig)
        if self._compiled is None:
            self._compiled = fn.lower(keys, workloads, example).compile()
            _COMPILED[sig] = self._compiled
            while len(_COMPILED) > 8:
                _COMPILED.pop(next(iter(_COMPILED)))
        self.compile_seconds = time.perf_counter() - t0

    @property
    def num_devices(self) -> int:
        return len(self._devices)

    def _simulate(self, params):
        """The batch's :class:`~jaxsched.core.sim.RolloutResult`, leading (K, W)."""
        import jax

        if self._compiled is not None:
            return jax.block_until_ready(self._compiled(self.keys, self.workloads, params))
        from jaxsched.running.chunked import run_chunked

        exp = self.job.experiment
        keys, wl = self.keys, self.workloads
        res, stats = run_chunked(
            exp.policy, exp.shape, params, int(keys.shape[0]),
            lambda lo, hi: (keys[lo:hi], jax.tree.map(lambda x: x[lo:hi], wl)),
            int(wl.arrival.shape[-1]), batched_params=True, devices=self._devices)
        if self.calls == 0:
            self.compile_seconds = stats.compile_seconds
        return res

    @property
    def default_point(self) -> dict:
        return dict(self._default)

    def evaluate_per_workload(self, points: Sequence[Mapping[str, float]]) -> dict[str, np.ndarray]:
        """Per-workload metrics (incl. derived) of up to K points: arrays (len(points), W)."""
        import jax
        import jax.numpy as jnp

        n = len(points)
        if not 0 < n <= self.batch:
            raise ValueError(f"evaluate takes 1..{self.batch} points, got {n}")
        padded = list(points) + [self._default] * (self.batch - n)
        pol = {k: jnp.asarray(v) for k, v in self.job.space.stack(padded).items()}
        params = self._sim_params(system=self._system, policy=pol)
        t0 = time.perf_counter()
        res = self._simulate(params)
        self.sim_seconds += time.perf_counter() - t0
        self.calls += 1
        per = {k: np.asarray(v, np.float64)[:n] for k, v in res.metrics.items()}
        cfg = self.job.config
        elapsed = measured_time(cfg.workload.horizon, cfg.workload.warmup, cfg.d0,
                                max(cfg.d1_prefill, cfg.d1_context), np.asarray(res.final_time, np.float64)[:n], d2=cfg.d2)
        return add_derived(per, elapsed)

    def evaluate(self, points: Sequence[Mapping[str, float]]) -> list[dict[str, float]]:
        """Workload-averaged metrics (:data:`tuning.objectives.ALL_METRICS`) of each point."""
        agg = aggregate(self.evaluate_per_workload(points))
        return [{k: float(agg[k][i]) for k in ALL_METRICS if k in agg} for i in range(len(points))]


# ------------------------------------------------------------------------------------------
# Storage and studies.


def storage_url(url: str | None) -> str:
    """Normalize a storage argument: None gives :data:`DEFAULT_STORAGE`; a bare path is an
    SQLite file; ``postgresql://`` uses psycopg 3 when psycopg2 is not installed."""
    if not url:
        return DEFAULT_STORAGE
    if "://" not in url:
        return f"sqlite:///{url}"
    scheme, rest = url.split("://", 1)
    if scheme in ("postgresql", "postgres"):
        try:
            import psycopg2  # noqa: F401
            return f"postgresql://{rest}"
        except ImportError:
            return f"postgresql+psycopg://{rest}"
    return url


def redact_url(url: str) -> str:
    """The URL without its password."""
    try:
        from sqlalchemy.engine import make_url

        return make_url(url).render_as_string(hide_password=True)
    except Exception:
        return url.split("@")[-1] if "@" in url else url


def open_storage(url: str | None):
    """An Optuna RDB storage with heartbeats (:data:`HEARTBEAT_INTERVAL`, :data:`GRACE_PERIOD`)."""
    import optuna

    url = storage_url(url)
    kwargs: dict[str, Any] = {}
    if url.startswith("sqlite"):
        kwargs["connect_args"] = {"timeout": 60}
        path = url.split(":///", 1)[-1]
        if path and path != ":memory:" and not Path(path).parent.exists():
            raise JaxschedError(f"--storage {url}: folder {Path(path).parent} does not exist")
    else:
        kwargs["pool_pre_ping"] = True
    try:
        for attempt in range(3):
            try:
                with _quiet():
                    return optuna.storages.RDBStorage(url, engine_kwargs=kwargs,
                                                      heartbeat_interval=HEARTBEAT_INTERVAL,
                                                      grace_period=GRACE_PERIOD,
                                                      failed_trial_callback=_requeue_baseline)
            except Exception as err:  # workers creating a new database's tables at once
                from sqlalchemy.exc import IntegrityError, OperationalError

                if attempt == 2 or not isinstance(err, (IntegrityError, OperationalError)) \
                        or "constraint" not in str(err) and "already exists" not in str(err):
                    raise
                time.sleep(0.5 * (attempt + 1))
    except ImportError as err:
        raise JaxschedError(f"--storage {redact_url(url)}: missing database driver: {err}") from None
    except Exception as err:  # sqlalchemy errors: bad URL, unreachable server, auth
        msg = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise JaxschedError(f"--storage {redact_url(url)}: cannot open: {msg}") from None


@contextlib.contextmanager
def _quiet():
    """Silence Optuna's informational logs and experimental/heartbeat warnings."""
    import optuna

    verbosity = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
        warnings.filterwarnings("ignore", message=".*[Hh]eartbeat.*")
        warnings.filterwarnings("ignore", message=".*CmaEsSampler.*")
        warnings.filterwarnings("ignore", message=".*constraints.*")
        warnings.filterwarnings("ignore", message=".*PedAnovaImportanceEvaluator.*")
        warnings.filterwarnings("ignore", message=".*[Ii]mportances will be equal.*")
        try:
            yield
        finally:
            optuna.logging.set_verbosity(verbosity)


def _make_sampler(name: str, seed: int, batch: int, num_dims: int, num_objectives: int):
    import optuna

    if name == "tpe":
        return optuna.samplers.TPESampler(seed=seed, multivariate=True, constant_liar=True,
                                          n_startup_trials=max(10, batch))
    if name == "cmaes":
        import importlib.util

        if importlib.util.find_spec("cmaes") is None:
            raise JaxschedError("--sampler cmaes: needs the cmaes package (pip install cmaes)")
        if num_objectives > 1:
            raise JaxschedError("--sampler cmaes: CMA-ES is single-objective; use nsga2 or tpe "
                                "for a pareto objective")
        return optuna.samplers.CmaEsSampler(seed=seed, popsize=max(batch, 2), n_startup_trials=0,
                                            warn_independent_sampling=False)
    if name == "nsga2":
        return optuna.samplers.NSGAIISampler(seed=seed, population_size=max(batch, 4))
    if name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    raise JaxschedError(f"--sampler {name!r}: expected tpe, cmaes, nsga2 or random")


def study_meta(study) -> dict | None:
    return study.user_attrs.get(META_KEY)


def load_study(storage, name: str, sampler=None):
    """An existing study (one-line error naming the study and storage if absent)."""
    import optuna

    try:
        with _quiet():
            return optuna.load_study(study_name=name, storage=storage, sampler=sampler)
    except KeyError:
        names = [s.study_name for s in optuna.get_all_study_summaries(storage)] if storage else []
        known = f"; studies there: {', '.join(names)}" if names else "; the storage has no study"
        raise JaxschedError(f"--study {name!r}: no such study in "
                            f"{redact_url(storage.url) if hasattr(storage, 'url') else 'the storage'}"
                            f"{known}") from None


def _open_study(job: TuneJob, storage, name: str, sampler, baseline: bool = False):
    """Create the study (exactly one worker succeeds: it enqueues the baseline trial when
    ``baseline``, then records the setup) or open it (waiting up to :data:`_META_WAIT` s for
    its creator's setup)."""
    import optuna

    with _quiet():
        try:
            study = optuna.create_study(study_name=name, storage=storage, sampler=sampler,
                                        directions=list(job.objective.directions))
            created = True
        except optuna.exceptions.DuplicatedStudyError:
            study = optuna.load_study(study_name=name, storage=storage, sampler=sampler)
            created = False
    meta = study_meta(study)
    deadline = time.monotonic() + (0 if created else _META_WAIT)
    while meta is None and time.monotonic() < deadline:
        time.sleep(0.1)
        meta = study_meta(study)
    if meta is None:
        if study.trials:
            raise JaxschedError(
                f"--study {name!r}: exists in {redact_url(storage.url)} but was not created by "
                "jaxsched tune; use another --study"
            )
        if baseline:
            _enqueue_baseline(study, job.space.default_point())
        study.set_user_attr(META_KEY, job.meta())
        meta = study_meta(study)
    if meta.get("fingerprint") != job.fingerprint:
        raise JaxschedError(
            f"--study {name!r}: was created for another setup (config {meta.get('source')!r}, "
            f"policy {meta.get('config', {}).get('policy', {}).get('name')!r}); the config, "
            "[tune] objective or search space differ: use another --study"
        )
    if [d.name.lower() for d in study.directions] != list(job.objective.directions):
        raise JaxschedError(f"--study {name!r}: its directions differ from the objective's")
    return study


def _worker_id() -> str:
    pid = os.getpid()
    return f"{socket.gethostname()}:{pid}:{_start_ticks(pid)}"


def _start_ticks(pid: int) -> str:
    """Process start time in clock ticks since boot (Linux), '' elsewhere."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        return stat.rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return ""


def _alive(pid: int, start: str) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return not start or _start_ticks(pid) == start


def _enqueue_baseline(study, params: Mapping[str, Any]) -> None:
    with _quiet():
        study.enqueue_trial(dict(params), user_attrs={BASELINE_ATTR: True})


def _requeue_baseline(study, trial) -> None:
    """Enqueue the baseline again when its trial was failed unevaluated (Optuna's
    ``failed_trial_callback`` for stale trials, and :func:`_fail_trial`)."""
    if trial.user_attrs.get(BASELINE_ATTR):
        # killed before its parameters were sampled: they are still the enqueued ones
        params = trial.params or trial.system_attrs.get("fixed_params")
        if params:
            _enqueue_baseline(study, params)


def _fail_trial(study, trial, reason: str) -> bool:
    """Fail a running ``trial`` (frozen or live) unevaluated; True if this call did it, in
    which case a baseline trial is enqueued again."""
    import optuna
    from optuna.trial import TrialState

    storage = study._storage
    try:
        storage.set_trial_user_attr(trial._trial_id, "fail_reason", reason)
        ok = bool(storage.set_trial_state_values(trial._trial_id, state=TrialState.FAIL))
    except optuna.exceptions.UpdateFinishedTrialError:
        return False  # another worker finished or failed it first
    if ok:
        _requeue_baseline(study, storage.get_trial(trial._trial_id))
    return ok


def fail_interrupted(study) -> list[int]:
    """Fail the trials left running by dead workers; returns their numbers.

    Same host: the recorded worker process is gone. Any host: no heartbeat for
    :data:`GRACE_PERIOD` seconds (Optuna's stale-trial check), or no worker recorded and started
    more than :data:`GRACE_PERIOD` seconds ago.
    """
    import optuna
    from optuna.trial import TrialState

    host = socket.gethostname()
    failed = []
    now = datetime.datetime.now()
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        worker = t.user_attrs.get("worker")
        if worker:
            h, _, rest = worker.partition(":")
            pid_s, _, start = rest.partition(":")
            if h == host and pid_s.isdigit() and int(pid_s) != os.getpid() and \
                    not _alive(int(pid_s), start):
                if _fail_trial(study, t, f"interrupted: worker {worker} exited"):
                    failed.append(t.number)
        elif t.datetime_start is not None and \
                (now - t.datetime_start).total_seconds() > GRACE_PERIOD:
            if _fail_trial(study, t, "interrupted: no worker recorded"):
                failed.append(t.number)
    before = {t.number for t in study.get_trials(deepcopy=False, states=(TrialState.FAIL,))}
    with _quiet():
        optuna.storages.fail_stale_trials(study)
    after = {t.number for t in study.get_trials(deepcopy=False, states=(TrialState.FAIL,))}
    return sorted(set(failed) | (after - before))


def _is_evaluated(t) -> bool:
    from optuna.trial import TrialState

    if t.state == TrialState.COMPLETE:
        return True
    return t.state == TrialState.FAIL and str(t.user_attrs.get("fail_reason", "")).startswith(
        _NONFINITE_PREFIX)


def _is_live(t) -> bool:
    """Counts toward the target: evaluated, running or waiting."""
    from optuna.trial import TrialState

    return t.state in (TrialState.RUNNING, TrialState.WAITING) or _is_evaluated(t)


def baseline_trial(study):
    """The evaluated trial of the config's own parameters (user attribute ``baseline``; trial
    0 in studies made before that attribute existed), or None."""
    trials = study.get_trials(deepcopy=False)
    for t in trials:
        if t.user_attrs.get(BASELINE_ATTR) and _is_evaluated(t):
            return t
    if trials and not any(t.user_attrs.get(BASELINE_ATTR) for t in trials) \
            and _is_evaluated(trials[0]):
        return trials[0]
    return None


def evaluated_count(study) -> int:
    """Trials evaluated: complete, or failed for non-finite metrics."""
    return sum(_is_evaluated(t) for t in study.get_trials(deepcopy=False))


def best_trials(study, objective: Objective) -> list:
    """The best feasible complete trial (weighted), or the feasible Pareto set (pareto).
    Empty if no trial is complete and feasible."""
    from optuna.trial import TrialState

    done = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
            if all(v <= 0 for v in t.constraints.values())]
    if not done:
        return []
    if objective.kind == "weighted":
        return [max(done, key=lambda t: t.values[0])]
    signs = [1.0 if d == "maximize" else -1.0 for d in objective.directions]
    pts = np.array([[s * v for s, v in zip(signs, t.values)] for t in done])
    front = []
    for i, p in enumerate(pts):
        dominated = np.any(np.all(pts >= p, axis=1) & np.any(pts > p, axis=1))
        if not dominated:
            front.append(done[i])
    return sorted(front, key=lambda t: t.number)


# ------------------------------------------------------------------------------------------
# The loop.


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


def trial_summary(t, objective: Objective) -> dict:
    """A trial as JSON: number, values, params, constraints, metrics."""
    return {
        "number": t.number,
        "values": dict(zip(objective.names, t.values)) if t.values else None,
        "params": dict(t.params),
        "constraints": dict(t.constraints),
        "metrics": dict(t.user_attrs.get("metrics", {})),
    }


class _Heartbeat:
    """Record Optuna heartbeats for the trials in flight, every :data:`HEARTBEAT_INTERVAL` s."""

    def __init__(self, storage):
        self.storage = storage
        self.ids: list[int] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join(timeout=5)

    def beat(self, ids: Sequence[int]) -> None:
        with self._lock:
            self.ids = list(ids)
        for i in ids:
            self.storage.record_heartbeat(i)

    def _run(self):
        while not self._stop.wait(HEARTBEAT_INTERVAL):
            with self._lock:
                ids = list(self.ids)
            for i in ids:
                try:
                    self.storage.record_heartbeat(i)
                except Exception:  # a transient database error must not kill the worker
                    pass


def _start_trial(study, attrs: dict, hb: "_Heartbeat") -> tuple[int, bool]:
    """Start a trial whose worker is recorded atomically with its creation (so a worker killed
    at any moment leaves no running trial without an owner): ``(trial_id, claimed)``.

    A trial waiting in the study's queue (``Study.enqueue_trial``: the baseline) is claimed
    first (``claimed``); its owner is written before the claim and again after it, and a
    heartbeat right after, so the one claim that wins is attributed to its claimer.
    """
    import optuna
    from optuna.trial import TrialState

    storage = study._storage
    study_id = study._study_id
    for waiting in storage.get_all_trials(study_id, deepcopy=False, states=(TrialState.WAITING,)):
        try:
            for k, v in attrs.items():
                storage.set_trial_user_attr(waiting._trial_id, k, v)
            if storage.set_trial_state_values(waiting._trial_id, state=TrialState.RUNNING):
                hb.storage.record_heartbeat(waiting._trial_id)
                for k, v in attrs.items():
                    storage.set_trial_user_attr(waiting._trial_id, k, v)
                return waiting._trial_id, True
        except optuna.exceptions.UpdateFinishedTrialError:
            continue
    template = optuna.trial.create_trial(state=TrialState.RUNNING, user_attrs=dict(attrs))
    trial_id = storage.create_new_trial(study_id, template_trial=template)
    hb.storage.record_heartbeat(trial_id)
    return trial_id, False


def _surplus(study, created: Sequence[int], target: int) -> list[int]:
    """Of the trials this worker ``created`` (ids), those beyond the target: at least
    ``target`` live trials (:func:`_is_live`) have a smaller number."""
    if not created:
        return []
    live = sorted(t.number for t in study._storage.get_all_trials(study._study_id,
                                                                   deepcopy=False)
                  if _is_live(t))
    out = []
    for trial_id in created:
        number = study._storage.get_trial_number_from_id(trial_id)
        if sum(n < number for n in live) >= target:
            out.append(trial_id)
    return out


def _sample_trial(study, trial_id: int, distributions: dict):
    """The started trial as an ``optuna.Trial`` with its parameters sampled (or fixed by
    its enqueued values)."""
    import optuna
    from optuna.distributions import IntDistribution

    # Like Study.ask: samplers read the study's trials afresh for every new trial.
    if hasattr(study, "_thread_local"):
        study._thread_local.cached_all_trials = None
    trial = optuna.trial.Trial(study, trial_id)
    for name, dist in distributions.items():
        if isinstance(dist, IntDistribution):
            trial.suggest_int(name, dist.low, dist.high, log=dist.log)
        else:
            trial.suggest_float(name, dist.low, dist.high, log=dist.log)
    return trial


def _is_storage(obj) -> bool:
    import optuna

    return isinstance(obj, optuna.storages.BaseStorage)


def _baseline_from_study(study) -> dict | None:
    return study.user_attrs.get("baseline_metrics")


def run_optuna(job: TuneJob, *, trials: int | None = None, batch: int | None = None,
               storage=None, study_name: str | None = None,
               sampler: str | None = None, seed: int | None = None,
               progress: Callable[[Progress], None] | None = None,
               status: Callable[[str], None] | None = None) -> TuneOutcome:
    """Tune ``job`` with Optuna until the study has ``trials`` evaluated trials (``storage``: a
    URL, an opened storage, or None for ``tune.storage`` / :data:`DEFAULT_STORAGE`)."""
    import optuna
    from optuna.trial import TrialState

    s = job.settings
    trials = trials or s.trials
    batch = batch or s.batch
    sampler_name = sampler or s.resolved_sampler
    seed = s.seed if seed is None else seed
    name = study_name or s.study or job.default_study_name
    say = status or (lambda msg: None)

    store = storage if _is_storage(storage) else open_storage(storage or s.storage)
    say(f"opening study {name!r}")
    study = _open_study(job, store, name, None, baseline=True)
    n_existing = len(study.get_trials(deepcopy=False))
    sampler_obj = _make_sampler(sampler_name, seed + n_existing, batch, len(job.space.dims),
                                len(job.objective.directions))
    with _quiet():
        study = optuna.load_study(study_name=name, storage=store, sampler=sampler_obj)
    interrupted = fail_interrupted(study)

    evaluator = None  # compiled when there is something to evaluate
    objective = job.objective
    baseline = _baseline_from_study(study)
    if objective.needs_baseline and baseline is not None:
        objective = objective.with_baseline(baseline)

    distributions = job.space.distributions()
    worker = _worker_id()
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

    with _Heartbeat(store) as hb:
        while True:
            interrupted += fail_interrupted(study) if batches else []
            all_trials = study.get_trials(deepcopy=False)
            done = sum(_is_evaluated(t) for t in all_trials)
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
                with _quiet():
                    for _ in range(n):
                        started.append(_start_trial(study, attrs, hb))
                    surplus = set(_surplus(study, [i for i, claimed in started if not claimed],
                                           trials))
                    for i, _claimed in started:
                        if i in surplus:
                            _fail_trial(study, study._storage.get_trial(i),
                                        f"surplus: the study reached its target of {trials} "
                                        "trials while this one was being created")
                    started = [(i, c) for i, c in started if i not in surplus]
                    asked = [_sample_trial(study, i, distributions) for i, _ in started]
                if not asked:
                    continue
                hb.beat([t._trial_id for t in asked])
                points = [dict(t.params) for t in asked]
                own = [j for j, t in enumerate(asked) if t.user_attrs.get(BASELINE_ATTR)]
                if need_baseline and own:  # the baseline trial is in this batch
                    results = evaluator.evaluate(points)
                    base = results[own[0]]
                    if _baseline_from_study(study) is None:
                        study.set_user_attr("baseline_metrics",
                                            {k: jsonable(v) for k, v in base.items()})
                    objective = objective.with_baseline(_baseline_from_study(study))
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
                    stored = _baseline_from_study(study)
                    if stored is None:
                        study.set_user_attr("baseline_metrics",
                                            {k: jsonable(v) for k, v in base.items()})
                        stored = _baseline_from_study(study)
                    objective = objective.with_baseline(stored)
                else:
                    results = evaluator.evaluate(points)
                for trial, metrics in zip(asked, results):
                    trial.set_user_attr("metrics", {k: jsonable(v) for k, v in metrics.items()})
                    reason = objective.nonfinite_reason(metrics)
                    with _quiet():
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
                told_ids = {t._trial_id for t in asked if t.number in told}
                for trial_id, _claimed in started:
                    if trial_id not in told_ids:
                        _fail_trial(study, study._storage.get_trial(trial_id),
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
    stored = _baseline_from_study(study)
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


# ------------------------------------------------------------------------------------------
# Plots.


def save_plots(study, objective: Objective, out_dir: str | Path) -> tuple[list[str], list[str]]:
    """Optimization history, Pareto front (multi-objective) and parameter importances as PNG
    files in ``out_dir`` (Optuna's matplotlib visualization). Returns (paths, notes on plots
    skipped)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from optuna.visualization import matplotlib as ovm

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths, notes = [], []
    names = list(objective.names)

    def save(ax, fname):
        fig = (ax.flat[0] if hasattr(ax, "flat") else ax).figure
        fig.set_size_inches(8, 5)
        path = out / fname
        fig.savefig(path, dpi=110, bbox_inches="tight")
        plt.close(fig)
        paths.append(str(path))

    with _quiet():
        if objective.kind == "weighted":
            jobs = [("optimization_history.png",
                     lambda: ovm.plot_optimization_history(study, target_name=names[0]))]
            jobs.append(("param_importances.png",
                         lambda: ovm.plot_param_importances(study, target_name=names[0])))
        else:
            jobs = []
            for i, nm in enumerate(names):
                jobs.append((f"optimization_history_{nm}.png",
                             lambda i=i, nm=nm: ovm.plot_optimization_history(
                                 study, target=lambda t: t.values[i], target_name=nm)))
            if 2 <= len(names) <= 3:
                jobs.append(("pareto_front.png",
                             lambda: ovm.plot_pareto_front(study, target_names=names)))
            sign = -1.0 if objective.directions[0] == "maximize" else 1.0  # importance of low values
            jobs.append((f"param_importances_{names[0]}.png",
                         lambda: ovm.plot_param_importances(
                             study, target=lambda t: sign * t.values[0], target_name=names[0])))
        if len({p for t in study.get_trials(deepcopy=False) for p in t.params}) < 2:
            jobs = [j for j in jobs if not j[0].startswith("param_importances")]
            notes.append("param_importances: skipped (one searched parameter: its importance "
                         "is 1 by definition)")
        for fname, make in jobs:
            try:
                save(make(), fname)
            except Exception as err:  # too few trials, a single distinct value, ...
                notes.append(f"{fname}: skipped ({str(err).splitlines()[0] if str(err) else type(err).__name__})")
                plt.close("all")
    return paths, notes


# ------------------------------------------------------------------------------------------
# Benchmark: batched vs one trial at a time.


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


def _bench_loop(job: TuneJob, evaluator: BatchEvaluator, trials: int, sampler_name: str,
                seed: int, objective=None, on_batch=None) -> float:
    """Ask/simulate/tell ``trials`` trials ``evaluator.batch`` at a time in an in-memory study
    (``objective``: default the job's); ``on_batch(seconds, trials_done, metrics)`` after each
    batch. Returns the seconds taken."""
    import optuna

    objective = objective or job.objective
    sampler = _make_sampler(sampler_name, seed, evaluator.batch, len(job.space.dims),
                            len(objective.directions))
    with _quiet():
        study = optuna.create_study(directions=list(objective.directions), sampler=sampler)
    dists = job.space.distributions()
    if objective.needs_baseline:
        objective = objective.with_baseline(evaluator.evaluate([evaluator.default_point])[0])
    t0 = time.perf_counter()
    done = 0
    while done < trials:
        n = min(evaluator.batch, trials - done)
        with _quiet():
            asked = [study.ask(dists) for _ in range(n)]
        results = evaluator.evaluate([dict(t.params) for t in asked])
        with _quiet():
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
    import jax

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
    t_big = _bench_loop(job, big, trials, sampler_name, seed)
    say(f"one at a time: {trials} trials")
    t_one = _bench_loop(job, one, trials, sampler_name, seed)
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
