"""Rich tables shared by the commands."""

from __future__ import annotations

import contextlib
import math

import numpy as np
from rich.table import Table

from jaxsched.metrics import METRIC_KEYS

__all__ = ["metrics_table", "fmt", "run_progress"]


def fmt(x) -> str:
    x = float(x)
    if not math.isfinite(x):
        return "-"
    if x != 0 and (abs(x) >= 1e5 or abs(x) < 1e-3):
        return f"{x:.3e}"
    return f"{x:.4g}"


def _d1_text(cfg) -> str:
    """``d1=...`` (the papers' single coefficient) or the split pair."""
    if cfg.d1_prefill == cfg.d1_context:
        return f"d1={cfg.d1_prefill:g}"
    return f"d1_prefill={cfg.d1_prefill:g}, d1_context={cfg.d1_context:g}"


def metrics_table(result, per_workload: bool = False) -> Table:
    exp = result.experiment
    cfg = exp.config
    title = (f"{exp.policy.name} on {cfg.source}: {result.num_workloads} workloads x "
             f"{result.horizon} iterations (C={cfg.capacity:g}, d0={cfg.d0:g}, {_d1_text(cfg)}"
             + (f", block_size={cfg.block_size}" if cfg.block_size > 1 else "") + ")")
    table = Table(title=title, title_justify="left")
    table.add_column("metric")
    table.add_column("mean", justify="right")
    table.add_column("min", justify="right")
    table.add_column("max", justify="right")
    shown = min(result.num_workloads, 8) if per_workload else 0
    for i in range(shown):
        table.add_column(f"w{i}", justify="right")
    for key in METRIC_KEYS:
        vals = np.asarray(result.per_workload[key], np.float64)
        finite = vals[np.isfinite(vals)]
        lo = finite.min() if finite.size else np.nan
        hi = finite.max() if finite.size else np.nan
        row = [key, fmt(result.summary[key]), fmt(lo), fmt(hi)]
        row += [fmt(v) for v in vals[:shown]]
        table.add_row(*row)
    table.caption = (f"compile {result.compile_seconds:.2f} s, simulate {result.sim_seconds:.2f} s")
    stats = getattr(result, "run_stats", None)
    if stats is not None:
        from jaxsched.chunked import format_bytes

        p = stats.plan
        table.caption += (f"; {p.num_devices} device(s), {p.num_batches} batch(es) of {p.batch}, "
                          f"chunks of {p.chunk} iterations, peak {format_bytes(stats.peak_bytes)}"
                          " per device")
        if getattr(p, "window", None):
            table.caption += f"; streamed, window of {p.window} requests per workload"
    return table


@contextlib.contextmanager
def run_progress(console, description: str):
    """A rich progress bar; yields ``progress(message, done, total)`` for the simulator."""
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    with Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.fields[msg]}"),
                  TimeElapsedColumn(), console=console, transient=True) as bar:
        task = bar.add_task(description, total=None, msg="compiling")

        def update(message: str, done: int, total: int) -> None:
            bar.update(task, completed=done, total=total, msg=message)

        yield update
