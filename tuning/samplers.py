"""The Optuna samplers ``jaxsched tune`` offers, each set up for K trials asked per batch:
TPE with a constant liar (the K asked together differ), CMA-ES and NSGA-II with a population
of at least K, and random search."""

from __future__ import annotations

import importlib.util

import optuna

from jaxsched.errors import JaxschedError

__all__ = ["SAMPLERS", "make_sampler"]

SAMPLERS = ("tpe", "cmaes", "nsga2", "random")


def make_sampler(name: str, seed: int, batch: int, num_dims: int, num_objectives: int):
    """The sampler ``name`` (one of :data:`SAMPLERS`) for batches of ``batch`` trials."""
    if name == "tpe":
        return optuna.samplers.TPESampler(seed=seed, multivariate=True, constant_liar=True,
                                          n_startup_trials=max(10, batch))
    if name == "cmaes":
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
