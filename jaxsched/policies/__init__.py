"""Scheduling policies: the interface, the registry (an explicit table, :mod:`.registry`)
and the families it lists."""

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

