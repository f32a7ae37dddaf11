"""``jaxsched theory CONFIG``: the three papers' predictions for a config."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from jaxsched.cli.app import app

__all__ = ["theory"]

# Policy parameters that the theory report reads, by policy.
_POLICY_KNOBS = {
    "flow_control_known": ("budget", "budgets"),
    "flow_control": ("budget", "global_budget"),
    "wait": ("threshold", "thresholds"),
    "nested_wait": ("threshold", "nested_thresholds"),
}


def _value(v):
    if isinstance(v, float):
        return f"{v:.6g}"
    if isinstance(v, (tuple, list)):
        return "(" + ", ".join(_value(x) for x in v) + ")"
    return "-" if v is None else str(v)


@app.command()
def theory(
    config: Optional[Path] = typer.Argument(None, help="TOML config (default: embedded default)"),
    set_: list[str] = typer.Option([], "--set", help="override: section.key=value"),
    as_json: bool = typer.Option(False, "--json", help="rows as a JSON list"),
):
    """Fluid model, flow-control conditions and congestion predictions for a config."""
    from rich.console import Console
    from rich.table import Table

    from jaxsched import api, theory as th
    from jaxsched.cli.tables import print_table
    from jaxsched.config import DEFAULT_CONFIG, load_config
    from jaxsched.errors import JaxschedError
    from jaxsched.workloads.registry import kind_class

    cfg = load_config(config or DEFAULT_CONFIG, set_)
    if not kind_class(cfg.workload.kind).class_lengths:
        raise JaxschedError(f"{cfg.source}: workload.kind: the theory needs request classes, "
                            f"not a {cfg.workload.kind}")
    ctx = api.workload_context(cfg)
    ctx["d1"] = cfg.d1  # the theory's single d1: refused in one line if the profile splits it
    kwargs = {}
    knob = _POLICY_KNOBS.get(cfg.policy.name)
    if knob is not None:
        exp = api.build_experiment(cfg)
        value = exp.params.policy.get(knob[0])
        if value is not None:
            import numpy as np

            arr = np.asarray(value)
            kwargs[knob[1]] = arr.tolist() if arr.ndim else float(arr)
    rows = th.theory_report(
        ctx["prompt_len"], ctx["output_len"], ctx["rate"], ctx["weight"],
        capacity=ctx["capacity"], d0=ctx["d0"], d1=ctx["d1"],
        slotted=(ctx["d0"] == 1.0 and ctx["d1"] == 0.0), horizon=cfg.workload.horizon * ctx["d0"],
        **kwargs,
    )
    if as_json:
        typer.echo(json.dumps([r._asdict() for r in rows], default=str))
        return
    table = Table(title=f"theory for {cfg.source}", title_justify="left")
    for col in ("section", "quantity", "value", "note"):
        table.add_column(col)
    for r in rows:
        table.add_row(r.section, r.quantity, _value(r.value), r.note)
    print_table(Console(), table, heading_columns=2)
