"""``jaxsched bench ...``: benchmarks printing ratios measured in one run."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Optional

import typer

from jaxsched.cli.app import bench_app

__all__ = ["sim"]


def _sizes(text: str) -> tuple[int, ...]:
    from jaxsched.errors import JaxschedError

    try:
        sizes = tuple(int(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise JaxschedError(f"--workloads {text!r}: expected comma-separated integers") from None
    if not sizes or min(sizes) < 1:
        raise JaxschedError(f"--workloads {text!r}: sizes must be >= 1")
    return sizes


@bench_app.command("sim")
def sim(
    config: Optional[Path] = typer.Argument(None, help="TOML config (default: the embedded default)"),
    set_: list[str] = typer.Option([], "--set", help="override: section.key=value"),
    workloads: str = typer.Option("1,64,1024", help="batch sizes, comma-separated"),
    reference_workloads: int = typer.Option(2, help="workloads run through the reference"),
    as_json: bool = typer.Option(False, "--json", help="one JSON object on stdout"),
):
    """Simulator throughput at several batch sizes, and the speedup over the reference."""
    from rich.console import Console
    from rich.table import Table

    from jaxsched.bench import bench_sim
    from jaxsched.config import DEFAULT_CONFIG, load_config

    err = Console(stderr=True)
    cfg = load_config(config or DEFAULT_CONFIG, set_)
    with err.status("benchmarking…") as status:
        result = bench_sim(cfg, _sizes(workloads), reference_workloads,
                           progress=lambda msg: status.update(msg))
    if as_json:
        typer.echo(json.dumps(dataclasses.asdict(result)))
        return
    table = Table(title=(f"jaxsched bench sim: {result.policy}, horizon {result.horizon}, "
                         f"max_batch {result.max_batch}, {result.device}"), title_justify="left")
    for col in ("workloads", "wall s", "slot-iterations/s", "requests/s", "ms/workload",
                "speedup vs reference"):
        table.add_column(col, justify="right")
    for r in result.rows:
        table.add_row(str(r.num_workloads), f"{r.wall_seconds:.3f}",
                      f"{r.slot_iterations_per_second:.3e}", f"{r.requests_per_second:,.0f}",
                      f"{1e3 * r.seconds_per_workload:.2f}", f"{r.speedup_vs_reference:.1f}x")
    table.caption = (
        f"reference: {1e3 * result.reference_seconds_per_workload:.1f} ms/workload, "
        f"{result.reference_requests_per_second:,.0f} requests/s over {result.reference_workloads} "
        f"workloads; completed counts {'agree' if result.reference_agrees else 'DISAGREE'}"
    )
    Console().print(table)
