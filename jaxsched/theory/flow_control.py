"""Flow control: Dong & Cao 2026 (arXiv 2604.11001; PAPERS.md Sec. 1), slotted model.

Memory-time ``w_k = l_k o_k + (o_k + o_k^2)/2`` (:func:`jaxsched.core.model.memory_time`), the
necessary load condition ``sum_k lambda_k w_k <= C`` (Prop. 3.2), Algorithm 1's sufficient
budget condition ``sum_k b_k w_k <= C`` (Thm. 3.3), safe budgets, and *our own* Hoeffding
bound on the overflow probability of Algorithm 2. :func:`flow_load`,
:func:`flow_budget_check`, :func:`flow_safe_budgets`, :func:`flow_overflow_bound`; each
docstring states its equation.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Sequence

import numpy as np

from jaxsched.core.model import memory_time
from jaxsched.errors import JaxschedError
from jaxsched.theory.inputs import _INT_TOL, _vec, _num, _same_len, _tup, _class_prob

__all__ = [
    "FlowLoad",
    "flow_load",
    "FlowBudgetCheck",
    "flow_budget_check",
    "FlowSafeBudgets",
    "flow_safe_budgets",
    "FlowOverflowBound",
    "flow_overflow_bound",
]


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
