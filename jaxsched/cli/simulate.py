"""``jaxsched simulate``: run a config's workload batch and print its metrics."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from jaxsched.cli.app import app

__all__ = ["simulate"]


@app.command()
def simulate(
    config: Optional[Path] = typer.Argument(None, help="TOML config (default: the embedded small default)"),
    set_: list[str] = typer.Option([], "--set", help="override: section.key=value (repeatable)"),
    as_json: bool = typer.Option(False, "--json", help="print exactly one JSON object on stdout"),
    per_workload: bool = typer.Option(False, "--per-workload", help="include per-workload metrics"),
    plot: Optional[Path] = typer.Option(None, "--plot", help="write memory-over-time and latency-CDF PNG"),
):
    """Simulate a config's workloads under its policy."""
    from rich.console import Console

    from jaxsched import api
    from jaxsched.config import DEFAULT_CONFIG, load_config
    from jaxsched.cli.tables import metrics_table

    err = Console(stderr=True)
    cfg = load_config(config or DEFAULT_CONFIG, set_)
    exp = api.build_experiment(cfg, record_trace=plot is not None)
    with err.status(f"simulating {cfg.workload.num_workloads} workloads x "
                    f"{cfg.workload.horizon} iterations ({exp.policy.name})…"):
        result = api.run_experiment(exp)
    if result.arrivals_ended > 0:
        err.print(f"[yellow]warning:[/] in {result.arrivals_ended:.0%} of the workloads the clock "
                  f"passed the arrival span ({exp.duration:g}); set workload.duration")
    if plot is not None:
        from jaxsched.plots import plot_simulation

        plot_simulation(result, plot)
        err.print(f"wrote {plot}")
    if as_json:
        typer.echo(json.dumps(result.to_json(per_workload=per_workload)))
        return
    console = Console()
    console.print(metrics_table(result, per_workload=per_workload))
