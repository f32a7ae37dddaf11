"""WAIT and Nested WAIT (Ao, Luo, Simchi-Levi & Wang, arXiv 2504.11320): threshold batching.

Notation as in :mod:`jaxsched.core.model`: a resident with ``s`` generated tokens is at *stage*
``s`` (a request just admitted is at stage ``g``, its kept tokens, usually 0); running one
iteration moves it to stage ``s + 1``, and a request of output ``o`` completes when it reaches
stage ``o``. The paper counts ``l' + 1`` stages (a prefill stage that produces no token, then
``l'`` decodes); in this model the prefill iteration produces the first token, so a type-``j``
request occupies ``l'_j`` iterations and holds ``l_j + s + 1`` in its stage-``s`` iteration.
The paper's fluid memory ``M^pi = sum_j n_j (l'_j + 1)(l_j + l'_j / 2)`` exceeds the peak
``sum_j n_j l'_j (l_j + (l'_j + 1) / 2)`` of one full cohort per stage here by
``sum_j n_j l_j``, and its batch time bounds ours the same way, so thresholds that satisfy the
paper's conditions satisfy them here too.

Both policies prefill whole prompts (no chunking), never read output lengths, and keep the
paper's LIFO eviction as a safety net (``eviction="newest"``; other orders in
``EVICTION_ORDERS``): with feasible thresholds it never fires.

``wait`` (known types; classes are the types)
---------------------------------------------
Parameters: per-class thresholds ``n_j`` and a resident cap ``batch_limit``.

*Admission.* ``Q_j`` = class-``j`` requests in the look-ahead window. Classes are taken in
the order of their oldest waiting request (first-come-first-served across cohorts; classes
with none waiting last); class ``j`` admits a *cohort*, its ``n_j`` oldest waiting requests,
iff ``Q_j >= n_j`` (the paper's event ``n_{j0} >= n_j``), the residents plus the
cohorts accepted so far plus this one number at most ``min(batch_limit, max_batch)``, and
memory fits: ``sum_i (l_i + s_i + 1) + sum_{cohort members r so far} (l_r + g_r + 1) <= C``
(a one-step check the paper does not need when ``M^pi <= C``; it keeps a cohort whole instead
of letting the safety net evict part of it). Otherwise class ``j`` admits nothing.

*Plan* (``a_js = min(n_j, n_js)``). Among residents of class ``j`` at stage ``s``, only the
``n_j`` oldest run; the others pause with their cache. Option ``mode``:

* ``"advance"`` (default): every other resident runs in every iteration. Cohorts enter with
  exactly ``n_j`` members at stage ``g = 0`` and all residents advance together, so two
  cohorts never share a stage and the cap never binds; it binds only when an evicted
  request keeps its tokens (``restart_on_evict`` false) and is readmitted at a stage another
  cohort occupies. This is our iteration adaptation of the paper's event rule: the decodes do
  not wait for arrivals, and each stage still holds at most ``n_j`` requests.
* ``"gated"``: the literal event rule of PAPERS.md ("for each such type j and every stage s
  take a_js"): class ``j``'s residents run only in iterations where a class-``j`` cohort was
  admitted; otherwise they pause with their cache (the server "waits" for the threshold).
  Paused residents keep their slots: with fewer than ``sum_j n_j l'_j`` slots (``batch_limit``
  or ``max_batch``) a cohort may never find room and its class stalls; when a class stops
  arriving its last residents wait for ever. Same throughput in the fluid limit, higher
  latency than ``advance``.

Thresholds from the fluid model (``fit_defaults``): with known rates, the smallest integers
with ``d0 + d1 M^pi(n) <= n_j / lambda_j`` for all ``j``, starting from
``ceil(lambda_j dT*)`` (:func:`jaxsched.theory.wait_thresholds`, the paper's conventions,
conservative here); an unstable load (``d1 S >= 1``) or ``M^pi > C`` raises a one-line
:class:`~jaxsched.policies.registry.PolicyError`. Without rates (saturated or trace
workloads): the paper's practical rule ``n_j = max(1, floor(B rho_j / (l'_j + 1)))``
(:func:`jaxsched.theory.wait_practical_thresholds`), ``rho_j`` the class weights and
``B = batch_limit`` (the user's value when the caller passes ``info["params"]``, else the
default).

``nested_wait`` (unknown output lengths)
----------------------------------------
Parameters: per-segment boundaries ``b_1 <= ... <= b_K`` (the paper's sorted output lengths
``l'_1 < ... < l'_m``; position ``k`` of the per-class arrays is segment ``k``, not a class:
the policy reads neither classes nor output lengths), thresholds ``n_1..n_K`` and a
``safety_buffer`` of tokens. Segment 1 covers stages ``[0, b_1)``, segment ``k`` stages
``[b_{k-1}, b_k)``, and the last segment ``K`` extends to infinity (a request longer than
``b_K`` stays in it). Segment ``k >= 2`` is *empty* when ``b_{k-1} = b_k`` (then no stage is
in it and it is skipped). A resident at stage ``b_{k-1}`` (the first stage of segment ``k``)
is *at segment k's entry*: it has finished segment ``k - 1`` without completing.

*Admission* (segment 1's entry is the waiting queue). If the window holds at least ``n_1``
requests, the residents plus ``n_1`` fit in ``max_batch`` and
``sum_i (l_i + s_i + 1) + sum_{cohort} (l_r + g_r + 1) + safety_buffer <= C``,
admit the ``n_1`` oldest waiting requests (a cohort); otherwise admit nothing.

*Plan.* Segment 1 is *ready* iff a cohort was admitted in this iteration; segment ``k >= 2``
is ready iff at least ``n_k`` residents are at its entry. A non-empty segment that is not
ready is *short*; if segment ``k`` is short, ``k`` and every later segment pause while the
earlier ones run ("if segment k is short, k and all later segments pause"). In a running
segment ``k``, the ``n_k`` oldest residents of each stage run (at the entry stage: the
cohort of the ``n_k`` oldest entrants), the rest pause with their cache. A request simply
completes when it reaches its (unknown) length. The rule is the paper's steady state: when
arrivals stop, segment 1 stays short and every resident waits. One addition the paper does
not need: when ``n_1`` requests wait but the cohort is refused (memory with the buffer, or the
resident slots; impossible when ``C >= M^pi + buffer``), the server is not waiting for
arrivals but for memory, so no segment is short and every resident runs (stage caps still
apply) until the cohort fits. Without it, thresholds above the memory condition deadlock:
nothing runs, so nothing completes and no memory is ever freed.

The safety buffer is headroom for the prompts that wait at the segment entries:
``C >= M^pi + buffer`` with ``buffer = sum_{k>=2} (l + l'_{k-1})(n_k + ln(m (1 + zeta T / d0)
/ delta) / theta_k)`` (:func:`jaxsched.theory.nested_wait`), fitted with the thresholds by
``fit_defaults`` (see ``_fit_nested``).

Parameters a given shape can never satisfy (a threshold above the window or the resident
slots, which would stall the policy forever) are refused by :func:`check_shape`.
"""

from __future__ import annotations

import functools
import math
from typing import Any, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jaxsched import theory
from jaxsched.errors import JaxschedError
from jaxsched.core.model import SimShape
from jaxsched.policies.base import (
    check_eviction,
    Decision,
    ordered_eviction,
    Param,
    plan_running,
    Policy,
    SlotView,
    full_need,
    view_memory,
    no_state,
)
from jaxsched.errors import PolicyError
from jaxsched.policies.serving import ServerHints, cap_seats

__all__ = [
    "WAIT_MODES",
    "DEFAULT_BATCH_LIMIT",
    "wait",
    "nested_wait",
    "stage_cap",
    "NESTED_DELTA",
    "nested_chain",
    "check_shape",
]

WAIT_MODES = ("advance", "gated")
"""``advance``: residents decode every iteration, cohorts enter at the threshold (default).
``gated``: a class's residents run only in iterations where a cohort of that class enters."""

DEFAULT_BATCH_LIMIT = 256
"""Default ``batch_limit`` (vLLM's ``max_num_seqs``), also ``B`` of the practical rule."""

_MAX_INT = 1 << 30


def _as_int(x) -> jax.Array:
    return jnp.minimum(x, float(_MAX_INT)).astype(jnp.int32)


def _relaxed_count(x, n) -> jax.Array:
    """``n = floor(x)`` in the forward pass with the gradient of ``x`` (straight through the
    floor): WAIT's thresholds are whole requests, so the relaxed simulator's margins move with
    the threshold one for one."""
    return n.astype(jnp.float32) + (x - jax.lax.stop_gradient(x))


def _check_option(name: str, value: str, allowed: tuple) -> None:
    if value not in allowed:
        raise ValueError(f"{name} must be one of {allowed}, got {value!r}")


def stage_cap(slots: SlotView, group: jax.Array, cap: jax.Array) -> jax.Array:
    """(B,) bool: the resident is among the ``cap[i]`` oldest residents with its ``group`` and
    its stage (``generated``). Pairwise over the slots (already in admission order): no sort."""
    b = slots.valid.shape[0]
    same = (
        slots.valid[:, None]
        & slots.valid[None, :]
        & (group[:, None] == group[None, :])
        & (slots.generated[:, None] == slots.generated[None, :])
        & (jnp.arange(b)[None, :] < jnp.arange(b)[:, None])
    )
    older = jnp.sum(same, axis=1)
    return slots.valid & (older < cap)


# ------------------------------------------------------------------------------ defaults


def _float_list(x) -> list[float] | None:
    if x is None:
        return None
    x = list(x)
    if any(v is None for v in x):
        return None
    return [float(v) for v in x]


def _user(info: dict, name: str, default):
    """A parameter the user set, when the caller passes them as ``info["params"]``."""
    return dict(info.get("params") or {}).get(name, default)


def _fit_wait(info: dict) -> dict:
    """``fit_defaults`` of ``wait`` (module docstring): fluid thresholds with rates, the
    practical rule without. Raises a one-line :class:`PolicyError` when infeasible."""
    output = _float_list(info.get("output_len"))
    if output is None:
        return {}
    rates = _float_list(info.get("rate"))
    try:
        if rates is None:
            shares = _float_list(info.get("weight")) or [1.0] * len(output)
            b = float(np.max(np.asarray(_user(info, "batch_limit", DEFAULT_BATCH_LIMIT))))
            return {"threshold": list(theory.wait_practical_thresholds(output, shares, b).integer)}
        fit = theory.wait_thresholds(info["prompt_len"], output, rates, capacity=info["capacity"],
                                     d0=info["d0"], d1=_theory_d1(info, "wait"))
    except JaxschedError as err:
        raise PolicyError(f"wait: cannot fit thresholds: {err}") from None
    if not fit.feasible:
        raise PolicyError(f"wait: fluid thresholds {list(fit.thresholds)} are infeasible: "
                          f"{fit.reason}")
    return {"threshold": [int(v) for v in fit.thresholds]}


NESTED_DELTA = 0.01
"""Overflow probability the fitted Nested WAIT safety buffer allows over the horizon."""

_NESTED_SCAN = 4096
"""Most cohort sizes ``n_1`` the Nested WAIT fit tries."""


def nested_chain(n1: int, p: Sequence[float]) -> list[int] | None:
    """Thresholds ``n_1, ..., n_m`` from ``n_1`` and the continuation probabilities ``p_k``:
    ``n_k = round(n_{k-1} (1 + p_k) / 2)`` (the middle of the Nested WAIT interval
    ``p_k < n_k / n_{k-1} < 1``), clamped into the interval; None if no integer fits."""
    chain = [int(n1)]
    for pk in p[1:]:
        prev = chain[-1]
        lo, hi = math.floor(pk * prev) + 1, prev - 1
        if lo > hi or hi < 1:
            return None
        chain.append(min(max(int(round(prev * (1 + pk) / 2)), lo), hi))
    return chain


def _fit_nested(info: dict) -> dict:
    """``fit_defaults`` of ``nested_wait``.

    Boundaries: the sorted output lengths (duplicates give empty segments). Types of equal
    length merge (rates add); the common prompt is the longest prompt (conservative). With
    ``p_k = sum_{j>=k} lambda_j / sum_{j>=k-1} lambda_j`` (class weights when rates are
    unknown), thresholds are :func:`nested_chain` of a cohort size ``n_1``, checked with
    :func:`jaxsched.theory.nested_wait` (horizon ``T / d0`` = ``info["horizon"]`` iterations,
    default 10^4; ``delta = NESTED_DELTA``), whose safety buffer
    ``sum_{k>=2} (l + l'_{k-1})(n_k + ln(m (1 + T / d0) / delta) / theta_k)`` becomes
    ``safety_buffer``. With rates: the smallest ``n_1`` meeting every condition
    (``dT(n) < n_1 / sum lambda``, ratios, ``M^pi + buffer <= C``); without (saturated): the
    largest with ``M^pi + buffer <= C``. With rates and no chain meeting the guarantee (the
    strict ratios need larger cohorts than ``C`` holds, e.g. when the rates make ``p_k`` a
    ratio of small integers), the fluid thresholds
    :func:`jaxsched.theory.nested_wait_fluid_thresholds` (``n_k = ceil(Lambda_k t)``, ratios
    at ``p_k``; the overflow guarantee is lost, LIFO eviction stays the safety net) with the
    entry cohorts' memory as ``safety_buffer``. Neither fits: a one-line :class:`PolicyError`.
    """
    output = _float_list(info.get("output_len"))
    prompt = _float_list(info.get("prompt_len"))
    if output is None or prompt is None:
        return {}
    k = len(output)
    bounds = sorted(int(o) for o in output)
    rates = _float_list(info.get("rate"))
    mix = rates if rates is not None else (_float_list(info.get("weight")) or [1.0] * k)
    distinct = sorted({int(o) for o, r in zip(output, mix) if r > 0})
    if not distinct:
        return {"boundary": bounds}
    merged = [sum(r for o, r in zip(output, mix) if int(o) == u) for u in distinct]
    tail = np.cumsum(np.asarray(merged)[::-1])[::-1]
    p = [1.0] + [float(tail[i] / tail[i - 1]) for i in range(1, len(tail))]
    ell = max(prompt)
    d0, d1, cap = (float(info["d0"]), _theory_d1(info, "nested_wait"),
                   float(info["capacity"]))
    horizon = float(info.get("horizon") or 1e4) * d0

    def by_boundary(thresholds):  # per distinct length -> per segment (boundary)
        by_length = dict(zip(distinct, thresholds))
        return [int(by_length.get(b, thresholds[-1])) for b in bounds]

    def check(n1):
        chain = nested_chain(n1, p)
        if chain is None:
            return None
        fit = theory.nested_wait(ell, distinct, merged, chain, d0=d0, d1=d1, horizon=horizon,
                                 delta=NESTED_DELTA, capacity=cap)
        ok = all(fit.ratio_ok) and fit.memory_needed <= cap and (rates is None or fit.rate_ok)
        return fit, ok

    top = max(2, int(cap // (ell + 1)))  # a cohort of n_1 holds at least n_1 (l + 1)
    best = None
    try:
        first = None
        for n1 in range(2, min(top, _NESTED_SCAN) + 1):
            got = check(n1)
            if got is None:
                continue
            if best is None or got[0].memory_needed < best.memory_needed:
                best = got[0]
            if got[1]:
                first = n1
                break
        if first is not None and rates is None:  # largest feasible: grow, then bisect
            lo, hi = first, first
            while hi < top and (check(min(2 * hi, top)) or (None, False))[1]:
                lo = hi = min(2 * hi, top)
            hi = min(2 * hi, top)
            while lo < hi:
                mid = (lo + hi + 1) // 2
                if (check(mid) or (None, False))[1]:
                    lo = mid
                else:
                    hi = mid - 1
            first = lo
    except JaxschedError as err:
        raise PolicyError(f"nested_wait: cannot fit thresholds: {err}") from None
    if first is None:
        why = best.reason if best is not None else "no threshold chain fits the interval (p_k, 1)"
        if rates is not None:  # no guarantee fits: the fluid thresholds, if memory holds them
            try:
                fluid = theory.nested_wait_fluid_thresholds(ell, distinct, merged, capacity=cap,
                                                            d0=d0, d1=d1)
            except JaxschedError as err:
                why += f"; fluid thresholds: {err}"
            else:
                if fluid.feasible:
                    return {"boundary": bounds,
                            "threshold": by_boundary(fluid.thresholds),
                            "safety_buffer": float(fluid.entry_memory)}
                why += f"; fluid thresholds {list(fluid.thresholds)}: {fluid.reason}"
        raise PolicyError(f"nested_wait: no feasible thresholds up to n_1 = "
                          f"{min(top, _NESTED_SCAN)}: {why}")
    fit = check(first)[0]
    return {"boundary": bounds, "threshold": by_boundary(fit.thresholds),
            "safety_buffer": float(sum(fit.buffer))}


def _theory_d1(info: dict, name: str) -> float:
    """The single ``d1`` of the theory's iteration time; refused (one line) when the system's
    ``d1_prefill`` and ``d1_context`` differ (``info["d1"]`` None, ``api.workload_context``)."""
    if info.get("d1") is None:
        raise PolicyError(
            f"{name}: the fitted thresholds use the theory's single d1, but d1_prefill = "
            f"{info.get('d1_prefill')} and d1_context = {info.get('d1_context')} differ; set "
            "system.d1 or the policy's thresholds")
    return float(info["d1"])


# ---------------------------------------------------------------------------------- WAIT


def _wait_server_flags(target, values) -> ServerHints:
    """The batch limit is the server's running-request cap; thresholds (cohorts) have no
    server flag."""
    hints = ServerHints()
    cap_seats(hints, target, values, "batch_limit")
    return hints


def wait(eviction: str = "newest", mode: str = "advance") -> Policy:
    """WAIT with per-class thresholds (module docstring): cohorts of ``n_j`` class-``j``
    requests enter when ``n_j`` wait; at most ``n_j`` residents per class and stage run."""
    check_eviction(eviction)
    _check_option("mode", mode, WAIT_MODES)

    def admit(key, params, pstate, view):
        del key
        q, s = view.queue, view.slots
        n = _as_int(params["threshold"])
        k = n.shape[-1]
        onehot = q.valid[:, None] & (q.cls[:, None] == jnp.arange(k))
        rank = jnp.cumsum(onehot, axis=0)
        member = onehot & (rank <= n)
        size = view_memory(view, jnp.where(q.valid, q.prompt + q.kept + 1, 0))
        mem = jnp.sum(jnp.where(member, size[:, None], 0), axis=0)
        eligible = rank[-1] >= n
        limit = jnp.minimum(_as_int(params["batch_limit"]), s.valid.shape[0])
        seats = limit - jnp.sum(s.valid, dtype=jnp.int32)
        used = jnp.sum(full_need(s, view.block_size))
        # classes in the order of their oldest waiting request (FCFS across cohorts)
        w = q.valid.shape[0]
        first = jnp.min(jnp.where(onehot, jnp.arange(w)[:, None], w), axis=0)
        order = jnp.argsort(first, stable=True)

        def take(carry, x):
            used, seats = carry
            ok_j, mem_j, n_j = x
            ok = ok_j & ((used + mem_j).astype(jnp.float32) <= view.capacity) & (n_j <= seats)
            return (used + jnp.where(ok, mem_j, 0), seats - jnp.where(ok, n_j, 0)), ok

        _, ok_sorted = jax.lax.scan(take, (used, seats), (eligible[order], mem[order], n[order]))
        accept = jnp.zeros_like(ok_sorted).at[order].set(ok_sorted)
        admit = jnp.any(member & accept[None, :], axis=1)
        # relaxed margin: inside the class's cohort (rank <= n_j) and the cohort complete
        # (count_j >= n_j), in requests
        n_soft = _relaxed_count(params["threshold"], n)[q.cls]
        count = rank[-1][q.cls].astype(jnp.float32)
        r_own = jnp.sum(jnp.where(onehot, rank, 0), axis=1).astype(jnp.float32)
        margin = jnp.minimum(n_soft - r_own, count - n_soft) + 0.5
        return Decision(admit, margin), pstate

    def plan(key, params, pstate, view):
        del key, pstate
        s = view.slots
        n = _as_int(params["threshold"])
        run = stage_cap(s, s.cls, n[s.cls])
        if mode == "gated":
            k = n.shape[-1]
            entered = jnp.any(s.valid[:, None] & s.is_new[:, None]
                              & (s.cls[:, None] == jnp.arange(k)), axis=0)
            run = run & entered[s.cls]
        return plan_running(run)

    return Policy(
        name="wait",
        check_shape=functools.partial(check_shape, "wait"),
        params={
            "threshold": Param(
                default=1, low=1, high=float(_MAX_INT), integer=True, log=True, per_class=True,
                doc="n_j: class-j requests per stage; a cohort of n_j enters when n_j wait "
                    "(WAIT threshold; fitted from the fluid model)",
            ),
            "batch_limit": Param(
                default=DEFAULT_BATCH_LIMIT, low=1, high=float(_MAX_INT), integer=True, log=True,
                doc="B: cap on resident requests (the paper's batch limit; also B of the "
                    "practical rule n_j = B rho_j / (l'_j + 1))",
            ),
        },
        init=no_state,
        admit=admit,
        plan=plan,
        evict=ordered_eviction(eviction),
        known_lengths=True,  # needs each request's type (class = type = length) at admission
        fit_defaults=_fit_wait,
        server_flags=_wait_server_flags,
    )


# ---------------------------------------------------------------------------- Nested WAIT


def _segments(params, slots: SlotView):
    """Per resident: segment index (0-based) and whether it sits at its segment's entry;
    per segment: start stage and non-emptiness."""
    b = _as_int(params["boundary"])
    k = b.shape[-1]
    start = jnp.concatenate([jnp.zeros((1,), jnp.int32), b[:-1]])
    nonempty = (b > start) | (jnp.arange(k) == k - 1)
    seg = jnp.sum(slots.generated[:, None] >= b[None, : k - 1], axis=1).astype(jnp.int32)
    at_entry = slots.valid & (slots.generated == start[seg])
    return seg, at_entry, nonempty


def nested_wait(eviction: str = "newest") -> Policy:
    """Nested WAIT for unknown output lengths (module docstring): segments by stage
    boundaries, a cohort of ``n_k`` at each segment's entry, a safety buffer at admission."""
    check_eviction(eviction)

    def admit(key, params, pstate, view):
        del key
        q, s = view.queue, view.slots
        n1 = _as_int(params["threshold"])[0]
        member = q.valid & (jnp.cumsum(q.valid) <= n1)
        size = jnp.sum(view_memory(view, jnp.where(member, q.prompt + q.kept + 1, 0)))
        used = (jnp.sum(full_need(s, view.block_size)) + size).astype(jnp.float32)
        ok = (
            (jnp.sum(q.valid, dtype=jnp.int32) >= n1)
            & (jnp.sum(s.valid, dtype=jnp.int32) + n1 <= s.valid.shape[0])
            & (used + params["safety_buffer"] <= view.capacity)
        )
        return member & ok, pstate

    def plan(key, params, pstate, view):
        del key, pstate
        s = view.slots
        n = _as_int(params["threshold"])
        k = n.shape[-1]
        seg, at_entry, nonempty = _segments(params, s)
        entrants = jnp.sum(at_entry[:, None] & (seg[:, None] == jnp.arange(k)), axis=0)
        ready = (entrants >= n).at[0].set(jnp.any(s.valid & s.is_new))
        blocked = (view.num_waiting >= n[0]) & ~ready[0]
        short = nonempty & ~ready & ~blocked
        seg_runs = jnp.cumsum(short) == 0
        run = stage_cap(s, jnp.zeros_like(seg), n[seg]) & seg_runs[seg]
        return plan_running(run)

    return Policy(
        name="nested_wait",
        check_shape=functools.partial(check_shape, "nested_wait"),
        params={
            "boundary": Param(
                default=1 << 20, low=1, high=float(_MAX_INT), integer=True, log=True,
                per_class=True,
                doc="b_k = l'_k: last stage of segment k (sorted output lengths, position k = "
                    "segment k); default: one unbounded segment",
            ),
            "threshold": Param(
                default=1, low=1, high=float(_MAX_INT), integer=True, log=True, per_class=True,
                doc="n_k: cohort size at segment k's entry and per-stage cap in segment k",
            ),
            "safety_buffer": Param(
                default=0.0, low=0.0,
                doc="tokens of memory kept free at admission against the prompts waiting at "
                    "segment entries (C >= M^pi + buffer)",
            ),
        },
        init=no_state,
        admit=admit,
        plan=plan,
        evict=ordered_eviction(eviction),
        known_lengths=False,
        fit_defaults=_fit_nested,
        server_flags=_wait_server_flags,
    )


# ------------------------------------------------------------------------------- checks


def check_shape(policy: Policy | str, params: Mapping[str, Any], shape: SimShape,
                where: str = "policy.") -> None:
    """Refuse parameters that a ``SimShape`` can never satisfy (the policy would stall):

    * ``wait``: every ``threshold`` <= ``queue_size`` (a cohort is counted in the window) and
      <= ``min(batch_limit, max_batch)`` (it must fit in the resident slots at once).
    * ``nested_wait``: ``threshold[0]`` <= ``queue_size`` and <= ``max_batch``; every other
      ``threshold`` <= ``max_batch`` (entrants are residents); ``boundary`` nondecreasing.

    ``params``: user values or the parameter dict (a leading batch axis is fine). Raises
    :class:`~jaxsched.policies.registry.PolicyError` naming the key. Other policies pass.
    """
    name = policy if isinstance(policy, str) else policy.name
    if name not in ("wait", "nested_wait"):
        return
    values = {k: np.asarray(v, np.float64) for k, v in params.items()}
    n = values.get("threshold")
    if name == "wait":
        if n is None:
            return
        limit = min(float(np.min(values.get("batch_limit", DEFAULT_BATCH_LIMIT))), shape.max_batch)
        if np.any(n > shape.queue_size):
            raise PolicyError(f"{where}threshold must be <= queue_size = {shape.queue_size} "
                              f"(a cohort is counted in the look-ahead window), got {n.tolist()}")
        if np.any(n > limit):
            raise PolicyError(f"{where}threshold must be <= min(batch_limit, max_batch) = "
                              f"{limit:g} (a cohort enters at once), got {n.tolist()}")
        return
    if n is not None:
        n = np.atleast_1d(n)
        first = n[..., 0]
        if np.any(first > min(shape.queue_size, shape.max_batch)):
            raise PolicyError(
                f"{where}threshold[0] must be <= min(queue_size, max_batch) = "
                f"{min(shape.queue_size, shape.max_batch)}, got {n.tolist()}")
        if np.any(n > shape.max_batch):
            raise PolicyError(f"{where}threshold must be <= max_batch = {shape.max_batch} "
                              f"(segment entrants are residents), got {n.tolist()}")
    b = values.get("boundary")
    if b is not None and np.atleast_1d(b).shape[-1] > 1 and np.any(np.diff(b, axis=-1) < 0):
        raise PolicyError(f"{where}boundary must be nondecreasing (sorted output lengths), "
                          f"got {b.tolist()}")
