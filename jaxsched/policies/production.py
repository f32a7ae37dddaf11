"""The production schedulers people run today: vLLM, SGLang and Sarathi-Serve.

Each is the server's admission rule written in the iteration model of :mod:`jaxsched.core.model`,
with its real knobs as traced parameters. None reads output lengths (a server does not know
them); SGLang sees only its own ``max_new_tokens`` cap.

Token budgets (``vllm`` and ``sarathi``)
----------------------------------------
Both schedule an iteration under a budget of ``K`` computed tokens (vLLM's
``max_num_batched_tokens``, Sarathi-Serve's chunk size), with chunked prefill
(:func:`budget_plan`). With residents in admission order and ``p_i = l_i + s_i - cached_i``
the prefill tokens resident ``i`` still has to compute:

1. *Decodes first.* Residents with ``p_i = 0`` decode, one token each; the oldest ``K`` of
   them run (the servers require ``K >= max_num_seqs``, so normally all do).
   ``R = K - #running decodes``.
2. *Partial prefills, oldest first.* Resident ``i`` with ``p_i > 0`` gets the chunk
   ``c_i = clip(R - sum_{k < i, p_k > 0} p_k, 0, p_i)`` and runs iff ``c_i > 0``.
3. *New prefills.* What is left, ``R' = max(R - sum_i p_i, 0)``, goes to admitted requests in
   queue order: window position ``q`` with ``p_q = l_q + g_q`` (prompt plus kept tokens) and
   ``e_q = sum_{r < q} p_r`` may be admitted only if ``e_q < R'``; its first chunk is
   ``min(p_q, R' - e_q)`` (a prompt longer than the budget is chunked over later iterations,
   as in vLLM v1 and Sarathi-Serve). Admitted requests are the newest residents, so the plan
   of step 2 (run again after admission) gives them exactly these chunks.

Admission is called before the plan, so it evaluates steps 1-2 on the current residents to
know ``R'``.

Prefill-prioritized batching (``vllm(scheduler="v0")``)
-------------------------------------------------------
vLLM's original scheduler (vLLM before chunked prefill, and the ``vllm`` scheduler of the
Vidur simulator on which the WAIT paper, arXiv 2504.11320, runs its vLLM baseline) never
mixes prefills and decodes. If any waiting request is admitted, the iteration is
*prefill-only*: the admitted requests prefill their whole prompts (plus kept tokens) and
every other resident pauses with its cache; otherwise every resident decodes. Admission
takes whole prompts in queue order while ``sum_{r <= q} (l_r + g_r) <= K``
(``K = max_num_batched_tokens``; a prompt longer than ``K`` is admitted alone, where vLLM
would refuse it). Each prefill batch therefore costs an iteration of its own (``d0`` again)
and stalls every decode: the reason the WAIT paper's vLLM falls behind at high rates.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from jaxsched.core.model import block_tokens
from jaxsched.policies.base import (
    check_eviction,
    Decision,
    fcfs_margin,
    ordered_eviction,
    Param,
    Plan,
    plan_running,
    Policy,
    SlotView,
    evict_in_order,
    fcfs_prefix,
    full_need,
    no_state,
    quiet_while_growing,
    run_all,
    view_memory,
)
from jaxsched.policies.serving import ServerHints, Unexpressed, cap_seats, fmt

__all__ = ["VLLM_SCHEDULERS", "SGLangState", "vllm", "sglang", "sarathi", "budget_plan"]

VLLM_SCHEDULERS = ("v1", "v0")
"""``v1``: chunked prefill, decodes first (vLLM >= 0.8, the default). ``v0``: prefill-prioritized
batches of whole prompts (vLLM's original scheduler; the WAIT paper's vLLM baseline)."""

_MAX_INT = 1 << 30


def _as_int(x) -> jax.Array:
    """A float parameter as an int32 count (clamped to 2^30, which means 'unlimited')."""
    return jnp.minimum(x, float(_MAX_INT)).astype(jnp.int32)


def budget_plan(slots: SlotView, budget: jax.Array, block_size=1):
    """Steps 1-2 of the module docstring on ``slots`` under ``budget`` (int32) tokens.

    Returns ``(run (B,) bool, chunk (B,) int32, need (B,) int32, left () int32)``: who runs,
    their prefill chunks, each resident's memory in this iteration if the plan is executed
    (``cached + chunk + token``; ``cached`` for one that does not run; in block tokens of
    ``block_size``) and ``R'``, the budget left for new prefills.
    """
    valid = slots.valid
    target = slots.prompt + slots.generated
    pending = jnp.where(valid, target - slots.cached, 0)
    decode = valid & (pending == 0)
    decode_run = decode & (jnp.cumsum(decode) <= budget)
    rem = budget - jnp.sum(decode_run, dtype=jnp.int32)
    before = jnp.cumsum(pending) - pending
    chunk = jnp.clip(rem - before, 0, pending)
    run = decode_run | (chunk > 0)
    token = run & (slots.cached + chunk == target)
    need = block_tokens(jnp.where(valid, slots.cached + chunk + token, 0), block_size)
    left = jnp.maximum(rem - jnp.sum(pending), 0)
    return run, chunk, need, left


def _budget_admission_common(params, view, budget_key: str):
    """Shared pieces of the budgeted admissions, per window position: prefill tokens
    ``p = l + g``, first chunk, budget and seat tests; and the residents' planned memory."""
    q, s = view.queue, view.slots
    _, _, need_old, left = budget_plan(s, _as_int(params[budget_key]), view.block_size)
    p = jnp.where(q.valid, q.prompt + q.kept, 0)
    before = jnp.cumsum(p) - p
    budget_ok = before < left
    first_chunk = jnp.clip(left - before, 0, p)
    seats = _as_int(params["max_num_seqs"]) - jnp.sum(s.valid, dtype=jnp.int32)
    seat_ok = jnp.cumsum(q.valid) <= seats
    return p, first_chunk, budget_ok & seat_ok, need_old


def _serve_budget(key_name: str, scheduler: str = "v1"):
    """``serve_check`` of the budgeted policies: a server's own chunked prefill gives exactly
    :func:`budget_plan`'s chunks iff its token budget is the policy's (vLLM v1 schedules
    decodes first, then running prefills oldest first, then waiting requests FCFS, each
    chunk what is left of ``max_num_batched_tokens``)."""

    def check(server, values, engine):
        if scheduler != "v1":
            return (f"scheduler={scheduler!r}: prefill-only iterations of whole prompts; vLLM's "
                    f"v1 scheduler mixes prefills and decodes (use scheduler='v1')")
        if not engine.get("chunked_prefill", True):
            return f"{key_name}: needs chunked prefill; start {server} with it enabled"
        budget = int(min(values[key_name], _MAX_INT))
        if budget != int(engine["max_num_batched_tokens"]):
            return (f"{key_name} = {budget}: the plan chunks prefills under this token budget; "
                    f"start {server} with --max-num-batched-tokens {budget} (it has "
                    f"{engine['max_num_batched_tokens']})")
        return None

    return check


def _budget_plan_fn(key_name: str):
    def plan(key, params, pstate, view):
        del key, pstate
        run, chunk, _, _ = budget_plan(view.slots, _as_int(params[key_name]))
        return Plan(run=run, chunk=chunk)

    return plan


# --------------------------------------------------------------------------------------------
# vLLM


def _vllm_server_flags(target, values) -> ServerHints:
    """vLLM's own flags; on SGLang the token budget caps prefill tokens only and the watermark
    has no counterpart."""
    hints = ServerHints()
    cap_seats(hints, target, values, "max_num_seqs")
    if "max_num_batched_tokens" in values:
        tokens = int(values["max_num_batched_tokens"])
        if target.vllm:
            hints.flags["--max-num-batched-tokens"] = tokens
            hints.flags["--enable-chunked-prefill"] = True
        else:
            hints.flags["--chunked-prefill-size"] = tokens
            hints.notes.append("max_num_batched_tokens -> --chunked-prefill-size (SGLang caps "
                               "prefill tokens per iteration; decode tokens are not counted)")
        hints.handled.add("max_num_batched_tokens")
    if "watermark" in values:
        if target.vllm:  # vLLM v1 (0.32) keeps this fraction of the blocks free at admission
            hints.flags["--watermark"] = fmt(float(values["watermark"]))
        else:
            hints.notes.append(Unexpressed("watermark", "fraction of C kept free at admission "
                                           "(vLLM's watermark)"))
        hints.handled.add("watermark")
    return hints


def _sarathi_server_flags(target, values) -> ServerHints:
    """The chunk size is the token budget per iteration, with chunked prefill."""
    hints = ServerHints()
    cap_seats(hints, target, values, "max_num_seqs")
    if "chunk_size" in values:
        if target.vllm:
            hints.flags["--max-num-batched-tokens"] = int(values["chunk_size"])
            hints.flags["--enable-chunked-prefill"] = True
        else:
            hints.flags["--chunked-prefill-size"] = int(values["chunk_size"])
        hints.handled.add("chunk_size")
    return hints


_SGLANG_RATIO_KEYS = ("new_token_ratio_init", "new_token_ratio_min",
                      "new_token_ratio_decay_steps", "max_new_tokens", "retract_steps")


def _sglang_server_flags(target, values) -> ServerHints:
    """SGLang's environment variables for the new-token ratio (conservativeness 1, so the
    initial ratio is the variable's); vLLM reserves no future tokens, so none of them."""
    hints = ServerHints()
    p = values
    if target.vllm:
        for k in _SGLANG_RATIO_KEYS:
            if k in p:
                hints.notes.append(Unexpressed(k, "SGLang's reservation of future tokens at "
                                               "admission (vLLM reserves none)"))
    else:
        init = float(p.get("new_token_ratio_init", 0.7))
        hints.flags["--schedule-conservativeness"] = 1.0
        hints.env["SGLANG_INIT_NEW_TOKEN_RATIO"] = fmt(init)
        if "new_token_ratio_min" in p and init > 0:
            hints.env["SGLANG_MIN_NEW_TOKEN_RATIO_FACTOR"] = fmt(float(p["new_token_ratio_min"]) / init)
        elif "new_token_ratio_min" in p:
            hints.notes.append(Unexpressed("new_token_ratio_min", "SGLang sets the minimum as a "
                                           "factor of an initial ratio of 0"))
        if "new_token_ratio_decay_steps" in p:
            hints.env["SGLANG_NEW_TOKEN_RATIO_DECAY_STEPS"] = str(int(round(p["new_token_ratio_decay_steps"])))
        if "max_new_tokens" in p:
            hints.env["SGLANG_CLIP_MAX_NEW_TOKENS_ESTIMATION"] = str(int(p["max_new_tokens"]))
        if "retract_steps" in p:
            hints.env["SGLANG_RETRACT_DECODE_STEPS"] = str(int(p["retract_steps"]))
    hints.handled.update(_SGLANG_RATIO_KEYS)
    return hints


def vllm(eviction: str = "newest", scheduler: str = "v1") -> Policy:
    """vLLM: the v1 scheduler with chunked prefill (``scheduler="v1"``, the default since
    vLLM 0.8) or the original prefill-prioritized one (``scheduler="v0"``, module docstring).

    ``v1``: per iteration, under the token budget ``K = max_num_batched_tokens`` (module
    docstring): decodes first, then partial prefills oldest first, then new requests FCFS with
    a first chunk of what is left. ``v0``: whole prompts while their sum stays within ``K``;
    an iteration that admits runs only the admitted prefills. Either way a waiting request
    ``q`` (in queue order, the first refusal blocks the rest, as vLLM's waiting queue does) is
    admitted iff

    * ``e_q < R'`` (some budget is left for its first chunk; ``v0``: ``e_q + l_q + g_q <= K``
      or ``e_q = 0``),
    * ``n_resident + #admitted <= max_num_seqs``,
    * ``C - sum_i (l_i + s_i + 1) - sum_{r <= q} (l_r + g_r + 1) >= watermark * C``.

    The memory test reserves each request's whole prompt (plus kept tokens and the first new
    token) at admission, as vLLM's block manager allocates a prompt's blocks and keeps
    ``watermark`` of the blocks free (``can_allocate``: free - required >= watermark blocks);
    residents count at ``l + s + 1`` (their size after this iteration's token) even while
    their prefill is still chunked. Growth is not reserved: when decodes outgrow ``C`` the
    newest resident is preempted by recompute (``eviction="newest"``, vLLM's rule; other
    orders in ``EVICTION_ORDERS``) and readmitted later with ``l + g`` tokens to prefill.

    vLLM v1 admits no waiting request in an iteration that preempted (``if not
    preempted_reqs`` in ``Scheduler.schedule``); here that follows from the memory test: a
    resident counts at ``l + s + 1``, at least its memory under the plan, so an iteration
    that admits ends with ``M_k <= C`` and one that overflows admitted nothing.
    Not modelled: prefix caching, ``long_prefill_token_threshold``.
    """
    check_eviction(eviction)
    if scheduler not in VLLM_SCHEDULERS:
        raise ValueError(f"scheduler must be one of {VLLM_SCHEDULERS}, got {scheduler!r}")

    def admit_v0(key, params, pstate, view):
        del key
        q, s = view.queue, view.slots
        p = jnp.where(q.valid, q.prompt + q.kept, 0)
        before = jnp.cumsum(p) - p
        budget_ok = (before + p <= _as_int(params["max_num_batched_tokens"])) | (before == 0)
        seats = _as_int(params["max_num_seqs"]) - jnp.sum(s.valid, dtype=jnp.int32)
        used = jnp.sum(full_need(s, view.block_size)) + jnp.cumsum(
            view_memory(view, jnp.where(q.valid, p + 1, 0)))
        mem_ok = view.capacity - used.astype(jnp.float32) >= params["watermark"] * view.capacity
        ok = budget_ok & (jnp.cumsum(q.valid) <= seats) & mem_ok
        return fcfs_prefix(ok, q.valid), pstate

    def plan_v0(key, params, pstate, view):
        del key, params, pstate
        s = view.slots
        new = s.valid & s.is_new
        run = jnp.where(jnp.any(new), new, s.valid)  # a prefill-only iteration, else decodes
        return plan_running(run)

    plan_v1 = _budget_plan_fn("max_num_batched_tokens")

    def admit(key, params, pstate, view):
        del key
        q, s = view.queue, view.slots
        p, _, ok, _ = _budget_admission_common(params, view, "max_num_batched_tokens")
        size = view_memory(view, jnp.where(q.valid, p + 1, 0))
        used = jnp.sum(full_need(s, view.block_size)) + jnp.cumsum(size)
        slack = view.capacity - used.astype(jnp.float32) - params["watermark"] * view.capacity
        mem_ok = slack >= 0
        # margin: the free memory beyond the watermark, in units of this request's size
        margin = jnp.where(ok, (slack + 0.5 * size) / jnp.maximum(size, 1), -1.0)
        return Decision(fcfs_prefix(ok & mem_ok, q.valid), fcfs_margin(margin, q.valid)), pstate

    return Policy(
        name="vllm",
        params={
            "max_num_seqs": Param(
                default=256, low=1, high=float(_MAX_INT), integer=True, log=True,
                doc="vLLM max_num_seqs: cap on running (resident) requests; vLLM default 256",
            ),
            "max_num_batched_tokens": Param(
                default=2048, low=1, high=float(_MAX_INT), integer=True, log=True,
                doc="vLLM max_num_batched_tokens: tokens computed per iteration (decodes count "
                    "1, prefill chunks their length); vLLM v1 online-serving default 2048",
            ),
            "watermark": Param(
                default=0.01, low=0.0, high=1.0,
                doc="vLLM block-manager watermark: fraction of C left free at admission; "
                    "vLLM default 0.01",
            ),
        },
        init=no_state,
        admit=admit if scheduler == "v1" else admit_v0,
        plan=plan_v1 if scheduler == "v1" else plan_v0,
        evict=ordered_eviction(eviction),
        serve_check=_serve_budget("max_num_batched_tokens", scheduler),
        server_flags=_vllm_server_flags,
        quiet_bound=quiet_while_growing(admit, plan_v1) if scheduler == "v1"
        else quiet_while_growing(admit_v0, plan_v0),
    )


# --------------------------------------------------------------------------------------------
# Sarathi-Serve


def sarathi(eviction: str = "newest") -> Policy:
    """Sarathi-Serve: stall-free batching with chunked prefill (Agrawal et al., OSDI 2024), the
    baseline of the WAIT paper (chunk 512).

    Per iteration, under the token budget ``K = chunk_size`` (module docstring): decodes first,
    then partial prefills oldest first, then new requests FCFS, each with a first chunk of what
    is left. A waiting request ``q`` (queue order, the first refusal blocks the rest) is
    admitted iff ``e_q < R'``, ``n_resident + #admitted <= max_num_seqs`` and the memory of
    *this iteration* fits:

        ``sum_i need_i + sum_{r <= q} (c_r + [c_r = p_r]) <= C``

    where ``need_i = cached_i + c_i + t_i`` is resident ``i``'s memory under the plan (``t_i``
    its new token) and ``c_r = min(p_r, R' - e_r)`` the first chunk of new request ``r``
    (plus the slot of its first token when the chunk completes its prefill). Nothing is
    reserved for the rest of a chunked prompt or for decode growth: on overflow the newest
    resident is preempted (``eviction="newest"``, LIFO).
    """
    check_eviction(eviction)

    def admit(key, params, pstate, view):
        del key
        q = view.queue
        p, first, ok, need_old = _budget_admission_common(params, view, "chunk_size")
        mem_new = view_memory(view, jnp.where(q.valid & (first > 0), first + (first == p), 0))
        used = jnp.sum(need_old) + jnp.cumsum(mem_new)
        mem_ok = used.astype(jnp.float32) <= view.capacity
        return fcfs_prefix(ok & mem_ok, q.valid), pstate

    return Policy(
        name="sarathi",
        params={
            "chunk_size": Param(
                default=512, low=1, high=float(_MAX_INT), integer=True, log=True,
                doc="Sarathi-Serve token budget per iteration (chunk size); the WAIT paper's "
                    "baseline uses 512",
            ),
            "max_num_seqs": Param(
                default=256, low=1, high=float(_MAX_INT), integer=True, log=True,
                doc="cap on resident requests (Sarathi-Serve inherits vLLM's max_num_seqs, 256)",
            ),
        },
        init=no_state,
        admit=admit,
        plan=_budget_plan_fn("chunk_size"),
        evict=ordered_eviction(eviction),
        serve_check=_serve_budget("chunk_size"),
        server_flags=_sarathi_server_flags,
    )


# --------------------------------------------------------------------------------------------
# SGLang


class SGLangState(NamedTuple):
    """State of ``sglang``: the new-token ratio and whether it restarts."""

    ratio: jax.Array  # () float32: the estimate ratio r_k of the last admission
    reset: jax.Array  # () bool: an overflow since, so the next ratio is new_token_ratio_init


def _sglang_ratio(params, pstate):
    """The ratio of this iteration: ``init`` after a reset, else one linear decay step."""
    init = params["new_token_ratio_init"]
    low = params["new_token_ratio_min"]
    decay = jnp.maximum((init - low) / params["new_token_ratio_decay_steps"], 0.0)
    decayed = jnp.maximum(pstate.ratio - decay, low)
    return jnp.where(pstate.reset, init, decayed)


def sglang(eviction: str = "fewest_generated") -> Policy:
    """SGLang's scheduler: admission against an estimate of future growth, retraction on
    shortage (SGLang ``schedule_policy.PrefillAdder`` and ``ScheduleBatch.retract_decode``).

    *Estimate ratio.* ``r_0 = new_token_ratio_init``; after iteration ``k``,
    ``r_{k+1} = new_token_ratio_init`` if iteration ``k`` overflowed (a retraction), else
    ``r_{k+1} = max(r_k - delta, new_token_ratio_min)`` with
    ``delta = max((init - min) / new_token_ratio_decay_steps, 0)`` (float32, in this order).

    *Admission* (FCFS, the first refusal blocks the rest). With ``N = max_new_tokens`` (the
    cap the server sees; the real output length is unknown to it) and ``x^+ = max(x, 0)``,
    window position ``q`` is admitted iff

        ``r_k * (sum_i (N - s_i)^+ + sum_{p <= q} (N - g_p)^+)
          <= C - sum_i (l_i + s_i + 1) - sum_{p <= q} (l_p + g_p + 1)``

    (residents ``i`` at their size after this iteration's token; new requests with their
    prompt, kept tokens and first token; the product is rounded once in float32).
    SGLang charges a new request ``min(max_new_tokens, 4096)`` undiscounted in one of its
    checks; this rule discounts it by ``r_k`` like the residents' growth.

    *Retraction* (``eviction="fewest_generated"``). If the iteration overflows
    (``M_k > C``), residents are retracted in order of fewest generated tokens, ties longest
    prompt, then newest, until the remaining ``R`` satisfy
    ``sum_{i in R} need_i + retract_steps * |R| <= C`` (room for ``retract_steps`` more
    decode steps of each), never retracting the last remaining resident (SGLang keeps one;
    the simulator still evicts it if it alone exceeds ``C``). Another ``eviction`` order
    replaces retraction by plain eviction of what overflows. Either way, an overflowing
    iteration resets the ratio. SGLang instead resets it to an estimate computed from the
    batch; resetting to ``init`` is the rule of PAPERS.md.
    """
    check_eviction(eviction)

    def init(params, shape):
        del shape
        return SGLangState(ratio=params["new_token_ratio_init"], reset=jnp.array(True))

    def admit(key, params, pstate, view):
        del key
        q, s = view.queue, view.slots
        ratio = _sglang_ratio(params, pstate)
        cap = _as_int(params["max_new_tokens"])
        grow_old = jnp.sum(jnp.where(s.valid, jnp.maximum(cap - s.generated, 0), 0))
        grow_new = jnp.where(q.valid, jnp.maximum(cap - q.kept, 0), 0)
        size_new = view_memory(view, jnp.where(q.valid, q.prompt + q.kept + 1, 0))
        reserve = ratio * (grow_old + jnp.cumsum(grow_new)).astype(jnp.float32)
        used = jnp.sum(full_need(s, view.block_size)) + jnp.cumsum(size_new)
        slack = view.capacity - used.astype(jnp.float32) - reserve
        ok = slack >= 0
        margin = (slack + 0.5 * size_new) / jnp.maximum(size_new, 1)
        return (Decision(fcfs_prefix(ok, q.valid), fcfs_margin(margin, q.valid)),
                SGLangState(ratio=ratio, reset=jnp.array(False)))

    def evict(key, params, pstate, view, need):
        del key
        s = view.slots
        overflow = view.excess > 0
        if eviction == "fewest_generated":
            out = retract(s, need, view.excess, _as_int(params["retract_steps"])) & overflow
        else:
            out = evict_in_order(eviction, s, need, view.excess)
        return out, SGLangState(ratio=pstate.ratio, reset=pstate.reset | overflow)

    return Policy(
        name="sglang",
        params={
            "new_token_ratio_init": Param(
                default=0.7, low=0.0, high=1.0,
                doc="SGLang init_new_token_ratio (0.7 x schedule_conservativeness)",
            ),
            "new_token_ratio_min": Param(
                default=0.098, low=0.0, high=1.0,
                doc="SGLang min_new_token_ratio = init x 0.14 (default_min_new_token_ratio_factor)",
            ),
            "new_token_ratio_decay_steps": Param(
                default=600, low=1, high=1e7, log=True,
                doc="SGLang default_new_token_ratio_decay_steps: iterations of linear decay "
                    "from init to min",
            ),
            "max_new_tokens": Param(
                default=4096, low=1, high=1e6, integer=True, log=True,
                doc="per-request output cap the server sees (SGLang clips its estimate at "
                    "SGLANG_CLIP_MAX_NEW_TOKENS_ESTIMATION = 4096)",
            ),
            "retract_steps": Param(
                default=20, low=0, high=1e6, integer=True,
                doc="SGLang retract_decode_steps: decode steps of room kept for the residents "
                    "that remain after a retraction",
            ),
        },
        init=init,
        admit=admit,
        plan=run_all,
        evict=evict,
        server_flags=_sglang_server_flags,
    )


def retract(slots: SlotView, need: jax.Array, excess: jax.Array, steps: jax.Array) -> jax.Array:
    """SGLang's retraction set (see :func:`sglang`), by one sort and a prefix sum.

    In the order fewest generated, longest prompt, newest, retract position ``k`` iff
    ``sum_{j < k} (need_j + steps) < excess + steps * n`` (the residents after the first ``k``
    still lack room for ``steps`` more tokens each) and ``k < n - 1``.
    """
    b = need.shape[0]
    valid = slots.valid
    big = jnp.iinfo(jnp.int32).max
    # jnp.lexsort sorts by the last key first: free slots last, then fewest generated, then
    # longest prompt, then newest.
    keys = (-jnp.arange(b), jnp.where(valid, -slots.prompt, big),
            jnp.where(valid, slots.generated, big), ~valid)
    order = jnp.lexsort(keys)
    cost = jnp.where(valid, need + steps, 0)[order]
    before = (jnp.cumsum(cost) - cost).astype(jnp.float32)
    n = jnp.sum(valid, dtype=jnp.int32)
    target = excess + (steps * n).astype(jnp.float32)
    take = (before < target) & (jnp.arange(b) < n - 1)
    return valid & jnp.zeros((b,), bool).at[order].set(take)
