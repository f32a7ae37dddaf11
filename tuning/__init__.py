"""Tuners for jaxsched policies and the pieces they share.

* :mod:`tuning.settings` - the ``[tune]`` table of a config (pydantic schema).
* :mod:`tuning.search_space` - search spaces derived from a policy's ``Param`` specs.
* :mod:`tuning.objectives` - weighted and multi-objective objectives, constraints, NaN checks
  (NumPy or JAX arrays: the gradient tuner differentiates the same objective).
* :mod:`tuning.tune_job` - a config, its experiment, space and objective, and their fingerprint.
* :mod:`tuning.batch_evaluator` - K parameter sets x W workloads per vmapped simulator call.
* Optuna at batch scale, one concern per module:
  :mod:`tuning.optuna_loop` (ask K, simulate K, tell K until the study's target),
  :mod:`tuning.study_storage` (any SQLAlchemy storage: SQLite, PostgreSQL; studies that
  remember their setup, resume), :mod:`tuning.samplers`, :mod:`tuning.worker_liveness`
  (several workers per study: heartbeats, dead workers' trials, atomic claims),
  :mod:`tuning.trial_states` (evaluated, baseline, best, Pareto set),
  :mod:`tuning.study_plots`, :mod:`tuning.tune_bench` (``jaxsched bench tune``) and
  :mod:`tuning.optuna_logs`.
* :mod:`tuning.gradient_search` - descent of the relaxed simulator (optax), recorded as trials;
  :mod:`tuning.nested_remat` - its rollout for gradients (two-level remat, compact carries);
  :mod:`tuning.gradient_memory` - the descent step's memory and time.
* :mod:`tuning.export_study` - a study's trial as a policy file.

The modules import lazily; ``import tuning`` is cheap.
"""

import importlib.util

__all__ = ["settings", "search_space", "objectives", "tune_job", "batch_evaluator",
           "optuna_loop", "study_storage", "samplers", "worker_liveness", "trial_states",
           "study_plots", "tune_bench", "optuna_logs", "gradient_search", "nested_remat",
           "gradient_memory", "export_study",
           "gradient_available"]


def gradient_available() -> bool:
    """Whether the gradient tuner (module ``tuning.gradient_search``) is installed."""
    return importlib.util.find_spec("tuning.gradient_search") is not None
