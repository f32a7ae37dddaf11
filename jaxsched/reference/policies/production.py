"""Reference twins of ``vllm``, ``sarathi`` and ``sglang``, written from the docstrings of
:mod:`jaxsched.policies.production` (token budgets: decodes first, partial prefills oldest
first, new prefills with what is left; vLLM v0's prefill-only iterations of whole prompts;
SGLang's decaying new-token ratio and retraction).

Float comparisons are done in float32 (``numpy.float32``), rounding once where the docstring
says so, to decide ties exactly as the JAX policies do.
"""

from __future__ import annotations

import numpy as np

from jaxsched.reference.policies.base import RefPolicy, RefView, admit_prefix, evict_in_order

__all__ = ["RefVllm", "RefSarathi", "RefSglang", "ref_budget_plan"]

_MAX_INT = 1 << 30
f32 = np.float32


def _count(x) -> int:
    """A parameter as a count, clamped to 2^30 ('unlimited')."""
    return int(min(float(x), float(_MAX_INT)))


def ref_budget_plan(view: RefView, budget: int):
    """Steps 1-2 of the token-budget plan. Returns (plan, need, left): per resident
    ``(runs, chunk)``, its memory in this iteration under the plan (block tokens), and the
    budget left for new prefills."""
    plan, need = [], []
    decodes = 0
    for r in view.residents:
        if r.cached == r.prompt + r.generated:
            decodes += 1
    running_decodes = min(decodes, budget)
    rem = budget - running_decodes
    seen_decodes = 0
    prefill_before = 0
    for r in view.residents:
        pending = r.prompt + r.generated - r.cached
        if pending == 0:
            seen_decodes += 1
            runs = seen_decodes <= budget
            plan.append((runs, 0))
            need.append(view.mem(r.cached + (1 if runs else 0)))
        else:
            chunk = max(0, min(rem - prefill_before, pending))
            prefill_before += pending
            runs = chunk > 0
            plan.append((runs, chunk))
            need.append(view.mem(r.cached + chunk + (1 if chunk == pending else 0)))
    left = max(rem - prefill_before, 0)
    return plan, need, left


class _Budgeted(RefPolicy):
    budget_key = ""

    def __init__(self, params: dict, eviction: str = "newest"):
        self.params = params
        self.budget = _count(params[self.budget_key])
        self.max_num_seqs = _count(params["max_num_seqs"])
        self.eviction = eviction

    def plan(self, view: RefView):
        return ref_budget_plan(view, self.budget)[0]

    def admit(self, view: RefView) -> list[bool]:
        _, need_old, left = ref_budget_plan(view, self.budget)
        seats = self.max_num_seqs - len(view.residents)
        before = 0
        used = self._used_start(view, need_old)

        def admits(w) -> bool:
            nonlocal used, seats, before
            p = w.prompt + w.kept
            if before >= left or seats < 1:
                return False
            used_after = used + view.mem(self._mem(p, max(0, min(p, left - before))))
            if not self._mem_ok(view, used_after):
                return False
            used, seats, before = used_after, seats - 1, before + p
            return True

        return admit_prefix(view.queue, admits)


class RefVllm(_Budgeted):
    budget_key = "max_num_batched_tokens"

    def __init__(self, params: dict, eviction: str = "newest", scheduler: str = "v1"):
        super().__init__(params, eviction)
        self.scheduler = scheduler

    def admit(self, view: RefView) -> list[bool]:
        if self.scheduler == "v1":
            return super().admit(view)
        # v0: whole prompts while their sum stays within the budget (a longer one alone)
        seats = self.max_num_seqs - len(view.residents)
        used = self._used_start(view, None)
        before = 0

        def admits(w) -> bool:
            nonlocal used, seats, before
            p = w.prompt + w.kept
            if not ((before + p <= self.budget or before == 0) and seats >= 1
                    and self._mem_ok(view, used + view.mem(p + 1))):
                return False
            used, seats, before = used + view.mem(p + 1), seats - 1, before + p
            return True

        return admit_prefix(view.queue, admits)

    def plan(self, view: RefView):
        if self.scheduler == "v1":
            return super().plan(view)
        # v0: an iteration that admitted runs only the new prefills; otherwise all decode
        prefill_only = any(r.is_new for r in view.residents)
        return [(r.is_new or not prefill_only, None) for r in view.residents]

    def _used_start(self, view, need_old):
        return sum(view.mem(r.prompt + r.generated + 1) for r in view.residents)

    def _mem(self, p, first):
        return p + 1

    def _mem_ok(self, view, used):
        cap = f32(view.capacity)
        return bool(cap - f32(used) >= f32(self.params["watermark"]) * cap)


class RefSarathi(_Budgeted):
    budget_key = "chunk_size"

    def _used_start(self, view, need_old):
        return sum(need_old)

    def _mem(self, p, first):
        return first + (1 if first == p else 0)

    def _mem_ok(self, view, used):
        return bool(f32(used) <= f32(view.capacity))


class RefSglang(RefPolicy):
    def __init__(self, params: dict, eviction: str = "fewest_generated"):
        self.init = f32(params["new_token_ratio_init"])
        self.low = f32(params["new_token_ratio_min"])
        self.steps = f32(params["new_token_ratio_decay_steps"])
        self.cap = _count(params["max_new_tokens"])
        self.retract_steps = _count(params["retract_steps"])
        self.eviction = eviction
        self.ratio = self.init
        self.reset = True

    def current_ratio(self) -> np.float32:
        if self.reset:
            return self.init
        decay = max(f32((self.init - self.low) / self.steps), f32(0.0))
        return max(f32(self.ratio - decay), self.low)

    def admit(self, view: RefView) -> list[bool]:
        self.ratio = self.current_ratio()
        self.reset = False
        grow = sum(max(self.cap - r.generated, 0) for r in view.residents)
        used = sum(view.mem(r.prompt + r.generated + 1) for r in view.residents)
        cap = f32(view.capacity)

        def admits(w) -> bool:
            nonlocal grow, used
            g2 = grow + max(self.cap - w.kept, 0)
            u2 = used + view.mem(w.prompt + w.kept + 1)
            if not bool(f32(self.ratio * f32(g2)) <= f32(cap - f32(u2))):
                return False
            grow, used = g2, u2
            return True

        return admit_prefix(view.queue, admits)

    def evict(self, view: RefView, need: list[int]) -> list[bool]:
        n = len(view.residents)
        if view.excess <= 0:
            return [False] * n
        self.reset = True
        if self.eviction != "fewest_generated":
            return evict_in_order(self.eviction, view, need)
        ranked = sorted(
            range(n),
            key=lambda i: (view.residents[i].generated, -view.residents[i].prompt, -i),
        )
        out = [False] * n
        remaining_need = sum(need)
        remaining = n
        for i in ranked:
            if remaining <= 1:
                break
            if remaining_need + self.retract_steps * remaining <= view.capacity:
                break
            out[i] = True
            remaining_need -= need[i]
            remaining -= 1
        return out
