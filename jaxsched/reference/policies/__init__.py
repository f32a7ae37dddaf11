"""Plain-Python twins of the registered policies (for the reference simulator's tests); the
table of twins is :mod:`jaxsched.reference.policies.registry`."""

from jaxsched.reference.policies.base import RefPolicy, RefResident, RefView, RefWaiting
from jaxsched.reference.policies.registry import REFERENCE_POLICIES, reference_policy

__all__ = [
    "REFERENCE_POLICIES",
    "RefPolicy",
    "RefResident",
    "RefView",
    "RefWaiting",
    "reference_policy",
]
