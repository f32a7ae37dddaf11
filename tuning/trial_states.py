"""What a study's trials count as: evaluated, live (toward the target), the baseline, the
best or the Pareto set. Read-only questions about a study, asked with Optuna's public API.

* evaluated: complete, or failed for non-finite metrics (its parameters were simulated);
* live: evaluated, running or waiting (a trial that will be evaluated unless its worker dies);
* the baseline: the evaluated trial of the config's own parameters (user attribute
  :data:`BASELINE_ATTR`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
from optuna.trial import TrialState

if TYPE_CHECKING:  # for the annotations only: reading a study needs no JAX
    from tuning.objectives import Objective

__all__ = [
    "BASELINE_ATTR",
    "NONFINITE_PREFIX",
    "is_evaluated",
    "is_live",
    "baseline_trial",
    "baseline_metrics",
    "evaluated_count",
    "best_trials",
    "trial_summary",
]

BASELINE_ATTR = "baseline"
"""Trial user attribute (True) of the trial that evaluates the config's own parameters."""

NONFINITE_PREFIX = "non-finite metrics"
"""How ``fail_reason`` begins for a trial failed for its metrics (it was evaluated)."""


def is_evaluated(t) -> bool:
    """Complete, or failed for non-finite metrics."""
    if t.state == TrialState.COMPLETE:
        return True
    return t.state == TrialState.FAIL and str(t.user_attrs.get("fail_reason", "")).startswith(
        NONFINITE_PREFIX)


def is_live(t) -> bool:
    """Counts toward the target: evaluated, running or waiting."""
    return t.state in (TrialState.RUNNING, TrialState.WAITING) or is_evaluated(t)


def baseline_trial(study):
    """The evaluated trial of the config's own parameters (user attribute ``baseline``; trial
    0 in studies made before that attribute existed), or None."""
    trials = study.get_trials(deepcopy=False)
    for t in trials:
        if t.user_attrs.get(BASELINE_ATTR) and is_evaluated(t):
            return t
    if trials and not any(t.user_attrs.get(BASELINE_ATTR) for t in trials) \
            and is_evaluated(trials[0]):
        return trials[0]
    return None


def baseline_metrics(study) -> dict | None:
    """The baseline's metrics as the study recorded them (user attribute
    ``baseline_metrics``), or None before the baseline is evaluated."""
    return study.user_attrs.get("baseline_metrics")


def evaluated_count(study) -> int:
    """Trials evaluated: complete, or failed for non-finite metrics."""
    return sum(is_evaluated(t) for t in study.get_trials(deepcopy=False))


def best_trials(study, objective: Objective) -> list:
    """The best feasible complete trial (weighted), or the feasible Pareto set (pareto).
    Empty if no trial is complete and feasible."""
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


def trial_summary(t, objective: Objective) -> dict:
    """A trial as JSON: number, values, params, constraints, metrics."""
    return {
        "number": t.number,
        "values": dict(zip(objective.names, t.values)) if t.values else None,
        "params": dict(t.params),
        "constraints": dict(t.constraints),
        "metrics": dict(t.user_attrs.get("metrics", {})),
    }
