"""Reference twins of ``wait`` and ``nested_wait``, written from the docstring of
:mod:`jaxsched.policies.wait`: cohorts at thresholds, at most ``n`` residents per stage,
segments that pause when a segment's entry is short.

Both admit a cohort only if it fits in the free resident slots, so they need ``max_batch``:
pass it as the extra option ``max_batch`` (``reference_for(name, params, {"max_batch": B})``)
unless the reference view carries it."""

from __future__ import annotations

import numpy as np

from jaxsched.reference.policies.base import RefPolicy, RefView

__all__ = ["RefWait", "RefNestedWait"]

_MAX_INT = 1 << 30


def _count(x) -> int:
    return int(min(float(x), float(_MAX_INT)))


def _per_class(x, k: int | None = None) -> list[int]:
    values = [_count(v) for v in (x if isinstance(x, (list, tuple)) else [x])]
    if k is not None and len(values) == 1:
        values = values * k
    return values


def _max_batch(policy: RefPolicy, view: RefView) -> int:
    """The resident slots ``shape.max_batch``, which the JAX policy reads from its view's
    shapes: ``view.max_batch`` when the reference simulator provides it, else the twin's
    ``max_batch`` option, else unlimited (exact only while the slots never bind)."""
    b = getattr(view, "max_batch", None)
    if b is None:
        b = getattr(policy, "max_batch", None)
    return _MAX_INT if b is None else int(b)


def _size(view: RefView) -> int:
    return sum(view.mem(r.prompt + r.generated + 1) for r in view.residents)


def _stage_cap(view: RefView, group: list[int], cap: list[int]) -> list[bool]:
    """Resident i runs only if fewer than cap[i] older residents share its group and stage."""
    out = []
    for i, r in enumerate(view.residents):
        older = sum(
            1 for k in range(i)
            if group[k] == group[i] and view.residents[k].generated == r.generated
        )
        out.append(older < cap[i])
    return out


class RefWait(RefPolicy):
    def __init__(self, params: dict, eviction: str = "newest", mode: str = "advance",
                 max_batch: int | None = None):
        self.max_batch = max_batch
        self.n = _per_class(params["threshold"])
        self.batch_limit = _count(params["batch_limit"])
        self.eviction = eviction
        self.mode = mode

    def admit(self, view: RefView) -> list[bool]:
        n = self.n
        used = _size(view)
        seats = min(self.batch_limit, _max_batch(self, view)) - len(view.residents)
        out = [False] * len(view.queue)
        first = {}
        for p, w in enumerate(view.queue):
            first.setdefault(w.cls, p)
        classes = sorted(range(len(n)), key=lambda j: (first.get(j, len(view.queue)), j))
        for j in classes:
            nj = n[j]
            members = [p for p, w in enumerate(view.queue) if w.cls == j][:nj]
            if len(members) < nj:
                continue
            mem = sum(view.mem(view.queue[p].prompt + view.queue[p].kept + 1) for p in members)
            if np.float32(used + mem) <= np.float32(view.capacity) and nj <= seats:
                for p in members:
                    out[p] = True
                used += mem
                seats -= nj
        return out

    def plan(self, view: RefView):
        res = view.residents
        run = _stage_cap(view, [r.cls for r in res], [self.n[r.cls] for r in res])
        if self.mode == "gated":
            entered = {r.cls for r in res if r.is_new}
            run = [ok and r.cls in entered for ok, r in zip(run, res)]
        return [(ok, None) for ok in run]


class RefNestedWait(RefPolicy):
    def __init__(self, params: dict, eviction: str = "newest", max_batch: int | None = None):
        self.max_batch = max_batch
        self.n = _per_class(params["threshold"])
        self.bounds = _per_class(params["boundary"], len(self.n))
        self.buffer = np.float32(params["safety_buffer"])
        self.eviction = eviction

    def admit(self, view: RefView) -> list[bool]:
        n1 = self.n[0]
        members = list(range(min(n1, len(view.queue))))
        size = sum(view.mem(view.queue[p].prompt + view.queue[p].kept + 1) for p in members)
        used = np.float32(_size(view) + size)
        ok = (
            len(view.queue) >= n1
            and len(view.residents) + n1 <= _max_batch(self, view)
            and np.float32(used + self.buffer) <= np.float32(view.capacity)
        )
        return [ok and p in members for p in range(len(view.queue))]

    def segment(self, stage: int) -> int:
        """0-based segment of a stage: how many of b_1..b_{K-1} it has reached."""
        return sum(1 for b in self.bounds[:-1] if stage >= b)

    def start(self, k: int) -> int:
        return 0 if k == 0 else self.bounds[k - 1]

    def plan(self, view: RefView):
        res = view.residents
        k_total = len(self.n)
        seg = [self.segment(r.generated) for r in res]
        runs_seg = []
        stopped = False
        # n_1 wait but the cohort was refused (memory or slots): every segment runs.
        blocked = view.num_waiting >= self.n[0] and not any(r.is_new for r in res)
        for k in range(k_total):
            nonempty = k == k_total - 1 or self.bounds[k] > self.start(k)
            if k == 0:
                ready = any(r.is_new for r in res)
            else:
                entrants = sum(1 for r, s in zip(res, seg)
                               if s == k and r.generated == self.start(k))
                ready = entrants >= self.n[k]
            if nonempty and not ready and not blocked:
                stopped = True
            runs_seg.append(not stopped)
        cap = _stage_cap(view, [0] * len(res), [self.n[s] for s in seg])
        return [(ok and runs_seg[s], None) for ok, s in zip(cap, seg)]
