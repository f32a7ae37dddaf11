"""Reference twins by name: one explicit table, beside :data:`jaxsched.policies.registry.POLICIES`.

A new policy's twin is one line of :data:`REFERENCE_POLICIES`: the name it is registered
under in :mod:`jaxsched.policies` and the class in its own module here (built as
``cls(params, **options)``).
"""

from __future__ import annotations

from typing import Callable

from jaxsched.reference.policies import flow_control, greedy, production, wait
from jaxsched.reference.policies.base import RefPolicy

__all__ = ["REFERENCE_POLICIES", "reference_policy"]

REFERENCE_POLICIES: dict[str, Callable[..., RefPolicy]] = {
    "greedy": greedy.RefGreedy,
    "vllm": production.RefVllm,
    "sarathi": production.RefSarathi,
    "sglang": production.RefSglang,
    "wait": wait.RefWait,
    "nested_wait": wait.RefNestedWait,
    "flow_control": flow_control.RefFlowControl,
    "flow_control_known": flow_control.RefFlowControlKnown,
    "alpha_protection": flow_control.RefAlphaProtection,
    "mc_sf": flow_control.RefMCSF,
    "mc_benchmark": flow_control.RefMCBenchmark,
    "reserve_full": flow_control.RefReserveFull,
}
"""The twins: policy name -> factory ``(params: dict, **options) -> RefPolicy``."""


def reference_policy(name: str, params: dict, **options) -> RefPolicy:
    """Build the twin of policy ``name``; ``params`` are plain numbers (or lists per class)."""
    return REFERENCE_POLICIES[name](params, **options)
