"""Scheduling policies: the interface, the registry and the registered families."""

from jaxsched.policies import greedy as _greedy  # noqa: F401  (registers "greedy")
from jaxsched.policies.base import Param, Plan, Policy, QueueView, SchedView, SlotView
from jaxsched.policies.registry import (
    PolicyError,
    get_policy,
    list_policies,
    make_params,
    policy_options,
    register,
)

__all__ = [
    "Param",
    "Plan",
    "Policy",
    "PolicyError",
    "QueueView",
    "SchedView",
    "SlotView",
    "get_policy",
    "list_policies",
    "make_params",
    "policy_options",
    "register",
]
