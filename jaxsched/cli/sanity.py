"""Warnings for results that mean nothing: each a line on stderr beside the numbers.

* a simulation whose workloads complete too few requests after the warm-up for a metric
  (none: throughput 0 and latencies undefined; fewer than :data:`MIN_FOR_PERCENTILE` for a
  percentile: it rests on a handful of requests);
* a compare-sim replay whose simulator misses the engine by more than the tolerance;
* a reproduction whose headline finding (the README's claim) does not hold at this scale.
"""

from __future__ import annotations

import math

import numpy as np

__all__ = ["MIN_FOR_PERCENTILE", "warn", "simulation_warnings", "comparison_warnings",
           "reproduction_warnings"]

# completed requests a percentile needs before it says more than its few samples: the p-th
# percentile of n samples is an order statistic with about n (1 - p) samples above it
MIN_FOR_PERCENTILE = {"latency_p95": 20, "latency_p99": 100}


def warn(console, line: str) -> None:
    """One ``warning:`` line on ``console`` (stderr), never wrapped."""
    console.print(f"[yellow]warning:[/] {line}", highlight=False, soft_wrap=True)


def simulation_warnings(result) -> list[str]:
    """Lines for workloads that completed too few requests (after warm-up) for a metric."""
    per = result.per_workload
    lat = np.asarray(per["latency_mean"], np.float64).reshape(-1)
    w = lat.size
    out = []
    empty = int(np.sum(~np.isfinite(lat)))
    hint = "; lengthen workload.horizon (or check the load and capacity)"
    if empty == w:
        out.append(f"no request completed after the warm-up in any of the {w} workloads: "
                   "throughput is 0 and the latency metrics are undefined" + hint)
    elif empty:
        out.append(f"no request completed after the warm-up in {empty} of {w} workloads: "
                   "their latencies are undefined and the means are over the others" + hint)
    done = result.final_completed
    if done is not None and empty < w:
        done = np.asarray(done, np.float64).reshape(-1)
        few = [k for k, n in MIN_FOR_PERCENTILE.items() if np.median(done) < n]
        if few:
            wants = ", ".join(f"{k} (wants {MIN_FOR_PERCENTILE[k]})" for k in few)
            out.append(f"a median of {np.median(done):.0f} requests completed per workload "
                       f"(warm-up included), too few for {wants}" + hint)
    return out


def comparison_warnings(rel_errors: dict, rtol: float,
                        hint: str = "recalibrate on a quieter machine, or see --probe"
                        ) -> list[str]:
    """A line naming the compare-sim metrics whose relative error exceeds ``rtol`` (both
    engines' compare-sim; ``hint`` closes it)."""
    bad = {k: v for k, v in rel_errors.items() if not (v <= rtol)}  # nan counts as a miss
    if not bad:
        return []
    shown = ", ".join(f"{k} {'n/a' if not math.isfinite(v) else f'{v:.0%}'}"
                      for k, v in bad.items())
    return [f"the simulator misses the engine beyond the tolerance {rtol:.0%}: {shown} "
            f"({hint})"]


def _row(rows: dict, prefix: str):
    return next((r for label, r in rows.items() if label.startswith(prefix)), None)


# the README's flow-control finding: at --scale 0.5 flow control (known lengths) lifts
# throughput from 80% to 97% of the memory bound; a gain below this is no lift
FLOW_CONTROL_MIN_GAIN = 0.05


def _flow_control_claims(rep) -> list[str]:
    """README: flow control removes the evictions and raises throughput over greedy
    (a share of the memory bound at least :data:`FLOW_CONTROL_MIN_GAIN` higher)."""
    rows = {r.label: r for r in rep.policy_rows}
    greedy, known = _row(rows, "greedy"), _row(rows, "flow_control_known")
    if greedy is None or known is None:
        return ["the greedy or flow_control_known row is missing"]
    out = []
    if known.metrics["evictions"] > 0:
        out.append(f"flow_control_known evicts ({known.metrics['evictions']:.4g} evictions)")
    if not greedy.metrics["evictions"] > 0:
        out.append("greedy does not evict, so there is nothing for flow control to remove")
    gain = known.bound_ratio - greedy.bound_ratio
    if not gain >= FLOW_CONTROL_MIN_GAIN:
        out.append(f"flow_control_known reaches {known.bound_ratio:.1%} of the memory bound vs "
                   f"greedy's {greedy.bound_ratio:.1%}, a gain below "
                   f"{FLOW_CONTROL_MIN_GAIN:.0%}")
    return out


def _wait_claims(rep) -> list[str]:
    """README: WAIT and Nested WAIT beat vLLM's prefill-first scheduler on mean latency."""
    out = []
    for key in ("wait", "nested_wait"):
        ratio = rep.findings.get(f"{key}: latency_mean / vllm v0 (prefill-first)")
        if ratio is None:
            ratio = next((v for k, v in rep.findings.items()
                          if k.startswith(f"{key}: latency_mean / vllm")), None)
        if ratio is None or not (ratio < 1):
            shown = "n/a" if ratio is None or not math.isfinite(ratio) else f"{ratio:.3g}"
            out.append(f"{key}'s mean latency is not below vLLM v0's (ratio {shown})")
    return out


def _congestion_claims(rep) -> list[str]:
    """README: long outputs lose share of x* and oscillate; a coprime mix oscillates less."""
    f = rep.findings
    out = []
    if not f.get("long outputs lose share of x*", 1.0) < 1.0:
        out.append("long outputs do not lose share of the fixed point x*")
    if not f.get("long outputs oscillate", False):
        out.append("long outputs do not oscillate")
    g, c = f.get("gcd mix relative amplitude"), f.get("coprime mix relative amplitude")
    if g is not None and c is not None and not (c < g):
        out.append("the coprime mix does not oscillate less than the gcd mix")
    return out


_CLAIMS = {"flow-control": _flow_control_claims, "wait-low": _wait_claims,
           "wait-high": _wait_claims, "congestion": _congestion_claims}


def reproduction_warnings(rep, scale: float) -> list[str]:
    """One line per headline finding of ``rep`` that does not hold at this ``scale``."""
    claims = _CLAIMS.get(rep.name)
    if claims is None:
        return []
    at = "" if scale == 1 else f" at --scale {scale:g}"
    return [f"{rep.name}: the README's finding does not hold{at}: {m}" for m in claims(rep)]
