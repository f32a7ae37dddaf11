"""Leaping over quiet iterations: the closed-form advance between events (issue 14, item 4).

Iteration ``k`` is *quiet* when nothing happens in it but growth:

* no request arrives (``T_k < a_next``, the next arrival after the ``arrived`` ones);
* the policy admits none, runs every resident and evicts none (its ``quiet_bound`` hook,
  :class:`jaxsched.policies.base.Policy`; a policy without one is never quiet);
* every resident has finished its prefill and delivered its first token, so each decodes one
  token (``c_i = 0``, ``t_i = 1``), and none completes (``s_i + 1 < o_i``);
* memory fits (``M_k <= C_b``): nothing overflows, so nothing is evicted;
* the queue's head is settled (the step would not move it).

Then ``state_{k+1}`` is ``state_k`` with ``s_i + 1`` and ``cached_i + 1`` for every resident,
``T_{k+1} = T_k + tau_k`` and ``k + 1`` (and the policy state of ``quiet_state``). Over quiet
iterations ``j = 0, 1, ...`` from ``k`` with ``R`` residents holding ``c_i`` cached tokens
(:mod:`jaxsched.core.model`'s phases with ``P = 0``, every resident decoding):

* ``D_j = D_0 + R j`` (``D_0 = sum_i c_i``) and ``tau_j = d0 + d1_context D_j``: an arithmetic
  series;
* ``m_i(j) = [c_i + 1 + j]_b``: with ``j = q b + r``, ``[c_i + 1 + j]_b = [c_i + 1]_b +
  b q + b [r > u_i]``, ``u_i = [c_i + 1]_b - c_i - 1`` the free tokens of the last block; so
  ``M_j = M_0 + b (R q + #{i: u_i < r})`` (``M_j = M_0 + R j`` in the token model ``b = 1``);
* ``sum_j tau_j``, ``sum_j M_j tau_j`` and ``max_j M_j`` are all the accumulators take (no
  completion, first token, eviction or overflow is counted in a quiet iteration).

:func:`leap` advances the slots by ``n`` in one move (``s_i + n``, ``cached_i + n``); ``n`` is
the first ``j`` that is not quiet, bounded in closed form by the policy's bound, the
residents' remaining tokens ``min_i (o_i - s_i - 1)`` and the end of the run, and found
exactly within it by the arrival and memory tests above. The scalar figures (``T``, the
three sums) are folded iteration by iteration, in the order the step adds them: a float32
closed form (``T_0 + n tau_0 + d1 R n (n - 1) / 2``) rounds differently, and a time an ulp
off moves an arrival by an iteration whenever ``T`` lands on one. That fold is ``O(n)``
scalar work (a few operations on ``()`` numbers per iteration), against ``O(B)`` vector
work per stepped iteration; the slots, the policy and the bound are touched once per leap.

A rollout with leaps (:func:`advance`) alternates a leap and one :func:`~jaxsched.core.sim.
step` (the event iteration) until the run's end, in a ``while_loop``: under ``vmap`` the
loop runs until the last workload is done, every workload leaping by its own ``n``, so a
batch costs as many steps as its busiest member has events (plus the scalar folds of the
longest leaps). A fixed ``scan`` of fewer steps would need a cap on the events per run that
no workload can be allowed to reach (its metrics would be wrong), so it is used only to
record a trace: one record per event (:class:`LeapRecord`) in a scan of ``length`` steps,
the padding after the end marked invalid.

Hard mode only (``SimShape.leap``; the relaxed modes weigh admissions by their mass, every
iteration, for gradients).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import struct

from jaxsched.core.model import SimShape, SimState, Workload, block_tokens, usable_capacity
from jaxsched.core.sim import SimParams, StepOutput, step, step_keys
from jaxsched.policies.base import Policy, QueueView, SchedView, SlotView

__all__ = ["LeapRecord", "head_view", "quiet_limit", "leap", "advance"]

_NEVER = 1 << 30


@struct.dataclass
class LeapRecord:
    """One move of a rollout with leaps (``shape.record_trace``): the quiet iterations leapt
    over, then the stepped iteration's record (an event, or the run's last iteration: a leap
    stops short of the end). The moves after the end are padding (``stepped`` False; their
    other fields are meaningless)."""

    event: StepOutput  # the stepped iteration's record, as the one-iteration rollout's
    iteration: jax.Array  # () int32, k of the stepped iteration
    quiet: jax.Array  # () int32, quiet iterations leapt over just before it
    stepped: jax.Array  # () bool, False for the padding after the run's end


def head_view(shape: SimShape, workload: Workload, state: SimState, system) -> SchedView:
    """What the policy is asked about at a settled head: the residents, none new, and a
    window holding only the oldest waiting request (``head``, if it has arrived), which is all
    an FCFS admission decides on (it admits nothing iff it refuses that one); no window
    search. Arrivals since the last iteration are not in it: they end the leap anyway."""
    w, n = shape.queue_size, workload.num_requests
    index = jnp.full((w,), jnp.minimum(state.head, n - 1), jnp.int32)
    slots = state.slots
    return SchedView(
        time=state.time,
        iteration=state.iteration,
        capacity=usable_capacity(system.capacity, system.block_size),
        num_waiting=state.num_waiting,
        queue=QueueView(valid=(jnp.arange(w) == 0) & (state.head < state.arrived),
                        prompt=workload.prompt[index], output=workload.output[index],
                        kept=state.requests.kept[index], cls=workload.cls[index],
                        arrival=workload.arrival[index]),
        slots=SlotView(valid=slots.valid, prompt=slots.prompt, output=slots.output,
                       generated=slots.generated, cached=slots.cached, cls=slots.cls,
                       arrival=slots.arrival, is_new=jnp.zeros(slots.req.shape, bool)),
        excess=jnp.zeros((), jnp.float32),
        block_size=system.block_size,
    )


def quiet_limit(policy: Policy, shape: SimShape, key: jax.Array, workload: Workload,
                params: SimParams, carry, end) -> jax.Array:
    """The closed-form bound on the quiet iterations from the carry's: 0 unless every resident
    decodes and the head is settled, else ``min(policy bound, min_i (o_i - s_i - 1), end - k)``
    (() int32)."""
    state, pstate, _ = carry
    if policy.quiet_bound is None:
        return jnp.zeros((), jnp.int32)
    slots, n = state.slots, workload.num_requests
    valid = slots.valid
    view = head_view(shape, workload, state, params.system)
    admit_key = step_keys(key, state.iteration)[0]
    bound = policy.quiet_bound(admit_key, params.policy, pstate, view)
    decoding = jnp.all(~valid | ((slots.cached == slots.prompt + slots.generated)
                                 & slots.first_done))
    room = jnp.min(jnp.where(valid, slots.output - slots.generated - 1, _NEVER))
    head = state.head
    settled = (head >= n) | ~state.requests.taken[jnp.minimum(head, n - 1)]
    limit = jnp.minimum(jnp.minimum(bound, room), end - state.iteration)
    return jnp.where(decoding & settled, jnp.maximum(limit, 0), 0).astype(jnp.int32)


def leap(policy: Policy, shape: SimShape, key: jax.Array, workload: Workload,
         params: SimParams, carry, end):
    """Advance the carry over its quiet iterations (none, if the next one is an event):
    ``(carry, n)``; stops at iteration ``end`` at the latest."""
    state, pstate, acc = carry
    system, slots = params.system, state.slots
    valid, b = slots.valid, system.block_size
    limit = quiet_limit(policy, shape, key, workload, params, carry, end)
    capacity = usable_capacity(system.capacity, b)
    residents = jnp.sum(valid, dtype=jnp.int32)
    first_need = jnp.where(valid, block_tokens(slots.cached + 1, b), 0)
    memory0 = jnp.sum(first_need, dtype=jnp.int32)
    slack = jax.lax.cond(  # u_i, ascending (all 0 in the token model: no sort)
        b == 1, lambda u: jnp.where(valid, 0, _NEVER), jnp.sort,
        jnp.where(valid, first_need - slots.cached - 1, _NEVER))
    context0 = jnp.sum(jnp.where(valid, slots.cached, 0), dtype=jnp.int32)
    n_req = workload.num_requests
    next_arrival = jnp.where(state.arrived < n_req,
                             workload.arrival[jnp.minimum(state.arrived, n_req - 1)], jnp.inf)
    zero = jnp.zeros((), jnp.float32)
    idle = policy.quiet_state or (lambda params_, pstate_: pstate_)

    def blocks(j):  # M_j = M_0 + b (R floor(j / b) + #{i: u_i < j mod b})
        below = jnp.searchsorted(slack, j % b, side="left", method="scan_unrolled")
        return memory0 + b * (residents * (j // b) + below.astype(jnp.int32))

    def memory(j):  # M_j = M_0 + R j in the token model (no search)
        return jax.lax.cond(b == 1, lambda j: memory0 + residents * j, blocks, j)

    def quiet(j, time):
        over = memory(j).astype(jnp.float32) - capacity > 0
        return (j < limit) & (time < next_arrival) & ~over

    def more(c):
        return c[-1]

    def fold(c):
        j, time, elapsed, memory_time, peak, pstate_, _ = c
        context = (context0 + residents * j).astype(jnp.float32)
        tau = system.d0 + system.d1_prefill * zero + system.d1_context * context + system.d2 * zero
        m = memory(j).astype(jnp.float32)
        on = state.iteration + j >= shape.warmup
        t1 = time + tau
        return (j + 1, t1, elapsed + jnp.where(on, tau, 0), memory_time + jnp.where(on, m * tau, 0),
                jnp.maximum(peak, jnp.where(on, m, 0.0)), idle(params.policy, pstate_),
                quiet(j + 1, t1))

    j0 = jnp.zeros((), jnp.int32)
    n, time, elapsed, memory_time, peak, pstate, _ = jax.lax.while_loop(
        more, fold, (j0, state.time, acc.elapsed, acc.memory_time, acc.peak_memory, pstate,
                     quiet(j0, state.time)))
    grown = slots.replace(generated=jnp.where(valid, slots.generated + n, slots.generated),
                          cached=jnp.where(valid, slots.cached + n, slots.cached))
    state = state.replace(time=time, iteration=state.iteration + n, slots=grown)
    acc = acc.replace(elapsed=elapsed, memory_time=memory_time, peak_memory=peak)
    return (state, pstate, acc), n


def _leap_and_step(policy, shape, key, workload, params, carry, end):
    """A leap that stops short of ``end``, then the event iteration's step: ``(carry, n,
    out)``. (A leap may not reach ``end`` itself, so that every move steps once and no move
    needs masking beyond the loop's own.)"""
    carry, n = leap(policy, shape, key, workload, params, carry, end - 1)
    carry, out = step(policy, shape, key, workload, params, carry)
    return carry, n, out


def advance(policy: Policy, shape: SimShape, key: jax.Array, workload: Workload,
            params: SimParams, carry, length: int):
    """``length`` iterations from ``carry`` with leaps: ``(carry, trace)``, the trace ``None``
    unless ``shape.record_trace``, then ``length`` :class:`LeapRecord` (one per move, the
    padding last). The carry equals the one-iteration rollout's."""
    end = carry[0].iteration + length

    if not shape.record_trace:
        def body(c):
            return _leap_and_step(policy, shape, key, workload, params, c, end)[0]

        return jax.lax.while_loop(lambda c: c[0].iteration < end, body, carry), None

    def record(c, _):
        go = c[0].iteration < end
        moved, n, out = _leap_and_step(policy, shape, key, workload, params, c, end)
        c = jax.tree.map(lambda x, y: jnp.where(go, x, y), moved, c)
        return c, LeapRecord(event=out, iteration=c[0].iteration - 1, quiet=n, stepped=go)

    return jax.lax.scan(record, carry, None, length=length)
