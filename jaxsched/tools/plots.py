"""Matplotlib figures people would rather look at than read (PNG, headless backend)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from jaxsched.core import metrics as M

__all__ = ["pyplot", "plot_simulation", "histogram_cdf", "time_unit", "line_style", "mark_warmup",
           "log_time_axis", "cdf_or_note", "no_completion_note"]


def pyplot():
    """``matplotlib.pyplot`` on the headless Agg backend (imported on first use: about 1 s)."""
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


def time_unit(cfg) -> str:
    """The unit of the simulator's clock for axis labels: seconds with a hardware or measured
    profile, iterations in the slotted model (``d0 = 1``, ``d1 = d2 = 0``)."""
    if cfg.system.profile is not None or cfg.resolved.get("hardware"):
        return "s"
    if cfg.d0 == 1.0 and cfg.d1 == 0.0 and cfg.d2 == 0.0:
        return "iterations"
    return "time units"


LINE_STYLES = ("-", "--", "-.", ":")


def line_style(i: int) -> dict:
    """Colour, dash and width of line ``i``: overlapping workloads stay distinguishable."""
    return dict(color=f"C{i % 10}", ls=LINE_STYLES[i % len(LINE_STYLES)],
                lw=1.2 if i == 0 else 0.9, alpha=0.9)


def mark_warmup(ax, end: float) -> None:
    """Shade the warm-up (iterations that do not count in the metrics)."""
    if end > 0:
        ax.axvspan(0, end, color="0.85", alpha=0.6, lw=0, label="warm-up (not in metrics)")


def log_time_axis(ax) -> None:
    """Readable log-scale ticks: 1-2-5 per decade labelled plainly, unlabelled minor ticks."""
    from matplotlib import ticker

    ax.set_xscale("log")
    ax.xaxis.set_major_locator(ticker.LogLocator(base=10, subs=(1.0, 2.0, 5.0), numticks=12))
    ax.xaxis.set_major_formatter(ticker.FuncFormatter(lambda v, _: f"{v:g}"))
    ax.xaxis.set_minor_formatter(ticker.NullFormatter())


def cdf_or_note(ax, x, y, **style) -> bool:
    """Step-plot a latency CDF; with no completed request, say so instead of drawing an empty
    panel on a degenerate axis. Returns whether something was drawn."""
    if len(x) == 0:
        return False
    ax.step(x, y, where="post", **style)
    return True


def no_completion_note(ax) -> None:
    ax.text(0.5, 0.5, "no request completed after the warm-up:\nno latency to show",
            ha="center", va="center", transform=ax.transAxes, fontsize=10, color="0.3")
    ax.set_xticks([])
    ax.set_yticks([])


def plot_simulation(result, out: str | Path, max_lines: int = 4) -> Path:
    """Memory over time for the first workloads (warm-up shaded, capacity C dashed) and the
    latency CDF of all of them after the warm-up."""
    plt = pyplot()
    exp = result.experiment
    cfg = exp.config
    unit = time_unit(cfg)
    fig, (ax_mem, ax_cdf) = plt.subplots(1, 2, figsize=(12, 4.2))
    trace = result.trace
    warm = cfg.workload.warmup
    if warm > 0:
        mark_warmup(ax_mem, float(trace.time[0][min(warm, trace.time.shape[1] - 1)]))
    shown = min(max_lines, trace.time.shape[0])
    groups: list[list[int]] = []  # identical trajectories drawn once, labelled together
    for i in range(shown):
        same = next((g for g in groups if np.array_equal(trace.memory[g[0]], trace.memory[i])
                     and np.array_equal(trace.time[g[0]], trace.time[i])), None)
        if same is None:
            groups.append([i])
        else:
            same.append(i)
    for j, g in enumerate(groups):
        label = f"workload {g[0]}" if len(g) == 1 else \
            f"workloads {', '.join(map(str, g))} (identical)"
        ax_mem.plot(trace.time[g[0]], trace.memory[g[0]], label=label, **line_style(j))
    ax_mem.axhline(cfg.capacity, color="k", ls="--", lw=1, label=f"capacity C = {cfg.capacity:g}")
    ax_mem.set_xlabel(f"time ({unit})")
    ax_mem.set_xlim(left=0)
    ax_mem.set_ylabel("KV memory in use (tokens)")
    ax_mem.set_title(f"{exp.policy.name}: memory over time")
    ax_mem.legend(fontsize=8, loc="lower right", framealpha=0.9)
    lo = float(M.histogram_floor(cfg.d0, min(cfg.d1_prefill, cfg.d1_context)))
    x, y = histogram_cdf(result.latency_hist.sum(axis=0), lo)
    if cdf_or_note(ax_cdf, x, y, color="C0"):
        log_time_axis(ax_cdf)
        ax_cdf.set_ylim(0, 1.02)
        ax_cdf.grid(alpha=0.3, which="both")
    else:
        no_completion_note(ax_cdf)
    ax_cdf.set_xlabel(f"latency, arrival to completion ({unit})")
    ax_cdf.set_ylabel("fraction of requests")
    ax_cdf.set_title("latency CDF (all workloads, after warm-up)")
    fig.tight_layout()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out
