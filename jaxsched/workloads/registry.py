"""The workload kinds by name: the config's ``workload.kind`` -> its class (:mod:`.kind`).

Adding a kind: write its module (a :class:`~jaxsched.workloads.kind.WorkloadKind` dataclass)
and add its line here.
"""

from __future__ import annotations

from jaxsched.errors import JaxschedError
from jaxsched.workloads.bursty import Bursty
from jaxsched.workloads.kind import WorkloadKind
from jaxsched.workloads.poisson import Poisson
from jaxsched.workloads.replay import TraceReplay
from jaxsched.workloads.saturated import Saturated

__all__ = ["KINDS", "kind_class"]

KINDS: dict[str, type[WorkloadKind]] = {kind.name: kind for kind in (
    Poisson,
    Saturated,
    Bursty,
    TraceReplay,
)}


def kind_class(name: str) -> type[WorkloadKind]:
    """The kind called ``name`` (a one-line error naming the known ones otherwise)."""
    try:
        return KINDS[name]
    except KeyError:
        raise JaxschedError(f"workload kind {name!r}: expected one of {tuple(KINDS)}") from None
