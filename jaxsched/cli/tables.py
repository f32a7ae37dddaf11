"""Rich tables shared by the commands."""

from __future__ import annotations

import contextlib
import math

import numpy as np
from rich.table import Table

from jaxsched.core.metrics import METRIC_KEYS

__all__ = ["metrics_table", "fmt", "print_table", "run_info", "run_progress", "status_progress",
           "delayed_progress"]


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


def _plain(cell) -> str:
    from rich.text import Text

    if isinstance(cell, Text):
        return cell.plain
    if isinstance(cell, str):
        return Text.from_markup(cell).plain
    return str(cell)


def print_table(console, table: Table, heading_columns: int = 1, heading_prefix: str = "") -> None:
    """Print ``table`` as it is when it fits the console's width, else vertically: one block
    per row, headed by its first ``heading_columns`` cells, the others as ``column: value``
    wrapped to the width (nothing is truncated, at 80 columns or fewer)."""
    import textwrap

    natural = console.measure(table, options=console.options.update(width=100_000)).maximum
    if natural <= console.width:
        console.print(table)
        return
    width = max(console.width, 40)
    cols = table.columns
    headers = [_plain(c.header) for c in cols]
    cells = [[_plain(x) for x in c._cells] for c in cols]
    if table.title:
        console.print(_plain(table.title), markup=False, highlight=False)
    for r in range(table.row_count):
        head = heading_prefix + " ".join(cells[c][r]
                                         for c in range(min(heading_columns, len(cols))))
        console.print(head, style="bold", markup=False, highlight=False)
        pairs = [f"{headers[c]}: {cells[c][r]}" for c in range(heading_columns, len(cols))
                 if cells[c][r] != ""]
        text = "; ".join(pairs)
        console.print(textwrap.fill(text, width, initial_indent="  ", subsequent_indent="    "),
                      markup=False, highlight=False)
    if table.caption:
        console.print(textwrap.fill(_plain(table.caption), width), markup=False,
                      highlight=False)


def run_info(cfg, exp=None, overrides=()) -> dict:
    """What was run, for ``--json`` output: config, system, workload, policy and its values."""
    info = {
        "config": cfg.source,
        "overrides": list(overrides),
        "system": {"capacity": cfg.capacity, "block_size": cfg.block_size, "d0": cfg.d0,
                   "d1_prefill": cfg.d1_prefill, "d1_context": cfg.d1_context, "d2": cfg.d2,
                   "max_batch": cfg.system.max_batch, "queue_size": cfg.system.queue_size,
                   "restart_on_evict": cfg.system.restart_on_evict,
                   "profile": cfg.system.profile},
        "workload": {"kind": cfg.workload.kind, "num_workloads": cfg.workload.num_workloads,
                     "horizon": cfg.workload.horizon, "warmup": cfg.workload.warmup,
                     "seed": cfg.workload.seed},
        "policy": {"name": cfg.policy.name, **cfg.policy.settings()},
    }
    if exp is not None:
        info["policy"]["params"] = {k: np.asarray(v).tolist()
                                    for k, v in dict(exp.params.policy).items()}
    return info


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
        from jaxsched.running.chunked import format_bytes

        p = stats.plan
        table.caption += (f"; {p.num_devices} device(s), {p.num_batches} batch(es) of {p.batch}, "
                          f"chunks of {p.chunk} iterations, peak {format_bytes(stats.peak_bytes)}"
                          " per device")
        if getattr(p, "window", None):
            table.caption += f"; streamed, window of {p.window} requests per workload"
    return table


PROGRESS_DELAY_S = 2.0  # a run shorter than this shows no progress at all


@contextlib.contextmanager
def delayed_progress(console, columns, enabled: bool = True, delay: float = PROGRESS_DELAY_S):
    """A rich ``Progress`` on ``console`` that appears only once the run has lasted ``delay``
    seconds, and never when ``enabled`` is false or the console is not a terminal (a pipe, a
    file, ``--json``). Yields the ``Progress``; updates before it appears are kept."""
    import threading

    from rich.progress import Progress

    bar = Progress(*columns, console=console, transient=True,
                   disable=not (enabled and console.is_terminal))
    lock = threading.Lock()
    state = {"started": False, "done": False}

    def start():
        with lock:
            if not state["done"]:
                bar.start()
                state["started"] = True

    timer = threading.Timer(delay, start)
    timer.daemon = True
    timer.start()
    try:
        yield bar
    finally:
        timer.cancel()
        with lock:
            state["done"] = True
            if state["started"]:
                bar.stop()


@contextlib.contextmanager
def run_progress(console, description: str, enabled: bool = True):
    """Simulator progress (see :func:`delayed_progress`); yields ``progress(message, done,
    total)`` for the simulator."""
    from rich.progress import BarColumn, TextColumn, TimeElapsedColumn

    columns = (TextColumn("{task.description}"), BarColumn(), TextColumn("{task.fields[msg]}"),
               TimeElapsedColumn())
    with delayed_progress(console, columns, enabled) as bar:
        task = bar.add_task(description, total=None, msg="compiling")

        def update(message: str, done: int, total: int) -> None:
            bar.update(task, completed=done, total=total, msg=message)

        yield update


@contextlib.contextmanager
def status_progress(console, description: str, enabled: bool = True):
    """A spinner with the latest message and the elapsed time (see :func:`delayed_progress`);
    yields ``say(message)``."""
    from rich.progress import SpinnerColumn, TextColumn, TimeElapsedColumn

    columns = (SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn())
    with delayed_progress(console, columns, enabled) as bar:
        task = bar.add_task(description, total=None)

        def say(message: str) -> None:
            bar.update(task, description=message)

        yield say
