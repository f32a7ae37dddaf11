"""Flow control (Dong & Cao 2026, arXiv 2604.11001) and the baselines it is compared with.

Notation as in :mod:`jaxsched.core.model`: a request has prompt ``l``, output ``o``, class ``k``,
``s`` generated tokens (``g`` kept ones while it waits after an eviction); ``C`` is the
capacity. In the iteration where it is admitted a request with ``g`` kept tokens needs
``l + g + 1`` (prefill plus the slot of its first new token) and a resident needs
``l + s + 1``; a request admitted with ``g = 0`` holds ``l + j`` in its ``j``-th iteration, so its
memory-time ("minimum KV workload") is ``w = l o + (o + o^2) / 2``.

Policies registered here (all plan with :func:`~jaxsched.policies.base.run_all`: every
resident runs, prefills complete in one iteration):

* ``flow_control_known`` - Algorithm 1 (known classes): per-class activation budgets ``b_k``.
* ``flow_control`` - Algorithm 2 (unknown lengths): one global budget ``B_t`` per iteration,
  FIFO admission without a memory check, LIFO eviction on overflow.
* ``alpha_protection`` - Jaillet et al. 2025 (arXiv 2502.07115): FCFS while memory stays below
  ``(1 - alpha) C``; on overflow clear every resident and restart.
* ``mc_sf`` - Jaillet et al.'s memory-constrained shortest-first: non-preemptive, admits in
  order of predicted output length while the projected future memory fits.
* ``mc_benchmark`` - the same future-memory check, candidates in queue order.
* ``reserve_full`` - TensorRT-LLM GUARANTEED_NO_EVICT / TGI: admit only while every resident's
  prompt plus reserved output fits.

Fractional budgets (``flow_control_known`` and ``flow_control`` with
``budget_distribution="fixed"``) are carried as a credit ``c`` in the policy state::

    A_t = c_{t-1} + b,    n_t = floor(A_t),    c_t = A_t - n_t  (in [0, 1)),   c_{-1} = 0

and the policy activates ``min(n_t, waiting)``. The carried credit is only the fractional
part: allowance left unused because the queue was short is forfeited, never banked. So
``n_t = floor((t + 1) b) - floor(t b)`` is a fixed sequence (for ``b = 4/3``: 1, 1, 2, 1, 1,
2, ...), integer ``b`` gives exactly the paper's ``min(b, Q)`` every iteration, the long-run
activation rate is at most ``b``, and any ``m`` consecutive iterations activate at most
``ceil(m b)`` requests: an idle class cannot burst. The arithmetic is float32 (the twin in
``jaxsched.reference.policies.flow_control`` repeats it in float32 so floors agree).
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from jaxsched.core.model import memory_time  # w = l o + (o + o^2) / 2 (re-exported)
from jaxsched.core.prefix import prefix_sum
from jaxsched.policies.base import (
    check_eviction,
    Decision,
    budget_margin,
    ordered_eviction,
    Param,
    Policy,
    fcfs_prefix,
    full_need,
    view_memory,
    no_state,
    quiet_while_empty,
    run_all,
)
from jaxsched.policies.serving import ServerHints, Unexpressed

__all__ = [
    "CreditState",
    "BUDGET_DISTRIBUTIONS",
    "FIT_SLACK",
    "BIG_OUTPUT",
    "memory_time",
    "credit_step",
    "draw_budget",
    "flow_control_known",
    "flow_control",
    "alpha_protection",
    "mc_sf",
    "mc_benchmark",
    "reserve_full",
]

BUDGET_DISTRIBUTIONS = ("fixed", "poisson", "bernoulli")
"""How ``flow_control`` turns its ``budget`` parameter into the per-iteration budget ``B_t``."""

FIT_SLACK = 0.95
"""Fraction of ``C`` that the workload-derived default budgets fill: ``sum_k b_k w_k = 0.95 C``
(Theorem 3.3's memory condition ``sum_k b_k w_k < C`` with 5% slack)."""

BIG_OUTPUT = 1 << 30
"""Integer stand-in for an unlimited ``max_new_tokens``."""


class CreditState(NamedTuple):
    """State of ``flow_control`` and ``flow_control_known``: the carried admission credit."""

    credit: jax.Array  # () flow_control, (K,) flow_control_known: fractional credit in [0, 1)


def _zero_credit(params, shape) -> CreditState:
    """The initial state of both flow-control policies: no credit carried (the budget's shape)."""
    del shape
    return CreditState(credit=jnp.zeros_like(params["budget"]))


def credit_step(credit: jax.Array, budget: jax.Array) -> tuple[jax.Array, jax.Array]:
    """One iteration of fractional credit: ``A = c + b``, returns ``(floor(A), A - floor(A))``."""
    avail = credit + budget
    n = jnp.floor(avail)
    return n, avail - n


def draw_budget(key: jax.Array, budget: jax.Array, distribution: str) -> jax.Array:
    """The random per-iteration budget ``B_t`` of ``flow_control`` (int32 scalar).

    ``poisson``: ``B_t ~ Poisson(budget)``; ``bernoulli``: ``floor(budget) + Bernoulli(budget -
    floor(budget))``. ``key`` is the admission key the simulator passes to ``admit`` (for
    iteration ``t`` of a rollout with key ``k``: ``jaxsched.core.sim.step_keys(k, t)[0]``), so tests
    can reproduce the draws for the reference twin.
    """
    budget = jnp.asarray(budget, jnp.float32)
    if distribution == "poisson":
        return jax.random.poisson(key, budget, dtype=jnp.int32)
    if distribution == "bernoulli":
        base = jnp.floor(budget)
        return (base + jax.random.bernoulli(key, budget - base)).astype(jnp.int32)
    raise ValueError(f"no random draw for budget_distribution {distribution!r}")


def _class_shares(info: dict):
    """Class mix from the workload description: rates if given, else weights; None if neither."""
    for field in ("rate", "weight"):
        values = info.get(field)
        if values is not None and all(v is not None for v in values) and sum(values) > 0:
            total = float(sum(values))
            return [float(v) / total for v in values]
    return None


def _fit_known(info: dict) -> dict:
    """``b_k = FIT_SLACK * C * p_k / sum_j p_j w_j`` with ``p`` the class mix."""
    shares = _class_shares(info)
    if shares is None or info.get("prompt_len") is None or info.get("output_len") is None:
        return {}
    w = [memory_time(l, o) for l, o in zip(info["prompt_len"], info["output_len"])]
    scale = FIT_SLACK * float(info["capacity"]) / sum(p * wk for p, wk in zip(shares, w))
    return {"budget": [scale * p for p in shares]}


def _fit_global(info: dict) -> dict:
    """``B = FIT_SLACK * C / sum_k p_k w_k``: the same memory condition for the mix."""
    per_class = _fit_known(info)
    if not per_class:
        return {}
    return {"budget": float(sum(per_class["budget"]))}


# ---------------------------------------------------------------------------------------
# Algorithm 1: known classes, per-class budgets.


def _mean_output(classes) -> float | None:
    """Mean output length of the workload's classes, weighted by rate (else by weight)."""
    if not classes:
        return None
    rates = [float(c.get("rate", 0.0)) for c in classes]
    weights = rates if sum(rates) > 0 else [float(c.get("weight", 1.0)) for c in classes]
    total = sum(weights)
    return sum(w * c["output_len"] for w, c in zip(weights, classes)) / total


def _budget_server_flags(target, values) -> ServerHints:
    """No server admits a budget per iteration; the nearest seat cap is Little's law, the
    residents at that admission rate: ``min(max_batch, budget x mean output length)`` (per
    class ``sum_k b_k o_k``)."""
    hints = ServerHints()
    if "budget" not in values:
        return hints
    b = values["budget"]
    total = sum(b) if isinstance(b, list) else float(b)
    mean_o = _mean_output(target.classes)
    hints.notes.append(Unexpressed("budget", "admissions per iteration (flow control)"))
    if mean_o is not None:
        if isinstance(b, list):
            est = sum(bk * c["output_len"] for bk, c in zip(b, target.classes))
        else:
            est = total * mean_o
        seats = int(max(1, min(round(est), target.max_batch)))
        hints.flags[target.seqs_flag] = seats
        hints.notes.append(f"nearest: {target.seqs_flag} {seats} = min(max_batch, budget x "
                           f"output length = {est:.0f}) (Little's law: residents at that "
                           "admission rate)")
    hints.handled.add("budget")
    return hints


def flow_control_known(eviction: str = "newest") -> Policy:
    """Dong & Cao 2026, Algorithm 1 (known lengths, one length pair per class).

    Each iteration, per class ``k``: ``A_k = c_k + b_k``, activate the
    ``min(floor(A_k), Q_k)`` oldest waiting class-``k`` requests (``Q_k``: class-``k`` requests
    in the look-ahead window; FIFO within the class, classes interleaved in queue order) and
    carry ``c_k = A_k - floor(A_k)`` (see the module docstring). No memory check: with integer
    budgets and ``sum_k b_k w_k <= C`` memory never exceeds ``C`` (at most ``b_k`` class-``k``
    activations per iteration, each holding ``l_k + j`` in its ``j``-th iteration, so
    ``M <= sum_k b_k w_k``; Theorem 3.3 adds ``b_k > lambda_k`` for stability). If memory would
    overflow anyway, evict in the order ``eviction`` (default newest first, the papers' LIFO
    safety net). The rank of a window position within its class is a cumulative sum over
    one-hot classes: no sort. The policy reads classes only, never output lengths.
    """
    check_eviction(eviction)

    def admit(key, params, pstate, view):
        del key
        q = view.queue
        budget = params["budget"]
        n, credit = credit_step(pstate.credit, budget)
        onehot = (q.cls[:, None] == jnp.arange(budget.shape[-1])) & q.valid[:, None]
        rank = jnp.sum(jnp.where(onehot, jnp.cumsum(onehot, axis=0) - 1, 0), axis=1)
        admit = q.valid & (rank < n[q.cls])
        allowance = pstate.credit + budget
        margin = budget_margin(allowance[q.cls], rank + 1)
        return Decision(admit, margin), CreditState(credit=credit)

    return Policy(
        name="flow_control_known",
        params={
            "budget": Param(
                default=1.0, low=0.0, per_class=True,
                doc="b_k: class-k activations per iteration (Algorithm 1 of Dong & Cao); "
                    "fractional values carry the fractional credit",
            ),
        },
        init=_zero_credit,
        admit=admit,
        plan=run_all,
        evict=ordered_eviction(eviction),
        fit_defaults=_fit_known,
        server_flags=_budget_server_flags,
    )


# ---------------------------------------------------------------------------------------
# Algorithm 2: unknown lengths, one global budget.


def flow_control(budget_distribution: str = "fixed", eviction: str = "newest") -> Policy:
    """Dong & Cao 2026, Algorithm 2 (unknown lengths).

    Each iteration draw a budget ``B_t`` and activate the first ``min(B_t, Q)`` waiting requests
    in queue order (``Q``: the look-ahead window), with no memory check; then, while
    ``M_k > C``, evict the most recently activated (LIFO: this iteration's admissions first,
    then older residents newest first; ``eviction`` may name another order of
    ``EVICTION_ORDERS``). An evicted request frees its cache and rejoins the queue at its
    arrival position (it loses its progress when ``SystemParams.restart_on_evict``, as in the
    paper). ``budget_distribution``:

    * ``fixed``: ``B_t = floor(c + budget)`` with fractional credit carried (module docstring);
    * ``poisson``: ``B_t ~ Poisson(budget)``;
    * ``bernoulli``: ``B_t = floor(budget) + Bernoulli(budget - floor(budget))``;

    random draws come from the admission key (:func:`draw_budget`). A large budget
    degenerates to greedy admission without a memory check plus LIFO eviction.
    """
    if budget_distribution not in BUDGET_DISTRIBUTIONS:
        raise ValueError(
            f"budget_distribution must be one of {BUDGET_DISTRIBUTIONS}, got {budget_distribution!r}"
        )
    check_eviction(eviction)

    def admit(key, params, pstate, view):
        q = view.queue
        budget = params["budget"]
        if budget_distribution == "fixed":
            n, credit = credit_step(pstate.credit, budget)
            allowance = pstate.credit + budget
        else:
            n, credit = draw_budget(key, budget, budget_distribution), pstate.credit
            # the draw's mean moves one for one with the budget (straight through the draw)
            allowance = n + (budget - jax.lax.stop_gradient(budget))
        rank = prefix_sum(q.valid)
        admit = q.valid & (rank <= n)
        return Decision(admit, budget_margin(allowance, rank)), CreditState(credit=credit)

    def quiet_state(params, pstate):
        """An idle iteration still accrues the fixed budget's credit (random draws keep it)."""
        if budget_distribution != "fixed":
            return pstate
        return CreditState(credit=credit_step(pstate.credit, params["budget"])[1])

    return Policy(
        name="flow_control",
        params={
            "budget": Param(
                default=1.0, low=0.0,
                doc="B: activations per iteration (Algorithm 2 of Dong & Cao): the fixed budget "
                    "with fractional credit, or the mean of the Poisson/Bernoulli draw",
            ),
        },
        init=_zero_credit,
        admit=admit,
        plan=run_all,
        evict=ordered_eviction(eviction),
        fit_defaults=_fit_global,
        server_flags=_budget_server_flags,
        quiet_bound=quiet_while_empty,
        quiet_state=quiet_state,
    )


# ---------------------------------------------------------------------------------------
# Jaillet et al. 2025 baselines.


def alpha_protection() -> Policy:
    """alpha-protection greedy (Jaillet et al. 2025, arXiv 2502.07115).

    Admit first-come-first-served while the memory of this iteration, residents' growth and
    the new requests included, stays within ``(1 - alpha) C``::

        sum_{resident i} (l_i + s_i + 1) + sum_{admitted j} (l_j + g_j + 1) <= (1 - alpha) C

    (the first request that does not fit blocks the rest). Residents keep growing, so memory
    can still exceed ``C`` later; on overflow (``M_k > C``) every resident is evicted, this
    iteration's admissions included ("clear and restart"). Whether the cleared requests keep
    their generated tokens follows ``SystemParams.restart_on_evict`` (the paper: they restart).
    Reads no output lengths.
    """

    def admit(key, params, pstate, view):
        del key
        q = view.queue
        limit = (1.0 - params["alpha"]) * view.capacity
        used = jnp.sum(full_need(view.slots, view.block_size))
        need = view_memory(view, jnp.where(q.valid, q.prompt + q.kept + 1, 0))
        ok = (used + prefix_sum(need)) <= limit
        return fcfs_prefix(ok, q.valid), pstate

    def evict(key, params, pstate, view, need):
        del key, params, need
        return view.slots.valid & (view.excess > 0), pstate

    return Policy(
        name="alpha_protection",
        params={
            "alpha": Param(
                default=0.2, low=0.0, high=0.99,
                doc="alpha: fraction of C protected from admissions (Jaillet et al.); "
                    "admit while memory <= (1 - alpha) C; must be < 1",
            ),
        },
        init=no_state,
        admit=admit,
        plan=run_all,
        evict=evict,
    )


def _predicted_remaining(output, generated, scale):
    """Predicted output ``o_hat = max(ceil(o * scale), 1)`` and predicted remaining
    iterations ``r = max(o_hat - s, 1)`` (a request past its prediction is assumed to finish
    in this iteration)."""
    o_hat = jnp.maximum(jnp.ceil(output.astype(jnp.float32) * scale), 1.0).astype(jnp.int32)
    return o_hat, jnp.maximum(o_hat - generated, 1)


def _future_memory_admit(shortest_first: bool):
    """The admission rule shared by ``mc_sf`` and ``mc_benchmark`` (see ``mc_sf``)."""

    def admit(key, params, pstate, view):
        del key
        q, s = view.queue, view.slots
        w = q.valid.shape[0]
        scale = params["length_scale"]
        o_hat, r_cand = _predicted_remaining(q.output, q.kept, scale)
        _, r_res = _predicted_remaining(s.output, s.generated, scale)
        base_cand = q.prompt + q.kept + 1
        base_res = s.prompt + s.generated + 1
        if shortest_first:
            big = jnp.iinfo(jnp.int32).max
            order = jnp.argsort(jnp.where(q.valid, o_hat, big), stable=True)
        else:
            order = jnp.arange(w)
        valid_c, r_c, base_c = q.valid[order], r_cand[order], base_cand[order]
        # Check times: one iteration before each predicted completion (offset 0 = now).
        times = jnp.concatenate([jnp.where(s.valid, r_res - 1, 0), jnp.where(valid_c, r_c - 1, 0)])

        def load(valid, r, base):  # (n, T): memory (block tokens) of each at each check time
            on = valid[:, None] & (r[:, None] > times[None, :])
            return view_memory(view, jnp.where(on, base[:, None] + times[None, :], 0))

        resident = jnp.sum(load(s.valid, r_res, base_res), axis=0)  # (T,)
        prefix = jnp.cumsum(load(valid_c, r_c, base_c), axis=0)  # (W, T)
        fits = jnp.all((resident[None, :] + prefix).astype(jnp.float32) <= view.capacity, axis=1)
        seats = s.valid.shape[0] - jnp.sum(s.valid)
        take = fcfs_prefix(fits, valid_c) & (prefix_sum(valid_c) <= seats)
        return jnp.zeros((w,), bool).at[order].set(take), pstate

    return admit


_LENGTH_SCALE = Param(
    default=1.0, low=0.05, high=20.0, log=True,
    doc="multiplicative bias of the output-length predictor: o_hat = ceil(o * length_scale) "
        "(1 = exact lengths, Jaillet et al.'s known-length setting)",
)


def _mc_policy(name: str, shortest_first: bool, eviction: str) -> Policy:
    check_eviction(eviction)
    return Policy(
        name=name,
        params={"length_scale": _LENGTH_SCALE},
        init=no_state,
        admit=_future_memory_admit(shortest_first),
        plan=run_all,
        evict=ordered_eviction(eviction),
        known_lengths=True,
    )


def mc_sf(eviction: str = "newest") -> Policy:
    """Memory-constrained shortest-first, MC-SF (Jaillet et al. 2025, arXiv 2502.07115).

    Non-preemptive. Predicted output ``o_hat = max(ceil(o * length_scale), 1)``; a request
    (resident with ``s`` generated, or candidate with ``g`` kept tokens) needs
    ``base + t`` at ``t`` iterations from now (``base = l + s + 1``) while it runs, i.e. for
    ``t < r = max(o_hat - s, 1)`` (predicted remaining iterations). The projected memory of a
    set ``S`` is ``M_S(t) = sum_{i in S, r_i > t} (base_i + t)``; it rises between completions,
    so ``max_t M_S(t)`` is attained at some ``t = r_i - 1``.

    Candidates are the look-ahead window sorted by ``o_hat`` ascending (ties: queue order).
    Add them in that order while ``M(t) <= C`` for every check time ``t = r_i - 1`` of every
    resident and window candidate (extra check times are harmless: the condition must hold at
    all ``t``) with ``S`` = residents + the candidates added so far + this one, and while a
    slot is free (``max_batch``); stop at the first that fails. Vectorized: a (W, B + W) matrix
    of each sorted candidate's load at each check time, a cumulative sum over candidates
    gives every prefix at once, and the first infeasible prefix blocks the rest (feasibility
    is monotone: adding requests only adds load). With exact predictions the rule never
    overflows; with ``length_scale < 1`` it may, and residents are then evicted in the order
    ``eviction`` (default newest first).
    """
    return _mc_policy("mc_sf", True, eviction)


def mc_benchmark(eviction: str = "newest") -> Policy:
    """MC-Benchmark (Jaillet et al. 2025): the future-memory check of ``mc_sf`` with candidates
    in queue (arrival) order; the first that fails blocks the rest."""
    return _mc_policy("mc_benchmark", False, eviction)


# ---------------------------------------------------------------------------------------
# Production: reserve the output at admission.


def _reserved(prompt, progress, output, max_new):
    """``l + max(min(o, max_new_tokens), s + 1)``: the reservation, or what the request
    already needs in this iteration if that is more."""
    return prompt + jnp.maximum(jnp.minimum(output, max_new), progress + 1)


def _reserve_server_flags(target, values) -> ServerHints:
    """SGLang's nearest: a constant new-token ratio of 1 with the estimate clipped at
    ``max_new_tokens``; vLLM reserves nothing at admission."""
    hints = ServerHints()
    if "max_new_tokens" not in values:
        return hints
    if target.vllm:
        hints.notes.append(Unexpressed("max_new_tokens", "output tokens reserved per request at "
                                       "admission (vLLM reserves none; TensorRT-LLM's "
                                       "GUARANTEED_NO_EVICT does)"))
    else:
        hints.env["SGLANG_INIT_NEW_TOKEN_RATIO"] = "1"
        hints.env["SGLANG_MIN_NEW_TOKEN_RATIO_FACTOR"] = "1"
        hints.env["SGLANG_CLIP_MAX_NEW_TOKENS_ESTIMATION"] = str(int(values["max_new_tokens"]))
        hints.notes.append("reserve_full: nearest is a constant new-token ratio of 1 with the "
                           "estimate clipped at max_new_tokens")
    hints.handled.add("max_new_tokens")
    return hints


def reserve_full(eviction: str = "newest") -> Policy:
    """Full-output reservation: TensorRT-LLM's GUARANTEED_NO_EVICT, TGI's max_new_tokens.

    A request reserves ``R = l + max(min(o, max_new_tokens), s + 1)`` (prompt plus reserved
    output; ``s`` generated or kept tokens, so a reservation never counts less than the
    request needs now). Admit first-come-first-served while
    ``sum_{resident i} R_i + sum_{admitted j} R_j <= C``; the first that does not fit blocks
    the rest. With the default (unlimited) ``max_new_tokens`` every request reserves its whole
    true output ``l + o``, the peak of its ``l + s + 1``, so memory never exceeds ``C``. With
    ``max_new_tokens < o`` the request still generates ``o`` tokens in this model (nothing
    truncates it), so overflow is possible and residents are evicted in the order
    ``eviction`` (default newest first: the simulator's LIFO safety net).
    """
    check_eviction(eviction)

    def admit(key, params, pstate, view):
        del key
        q, s = view.queue, view.slots
        max_new = jnp.clip(params["max_new_tokens"], 0, BIG_OUTPUT).astype(jnp.int32)
        used = jnp.sum(view_memory(view, jnp.where(
            s.valid, _reserved(s.prompt, s.generated, s.output, max_new), 0)))
        need = view_memory(view, jnp.where(
            q.valid, _reserved(q.prompt, q.kept, q.output, max_new), 0))
        ok = (used + prefix_sum(need)).astype(jnp.float32) <= view.capacity
        return fcfs_prefix(ok, q.valid), pstate

    return Policy(
        name="reserve_full",
        params={
            "max_new_tokens": Param(
                default=1e9, low=1, integer=True, log=True,
                doc="output tokens reserved per request (TGI max_new_tokens, TensorRT-LLM "
                    "max_tokens): reserve min(o, max_new_tokens); default reserves the whole "
                    "true output (GUARANTEED_NO_EVICT)",
            ),
        },
        init=no_state,
        admit=admit,
        plan=run_all,
        evict=ordered_eviction(eviction),
        known_lengths=True,
        server_flags=_reserve_server_flags,
    )
