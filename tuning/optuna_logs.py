"""Optuna's chatter, silenced where the tuner calls it: informational logs and the
experimental/heartbeat/sampler warnings that repeat once per trial at batch scale."""

from __future__ import annotations

import contextlib
import warnings

import optuna

__all__ = ["quiet"]


@contextlib.contextmanager
def quiet():
    """Silence Optuna's informational logs and experimental/heartbeat warnings."""
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
