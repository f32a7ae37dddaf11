"""Closed-form theory of the three papers behind jaxsched, as plain functions.

Three families, one module each, cited by paper and section as in ``PAPERS.md``:

* **WAIT / Nested WAIT**, :mod:`.wait` (Ao, Luo, Simchi-Levi, Wang, arXiv 2504.11320; PAPERS.md Sec. 2):
  fluid equilibrium, WAIT thresholds, Nested WAIT segments, Chernoff exponents and the
  safety buffer. :func:`wait_fluid`, :func:`wait_check`, :func:`wait_thresholds`,
  :func:`wait_practical_thresholds`, :func:`nested_wait`, :func:`nested_wait_theta`,
  :func:`nested_wait_thresholds`.
* **Flow control**, :mod:`.flow_control` (Dong & Cao 2026, arXiv 2604.11001; PAPERS.md Sec. 1), slotted model:
  memory-time ``w_k``, the necessary load condition (Prop. 3.2), Algorithm 1's sufficient
  budget condition (Thm. 3.3), safe budgets, and *our own* Hoeffding bound on the overflow
  probability of Algorithm 2. :func:`flow_load`, :func:`flow_budget_check`,
  :func:`flow_safe_budgets`, :func:`flow_overflow_bound`.
* **Service-induced congestion**, :mod:`.congestion` (Ao, Dong, Luo, Simchi-Levi, arXiv 2606.15555; PAPERS.md
  Sec. 3): the saturated greedy fixed point, the maximal-eviction limit cycle, the gcd test
  of decode lengths, coprime suggestions, and an oscillation detector for simulated memory
  traces. :func:`congestion_homogeneous`, :func:`congestion_heterogeneous`,
  :func:`decode_gcd`, :func:`coprime_decode_lengths`, :func:`detect_oscillation`.

:func:`theory_report` (:mod:`.report`) strings them together into printable rows; the input
checks they share are :mod:`.inputs`. Every public name is importable from this package.

Iteration time: these take the papers' ``tau = d0 + d1 (P + D)`` (``d0, d1`` only). The
simulator's per-prefilling-request term ``d2 R`` (:mod:`jaxsched.core.model`) is outside the
papers' model and not in any bound here; with ``d2 > 0`` the theory describes a system whose
iterations are faster than the simulated ones. The simulator's split coefficients
``d1_prefill``, ``d1_context`` are the papers' ``d1`` when equal; when they differ no formula
here separates them (the WAIT fluid model charges ``d1`` on the memory ``M``, prefill and
context tokens alike), so there is no ``d1`` to pass: ``jaxsched.config.Config.d1`` and the
WAIT policies' threshold fits refuse such a system in one line and ask for ``system.d1``
(no reduction is made silently; ``d1 = d1_context`` would price prefills at a context token's
cost, ``d1 = d1_prefill`` decodes at a prefill token's).

Conventions
-----------
Notation of PAPERS.md: class ``k`` has prompt ``l_k``, output ``o_k`` (``l'_j`` in WAIT, ``l1``
in the congestion paper), rate ``lambda_k``; ``C`` is the KV capacity in tokens.

*Memory-time of one request.* jaxsched's model (:mod:`jaxsched.core.model`) charges a request ``l + j`` in the
iteration where it generates its ``j``-th token (``j = 1..o``); the flow-control and congestion
papers use the same convention (congestion: stage ``j = 0..l1-1`` holds ``l0 + 1 + j``). Its
memory-time is therefore ``w = l o + (o + o^2)/2`` (= the congestion paper's ``C_k``). The WAIT
paper has one extra prefill iteration (stage 0 holding ``l``) and stages ``s = 1..l'`` holding
``l + s``, so its per-request memory-time is ``(l' + 1)(l + l'/2) = w + l``. Each family's
functions use that family's own convention; :func:`memory_time` and :func:`wait_memory_time`
give both.

*Errors.* Malformed input (wrong lengths, negative rates, ...) raises a one-line
:class:`~jaxsched.errors.JaxschedError` naming the function and argument. Where
"infeasible" or "unstable" is an answer rather than a mistake, the result carries
``feasible``/``stable`` flags and a one-line ``reason``; each function's docstring says which.

The raw formulas :func:`memory_time`, :func:`wait_memory_time`, :func:`wait_fluid_memory`,
:func:`greedy_fixed_point` and :func:`greedy_cycle_throughput` do no validation and accept
numpy or ``jax.numpy`` arrays (traceable, differentiable); everything else is numpy/Python.
"""

from __future__ import annotations

from jaxsched.core.model import memory_time  # w = l o + (o + o^2)/2, the model's
from jaxsched.theory import congestion, flow_control, report, wait
from jaxsched.theory.congestion import (
    CoprimeSuggestion,
    DecodeGcd,
    GreedyCongestion,
    HeteroCongestion,
    Oscillation,
    congestion_heterogeneous,
    congestion_homogeneous,
    coprime_decode_lengths,
    decode_gcd,
    detect_oscillation,
    greedy_cycle_throughput,
    greedy_fixed_point,
)
from jaxsched.theory.flow_control import (
    FlowBudgetCheck,
    FlowLoad,
    FlowOverflowBound,
    FlowSafeBudgets,
    flow_budget_check,
    flow_load,
    flow_overflow_bound,
    flow_safe_budgets,
)
from jaxsched.theory.report import ReportRow, theory_report
from jaxsched.theory.wait import (
    NestedWait,
    NestedWaitFluid,
    WaitFluid,
    WaitPractical,
    WaitThresholds,
    nested_wait,
    nested_wait_fluid_thresholds,
    nested_wait_theta,
    nested_wait_thresholds,
    wait_check,
    wait_fluid,
    wait_fluid_memory,
    wait_memory_time,
    wait_practical_thresholds,
    wait_thresholds,
)

__all__ = [
    "memory_time",
    *wait.__all__,
    *flow_control.__all__,
    *congestion.__all__,
    *report.__all__,
]
