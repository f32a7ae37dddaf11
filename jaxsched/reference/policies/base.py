"""Plain-Python twins of the policies, for the reference simulator.

A reference policy is an object with three methods, called by ``jaxsched.reference.simulator`` in the
order of the model (``jaxsched.core.model``): ``admit`` (phase 2), ``plan`` (phase 3), ``evict``
(phase 4). It may keep plain Python state on ``self``. It is written from the policy's
docstring, never by calling JAX code, so that the JAX policy is tested against it.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Callable

__all__ = [
    "RefWaiting",
    "RefResident",
    "RefView",
    "RefPolicy",
    "admit_prefix",
    "evict_in_order",
    "block_tokens",
    "usable_capacity",
]


def block_tokens(tokens: int, block_size: int) -> int:
    """``block_size * ceil(tokens / block_size)``: the memory of a request needing ``tokens``
    when memory is allocated in blocks (``jaxsched.core.model``, written here in plain Python)."""
    return -(-int(tokens) // int(block_size)) * int(block_size)


def usable_capacity(capacity: float, block_size: int) -> float:
    """``block_size * floor(C / block_size)``, the whole blocks in ``C``; ``C`` itself when
    ``block_size = 1``."""
    if int(block_size) == 1:
        return capacity
    return float(math.floor(capacity / block_size) * block_size)


@dataclasses.dataclass
class RefWaiting:
    index: int  # position in the workload (queue order = index order)
    prompt: int
    output: int
    kept: int  # generated tokens kept from before an eviction
    cls: int
    arrival: float


@dataclasses.dataclass
class RefResident:
    index: int
    prompt: int
    output: int
    generated: int
    cached: int
    cls: int
    arrival: float
    is_new: bool  # admitted in this iteration


@dataclasses.dataclass
class RefView:
    time: float
    iteration: int
    capacity: float  # C_b: usable tokens, whole blocks (C when block_size = 1)
    num_waiting: int  # the whole queue
    queue: list[RefWaiting]  # the first queue_size waiting requests, in queue order
    residents: list[RefResident]  # admission order, oldest first
    excess: float = 0.0  # M_k - C, meaningful in evict
    max_batch: int | None = None  # resident slots of the server (SimShape.max_batch)
    block_size: int = 1  # tokens per KV block; a policy rounds memory with mem()

    def mem(self, tokens: int) -> int:
        """The memory of a request needing ``tokens``, in block tokens."""
        return block_tokens(tokens, self.block_size)


class RefPolicy:
    """Base class: admit nothing, run every resident with its whole prefill, evict in the
    order ``eviction`` names (:func:`evict_in_order`), or nothing when it is None (the
    simulator then evicts newest first until memory fits)."""

    eviction: str | None = None

    def admit(self, view: RefView) -> list[bool]:
        return [False] * len(view.queue)

    def plan(self, view: RefView) -> list[tuple[bool, int | None]]:
        """Per resident: (runs in this iteration, prefill chunk cap or None for all)."""
        return [(True, None) for _ in view.residents]

    def evict(self, view: RefView, need: list[int]) -> list[bool]:
        if self.eviction is None:
            return [False] * len(view.residents)
        return evict_in_order(self.eviction, view, need)


def admit_prefix(queue: list[RefWaiting], admits: Callable[[RefWaiting], bool]) -> list[bool]:
    """First come, first served with head-of-line blocking: ``admits(w)`` is asked for each
    waiting request in queue order (it books what the admission takes when it says yes)
    until the first no; nothing behind that request is admitted."""
    out = [False] * len(queue)
    for i, w in enumerate(queue):
        if not admits(w):
            break
        out[i] = True
    return out


def evict_in_order(order: str, view: RefView, need: list[int]) -> list[bool]:
    """Evict residents in the named order until the freed memory covers ``view.excess``.

    ``newest``: latest admitted first. ``least_progressed``: fewest generated first, ties
    newest first. ``fewest_generated``: fewest generated first, ties longest prompt first,
    then newest first.
    """
    n = len(view.residents)
    positions = list(range(n))
    if order == "newest":
        ranked = sorted(positions, key=lambda i: -i)
    elif order == "least_progressed":
        ranked = sorted(positions, key=lambda i: (view.residents[i].generated, -i))
    elif order == "fewest_generated":
        ranked = sorted(
            positions,
            key=lambda i: (view.residents[i].generated, -view.residents[i].prompt, -i),
        )
    else:
        raise ValueError(f"unknown eviction order {order!r}")
    out = [False] * n
    freed = 0
    for i in ranked:
        if freed >= view.excess:
            break
        out[i] = True
        freed += need[i]
    return out
