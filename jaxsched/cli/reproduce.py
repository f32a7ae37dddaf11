"""``jaxsched reproduce NAME``: the papers' experiments as tables, plots and markdown."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from jaxsched.cli.app import app

__all__ = ["reproduce"]


@app.command()
def reproduce(
    name: str = typer.Argument(..., help="flow-control | wait-low | wait-high | congestion"),
    out: Path = typer.Option(Path("out/reproduce"), "--out", help="folder for PNGs and markdown"),
    scale: float = typer.Option(1.0, help="shrink horizons and workload counts (quick runs)"),
    only: Optional[str] = typer.Option(None, "--only", help="comma-separated label prefixes: "
                                       "run only these contenders (e.g. greedy,flow_control_known)"),
):
    """Run a reproduction and print its table."""
    import math

    from rich.console import Console
    from rich.table import Table

    from jaxsched.cli.checks import check_output_dir
    from jaxsched.cli.sanity import reproduction_warnings, warn
    from jaxsched.cli.tables import fmt, print_table, status_progress
    from jaxsched.tools.reproduce import reproduce as run

    check_output_dir(out, "--out")
    err = Console(stderr=True)
    with status_progress(err, f"reproducing {name}") as say:
        rep = run(name, out, scale, progress=say,
                  only=tuple(o.strip() for o in only.split(",") if o.strip()) if only else ())
    table = Table(title=f"reproduction: {name}", title_justify="left")
    for i, col in enumerate(rep.columns):
        table.add_column(col, justify="left" if i == 0 else "right")
    for row in rep.rows:
        table.add_row(*[v if isinstance(v, str) else (str(v) if isinstance(v, bool) else fmt(v))
                        for v in row])
    console = Console()
    print_table(console, table)
    for key, value in rep.findings.items():
        shown = fmt(value) if isinstance(value, float) and math.isfinite(value) else value
        console.print(f"  {key}: {shown}")
    for f in rep.files:
        err.print(f"wrote {f}")
    for line in reproduction_warnings(rep, scale):
        warn(err, line)
