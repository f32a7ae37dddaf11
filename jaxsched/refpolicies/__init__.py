"""Plain-Python twins of the registered policies (for the reference simulator's tests)."""

from jaxsched.refpolicies import greedy as _greedy  # noqa: F401
from jaxsched.refpolicies.base import (
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
