"""Closed-form theory of the three papers behind jaxsched, as plain functions.

Three families, each cited by paper and section as in ``PAPERS.md``:

* **WAIT / Nested WAIT** (Ao, Luo, Simchi-Levi, Wang, arXiv 2504.11320; PAPERS.md Sec. 2):
  fluid equilibrium, WAIT thresholds, Nested WAIT segments, Chernoff exponents and the
  safety buffer. :func:`wait_fluid`, :func:`wait_check`, :func:`wait_thresholds`,
  :func:`wait_practical_thresholds`, :func:`nested_wait`, :func:`nested_wait_theta`,
  :func:`nested_wait_thresholds`.
* **Flow control** (Dong & Cao 2026, arXiv 2604.11001; PAPERS.md Sec. 1), slotted model:
  memory-time ``w_k``, the necessary load condition (Prop. 3.2), Algorithm 1's sufficient
  budget condition (Thm. 3.3), safe budgets, and *our own* Hoeffding bound on the overflow
  probability of Algorithm 2. :func:`flow_load`, :func:`flow_budget_check`,
  :func:`flow_safe_budgets`, :func:`flow_overflow_bound`.
* **Service-induced congestion** (Ao, Dong, Luo, Simchi-Levi, arXiv 2606.15555; PAPERS.md
  Sec. 3): the saturated greedy fixed point, the maximal-eviction limit cycle, the gcd test
  of decode lengths, coprime suggestions, and an oscillation detector for simulated memory
  traces. :func:`congestion_homogeneous`, :func:`congestion_heterogeneous`,
  :func:`decode_gcd`, :func:`coprime_decode_lengths`, :func:`detect_oscillation`.

:func:`theory_report` strings them together into printable rows.

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

*Memory-time of one request.* jaxsched's model (``model.py``) charges a request ``l + j`` in the
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

import dataclasses
import itertools
import math
from functools import reduce
from typing import Any, NamedTuple, Sequence

import numpy as np

from jaxsched.core.model import memory_time  # w = l o + (o + o^2)/2, the model's (re-exported)
from jaxsched.errors import JaxschedError

__all__ = [
    # raw formulas (numpy or jax.numpy)
    "memory_time",
    "wait_memory_time",
    "wait_fluid_memory",
    "greedy_fixed_point",
    "greedy_cycle_throughput",
    # WAIT
    "WaitFluid",
    "wait_fluid",
    "WaitThresholds",
    "wait_check",
    "wait_thresholds",
    "WaitPractical",
    "wait_practical_thresholds",
    "NestedWait",
    "nested_wait",
    "nested_wait_theta",
    "nested_wait_thresholds",
    "NestedWaitFluid",
    "nested_wait_fluid_thresholds",
    # flow control
    "FlowLoad",
    "flow_load",
    "FlowBudgetCheck",
    "flow_budget_check",
    "FlowSafeBudgets",
    "flow_safe_budgets",
    "FlowOverflowBound",
    "flow_overflow_bound",
    # congestion
    "GreedyCongestion",
    "congestion_homogeneous",
    "DecodeGcd",
    "decode_gcd",
    "HeteroCongestion",
    "congestion_heterogeneous",
    "CoprimeSuggestion",
    "coprime_decode_lengths",
    "Oscillation",
    "detect_oscillation",
    # report
    "ReportRow",
    "theory_report",
]

_INT_TOL = 1e-9  # relative tolerance when rounding a real that should be an integer up


# --------------------------------------------------------------------------------------------
# validation helpers
# --------------------------------------------------------------------------------------------


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _vec(fn: str, name: str, values: Any, *, low: float | None = None, strict: bool = False,
         integer: bool = False) -> np.ndarray:
    """A non-empty finite 1-D float array, each entry ``>= low`` (``> low`` if strict)."""
    try:
        arr = np.asarray(values, dtype=float)
    except (TypeError, ValueError):
        raise JaxschedError(f"{fn}: {name} must be a list of numbers, got {_short(values)}") from None
    if arr.ndim == 0:
        arr = arr.reshape(1)
    if arr.ndim != 1 or arr.size == 0:
        raise JaxschedError(f"{fn}: {name} must be a non-empty list of numbers, got {_short(values)}")
    if not np.all(np.isfinite(arr)):
        raise JaxschedError(f"{fn}: {name} must be finite, got {_short(values)}")
    if low is not None:
        bad = arr <= low if strict else arr < low
        if np.any(bad):
            op = ">" if strict else ">="
            raise JaxschedError(f"{fn}: every {name} must be {op} {low:g}, got {_short(values)}")
    if integer and not np.all(arr == np.round(arr)):
        raise JaxschedError(f"{fn}: {name} must be integers, got {_short(values)}")
    return arr


def _num(fn: str, name: str, value: Any, *, low: float | None = None, strict: bool = False,
         high: float | None = None, high_strict: bool = False, allow_inf: bool = False) -> float:
    try:
        x = float(value)
    except (TypeError, ValueError):
        raise JaxschedError(f"{fn}: {name} must be a number, got {_short(value)}") from None
    if math.isnan(x) or (math.isinf(x) and not allow_inf):
        raise JaxschedError(f"{fn}: {name} must be finite, got {value!r}")
    if low is not None and (x <= low if strict else x < low):
        raise JaxschedError(f"{fn}: {name} must be {'>' if strict else '>='} {low:g}, got {value!r}")
    if high is not None and (x >= high if high_strict else x > high):
        raise JaxschedError(f"{fn}: {name} must be {'<' if high_strict else '<='} {high:g}, got {value!r}")
    return x


def _same_len(fn: str, **arrays: np.ndarray) -> int:
    sizes = {name: a.size for name, a in arrays.items()}
    first_name, n = next(iter(sizes.items()))
    for name, size in sizes.items():
        if size != n:
            raise JaxschedError(f"{fn}: {name} has {size} entries but {first_name} has {n}")
    return n


def _ceil(x: float) -> int:
    """``ceil`` that forgives floating-point noise just above an integer."""
    return int(math.ceil(x - _INT_TOL * max(1.0, abs(x))))


def _arr(x):
    """Pass arrays (numpy or jax) through untouched; turn lists and scalars into numpy."""
    return x if hasattr(x, "shape") else np.asarray(x, dtype=float)


def _tup(a) -> tuple:
    return tuple(float(v) for v in np.asarray(a, dtype=float).ravel())


# --------------------------------------------------------------------------------------------
# raw formulas (numpy or jax.numpy; no validation)
# --------------------------------------------------------------------------------------------


def wait_memory_time(prompt_len, output_len):
    """WAIT's memory per prompt per unit arrival rate: ``(l' + 1)(l + l'/2)``.

    Ao, Luo, Simchi-Levi, Wang (arXiv 2504.11320), fluid model (PAPERS.md Sec. 2): the sum
    of ``l + s`` over the ``l' + 1`` stages ``s = 0..l'`` (prefill stage included), i.e.
    ``memory_time(l, l') + l``. Elementwise; numpy or ``jax.numpy``.
    """
    l, o = _arr(prompt_len), _arr(output_len)
    return (o + 1) * (l + o / 2)


def wait_fluid_memory(rate, prompt_len, output_len, d0, d1):
    """Fluid equilibrium memory ``M* = d0 S / (1 - d1 S)``, ``S = sum_j lambda_j (l'_j+1)(l_j + l'_j/2)``.

    arXiv 2504.11320, fluid model (PAPERS.md Sec. 2). Unchecked: meaningless (negative or
    infinite) when ``d1 S >= 1``; use :func:`wait_fluid` for a checked answer. Reduces over
    the last axis; numpy or ``jax.numpy``.
    """
    s = (_arr(rate) * wait_memory_time(prompt_len, output_len)).sum(-1)
    return d0 * s / (1 - d1 * s)


def greedy_fixed_point(capacity, prompt_len, output_len):
    """Saturated greedy's eviction-free fixed point ``x* = 2M / (l1 (2 l0 + l1 + 1))``.

    Admissions (= completions) per iteration; Ao, Dong, Luo, Simchi-Levi (arXiv 2606.15555),
    homogeneous saturated regime (PAPERS.md Sec. 3). Equals ``M / memory_time(l0, l1)``.
    Elementwise; numpy or ``jax.numpy``.
    """
    m, l0, l1 = _arr(capacity), _arr(prompt_len), _arr(output_len)
    return 2 * m / (l1 * (2 * l0 + l1 + 1))


def greedy_cycle_throughput(capacity, prompt_len, output_len):
    """Throughput of the maximal-eviction limit cycle ``M / (l1 (l0 + l1))`` per iteration.

    arXiv 2606.15555 (PAPERS.md Sec. 3): a cohort of ``M/(l0+1)`` is admitted, evictions
    trim it to ``M/(l0+1+j)`` at stage ``j``, ``M/(l0+l1)`` complete every ``l1`` iterations.
    Elementwise; numpy or ``jax.numpy``.
    """
    m, l0, l1 = _arr(capacity), _arr(prompt_len), _arr(output_len)
    return m / (l1 * (l0 + l1))


# --------------------------------------------------------------------------------------------
# WAIT: fluid model and thresholds (arXiv 2504.11320)
# --------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class WaitFluid:
    """The WAIT fluid equilibrium (see :func:`wait_fluid`). Per-type tuples follow input order."""

    stable: bool  # d1 * S < 1
    feasible: bool  # stable and capacity >= M*
    reason: str  # one line
    prompt_len: tuple[float, ...]  # l_j
    output_len: tuple[float, ...]  # l'_j
    rate: tuple[float, ...]  # lambda_j
    capacity: float  # C
    stage_memory_time: tuple[float, ...]  # (l'_j + 1)(l_j + l'_j/2)
    load: float  # S = sum_j lambda_j (l'_j + 1)(l_j + l'_j/2)
    type_load: tuple[float, ...]  # lambda_j d1 (l'_j + 1)(l_j + l'_j/2); >= 1: type j alone unstable
    unstable_types: tuple[int, ...]  # indices j with type_load >= 1
    memory: float  # M* = d0 S / (1 - d1 S); inf if unstable
    iteration_time: float  # dT* = d0 / (1 - d1 S); inf if unstable
    per_stage: tuple[float, ...]  # n*_j = lambda_j dT*: type-j prompts at each of its l'_j+1 stages
    per_class_prompts: tuple[float, ...]  # n*_j (l'_j + 1)
    per_class_memory: tuple[float, ...]  # n*_j (l'_j + 1)(l_j + l'_j/2)
    token_throughput: float  # sum_j lambda_j l'_j (decode tokens per unit time)
    request_throughput: float  # sum_j lambda_j (completions per unit time)

    def stage_memory(self, j: int) -> np.ndarray:
        """Equilibrium memory of type ``j`` at stages ``s = 0..l'_j``: ``n*_j (l_j + s)``."""
        s = np.arange(int(round(self.output_len[j])) + 1)
        return self.per_stage[j] * (self.prompt_len[j] + s)


def _wait_inputs(fn, prompt_len, output_len, rate):
    l = _vec(fn, "prompt_len", prompt_len, low=0)
    o = _vec(fn, "output_len", output_len, low=1)
    lam = _vec(fn, "rate", rate, low=0)
    _same_len(fn, prompt_len=l, output_len=o, rate=lam)
    return l, o, lam


def wait_fluid(prompt_len: Sequence[float], output_len: Sequence[float], rate: Sequence[float],
               *, capacity: float, d0: float, d1: float) -> WaitFluid:
    """Fluid equilibrium of the WAIT model.

    Ao, Luo, Simchi-Levi, Wang (arXiv 2504.11320), fluid model (PAPERS.md Sec. 2). Type ``j``
    arrives at rate ``lambda_j``, has ``l'_j + 1`` stages (prefill, then ``l'_j`` decodes) and at
    stage ``s`` holds ``l_j + s`` tokens; an iteration lasts ``d0 + d1 * (tokens in batch)``::

        S    = sum_j lambda_j (l'_j + 1)(l_j + l'_j / 2)
        dT*  = d0 + d1 M* = d0 / (1 - d1 S)         (equilibrium iteration time)
        M*   = d0 S / (1 - d1 S)                    (equilibrium memory)
        n*_j = lambda_j dT*                          (type-j prompts per stage)
        Throughput* = sum_j lambda_j l'_j            (tokens per unit time; the upper bound
                                                      on every policy when C >= M*)

    Instability: if ``lambda_j d1 (l'_j+1)(l_j + l'_j/2) >= 1`` for some ``j`` latency grows
    like ``T`` under every policy; more generally the fluid has no equilibrium when
    ``d1 S >= 1`` (implied by any per-type violation).

    Unstable or too-small ``capacity`` is an answer, not an error: ``stable``/``feasible``
    flags with a one-line ``reason``; unstable gives ``inf`` for ``M*``, ``dT*``, ``n*``.
    Raises :class:`JaxschedError` on malformed input (lengths, negative rates, ``d0 <= 0``).
    """
    fn = "wait_fluid"
    l, o, lam = _wait_inputs(fn, prompt_len, output_len, rate)
    cap = _num(fn, "capacity", capacity, low=0, allow_inf=True)
    d0 = _num(fn, "d0", d0, low=0, strict=True)
    d1 = _num(fn, "d1", d1, low=0)
    smt = wait_memory_time(l, o)
    s = float(np.sum(lam * smt))
    type_load = lam * d1 * smt
    unstable_types = tuple(int(j) for j in np.nonzero(type_load >= 1)[0])
    stable = d1 * s < 1
    if stable:
        dt = d0 / (1 - d1 * s)
        mem = d0 * s / (1 - d1 * s)
        per_stage = lam * dt
        feasible = cap >= mem
        reason = (f"stable (d1*S = {d1 * s:.4g} < 1) and C = {cap:.6g} >= M* = {mem:.6g}" if feasible
                  else f"C = {cap:.6g} < M* = {mem:.6g}: the fluid equilibrium does not fit")
    else:
        dt = mem = math.inf
        per_stage = np.full_like(lam, math.inf)
        feasible = False
        which = (f"; type(s) {list(unstable_types)} alone have lambda_j*d1*(l'_j+1)(l_j+l'_j/2) >= 1"
                 if unstable_types else "")
        reason = (f"unstable: d1*S = {d1 * s:.4g} >= 1, latency grows with T under every "
                  f"policy{which}")
    with np.errstate(invalid="ignore"):
        per_class_prompts = per_stage * (o + 1)
        per_class_memory = per_stage * smt
    return WaitFluid(
        stable=bool(stable), feasible=bool(feasible), reason=reason,
        prompt_len=_tup(l), output_len=_tup(o), rate=_tup(lam), capacity=cap,
        stage_memory_time=_tup(smt), load=s, type_load=_tup(type_load),
        unstable_types=unstable_types, memory=float(mem), iteration_time=float(dt),
        per_stage=_tup(per_stage), per_class_prompts=_tup(per_class_prompts),
        per_class_memory=_tup(per_class_memory),
        token_throughput=float(np.sum(lam * o)), request_throughput=float(np.sum(lam)),
    )


@dataclasses.dataclass(frozen=True)
class WaitThresholds:
    """WAIT thresholds and their conditions (see :func:`wait_check`)."""

    thresholds: tuple[float, ...]  # n_j, prompts per stage (integers from wait_thresholds)
    memory: float  # M^pi = sum_j n_j (l'_j + 1)(l_j + l'_j/2)
    iteration_time: float  # d0 + d1 M^pi
    time_per_threshold: tuple[float, ...]  # n_j / lambda_j (inf where lambda_j = 0)
    rate_ok: tuple[bool, ...]  # d0 + d1 M^pi <= n_j / lambda_j
    memory_ok: bool  # M^pi <= C
    feasible: bool  # all rate_ok and memory_ok
    reason: str
    capacity: float


def wait_check(prompt_len: Sequence[float], output_len: Sequence[float], rate: Sequence[float],
               thresholds: Sequence[float], *, capacity: float, d0: float,
               d1: float) -> WaitThresholds:
    """Check WAIT thresholds ``n_j`` against the conditions of arXiv 2504.11320 (PAPERS.md Sec. 2)::

        d0 + d1 M^pi <= n_j / lambda_j  for all j,    M^pi = sum_j n_j (l'_j + 1)(l_j + l'_j/2) <= C.

    The first keeps each type's stage queue from growing (a batch of ``n_j`` per stage is
    launched at least as often as ``n_j`` type-``j`` prompts arrive); the second rules out
    overflow by construction. Violations are reported in the flags and ``reason``; malformed
    input raises :class:`JaxschedError`.
    """
    fn = "wait_check"
    l, o, lam = _wait_inputs(fn, prompt_len, output_len, rate)
    n = _vec(fn, "thresholds", thresholds, low=0)
    _same_len(fn, prompt_len=l, thresholds=n)
    cap = _num(fn, "capacity", capacity, low=0, allow_inf=True)
    d0 = _num(fn, "d0", d0, low=0, strict=True)
    d1 = _num(fn, "d1", d1, low=0)
    return _wait_check(l, o, lam, n, cap, d0, d1)


def _wait_check(l, o, lam, n, cap, d0, d1) -> WaitThresholds:
    mem = float(np.sum(n * wait_memory_time(l, o)))
    t = d0 + d1 * mem
    with np.errstate(divide="ignore", invalid="ignore"):
        per = np.where(lam > 0, n / np.where(lam > 0, lam, 1.0), math.inf)
    rate_ok = per >= t * (1 - 1e-12)
    memory_ok = mem <= cap
    bad = [int(j) for j in np.nonzero(~rate_ok)[0]]
    if bad:
        j = bad[0]
        reason = (f"type {j}: n_j/lambda_j = {per[j]:.6g} < d0 + d1*M^pi = {t:.6g} "
                  f"(its stage queue grows)")
    elif not memory_ok:
        reason = f"M^pi = {mem:.6g} > C = {cap:.6g}"
    else:
        reason = f"d0 + d1*M^pi = {t:.6g} <= min_j n_j/lambda_j and M^pi = {mem:.6g} <= C"
    is_int = np.all(n == np.round(n))
    return WaitThresholds(
        thresholds=tuple(int(v) for v in n) if is_int else _tup(n), memory=mem,
        iteration_time=float(t), time_per_threshold=_tup(per),
        rate_ok=tuple(bool(b) for b in rate_ok), memory_ok=bool(memory_ok),
        feasible=bool(not bad and memory_ok), reason=reason, capacity=cap)


def wait_thresholds(prompt_len: Sequence[float], output_len: Sequence[float],
                    rate: Sequence[float], *, capacity: float, d0: float, d1: float,
                    max_iter: int = 100_000) -> WaitThresholds:
    """The smallest integer WAIT thresholds satisfying the rate conditions (arXiv 2504.11320).

    Conditions (PAPERS.md Sec. 2): ``d0 + d1 M^pi <= n_j / lambda_j`` for all ``j`` with
    ``M^pi = sum_j n_j (l'_j + 1)(l_j + l'_j/2)``, and ``M^pi <= C``.

    Solution: with ``f(t) = d0 + d1 M(ceil(lambda t))`` (the iteration time of the integer
    thresholds ``n_j = ceil(lambda_j t)``), any feasible ``n`` dominates
    ``ceil(lambda tau)`` for ``tau = d0 + d1 M(n)``, which is itself feasible, so the
    componentwise-smallest feasible thresholds are ``ceil(lambda t)`` at the least ``t`` with
    ``f(t) <= t``. Every feasible ``t`` is ``>= dT* = d0/(1 - d1 S)`` (the real solution of
    ``t = d0 + d1 S t``), so we start at ``t = dT*``, round up, re-check, and iterate
    ``t <- f(t)`` (nondecreasing, bounded when ``d1 S < 1``) until the thresholds stop
    changing. Thresholds are at least 1 (a type with ``lambda_j = 0`` gets 1).

    ``M^pi > C`` is an answer: ``feasible = False`` with a reason (the thresholds are still
    the smallest rate-feasible ones). ``d1 S >= 1`` has no finite thresholds and raises
    :class:`JaxschedError`, as does malformed input.
    """
    fn = "wait_thresholds"
    l, o, lam = _wait_inputs(fn, prompt_len, output_len, rate)
    cap = _num(fn, "capacity", capacity, low=0, allow_inf=True)
    d0 = _num(fn, "d0", d0, low=0, strict=True)
    d1 = _num(fn, "d1", d1, low=0)
    fluid = wait_fluid(l, o, lam, capacity=cap, d0=d0, d1=d1)
    if not fluid.stable:
        raise JaxschedError(f"{fn}: no finite thresholds, {fluid.reason}")
    n, _ = _smallest_thresholds(fn, lam, wait_memory_time(l, o), fluid.iteration_time, d0, d1,
                                fluid.load, max_iter)
    return _wait_check(l, o, lam, n, cap, d0, d1)


def _smallest_thresholds(fn: str, rate: np.ndarray, weight: np.ndarray, t: float, d0: float,
                         d1: float, load: float, max_iter: int) -> tuple[np.ndarray, float]:
    """The componentwise-smallest integers ``n >= 1`` with ``d0 + d1 sum(n weight) <= n / rate``:
    ``n = ceil(rate t)`` iterated with ``t <- d0 + d1 sum(n weight)`` from the fluid ``t``
    (nondecreasing, settles when ``d1 load < 1``). Returns ``(n, t)`` (floats)."""
    n = None
    for _ in range(max_iter):
        new = np.array([max(1, _ceil(x)) for x in rate * t], dtype=float)
        if n is not None and np.array_equal(new, n):
            return n, t
        n = new
        t = d0 + d1 * float(np.sum(n * weight))
    raise JaxschedError(f"{fn}: thresholds did not settle in {max_iter} rounds "
                        f"(d1*S = {d1 * load:.6g} is too close to 1)")


@dataclasses.dataclass(frozen=True)
class WaitPractical:
    """Practical WAIT thresholds ``n_j = B rho_j / (l'_j + 1)`` (see :func:`wait_practical_thresholds`)."""

    share: tuple[float, ...]  # rho_j = lambda_j / sum lambda
    real: tuple[float, ...]  # B rho_j / (l'_j + 1)
    integer: tuple[int, ...]  # max(1, floor(real))


def wait_practical_thresholds(output_len: Sequence[float], rate: Sequence[float],
                              batch_limit: float) -> WaitPractical:
    """Thresholds used in the WAIT experiments: ``n_j = B rho_j / (l'_j + 1)``, ``rho_j = lambda_j / sum lambda``.

    arXiv 2504.11320, experiments (PAPERS.md Sec. 2). ``B`` is a batch limit: with ``n_j``
    prompts at each of the ``l'_j + 1`` stages a full batch has ``sum_j n_j (l'_j+1) = B``.
    Integers round down (so the batch stays within ``B``) but never below 1. Check the
    result with :func:`wait_check`.
    """
    fn = "wait_practical_thresholds"
    o = _vec(fn, "output_len", output_len, low=1)
    lam = _vec(fn, "rate", rate, low=0)
    _same_len(fn, output_len=o, rate=lam)
    b = _num(fn, "batch_limit", batch_limit, low=0, strict=True)
    if lam.sum() <= 0:
        raise JaxschedError(f"{fn}: rates sum to 0; shares are undefined")
    rho = lam / lam.sum()
    real = b * rho / (o + 1)
    return WaitPractical(share=_tup(rho), real=_tup(real),
                         integer=tuple(max(1, int(math.floor(x + _INT_TOL))) for x in real))


# --------------------------------------------------------------------------------------------
# Nested WAIT (arXiv 2504.11320)
# --------------------------------------------------------------------------------------------


def _log_mgf(theta: float, p: float) -> float:
    """``log(1 - p + p e^theta)``, accurate for small and large ``theta``."""
    if theta < 30.0:
        return math.log1p(p * math.expm1(theta))
    return theta + math.log(p) + math.log1p((1 - p) / p * math.exp(-theta))


def _brentq(f, lo: float, hi: float) -> float:
    try:
        from scipy.optimize import brentq
    except ImportError:  # plain bisection; f(lo) < 0 < f(hi)
        for _ in range(200):
            mid = 0.5 * (lo + hi)
            if f(mid) < 0:
                lo = mid
            else:
                hi = mid
        return 0.5 * (lo + hi)
    return float(brentq(f, lo, hi, xtol=1e-14, rtol=4 * np.finfo(float).eps, maxiter=500))


def nested_wait_theta(n_prev: float, n_next: float, p: float) -> float:
    """Chernoff exponent ``theta_k > 0``: the positive root of ``exp(-theta n_k)(1 - p_k + p_k e^theta)^{n_{k-1}} = 1``.

    Nested WAIT's safety buffer, arXiv 2504.11320 (PAPERS.md Sec. 2). Of ``n_{k-1}`` prompts
    crossing into segment ``k`` each continues with probability ``p_k``; ``theta_k`` makes
    ``P(Binomial(n_{k-1}, p_k) >= n_k + x) <= exp(-theta_k x)``.

    Root finding: take logs, ``g(theta) = n_{k-1} log(1 - p + p e^theta) - theta n_k``.
    ``g(0) = 0``; ``g`` is convex (a log moment generating function); ``g'(0) = n_{k-1} p - n_k
    < 0`` iff ``n_k / n_{k-1} > p``; and since ``log(1 - p + p e^theta) >= log p + theta``,
    ``g(theta) >= theta (n_{k-1} - n_k) + n_{k-1} log p > 0`` for
    ``theta > hi = n_{k-1} log(1/p) / (n_{k-1} - n_k)`` when ``n_k < n_{k-1}``. So under the
    Nested WAIT condition ``p < n_k / n_{k-1} < 1`` there is exactly one positive root, in
    ``(0, hi]``; ``g < 0`` just right of 0, so halving from ``hi`` finds ``lo`` with
    ``g(lo) < 0`` and ``brentq`` (scipy; bisection if scipy is absent) solves on ``[lo, hi]``.
    Raises :class:`JaxschedError` if the condition fails (no positive root).
    """
    fn = "nested_wait_theta"
    a = _num(fn, "n_prev", n_prev, low=0, strict=True)
    b = _num(fn, "n_next", n_next, low=0, strict=True)
    p = _num(fn, "p", p, low=0, strict=True, high=1, high_strict=True)
    if not p < b / a < 1:
        raise JaxschedError(f"{fn}: need p < n_next/n_prev < 1 for a positive root, got "
                            f"p = {p:.6g}, n_next/n_prev = {b / a:.6g}")

    def g(theta: float) -> float:
        return a * _log_mgf(theta, p) - theta * b

    hi = a * math.log(1 / p) / (a - b)
    hi = hi * (1 + 1e-9) + 1e-12
    lo = hi
    for _ in range(2000):
        lo *= 0.5
        if g(lo) < 0:
            break
    else:  # pragma: no cover - needs n_k/n_{k-1} within rounding of p
        raise JaxschedError(f"{fn}: root too close to 0 to bracket (n_next/n_prev ~ p)")
    if g(hi) <= 0:  # pragma: no cover - hi is a proven upper bound
        return hi
    return _brentq(g, lo, hi)


@dataclasses.dataclass(frozen=True)
class NestedWait:
    """Nested WAIT segments, conditions and memory (see :func:`nested_wait`). Index ``k-1`` for
    segment ``k``; the ``*_k>=2`` tuples have ``m-1`` entries, for ``k = 2..m``."""

    prompt_len: float  # l (common)
    output_len: tuple[int, ...]  # l'_1 < ... < l'_m
    rate: tuple[float, ...]  # lambda_1..lambda_m
    thresholds: tuple[int, ...]  # n_1..n_m
    segment_length: tuple[float, ...]  # delta_k
    segment_mean_stage: tuple[float, ...]  # sbar_k
    continue_prob: tuple[float, ...]  # p_k (p_1 = 1: every arrival enters segment 1)
    base_memory: float  # M^pi = sum_k n_k (l + sbar_k) delta_k
    iteration_time: float  # dT(n) = d0 + d1 M^pi
    rate_ok: bool  # dT(n) < n_1 / sum_j lambda_j
    ratio_ok: tuple[bool, ...]  # k >= 2: p_k < n_k / n_{k-1} < 1
    theta: tuple[float, ...]  # k >= 2: Chernoff exponents; nan where ratio_ok fails
    log_term: float  # ln(m (1 + zeta T / d0) / delta)
    buffer: tuple[float, ...]  # k >= 2: (l + l'_{k-1}) (n_k + log_term / theta_k)
    memory_needed: float  # M^pi + sum buffer; inf if a ratio condition fails
    capacity: float | None
    feasible: bool  # conditions hold and (capacity is None or memory_needed <= capacity)
    reason: str


def _nested_inputs(fn, prompt_len, output_len, rate):
    l = _num(fn, "prompt_len", prompt_len, low=0)
    o = _vec(fn, "output_len", output_len, low=1, integer=True)
    lam = _vec(fn, "rate", rate, low=0, strict=True)
    _same_len(fn, output_len=o, rate=lam)
    if np.any(np.diff(o) <= 0):
        raise JaxschedError(f"{fn}: output_len must be strictly increasing, got {_short(list(o))}")
    return l, o, lam


def _segments(l: float, o: np.ndarray, lam: np.ndarray):
    """delta_k, sbar_k, p_k (p_1 = 1) for Nested WAIT."""
    prev = np.concatenate([[-1.0], o[:-1]])  # l'_0 = -1 makes segment 1 cover stages 0..l'_1
    delta = o - prev
    sbar = (prev + 1 + o) / 2
    tail = np.cumsum(lam[::-1])[::-1]  # sum_{j >= k} lambda_j
    p = np.ones_like(lam)
    p[1:] = tail[1:] / tail[:-1]
    return delta, sbar, p


def nested_wait(prompt_len: float, output_len: Sequence[int], rate: Sequence[float],
                thresholds: Sequence[int], *, d0: float, d1: float, horizon: float,
                zeta: float = 1.0, delta: float = 0.01,
                capacity: float | None = None) -> NestedWait:
    """Nested WAIT for unknown output lengths: segments, conditions and memory needed.

    Ao, Luo, Simchi-Levi, Wang (arXiv 2504.11320), Nested WAIT (PAPERS.md Sec. 2). Common
    prompt ``l``, output lengths ``l'_1 < ... < l'_m``, rates ``lambda_j``, thresholds ``n_k``.
    Segment 1 covers stages ``0..l'_1``, segment ``k >= 2`` covers ``l'_{k-1}+1..l'_k``::

        delta_1 = l'_1 + 1,            sbar_1 = l'_1 / 2
        delta_k = l'_k - l'_{k-1},     sbar_k = (l'_{k-1} + 1 + l'_k) / 2
        p_k     = sum_{j>=k} lambda_j / sum_{j>=k-1} lambda_j      (k >= 2)
        M^pi    = sum_k n_k (l + sbar_k) delta_k                   (base memory)
        conditions: dT(n) < n_1 / sum_j lambda_j,   p_k < n_k / n_{k-1} < 1  (k >= 2)
        C >= M^pi + sum_{k>=2} (l + l'_{k-1}) (n_k + ln(m (1 + zeta T / d0) / delta) / theta_k)

    with ``theta_k`` from :func:`nested_wait_theta`; the sum is the safety buffer making the
    overflow probability over horizon ``T`` at most ``delta`` (``zeta``: the rates' scaling
    factor). We take ``dT(n) = d0 + d1 M^pi``, the iteration time of a batch holding the
    base memory. Failed conditions and ``memory_needed > capacity`` are answers (flags,
    ``reason``, ``memory_needed = inf`` when a ratio fails); malformed input (unsorted or
    non-integer outputs, non-positive rates, ``delta`` outside (0, 1)) raises
    :class:`JaxschedError`.
    """
    fn = "nested_wait"
    l, o, lam = _nested_inputs(fn, prompt_len, output_len, rate)
    n = _vec(fn, "thresholds", thresholds, low=1, integer=True)
    _same_len(fn, output_len=o, thresholds=n)
    d0 = _num(fn, "d0", d0, low=0, strict=True)
    d1 = _num(fn, "d1", d1, low=0)
    horizon = _num(fn, "horizon", horizon, low=0)
    zeta = _num(fn, "zeta", zeta, low=0, strict=True)
    dl = _num(fn, "delta", delta, low=0, strict=True, high=1, high_strict=True)
    cap = None if capacity is None else _num(fn, "capacity", capacity, low=0, allow_inf=True)
    m = o.size
    seg_len, sbar, p = _segments(l, o, lam)
    base = float(np.sum(n * (l + sbar) * seg_len))
    dt = d0 + d1 * base
    total_rate = float(lam.sum())
    rate_ok = dt < n[0] / total_rate
    log_term = math.log(m * (1 + zeta * horizon / d0) / dl)
    ratio_ok, theta, buffer = [], [], []
    for k in range(1, m):
        ok = bool(p[k] < n[k] / n[k - 1] < 1)
        ratio_ok.append(ok)
        th = nested_wait_theta(n[k - 1], n[k], p[k]) if ok else math.nan
        theta.append(th)
        buffer.append((l + o[k - 1]) * (n[k] + log_term / th) if ok else math.inf)
    needed = base + float(sum(buffer))
    bad = [k + 2 for k, ok in enumerate(ratio_ok) if not ok]
    if not rate_ok:
        reason = (f"dT(n) = {dt:.6g} >= n_1/sum(lambda) = {n[0] / total_rate:.6g}: segment 1 "
                  f"cannot keep up")
    elif bad:
        k = bad[0]
        reason = (f"segment {k}: n_k/n_(k-1) = {n[k - 1] / n[k - 2]:.6g} not in "
                  f"(p_k, 1) = ({p[k - 1]:.6g}, 1)")
    elif cap is not None and needed > cap:
        reason = f"memory needed {needed:.6g} > C = {cap:.6g} (overflow probability > {dl:g})"
    else:
        reason = f"conditions hold; memory needed {needed:.6g} for overflow probability <= {dl:g}"
        if cap is not None:
            reason += f" (C = {cap:.6g})"
    feasible = rate_ok and not bad and (cap is None or needed <= cap)
    return NestedWait(
        prompt_len=l, output_len=tuple(int(v) for v in o), rate=_tup(lam),
        thresholds=tuple(int(v) for v in n), segment_length=_tup(seg_len),
        segment_mean_stage=_tup(sbar), continue_prob=_tup(p), base_memory=base,
        iteration_time=float(dt), rate_ok=bool(rate_ok), ratio_ok=tuple(ratio_ok),
        theta=tuple(float(t) for t in theta), log_term=log_term,
        buffer=tuple(float(b) for b in buffer), memory_needed=needed, capacity=cap,
        feasible=bool(feasible), reason=reason)


@dataclasses.dataclass(frozen=True)
class NestedWaitFluid:
    """Nested WAIT thresholds at the fluid equilibrium (see :func:`nested_wait_fluid_thresholds`)."""

    thresholds: tuple[int, ...]  # n_1..n_m
    segment_rate: tuple[float, ...]  # Lambda_k = sum_{j>=k} lambda_j
    iteration_time: float  # t = d0 + d1 M^pi(n)
    base_memory: float  # M^pi = sum_k n_k (l + sbar_k) delta_k
    entry_memory: float  # sum_{k>=2} (l + l'_{k-1}) n_k: one cohort waiting at each entry
    capacity: float
    feasible: bool  # M^pi + entry_memory <= C
    reason: str


def nested_wait_fluid_thresholds(prompt_len: float, output_len: Sequence[int],
                                 rate: Sequence[float], *, capacity: float, d0: float,
                                 d1: float, max_iter: int = 100_000) -> NestedWaitFluid:
    """Nested WAIT thresholds from the fluid model alone, without the overflow guarantee.

    arXiv 2504.11320, Nested WAIT (PAPERS.md Sec. 2). In the fluid model segment ``k`` carries
    ``Lambda_k = sum_{j>=k} lambda_j`` prompts per unit time, so at iteration time ``t`` every
    stage of segment ``k`` holds ``Lambda_k t`` prompts and ``n_k / n_{k-1} = p_k`` exactly:
    the edge of the paper's interval ``p_k < n_k / n_{k-1} < 1``, where the Chernoff exponent
    ``theta_k`` is 0 and the paper's safety buffer is unbounded. Integer thresholds keep up
    with their inflow iff::

        d0 + d1 M^pi(n) <= n_k / Lambda_k   for every k,   M^pi = sum_k n_k (l + sbar_k) delta_k

    (``k = 1`` is the paper's ``dT(n) <= n_1 / sum lambda``). As in :func:`wait_thresholds`
    the smallest such integers are ``ceil(Lambda t)`` at the least ``t`` with
    ``d0 + d1 M^pi(ceil(Lambda t)) <= t``: start at ``dT* = d0 / (1 - d1 S)`` and iterate.
    The memory check keeps the deterministic part of the paper's buffer, one cohort waiting
    at each segment entry: ``C >= M^pi + sum_{k>=2} (l + l'_{k-1}) n_k``. An unstable fluid
    (``d1 S >= 1``) raises :class:`JaxschedError`; too little memory is an answer
    (``feasible = False`` with a reason).
    """
    fn = "nested_wait_fluid_thresholds"
    l, o, lam = _nested_inputs(fn, prompt_len, output_len, rate)
    cap = _num(fn, "capacity", capacity, low=0, allow_inf=True)
    d0 = _num(fn, "d0", d0, low=0, strict=True)
    d1 = _num(fn, "d1", d1, low=0)
    seg_len, sbar, _ = _segments(l, o, lam)
    weight = (l + sbar) * seg_len  # memory of one prompt per stage of segment k
    inflow = np.cumsum(lam[::-1])[::-1]  # Lambda_k
    load = float(np.sum(inflow * weight))  # S: the same sum as wait_fluid's
    if d1 * load >= 1:
        raise JaxschedError(f"{fn}: no finite thresholds, the fluid is unstable "
                            f"(d1*S = {d1 * load:.6g} >= 1)")
    n, t = _smallest_thresholds(fn, inflow, weight, d0 / (1 - d1 * load), d0, d1, load,
                                max_iter)
    base = float(np.sum(n * weight))
    entry = float(np.sum((l + o[:-1]) * n[1:]))
    feasible = base + entry <= cap
    reason = (f"M^pi + entry cohorts = {base + entry:.6g} {'<=' if feasible else '>'} "
              f"C = {cap:.6g}; iteration time {t:.6g}")
    return NestedWaitFluid(
        thresholds=tuple(int(v) for v in n), segment_rate=_tup(inflow),
        iteration_time=float(t), base_memory=base, entry_memory=entry, capacity=cap,
        feasible=bool(feasible), reason=reason)


def nested_wait_thresholds(prompt_len: float, output_len: Sequence[int], rate: Sequence[float],
                           *, d0: float, d1: float, margin: float = 0.1,
                           max_iter: int = 100_000) -> tuple[int, ...]:
    """Default Nested WAIT thresholds satisfying the conditions of arXiv 2504.11320 (PAPERS.md Sec. 2).

    Our rule (not the paper's; the paper only states the conditions):

    1. ``n_1 = ceil((1 + margin) * sum_j lambda_j * dT*)`` with ``dT* = d0 / (1 - d1 S)`` the
       fluid iteration time (:func:`wait_fluid` with the common prompt), at least 2;
    2. ``n_k = min(ceil(n_{k-1} (p_k + margin)), n_{k-1} - 1)`` for ``k >= 2`` (so
       ``p_k < n_k / n_{k-1} < 1``; if ``n_{k-1}`` is too small for an integer in between,
       ``n_1`` grows by 1 and the chain is rebuilt);
    3. if ``dT(n) = d0 + d1 M^pi(n) >= n_1 / sum lambda``, set
       ``n_1 = max(n_1 + 1, ceil((1 + margin) sum lambda dT(n)))`` and repeat.

    The result is the first chain that passes. Capacity is not consulted: check it with
    :func:`nested_wait`. Raises :class:`JaxschedError` when the fluid is unstable
    (``d1 S >= 1``), or when no chain passes (load too close to the stability limit for the
    margin), or on malformed input.
    """
    fn = "nested_wait_thresholds"
    l, o, lam = _nested_inputs(fn, prompt_len, output_len, rate)
    d0 = _num(fn, "d0", d0, low=0, strict=True)
    d1 = _num(fn, "d1", d1, low=0)
    margin = _num(fn, "margin", margin, low=0, strict=True)
    fluid = wait_fluid(np.full_like(o, l), o, lam, capacity=math.inf, d0=d0, d1=d1)
    if not fluid.stable:
        raise JaxschedError(f"{fn}: no thresholds, {fluid.reason}")
    seg_len, sbar, p = _segments(l, o, lam)
    total_rate = float(lam.sum())
    n1 = max(2, _ceil((1 + margin) * total_rate * fluid.iteration_time))
    for _ in range(max_iter):
        chain = [n1]
        for k in range(1, o.size):
            nk = min(_ceil(chain[-1] * (p[k] + margin)), chain[-1] - 1)
            if nk < 1 or not nk > p[k] * chain[-1]:
                break
            chain.append(nk)
        if len(chain) < o.size:
            n1 += 1
            continue
        dt = d0 + d1 * float(np.sum(np.array(chain) * (l + sbar) * seg_len))
        if dt < n1 / total_rate:
            return tuple(int(v) for v in chain)
        n1 = max(n1 + 1, _ceil((1 + margin) * total_rate * dt))
        if n1 > 1e12:
            break
    raise JaxschedError(f"{fn}: no thresholds with margin {margin:g} satisfy "
                        f"dT(n) < n_1/sum(lambda) (d1*S = {d1 * fluid.load:.4g} too close to 1)")


# --------------------------------------------------------------------------------------------
# Flow control (Dong & Cao 2026, arXiv 2604.11001), slotted model
# --------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class FlowLoad:
    """Load of the slotted model against capacity (see :func:`flow_load`)."""

    memory_time: tuple[float, ...]  # w_k = l_k o_k + (o_k + o_k^2)/2
    load: float  # sum_k lambda_k w_k (expected memory in steady state)
    capacity: float  # C
    slack: float  # C - load
    utilization: float  # load / C
    necessary_ok: bool  # load <= C (Prop. 3.2: no scheduler is stable otherwise)
    sufficient_possible: bool  # load < C: budgets with b_k > lambda_k, sum b_k w_k < C exist
    reason: str


def _flow_inputs(fn, prompt_len, output_len, rate=None):
    l = _vec(fn, "prompt_len", prompt_len, low=0)
    o = _vec(fn, "output_len", output_len, low=1)
    if rate is None:
        _same_len(fn, prompt_len=l, output_len=o)
        return l, o, None
    lam = _vec(fn, "rate", rate, low=0)
    _same_len(fn, prompt_len=l, output_len=o, rate=lam)
    return l, o, lam


def flow_load(prompt_len: Sequence[float], output_len: Sequence[float], rate: Sequence[float],
              *, capacity: float) -> FlowLoad:
    """Necessary load condition of the slotted model, Dong & Cao 2026 (arXiv 2604.11001), Prop. 3.2.

    ``w_k = l_k o_k + (o_k + o_k^2)/2`` is the memory-time of a class-``k`` request (it holds
    ``l_k + j`` in the slot of its ``j``-th token, ``j = 1..o_k``); by Little's law the
    expected memory in steady state is ``sum_k lambda_k w_k`` (``lambda_k`` per slot). No
    scheduler is stable if ``sum_k lambda_k w_k > C``. ``slack = C - sum_k lambda_k w_k``.
    An overloaded system is an answer (``necessary_ok = False``), not an error.
    """
    fn = "flow_load"
    l, o, lam = _flow_inputs(fn, prompt_len, output_len, rate)
    cap = _num(fn, "capacity", capacity, low=0, strict=True)
    w = memory_time(l, o)
    load = float(np.sum(lam * w))
    ok = load <= cap
    reason = (f"sum lambda_k w_k = {load:.6g} <= C = {cap:.6g} (slack {cap - load:.6g})" if ok else
              f"overloaded: sum lambda_k w_k = {load:.6g} > C = {cap:.6g}, no scheduler is "
              f"stable (Prop. 3.2)")
    return FlowLoad(memory_time=_tup(w), load=load, capacity=cap, slack=cap - load,
                    utilization=load / cap, necessary_ok=bool(ok),
                    sufficient_possible=bool(load < cap), reason=reason)


@dataclasses.dataclass(frozen=True)
class FlowBudgetCheck:
    """Algorithm 1's budgets against Theorem 3.3 (see :func:`flow_budget_check`)."""

    memory_time: tuple[float, ...]  # w_k
    budgets: tuple[float, ...]  # b_k, activations per slot
    peak_bound: float  # sum_k b_k w_k: memory never exceeds it
    slack: float  # C - peak_bound
    memory_ok: bool  # sum_k b_k w_k < C
    rate_ok: tuple[bool, ...]  # b_k > lambda_k (empty when rates are unknown)
    sufficient: bool  # memory_ok and all rate_ok (Thm. 3.3: Algorithm 1 is stable)
    reason: str


def flow_budget_check(prompt_len: Sequence[float], output_len: Sequence[float],
                      budgets: Sequence[float], rate: Sequence[float] | None = None, *,
                      capacity: float) -> FlowBudgetCheck:
    """Algorithm 1 (per-class activation budgets ``b_k``), Dong & Cao 2026 (arXiv 2604.11001), Sec. 3.

    Activating at most ``b_k`` class-``k`` requests per slot keeps memory at most
    ``sum_k b_k w_k`` (``w_k`` from :func:`memory_time`), so Algorithm 1 never overflows
    when that is below ``C``. Sufficient condition for stability (Theorem 3.3)::

        sum_k b_k w_k < C   and   b_k > lambda_k for all k.

    Reports which parts hold. Without ``rate`` (saturated or trace workloads) only the
    memory part is checked and ``sufficient`` is False. Unmet conditions are answers;
    malformed input raises :class:`JaxschedError`.
    """
    fn = "flow_budget_check"
    l, o, lam = _flow_inputs(fn, prompt_len, output_len, rate)
    b = _vec(fn, "budgets", budgets, low=0)
    _same_len(fn, prompt_len=l, budgets=b)
    cap = _num(fn, "capacity", capacity, low=0, strict=True)
    w = memory_time(l, o)
    peak = float(np.sum(b * w))
    memory_ok = peak < cap
    rate_ok = () if lam is None else tuple(bool(x) for x in b > lam)
    sufficient = memory_ok and lam is not None and all(rate_ok)
    if not memory_ok:
        reason = f"sum b_k w_k = {peak:.6g} >= C = {cap:.6g}: memory may overflow"
    elif lam is None:
        reason = f"sum b_k w_k = {peak:.6g} < C = {cap:.6g}; rates unknown, stability unchecked"
    elif not all(rate_ok):
        k = rate_ok.index(False)
        reason = (f"class {k}: b_k = {b[k]:.6g} <= lambda_k = {lam[k]:.6g}: its queue grows "
                  f"(memory safe: sum b_k w_k = {peak:.6g} < C)")
    else:
        reason = f"Thm 3.3 holds: sum b_k w_k = {peak:.6g} < C = {cap:.6g} and b_k > lambda_k"
    return FlowBudgetCheck(memory_time=_tup(w), budgets=_tup(b), peak_bound=peak,
                           slack=cap - peak, memory_ok=bool(memory_ok), rate_ok=rate_ok,
                           sufficient=bool(sufficient), reason=reason)


@dataclasses.dataclass(frozen=True)
class FlowSafeBudgets:
    """Largest budgets with ``sum_k b_k w_k < C`` (see :func:`flow_safe_budgets`).

    ``*_sup`` values are suprema: any budget strictly below keeps ``sum b w < C``.
    """

    memory_time: tuple[float, ...]  # w_k
    uniform_sup: float  # C / sum_k w_k (one b for every class)
    uniform_int: int  # largest integer b with b sum_k w_k < C (may be 0)
    uniform_int_peak: float  # uniform_int * sum_k w_k
    scale_sup: float  # s* = C / sum_k lambda_k w_k (b = s lambda); nan without rates
    proportional_sup: tuple[float, ...]  # s* lambda_k
    proportional_int: tuple[int, ...]  # floor(s* lambda_k), lowered until sum b w < C
    proportional_int_peak: float  # sum_k proportional_int_k w_k
    proportional_exceeds_rates: bool  # s* > 1: some b = s lambda meets Thm 3.3
    global_sup: float  # Algorithm 2: C / sum_k pi_k w_k, mean activations per slot
    class_prob: tuple[float, ...]  # pi_k used for global_sup


def _class_prob(fn, n, rate, class_prob):
    if class_prob is not None:
        pi = _vec(fn, "class_prob", class_prob, low=0)
        if pi.size != n:
            raise JaxschedError(f"{fn}: class_prob has {pi.size} entries, expected {n}")
    elif rate is not None and np.sum(rate) > 0:
        pi = np.asarray(rate, float)
    else:
        pi = np.ones(n)
    if pi.sum() <= 0:
        raise JaxschedError(f"{fn}: class_prob sums to 0")
    return pi / pi.sum()


def flow_safe_budgets(prompt_len: Sequence[float], output_len: Sequence[float],
                      rate: Sequence[float] | None = None, *, capacity: float,
                      class_prob: Sequence[float] | None = None) -> FlowSafeBudgets:
    """Largest activation budgets meeting ``sum_k b_k w_k < C`` (Dong & Cao 2026, Thm. 3.3).

    * Uniform: one ``b`` for all classes, ``b < C / sum_k w_k``; the integer is the largest
      with ``b sum_k w_k < C``.
    * Proportional to the rates: ``b_k = s lambda_k`` with ``s < s* = C / sum_k lambda_k w_k``;
      integers ``floor(s* lambda_k)``, lowered (largest ``w_k`` first) while ``sum b w >= C``.
      Theorem 3.3 (also ``b_k > lambda_k``) can be met by such budgets iff ``s* > 1``, i.e.
      iff the load condition of Prop. 3.2 holds strictly.
    * Algorithm 2's global budget: with activated classes drawn with probabilities ``pi_k``
      (default: proportional to ``rate``, else uniform) the expected memory is
      ``B sum_k pi_k w_k``, below ``C`` iff ``B < C / sum_k pi_k w_k``.

    Real values are rates of activations per slot (fractional credit); integers are per-slot
    caps. Raises :class:`JaxschedError` on malformed input.
    """
    fn = "flow_safe_budgets"
    l, o, lam = _flow_inputs(fn, prompt_len, output_len, rate)
    cap = _num(fn, "capacity", capacity, low=0, strict=True)
    w = memory_time(l, o)
    total_w = float(w.sum())
    uniform_sup = cap / total_w
    b = int(math.floor(uniform_sup))
    if b * total_w >= cap:
        b -= 1
    b = max(b, 0)
    if lam is not None and np.sum(lam * w) > 0:
        s = cap / float(np.sum(lam * w))
        prop = np.floor(s * lam + _INT_TOL)
        order = np.argsort(-w, kind="stable")
        while np.sum(prop * w) >= cap:
            k = next(k for k in order if prop[k] > 0)
            prop[k] -= 1
        prop_sup, prop_int = _tup(s * lam), tuple(int(v) for v in prop)
        prop_peak = float(np.sum(prop * w))
    else:
        s, prop_sup, prop_int, prop_peak = math.nan, (), (), math.nan
    pi = _class_prob(fn, l.size, lam, class_prob)
    return FlowSafeBudgets(
        memory_time=_tup(w), uniform_sup=uniform_sup, uniform_int=b,
        uniform_int_peak=b * total_w, scale_sup=s, proportional_sup=prop_sup,
        proportional_int=prop_int, proportional_int_peak=prop_peak,
        proportional_exceeds_rates=bool(s > 1), global_sup=cap / float(np.sum(pi * w)),
        class_prob=_tup(pi))


@dataclasses.dataclass(frozen=True)
class FlowOverflowBound:
    """Hoeffding bound on Algorithm 2's overflow probability (see :func:`flow_overflow_bound`)."""

    expected_memory: float  # E M_t = E[B] sum_k pi_k w_k
    slack: float  # C - E M_t
    variance_proxy: float  # sum_a r_a^2, the squared ranges of the per-age contributions
    prob_bound: float  # P(M_t > C) <= exp(-2 slack^2 / sum_a r_a^2) (1 if slack <= 0)
    horizon: float | None  # slots T
    horizon_bound: float | None  # P(an overflow within T slots) <= min(1, T prob_bound)

    def slack_for(self, prob: float) -> float:
        """Slack that makes the per-slot bound equal ``prob``: ``sqrt(sum r_a^2 ln(1/prob) / 2)``."""
        return math.sqrt(self.variance_proxy * math.log(1 / prob) / 2)


def flow_overflow_bound(prompt_len: Sequence[float], output_len: Sequence[int], *,
                        capacity: float, budget_mean: float, budget_max: float,
                        budget_min: float = 0.0, rate: Sequence[float] | None = None,
                        class_prob: Sequence[float] | None = None,
                        horizon: float | None = None) -> FlowOverflowBound:
    """Overflow-probability bound for Algorithm 2 with random budgets (Dong & Cao 2026, Sec. 3).

    The paper shows that expected overflow events decay exponentially in the slack between
    expected memory and ``C``, but its constant is not public. **This is our bound, of the
    same exponential form, not the paper's constant.**

    Assumptions: a saturated FIFO queue (the worst case for memory: every slot activates
    exactly ``B_t`` requests), budgets ``B_t`` i.i.d. on integers in
    ``[budget_min, budget_max]`` with mean ``budget_mean``, and activated requests of
    independent classes drawn with probabilities ``pi_k`` (default proportional to ``rate``,
    else uniform). Ignoring eviction, the memory at slot ``t`` is a sum over ages
    ``a = 0..o_max-1`` of independent terms::

        M_t = sum_a X_a,   X_a = sum over the B_{t-a} requests activated a slots ago of h_c(a),
        h_k(a) = (l_k + a + 1) 1[a < o_k],    X_a in [B_min min_k h_k(a), B_max max_k h_k(a)],
        E M_t = E[B] sum_k pi_k w_k    (since sum_a h_k(a) = w_k).

    Hoeffding's inequality with ranges ``r_a = B_max max_k h_k(a) - B_min min_k h_k(a)``::

        P(M_t > C) <= exp(-2 (C - E M_t)^2 / sum_a r_a^2)      when C > E M_t.

    Up to the first overflow the evicting system coincides with the no-eviction one, so
    ``P(an overflow within T slots) <= T * bound`` (``horizon_bound``). A deterministic budget
    with fractional credit alternates ``floor(B)``/``ceil(B)``; passing those as min/max gives
    a heuristic (its budgets are not independent). Raises :class:`JaxschedError` on malformed
    input (non-integer outputs, ``budget_min <= budget_mean <= budget_max`` violated).
    """
    fn = "flow_overflow_bound"
    l = _vec(fn, "prompt_len", prompt_len, low=0)
    o = _vec(fn, "output_len", output_len, low=1, integer=True)
    _same_len(fn, prompt_len=l, output_len=o)
    lam = None if rate is None else _vec(fn, "rate", rate, low=0)
    if lam is not None:
        _same_len(fn, prompt_len=l, rate=lam)
    cap = _num(fn, "capacity", capacity, low=0, strict=True)
    bmin = _num(fn, "budget_min", budget_min, low=0)
    bmax = _num(fn, "budget_max", budget_max, low=0)
    bmean = _num(fn, "budget_mean", budget_mean, low=0)
    if not bmin <= bmean <= bmax:
        raise JaxschedError(f"{fn}: need budget_min <= budget_mean <= budget_max, got "
                            f"{bmin:g}, {bmean:g}, {bmax:g}")
    pi = _class_prob(fn, l.size, lam, class_prob)
    ages = np.arange(int(o.max()))
    h = np.where(ages[None, :] < o[:, None], l[:, None] + ages[None, :] + 1, 0.0)  # (K, o_max)
    expected = bmean * float(np.sum(pi * memory_time(l, o)))
    ranges = bmax * h.max(axis=0) - bmin * h.min(axis=0)
    var = float(np.sum(ranges ** 2))
    slack = cap - expected
    if slack <= 0:
        prob = 1.0
    elif var == 0:
        prob = 0.0
    else:
        prob = math.exp(-2 * slack * slack / var)
    if horizon is not None:
        horizon = _num(fn, "horizon", horizon, low=0)
        hb = min(1.0, horizon * prob)
    else:
        hb = None
    return FlowOverflowBound(expected_memory=expected, slack=slack, variance_proxy=var,
                             prob_bound=prob, horizon=horizon, horizon_bound=hb)


# --------------------------------------------------------------------------------------------
# Service-induced congestion (Ao, Dong, Luo, Simchi-Levi, arXiv 2606.15555)
# --------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class GreedyCongestion:
    """Saturated greedy, homogeneous workload (see :func:`congestion_homogeneous`)."""

    memory_time: float  # C = l1 (l0 + (l1 + 1)/2)
    fixed_point: float  # x* = 2M / (l1 (2 l0 + l1 + 1)), admissions = completions per iteration
    cycle_throughput: float  # M / (l1 (l0 + l1)), completions per iteration on the worst cycle
    ratio: float  # cycle / fixed point = (2 l0 + l1 + 1) / (2 (l0 + l1))
    cycle_admissions: float  # M / (l0 + 1), the cohort admitted once per cycle
    cycle_period: int  # l1 iterations


def congestion_homogeneous(capacity: float, prompt_len: float, output_len: int) -> GreedyCongestion:
    """Greedy admission with least-progressed eviction, saturated, one class (arXiv 2606.15555, PAPERS.md Sec. 3).

    Stage convention of the paper: a request at stage ``j = 0..l1-1`` uses ``l0 + 1 + j``
    tokens (jaxsched's ``l + j`` after ``j`` tokens, plus the slot of the next one)::

        x*    = 2M / (l1 (2 l0 + l1 + 1))   eviction-free fixed point (unstable)
        cycle = M / (l1 (l0 + l1))           maximal-eviction cycle (M/(l0+1), 0, ..., 0), period l1
        ratio = (2 l0 + l1 + 1) / (2 (l0 + l1))   -> 1/2 as l1/l0 grows

    Greedy is unstable for Poisson rates above ``cycle`` even when below ``x*`` (the paper's
    M = 2000, l0 = 10, l1 = 40: cycle 1.00, x* 1.64). Raises :class:`JaxschedError` on
    malformed input.
    """
    fn = "congestion_homogeneous"
    m = _num(fn, "capacity", capacity, low=0, strict=True)
    l0 = _num(fn, "prompt_len", prompt_len, low=0)
    l1 = _num(fn, "output_len", output_len, low=1)
    if l1 != round(l1):
        raise JaxschedError(f"{fn}: output_len must be an integer, got {output_len!r}")
    x = float(greedy_fixed_point(m, l0, l1))
    cyc = float(greedy_cycle_throughput(m, l0, l1))
    return GreedyCongestion(memory_time=float(memory_time(l0, l1)), fixed_point=x,
                            cycle_throughput=cyc, ratio=(2 * l0 + l1 + 1) / (2 * (l0 + l1)),
                            cycle_admissions=m / (l0 + 1), cycle_period=int(l1))


@dataclasses.dataclass(frozen=True)
class DecodeGcd:
    """The gcd test of decode lengths (see :func:`decode_gcd`)."""

    lengths: tuple[int, ...]  # distinct decode lengths, ascending
    gcd: int  # g
    stable_predicted: bool  # g == 1
    unstable_modes: int  # g - 1 synchronized modes just outside the unit circle
    note: str


def decode_gcd(output_len: Sequence[int]) -> DecodeGcd:
    """Synchronization test of arXiv 2606.15555 (PAPERS.md Sec. 3), prompt-dominated regime.

    With ``g = gcd`` of the (distinct) decode lengths: ``g > 1`` makes the eviction-free
    equilibrium unstable, with ``g - 1`` synchronized modes just outside the unit circle;
    ``g = 1`` makes it globally asymptotically stable. The theorem holds in the regime
    ``l0 = r L, M = c L, L`` large; the prompt length needed grows like the cube of the
    longer decode length, so short prompts can be unstable even with ``g = 1``. A single
    length ``l1 > 1`` gives ``g = l1``, consistent with the homogeneous instability.
    """
    fn = "decode_gcd"
    o = _vec(fn, "output_len", output_len, low=1, integer=True)
    lengths = tuple(sorted({int(v) for v in o}))
    g = reduce(math.gcd, lengths)
    if g == 1:
        note = "gcd 1: equilibrium stable in the prompt-dominated regime"
    else:
        note = f"gcd {g}: {g - 1} synchronized mode(s), eviction-free equilibrium unstable"
    return DecodeGcd(lengths=lengths, gcd=g, stable_predicted=g == 1, unstable_modes=g - 1,
                     note=note)


@dataclasses.dataclass(frozen=True)
class HeteroCongestion:
    """Saturated greedy, heterogeneous classes (see :func:`congestion_heterogeneous`)."""

    share: tuple[float, ...]  # p_k (normalized)
    memory_time: tuple[float, ...]  # C_k = l1_k (l0_k + (l1_k + 1)/2)
    fixed_point: float  # x* = M / sum_k p_k C_k
    class_admissions: tuple[float, ...]  # p_k x*
    gcd: DecodeGcd


def congestion_heterogeneous(capacity: float, prompt_len: Sequence[float],
                             output_len: Sequence[int],
                             share: Sequence[float] | None = None) -> HeteroCongestion:
    """Eviction-free fixed point with class shares (arXiv 2606.15555, PAPERS.md Sec. 3).

    ``x* = M / sum_k p_k C_k`` with ``C_k = l1_k (l0_k + (l1_k + 1)/2)`` (= :func:`memory_time`)
    and admissions split by shares ``p_k`` (normalized; default uniform), plus the gcd test
    of :func:`decode_gcd`. Raises :class:`JaxschedError` on malformed input.
    """
    fn = "congestion_heterogeneous"
    m = _num(fn, "capacity", capacity, low=0, strict=True)
    l0 = _vec(fn, "prompt_len", prompt_len, low=0)
    l1 = _vec(fn, "output_len", output_len, low=1, integer=True)
    _same_len(fn, prompt_len=l0, output_len=l1)
    p = _class_prob(fn, l0.size, None, share)
    c = memory_time(l0, l1)
    x = m / float(np.sum(p * c))
    return HeteroCongestion(share=_tup(p), memory_time=_tup(c), fixed_point=x,
                            class_admissions=_tup(p * x), gcd=decode_gcd(l1))


@dataclasses.dataclass(frozen=True)
class CoprimeSuggestion:
    """Nearby decode lengths with gcd 1 (see :func:`coprime_decode_lengths`)."""

    original: tuple[int, ...]  # distinct lengths, ascending
    suggested: tuple[int, ...]  # same order: suggested[i] replaces original[i]
    gcd_before: int
    gcd_after: int  # 1
    total_change: int  # sum of decrements
    mode: str  # "set" or "pairwise"


def coprime_decode_lengths(output_len: Sequence[int], mode: str = "set",
                           max_total_change: int = 64) -> CoprimeSuggestion:
    """Suggest nearby decode lengths that desynchronize completions (arXiv 2606.15555, remedies).

    The paper's remedy mixes decode lengths so their gcd is 1 (its example: tiers
    128/256/512 -> 127/255/509). Lengths only go down (a tier's cap is not exceeded), stay
    ``>= 1`` and distinct.

    * ``mode="set"`` (default): the smallest total decrement making the gcd of the whole set
      1 (the condition of :func:`decode_gcd`); ties prefer changing longer lengths (smallest
      sum of relative changes). 128/256/512 -> 128/256/511.
    * ``mode="pairwise"``: stronger, every pair coprime (no two classes synchronize with
      each other). Greedy in ascending order: keep the shortest, lower each next length by
      the least amount that makes it coprime with all kept ones. 128/256/512 -> 128/255/511.

    Already-coprime inputs come back unchanged. Raises :class:`JaxschedError` on malformed
    input or if no solution within ``max_total_change`` exists (set mode).
    """
    fn = "coprime_decode_lengths"
    o = _vec(fn, "output_len", output_len, low=1, integer=True)
    lengths = sorted({int(v) for v in o})
    g0 = reduce(math.gcd, lengths)
    if mode == "set":
        best = tuple(lengths)
        total = 0
        if g0 != 1:
            found = None
            m = len(lengths)
            for d in range(1, max_total_change + 1):
                cands = []
                for combo in itertools.combinations_with_replacement(range(m), d):
                    dec = [0] * m
                    for i in combo:
                        dec[i] += 1
                    new = [x - di for x, di in zip(lengths, dec)]
                    if min(new) < 1 or len(set(new)) < m or reduce(math.gcd, new) != 1:
                        continue
                    cost = sum(di / x for di, x in zip(dec, lengths))
                    cands.append((cost, tuple(-di for di in dec), tuple(new)))
                if cands:
                    found = min(cands)[2]
                    total = d
                    break
            if found is None:
                raise JaxschedError(f"{fn}: no lengths within total change {max_total_change} "
                                    f"have gcd 1")
            best = found
    elif mode == "pairwise":
        kept: list[int] = []
        for x in lengths:
            y = x
            while y >= 1 and (y in kept or any(math.gcd(y, z) != 1 for z in kept)):
                y -= 1
            if y < 1:
                raise JaxschedError(f"{fn}: cannot lower {x} to a length coprime with {kept}")
            kept.append(y)
        best = tuple(kept)
        total = sum(x - y for x, y in zip(lengths, kept))
    else:
        raise JaxschedError(f"{fn}: mode must be 'set' or 'pairwise', got {mode!r}")
    return CoprimeSuggestion(original=tuple(lengths), suggested=tuple(best), gcd_before=g0,
                             gcd_after=reduce(math.gcd, best), total_change=int(total),
                             mode=mode)


@dataclasses.dataclass(frozen=True)
class Oscillation:
    """Periodicity of a memory trace (see :func:`detect_oscillation`)."""

    oscillating: bool  # strength >= threshold and relative_amplitude >= min_relative_amplitude
    period: float  # iterations: the best candidate, reported even when not oscillating (nan if none)
    amplitude: float  # peak-to-trough of the phase-averaged cycle (5-95% range if no period)
    relative_amplitude: float  # amplitude / |mean|
    strength: float  # autocorrelation of the detrended trace at the period, in [0, 1]
    mean: float  # mean of the trace after warm-up
    reason: str


def detect_oscillation(memory_trace: Sequence[float], *, warmup: int = 0, min_period: int = 2,
                       max_period: int | None = None, threshold: float = 0.5,
                       min_relative_amplitude: float = 0.02) -> Oscillation:
    """Detect periodic oscillation in a simulated memory trace (one value per iteration).

    Motivated by the limit cycles of arXiv 2606.15555 (PAPERS.md Sec. 3): saturated greedy
    converges to a maximal-eviction cycle of period ``l1``; heterogeneous lengths with
    ``gcd > 1`` oscillate in synchronized modes. Method:

    1. Drop ``warmup`` samples; remove the least-squares line (slow drift is not oscillation).
    2. Autocorrelation ``r(tau) = [sum_t y_t y_{t+tau} / (n - tau)] / [sum_t y_t^2 / n]``
       (overlap-normalized, so periodic signals keep ``r ~ 1`` at their period).
    3. Candidates are local maxima of ``r`` at lags in ``[min_period, max_period]``
       (default ``n // 4``: at least four cycles in view, so a wandering trace's one or two
       slow swings do not count; at most ``n // 2``) after its first zero crossing (so a slowly
       decaying, aperiodic correlation does not count). The period is the smallest candidate
       with ``r >= 0.9 * max r`` (a multiple of the period scores as high as the period),
       refined by a parabola through ``r`` at the neighbouring lags.
    4. ``strength = clip(min(r(period), r(2 period)), 0, 1)`` (the second term only when
       ``2 period <= n/2``; ``r`` interpolated linearly): the fraction of the variance that
       repeats, twice (a chance peak of a slowly wandering trace rarely repeats).
       ``amplitude`` = peak-to-trough of the phase-averaged cycle (noise averages out);
       ``relative_amplitude = amplitude / |mean|``.

    Any per-iteration series works (residents, evictions per iteration, ...). Note that on
    the congestion paper's maximal-eviction cycle the memory *after admission* stays within
    ``l0 + 1`` tokens of ``C`` (evictions trim the cohort, completions are refilled at once):
    the cycle shows in the number of residents and in completions, not in that memory trace.

    ``oscillating`` iff ``strength >= threshold`` (default 0.5: the periodic part carries at
    least as much variance as the noise) and ``relative_amplitude >= min_relative_amplitude``
    (default 2%: tiny ripples do not count). A constant trace is not oscillating. Raises
    :class:`JaxschedError` on non-finite values or fewer than ``max(8, 4 min_period)``
    samples after warm-up.
    """
    fn = "detect_oscillation"
    x = np.asarray(memory_trace, dtype=float).ravel()
    if not np.all(np.isfinite(x)):
        raise JaxschedError(f"{fn}: memory_trace must be finite")
    if not 0 <= int(warmup) < max(x.size, 1):
        raise JaxschedError(f"{fn}: warmup must be in [0, {x.size}), got {warmup!r}")
    if int(min_period) < 2:
        raise JaxschedError(f"{fn}: min_period must be >= 2, got {min_period!r}")
    x = x[int(warmup):]
    n = x.size
    min_period = int(min_period)
    if n < max(8, 4 * min_period):
        raise JaxschedError(f"{fn}: need at least {max(8, 4 * min_period)} samples after "
                            f"warm-up, got {n}")
    mean = float(x.mean())
    t = np.arange(n, dtype=float)
    slope, icpt = np.polyfit(t, x, 1)
    y = x - (slope * t + icpt)

    def rel(a: float) -> float:
        if mean != 0:
            return a / abs(mean)
        return 0.0 if a == 0 else math.inf

    def none(reason: str, amp: float | None = None) -> Oscillation:
        if amp is None:
            amp = float(np.percentile(y, 95) - np.percentile(y, 5))
        return Oscillation(False, math.nan, amp, rel(amp), 0.0, mean, reason)

    scale = max(float(np.abs(x).max()), 1e-300)
    if float(y.std()) <= 1e-9 * scale:
        return none("constant after removing the linear trend", 0.0)
    hi_lag = n // 4 if max_period is None else min(int(max_period), n // 2)
    if hi_lag < min_period:
        raise JaxschedError(f"{fn}: max_period {max_period!r} is below min_period {min_period}")
    f = np.fft.rfft(y, 2 * n)
    ac = np.fft.irfft(f * np.conj(f), 2 * n)[:n]
    r = (ac / (n - np.arange(n))) / (ac[0] / n)
    below = np.nonzero(r[1:] < 0)[0]
    if below.size == 0:
        return none("autocorrelation never crosses zero: no period")
    start = max(min_period, int(below[0]) + 1)
    lags = np.arange(start, min(hi_lag, n - 2) + 1)
    if lags.size == 0:
        return none("first zero crossing beyond max_period: no period")
    peaks = lags[(r[lags] >= r[lags - 1]) & (r[lags] >= r[lags + 1])]
    if peaks.size == 0:
        return none("no autocorrelation peak in [min_period, max_period]")
    best = float(r[peaks].max())
    if best <= 0:
        return none("no positive autocorrelation peak")
    lag = int(peaks[np.nonzero(r[peaks] >= 0.9 * best)[0][0]])
    a, b, c = r[lag - 1], r[lag], r[lag + 1]
    denom = a - 2 * b + c
    period = lag + (0.5 * (a - c) / denom if denom < 0 else 0.0)
    # a real oscillation repeats: also require the correlation two periods apart
    rep = float(np.interp(2 * period, np.arange(n), r)) if 2 * period <= n // 2 else b
    strength = float(np.clip(min(b, rep), 0.0, 1.0))
    bins = max(2, int(round(period)))
    phase = np.minimum((np.mod(t, period) / period * bins).astype(int), bins - 1)
    counts = np.bincount(phase, minlength=bins)
    profile = np.bincount(phase, weights=y, minlength=bins)[counts > 0] / counts[counts > 0]
    amp = float(profile.max() - profile.min())
    ra = rel(amp)
    osc = strength >= threshold and ra >= min_relative_amplitude
    if osc:
        reason = f"period {period:.4g}, strength {strength:.3g} >= {threshold:g}"
    elif strength < threshold:
        reason = f"weak periodicity: strength {strength:.3g} < {threshold:g}"
    else:
        reason = f"relative amplitude {ra:.3g} < {min_relative_amplitude:g}"
    return Oscillation(bool(osc), float(period), amp, ra, strength, mean, reason)


# --------------------------------------------------------------------------------------------
# report
# --------------------------------------------------------------------------------------------


class ReportRow(NamedTuple):
    """One printable row: ``(section, quantity, value, note)``. ``value`` is a number, bool,
    str, tuple of numbers, or None."""

    section: str
    quantity: str
    value: Any
    note: str


def _round_tuple(values, digits: int = 6) -> tuple:
    return tuple(float(f"{v:.{digits}g}") if isinstance(v, float) and math.isfinite(v) else v
                 for v in values)


def theory_report(prompt_len: Sequence[float], output_len: Sequence[float],
                  rate: Sequence[float] | None = None, weight: Sequence[float] | None = None, *,
                  capacity: float, d0: float = 1.0, d1: float = 0.0, slotted: bool = True,
                  budgets: Sequence[float] | None = None, global_budget: float | None = None,
                  thresholds: Sequence[int] | None = None,
                  nested_thresholds: Sequence[int] | None = None,
                  batch_limit: float | None = None, delta: float = 0.01, zeta: float = 1.0,
                  horizon: float | None = None,
                  memory_trace: Sequence[float] | None = None,
                  warmup: int = 0) -> list[ReportRow]:
    """Every applicable quantity of the three papers for one system, as table rows.

    Inputs are plain: per-class ``prompt_len``, ``output_len``, ``rate`` (arrivals per unit
    time; None for saturated or trace workloads) and ``weight`` (class mix; default the rates,
    else uniform), ``capacity`` C, iteration time ``d0 + d1 * tokens``. ``slotted`` says
    rates are per iteration (the slotted model, ``d0 = 1, d1 = 0``); otherwise the
    flow-control and congestion sections convert to per-iteration rates with the WAIT fluid
    iteration time ``dT*``. Optional policy parameters: Algorithm 1 ``budgets`` (per class),
    Algorithm 2 ``global_budget`` (deterministic with credit: budgets ``floor``/``ceil``),
    WAIT ``thresholds``, ``nested_thresholds``, a WAIT ``batch_limit`` (practical thresholds),
    and ``delta, zeta, horizon`` for the Nested WAIT buffer (default horizon ``1e4 d0``:
    ten thousand iterations). A ``memory_trace`` adds the oscillation detector's verdict.

    Sections: ``wait``, ``nested_wait``, ``flow_control``, ``congestion``, ``oscillation``.
    Parts that do not apply (no rates; Nested WAIT needs one common prompt and distinct
    outputs; ...) give one row with the value ``None`` and the reason in the note. Raises
    :class:`JaxschedError` on malformed input.
    """
    fn = "theory_report"
    l = _vec(fn, "prompt_len", prompt_len, low=0)
    o = _vec(fn, "output_len", output_len, low=1)
    _same_len(fn, prompt_len=l, output_len=o)
    lam = None
    if rate is not None:
        lam = _vec(fn, "rate", rate, low=0)
        _same_len(fn, prompt_len=l, rate=lam)
    cap = _num(fn, "capacity", capacity, low=0, strict=True)
    d0 = _num(fn, "d0", d0, low=0, strict=True)
    d1 = _num(fn, "d1", d1, low=0)
    share = _class_prob(fn, l.size, lam, weight)
    if horizon is None:
        horizon = 1e4 * d0
    rows: list[ReportRow] = []

    def add(section, quantity, value, note=""):
        if isinstance(value, (tuple, list)):
            value = _round_tuple(value)
        elif isinstance(value, (np.floating, np.integer)):
            value = value.item()
        rows.append(ReportRow(section, quantity, value, note))

    # ---- WAIT (arXiv 2504.11320) ----
    sec = "wait"
    fluid = None
    if lam is None:
        add(sec, "fluid model", None, "needs arrival rates")
    else:
        fluid = wait_fluid(l, o, lam, capacity=cap, d0=d0, d1=d1)
        add(sec, "S", fluid.load, "sum_j lambda_j (l'_j+1)(l_j + l'_j/2)")
        add(sec, "d1*S", d1 * fluid.load, "< 1 for a fluid equilibrium")
        add(sec, "type load", fluid.type_load, "lambda_j d1 (l'_j+1)(l_j+l'_j/2); >= 1: unstable")
        add(sec, "compute-stable", fluid.stable,
            fluid.reason if not fluid.stable else
            "d1*S < 1: the iteration time stays finite; memory is the feasibility row below"
            + ("" if fluid.feasible else " (it does not fit here)"))
        add(sec, "M*", fluid.memory, "d0 S/(1 - d1 S), equilibrium memory")
        add(sec, "dT*", fluid.iteration_time, "d0/(1 - d1 S), equilibrium iteration time")
        add(sec, "n* per stage", fluid.per_stage, "lambda_j dT*, over l'_j+1 stages")
        add(sec, "throughput bound (tokens)", fluid.token_throughput, "sum_j lambda_j l'_j per unit time")
        add(sec, "throughput (requests)", fluid.request_throughput, "sum_j lambda_j per unit time")
        add(sec, "feasible (C >= M*)", fluid.feasible, fluid.reason)
        if slotted:
            add(sec, "convention", None, "WAIT counts a prefill stage holding l: per request "
                "(l'+1)(l+l'/2) = w + l, w the slotted memory-time")
        if fluid.stable:
            wt = wait_thresholds(l, o, lam, capacity=cap, d0=d0, d1=d1)
            add(sec, "minimal thresholds n_j", wt.thresholds, "smallest integers, rate conditions")
            add(sec, "M^pi (minimal)", wt.memory, wt.reason)
            add(sec, "thresholds feasible", wt.feasible, "rate conditions and M^pi <= C")
        if thresholds is not None:
            wc = wait_check(l, o, lam, thresholds, capacity=cap, d0=d0, d1=d1)
            add(sec, "given thresholds", wc.thresholds, "")
            add(sec, "M^pi (given)", wc.memory, "sum_j n_j (l'_j+1)(l_j+l'_j/2)")
            add(sec, "given feasible", wc.feasible, wc.reason)
        if batch_limit is not None:
            wp = wait_practical_thresholds(o, lam, batch_limit)
            add(sec, "practical thresholds", wp.integer, f"B rho_j/(l'_j+1), B = {batch_limit:g}")

    # ---- Nested WAIT ----
    sec = "nested_wait"
    order = np.argsort(o, kind="stable")
    skip = None
    if lam is None:
        skip = "needs arrival rates"
    elif np.any(l != l[0]):
        skip = "needs one common prompt length"
    elif np.any(np.diff(o[order]) <= 0) or np.any(o != np.round(o)):
        skip = "needs distinct integer output lengths"
    elif np.any(lam <= 0):
        skip = "needs positive rates"
    elif fluid is not None and not fluid.stable:
        skip = "fluid unstable"
    if skip is not None:
        add(sec, "analysis", None, skip)
    else:
        os_, ls_ = o[order], lam[order]
        if nested_thresholds is None:
            try:
                nt = nested_wait_thresholds(l[0], os_, ls_, d0=d0, d1=d1)
                note = "default rule, margin 0.1 (ascending output order)"
            except JaxschedError as err:
                nt, note = None, str(err)
        else:
            nt = _vec(fn, "nested_thresholds", nested_thresholds, low=1, integer=True)
            if nt.size != o.size:
                raise JaxschedError(f"{fn}: nested_thresholds has {nt.size} entries, "
                                    f"expected {o.size}")
            nt = nt[order]
            note = "given (reordered to ascending output length)"
        if nt is None:
            add(sec, "thresholds", None, note)
        else:
            nw = nested_wait(l[0], os_, ls_, nt, d0=d0, d1=d1, horizon=horizon, zeta=zeta,
                             delta=delta, capacity=cap)
            add(sec, "thresholds n_k", nw.thresholds, note)
            add(sec, "p_k", nw.continue_prob, "share reaching segment k from k-1")
            add(sec, "M^pi (base)", nw.base_memory, "sum_k n_k (l + sbar_k) delta_k")
            add(sec, "dT(n) < n_1/sum(lambda)", nw.rate_ok, f"dT(n) = {nw.iteration_time:.6g}")
            add(sec, "p_k < n_k/n_(k-1) < 1", nw.ratio_ok, "k = 2..m")
            add(sec, "theta_k", nw.theta, "Chernoff exponents, k = 2..m")
            add(sec, "memory needed", nw.memory_needed,
                f"overflow prob <= {delta:g} over T = {horizon:g}, zeta = {zeta:g}")
            add(sec, "feasible", nw.feasible, nw.reason)
        if cap is not None and np.isfinite(cap):
            try:
                nf = nested_wait_fluid_thresholds(l[0], os_, ls_, capacity=cap, d0=d0, d1=d1)
                add(sec, "fluid thresholds", nf.thresholds,
                    "ceil(Lambda_k t), ratios at p_k: no overflow guarantee")
                add(sec, "fluid feasible", nf.feasible, nf.reason)
            except JaxschedError as err:
                add(sec, "fluid thresholds", None, str(err))

    # ---- flow control (arXiv 2604.11001) ----
    sec = "flow_control"
    w = memory_time(l, o)
    add(sec, "w_k", _tup(w), "l_k o_k + (o_k + o_k^2)/2, memory-time per request")
    lam_it = None
    if lam is not None:
        if slotted:
            lam_it = lam
        elif fluid is not None and fluid.stable:
            lam_it = lam * fluid.iteration_time
            add(sec, "rates per iteration", _tup(lam_it), "lambda_k dT* (fluid iteration time)")
        else:
            add(sec, "rates per iteration", None, "unknown: fluid unstable")
    if lam_it is not None:
        fl = flow_load(l, o, lam_it, capacity=cap)
        add(sec, "load sum lambda_k w_k", fl.load, "expected memory")
        add(sec, "slack C - load", fl.slack, "")
        add(sec, "necessary condition", fl.necessary_ok, fl.reason)
    safe = flow_safe_budgets(l, o, lam_it, capacity=cap, class_prob=share)
    add(sec, "uniform budget (int)", safe.uniform_int,
        f"largest b with b sum w < C; peak {safe.uniform_int_peak:.6g}; sup {safe.uniform_sup:.6g}")
    if lam_it is not None:
        add(sec, "proportional budgets (int)", safe.proportional_int,
            f"floor(s* lambda_k), peak {safe.proportional_int_peak:.6g}")
        add(sec, "scale s*", safe.scale_sup, "b = s lambda keeps sum b w < C for s < s*; "
            "Thm 3.3 needs s > 1")
    add(sec, "global budget sup", safe.global_sup, "Alg. 2: C / sum_k pi_k w_k, pi = class mix")
    if budgets is not None:
        bc = flow_budget_check(l, o, budgets, lam_it, capacity=cap)
        add(sec, "peak bound sum b_k w_k", bc.peak_bound, f"slack {bc.slack:.6g}")
        add(sec, "Thm 3.3 sufficient", bc.sufficient, bc.reason)
    if global_budget is not None:
        gb = _num(fn, "global_budget", global_budget, low=0)
        if np.all(o == np.round(o)):
            ob = flow_overflow_bound(l, o, capacity=cap, budget_mean=gb,
                                     budget_min=math.floor(gb), budget_max=math.ceil(gb),
                                     class_prob=share, horizon=horizon / d0)
            add(sec, "expected memory (Alg. 2)", ob.expected_memory, f"slack {ob.slack:.6g}")
            add(sec, "overflow bound per slot", ob.prob_bound,
                "our Hoeffding bound (not the paper's constant); credit budget treated as "
                "i.i.d. floor/ceil")
        else:
            add(sec, "overflow bound per slot", None, "needs integer output lengths")

    # ---- congestion (arXiv 2606.15555) ----
    sec = "congestion"
    add(sec, "class shares p_k", _tup(share), "weight, else rate, else uniform")
    add(sec, "C_k", _tup(w), "l1_k (l0_k + (l1_k+1)/2) = w_k")
    hc = None
    if np.all(o == np.round(o)):
        hc = congestion_heterogeneous(cap, l, o, share)
        add(sec, "x* (saturated greedy)", hc.fixed_point,
            "M / sum_k p_k C_k admissions per iteration, eviction-free fixed point")
    homogeneous = np.all(l == l[0]) and np.all(o == o[0])
    if homogeneous and hc is not None:
        gc = congestion_homogeneous(cap, l[0], o[0])
        add(sec, "worst-cycle throughput", gc.cycle_throughput,
            f"M/(l1(l0+l1)) per iteration, period {gc.cycle_period}")
        add(sec, "cycle / x*", gc.ratio, "(2 l0 + l1 + 1)/(2 (l0 + l1))")
        if lam_it is not None:
            tot = float(lam_it.sum())
            add(sec, "arrivals per iteration", tot,
                "greedy at risk of the eviction cycle" if tot > gc.cycle_throughput
                else "below the worst-cycle throughput")
    if hc is not None:
        add(sec, "gcd of decode lengths", hc.gcd.gcd, hc.gcd.note)
        if hc.gcd.gcd > 1 and len(hc.gcd.lengths) > 1:
            cs = coprime_decode_lengths(hc.gcd.lengths, mode="pairwise")
            add(sec, "coprime suggestion", cs.suggested,
                f"pairwise coprime, lowered from {cs.original}")
    else:
        add(sec, "gcd of decode lengths", None, "needs integer output lengths")

    # ---- oscillation ----
    if memory_trace is not None:
        osc = detect_oscillation(memory_trace, warmup=warmup)
        add("oscillation", "oscillating", osc.oscillating, osc.reason)
        add("oscillation", "period", osc.period, "iterations")
        add("oscillation", "amplitude", osc.amplitude,
            f"peak-to-trough, {osc.relative_amplitude:.3g} of the mean")
        add("oscillation", "strength", osc.strength, "autocorrelation at the period")
    return rows
