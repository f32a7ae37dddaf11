"""Search spaces over a policy's parameters, derived from its :class:`~jaxsched.policies.Param`
specs and overridden by ``[tune.space.NAME]``.

Every registered policy gets a space without any policy-specific code. For each parameter
(one dimension per class for a per-class parameter, ``budget[0]``, ``budget[1]``, ...; or one
shared dimension with ``tied = true``), with ``r`` its *reference value* (the config's value,
else the policy's workload-fitted default, else the registry default):

1. both bounds of the spec finite (an upper bound of 1e6 or more counts as none): ``[low, high]``;
2. else, if ``0 < r < 1e6``: ``[r / 4, 4 r]`` on a log scale, clipped to the spec's bounds;
3. else (``r`` is 0 or an "unlimited" sentinel such as 1e9): ``[low, C]``, ``C`` the KV capacity
   in tokens (every count of tokens or of resident requests is at most ``C``);

rounded inwards for integer parameters; in cases 1 and 3 searched on a log scale when the spec
says so or the range spans two decades or more (and ``low > 0``). A parameter for which no range results
keeps its reference value (and is listed as fixed).

A point of the space is a flat ``{dimension name: value}`` dict (Optuna's params);
:meth:`SearchSpace.values` turns it into the policy's parameter values and
:meth:`SearchSpace.stack` a batch of points into the traced pytree with a leading axis.
:meth:`SearchSpace.from_unit` maps the unit cube to parameters with array operations only
(differentiable), for the gradient tuner.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Mapping, Sequence

import jax.numpy as jnp
import numpy as np
from optuna.distributions import FloatDistribution, IntDistribution

from jaxsched.errors import JaxschedError
from jaxsched.policies import Policy
from jaxsched.policies.base import Param
from jaxsched.policies.registry import check_params

__all__ = [
    "UNBOUNDED",
    "SPREAD",
    "Dimension",
    "SearchSpace",
    "default_range",
    "build_search_space",
]

UNBOUNDED = 1e6
"""A spec bound at or above this is an "unlimited" sentinel, not a search bound."""

SPREAD = 4.0
"""Default range around a reference value ``r``: ``[r / SPREAD, SPREAD r]`` (log scale)."""


@dataclasses.dataclass(frozen=True)
class Dimension:
    """One searched coordinate: parameter ``param`` (class ``index``; None: all classes or a
    scalar parameter) in ``[low, high]``."""

    name: str
    param: str
    index: int | None
    low: float
    high: float
    log: bool
    integer: bool

    def distribution(self):
        """The Optuna distribution of this dimension."""
        if self.integer:
            return IntDistribution(int(self.low), int(self.high), log=self.log)
        return FloatDistribution(float(self.low), float(self.high), log=self.log)

    def clip(self, value: float) -> float | int:
        v = min(max(float(value), self.low), self.high)
        return int(round(v)) if self.integer else v

    def to_unit(self, value, xp=np):
        if self.log:
            return (xp.log(value) - math.log(self.low)) / (math.log(self.high) - math.log(self.low))
        return (value - self.low) / (self.high - self.low)

    def from_unit(self, u, xp=np):
        if self.log:
            return xp.exp(math.log(self.low) + u * (math.log(self.high) - math.log(self.low)))
        return self.low + u * (self.high - self.low)


@dataclasses.dataclass(frozen=True)
class SearchSpace:
    """The searched dimensions of a policy and the values of everything else."""

    policy: str
    num_classes: int
    dims: tuple[Dimension, ...]
    base: Mapping[str, np.ndarray]  # every parameter's value when not searched (float64)
    per_class: Mapping[str, bool]

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(d.name for d in self.dims)

    @property
    def fixed(self) -> tuple[str, ...]:
        """Parameters no dimension touches."""
        searched = {d.param for d in self.dims}
        return tuple(p for p in self.base if p not in searched)

    def distributions(self) -> dict:
        return {d.name: d.distribution() for d in self.dims}

    def default_point(self) -> dict[str, float | int]:
        """The reference values (clipped into the ranges) as a point."""
        point = {}
        for d in self.dims:
            b = np.asarray(self.base[d.param], np.float64)
            v = float(np.mean(b)) if d.index is None and b.ndim else float(b[d.index] if d.index is not None else b)
            point[d.name] = d.clip(v)
        return point

    def values(self, point: Mapping[str, float]) -> dict[str, np.ndarray]:
        """The policy's parameter values (float64 arrays, (K,) per class) at ``point``."""
        out = {k: np.array(v, np.float64) for k, v in self.base.items()}
        for d in self.dims:
            if d.name not in point:
                raise JaxschedError(f"point has no value for {d.name!r}")
            v = float(point[d.name])
            if d.index is None:
                out[d.param] = np.full_like(out[d.param], v)
            else:
                out[d.param][d.index] = v
        return out

    def plain_values(self, point: Mapping[str, float]) -> dict[str, float | list[float]]:
        """:meth:`values` as JSON-ready numbers (ints where the dimension is integer)."""
        ints = {d.param for d in self.dims if d.integer}
        out = {}
        for k, v in self.values(point).items():
            conv = (lambda x: int(round(x))) if k in ints else float
            out[k] = [conv(x) for x in v.tolist()] if v.ndim else conv(float(v))
        return out

    def stack(self, points: Sequence[Mapping[str, float]]) -> dict[str, np.ndarray]:
        """The traced parameter pytree (float32) for a batch of points: leading axis P."""
        rows = [self.values(p) for p in points]
        return {k: np.stack([r[k] for r in rows]).astype(np.float32) for k in self.base}

    def to_unit(self, point: Mapping[str, float]) -> np.ndarray:
        """(D,) coordinates in the unit cube."""
        return np.array([d.to_unit(float(point[d.name])) for d in self.dims], np.float64)

    def point_from_unit(self, u) -> dict[str, float | int]:
        """The point (dimension name -> value, clipped, integers rounded) at unit-cube
        coordinates ``u`` (D,)."""
        return {d.name: d.clip(float(d.from_unit(float(x), np))) for d, x in zip(self.dims, u)}

    def from_unit(self, u, xp=None, round_integers: bool = False) -> dict[str, Any]:
        """Parameter pytree from unit-cube coordinates ``u`` (D,), with array operations only
        (differentiable with ``xp = jax.numpy``; integers stay continuous unless
        ``round_integers``)."""
        if xp is None:
            xp = jnp
        out = {k: xp.asarray(v, xp.float32) for k, v in self.base.items()}
        for i, d in enumerate(self.dims):
            v = d.from_unit(u[i], xp)
            if round_integers and d.integer:
                v = xp.round(v)
            if d.index is None:
                out[d.param] = xp.broadcast_to(v, out[d.param].shape).astype(xp.float32)
            else:
                out[d.param] = out[d.param].at[d.index].set(v) if hasattr(out[d.param], "at") else \
                    _np_set(out[d.param], d.index, v)
        return out

    def to_dict(self) -> dict:
        """JSON-ready description (:meth:`from_dict` rebuilds the space)."""
        return {
            "policy": self.policy,
            "num_classes": self.num_classes,
            "dims": [dataclasses.asdict(d) for d in self.dims],
            "base": {k: np.asarray(v).tolist() for k, v in self.base.items()},
            "per_class": dict(self.per_class),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "SearchSpace":
        return cls(
            policy=data["policy"],
            num_classes=int(data["num_classes"]),
            dims=tuple(Dimension(**d) for d in data["dims"]),
            base={k: np.asarray(v, np.float64) for k, v in data["base"].items()},
            per_class=dict(data.get("per_class", {})),
        )


def _np_set(arr, index, value):
    arr = np.array(arr)
    arr[index] = value
    return arr


def default_range(spec: Param, reference: float, capacity: float | None):
    """``(low, high, log)`` of the default search range (module docstring), or None."""
    lo_spec = spec.low
    hi_spec = spec.high if spec.high is not None and spec.high < UNBOUNDED else None
    relative = False
    if lo_spec is not None and hi_spec is not None:
        lo, hi = float(lo_spec), float(hi_spec)
    elif math.isfinite(reference) and 0 < reference < UNBOUNDED:
        lo, hi = reference / SPREAD, reference * SPREAD
        relative = True
        if lo_spec is not None:
            lo = max(lo, float(lo_spec))
        if spec.high is not None:
            hi = min(hi, float(spec.high))
    elif capacity is not None and (lo_spec is None or lo_spec >= 0):
        lo = float(lo_spec) if lo_spec is not None else 0.0
        hi = float(capacity) if spec.high is None else min(float(capacity), float(spec.high))
    else:
        return None
    if spec.integer:
        lo, hi = float(math.ceil(lo)), float(math.floor(hi))
    if not hi > lo:
        return None
    log = lo > 0 and (relative or spec.log or hi / lo >= 100)
    return lo, hi, log


def _per_class_list(value, k: int, where: str) -> list[float | None]:
    if value is None:
        return [None] * k
    if isinstance(value, list):
        if len(value) != k:
            raise JaxschedError(f"{where}: needs one value per class ({k}), got {len(value)}")
        return [float(v) for v in value]
    return [float(value)] * k


def _dimension(name, pname, index, spec: Param, ref: float, capacity, entry, lo_o, hi_o,
               where: str) -> Dimension | None:
    rng = default_range(spec, ref, capacity)
    if rng is None and (lo_o is None or hi_o is None) and entry is not None and \
            (entry.low is not None or entry.high is not None):
        raise JaxschedError(f"{where}: no default range for {pname!r}; give both low and high")
    lo, hi, log = rng if rng is not None else (None, None, False)
    explicit = lo_o is not None or hi_o is not None
    lo = lo_o if lo_o is not None else lo
    hi = hi_o if hi_o is not None else hi
    if lo is None or hi is None:
        return None
    integer = spec.integer
    if entry is not None and entry.integer is not None:
        if spec.integer and not entry.integer:
            raise JaxschedError(f"{where}.integer: {pname!r} takes integer values only")
        integer = entry.integer
    if entry is not None and entry.log is not None:
        log = entry.log
    elif explicit:
        log = lo > 0 and (spec.log or hi / lo >= 100)
    if spec.low is not None and lo < spec.low:
        raise JaxschedError(f"{where}.low: {lo:g} is below {pname!r}'s lowest value {spec.low:g}")
    if spec.high is not None and hi > spec.high:
        raise JaxschedError(f"{where}.high: {hi:g} is above {pname!r}'s highest value {spec.high:g}")
    if integer:
        lo, hi = float(math.ceil(lo)), float(math.floor(hi))
    if not hi > lo:
        raise JaxschedError(f"{where}: low ({lo:g}) must be smaller than high ({hi:g})")
    if log and lo <= 0:
        raise JaxschedError(f"{where}.log: a log scale needs low > 0, got low = {lo:g}")
    return Dimension(name=name, param=pname, index=index, low=lo, high=hi, log=bool(log),
                     integer=bool(integer))


def build_search_space(policy: Policy, num_classes: int, base: Mapping[str, Any],
                       capacity: float | None = None, overrides: Mapping[str, Any] | None = None,
                       source: str = "<config>") -> SearchSpace:
    """The search space of ``policy``: defaults from its specs around the reference values
    ``base`` (every parameter, e.g. ``Experiment.params.policy``), then ``[tune.space]``
    ``overrides`` (``tuning.settings.SpaceEntry`` by parameter name)."""
    overrides = dict(overrides or {})
    for pname in overrides:
        if pname not in policy.params:
            raise JaxschedError(
                f"{source}: tune.space.{pname}: policy {policy.name!r} has no parameter {pname!r}; "
                f"parameters: {', '.join(policy.params) or 'none'}"
            )
    values = {k: np.array(np.asarray(base[k]), np.float64) for k in policy.params}
    dims: list[Dimension] = []
    for pname, spec in policy.params.items():
        entry = overrides.get(pname)
        where = f"{source}: tune.space.{pname}"
        if entry is not None and entry.tied and not spec.per_class:
            raise JaxschedError(f"{where}.tied: {pname!r} is not a per-class parameter")
        if entry is not None and entry.fixed is not None:
            fixed = entry.fixed
            if spec.per_class:
                values[pname] = np.array(_per_class_list(fixed, num_classes, f"{where}.fixed"))
            elif isinstance(fixed, list):
                raise JaxschedError(f"{where}.fixed: {pname!r} takes one value, got a list")
            else:
                values[pname] = np.array(float(fixed))
            _check_fixed(policy, pname, values[pname], num_classes, f"{where}.fixed")
            continue
        if entry is not None and not entry.search:
            continue
        ref = values[pname]
        if spec.per_class and not (entry is not None and entry.tied):
            los = _per_class_list(entry.low if entry else None, num_classes, f"{where}.low")
            his = _per_class_list(entry.high if entry else None, num_classes, f"{where}.high")
            for k in range(num_classes):
                r = float(ref[k]) if ref.ndim else float(ref)
                d = _dimension(f"{pname}[{k}]", pname, k, spec, r, capacity, entry, los[k], his[k], where)
                if d is not None:
                    dims.append(d)
        else:
            if entry is not None and (isinstance(entry.low, list) or isinstance(entry.high, list)):
                raise JaxschedError(f"{where}: low and high are single numbers here, not lists")
            r = float(np.mean(ref))
            lo = float(entry.low) if entry is not None and entry.low is not None else None
            hi = float(entry.high) if entry is not None and entry.high is not None else None
            d = _dimension(pname, pname, None, spec, r, capacity, entry, lo, hi, where)
            if d is not None:
                dims.append(d)
    return SearchSpace(
        policy=policy.name,
        num_classes=num_classes,
        dims=tuple(dims),
        base=values,
        per_class={k: bool(s.per_class) for k, s in policy.params.items()},
    )


def _check_fixed(policy: Policy, pname: str, value: np.ndarray, num_classes: int, where: str) -> None:
    check_params(policy, {pname: value}, num_classes, where=f"{where}: ")
