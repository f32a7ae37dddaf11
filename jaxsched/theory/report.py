"""The theory report: every applicable quantity of the three papers for one system, as
printable rows (:func:`theory_report`, what ``jaxsched theory`` prints), built from
:mod:`.wait`, :mod:`.flow_control` and :mod:`.congestion`.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple, Sequence

import numpy as np

from jaxsched.core.model import memory_time
from jaxsched.errors import JaxschedError
from jaxsched.theory.inputs import _vec, _num, _same_len, _tup, _class_prob
from jaxsched.theory.wait import (
    wait_fluid,
    wait_check,
    wait_thresholds,
    wait_practical_thresholds,
    nested_wait,
    nested_wait_fluid_thresholds,
    nested_wait_thresholds,
)
from jaxsched.theory.flow_control import (
    flow_load,
    flow_budget_check,
    flow_safe_budgets,
    flow_overflow_bound,
)
from jaxsched.theory.congestion import (
    congestion_homogeneous,
    congestion_heterogeneous,
    coprime_decode_lengths,
    detect_oscillation,
)

__all__ = [
    "ReportRow",
    "theory_report",
]


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
