"""Matplotlib figures people would rather look at than read (PNG, headless backend)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from jaxsched import metrics as M

__all__ = ["plot_simulation", "histogram_cdf"]


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def histogram_cdf(hist: np.ndarray, lo: float) -> tuple[np.ndarray, np.ndarray]:
    """(upper bin edges, cumulative fraction) of a latency histogram (non-empty bins)."""
    hist = np.asarray(hist, np.float64)
    edges = lo * np.exp2((np.arange(hist.shape[-1]) + 1) / M.BINS_PER_OCTAVE)
    cum = np.cumsum(hist)
    total = cum[-1] if cum[-1] > 0 else 1.0
    keep = hist > 0
    return edges[keep], cum[keep] / total


def plot_simulation(result, out: str | Path, max_lines: int = 4) -> Path:
    """Memory over time for the first workloads and the latency CDF of all of them."""
    plt = _pyplot()
    exp = result.experiment
    cfg = exp.config
    fig, (ax_mem, ax_cdf) = plt.subplots(1, 2, figsize=(12, 4.2))
    trace = result.trace
    for i in range(min(max_lines, trace.time.shape[0])):
        ax_mem.plot(trace.time[i], trace.memory[i], lw=0.8, label=f"workload {i}")
    ax_mem.axhline(cfg.capacity, color="k", ls="--", lw=1, label="capacity C")
    ax_mem.set_xlabel("time")
    ax_mem.set_ylabel("KV memory in use (tokens)")
    ax_mem.set_title(f"{exp.policy.name}: memory over time")
    ax_mem.legend(fontsize=8, loc="lower right")
    lo = float(M.histogram_floor(cfg.d0, min(cfg.d1_prefill, cfg.d1_context)))
    x, y = histogram_cdf(result.latency_hist.sum(axis=0), lo)
    ax_cdf.step(x, y, where="post")
    ax_cdf.set_xscale("log")
    ax_cdf.set_xlabel("latency (arrival to completion)")
    ax_cdf.set_ylabel("fraction of requests")
    ax_cdf.set_title("latency CDF (all workloads, after warm-up)")
    ax_cdf.grid(alpha=0.3)
    fig.tight_layout()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out
