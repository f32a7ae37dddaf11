"""Objectives and constraints on the simulator's metrics, shared by every tuner.

A tuner evaluates parameter sets into metric dicts (``jaxsched.core.metrics.METRIC_KEYS`` plus the
derived metrics below), per workload; :func:`aggregate` averages them over workloads (NaN
ignored, as ``jaxsched simulate`` reports them) and an :class:`Objective` turns the averages
into the values a tuner optimizes:

* ``weighted``: one value to **maximize**,
  ``score = sum_m w_m * sign_m * metric_m / scale_m`` with ``sign = +1`` for a maximized
  metric and ``-1`` for a minimized one, and ``scale_m`` a number or the metric's value under
  the config's own policy parameters (``"baseline"``, the default), so the weights are
  dimensionless and the baseline scores ``sum_m w_m sign_m``.
* ``pareto``: one value per metric with its own direction (throughput against p95 latency by
  default).

Constraints ``min <= metric <= max`` become values ``g`` with ``g <= 0`` feasible, Optuna's
convention. A trial whose objective or constraint metrics are NaN or infinite is *failed*;
:meth:`Objective.nonfinite_reason` says why.

Everything here is plain arithmetic on whatever the metrics are (Python floats, NumPy or JAX
arrays), so the same :class:`Objective` scores a batch of trials in NumPy and is
differentiable under ``jax.grad`` when the metrics come from a smooth surrogate of the
simulator: :meth:`Objective.loss` is ``-score`` plus a quadratic penalty on constraint
violations, ready for a gradient tuner.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Literal, Mapping

import jax.numpy as jnp
import numpy as np

from jaxsched.errors import JaxschedError
from jaxsched.core.metrics import DERIVED_METRICS, METRIC_KEYS, add_derived, aggregate, measured_time

__all__ = [
    "DERIVED_METRICS",
    "ALL_METRICS",
    "METRIC_DIRECTIONS",
    "Term",
    "Constraint",
    "Objective",
    "measured_time",
    "add_derived",
    "aggregate",
    "objective_from_settings",
]

ALL_METRICS = tuple(METRIC_KEYS) + DERIVED_METRICS

Direction = Literal["maximize", "minimize"]

METRIC_DIRECTIONS: dict[str, Direction] = {
    "completed_per_time": "maximize",
    "tokens_per_time": "maximize",
    "latency_mean": "minimize",
    "latency_p50": "minimize",
    "latency_p95": "minimize",
    "latency_p99": "minimize",
    "ttft_mean": "minimize",
    "ttft_p95": "minimize",
    "evictions": "minimize",
    "recomputed_tokens": "minimize",
    "mean_memory": "minimize",
    "peak_memory": "minimize",
    "overflow_steps": "minimize",
    "queue_final": "minimize",
    "utilization": "maximize",
    "completed": "maximize",
    "evictions_per_request": "minimize",
}
"""The natural direction of every metric (``[tune.directions]`` overrides it)."""


@dataclasses.dataclass(frozen=True)
class Term:
    """One metric of an objective: its direction, weight and scale (``None``: baseline)."""

    metric: str
    direction: Direction
    weight: float = 1.0
    scale: float | None = None

    @property
    def sign(self) -> float:
        return 1.0 if self.direction == "maximize" else -1.0


@dataclasses.dataclass(frozen=True)
class Constraint:
    """``metric <= bound`` (``upper``) or ``metric >= bound``."""

    metric: str
    bound: float
    upper: bool = True

    @property
    def name(self) -> str:
        return f"{self.metric}{'<=' if self.upper else '>='}{self.bound:g}"

    def value(self, metrics: Mapping[str, Any]):
        """``g``: feasible iff ``g <= 0``; its size is the violation in the metric's units."""
        m = metrics[self.metric]
        return m - self.bound if self.upper else self.bound - m


@dataclasses.dataclass(frozen=True)
class Objective:
    """What a tuner optimizes (see the module docstring)."""

    kind: Literal["weighted", "pareto"]
    terms: tuple[Term, ...]
    constraints: tuple[Constraint, ...] = ()

    @property
    def directions(self) -> tuple[Direction, ...]:
        """Optuna study directions: one ``maximize`` for a weighted score, else per term."""
        if self.kind == "weighted":
            return ("maximize",)
        return tuple(t.direction for t in self.terms)

    @property
    def names(self) -> tuple[str, ...]:
        """One label per objective value."""
        if self.kind == "weighted":
            return ("score",)
        return tuple(t.metric for t in self.terms)

    @property
    def metrics(self) -> tuple[str, ...]:
        """Every metric the objective and constraints read."""
        seen: dict[str, None] = {}
        for t in self.terms:
            seen[t.metric] = None
        for c in self.constraints:
            seen[c.metric] = None
        return tuple(seen)

    @property
    def needs_baseline(self) -> bool:
        return self.kind == "weighted" and any(t.scale is None for t in self.terms)

    def with_baseline(self, baseline: Mapping[str, float]) -> "Objective":
        """Resolve ``"baseline"`` scales from the metrics of the config's own parameters
        (``|value|``; 1 where that is 0, not finite, or missing: ``None`` is how a study
        stores NaN)."""
        terms = []
        for t in self.terms:
            if t.scale is None:
                v = baseline.get(t.metric)
                v = abs(float(v)) if v is not None else math.nan
                t = dataclasses.replace(t, scale=v if math.isfinite(v) and v > 0 else 1.0)
            terms.append(t)
        return dataclasses.replace(self, terms=tuple(terms))

    def fallback_scales(self, baseline: Mapping[str, float]) -> tuple[str, ...]:
        """The ``"baseline"``-scaled metrics whose baseline value is 0, not finite or missing
        (:meth:`with_baseline` scales them by 1)."""
        out = []
        for t in self.terms:
            if t.scale is None:
                v = baseline.get(t.metric)
                v = abs(float(v)) if v is not None else math.nan
                if not (math.isfinite(v) and v > 0):
                    out.append(t.metric)
        return tuple(out)

    def score(self, metrics: Mapping[str, Any]):
        """The weighted score to maximize (works on floats, NumPy and JAX arrays)."""
        if any(t.scale is None for t in self.terms):
            raise ValueError("resolve the baseline scales first (Objective.with_baseline)")
        total = 0.0
        for t in self.terms:
            total = total + (t.weight * t.sign / t.scale) * metrics[t.metric]
        return total

    def values(self, metrics: Mapping[str, Any]) -> tuple:
        """The objective values, in :attr:`directions` order."""
        if self.kind == "weighted":
            return (self.score(metrics),)
        return tuple(metrics[t.metric] for t in self.terms)

    def constraint_values(self, metrics: Mapping[str, Any]) -> tuple:
        return tuple(c.value(metrics) for c in self.constraints)

    def feasible(self, metrics: Mapping[str, Any]) -> bool:
        return all(float(g) <= 0 for g in self.constraint_values(metrics))

    def loss(self, metrics: Mapping[str, Any], penalty: float = 10.0, xp=None):
        """``-score + penalty * sum_c (relu(g_c) / s_c)^2`` with ``s_c = max(|bound|, 1)``: the
        smooth scalar a gradient tuner minimizes (weighted objectives; a pareto objective is
        scalarized with its terms' weights and baseline scales)."""
        if xp is None:
            xp = jnp
        obj = self if self.kind == "weighted" else dataclasses.replace(self, kind="weighted")
        total = -obj.score(metrics)
        for c in self.constraints:
            g = c.value(metrics) / max(abs(c.bound), 1.0)
            total = total + penalty * xp.maximum(g, 0.0) ** 2
        return total

    def nonfinite_reason(self, metrics: Mapping[str, Any]) -> str | None:
        """Why a trial must be failed (a metric it reads is NaN or infinite), else None."""
        bad = []
        for name in self.metrics:
            v = float(np.asarray(metrics[name]))
            if not math.isfinite(v):
                bad.append(f"{name}={v}")
        if bad:
            return "non-finite metrics: " + ", ".join(bad)
        return None

    def to_dict(self) -> dict:
        return {
            "kind": self.kind,
            "terms": [dataclasses.asdict(t) for t in self.terms],
            "constraints": [dataclasses.asdict(c) for c in self.constraints],
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "Objective":
        return cls(
            kind=data["kind"],
            terms=tuple(Term(**t) for t in data["terms"]),
            constraints=tuple(Constraint(**c) for c in data.get("constraints", ())),
        )


def _check_metric(name: str, where: str) -> None:
    if name not in ALL_METRICS:
        raise JaxschedError(f"{where}: unknown metric {name!r}; metrics: {', '.join(ALL_METRICS)}")


def objective_from_settings(settings, source: str = "<config>",
                            kind: str | None = None) -> Objective:
    """The :class:`Objective` of a validated ``[tune]`` table (``tuning.settings``);
    ``kind`` overrides ``tune.objective``."""
    kind = kind or settings.objective
    for name in settings.directions:
        _check_metric(name, f"{source}: tune.directions.{name}")
    for name in settings.scales:
        _check_metric(name, f"{source}: tune.scales.{name}")
    if kind == "weighted":
        terms = []
        for name, w in settings.resolved_weights.items():
            _check_metric(name, f"{source}: tune.weights.{name}")
            if w == 0:
                continue
            scale = settings.scales.get(name, "baseline")
            terms.append(Term(
                metric=name,
                direction=settings.directions.get(name, METRIC_DIRECTIONS[name]),
                weight=float(w),
                scale=None if scale == "baseline" else float(scale),
            ))
    elif kind == "pareto":
        p = settings.resolved_pareto
        terms = []
        for direction, names in (("maximize", p.maximize), ("minimize", p.minimize)):
            for name in names:
                _check_metric(name, f"{source}: tune.pareto.{direction}")
                scale = settings.scales.get(name, "baseline")
                terms.append(Term(metric=name, direction=direction, weight=1.0,
                                  scale=None if scale == "baseline" else float(scale)))
    else:
        raise JaxschedError(f"{source}: tune.objective: expected weighted or pareto, got {kind!r}")
    constraints = []
    for i, c in enumerate(settings.constraints):
        _check_metric(c.metric, f"{source}: tune.constraints.{i}.metric")
        if c.max is not None:
            constraints.append(Constraint(c.metric, float(c.max), upper=True))
        if c.min is not None:
            constraints.append(Constraint(c.metric, float(c.min), upper=False))
    return Objective(kind=kind, terms=tuple(terms), constraints=tuple(constraints))

