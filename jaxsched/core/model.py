"""The one model of the system: KV-cache memory dynamics of an LLM server.

Everything in jaxsched (the JAX simulator, the plain-Python reference simulator, the tuners
and the engine's scheduler) follows the conventions written here.

Requests
--------
A request i has an arrival time ``a_i``, a prompt of ``l_i`` tokens, an output of ``o_i``
tokens (``l_i >= 1``, ``o_i >= 1``) and a class ``c_i``. While resident it holds ``cached_i``
tokens of KV memory; after its prefill and ``s_i`` generated tokens, ``cached_i = l_i + s_i``.
The server has a capacity of ``C`` tokens.

Memory is allocated in blocks of ``b = block_size`` tokens (``b = 1``, the default, is the
papers' token model), as paged servers (vLLM, the jaxsched engine) allocate it: a resident whose
memory need is ``t`` tokens holds ``ceil(t / b)`` blocks, i.e. ``[t]_b = b ceil(t / b)`` tokens
(:func:`block_tokens`), and the usable capacity is ``C_b = b floor(C / b)`` tokens
(:func:`usable_capacity`; ``C`` itself when ``b = 1``, the same for whole-token memory). Every
memory figure below (``m_i``, ``M_k``, the policies' checks, the metrics) is in block tokens.

Iterations
----------
Time advances in iterations (one batched forward pass). Iteration ``k`` starts at time ``T_k``
(``T_0 = 0``) and lasts

    ``tau_k = d0 + d1_prefill * P_k + d1_context * D_k + d2 * R_k``

where ``P_k`` is the number of prefill tokens computed in it, ``D_k`` the context tokens
(``cached``, whole tokens, not block tokens) of the requests that decode in it and ``R_k`` the
number of requests that process prefill tokens in it (chunk ``c_i > 0``). A prefill token costs
a full forward pass through the MLPs and attention; a context token only its KV read in the
decode attention, two orders of magnitude less on a GPU (Vidur's A100 profile of Llama-2-7B,
``configs/hardware/``), hence two coefficients. ``d1_prefill = d1_context = d1`` is the papers'
single ``d1``: with ``d0 = 1, d1 = 0`` an iteration is one slot (the slotted model of Dong & Cao
2026 and Ao, Dong, Luo & Simchi-Levi); with fitted ``d0, d1`` it is the iteration-time model of
Ao, Luo, Simchi-Levi & Wang (WAIT). ``d2 >= 0`` (default 0) is a per-sequence prefill overhead,
outside the papers' model: the fixed cost an engine pays for each prefilling request, e.g. one
that runs every prefill as its own model call (the jaxsched engine does). The theory
(:mod:`jaxsched.theory`, the WAIT thresholds) uses ``d0`` and one ``d1`` only (see
``jaxsched.config.Config.d1`` for what it takes when the two differ). ``T_{k+1} = T_k + tau_k``.

Within iteration ``k``, in this order:

1. **Arrivals.** Every request with ``a_i <= T_k`` is in the system. The waiting queue is the
   set of arrived requests that are neither resident nor completed, ordered by arrival
   (ties by workload index). An evicted request rejoins the queue at its arrival position;
   for a FIFO or per-class FIFO policy that is the head of its (class) queue.
2. **Admission.** The policy sees the first ``queue_size`` waiting requests in queue order
   (its look-ahead window; ``num_waiting`` counts them all) and the residents, and chooses
   requests to admit. At most ``max_batch`` requests are resident; admissions beyond the free slots
   are dropped in queue order. An admitted request that kept ``g`` generated tokens from
   before an eviction must prefill ``l + g`` tokens.
3. **Plan.** The policy says which residents run in this iteration and how many prefill
   tokens each may process (default: all run, whole prefill). A running resident with
   ``cached < l + s`` processes ``c = min(chunk, l + s - cached)`` prefill tokens; if that
   completes its prefill it also generates one token. A running resident whose prefill is
   complete decodes one token. A resident that does not run keeps its cache.
4. **Memory.** The iteration needs ``M_k = sum_i m_i`` with ``m_i = [cached_i + c_i + t_i]_b``
   (``t_i = 1`` if ``i`` generates a token in this iteration, the slot of the new token, as in
   the flow-control and congestion papers: a request that has generated ``j`` tokens holds
   ``l + j``, rounded up to whole blocks). If ``M_k > C_b`` the iteration *overflows*: the
   policy evicts residents (the simulator then evicts newest-admitted first until
   ``M_k <= C_b``, the hardware limit). An
   evicted request frees its cache and rejoins the queue. ``recomputed_tokens`` adds the
   ``cached`` tokens it held before the iteration (the KV work that will be redone). With
   ``restart_on_evict`` false (vLLM's recompute preemption, the default) it keeps its generated
   tokens and recomputes ``l + g`` at readmission; with it true (the papers' model) it loses
   its progress and starts over.
5. **Execution.** Survivors run as planned; ``P_k`` sums their prefill chunks, ``D_k`` the
   ``cached`` of the decoding ones (before the new token) and ``R_k`` counts those with a
   chunk ``c_i > 0``. ``T_{k+1} = T_k + tau_k``.
6. **Completion.** A request that has generated ``o`` tokens completes at ``T_{k+1}`` and frees
   its memory: latency ``T_{k+1} - a``. Its first token's time gives TTFT ``T_{k+1} - a`` in the
   iteration where it first generates a token (once per request, even if evicted later).

Conserved at every iteration: arrived = completed + waiting + resident; ``M_k <= C_b`` after
eviction; the tokens generated add up to the outputs of the completed requests plus the
progress of the others (minus what restarts discarded).

Data
----
* :class:`SimShape` - static shapes; changing it recompiles.
* :class:`SystemParams` - traced system parameters; vmappable, differentiable.
* :class:`Workload` - one replica's requests, padded to a static length with a mask.
* :class:`SimState` - the carry of ``lax.scan``.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

__all__ = [
    "RELAX_MODES",
    "SimShape",
    "SystemParams",
    "Workload",
    "SlotState",
    "RequestState",
    "SimState",
    "system_params",
    "blocks_for",
    "block_tokens",
    "usable_capacity",
    "memory_time",
    "WORKLOAD_BYTES_PER_REQUEST",
    "STATE_BYTES_PER_REQUEST",
    "BYTES_PER_REQUEST",
    "BIG_CHUNK",
]

BIG_CHUNK = 1 << 30
"""A prefill chunk cap meaning 'the whole remaining prefill'."""


@dataclasses.dataclass(frozen=True)
class SimShape:
    """Static configuration: shapes and switches. Hashable; changing it recompiles."""

    max_batch: int  # B: resident request slots
    queue_size: int  # W: the scheduler's look-ahead window over the waiting queue
    horizon: int  # H: iterations per rollout
    num_classes: int  # K: request classes
    warmup: int = 0  # iterations before metrics start counting
    record_trace: bool = False  # emit per-iteration outputs (for plots and tests)
    relax: str = "hard"  # "hard" | "relaxed" | "straight_through" (see RELAX_MODES)
    leap: bool = False  # leap over quiet iterations (jaxsched.core.leap; hard mode only)

    def __post_init__(self):
        for name in ("max_batch", "queue_size", "horizon", "num_classes"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"SimShape.{name} must be >= 1, got {getattr(self, name)}")
        if not 0 <= self.warmup < self.horizon:
            raise ValueError(f"SimShape.warmup must be in [0, horizon), got {self.warmup}")
        if self.relax not in RELAX_MODES:
            raise ValueError(f"SimShape.relax must be one of {RELAX_MODES}, got {self.relax!r}")
        if self.leap and self.relax != "hard":
            raise ValueError(f"SimShape.leap needs relax = 'hard', got {self.relax!r}")


RELAX_MODES = ("hard", "relaxed", "straight_through")
"""How admissions are counted (``SimShape.relax``), one step function for all three:

* ``hard``: the model above; every metric is a count of discrete events.
* ``relaxed``: a policy that states its admission as a signed margin (``Decision``, in units
  of requests: how far the request is inside its budget, threshold or free memory) gives each
  admitted request a mass ``m = sigmoid(margin / temperature)`` in (0, 1]; every count and
  token sum is mass-weighted (completions, tokens, evictions, recomputed tokens, memory
  ``M = sum_i m_i need_i`` with ``need_i`` in block tokens, iteration time
  ``d0 + d1_prefill sum_i m_i chunk_i + d1_context sum_i m_i context_i
  + d2 sum_{i: chunk_i > 0} m_i``) and the overflow indicator becomes
  ``sigmoid((M - C_b - 1/2) / (temperature * mean need))`` (memory is whole tokens); when the
  policy evicted newest first, the eviction count is the soft
  LIFO count ``sum_i m_i sigmoid((M - C_b - newer_i - 1/2) / (temperature * need_i))``
  (``newer_i``: the mass-weighted memory of residents admitted after ``i``), so more
  admitted mass means more evictions in the gradient too. Which requests
  are admitted, run and evicted is decided exactly as in ``hard`` mode; as the temperature
  goes to 0 every mass goes to 1 and the metrics to the hard ones.
* ``straight_through``: the forward pass is exactly ``hard`` (masses and the overflow
  indicator are 0/1), the backward pass differentiates the ``relaxed`` surrogates.

The temperature is traced (``SimParams.temperature``): annealing it never recompiles.
"""


@struct.dataclass
class SystemParams:
    """Traced system parameters (a leading axis on every field makes a batch of them)."""

    capacity: jax.Array  # () float32, C: tokens of KV memory
    d0: jax.Array  # () float32, time per iteration
    d1_prefill: jax.Array  # () float32, time per prefill token in an iteration
    d1_context: jax.Array  # () float32, time per context token of a decoding request
    restart_on_evict: jax.Array  # () bool, evicted requests lose their generated tokens
    d2: jax.Array  # () float32, time per prefilling request (chunk > 0) in an iteration
    block_size: jax.Array  # () int32 >= 1, tokens per KV block (1: the token model)


def system_params(capacity, d0=1.0, d1=0.0, restart_on_evict=False, d2=0.0, *,
                  d1_prefill=None, d1_context=None, block_size=1) -> SystemParams:
    """Build :class:`SystemParams` from Python numbers or arrays; ``d1_prefill`` and
    ``d1_context`` default to ``d1`` (the papers' single coefficient)."""
    return SystemParams(
        capacity=jnp.asarray(capacity, jnp.float32),
        d0=jnp.asarray(d0, jnp.float32),
        d1_prefill=jnp.asarray(d1 if d1_prefill is None else d1_prefill, jnp.float32),
        d1_context=jnp.asarray(d1 if d1_context is None else d1_context, jnp.float32),
        restart_on_evict=jnp.asarray(restart_on_evict, bool),
        d2=jnp.asarray(d2, jnp.float32),
        block_size=jnp.asarray(block_size, jnp.int32),
    )


def blocks_for(tokens, block_size):
    """``ceil(tokens / block_size)``: the KV blocks that hold ``tokens`` (integer arrays or
    Python ints; 0 tokens hold no block)."""
    return -(-tokens // block_size)


def block_tokens(tokens, block_size):
    """``[t]_b = block_size * ceil(tokens / block_size)``: the memory, in tokens, of a resident
    whose need is ``tokens >= 0`` (every memory check rounds with this).

    On arrays: one truncating division of ``t + b - 1`` (``floor_divide`` adds a remainder and
    a sign correction, and integer division is not vectorized on CPU), skipped by a
    ``lax.cond`` when ``b = 1`` (the token model) and ``block_size`` is not batched."""
    if isinstance(tokens, int) and isinstance(block_size, int):
        return blocks_for(tokens, block_size) * block_size
    tokens = jnp.asarray(tokens)
    b = jnp.broadcast_to(jnp.asarray(block_size, tokens.dtype), tokens.shape)

    def rounded():
        return jax.lax.div(tokens + b - 1, b) * b

    return jax.lax.cond(jnp.all(jnp.asarray(block_size) == 1), lambda: tokens, rounded)


def usable_capacity(capacity, block_size):
    """``C_b = block_size * floor(C / block_size)``: the tokens of the whole blocks that fit in
    ``C``; ``C`` itself when ``block_size = 1`` (memory is whole tokens, so ``M <= C`` iff
    ``M <= floor(C)``, and ``C`` keeps its gradient in the relaxed modes). For
    ``block_size > 1`` the floor's gradient is passed straight through (d C_b / d C = 1)."""
    capacity = jnp.asarray(capacity, jnp.float32)
    floored = jnp.floor(capacity / block_size) * block_size
    floored = capacity + jax.lax.stop_gradient(floored - capacity)
    return jnp.where(block_size > 1, floored, capacity)


def memory_time(prompt_len, output_len):
    """Memory-time of one request, ``w = l o + (o + o^2) / 2`` token-iterations.

    In the iteration where a request generates its ``j``-th token it holds ``l + j`` tokens
    (step 4 above, ``b = 1``), so over its ``o`` token-generating iterations it occupies
    ``sum_{j=1..o} (l + j)`` at least: Dong & Cao 2026 (arXiv 2604.11001) Sec. 3's minimum KV
    workload, the congestion paper's ``C_k = l1 (l0 + (l1 + 1)/2)`` (arXiv 2606.15555).
    Elementwise; a ``jax`` array passes through (traceable, differentiable), anything else
    becomes float64 numpy (no int32 overflow of ``o^2``).
    """
    l, o = (x if isinstance(x, jax.Array) else np.asarray(x, np.float64)
            for x in (prompt_len, output_len))
    return l * o + (o + o * o) / 2


@struct.dataclass
class Workload:
    """One replica's requests sorted by arrival, padded to N with ``valid = False``."""

    arrival: jax.Array  # (N,) float32, arrival time; +inf where not valid
    prompt: jax.Array  # (N,) int32, l >= 1
    output: jax.Array  # (N,) int32, o >= 1
    cls: jax.Array  # (N,) int32 in [0, K)
    valid: jax.Array  # (N,) bool

    @property
    def num_requests(self) -> int:
        return self.arrival.shape[-1]


@struct.dataclass
class SlotState:
    """Resident requests in admission order, oldest first; free slots (``req = -1``; their other
    fields are unspecified, every reader masks by ``valid``) may lie between them (the
    simulator compacts them when it needs the room)."""

    req: jax.Array  # (B,) int32 workload index, -1 where free
    prompt: jax.Array  # (B,) int32
    output: jax.Array  # (B,) int32
    generated: jax.Array  # (B,) int32, s: tokens generated so far (kept ones included)
    cached: jax.Array  # (B,) int32, KV tokens held
    cls: jax.Array  # (B,) int32
    arrival: jax.Array  # (B,) float32
    first_done: jax.Array  # (B,) bool, first token already delivered
    mass: Any = None  # (B,) float32 admission mass in relaxed modes (RELAX_MODES); else None

    @property
    def valid(self) -> jax.Array:
        return self.req >= 0


@struct.dataclass
class RequestState:
    """Per-request bookkeeping over the workload (waiting or not)."""

    taken: jax.Array  # (N,) bool, resident or completed (not waiting)
    kept: jax.Array  # (N,) int32, generated tokens kept while waiting after an eviction
    first_done: jax.Array  # (N,) bool, first token already delivered


@struct.dataclass
class SimState:
    """The carry of the simulator's ``lax.scan``."""

    time: jax.Array  # () float32, T_k
    iteration: jax.Array  # () int32, k
    arrived: jax.Array  # () int32, requests with arrival <= T_k (a prefix of the workload)
    head: jax.Array  # () int32, no waiting request has a smaller index
    num_waiting: jax.Array  # () int32
    num_completed: jax.Array  # () int32, since iteration 0
    slots: SlotState
    requests: RequestState


WORKLOAD_BYTES_PER_REQUEST = 4 + 4 + 4 + 4 + 1
"""Device bytes of one request's :class:`Workload` arrays: arrival (float32), prompt, output,
cls (int32) and valid (bool): 17."""

STATE_BYTES_PER_REQUEST = 1 + 4 + 1
"""Device bytes of one request's :class:`RequestState`: taken (bool), kept (int32) and
first_done (bool): 6."""

BYTES_PER_REQUEST = WORKLOAD_BYTES_PER_REQUEST + STATE_BYTES_PER_REQUEST
"""Device bytes a request costs a rollout with full request arrays (its workload arrays and
its bookkeeping): 23. The per-request part of every memory estimate (the size check of a
workload, automatic streaming, :func:`jaxsched.tools.scaling.step_bytes`)."""
