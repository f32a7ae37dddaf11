"""WAIT and Nested WAIT: Ao, Luo, Simchi-Levi, Wang (arXiv 2504.11320; PAPERS.md Sec. 2).

The fluid equilibrium ``M* = d0 S / (1 - d1 S)``, ``S = sum_j lambda_j (l'_j + 1)(l_j + l'_j/2)``
(the WAIT paper's memory-time per unit rate, :func:`wait_memory_time`: one prefill stage
holding ``l`` and stages ``s = 1..l'`` holding ``l + s``, i.e. ``memory_time + l``), the
WAIT thresholds and their practical form, the Nested WAIT segments, their Chernoff exponents
``theta`` and the safety buffer. :func:`wait_fluid`, :func:`wait_check`, :func:`wait_thresholds`,
:func:`wait_practical_thresholds`, :func:`nested_wait`, :func:`nested_wait_theta`,
:func:`nested_wait_thresholds`, :func:`nested_wait_fluid_thresholds`; each docstring states
its equation and the paper's section.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Sequence

import numpy as np
from scipy.optimize import brentq

from jaxsched.errors import JaxschedError
from jaxsched.theory.inputs import _INT_TOL, _short, _vec, _num, _same_len, _ceil, _arr, _tup

__all__ = [
    "wait_memory_time",
    "wait_fluid_memory",
    "WaitFluid",
    "wait_fluid",
    "WaitThresholds",
    "wait_check",
    "wait_thresholds",
    "WaitPractical",
    "wait_practical_thresholds",
    "nested_wait_theta",
    "NestedWait",
    "nested_wait",
    "NestedWaitFluid",
    "nested_wait_fluid_thresholds",
    "nested_wait_thresholds",
]


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
