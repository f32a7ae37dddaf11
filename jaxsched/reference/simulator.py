"""The reference simulator: plain Python, one workload, written from :mod:`jaxsched.core.model`.

This is the slow and obvious twin of :mod:`jaxsched.core.sim`, the thing the fast JAX code is tested
against. It never imports or calls JAX code (numpy only converts inputs): requests are Python
objects, the residents a Python list in admission order, the waiting queue recomputed from
scratch every iteration. Each phase of an iteration (model docstring, phases 1-6) is one small
function below.

Conventions it reproduces, all from the model text:

* Every view carries ``max_batch`` (the resident slots, ``shape.max_batch``), which a JAX
  policy knows from its arrays' shapes.
* The waiting queue at ``T_k`` is every valid request with ``arrival <= T_k`` that is neither
  resident nor completed, in workload-index order (the workload is sorted by arrival, ties by
  index). The policy's ``admit`` sees the first ``queue_size`` of them (the look-ahead window)
  and ``num_waiting`` counts them all; the residents it sees are not ``is_new``.
* Admissions beyond the free slots (``max_batch`` minus the residents) are dropped in queue
  order. An admitted request starts with ``generated = kept`` and ``cached = 0``, so it
  prefills ``l + kept`` tokens; it joins the residents at the end (admission order).
* ``plan`` and ``evict`` see the same view as ``admit`` (the window and ``num_waiting`` as
  they were before admission, as the JAX simulator passes them) with the residents updated,
  the newly admitted ones marked ``is_new``. ``evict`` is called every iteration with
  ``view.excess = M_k - C`` (<= 0 when nothing overflows), like the JAX simulator.
* After the policy's evictions, the simulator evicts the newest-admitted remaining residents
  while the memory still exceeds ``C``. An evicted request frees its memory, adds the
  ``cached`` tokens it held before the iteration to ``recomputed_tokens``, and rejoins the
  queue at its index position with its generated tokens kept (set to 0 and counted in
  ``discarded_tokens`` when ``restart_on_evict``).
* Memory is in blocks of ``block_size`` tokens: a resident needing ``t`` tokens holds
  ``block_size ceil(t / block_size)`` (``reference.policies.base.block_tokens``, written again here
  from the model text rather than imported from the JAX side), the usable capacity is
  ``C_b = block_size floor(C / block_size)`` (``C`` when ``block_size = 1``) and the policies
  see ``C_b`` as ``view.capacity``; ``M_k``, the needs passed to ``evict`` and the memory
  metrics are block tokens.
* ``tau_k = d0 + d1_prefill P_k + d1_context D_k + d2 R_k`` (``R_k``: survivors with a
  prefill chunk > 0); a
  request completes at ``T_{k+1}`` once it has generated ``o`` tokens; its TTFT is recorded
  once, in the iteration of its first token.
* Metrics count iterations ``k >= warmup``; percentiles are exact nearest-rank (the
  ``ceil(p n)``-th smallest value).

Numbers: the capacity, ``d0``, ``d1_prefill``, ``d1_context``, ``d2`` and the arrival times
are rounded to their float32
values (what the JAX simulator stores); time arithmetic is then done in Python floats. With
dyadic values (``d0 = 1, d1 = 1/8``, arrivals on a grid of ``1/4``) both simulators compute the
same times exactly.
"""

from __future__ import annotations

import dataclasses
import math
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np

from jaxsched.reference.policies.base import (
    RefPolicy,
    RefResident,
    RefView,
    RefWaiting,
    block_tokens,
    usable_capacity,
)
from jaxsched.reference.policies.registry import REFERENCE_POLICIES, reference_policy

if TYPE_CHECKING:  # only for annotations: any object with the same fields will do
    from jaxsched.core.model import SimShape

__all__ = [
    "STEP_FIELDS",
    "RefRequest",
    "RefSystem",
    "StepRecord",
    "RequestOutcome",
    "ReferenceResult",
    "requests_from_workload",
    "ref_system",
    "nearest_rank",
    "simulate_reference",
    "reference_for",
]

STEP_FIELDS = (
    "time",
    "duration",
    "memory",
    "admitted",
    "evicted",
    "completed",
    "overflow",
    "arrived",
    "num_waiting",
    "num_resident",
    "num_completed",
    "prefill_tokens",
    "decode_tokens",
    "context_tokens",
    "discarded_tokens",
)
"""The fields of :class:`StepRecord`, the same as those of ``jaxsched.core.sim.StepOutput``."""

_PERCENTILES = (
    ("latency_p50", "latency", 0.50),
    ("latency_p95", "latency", 0.95),
    ("latency_p99", "latency", 0.99),
    ("ttft_p95", "ttft", 0.95),
)


def _f32(x) -> float:
    """The float32 value of ``x`` as a Python float (what the JAX simulator stores)."""
    return float(np.float32(x))


# ----------------------------------------------------------------------------------- data


@dataclasses.dataclass(frozen=True)
class RefRequest:
    """One valid request of the workload."""

    index: int  # position in the workload; queue order
    arrival: float
    prompt: int  # l >= 1
    output: int  # o >= 1
    cls: int


@dataclasses.dataclass(frozen=True)
class RefSystem:
    """System values as plain numbers (see :func:`ref_system`)."""

    capacity: float  # C
    d0: float
    d1_prefill: float  # time per prefill token
    d1_context: float  # time per context token of a decoding request
    restart_on_evict: bool = False
    d2: float = 0.0  # time per prefilling request
    block_size: int = 1  # tokens per KV block


@dataclasses.dataclass
class StepRecord:
    """What happened in one iteration; the fields of ``jaxsched.core.sim.StepOutput``."""

    time: float  # T_k, start of the iteration
    duration: float  # tau_k
    memory: int  # M_k after eviction
    admitted: int
    evicted: int
    completed: int
    overflow: bool  # M_k > C before eviction
    arrived: int  # cumulative
    num_waiting: int  # after the iteration
    num_resident: int  # after the iteration
    num_completed: int  # cumulative
    prefill_tokens: int  # P_k
    decode_tokens: int  # tokens generated in the iteration
    context_tokens: int  # D_k
    discarded_tokens: int  # generated tokens lost to restarts

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclasses.dataclass
class RequestOutcome:
    """One request's fate after the last iteration."""

    index: int
    status: str  # "completed", "resident", "waiting" or "future" (not yet arrived)
    generated: int  # tokens it holds: output if completed, kept if waiting
    completion_time: float | None  # T_{k+1} of its completing iteration
    first_token_time: float | None
    evictions: int


@dataclasses.dataclass
class ReferenceResult:
    """The reference simulator's answer for one workload."""

    trajectory: list[StepRecord]  # one record per iteration, k = 0 .. horizon - 1
    metrics: dict[str, float]  # the keys of jaxsched.core.metrics.METRIC_KEYS
    requests: list[RequestOutcome]  # one per valid request, in index order
    final_arrived: int
    final_completed: int
    final_waiting: int
    final_resident: int


@dataclasses.dataclass
class _Resident:
    req: RefRequest
    generated: int  # s, kept tokens included
    cached: int
    first_done: bool
    is_new: bool


@dataclasses.dataclass
class _State:
    time: float
    iteration: int
    residents: list[_Resident]  # admission order, oldest first
    completed: list[bool]  # per workload index
    kept: list[int]  # per workload index: generated tokens kept while waiting
    first_done: list[bool]  # per workload index
    completion_time: list[float | None]
    first_token_time: list[float | None]
    evictions: list[int]
    num_completed: int = 0


@dataclasses.dataclass
class _Accumulators:
    """Metric sums over iterations ``k >= warmup``."""

    latencies: list[float] = dataclasses.field(default_factory=list)
    ttfts: list[float] = dataclasses.field(default_factory=list)
    completed_tokens: int = 0
    evictions: int = 0
    recomputed_tokens: int = 0
    overflow_steps: int = 0
    memory_time: float = 0.0
    elapsed: float = 0.0
    peak_memory: int = 0


# -------------------------------------------------------------------------------- inputs


def requests_from_workload(workload: Any = None, *, arrival=None, prompt=None, output=None,
                           cls=None, valid=None) -> tuple[list[RefRequest], int]:
    """``(valid requests, N)`` from a ``jaxsched.core.model.Workload`` (or anything with those five
    attributes, converted with numpy) or from the five sequences given as keywords.

    Invalid (padding) entries never arrive. The valid ones must be sorted by arrival, as the
    model requires of a workload.
    """
    if workload is not None:
        arrival, prompt, output, cls, valid = (
            workload.arrival, workload.prompt, workload.output, workload.cls, workload.valid)
    arrival = np.asarray(arrival, dtype=np.float32).reshape(-1)
    n = arrival.shape[0]
    prompt = np.asarray(prompt).reshape(-1)
    output = np.asarray(output).reshape(-1)
    cls = np.zeros(n, np.int64) if cls is None else np.asarray(cls).reshape(-1)
    valid = np.ones(n, bool) if valid is None else np.asarray(valid, bool).reshape(-1)
    if not prompt.shape[0] == output.shape[0] == cls.shape[0] == valid.shape[0] == n:
        raise ValueError("arrival, prompt, output, cls and valid must have the same length")
    reqs = []
    for i in range(n):
        if not valid[i]:
            continue
        r = RefRequest(index=i, arrival=float(arrival[i]), prompt=int(prompt[i]),
                       output=int(output[i]), cls=int(cls[i]))
        if r.prompt < 1 or r.output < 1:
            raise ValueError(f"request {i}: prompt and output must be >= 1")
        if reqs and r.arrival < reqs[-1].arrival:
            raise ValueError(f"request {i}: the workload must be sorted by arrival")
        reqs.append(r)
    return reqs, n


def ref_system(capacity=None, d0=1.0, d1=0.0, restart_on_evict=False, d2=0.0, *,
               d1_prefill=None, d1_context=None, block_size=1,
               system: Any = None) -> RefSystem:
    """A :class:`RefSystem` from numbers, from a ``jaxsched.core.model.SystemParams`` or a mapping
    (``system=``; ``d2`` may be missing: 0; ``block_size``: 1; ``d1_prefill`` and
    ``d1_context``: ``d1``). Values are rounded to float32, as the JAX simulator stores
    them."""
    if system is not None:
        if isinstance(system, dict):
            get = system.get
        else:
            def get(k):
                return getattr(system, k, None)
        capacity, d0, d1, restart_on_evict = (
            get("capacity"), get("d0"), get("d1"), get("restart_on_evict"))
        d1_prefill, d1_context, d2, block_size = (
            get("d1_prefill"), get("d1_context"), get("d2"), get("block_size"))
        d2 = 0.0 if d2 is None else d2
        block_size = 1 if block_size is None else block_size
        d1 = 0.0 if d1 is None else d1
        restart_on_evict = False if restart_on_evict is None else restart_on_evict
    if capacity is None:
        raise ValueError("capacity is required")
    block_size = int(np.asarray(block_size))
    if block_size < 1:
        raise ValueError(f"block_size must be >= 1, got {block_size}")
    return RefSystem(capacity=_f32(capacity), d0=_f32(d0),
                     d1_prefill=_f32(d1 if d1_prefill is None else d1_prefill),
                     d1_context=_f32(d1 if d1_context is None else d1_context),
                     restart_on_evict=bool(np.asarray(restart_on_evict)), d2=_f32(d2),
                     block_size=block_size)


def _as_system(system) -> RefSystem:
    if isinstance(system, RefSystem):
        return RefSystem(_f32(system.capacity), _f32(system.d0), _f32(system.d1_prefill),
                         _f32(system.d1_context), bool(system.restart_on_evict),
                         _f32(system.d2), int(system.block_size))
    return ref_system(system=system)


# ------------------------------------------------------------------------ the six phases


def _arrivals(state: _State, reqs: list[RefRequest]) -> tuple[int, list[RefRequest]]:
    """Phase 1: the number of arrived requests and the waiting queue in index order."""
    arrived = [r for r in reqs if r.arrival <= state.time]
    resident = {x.req.index for x in state.residents}
    waiting = [r for r in arrived if r.index not in resident and not state.completed[r.index]]
    return len(arrived), waiting


def _resident_views(state: _State) -> list[RefResident]:
    return [
        RefResident(index=x.req.index, prompt=x.req.prompt, output=x.req.output,
                    generated=x.generated, cached=x.cached, cls=x.req.cls,
                    arrival=x.req.arrival, is_new=x.is_new)
        for x in state.residents
    ]


def _admission(state: _State, shape: "SimShape", system: RefSystem, policy: RefPolicy,
               waiting: list[RefRequest]) -> tuple[RefView, int]:
    """Phase 2: the policy picks from the first ``queue_size`` waiting requests; admissions
    beyond the free slots are dropped in queue order. Returns the view and the count."""
    window = waiting[: shape.queue_size]
    view = RefView(
        time=state.time,
        iteration=state.iteration,
        capacity=usable_capacity(system.capacity, system.block_size),
        block_size=system.block_size,
        num_waiting=len(waiting),
        queue=[RefWaiting(index=r.index, prompt=r.prompt, output=r.output,
                          kept=state.kept[r.index], cls=r.cls, arrival=r.arrival)
               for r in window],
        residents=_resident_views(state),
        max_batch=shape.max_batch,  # a JAX policy knows it from its arrays' shapes
    )
    choice = list(policy.admit(view))
    if len(choice) != len(window):
        raise ValueError(f"admit returned {len(choice)} decisions for {len(window)} requests")
    free = shape.max_batch - len(state.residents)
    admitted = [r for r, yes in zip(window, choice) if yes][: max(free, 0)]
    for r in admitted:
        state.residents.append(_Resident(req=r, generated=state.kept[r.index], cached=0,
                                         first_done=state.first_done[r.index], is_new=True))
    return view, len(admitted)


def _plan(state: _State, policy: RefPolicy, view: RefView):
    """Phase 3: per resident, whether it runs, its prefill chunk and whether it generates a
    token; and its memory need ``cached + chunk + token`` rounded up to whole blocks."""
    plan = list(policy.plan(view))
    if len(plan) != len(state.residents):
        raise ValueError(f"plan returned {len(plan)} entries for {len(state.residents)} residents")
    runs, chunks, tokens, needs = [], [], [], []
    for x, (run, cap) in zip(state.residents, plan):
        run = bool(run)
        pending = x.req.prompt + x.generated - x.cached
        cap = pending if cap is None else max(int(cap), 0)
        chunk = min(cap, pending) if run else 0
        token = run and x.cached + chunk == x.req.prompt + x.generated
        runs.append(run)
        chunks.append(chunk)
        tokens.append(token)
        needs.append(block_tokens(x.cached + chunk + int(token), view.block_size))
    return runs, chunks, tokens, needs


def _memory(state: _State, system: RefSystem, policy: RefPolicy, view: RefView,
            needs: list[int]) -> tuple[bool, list[bool]]:
    """Phase 4: overflow flag and evictions (the policy's, then newest-admitted first while
    the memory still exceeds C_b)."""
    excess = sum(needs) - view.capacity
    view.excess = excess
    chosen = list(policy.evict(view, list(needs)))
    if len(chosen) != len(state.residents):
        raise ValueError(f"evict returned {len(chosen)} flags for {len(state.residents)} residents")
    evict = [bool(e) for e in chosen]
    still = excess - sum(m for m, e in zip(needs, evict) if e)
    freed = 0
    for i in reversed(range(len(state.residents))):
        if evict[i]:
            continue
        if freed < still:
            evict[i] = True
            freed += needs[i]
    return excess > 0, evict


def _execution(state: _State, system: RefSystem, runs, chunks, tokens, needs, evict) -> dict:
    """Phase 5: survivors run; prefill, context and decode tokens, prefilling requests,
    memory and duration."""
    prefill = context = decode = memory = prefilling = 0
    for x, run, chunk, token, need, ev in zip(state.residents, runs, chunks, tokens, needs, evict):
        if ev:
            continue
        pending = x.req.prompt + x.generated - x.cached
        prefill += chunk
        prefilling += int(chunk > 0)
        if run and pending == 0:
            context += x.cached
        decode += int(token)
        memory += need
    tau = (system.d0 + system.d1_prefill * prefill + system.d1_context * context
           + system.d2 * prefilling)
    return dict(prefill=prefill, context=context, decode=decode, memory=memory, tau=tau)


def _completion(state: _State, system: RefSystem, chunks, tokens, evict, t1: float,
                counting: bool, acc: _Accumulators) -> dict:
    """Phase 6: generated tokens, completions and first tokens at ``T_{k+1}``; evicted requests
    rejoin the queue. Updates ``state`` and (if ``counting``) the metric sums."""
    survivors: list[_Resident] = []
    completed = evicted = discarded = recomputed = 0
    for x, chunk, token, ev in zip(state.residents, chunks, tokens, evict):
        i = x.req.index
        if ev:
            evicted += 1
            recomputed += x.cached
            state.evictions[i] += 1
            if system.restart_on_evict:
                discarded += x.generated
                state.kept[i] = 0
            else:
                state.kept[i] = x.generated
            state.first_done[i] = x.first_done
            continue
        x.cached += chunk + int(token)
        x.generated += int(token)
        x.is_new = False
        if token and not x.first_done:
            x.first_done = True
            state.first_done[i] = True
            state.first_token_time[i] = t1
            if counting:
                acc.ttfts.append(t1 - x.req.arrival)
        if x.generated >= x.req.output:
            completed += 1
            state.completed[i] = True
            state.completion_time[i] = t1
            if counting:
                acc.latencies.append(t1 - x.req.arrival)
                acc.completed_tokens += x.req.output
            continue
        survivors.append(x)
    state.residents = survivors
    state.num_completed += completed
    if counting:
        acc.evictions += evicted
        acc.recomputed_tokens += recomputed
    return dict(completed=completed, evicted=evicted, discarded=discarded)


# ------------------------------------------------------------------------------- metrics


def nearest_rank(values: Sequence[float], p: float) -> float:
    """Exact nearest-rank ``p``-quantile: the ``ceil(p n)``-th smallest value (at least the
    first); NaN for no values."""
    if not values:
        return math.nan
    rank = max(math.ceil(round(p * len(values), 9)), 1)
    return sorted(values)[rank - 1]


def _finalize(acc: _Accumulators, num_waiting: int, capacity: float) -> dict[str, float]:
    elapsed = max(acc.elapsed, 1e-30)  # as the JAX metrics: no division by zero
    n = len(acc.latencies)
    mean_memory = acc.memory_time / elapsed
    out = {
        "completed_per_time": n / elapsed,
        "tokens_per_time": acc.completed_tokens / elapsed,
        "latency_mean": sum(acc.latencies) / n if n else math.nan,
        "ttft_mean": sum(acc.ttfts) / len(acc.ttfts) if acc.ttfts else math.nan,
        "evictions": float(acc.evictions),
        "recomputed_tokens": float(acc.recomputed_tokens),
        "mean_memory": mean_memory,
        "peak_memory": float(acc.peak_memory),
        "overflow_steps": float(acc.overflow_steps),
        "queue_final": float(num_waiting),
        "utilization": mean_memory / capacity,
    }
    samples = {"latency": acc.latencies, "ttft": acc.ttfts}
    for key, which, p in _PERCENTILES:
        out[key] = float(nearest_rank(samples[which], p))
    return out


# ---------------------------------------------------------------------------- simulation


def simulate_reference(workload: Any, shape: "SimShape", system: Any,
                       policy: RefPolicy) -> ReferenceResult:
    """Simulate one workload for ``shape.horizon`` iterations under a reference policy.

    ``workload``: a ``jaxsched.core.model.Workload`` (one replica, no batch axis), an object with the
    same five attributes, a mapping with keys arrival, prompt, output, cls, valid, or a list of
    :class:`RefRequest`. ``system``: a :class:`RefSystem`, a ``jaxsched.core.model.SystemParams`` or
    a mapping with keys capacity, d0, d1, restart_on_evict (and optionally d2). ``policy``: a
    ``jaxsched.reference.policies.RefPolicy`` (stateful policies: pass a fresh one per call).
    """
    if isinstance(workload, dict):
        reqs, n = requests_from_workload(**workload)
    elif isinstance(workload, (list, tuple)):
        reqs = list(workload)
        n = max((r.index for r in reqs), default=-1) + 1
    else:
        reqs, n = requests_from_workload(workload)
    for r in reqs:
        if not 0 <= r.cls < shape.num_classes:
            raise ValueError(f"request {r.index}: class {r.cls} not in [0, {shape.num_classes})")
    system = _as_system(system)
    state = _State(time=0.0, iteration=0, residents=[], completed=[False] * n, kept=[0] * n,
                   first_done=[False] * n, completion_time=[None] * n,
                   first_token_time=[None] * n, evictions=[0] * n)
    acc = _Accumulators()
    trajectory: list[StepRecord] = []
    arrived = 0
    for k in range(shape.horizon):
        counting = k >= shape.warmup
        t0 = state.time
        arrived, waiting = _arrivals(state, reqs)
        view, admitted = _admission(state, shape, system, policy, waiting)
        view.residents = _resident_views(state)
        runs, chunks, tokens, needs = _plan(state, policy, view)
        overflow, evict = _memory(state, system, policy, view, needs)
        ex = _execution(state, system, runs, chunks, tokens, needs, evict)
        t1 = t0 + ex["tau"]
        done = _completion(state, system, chunks, tokens, evict, t1, counting, acc)
        state.time = t1
        state.iteration = k + 1
        num_waiting = len(waiting) - admitted + done["evicted"]
        if counting:
            acc.overflow_steps += int(overflow)
            acc.memory_time += ex["memory"] * ex["tau"]
            acc.elapsed += ex["tau"]
            acc.peak_memory = max(acc.peak_memory, ex["memory"])
        trajectory.append(StepRecord(
            time=t0,
            duration=ex["tau"],
            memory=ex["memory"],
            admitted=admitted,
            evicted=done["evicted"],
            completed=done["completed"],
            overflow=overflow,
            arrived=arrived,
            num_waiting=num_waiting,
            num_resident=len(state.residents),
            num_completed=state.num_completed,
            prefill_tokens=ex["prefill"],
            decode_tokens=ex["decode"],
            context_tokens=ex["context"],
            discarded_tokens=done["discarded"],
        ))
    # The JAX simulator counts arrivals at the start of each iteration: the final count is
    # the one of the last iteration, and the final queue is that iteration's.
    final_waiting = trajectory[-1].num_waiting if trajectory else 0
    resident = {x.req.index: x for x in state.residents}
    outcomes = []
    for r in reqs:
        i = r.index
        if state.completed[i]:
            status, gen = "completed", r.output
        elif i in resident:
            status, gen = "resident", resident[i].generated
        elif r.arrival <= trajectory[-1].time:
            status, gen = "waiting", state.kept[i]
        else:
            status, gen = "future", 0
        outcomes.append(RequestOutcome(index=i, status=status, generated=gen,
                                       completion_time=state.completion_time[i],
                                       first_token_time=state.first_token_time[i],
                                       evictions=state.evictions[i]))
    return ReferenceResult(
        trajectory=trajectory,
        metrics=_finalize(acc, final_waiting, system.capacity),
        requests=outcomes,
        final_arrived=arrived,
        final_completed=state.num_completed,
        final_waiting=final_waiting,
        final_resident=len(state.residents),
    )


def reference_for(policy_name: str, params: dict | None = None,
                  options: dict | None = None) -> RefPolicy:
    """The reference twin of a registered policy, built by
    ``jaxsched.reference.policies.reference_policy(policy_name, params, **options)``; ``params`` are
    plain numbers (lists for per-class parameters). Raises ``KeyError`` naming the policy if it
    has no twin."""
    if policy_name not in REFERENCE_POLICIES:
        raise KeyError(f"policy {policy_name!r} has no reference twin in jaxsched.reference.policies; "
                       f"twins: {', '.join(sorted(REFERENCE_POLICIES)) or 'none'}")
    return reference_policy(policy_name, dict(params or {}), **dict(options or {}))
