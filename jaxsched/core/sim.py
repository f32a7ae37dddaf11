"""The JAX simulator: one step function, ``lax.scan`` over iterations, ``jit(vmap(...))``.

:func:`step` implements the six phases of an iteration exactly as written in
:mod:`jaxsched.core.model`, one function each, in the order :mod:`jaxsched.reference.simulator` runs them:
:func:`_arrivals`, :func:`_window` and :func:`_admission` (phase 2), :func:`_plan`,
:func:`_memory` (eviction), :func:`_execution`, :func:`_completion`, then the carried state
(:func:`_next_state`) and the metrics' sums (:func:`_accounting`, every accumulator updated in
:func:`_accumulate`). How counts are weighed is chosen once per compiled shape: plain counts
(:class:`_HardCounts`) or admission-mass-weighted ones (:class:`_RelaxedCounts`), so the hard
path carries no relaxed work.

Residents are kept in admission order, so the newest are a suffix (LIFO eviction needs no
sort). A free slot is marked by its request index alone (``req = -1``); its other fields are
left as they were and never read (:func:`_vacate`; ``tests/test_free_slots.py``). In hard mode
a freed slot stays free in place until an admission finds no room after the last resident,
and then the batch is compacted at once; the eviction phase and the requeue run only in
iterations where some workload overflows or evicts, the accounting not during the warm-up,
and arrivals are counted without a search unless a block of them arrives at once
(:mod:`jaxsched.core.batch_cond`). The waiting queue is the
workload itself (sorted by arrival) minus the requests taken, seen through a window of ``queue_size``
positions from the oldest waiting request, compacted into the first ``queue_size`` waiting
requests. The positions are searched in blocks of ``2 queue_size`` (a ``while_loop``) until
the window is full or the arrived requests are exhausted, so the window is always exact; one
block suffices unless many taken requests (resident, or completed while an older request
waited, e.g. after that one was evicted) lie among the first waiting ones.
Per-step outputs exist only when ``shape.record_trace`` is set; otherwise metrics come from
running accumulators.

A rollout (init, ``lax.scan`` of :func:`step`, collect, finalize) and the batch simulator
``simulate(keys (W,), workloads (W, N), params)`` are in :mod:`jaxsched.core.rollout`, the one
rollout path of full, chunked and streamed runs.
"""

from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from flax import struct

from jaxsched.core import metrics as M
from jaxsched.core.batch_cond import cond_any
from jaxsched.core.prefix import count_through
from jaxsched.core.model import (
    RequestState,
    SimShape,
    SimState,
    SlotState,
    SystemParams,
    Workload,
    usable_capacity,
)
from jaxsched.policies.base import (
    Policy,
    QueueView,
    SchedView,
    SlotView,
    decision_parts,
    evict_newest_first,
    evict_to_fit,
    plan_execution,
    seat_admissions,
)

__all__ = [
    "SimParams",
    "StepOutput",
    "RolloutResult",
    "initial_state",
    "step_keys",
    "step",
]


@struct.dataclass
class SimParams:
    """Everything traced: the system's parameters, the policy's parameter dict, and the
    temperature of the relaxed modes (``jaxsched.core.model.RELAX_MODES``; None in ``hard`` mode)."""

    system: SystemParams
    policy: dict
    temperature: Any = None  # () float32 > 0, only read when shape.relax != "hard"


@struct.dataclass
class StepOutput:
    """Per-iteration record (only when ``shape.record_trace``)."""

    time: jax.Array  # () float32, T_k, start of the iteration
    duration: jax.Array  # () float32, tau_k
    memory: jax.Array  # () int32, M_k after eviction
    admitted: jax.Array  # () int32
    evicted: jax.Array  # () int32
    completed: jax.Array  # () int32
    overflow: jax.Array  # () bool, M_k > C before eviction
    arrived: jax.Array  # () int32, cumulative
    num_waiting: jax.Array  # () int32, after the iteration
    num_resident: jax.Array  # () int32, after the iteration
    num_completed: jax.Array  # () int32, cumulative
    prefill_tokens: jax.Array  # () int32, P_k
    decode_tokens: jax.Array  # () int32, tokens generated in the iteration
    context_tokens: jax.Array  # () int32, D_k
    discarded_tokens: jax.Array  # () int32, generated tokens lost to restarts


@struct.dataclass
class RolloutResult:
    metrics: dict  # metric name -> () per workload
    trace: Any  # StepOutput with a leading (H,) axis, or None
    latency_hist: Any  # (NUM_BINS,) int32 latency histogram when recording a trace, else None
    final_time: jax.Array  # () float32, T_H
    final_arrived: jax.Array  # () int32
    final_completed: jax.Array  # () int32
    final_waiting: jax.Array  # () int32
    final_resident: jax.Array  # () int32


def initial_state(shape: SimShape, workload: Workload) -> SimState:
    b, n = shape.max_batch, workload.num_requests
    zi = jnp.zeros((), jnp.int32)
    slots = _empty_slots(b, shape.relax != "hard")
    requests = RequestState(
        taken=jnp.zeros((n,), bool),
        kept=jnp.zeros((n,), jnp.int32),
        first_done=jnp.zeros((n,), bool),
    )
    return SimState(
        time=jnp.zeros((), jnp.float32),
        iteration=zi,
        arrived=zi,
        head=zi,
        num_waiting=zi,
        num_completed=zi,
        slots=slots,
        requests=requests,
    )


def _compact(slots: SlotState, keep: jax.Array) -> SlotState:
    """Move the kept slots to the front, preserving their order; free the rest.

    One scatter of source indices (ranks by :func:`~jaxsched.core.prefix.count_through`),
    then a gather per field: on CPU this is about a quarter
    faster than scattering every field (measured in one run, 256 workloads of the default).
    """
    b = keep.shape[0]
    pos = jnp.where(keep, count_through(keep) - 1, b)
    src = jnp.zeros((b,), jnp.int32).at[pos].set(jnp.arange(b, dtype=jnp.int32), mode="drop")
    return _vacate(jax.tree.map(lambda x: x[src], slots), jnp.arange(b) < jnp.sum(keep))


def _empty_slots(b: int, relaxed: bool = False) -> SlotState:
    return SlotState(
        req=jnp.full((b,), -1, jnp.int32),
        prompt=jnp.zeros((b,), jnp.int32),
        output=jnp.zeros((b,), jnp.int32),
        generated=jnp.zeros((b,), jnp.int32),
        cached=jnp.zeros((b,), jnp.int32),
        cls=jnp.zeros((b,), jnp.int32),
        arrival=jnp.zeros((b,), jnp.float32),
        first_done=jnp.zeros((b,), bool),
        mass=jnp.zeros((b,), jnp.float32) if relaxed else None,
    )


def _slot_view(slots: SlotState, is_new) -> SlotView:
    return SlotView(
        valid=slots.valid,
        prompt=slots.prompt,
        output=slots.output,
        generated=slots.generated,
        cached=slots.cached,
        cls=slots.cls,
        arrival=slots.arrival,
        is_new=is_new,
    )


_ARRIVAL_BLOCK = 32
"""Requests past the arrived ones that an iteration tests before it searches (:func:`_arrivals`)."""


def step_keys(key: jax.Array, iteration: jax.Array) -> jax.Array:
    """The (3,) keys of iteration ``k`` (admit, plan, evict): ``split(fold_in(key, k), 3)``.

    Derived from the rollout key and the iteration number alone, so a horizon run in chunks
    (state carried between calls) sees exactly the keys of one uninterrupted scan, and no
    (H,) key array is ever materialized.
    """
    return jax.random.split(jax.random.fold_in(key, iteration), 3)


class _Window(NamedTuple):
    """The policy's look-ahead window (phase 2)."""

    index: jax.Array  # (W,) int32, workload positions of the first W waiting requests
    valid: jax.Array  # (W,) bool, False past the last waiting request


class _Admitted(NamedTuple):
    slots: SlotState  # residents after admission
    admit: jax.Array  # (W,) bool, window positions admitted
    taken: jax.Array  # (N,) bool, requests resident or completed after admission
    is_new: jax.Array  # (B,) bool, admitted in this iteration
    count: jax.Array  # () int32, requests admitted


class _Planned(NamedTuple):
    view: SchedView  # what the policy saw when planning (the admitted marked new)
    run: jax.Array  # (B,) bool
    chunk: jax.Array  # (B,) int32, c_i
    token: jax.Array  # (B,) bool, t_i
    need: jax.Array  # (B,) int32, m_i = [cached_i + c_i + t_i]_b
    pending: jax.Array  # (B,) int32, prefill tokens still to process after the chunk


class _Evicted(NamedTuple):
    excess: jax.Array  # () float32, M_k - C_b before eviction
    overflow: jax.Array  # () bool, M_k > C_b
    evict: jax.Array  # (B,) bool
    survive: jax.Array  # (B,) bool, resident and not evicted
    count: jax.Array  # () int32, requests evicted


class _Executed(NamedTuple):
    tau: jax.Array  # () float32, tau_k (mass-weighted in the relaxed modes)
    chunk: jax.Array  # (B,) int32, prefill tokens processed (0 unless surviving)
    token: jax.Array  # (B,) bool, generated a token
    prefill_tokens: jax.Array  # () int32, P_k
    context_tokens: jax.Array  # () int32, D_k
    decode_tokens: jax.Array  # () int32, tokens generated
    memory: jax.Array  # () int32, M_k after eviction


class _Completed(NamedTuple):
    done: jax.Array  # (B,) bool, completed at T_{k+1}
    first_token: jax.Array  # (B,) bool, delivered its first token in this iteration
    latency: jax.Array  # (B,) float32, T_{k+1} - a_i
    count: jax.Array  # () int32, requests completed
    stays: jax.Array  # (B,) bool, still resident after the iteration


class _HardCounts:
    """Hard mode: a count is the number of slots in a mask, a total the sum of a per-slot
    figure over it (the model's numbers)."""

    hist_weight = 1

    def admitted_mass(self, margin, size):
        return None

    def with_mass(self, mass):
        return self

    def count(self, mask):
        return jnp.sum(mask, dtype=jnp.int32)

    def total(self, mask, x=1):
        return jnp.sum(jnp.where(mask, x, 0)).astype(jnp.float32)

    def eviction_totals(self, slots, need, evicted, capacity):
        """``(overflow, evictions, recomputed tokens)`` of the iteration."""
        return (evicted.overflow.astype(jnp.int32), self.count(evicted.evict),
                self.total(evicted.evict, slots.cached))


@dataclasses.dataclass(frozen=True)
class _RelaxedCounts:
    """The relaxed modes (``jaxsched.core.model.RELAX_MODES``): every resident carries the mass
    ``sigmoid(margin / T)`` of its admission, and counts and totals are mass-weighted; in
    ``straight_through`` the forward values are the hard ones, the gradients the soft ones."""

    temperature: Any  # () float32 > 0
    straight_through: bool
    mass: Any = None  # (B,) float32, the residents' masses (after admission)

    @property
    def hist_weight(self):
        return self.mass

    def admitted_mass(self, margin, size):
        """(size,) the masses the window's ``size`` positions would carry if admitted."""
        gate = (jnp.ones((size,), jnp.float32) if margin is None
                else jax.nn.sigmoid(margin / self.temperature))
        return _straight_through(jnp.ones_like(gate), gate) if self.straight_through else gate

    def with_mass(self, mass):
        return dataclasses.replace(self, mass=mass)

    def count(self, mask):
        return self.total(mask)

    def total(self, mask, x=1.0):
        return jnp.sum(jnp.where(mask, self.mass * x, 0.0))

    def eviction_totals(self, slots, need, evicted, capacity):
        """Soft ``(overflow, evictions, recomputed tokens)``.

        Memory is whole tokens: the hard events (M > C, newer memory < M - C) switch at
        integers, so the soft ones are centred half a token past them (exact in the limit
        unless C is a half-integer). Overflow: ``sigmoid((M - C - 1/2) / (T s))``, ``s`` the
        mean need. Evictions newest first: slot i goes iff the memory newer than it is short
        of the excess; soft, each resident's gate ``sigmoid((M - C - newer_i - 1/2) /
        (T m_i))``. Exact in the limit when the policy evicted newest first (else the hard
        evictions, mass-weighted).
        """
        valid, evict, temp = slots.valid, evicted.evict, self.temperature
        total = self.total(valid, need)
        scale = jnp.maximum(total / jnp.maximum(self.count(valid), 1e-6), 1.0)
        excess = total - capacity
        overflow = jax.nn.sigmoid((excess - 0.5) / (temp * scale))
        mass_need = jnp.where(valid, self.mass * need, 0.0)
        newer = jnp.cumsum(mass_need[::-1])[::-1] - mass_need
        gate = jnp.where(valid, jax.nn.sigmoid(
            (excess - newer - 0.5) / (temp * jnp.maximum(need, 1))), 0.0)
        lifo = jnp.all(evict == evict_newest_first(need, valid, evicted.excess))
        evictions = jnp.where(lifo, jnp.sum(self.mass * gate), self.total(evict))
        recomputed = jnp.where(lifo, jnp.sum(self.mass * gate * slots.cached),
                               self.total(evict, slots.cached))
        if self.straight_through:
            overflow = _straight_through(evicted.overflow.astype(jnp.float32), overflow)
            evictions = _straight_through(self.total(evict), evictions)
            recomputed = _straight_through(self.total(evict, slots.cached), recomputed)
        return overflow, evictions, recomputed


def _straight_through(forward, soft):
    """``forward`` in the forward pass, the gradient of ``soft`` in the backward pass."""
    return forward + (soft - jax.lax.stop_gradient(soft))


def _weighting(shape: SimShape, temperature):
    """How counts are weighed, chosen once per compiled shape."""
    if shape.relax == "hard":
        return _HardCounts()
    return _RelaxedCounts(temperature, shape.relax == "straight_through")


def step(policy: Policy, shape: SimShape, key: jax.Array, workload: Workload,
         params: SimParams, carry):
    """One iteration, phases 1-6 of :mod:`jaxsched.core.model` in order (as
    :mod:`jaxsched.reference.simulator` runs them); ``key`` is the rollout's key."""
    state, pstate, acc = carry
    system, policy_params = params.system, params.policy
    admit_key, plan_key, evict_key = step_keys(key, state.iteration)
    weights = _weighting(shape, params.temperature)
    lazy = shape.relax == "hard"  # rare phases skipped batch-wide (no derivative rule)

    arrived, num_waiting = _arrivals(workload, state, lazy)
    window = _window(shape, workload, state, arrived)
    view = _admission_view(workload, state, system, num_waiting, window)
    admitted, pstate = _admission(policy, admit_key, policy_params, pstate, view, workload,
                                  state, window, weights, lazy)
    weights = weights.with_mass(admitted.slots.mass)
    planned = _plan(policy, plan_key, policy_params, pstate, view, admitted, system.block_size)
    evicted, pstate = _memory(policy, evict_key, policy_params, pstate, planned,
                              admitted.slots.valid, lazy)
    executed = _execution(system, weights, admitted.slots, planned, evicted)
    t1 = state.time + executed.tau
    completed = _completion(admitted.slots, executed, evicted, t1)
    num_waiting = num_waiting - admitted.count + evicted.count
    new_state = _next_state(shape, system, workload, state, arrived, num_waiting, window,
                            admitted, evicted, executed, completed, t1, lazy)
    acc = _accounting(shape, system, weights, acc, state.iteration, admitted.slots, planned,
                      evicted, executed, completed, view.capacity, lazy)
    out = None
    if shape.record_trace:
        out = StepOutput(
            time=state.time,
            duration=executed.tau,
            memory=executed.memory,
            admitted=admitted.count,
            evicted=evicted.count,
            completed=completed.count,
            overflow=evicted.overflow,
            arrived=arrived,
            num_waiting=num_waiting,
            num_resident=jnp.sum(completed.stays, dtype=jnp.int32),
            num_completed=new_state.num_completed,
            prefill_tokens=executed.prefill_tokens,
            decode_tokens=executed.decode_tokens,
            context_tokens=executed.context_tokens,
            discarded_tokens=_discarded_tokens(system, admitted.slots, evicted),
        )
    return (new_state, pstate, acc), out


def _arrivals(workload: Workload, state: SimState, lazy: bool):
    """Phase 1: every request with ``a_i <= T_k`` has arrived (a prefix of the workload,
    sorted by arrival). Returns ``(arrived, num_waiting)``.

    ``lazy``: the next ``_ARRIVAL_BLOCK`` requests are tested; only when all of them have
    arrived does a binary search find the rest (batch-wide,
    :func:`~jaxsched.core.batch_cond.cond_any`), so an iteration does not pay a search loop.
    """
    n = workload.num_requests
    block = min(_ARRIVAL_BLOCK, n)

    def search(arrival, time, arrived):
        return jnp.searchsorted(arrival, time, side="right").astype(jnp.int32)

    if lazy:
        position = state.arrived + jnp.arange(block, dtype=jnp.int32)
        ahead = workload.arrival[jnp.minimum(position, n - 1)]
        new = jnp.sum((position < n) & (ahead <= state.time), dtype=jnp.int32)
        arrived = cond_any(new == block, search, lambda arrival, time, arrived: arrived,
                           workload.arrival, state.time, state.arrived + new)
    else:
        arrived = search(workload.arrival, state.time, state.arrived)
    return arrived, state.num_waiting + (arrived - state.arrived)


def _window(shape: SimShape, workload: Workload, state: SimState, arrived) -> _Window:
    """Phase 2's look-ahead window: the first ``W = queue_size`` waiting requests (arrived,
    neither resident nor completed) in queue order.

    Positions from the head are searched in blocks of ``2W`` (a ``while_loop``) until W are
    found or the arrived requests are exhausted, so the window is always exact.
    """
    w, n = shape.queue_size, workload.num_requests
    taken = state.requests.taken
    block = 2 * w  # search block: 1.1-1.2x faster steps than W + 2B on CPU (README, Scaling)

    def more(carry):
        start, found, _, _ = carry
        return (found < w) & (start < arrived)

    def search(carry):
        start, found, index, valid = carry
        position = start + jnp.arange(block, dtype=jnp.int32)
        clipped = jnp.minimum(position, n - 1)
        waiting = (position < arrived) & ~taken[clipped]
        rank = jnp.where(waiting, found + count_through(waiting) - 1, w)
        index = index.at[rank].set(clipped, mode="drop")
        valid = valid.at[rank].set(True, mode="drop")
        return start + block, found + jnp.sum(waiting, dtype=jnp.int32), index, valid

    first = search((state.head, jnp.zeros((), jnp.int32), jnp.zeros((w,), jnp.int32),
                    jnp.zeros((w,), bool)))
    _, _, index, valid = jax.lax.while_loop(more, search, first)
    return _Window(index, valid)


def _admission_view(workload: Workload, state: SimState, system: SystemParams, num_waiting,
                    window: _Window) -> SchedView:
    """What the policy sees at admission: the window, the residents (none new yet) and the
    usable capacity ``C_b = b floor(C / b)``."""
    index = window.index
    queue = QueueView(
        valid=window.valid,
        prompt=workload.prompt[index],
        output=workload.output[index],
        kept=state.requests.kept[index],
        cls=workload.cls[index],
        arrival=workload.arrival[index],
    )
    return SchedView(
        time=state.time,
        iteration=state.iteration,
        capacity=usable_capacity(system.capacity, system.block_size),
        num_waiting=num_waiting,
        queue=queue,
        slots=_slot_view(state.slots, jnp.zeros(state.slots.req.shape, bool)),
        excess=jnp.zeros((), jnp.float32),
        block_size=system.block_size,
    )


def _admission(policy: Policy, key, policy_params, pstate, view: SchedView,
               workload: Workload, state: SimState, window: _Window, weights, lazy: bool):
    """Phase 2: the policy chooses from the window; admissions beyond the free slots are
    dropped in queue order. The admitted fill slots ``[e, e + a)`` after the last resident
    (:func:`_make_room`) in queue order: one scatter of the window per field, ``W`` entries
    instead of a gather and a select over the ``B`` slots (A/B in one process, 1.49x at
    ``B = 1024, W = 64`` on ``configs/flow-control.toml``, 1.03x at ``B = 256`` on
    ``configs/tight-greedy.toml``). One that kept ``g`` generated tokens must prefill
    ``l + g``."""
    b, w, n = state.slots.req.shape[0], window.index.shape[0], workload.num_requests
    decision, pstate = policy.admit(key, policy_params, pstate, view)
    admit, margin = decision_parts(decision)
    admit, place = seat_admissions(admit, window.valid, state.slots.valid, first_free=0)
    count = jnp.sum(admit, dtype=jnp.int32)
    resident, end = _make_room(state.slots, count, lazy)
    seat = jnp.where(admit, end + place, b)
    slot = jnp.arange(b, dtype=jnp.int32)
    is_new = (slot >= end) & (slot < end + count)  # seats are contiguous
    queue, requests = view.queue, state.requests
    incoming = SlotState(
        req=window.index,
        prompt=queue.prompt,
        output=queue.output,
        generated=queue.kept,
        cached=jnp.zeros((w,), jnp.int32),
        cls=queue.cls,
        arrival=queue.arrival,
        first_done=requests.first_done[window.index],
        mass=weights.admitted_mass(margin, w),
    )
    slots = jax.tree.map(lambda new, old: old.at[seat].set(new, mode="drop"), incoming, resident)
    taken = requests.taken.at[jnp.where(admit, window.index, n)].set(True, mode="drop")
    return _Admitted(slots, admit, taken, is_new, count), pstate


def _make_room(slots: SlotState, count, lazy: bool):
    """``(slots, e)``: the residents, with the ``count`` slots ``[e, e + count)`` after the
    last one free. Freed slots stay where they are (``lazy``) until the admissions would not
    fit after the last resident; then the residents are compacted to the front in order
    (under ``vmap``, every workload of the batch at once: :func:`~jaxsched.core.batch_cond.
    cond_any`; compaction changes no resident's order, so it is harmless where not needed)."""
    b = slots.req.shape[0]
    slot = jnp.arange(b, dtype=jnp.int32)
    end = jnp.max(jnp.where(slots.valid, slot + 1, 0))
    if not lazy:  # compacted at every iteration's end (_next_state)
        return slots, end

    def compact(slots, end):
        valid = slots.valid
        return _compact(slots, valid), jnp.sum(valid, dtype=jnp.int32)

    return cond_any(end + count > b, compact, lambda slots, end: (slots, end), slots, end)


def _plan(policy: Policy, key, policy_params, pstate, view: SchedView, admitted: _Admitted,
          block_size) -> _Planned:
    """Phase 3: the policy says who runs and how many prefill tokens each may process; a
    running resident with ``cached < l + s`` processes ``c = min(chunk, l + s - cached)``
    and generates a token if that completes its prefill, a prefilled one decodes one token.
    Its memory need is ``m_i = [cached_i + c_i + t_i]_b``."""
    slots = admitted.slots
    view = view.replace(slots=_slot_view(slots, admitted.is_new))
    plan = policy.plan(key, policy_params, pstate, view)
    run, chunk, token, need, pending = plan_execution(
        plan.run, plan.chunk, slots.valid, slots.prompt, slots.generated, slots.cached,
        block_size)
    return _Planned(view, run, chunk, token, need, pending)


def _memory(policy: Policy, key, policy_params, pstate, planned: _Planned, valid, lazy: bool):
    """Phase 4: ``M_k = sum_i m_i``; if ``M_k > C_b`` (overflow) the policy evicts, then the
    newest admitted go first until ``M_k <= C_b``. Without an overflow nothing is evicted and
    the policy is not asked (``lazy``: under ``vmap`` the phase runs only in iterations where
    some workload of the batch overflows, :func:`~jaxsched.core.batch_cond.cond_any`)."""
    capacity = planned.view.capacity
    excess = jnp.sum(planned.need).astype(jnp.float32) - capacity
    view = planned.view.replace(excess=excess)

    def evictions(key, policy_params, pstate, view, need, valid):
        overflow = view.excess > 0
        evict, after = policy.evict(key, policy_params, pstate, view, need)
        after = jax.tree.map(lambda new, old: jnp.where(overflow, new, old), after, pstate)
        return evict_to_fit(evict, need, valid, view.excess), after

    def none(key, policy_params, pstate, view, need, valid):
        return jnp.zeros_like(valid), pstate

    operands = (key, policy_params, pstate, view, planned.need, valid)
    evict, pstate = (cond_any(excess > 0, evictions, none, *operands) if lazy
                     else evictions(*operands))
    count = jnp.sum(evict, dtype=jnp.int32)
    return _Evicted(excess, excess > 0, evict, valid & ~evict, count), pstate


def _execution(system: SystemParams, weights, slots: SlotState, planned: _Planned,
               evicted: _Evicted) -> _Executed:
    """Phase 5: the survivors run as planned, for
    ``tau_k = d0 + d1_prefill P_k + d1_context D_k + d2 R_k`` (``P_k`` prefill tokens,
    ``D_k`` the ``cached`` of the decoding ones, ``R_k`` the prefilling ones; mass-weighted
    in the relaxed modes)."""
    survive = evicted.survive
    chunk = jnp.where(survive, planned.chunk, 0)
    token = planned.token & survive
    decoding = survive & planned.run & (planned.pending == 0)
    tau = (system.d0 + system.d1_prefill * weights.total(survive, chunk)
           + system.d1_context * weights.total(decoding, slots.cached)
           + system.d2 * weights.total(survive & (chunk > 0)))
    return _Executed(
        tau=tau,
        chunk=chunk,
        token=token,
        prefill_tokens=jnp.sum(chunk, dtype=jnp.int32),
        context_tokens=jnp.sum(jnp.where(decoding, slots.cached, 0), dtype=jnp.int32),
        decode_tokens=jnp.sum(token, dtype=jnp.int32),
        memory=jnp.sum(jnp.where(survive, planned.need, 0), dtype=jnp.int32),
    )


def _completion(slots: SlotState, executed: _Executed, evicted: _Evicted, t1) -> _Completed:
    """Phase 6: a survivor that has generated ``o_i`` tokens completes at ``T_{k+1}``
    (latency ``T_{k+1} - a_i``); one that generated its first token gives TTFT
    ``T_{k+1} - a_i``."""
    done = evicted.survive & (slots.generated + executed.token >= slots.output)
    first_token = executed.token & ~slots.first_done
    return _Completed(done, first_token, t1 - slots.arrival, jnp.sum(done, dtype=jnp.int32),
                      evicted.survive & ~done)


def _next_state(shape: SimShape, system: SystemParams, workload: Workload, state: SimState,
                arrived, num_waiting, window: _Window, admitted: _Admitted, evicted: _Evicted,
                executed: _Executed, completed: _Completed, t1, lazy: bool) -> SimState:
    """``state_{k+1}``: evicted requests rejoin the queue at their arrival position (keeping
    ``s_i`` generated tokens, or none with ``restart_on_evict``; ``lazy``: only in iterations
    where some workload of the batch evicts, :func:`~jaxsched.core.batch_cond.cond_any`); the
    head moves to the first request the window leaves waiting, else past the window (to
    ``arrived`` if it was not full), read off the window without a search (an eviction may
    move it back); the slots of the completed and evicted are freed (``lazy``: in place,
    :func:`_vacate`, compacted when an admission needs the room, :func:`_make_room`; else the
    kept residents move to the front now)."""
    n = workload.num_requests
    slots = admitted.slots
    evicted_index = jnp.where(evicted.evict, slots.req, n)
    first_done = slots.first_done | completed.first_token
    requeue = (admitted.taken, state.requests, evicted_index, slots.generated, first_done,
               system.restart_on_evict)
    requests = (cond_any(evicted.count > 0, _requeue, _none_requeued, *requeue) if lazy
                else _requeue(*requeue))
    left = window.valid & ~admitted.admit  # still waiting in the window
    head = jnp.where(jnp.any(left), jnp.min(jnp.where(left, window.index, n)),
                     jnp.where(window.valid[-1], window.index[-1] + 1, arrived))
    head = jnp.minimum(head, jnp.min(evicted_index)).astype(jnp.int32)
    ran = slots.replace(generated=slots.generated + executed.token,
                        cached=slots.cached + executed.chunk + executed.token,
                        first_done=first_done)
    return SimState(
        time=t1,
        iteration=state.iteration + 1,
        arrived=arrived,
        head=head,
        num_waiting=num_waiting,
        num_completed=state.num_completed + completed.count,
        slots=_vacate(ran, completed.stays) if lazy else _compact(ran, completed.stays),
        requests=requests,
    )


def _requeue(taken, requests: RequestState, evicted_index, generated, first_done,
             restart_on_evict) -> RequestState:
    """The evicted (workload positions ``evicted_index``, ``N`` for the others) wait again,
    keeping their generated tokens (none with ``restart_on_evict``) and first-token flag."""
    kept = jnp.where(restart_on_evict, 0, generated)
    return RequestState(
        taken=taken.at[evicted_index].set(False, mode="drop"),
        kept=requests.kept.at[evicted_index].set(kept, mode="drop"),
        first_done=requests.first_done.at[evicted_index].set(first_done, mode="drop"),
    )


def _none_requeued(taken, requests: RequestState, *unused) -> RequestState:
    """:func:`_requeue` when nobody was evicted."""
    return requests.replace(taken=taken)


def _vacate(slots: SlotState, keep: jax.Array) -> SlotState:
    """The slots not in ``keep`` marked free (``req = -1``) in place. Their other fields keep
    the departed request's values, which no phase reads (every reader masks by ``valid``):
    one select instead of one per field, 1.38x faster steps (A/B in one process,
    ``configs/tight-greedy.toml``, 1024 workloads x 300 iterations, same final carry)."""
    return slots.replace(req=jnp.where(keep, slots.req, -1))


def _discarded_tokens(system: SystemParams, slots: SlotState, evicted: _Evicted):
    """Generated tokens lost to restarts in this iteration."""
    lost = evicted.evict & system.restart_on_evict
    return jnp.sum(jnp.where(lost, slots.generated, 0), dtype=jnp.int32)


def _accounting(shape: SimShape, system: SystemParams, weights, acc: M.Accumulators,
                iteration, slots: SlotState, planned: _Planned, evicted: _Evicted,
                executed: _Executed, completed: _Completed, capacity, lazy: bool) -> M.Accumulators:
    """The metrics' running sums over iterations ``k >= warmup``: completions, their tokens
    and latencies, first tokens, evictions, recomputed tokens, overflows, ``sum M_k tau_k``,
    ``sum tau_k`` and ``max M_k`` (mass-weighted in the relaxed modes). ``lazy``: not
    computed during the warm-up (:func:`~jaxsched.core.batch_cond.cond_any`; the batch's
    iterations are in step)."""
    def add(acc, iteration, slots, planned, evicted, executed, completed, capacity, system):
        on = iteration >= shape.warmup
        floor = M.histogram_floor(system.d0, jnp.minimum(system.d1_prefill, system.d1_context))
        overflow, evictions, recomputed = weights.eviction_totals(slots, planned.need, evicted,
                                                                  capacity)
        memory = weights.total(evicted.survive, planned.need)
        latency, done, first = completed.latency, completed.done, completed.first_token
        increments = M.Accumulators(
            completed=weights.count(done),
            completed_tokens=weights.total(done, slots.output),
            latency_sum=weights.total(done, latency),
            latency_hist=jnp.where(done & on, M.bin_index(latency, floor), M.NUM_BINS),
            ttft_count=weights.count(first),
            ttft_sum=weights.total(first, latency),
            ttft_hist=jnp.where(first & on, M.bin_index(latency, floor), M.NUM_BINS),
            evictions=evictions,
            recomputed_tokens=recomputed,
            overflow_steps=overflow,
            memory_time=memory * executed.tau,
            elapsed=executed.tau,
            peak_memory=memory,
        )
        return _accumulate(acc, increments, on, weights.hist_weight)

    operands = (acc, iteration, slots, planned, evicted, executed, completed, capacity, system)
    if lazy:
        return cond_any(iteration >= shape.warmup, add, lambda acc, *_: acc, *operands)
    return add(*operands)


def _accumulate(acc: M.Accumulators, increments: M.Accumulators, on, hist_weight):
    """``acc`` plus one iteration's ``increments`` (counted only when ``on``): sums add,
    histograms add ``hist_weight`` at the increments' bins (``NUM_BINS``, dropped, when off),
    the peak is a maximum."""
    def merge(path, total, x):
        name = path[0].name
        if name.endswith("_hist"):
            return total.at[x].add(hist_weight, mode="drop")
        if name == "peak_memory":
            return jnp.maximum(total, jnp.where(on, x, 0.0))
        return total + jnp.where(on, x, 0)

    return jax.tree_util.tree_map_with_path(merge, acc, increments)

