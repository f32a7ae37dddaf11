"""Running accumulators and the metrics computed from them.

Metrics count iterations ``k >= warmup`` only (for each workload; averaged across workloads
by :func:`mean_over_workloads`):

* ``completed_per_time``: requests completed per unit time, over ``T_H - T_warmup``.
* ``tokens_per_time``: output tokens of the completed requests per unit time (the WAIT
  paper's effective throughput: tokens of requests that later get evicted and restart do
  not count twice).
* ``latency_mean/p50/p95/p99``: arrival to completion; ``ttft_mean/p95``: arrival to first
  token. Each counts the events inside the window: latency the requests *completed* after the
  warm-up, TTFT the requests whose *first token* came after it. The two sets differ (a request
  started before the warm-up ends counts only in latency, one started near the horizon only in
  TTFT), so under a growing backlog (``saturated``, where every request arrives at 0 and a
  later start means a larger TTFT) ``ttft_mean`` can exceed ``latency_mean``. Percentiles are nearest-rank (the ``ceil(p n)``-th smallest value), read from a
  fixed log-spaced histogram (``BINS_PER_OCTAVE`` bins per doubling, so within 1.1% of the
  exact value) so memory does not grow with the number of requests.
* ``evictions``, ``recomputed_tokens`` (KV tokens discarded by evictions), ``overflow_steps``
  (iterations in which eviction was needed): totals.
* ``mean_memory`` (time-weighted mean of ``M_k``), ``peak_memory``, ``utilization`` =
  ``mean_memory / C``, ``queue_final`` (waiting requests after the last iteration).
"""

from __future__ import annotations

import math
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

__all__ = [
    "METRIC_KEYS",
    "BINS_PER_OCTAVE",
    "NUM_BINS",
    "Accumulators",
    "init_accumulators",
    "histogram_floor",
    "bin_index",
    "hist_percentile",
    "finalize",
    "mean_over_workloads",
    "DERIVED_METRICS",
    "measured_time",
    "add_derived",
    "aggregate",
    "jsonable",
]

METRIC_KEYS = (
    "completed_per_time",
    "tokens_per_time",
    "latency_mean",
    "latency_p50",
    "latency_p95",
    "latency_p99",
    "ttft_mean",
    "ttft_p95",
    "evictions",
    "recomputed_tokens",
    "mean_memory",
    "peak_memory",
    "overflow_steps",
    "queue_final",
    "utilization",
)

BINS_PER_OCTAVE = 64
NUM_OCTAVES = 24
NUM_BINS = BINS_PER_OCTAVE * NUM_OCTAVES


@struct.dataclass
class Accumulators:
    """Running sums over iterations >= warmup. Counts are int32, or float32 mass sums in the
    relaxed modes (``jaxsched.core.model.RELAX_MODES``)."""

    completed: jax.Array  # () int32
    completed_tokens: jax.Array  # () float32
    latency_sum: jax.Array  # () float32
    latency_hist: jax.Array  # (NUM_BINS,) int32
    ttft_count: jax.Array  # () int32
    ttft_sum: jax.Array  # () float32
    ttft_hist: jax.Array  # (NUM_BINS,) int32
    evictions: jax.Array  # () int32
    recomputed_tokens: jax.Array  # () float32
    overflow_steps: jax.Array  # () int32
    memory_time: jax.Array  # () float32, sum of M_k tau_k
    elapsed: jax.Array  # () float32, sum of tau_k
    peak_memory: jax.Array  # () float32


def init_accumulators(relaxed: bool = False) -> Accumulators:
    """Zeroed accumulators; counts are float32 mass sums in the relaxed modes."""
    count = jnp.float32 if relaxed else jnp.int32
    zi, zf = jnp.zeros((), count), jnp.zeros((), jnp.float32)
    hist = jnp.zeros((NUM_BINS,), count)
    return Accumulators(zi, zf, zf, hist, zi, zf, hist, zi, zf, zi, zf, zf, zf)


def histogram_floor(d0, d1):
    """Lower edge of the latency histogram: half the shortest possible iteration (``d1``: the
    smaller of ``d1_prefill`` and ``d1_context``)."""
    return jnp.maximum(0.5 * (d0 + d1), 1e-9)


def bin_index(x, lo):
    """Bin of value ``x``: ``floor(BINS_PER_OCTAVE log2(x / lo))`` clipped to the range."""
    b = jnp.floor(BINS_PER_OCTAVE * jnp.log2(jnp.maximum(x, 1e-30) / lo))
    return jnp.clip(b, 0, NUM_BINS - 1).astype(jnp.int32)


def hist_percentile(hist, lo, p):
    """Nearest-rank ``p``-quantile (0 < p <= 1) from a histogram; NaN if it is empty."""
    total = jnp.sum(hist)
    rank = jnp.maximum(jnp.ceil(p * total), 1.0)
    cum = jnp.cumsum(hist)
    i = jnp.argmax(cum >= rank)
    before = cum[i] - hist[i]
    frac = (rank - before - 0.5) / jnp.maximum(hist[i], 1)
    value = lo * jnp.exp2((i + frac) / BINS_PER_OCTAVE)
    return jnp.where(total > 0, value, jnp.nan)


def finalize(acc: Accumulators, num_waiting, capacity, lo) -> dict:
    """Per-workload metric dict (scalars) from the accumulators."""
    elapsed = jnp.maximum(acc.elapsed, 1e-30)
    completed = jnp.where(acc.completed > 0, acc.completed, 1)
    mean_memory = acc.memory_time / elapsed
    nan = jnp.float32(jnp.nan)
    return {
        "completed_per_time": acc.completed / elapsed,
        "tokens_per_time": acc.completed_tokens / elapsed,
        "latency_mean": jnp.where(acc.completed > 0, acc.latency_sum / completed, nan),
        "latency_p50": hist_percentile(acc.latency_hist, lo, 0.50),
        "latency_p95": hist_percentile(acc.latency_hist, lo, 0.95),
        "latency_p99": hist_percentile(acc.latency_hist, lo, 0.99),
        "ttft_mean": jnp.where(acc.ttft_count > 0,
                               acc.ttft_sum / jnp.where(acc.ttft_count > 0, acc.ttft_count, 1),
                               nan),
        "ttft_p95": hist_percentile(acc.ttft_hist, lo, 0.95),
        "evictions": acc.evictions.astype(jnp.float32),
        "recomputed_tokens": acc.recomputed_tokens,
        "mean_memory": mean_memory,
        "peak_memory": acc.peak_memory,
        "overflow_steps": acc.overflow_steps.astype(jnp.float32),
        "queue_final": num_waiting.astype(jnp.float32),
        "utilization": mean_memory / capacity,
    }


def mean_over_workloads(per_workload: dict, axis: int = -1) -> dict:
    """Mean across the workload axis, ignoring NaN (e.g. a workload with no completion)."""
    return {k: jnp.nanmean(jnp.asarray(v, jnp.float32), axis=axis) for k, v in per_workload.items()}


# ------------------------------------------------------------------------------------------
# Derived metrics and the mean over workloads (what the tuners and the validator read).

DERIVED_METRICS = ("completed", "evictions_per_request")
"""Metrics computed from the simulator's: ``completed`` requests after warmup
(``completed_per_time`` times the measured time) and ``evictions_per_request`` (evictions
after warmup per request completed after warmup; ``evictions`` when none completed)."""


def measured_time(horizon: int, warmup: int, d0: float, d1: float, final_time,
                  d2: float = 0.0):
    """Time over which the metrics are measured (iterations ``warmup..horizon-1``); ``d1``: the
    larger of ``d1_prefill`` and ``d1_context`` (only whether it is 0 matters).

    Exact for a constant iteration time (``d1 = d2 = 0``: ``(horizon - warmup) d0``); with
    ``d1 > 0`` or ``d2 > 0`` the simulator does not report the warmup's end, so this is
    ``final_time (horizon - warmup) / horizon`` (iterations of equal length).
    """
    frac = (horizon - warmup) / horizon
    if d1 == 0 and d2 == 0:
        return (horizon - warmup) * d0 + 0 * final_time
    return final_time * frac


def add_derived(metrics: Mapping[str, Any], elapsed) -> dict[str, Any]:
    """``metrics`` plus :data:`DERIVED_METRICS` (per workload; ``elapsed`` broadcasts)."""
    out = dict(metrics)
    if "completed" not in out:
        out["completed"] = metrics["completed_per_time"] * elapsed
    done = out["completed"]
    out["evictions_per_request"] = metrics["evictions"] / (done + (done < 0.5))
    return out


def aggregate(per_workload: Mapping[str, Any], axis: int = -1, xp=np) -> dict[str, Any]:
    """Mean over the workload axis, ignoring NaN (all-NaN gives NaN)."""
    out = {}
    for key, v in per_workload.items():
        v = xp.asarray(v)
        ok = ~xp.isnan(v)
        n = xp.sum(ok, axis=axis)
        s = xp.sum(xp.where(ok, v, 0.0), axis=axis)
        out[key] = xp.where(n > 0, s / xp.maximum(n, 1), xp.nan)
    return out


def jsonable(x):
    """A metric (a number or an array) as JSON numbers: floats, nested lists for arrays, and
    ``None`` where the value is NaN or infinite (no request completed, say)."""
    arr = np.asarray(x, dtype=np.float64)
    if arr.ndim == 0:
        v = float(arr)
        return v if math.isfinite(v) else None
    return [jsonable(v) for v in arr]
