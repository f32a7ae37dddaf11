"""Reference twins of the flow-control family (``jaxsched.policies.flow_control``).

Written from the policies' docstrings in plain Python, one request at a time. Budget credit
and the ``(1 - alpha) C`` limit use float32 arithmetic (numpy scalars), as the JAX policies
do, so that a floor or a comparison at a boundary goes the same way in both.

``flow_control`` with a random ``budget_distribution`` cannot draw the same random numbers
without JAX; its twin takes the draws instead: ``draws[t]`` is the budget ``B_t`` of
iteration ``t`` (compute them with ``jaxsched.policies.flow_control.draw_budget`` from the
admission keys of the rollout).
"""

from __future__ import annotations

import math

import numpy as np

from jaxsched.reference.policies.base import RefPolicy, RefView, admit_prefix

__all__ = [
    "RefFlowControlKnown",
    "RefFlowControl",
    "RefAlphaProtection",
    "RefMCSF",
    "RefMCBenchmark",
    "RefReserveFull",
]

f32 = np.float32


def _credit_step(credit: np.float32, budget: np.float32) -> tuple[int, np.float32]:
    """``A = c + b``; activate up to ``floor(A)``; carry only ``A - floor(A)``."""
    avail = f32(credit + budget)
    whole = f32(math.floor(avail))
    return int(whole), f32(avail - whole)


class RefFlowControlKnown(RefPolicy):
    """Per class k: activate the min(floor(c_k + b_k), waiting) oldest class-k requests of the
    window; every class's credit advances every iteration."""

    def __init__(self, params: dict, eviction: str = "newest"):
        budget = params.get("budget", 1.0)
        self.budget = [f32(b) for b in (budget if isinstance(budget, (list, tuple)) else [budget])]
        self.credit = [f32(0.0)] * len(self.budget)
        self.eviction = eviction

    def _budget_index(self, cls: int) -> int:
        return cls if len(self.budget) > 1 else 0

    def admit(self, view: RefView) -> list[bool]:
        allowance = []
        for k in range(len(self.budget)):
            n, self.credit[k] = _credit_step(self.credit[k], self.budget[k])
            allowance.append(n)
        out = []
        for w in view.queue:
            k = self._budget_index(w.cls)
            if allowance[k] > 0:
                allowance[k] -= 1
                out.append(True)
            else:
                out.append(False)
        return out


class RefFlowControl(RefPolicy):
    """Activate the first min(B_t, waiting) of the window, no memory check; evict LIFO."""

    def __init__(self, params: dict, budget_distribution: str = "fixed",
                 eviction: str = "newest", draws: list[int] | None = None):
        self.budget = f32(params.get("budget", 1.0))
        self.distribution = budget_distribution
        self.eviction = eviction
        self.credit = f32(0.0)
        if budget_distribution != "fixed" and draws is None:
            raise ValueError(
                f"the twin of flow_control with budget_distribution={budget_distribution!r} "
                "needs draws=[B_0, B_1, ...] (see jaxsched.policies.flow_control.draw_budget)"
            )
        self.draws = None if draws is None else [int(d) for d in draws]

    def admit(self, view: RefView) -> list[bool]:
        if self.distribution == "fixed":
            n, self.credit = _credit_step(self.credit, self.budget)
        else:
            n = self.draws[view.iteration]
        return [i < n for i in range(len(view.queue))]


class RefAlphaProtection(RefPolicy):
    """FCFS while residents' and new requests' memory of this iteration stays within
    (1 - alpha) C; on overflow evict every resident."""

    def __init__(self, params: dict):
        self.alpha = f32(params.get("alpha", 0.2))

    def admit(self, view: RefView) -> list[bool]:
        limit = f32(f32(1.0) - self.alpha) * f32(view.capacity)
        total = sum(view.mem(r.prompt + r.generated + 1) for r in view.residents)

        def admits(w) -> bool:
            nonlocal total
            need = view.mem(w.prompt + w.kept + 1)
            if f32(total + need) > limit:
                return False
            total += need
            return True

        return admit_prefix(view.queue, admits)

    def evict(self, view: RefView, need: list[int]) -> list[bool]:
        return [view.excess > 0] * len(view.residents)


def _predicted(output: int, progress: int, scale: np.float32) -> tuple[int, int]:
    """(o_hat, predicted remaining iterations) = (max(ceil(o scale), 1), max(o_hat - s, 1))."""
    o_hat = max(math.ceil(f32(f32(output) * scale)), 1)
    return o_hat, max(o_hat - progress, 1)


class _RefFutureMemory(RefPolicy):
    """Add candidates (shortest predicted output first, ties in queue order, or in queue
    order) while the projected memory fits at every future iteration (checked at every
    offset ``t = 0 .. max remaining - 1``, not only at completions) and a slot is free; stop
    at the first that fails. Never evicts of its own accord; the order ``eviction`` applies
    if memory overflows anyway (inexact predictions)."""

    shortest_first = False

    def __init__(self, params: dict, eviction: str = "newest", max_batch: int | None = None):
        self.scale = f32(params.get("length_scale", 1.0))
        self.eviction = eviction
        self.max_batch = max_batch

    def admit(self, view: RefView) -> list[bool]:
        # Each running request: (base, remaining); it needs base + t at offset t < remaining.
        running = [
            (r.prompt + r.generated + 1, _predicted(r.output, r.generated, self.scale)[1])
            for r in view.residents
        ]
        cands = list(range(len(view.queue)))
        if self.shortest_first:
            cands.sort(key=lambda i: (_predicted(view.queue[i].output, 0, self.scale)[0], i))
        max_batch = self._max_batch(view)
        seats = math.inf if max_batch is None else max_batch - len(view.residents)
        out = [False] * len(view.queue)
        for i in cands:
            w = view.queue[i]
            trial = running + [(w.prompt + w.kept + 1, _predicted(w.output, w.kept, self.scale)[1])]
            horizon = max(rem for _, rem in trial)
            fits = all(
                f32(sum(view.mem(base + t) for base, rem in trial if rem > t))
                <= f32(view.capacity)
                for t in range(horizon)
            )
            if not fits or seats <= 0:
                break
            running = trial
            seats -= 1
            out[i] = True
        return out

    def _max_batch(self, view: RefView) -> int | None:
        """The slot count: the ``max_batch`` option, else ``view.max_batch`` if the view has
        one, else None (no cap here; the simulator then drops extra admissions in queue
        order, which differs from the JAX policy only when the slots bind)."""
        if self.max_batch is not None:
            return int(self.max_batch)
        return getattr(view, "max_batch", None)


class RefMCSF(_RefFutureMemory):
    shortest_first = True


class RefMCBenchmark(_RefFutureMemory):
    shortest_first = False


class RefReserveFull(RefPolicy):
    """FCFS while the reservations l + max(min(o, max_new_tokens), s + 1) of residents and new
    requests fit in C."""

    def __init__(self, params: dict, eviction: str = "newest"):
        self.max_new = int(min(params.get("max_new_tokens", 1e9), 1 << 30))
        self.eviction = eviction

    def _reserve(self, prompt: int, progress: int, output: int) -> int:
        return prompt + max(min(output, self.max_new), progress + 1)

    def admit(self, view: RefView) -> list[bool]:
        total = sum(view.mem(self._reserve(r.prompt, r.generated, r.output))
                    for r in view.residents)

        def admits(w) -> bool:
            nonlocal total
            need = view.mem(self._reserve(w.prompt, w.kept, w.output))
            if f32(total + need) > f32(view.capacity):
                return False
            total += need
            return True

        return admit_prefix(view.queue, admits)
