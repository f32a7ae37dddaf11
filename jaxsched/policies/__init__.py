"""Scheduling policies: the interface, the registry and the registered families."""

import importlib as _importlib
import pkgutil as _pkgutil

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


# Importing a family module registers its policies; every module in this package but the
# interface and the registry is a family.
for _mod in _pkgutil.iter_modules(__path__):
    if _mod.name not in ("base", "registry"):
        _importlib.import_module(f"{__name__}.{_mod.name}")
