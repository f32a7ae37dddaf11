"""Policies by name: one explicit table of factories (as gymnax's ``registration.py`` keeps).

A new policy is one line of :data:`POLICIES`: its name and the factory in its own module
(which builds the :class:`Policy` bundle, hooks included). :func:`register` adds a factory at
run time (a policy outside this package).

``get_policy(name, **options)`` builds (and caches) the :class:`Policy`; ``make_params``
turns user values into the traced parameter pytree, refusing unknown names and values
outside a parameter's feasible range.
"""

from __future__ import annotations

import functools
import inspect
from typing import Any, Callable, Mapping

import jax.numpy as jnp
import numpy as np

from jaxsched.errors import PolicyError
from jaxsched.policies import flow_control, greedy, production, wait
from jaxsched.policies.base import Param, Policy

__all__ = [
    "register",
    "get_policy",
    "list_policies",
    "policy_options",
    "make_params",
    "check_params",
    "PolicyError",
    "POLICIES",
]

POLICIES: dict[str, Callable[..., Policy]] = {
    "greedy": greedy.greedy,
    "vllm": production.vllm,
    "sarathi": production.sarathi,
    "sglang": production.sglang,
    "wait": wait.wait,
    "nested_wait": wait.nested_wait,
    "flow_control": flow_control.flow_control,
    "flow_control_known": flow_control.flow_control_known,
    "alpha_protection": flow_control.alpha_protection,
    "mc_sf": flow_control.mc_sf,
    "mc_benchmark": flow_control.mc_benchmark,
    "reserve_full": flow_control.reserve_full,
}
"""The registered policies: name -> factory (keyword options with defaults -> Policy)."""

_FACTORIES = dict(POLICIES)  # the table plus what register() adds at run time


def register(name: str):
    """Decorator: register a policy factory under ``name``."""

    def deco(factory):
        if name in _FACTORIES:
            raise ValueError(f"policy {name!r} registered twice")
        _FACTORIES[name] = factory
        return factory

    return deco


def list_policies() -> list[str]:
    return sorted(_FACTORIES)


def policy_options(name: str) -> dict[str, Any]:
    """The factory's static options with their defaults."""
    factory = _factory(name)
    return {
        p.name: p.default
        for p in inspect.signature(factory).parameters.values()
        if p.default is not inspect.Parameter.empty
    }


def _factory(name: str):
    if name not in _FACTORIES:
        raise PolicyError(f"unknown policy {name!r}; known policies: {', '.join(list_policies())}")
    return _FACTORIES[name]


@functools.lru_cache(maxsize=None)
def _build(name: str, options: tuple) -> Policy:
    return _factory(name)(**dict(options))


def get_policy(name: str, **options) -> Policy:
    """The policy ``name`` built with static ``options`` (cached: same options, same object,
    so jitted simulators are reused)."""
    known = policy_options(name)
    for key in options:
        if key not in known:
            raise PolicyError(
                f"policy {name!r} has no option {key!r}; options: {', '.join(known) or 'none'}"
            )
    full = {**known, **options}  # defaults made explicit: one cached object per behaviour
    try:
        return _build(name, tuple(sorted(full.items())))
    except ValueError as err:
        raise PolicyError(f"policy {name!r}: {err}") from None


def _check_value(pname: str, spec: Param, value: np.ndarray, where: str) -> None:
    if not np.all(np.isfinite(value)):
        raise PolicyError(f"{where}{pname} must be finite, got {value.tolist()}")
    if spec.low is not None and np.any(value < spec.low):
        raise PolicyError(f"{where}{pname} must be >= {spec.low}, got {value.tolist()}")
    if spec.high is not None and np.any(value > spec.high):
        raise PolicyError(f"{where}{pname} must be <= {spec.high}, got {value.tolist()}")
    if spec.integer and np.any(value != np.round(value)):
        raise PolicyError(f"{where}{pname} must be an integer, got {value.tolist()}")


def check_params(policy: Policy, values: Mapping[str, Any], num_classes: int,
                 where: str = "policy.") -> None:
    """Validate concrete parameter values (broadcasting batch axes)."""
    for pname, value in values.items():
        spec = policy.params.get(pname)
        if spec is None:
            raise PolicyError(
                f"{where}{pname}: unknown parameter of policy {policy.name!r}; "
                f"parameters: {', '.join(policy.params) or 'none'}"
            )
        arr = np.asarray(value, dtype=np.float64)
        if spec.per_class and arr.ndim >= 1 and arr.shape[-1] not in (1, num_classes):
            raise PolicyError(
                f"{where}{pname} needs one value per class ({num_classes}), got {arr.shape[-1]}"
            )
        _check_value(pname, spec, arr, where)


def make_params(policy: Policy, values: Mapping[str, Any] | None = None, num_classes: int = 1,
                where: str = "policy.") -> dict[str, jnp.ndarray]:
    """The traced parameter pytree: defaults overridden by ``values`` (validated).

    Per-class parameters get shape (K,) (a scalar is broadcast); others shape ().
    """
    values = dict(values or {})
    check_params(policy, values, num_classes, where)
    out = {}
    for pname, spec in policy.params.items():
        arr = jnp.asarray(values.get(pname, spec.default), jnp.float32)
        if spec.per_class:
            arr = jnp.broadcast_to(arr, (num_classes,)) if arr.ndim == 0 else arr
            if arr.shape[-1] == 1 and num_classes != 1:
                arr = jnp.broadcast_to(arr, arr.shape[:-1] + (num_classes,))
        out[pname] = arr
    return out
