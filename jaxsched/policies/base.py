"""The policy interface: a bundle of pure functions, like an optax transform.

A scheduling policy is a :class:`Policy`: four pure functions built by a factory (see
``registry.py``) and called by the simulator, which knows no particular policy:

* ``init(params, shape) -> pstate``: the policy's own state (credits, ratios, phases).
* ``admit(key, params, pstate, view) -> (admit, pstate)``: which requests of the
  look-ahead window to admit in this iteration (step 2 of the model in ``jaxsched.core.model``):
  a (W,) bool mask, or a :class:`Decision` (the mask plus each position's margin) for a policy
  whose parameters the relaxed simulator differentiates (``jaxsched.core.model.RELAX_MODES``).
* ``plan(key, params, pstate, view) -> Plan``: which residents run and their prefill chunk caps
  (step 3). Most policies use :func:`run_all`.
* ``evict(key, params, pstate, view, need) -> (evict (B,) bool, pstate)``: which residents to
  evict given each one's memory need in this iteration (step 4). ``view.excess`` says by how
  much memory would exceed capacity; only an overflow (``excess > 0``) evicts, so without one
  the simulator does not ask (or ignores the answer and keeps the state it had).

Parameters are a pytree of arrays (traced: vmappable and differentiable, never a recompile);
options that change the computation's structure (an eviction order, a mode) are arguments of
the factory and part of the policy's identity.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp
from flax import struct

from jaxsched.core.model import BIG_CHUNK, SimShape, block_tokens
from jaxsched.core.prefix import count_through, prefix_sum
from jaxsched.policies.serving import ServerHints, ServerTarget

__all__ = [
    "QueueView",
    "SlotView",
    "SchedView",
    "Plan",
    "Decision",
    "decision_parts",
    "budget_margin",
    "fcfs_margin",
    "Param",
    "Policy",
    "run_all",
    "plan_running",
    "no_state",
    "full_need",
    "view_memory",
    "fcfs_prefix",
    "evict_newest_first",
    "seat_admissions",
    "plan_execution",
    "evict_to_fit",
    "evict_by_priority",
    "EVICTION_ORDERS",
    "evict_in_order",
    "ordered_eviction",
    "QUIET_FOREVER",
    "quiet_while_growing",
    "quiet_while_empty",
]


@struct.dataclass
class QueueView:
    """The look-ahead window over the waiting queue, in queue order."""

    valid: jax.Array  # (W,) bool, a waiting request sits at this position
    prompt: jax.Array  # (W,) int32
    output: jax.Array  # (W,) int32 (policies for unknown lengths must not read it)
    kept: jax.Array  # (W,) int32, generated tokens kept from before an eviction
    cls: jax.Array  # (W,) int32
    arrival: jax.Array  # (W,) float32


@struct.dataclass
class SlotView:
    """Residents in admission order (oldest first); free slots (``valid`` False) may lie between
    them, and their other fields are unspecified (a policy masks by ``valid``)."""

    valid: jax.Array  # (B,) bool
    prompt: jax.Array  # (B,) int32
    output: jax.Array  # (B,) int32 (policies for unknown lengths must not read it)
    generated: jax.Array  # (B,) int32
    cached: jax.Array  # (B,) int32
    cls: jax.Array  # (B,) int32
    arrival: jax.Array  # (B,) float32
    is_new: jax.Array  # (B,) bool, admitted in this iteration


@struct.dataclass
class SchedView:
    """What a policy may look at.

    Memory is in blocks of ``block_size`` tokens (``jaxsched.core.model``): ``capacity`` is already
    the usable ``C_b = block_size floor(C / block_size)``, and a policy rounds each request's
    memory with :func:`view_memory` (``block_size ceil(t / block_size)``) before comparing sums
    with it, as the simulator counts ``M_k``."""

    time: jax.Array  # () float32, T_k
    iteration: jax.Array  # () int32, k
    capacity: jax.Array  # () float32, C_b: usable tokens of KV memory (whole blocks)
    num_waiting: jax.Array  # () int32, the whole queue (the window may show fewer)
    queue: QueueView
    slots: SlotView
    excess: jax.Array  # () float32, M_k - C_b (only meaningful in ``evict``)
    block_size: Any = 1  # () int32 >= 1, tokens per KV block


@struct.dataclass
class Plan:
    run: jax.Array  # (B,) bool, residents that run in this iteration
    chunk: jax.Array  # (B,) int32, cap on prefill tokens processed in this iteration


@struct.dataclass
class Decision:
    """An admission decision with its margin, for the relaxed simulator.

    ``admit`` is the decision itself (the hard simulator uses nothing else). ``margin`` is a
    signed, differentiable distance of each window position from the policy's decision
    boundary, in units of requests (positive: inside the budget, threshold or free memory);
    the relaxed simulator weights an admitted request by ``sigmoid(margin / temperature)``.
    Margins must be >= 1/2 wherever ``admit`` holds at integer parameter values, so every
    mass tends to 1 as the temperature goes to 0.
    """

    admit: jax.Array  # (W,) bool
    margin: jax.Array  # (W,) float32


def decision_parts(out) -> tuple[jax.Array, jax.Array | None]:
    """``(admit (W,) bool, margin (W,) float32 or None)`` from what ``admit`` returned."""
    if isinstance(out, Decision):
        return out.admit, out.margin
    return out, None


def budget_margin(allowance, rank) -> jax.Array:
    """Margin of the ``rank``-th (1-based) request under a continuous ``allowance`` of
    admissions: ``allowance - rank + 1/2`` (admitted iff ``rank <= floor(allowance)``, where the
    margin is >= 1/2 up to the allowance's fractional part)."""
    return jnp.asarray(allowance, jnp.float32) - rank.astype(jnp.float32) + 0.5


def fcfs_margin(margin: jax.Array, valid: jax.Array) -> jax.Array:
    """The margin of :func:`fcfs_prefix`: a position is admitted only if every valid position
    up to it is, so its margin is the running minimum over valid positions."""
    inf = jnp.asarray(jnp.inf, jnp.float32)
    return jax.lax.cummin(jnp.where(valid, margin.astype(jnp.float32), inf))


@dataclasses.dataclass(frozen=True)
class Param:
    """Description of one tunable parameter: default, feasible range, kind."""

    default: Any
    low: float | None = None  # inclusive
    high: float | None = None  # inclusive
    integer: bool = False
    log: bool = False  # search on a log scale
    doc: str = ""
    per_class: bool = False  # one value per request class, shape (K,)


@dataclasses.dataclass(frozen=True, eq=False)
class Policy:
    """A policy's functions and parameter descriptions. Hashed by identity (the registry
    caches one object per name and options), so it can key compiled simulators."""

    name: str
    params: Mapping[str, Param]  # name -> description; the traced pytree is a dict of arrays
    init: Callable[[Any, SimShape], Any]
    admit: Callable[..., tuple[jax.Array, Any]]
    plan: Callable[..., Plan]
    evict: Callable[..., tuple[jax.Array, Any]]
    known_lengths: bool = False  # reads output lengths (needs them at admission)
    # Optional: parameter defaults derived from the system and workload (e.g. WAIT thresholds
    # from the fluid model). Called with a dict with keys capacity, d0, d1 (floats) and
    # prompt_len, output_len, rate, weight (lists, one entry per class; rate may be None for
    # saturated or trace workloads); returns {param name: value} for params the user left unset.
    fit_defaults: Callable[[dict], dict] | None = None
    # Optional: refuse parameter values a static shape can never satisfy (e.g. a WAIT threshold
    # longer than the look-ahead window). Called as check_shape(values, shape, where) with the
    # parameter dict; raises PolicyError naming the key.
    check_shape: Callable[[Mapping[str, Any], SimShape, str], None] | None = None
    # Optional: what the policy needs from a server that runs it through a plugin (today:
    # "vllm", jaxsched.integrations.vllm). Called as serve_check(server, values, engine) with
    # the parameter values as plain numbers and the server's settings (engine: a dict with
    # max_num_seqs, max_num_batched_tokens, block_size, num_blocks, watermark,
    # chunked_prefill); returns one line saying why the server cannot honour them, or None.
    # A policy without it needs nothing beyond the plugin's generic application: admissions,
    # evictions and which residents run, with prefills chunked only by the server's budget.
    serve_check: Callable[[str, Mapping[str, Any], Mapping[str, Any]], str | None] | None = None
    # Optional: the policy's translation to an LLM server's flags (jaxsched.export.server_flags).
    # Called as server_flags(target, values) with a jaxsched.policies.serving.ServerTarget and
    # the parameter values as plain numbers (lists for per-class ones); returns ServerHints
    # (flags, environment, notes, the parameters handled). Without it a file maps to the flags
    # every policy shares, and each parameter gets a note that the server cannot express it.
    server_flags: Callable[[ServerTarget, Mapping[str, Any]], ServerHints] | None = None
    # Optional: how long the policy stays idle, for leaping over quiet iterations
    # (jaxsched.core.leap). Called as quiet_bound(key, params, pstate, view) with an iteration's
    # admission key and a view whose window holds only the oldest waiting request (if any:
    # jaxsched.core.leap.head_view); returns a () int32 n >= 0 such that in each of the n
    # iterations from this one, provided nothing happens in them but growth (no arrival,
    # completion or overflow; every resident prefilled and decoding one token), admit admits no
    # request (and changes pstate only as quiet_state says), plan runs every resident and evict
    # evicts none. None: n = 0, never leap (every iteration is stepped).
    quiet_bound: Callable[..., jax.Array] | None = None
    # Optional, beside quiet_bound: the policy state after one quiet iteration,
    # quiet_state(params, pstate) -> pstate (None: unchanged; e.g. a credit that accrues).
    quiet_state: Callable[[Any, Any], Any] | None = None


QUIET_FOREVER = 1 << 30
"""A ``quiet_bound`` meaning 'idle until something else happens'."""


def quiet_while_growing(admit, plan):
    """A ``quiet_bound`` for an FCFS policy that, once idle, stays idle while residents grow.

    FCFS: it admits nothing iff it refuses the oldest waiting request (all the view shows).
    Idle stays idle when its admission tests only get stricter as residents grow (free memory
    ``C - sum_i need_i`` shrinks; seats and token budgets depend on the residents' number and
    phase, which growth does not change) and its plan, with nothing admitted, runs the same
    residents. Returns 0 if it admits now or its plan leaves a resident out, else
    :data:`QUIET_FOREVER`.
    """

    def quiet_bound(key, params, pstate, view):
        admits, _ = decision_parts(admit(key, params, pstate, view)[0])
        runs = plan(key, params, pstate, view).run
        idle = ~jnp.any(admits) & jnp.all(runs | ~view.slots.valid)
        return jnp.where(idle, QUIET_FOREVER, 0).astype(jnp.int32)

    return quiet_bound


def quiet_while_empty(key, params, pstate, view):
    """A ``quiet_bound`` for a policy that may admit whenever a request waits (no memory test,
    a budget that accrues) and runs every resident: idle while the window is empty."""
    del key, params, pstate
    return jnp.where(jnp.any(view.queue.valid), 0, QUIET_FOREVER).astype(jnp.int32)


def no_state(params, shape: SimShape):
    """``init`` for policies without state."""
    del params, shape
    return ()


def plan_running(run: jax.Array) -> Plan:
    """The plan that runs the residents marked in ``run`` (B,) bool; prefills complete in one
    iteration."""
    return Plan(run=run, chunk=jnp.full(run.shape, BIG_CHUNK, jnp.int32))


def run_all(key, params, pstate, view: SchedView) -> Plan:
    """Every resident runs; prefills complete in one iteration."""
    del key, params, pstate
    return plan_running(view.slots.valid)


def view_memory(view: SchedView, tokens: jax.Array) -> jax.Array:
    """The memory, in block tokens, of requests needing ``tokens`` each (0 stays 0):
    ``jaxsched.core.model.block_tokens`` at the view's block size."""
    return block_tokens(tokens, view.block_size)


def full_need(slots: SlotView, block_size=1) -> jax.Array:
    """(B,) memory each resident needs in this iteration if it runs with its whole prefill:
    ``l + s + 1`` (prompt, tokens so far, the new token) rounded up to whole blocks of
    ``block_size`` tokens; 0 for free slots."""
    return block_tokens(jnp.where(slots.valid, slots.prompt + slots.generated + 1, 0),
                        block_size)


def fcfs_prefix(ok: jax.Array, valid: jax.Array) -> jax.Array:
    """Strict first-come-first-served: admit window position i iff it is valid and every
    valid position up to and including i is ``ok`` (the first refusal blocks the rest,
    as vLLM's waiting queue does)."""
    position = jnp.arange(ok.shape[-1])
    first_refused = jnp.min(jnp.where(valid & ~ok, position, ok.shape[-1]))
    blocked = position >= first_refused  # one reduction, no prefix sum
    return valid & ok & ~blocked


_LIFO_BLOCK = 32
"""Slots per block of :func:`evict_newest_first`'s two-level search."""


def evict_newest_first(need: jax.Array, valid: jax.Array, excess: jax.Array) -> jax.Array:
    """LIFO eviction over the admission-ordered slots: evict the newest residents until the
    freed memory covers ``excess``. No sort: slots are already ordered.

    Slot i is evicted iff it is resident and the memory of the slots after it,
    ``newer_i = sum_{j > i} m_j``, is still short of ``excess``. ``newer`` does not increase
    with i, so the evicted are the residents at slots ``i >= cut``,
    ``cut = #{i: newer_i >= excess}``, found in two levels without a prefix sum over the
    slots: blocks of ``K`` slots whose later blocks hold at least ``excess`` lie wholly
    before the cut; the cut's block is searched alone (``K`` wide). Equal to the one-level
    rule ``valid & (sum(m) - cumsum(m) < excess)`` (exact integers).
    """
    b = need.shape[0]
    k = min(_LIFO_BLOCK, b)
    nb = -(-b // k)
    need = jnp.pad(jnp.where(valid, need, 0), (0, nb * k - b))
    block = jnp.sum(need.reshape(nb, k), axis=1)  # (nb,) memory per block
    after = jnp.sum(block) - prefix_sum(block)  # (nb,) memory of the later blocks
    before_cut = jnp.sum(after >= excess, dtype=jnp.int32)  # blocks wholly before the cut
    cut_block = jnp.minimum(before_cut, nb - 1)
    start = cut_block * k
    inner = jax.lax.dynamic_slice(need, (start,), (k,))
    later = after[cut_block] + jnp.sum(inner) - prefix_sum(inner)
    cut = jnp.where(before_cut >= nb, b, start + jnp.sum(later >= excess, dtype=jnp.int32))
    return valid & (jnp.arange(b) >= cut)


# --------------------------------------------------------------------------------------------
# The model's own rules around a policy (jaxsched.core.model, steps 2-4), shared by the simulator
# (jaxsched.core.sim.step) and the engine's scheduler (jaxsched.engine.batching.decide).


def seat_admissions(admit: jax.Array, waiting: jax.Array, resident: jax.Array,
                    first_free=None) -> tuple[jax.Array, jax.Array]:
    """Step 2: the policy's admissions among the waiting window positions, kept in queue order
    while they fit the free slots ``B - residents``. Returns ``(admit (W,), slot (W,))``: the
    slot each admitted position fills, ``first_free + rank`` (default ``first_free``: the
    number of residents, for compacted residents), ``B`` for the others."""
    b = resident.shape[0]
    num_resident = jnp.sum(resident, dtype=jnp.int32)
    admit = admit & waiting
    rank = count_through(admit)  # also the rank among the kept ones: they are a prefix
    admit = admit & (rank <= b - num_resident)
    first = num_resident if first_free is None else first_free
    return admit, jnp.where(admit, first + rank - 1, b)


def plan_execution(run: jax.Array, chunk: jax.Array, valid: jax.Array, prompt: jax.Array,
                   generated: jax.Array, cached: jax.Array, block_size=1):
    """Step 3 on the plan: who runs (residents only), the prefill chunk clipped to the
    ``pending = l + g - cached`` tokens left, whether a token is generated (the prefill is
    complete after the chunk), and each resident's memory
    ``need = [cached + chunk + token]_b`` in block tokens (step 4).
    Returns ``(run, chunk, token, need, pending)``, all (B,)."""
    run = run & valid
    target = prompt + generated
    pending = target - cached
    chunk = jnp.where(run, jnp.clip(chunk, 0, pending), 0)
    token = run & (cached + chunk == target)
    need = block_tokens(jnp.where(valid, cached + chunk + token, 0), block_size)
    return run, chunk, token, need, pending


def evict_to_fit(evict: jax.Array, need: jax.Array, valid: jax.Array, excess: jax.Array
                 ) -> jax.Array:
    """Step 4: without an overflow (``excess = M - C_b <= 0``, block tokens) nothing; else the
    policy's evictions among the residents, then the newest remaining ones until the memory
    fits."""
    evict = evict & valid & (excess > 0)
    still = excess - jnp.sum(jnp.where(evict, need, 0)).astype(jnp.float32)
    return evict | evict_newest_first(need, valid & ~evict, still)


def evict_by_priority(need: jax.Array, valid: jax.Array, excess: jax.Array,
                      keys: tuple[jax.Array, ...]) -> jax.Array:
    """Evict in ascending lexicographic order of ``keys`` (primary first; final tie: newest
    first) until ``excess`` is covered."""
    b = need.shape[0]
    big = jnp.iinfo(jnp.int32).max
    # jnp.lexsort takes the primary key last; free slots sort after every resident.
    sort_keys = (-jnp.arange(b),) + tuple(jnp.where(valid, k, big) for k in keys[::-1])
    order = jnp.lexsort(sort_keys + (~valid,))
    need_sorted = jnp.where(valid, need, 0)[order]
    before = jnp.cumsum(need_sorted) - need_sorted
    evict_sorted = before < excess
    return valid & jnp.zeros((b,), bool).at[order].set(evict_sorted)


EVICTION_ORDERS = ("newest", "least_progressed", "fewest_generated")
"""``newest``: most recently admitted first (vLLM, LIFO in the papers).
``least_progressed``: fewest generated tokens first, ties newest first (the congestion paper).
``fewest_generated``: fewest generated tokens first, ties longest prompt first (SGLang)."""


def evict_in_order(order: str, slots: SlotView, need: jax.Array, excess: jax.Array) -> jax.Array:
    """Evict residents in the named order until ``excess`` tokens are freed."""
    if order == "newest":
        return evict_newest_first(need, slots.valid, excess)
    if order == "least_progressed":
        return evict_by_priority(need, slots.valid, excess, (slots.generated,))
    if order == "fewest_generated":
        return evict_by_priority(need, slots.valid, excess, (slots.generated, -slots.prompt))
    raise ValueError(f"unknown eviction order {order!r}; expected one of {EVICTION_ORDERS}")


def check_eviction(order: str) -> None:
    """Refuse an unknown eviction order (a policy factory's ``eviction`` option)."""
    if order not in EVICTION_ORDERS:
        raise ValueError(f"eviction must be one of {EVICTION_ORDERS}, got {order!r}")


def ordered_eviction(order: str):
    """An ``evict`` function for a Policy: on overflow, evict in the named order until the
    excess is covered (see :func:`evict_in_order`)."""
    check_eviction(order)

    def evict(key, params, pstate, view, need):
        del key, params
        return evict_in_order(order, view.slots, need, view.excess), pstate

    return evict
