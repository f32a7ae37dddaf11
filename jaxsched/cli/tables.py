"""Rich tables shared by the commands."""

from __future__ import annotations

import math

import numpy as np
from rich.table import Table

from jaxsched.metrics import METRIC_KEYS

__all__ = ["metrics_table", "fmt"]


def fmt(x) -> str:
    x = float(x)
    if not math.isfinite(x):
        return "-"
    if x != 0 and (abs(x) >= 1e5 or abs(x) < 1e-3):
        return f"{x:.3e}"
    return f"{x:.4g}"


def metrics_table(result, per_workload: bool = False) -> Table:
    exp = result.experiment
    cfg = exp.config
    title = (f"{exp.policy.name} on {cfg.source}: {result.num_workloads} workloads x "
             f"{result.horizon} iterations (C={cfg.capacity:g}, d0={cfg.d0:g}, d1={cfg.d1:g})")
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
    return table
