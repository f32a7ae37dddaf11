"""Tuners for jaxsched policies and the pieces they share.

* :mod:`tuning.settings` - the ``[tune]`` table of a config (pydantic schema).
* :mod:`tuning.search_space` - search spaces derived from a policy's ``Param`` specs.
* :mod:`tuning.objectives` - weighted and multi-objective objectives, constraints, NaN checks
  (NumPy or JAX arrays: the gradient tuner differentiates the same objective).
* :mod:`tuning.optuna_search` - Optuna at batch scale: K trials per vmapped simulator call,
  any SQLAlchemy storage (SQLite, PostgreSQL), several workers per study, resume.

The modules import lazily; ``import tuning`` is cheap.
"""

__all__ = ["settings", "search_space", "objectives", "optuna_search", "gradient_available"]


def gradient_available() -> bool:
    """Whether the gradient tuner (module ``tuning.gradient_search``) is installed."""
    import importlib.util

    return importlib.util.find_spec("tuning.gradient_search") is not None
