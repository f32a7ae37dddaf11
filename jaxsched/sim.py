"""The JAX simulator: one step function, ``lax.scan`` over iterations, ``jit(vmap(...))``.

The step implements the six phases of an iteration exactly as written in
:mod:`jaxsched.model`. Residents are kept compacted in admission order, so the newest are a
suffix (LIFO eviction is a prefix sum, no sort); the waiting queue is the workload itself
(sorted by arrival) minus the requests taken, seen through a window of ``queue_size``
positions from the oldest waiting request, compacted into the first ``queue_size`` waiting
requests. The positions are searched in blocks of ``2 queue_size`` (a ``while_loop``) until
the window is full or the arrived requests are exhausted, so the window is always exact; one
block suffices unless many taken requests (resident, or completed while an older request
waited, e.g. after that one was evicted) lie among the first waiting ones.
Per-step outputs exist only when ``shape.record_trace`` is set; otherwise metrics come from
running accumulators.

A rollout (init, ``lax.scan`` of :func:`step`, collect, finalize) and the batch simulator
``simulate(keys (W,), workloads (W, N), params)`` are in :mod:`jaxsched.rollout`, the one
rollout path of full, chunked and streamed runs.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import struct

from jaxsched import metrics as M
from jaxsched.model import (
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
    temperature of the relaxed modes (``jaxsched.model.RELAX_MODES``; None in ``hard`` mode)."""

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

    One scatter of source indices, then a gather per field: on CPU this is about a quarter
    faster than scattering every field (measured in one run, 256 workloads of the default).
    """
    b = keep.shape[0]
    pos = jnp.where(keep, jnp.cumsum(keep) - 1, b)
    src = jnp.zeros((b,), jnp.int32).at[pos].set(jnp.arange(b, dtype=jnp.int32), mode="drop")
    live = jnp.arange(b) < jnp.sum(keep)
    empty = _empty_slots(b, slots.mass is not None)
    return jax.tree.map(lambda x, e: jnp.where(live, x[src], e), slots, empty)


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


def step_keys(key: jax.Array, iteration: jax.Array) -> jax.Array:
    """The (3,) keys of iteration ``k`` (admit, plan, evict): ``split(fold_in(key, k), 3)``.

    Derived from the rollout key and the iteration number alone, so a horizon run in chunks
    (state carried between calls) sees exactly the keys of one uninterrupted scan, and no
    (H,) key array is ever materialized.
    """
    return jax.random.split(jax.random.fold_in(key, iteration), 3)


def step(policy: Policy, shape: SimShape, key: jax.Array, workload: Workload,
         params: SimParams, carry):
    """One iteration (phases 1-6 of :mod:`jaxsched.model`); ``key`` is the rollout's key."""
    state, pstate, acc = carry
    sysp, pp = params.system, params.policy
    b, w, n = shape.max_batch, shape.queue_size, workload.num_requests
    k_admit, k_plan, k_evict = step_keys(key, state.iteration)
    slots, reqs = state.slots, state.requests
    t0 = state.time

    # 1. Arrivals: every request with a <= T_k.
    arrived = jnp.searchsorted(workload.arrival, t0, side="right").astype(jnp.int32)
    num_waiting = state.num_waiting + (arrived - state.arrived)

    # 2. Admission through the look-ahead window: the first W waiting requests, searched in
    #    blocks of 2W positions from the head until W are found or the arrived requests are
    #    exhausted (see module docstring). The head moves by up to W + 2B positions.
    r = w + 2 * b
    rs = 2 * w  # search block: 1.1-1.2x faster steps than W + 2B on CPU (README, Scaling)
    ridx = state.head + jnp.arange(r, dtype=jnp.int32)
    in_range = ridx < n
    rj = jnp.minimum(ridx, n - 1)

    def search_more(carry):
        start, found, _, _ = carry
        return (found < w) & (start < arrived)

    def search_block(carry):
        start, found, j, waiting = carry
        idx = start + jnp.arange(rs, dtype=jnp.int32)
        jj = jnp.minimum(idx, n - 1)
        waiting_r = (idx < arrived) & ~reqs.taken[jj]
        wpos = jnp.where(waiting_r, found + jnp.cumsum(waiting_r) - 1, w)
        j = j.at[wpos].set(jj, mode="drop")
        waiting = waiting.at[wpos].set(True, mode="drop")
        return start + rs, found + jnp.sum(waiting_r, dtype=jnp.int32), j, waiting

    _, _, j, waiting = jax.lax.while_loop(
        search_more, search_block,
        (state.head, jnp.zeros((), jnp.int32), jnp.zeros((w,), jnp.int32),
         jnp.zeros((w,), bool)),
    )
    queue = QueueView(
        valid=waiting,
        prompt=workload.prompt[j],
        output=workload.output[j],
        kept=reqs.kept[j],
        cls=workload.cls[j],
        arrival=workload.arrival[j],
    )
    no_new = jnp.zeros((b,), bool)
    capacity = usable_capacity(sysp.capacity, sysp.block_size)  # C_b, whole blocks
    view = SchedView(
        time=t0,
        iteration=state.iteration,
        capacity=capacity,
        num_waiting=num_waiting,
        queue=queue,
        slots=_slot_view(slots, no_new),
        excess=jnp.zeros((), jnp.float32),
        block_size=sysp.block_size,
    )
    admit_out, pstate = policy.admit(k_admit, pp, pstate, view)
    admit, margin = decision_parts(admit_out)
    admit, pos = seat_admissions(admit, waiting, slots.valid)
    num_admitted = jnp.sum(admit, dtype=jnp.int32)
    # Admitted requests fill slots [n, n + a) in queue order: one scatter of window indices,
    # then a gather per field.
    src = jnp.zeros((b,), jnp.int32).at[pos].set(jnp.arange(w, dtype=jnp.int32), mode="drop")
    is_new = jnp.zeros((b,), bool).at[pos].set(True, mode="drop")
    relaxed = shape.relax != "hard"
    incoming_mass = None
    if relaxed:
        gate = (jnp.ones((w,), jnp.float32) if margin is None
                else jax.nn.sigmoid(margin / params.temperature))
        if shape.relax == "straight_through":  # forward exactly 1, backward the sigmoid's
            gate = 1.0 + (gate - jax.lax.stop_gradient(gate))
        incoming_mass = gate[src]
    incoming = SlotState(
        req=j[src],
        prompt=queue.prompt[src],
        output=queue.output[src],
        generated=queue.kept[src],
        cached=jnp.zeros((b,), jnp.int32),
        cls=queue.cls[src],
        arrival=queue.arrival[src],
        first_done=reqs.first_done[j][src],
        mass=incoming_mass,
    )
    slots = jax.tree.map(lambda new, old: jnp.where(is_new, new, old), incoming, slots)
    taken = reqs.taken.at[jnp.where(admit, j, n)].set(True, mode="drop")
    num_waiting = num_waiting - num_admitted
    valid = slots.valid

    # 3. Plan: who runs, how much prefill.
    view = view.replace(slots=_slot_view(slots, is_new))
    plan = policy.plan(k_plan, pp, pstate, view)
    run, chunk, token, need, pending = plan_execution(
        plan.run, plan.chunk, valid, slots.prompt, slots.generated, slots.cached,
        sysp.block_size)

    # 4. Memory (block tokens): overflow -> the policy evicts, then newest-first until it fits.
    excess = jnp.sum(need).astype(jnp.float32) - capacity
    overflow = excess > 0
    evict, pstate = policy.evict(k_evict, pp, pstate, view.replace(excess=excess), need)
    evict = evict_to_fit(evict, need, valid, excess)
    survive = valid & ~evict
    num_evicted = jnp.sum(evict, dtype=jnp.int32)

    # 5. Execution.
    chunk = jnp.where(survive, chunk, 0)
    token = token & survive
    decoding = survive & run & (pending == 0)
    prefill_tokens = jnp.sum(chunk, dtype=jnp.int32)
    context_tokens = jnp.sum(jnp.where(decoding, slots.cached, 0), dtype=jnp.int32)
    decode_tokens = jnp.sum(token, dtype=jnp.int32)
    memory = jnp.sum(jnp.where(survive, need, 0), dtype=jnp.int32)
    if relaxed:
        mass = slots.mass

        def weigh(mask, x=1.0):
            return jnp.sum(jnp.where(mask, mass * x, 0.0))

        tau = (sysp.d0 + sysp.d1_prefill * weigh(survive, chunk)
               + sysp.d1_context * weigh(decoding, slots.cached)
               + sysp.d2 * weigh(survive & (chunk > 0)))
        memory_w = weigh(survive, need)
        total = weigh(valid, need)
        temp = params.temperature
        scale = jnp.maximum(total / jnp.maximum(weigh(valid), 1e-6), 1.0)
        # Memory is whole tokens: the hard events (M > C, newer memory < M - C) switch at
        # integers, so the soft ones are centred half a token past them (exact in the limit
        # unless C is a half-integer).
        excess_w = total - capacity
        soft = jax.nn.sigmoid((excess_w - 0.5) / (temp * scale))
        # Evictions: newest first, slot i goes iff the memory newer than it is short of the
        # excess; soft, each resident's gate sigmoid((excess - newer_i - 1/2) / (T need_i)).
        # Exact in the limit when the policy evicted newest first (else the hard evictions).
        mneed = jnp.where(valid, mass * need, 0.0)
        newer = jnp.cumsum(mneed[::-1])[::-1] - mneed
        gate_e = jnp.where(valid, jax.nn.sigmoid(
            (excess_w - newer - 0.5) / (temp * jnp.maximum(need, 1))), 0.0)
        lifo = jnp.all(evict == evict_newest_first(need, valid, excess))
        evictions_w = jnp.where(lifo, jnp.sum(mass * gate_e), weigh(evict))
        recomputed_w = jnp.where(lifo, jnp.sum(mass * gate_e * slots.cached),
                                 weigh(evict, slots.cached))
        if shape.relax == "straight_through":
            soft = overflow.astype(jnp.float32) + (soft - jax.lax.stop_gradient(soft))
            evictions_w = weigh(evict) + (evictions_w - jax.lax.stop_gradient(evictions_w))
            recomputed_w = (weigh(evict, slots.cached)
                            + (recomputed_w - jax.lax.stop_gradient(recomputed_w)))
        overflow_w = soft
    else:
        tau = (sysp.d0 + sysp.d1_prefill * prefill_tokens.astype(jnp.float32)
               + sysp.d1_context * context_tokens.astype(jnp.float32)
               + sysp.d2 * jnp.sum(chunk > 0).astype(jnp.float32))
    t1 = t0 + tau
    generated = slots.generated + token
    cached = slots.cached + chunk + token

    # 6. Completion and first tokens.
    done = survive & (generated >= slots.output)
    first_now = token & ~slots.first_done
    latency = t1 - slots.arrival

    # Evicted requests rejoin the queue at their arrival position.
    restart = sysp.restart_on_evict
    ev_idx = jnp.where(evict, slots.req, n)
    kept_val = jnp.where(restart, 0, slots.generated)
    discarded = jnp.sum(jnp.where(evict & restart, slots.generated, 0), dtype=jnp.int32)
    recomputed = jnp.sum(jnp.where(evict, slots.cached, 0)).astype(jnp.float32)
    taken = taken.at[ev_idx].set(False, mode="drop")
    kept = reqs.kept.at[ev_idx].set(kept_val, mode="drop")
    first_flag = reqs.first_done.at[ev_idx].set(slots.first_done | first_now, mode="drop")
    num_completed_now = jnp.sum(done, dtype=jnp.int32)
    num_waiting = num_waiting + num_evicted

    # Head: skip taken positions at the front of the window; an eviction may move it back.
    stop = ~in_range | ~taken[rj]
    head = jnp.where(jnp.any(stop), state.head + jnp.argmax(stop), state.head + r)
    head = jnp.minimum(head, jnp.min(ev_idx)).astype(jnp.int32)

    keep = survive & ~done
    new_slots = _compact(
        slots.replace(generated=generated, cached=cached, first_done=slots.first_done | first_now),
        keep,
    )
    new_state = SimState(
        time=t1,
        iteration=state.iteration + 1,
        arrived=arrived,
        head=head,
        num_waiting=num_waiting,
        num_completed=state.num_completed + num_completed_now,
        slots=new_slots,
        requests=RequestState(taken=taken, kept=kept, first_done=first_flag),
    )

    # Accumulators (iterations k >= warmup).
    on = state.iteration >= shape.warmup
    lo = M.histogram_floor(sysp.d0, jnp.minimum(sysp.d1_prefill, sysp.d1_context))
    bins = jnp.where(done & on, M.bin_index(latency, lo), M.NUM_BINS)
    tbins = jnp.where(first_now & on, M.bin_index(latency, lo), M.NUM_BINS)
    if relaxed:  # mass-weighted counts (RELAX_MODES)
        inc = dict(
            completed=weigh(done), completed_tokens=weigh(done, slots.output),
            latency_sum=weigh(done, latency), latency_w=mass, ttft_count=weigh(first_now),
            ttft_sum=weigh(first_now, latency), evictions=evictions_w,
            recomputed_tokens=recomputed_w, overflow=overflow_w, memory=memory_w,
        )
    else:
        inc = dict(
            completed=num_completed_now,
            completed_tokens=jnp.sum(jnp.where(done, slots.output, 0)).astype(jnp.float32),
            latency_sum=jnp.sum(jnp.where(done, latency, 0.0)), latency_w=1,
            ttft_count=jnp.sum(first_now, dtype=jnp.int32),
            ttft_sum=jnp.sum(jnp.where(first_now, latency, 0.0)), evictions=num_evicted,
            recomputed_tokens=recomputed, overflow=jnp.where(overflow, 1, 0),
            memory=memory.astype(jnp.float32),
        )
    acc = M.Accumulators(
        completed=acc.completed + jnp.where(on, inc["completed"], 0),
        completed_tokens=acc.completed_tokens + jnp.where(on, inc["completed_tokens"], 0.0),
        latency_sum=acc.latency_sum + jnp.where(on, inc["latency_sum"], 0.0),
        latency_hist=acc.latency_hist.at[bins].add(inc["latency_w"], mode="drop"),
        ttft_count=acc.ttft_count + jnp.where(on, inc["ttft_count"], 0),
        ttft_sum=acc.ttft_sum + jnp.where(on, inc["ttft_sum"], 0.0),
        ttft_hist=acc.ttft_hist.at[tbins].add(inc["latency_w"], mode="drop"),
        evictions=acc.evictions + jnp.where(on, inc["evictions"], 0),
        recomputed_tokens=acc.recomputed_tokens + jnp.where(on, inc["recomputed_tokens"], 0.0),
        overflow_steps=acc.overflow_steps + jnp.where(on, inc["overflow"], 0),
        memory_time=acc.memory_time + jnp.where(on, inc["memory"] * tau, 0.0),
        elapsed=acc.elapsed + jnp.where(on, tau, 0.0),
        peak_memory=jnp.maximum(acc.peak_memory, jnp.where(on, inc["memory"], 0.0)),
    )

    out = None
    if shape.record_trace:
        out = StepOutput(
            time=t0,
            duration=tau,
            memory=memory,
            admitted=num_admitted,
            evicted=num_evicted,
            completed=num_completed_now,
            overflow=overflow,
            arrived=arrived,
            num_waiting=num_waiting,
            num_resident=jnp.sum(keep, dtype=jnp.int32),
            num_completed=new_state.num_completed,
            prefill_tokens=prefill_tokens,
            decode_tokens=decode_tokens,
            context_tokens=context_tokens,
            discarded_tokens=discarded,
        )
    return (new_state, pstate, acc), out


def __getattr__(name: str):
    """The rollout's entry points, defined in :mod:`jaxsched.rollout` (which imports this
    module), are still reachable as ``sim.simulate``, ``sim.compiled_simulator`` and
    ``sim.make_rollout``."""
    if name in ("make_rollout", "compiled_simulator", "simulate"):
        from jaxsched import rollout

        return getattr(rollout, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
