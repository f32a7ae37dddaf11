"""Plain-Python twins of the registered policies (for the reference simulator's tests)."""

import importlib as _importlib
import pkgutil as _pkgutil

from jaxsched.reference.policies.base import (
    REFERENCE_POLICIES,
    RefPolicy,
    RefResident,
    RefView,
    RefWaiting,
    reference_policy,
    register_reference,
)

__all__ = [
    "REFERENCE_POLICIES",
    "RefPolicy",
    "RefResident",
    "RefView",
    "RefWaiting",
    "reference_policy",
    "register_reference",
]


for _mod in _pkgutil.iter_modules(__path__):
    if _mod.name != "base":
        _importlib.import_module(f"{__name__}.{_mod.name}")
