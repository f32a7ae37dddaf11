"""One rollout in four phases, shared by every way of running the simulator.

A rollout of one workload is

* ``init``: the carry ``(SimState, policy state, Accumulators)`` before iteration 0;
* ``advance``: ``lax.scan`` of :func:`jaxsched.core.sim.step` over ``length`` iterations (the
  per-iteration trace when ``shape.record_trace``); optionally rematerialized in segments
  (``remat``), so that reverse-mode memory does not grow with the length (see below);
* ``collect``: the accumulators and final counters (:class:`Final`) handed back at the end;
* ``finalize``: :func:`jaxsched.core.metrics.finalize` of them, a
  :class:`~jaxsched.core.sim.RolloutResult`.

:func:`simulate` (one ``jit(vmap(...))`` call, traceable and differentiable: the tuners'
batch evaluators) is ``finalize(collect(advance(init(), H)))``; :func:`jaxsched.running.chunked.
run_chunked` (what ``jaxsched simulate`` runs) calls ``init`` once, ``advance`` once per
chunk with the carry kept on the device, ``collect`` and, on the host-gathered batch,
``finalize``; its streamed runs (:mod:`jaxsched.running.stream`) use the windowed variants
``init_stream``, ``advance_stream`` (the chunk on the window, then the window slides) and
``collect_stream``, which wrap the same ``init``, scan and ``collect`` around the window. :func:`~jaxsched.core.sim.step` draws iteration ``k``'s keys from
``fold_in(key, k)``, so every composition gives the same trajectory.

Memory of gradients. Reverse mode over a scan of ``H`` iterations stores every iteration's
residuals: ``O(H x B)`` per rollout. With ``remat = S`` the scan becomes ``H / S`` segments
of ``S`` iterations, each under :func:`jax.checkpoint`: the backward pass keeps only the
``H / S`` segment-boundary carries and recomputes one segment's residuals at a time, so the
memory is ``O((H / S + S) x B)`` instead (with ``S ~ sqrt(H)``, ``O(sqrt(H) x B)``), for
about one more forward pass of compute (Griewank and Walther's checkpointing; the same
values, since the recomputation is the same program). The forward pass is unchanged.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
from flax import struct

from jaxsched.core import leap as LP
from jaxsched.core import metrics as M
from jaxsched.running import stream as ST
from jaxsched.core.model import SimShape, Workload
from jaxsched.policies.base import Policy
from jaxsched.core.sim import RolloutResult, SimParams, initial_state, step

__all__ = [
    "Final",
    "init",
    "advance",
    "collect",
    "finalize",
    "init_stream",
    "advance_stream",
    "collect_stream",
    "make_rollout",
    "compiled_simulator",
    "simulate",
]


@struct.dataclass
class Final:
    """What a rollout hands back at its end (leading (.., W) axes when batched)."""

    acc: M.Accumulators
    time: jax.Array  # () float32, T_H
    arrived: jax.Array  # () int32, arrivals so far (absolute: a stream's base included)
    completed: jax.Array  # () int32
    waiting: jax.Array  # () int32
    resident: jax.Array  # () int32
    lost: Any = None  # streamed: iterations run on a window too small to be exact


def init(policy: Policy, shape: SimShape, workload: Workload, params: SimParams):
    """The carry before iteration 0: ``(SimState, policy state, Accumulators)``."""
    return (initial_state(shape, workload), policy.init(params.policy, shape),
            M.init_accumulators(shape.relax != "hard"))


def advance(policy: Policy, shape: SimShape, key: jax.Array, workload: Workload,
            params: SimParams, carry, length: int, remat: int | None = None):
    """``length`` iterations from ``carry``: ``(carry, trace (length, ...) or None)``.

    ``remat``: iterations per rematerialized segment (see the module docstring; a shorter
    last segment when it does not divide ``length``), or None (or 0) for the plain scan.
    The same values either way. With ``shape.leap`` the quiet iterations are leapt over
    (:func:`jaxsched.core.leap.advance`: the same carry; the trace, if recorded, one
    :class:`~jaxsched.core.leap.LeapRecord` per event); ``remat`` must then be None.
    """
    if shape.leap:
        if remat:
            raise ValueError("remat is for gradients of a scan; SimShape.leap runs a while_loop")
        return LP.advance(policy, shape, key, workload, params, carry, length)

    def body(c, _):
        return step(policy, shape, key, workload, params, c)

    return _scan(body, carry, length, remat)


def _scan(body, carry, length: int, remat: int | None):
    """``lax.scan(body, carry, None, length)``, in ``jax.checkpoint`` segments of ``remat``."""
    if not remat or remat >= length:
        return jax.lax.scan(body, carry, None, length=length)

    def segment(n):
        return jax.checkpoint(lambda c, _: jax.lax.scan(body, c, None, length=n))

    carry, trace = jax.lax.scan(segment(remat), carry, None, length=length // remat)
    if trace is not None:  # (segments, remat, ...) -> (segments x remat, ...)
        trace = jax.tree.map(lambda x: x.reshape((-1,) + x.shape[2:]), trace)
    if length % remat:
        carry, tail = segment(length % remat)(carry, None)
        if trace is not None:
            trace = jax.tree.map(lambda x, y: jnp.concatenate([x, y]), trace, tail)
    return carry, trace


def collect(carry, arrived_offset=0, lost=None) -> Final:
    """The accumulators and final counters of a carry (``arrived_offset``: arrivals not
    counted by the state, a stream's requests before its window)."""
    state, _, acc = carry
    return Final(acc=acc, time=state.time, arrived=state.arrived + arrived_offset,
                 completed=state.num_completed, waiting=state.num_waiting,
                 resident=jnp.sum(state.slots.valid, dtype=jnp.int32), lost=lost)


def finalize(params: SimParams, final: Final, record_trace: bool) -> RolloutResult:
    """The metrics (:func:`jaxsched.core.metrics.finalize`) and final counters; no trace (the
    caller attaches it), the latency histogram when ``record_trace``."""
    lo = M.histogram_floor(params.system.d0, jnp.minimum(
        params.system.d1_prefill, params.system.d1_context))
    return RolloutResult(
        metrics=M.finalize(final.acc, final.waiting, params.system.capacity, lo),
        trace=None,
        latency_hist=final.acc.latency_hist if record_trace else None,
        final_time=final.time,
        final_arrived=final.arrived,
        final_completed=final.completed,
        final_waiting=final.waiting,
        final_resident=final.resident,
    )


def init_stream(policy: Policy, shape: SimShape, spec: ST.StreamSpec, skey,
                sp: ST.StreamParams, params: SimParams):
    """A streamed rollout's initial carry: ``((SimState, policy state, Accumulators),
    Window)``; ``num_waiting`` starts at the requests beyond the window that have already
    arrived (:func:`jaxsched.running.stream.outside`)."""
    win = ST.init_window(skey, spec, sp)
    state, pstate, acc = init(policy, shape, win.workload, params)
    state = state.replace(num_waiting=ST.outside(spec, sp, win.base))
    return (state, pstate, acc), win


def advance_stream(policy: Policy, shape: SimShape, spec: ST.StreamSpec, key: jax.Array, skey,
                   sp: ST.StreamParams, params: SimParams, carry, length: int,
                   remat: int | None = None):
    """``length`` iterations on the window, counting the inexact ones
    (:func:`~jaxsched.running.stream.window_short`), then the window slides
    (:func:`~jaxsched.running.stream.slide`): ``((sim carry, Window), trace or None)``, the trace's
    arrival counts absolute."""
    sim_carry, win = carry

    def body(c, _):
        c, lost = c
        lost = lost + ST.window_short(spec, sp, shape, win, c[0]).astype(jnp.int32)
        c, out = step(policy, shape, key, win.workload, params, c)
        if out is not None:
            out = out.replace(arrived=out.arrived + win.base + ST.outside(spec, sp, win.base))
        return (c, lost), out

    (sim_carry, lost), trace = _scan(body, (sim_carry, win.lost), length, remat)
    state, pstate, acc = sim_carry
    win, state = ST.slide(skey, spec, sp, win.replace(lost=lost), state)
    return ((state, pstate, acc), win), trace


def collect_stream(spec: ST.StreamSpec, sp: ST.StreamParams, carry) -> Final:
    """:func:`collect` of a streamed carry: arrivals counted from the stream's start, and the
    iterations run on a window too small to be exact (``lost``)."""
    sim_carry, win = carry
    return collect(sim_carry, win.base + ST.outside(spec, sp, win.base), win.lost)


def make_rollout(policy: Policy, shape: SimShape, remat: int | None = None):
    """``rollout(key, workload, params) -> RolloutResult`` for one workload (pure, unjitted):
    ``finalize(collect(advance(init(), H)))``."""

    def rollout(key, workload: Workload, params: SimParams) -> RolloutResult:
        carry = init(policy, shape, workload, params)
        carry, trace = advance(policy, shape, key, workload, params, carry, shape.horizon,
                               remat)
        return finalize(params, collect(carry), shape.record_trace).replace(trace=trace)

    return rollout


@functools.lru_cache(maxsize=64)
def compiled_simulator(policy: Policy, shape: SimShape, batched_params: bool = False,
                       remat: int | None = None):
    """The jitted batch simulator for a policy and static shape (cached).

    ``fn(keys (W,), workloads (W, N), params) -> RolloutResult`` with leading axis (W,), or
    (P, W) when ``batched_params`` (params with a leading axis P). ``remat``: see
    :func:`advance` (for gradients; the values are the same).
    """
    per_workload = jax.vmap(make_rollout(policy, shape, remat), in_axes=(0, 0, None))
    if batched_params:
        per_workload = jax.vmap(per_workload, in_axes=(None, None, 0))
    return jax.jit(per_workload)


def simulate(policy: Policy, shape: SimShape, keys, workloads: Workload, params: SimParams,
             batched_params: bool = False) -> RolloutResult:
    """Run the batch in one call (see :func:`compiled_simulator`)."""
    return compiled_simulator(policy, shape, batched_params)(keys, workloads, params)
