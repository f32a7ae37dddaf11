"""The ``[tune]`` table of a config: the schema every tuner reads.

::

    [tune]
    method = "optuna"            # optuna | gradient
    sampler = "tpe"              # tpe | cmaes | nsga2 | random   (optuna)
    trials = 200                 # target number of evaluated trials in the study
    batch = 16                   # K: parameter sets per vmapped simulator call
    num_workloads = 64           # W per trial (default: workload.num_workloads)
    seed = 0
    study = "flow-control"       # default: <config file stem>-<policy name>
    storage = "sqlite:///tune.db"  # any SQLAlchemy URL; default: jaxsched-tune.db here
    objective = "weighted"       # weighted | pareto

    [tune.weights]               # weighted: maximize sum_m w_m * sign_m * metric_m / scale_m
    completed_per_time = 1.0
    latency_p95 = 0.5

    [tune.directions]            # override a metric's natural direction
    [tune.scales]                # a number, or "baseline" (the config's own policy; default)

    [tune.pareto]                # pareto: one objective per metric (NSGA-II by default)
    maximize = ["completed_per_time"]
    minimize = ["latency_p95"]

    [[tune.constraints]]         # feasible when min <= metric <= max
    metric = "evictions_per_request"
    max = 0.01

    [tune.space.budget]          # override the default search range of a policy parameter
    low = 4.0
    high = 40.0
    log = true                   # integer = true | false; tied = true (per-class: one dim)
                                 # search = false (keep the config's value); fixed = 12.0

    [tune.gradient]              # settings of the gradient tuner (free-form, read by it)

Everything is validated here: unknown keys, wrong types and bad values are refused with one
line naming the file and the key (``tune.space.budget.low``).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from jaxsched.config import format_validation
from jaxsched.errors import JaxschedError

__all__ = [
    "SpaceEntry",
    "ConstraintSettings",
    "ParetoSettings",
    "TuneSettings",
    "SAMPLERS",
    "METHODS",
    "DEFAULT_WEIGHTS",
    "DEFAULT_PARETO",
    "tune_settings",
]

SAMPLERS = ("tpe", "cmaes", "nsga2", "random")
METHODS = ("optuna", "gradient")

DEFAULT_WEIGHTS = {"completed_per_time": 1.0, "latency_p95": 0.5}
"""The default weighted objective: throughput, with the p95 latency at half its weight (each
normalized by its value under the config's own policy parameters)."""

DEFAULT_PARETO = {"maximize": ["completed_per_time"], "minimize": ["latency_p95"]}
"""The default multi-objective: throughput against p95 latency."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


Number = float | list[float]


class SpaceEntry(_Strict):
    """Override of one policy parameter's search range (``[tune.space.NAME]``)."""

    low: Number | None = None
    high: Number | None = None
    log: bool | None = None
    integer: bool | None = None
    tied: bool = Field(default=False, description="per-class parameter: one dimension for all classes")
    search: bool = Field(default=True, description="false: keep the config's (or default) value")
    fixed: Number | None = Field(default=None, description="keep this value (not searched)")


class ConstraintSettings(_Strict):
    """``min <= metric <= max`` (at least one bound)."""

    metric: str
    max: float | None = None
    min: float | None = None

    @model_validator(mode="after")
    def _one_bound(self):
        if self.max is None and self.min is None:
            raise ValueError("a constraint needs max or min")
        if self.max is not None and self.min is not None and self.min > self.max:
            raise ValueError(f"min ({self.min}) is larger than max ({self.max})")
        return self


class ParetoSettings(_Strict):
    maximize: list[str] = Field(default_factory=list)
    minimize: list[str] = Field(default_factory=list)

    @model_validator(mode="after")
    def _some(self):
        if not self.maximize and not self.minimize:
            raise ValueError("pareto needs at least one metric in maximize or minimize")
        both = set(self.maximize) & set(self.minimize)
        if both:
            raise ValueError(f"{sorted(both)[0]!r} is both maximized and minimized")
        return self


class TuneSettings(_Strict):
    """The validated ``[tune]`` table (every field has a default)."""

    method: Literal["optuna", "gradient"] = "optuna"
    sampler: Literal["tpe", "cmaes", "nsga2", "random"] | None = None  # default by objective
    trials: int = Field(default=100, ge=1)
    batch: int = Field(default=16, ge=1)
    num_workloads: int | None = Field(default=None, ge=1)
    devices: int | None = Field(default=None, ge=1)  # None: every device (sharded when > 1)
    seed: int = 0
    study: str | None = None
    storage: str | None = None
    objective: Literal["weighted", "pareto"] = "weighted"
    weights: dict[str, float] | None = None
    directions: dict[str, Literal["maximize", "minimize"]] = Field(default_factory=dict)
    scales: dict[str, float | Literal["baseline"]] = Field(default_factory=dict)
    pareto: ParetoSettings | None = None
    constraints: list[ConstraintSettings] = Field(default_factory=list)
    space: dict[str, SpaceEntry] = Field(default_factory=dict)
    gradient: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _check(self):
        if self.weights is not None:
            if not self.weights:
                raise ValueError("weights: give at least one metric")
            for name, w in self.weights.items():
                if not w >= 0 or w == float("inf"):
                    raise ValueError(f"weights.{name}: must be a finite number >= 0, got {w}")
            if sum(self.weights.values()) <= 0:
                raise ValueError("weights: at least one weight must be positive")
        for name, s in self.scales.items():
            if s != "baseline" and not (s > 0 and s != float("inf")):
                raise ValueError(f"scales.{name}: must be a positive number or 'baseline', got {s}")
        return self

    @property
    def resolved_sampler(self) -> str:
        """The sampler: as given, else NSGA-II for pareto objectives and TPE otherwise."""
        if self.sampler is not None:
            return self.sampler
        return "nsga2" if self.objective == "pareto" else "tpe"

    @property
    def resolved_weights(self) -> dict[str, float]:
        return dict(self.weights) if self.weights is not None else dict(DEFAULT_WEIGHTS)

    @property
    def resolved_pareto(self) -> ParetoSettings:
        return self.pareto if self.pareto is not None else ParetoSettings(**DEFAULT_PARETO)


def tune_settings(table: dict[str, Any] | None, source: str = "<config>") -> TuneSettings:
    """Validate a config's ``[tune]`` table (``cfg.tune``); errors name the file and key."""
    try:
        return TuneSettings(**dict(table or {}))
    except ValidationError as err:
        raise JaxschedError(format_validation(source, err, "tune.")) from None
    except TypeError as err:
        raise JaxschedError(f"{source}: tune: {err}") from None
