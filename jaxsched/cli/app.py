"""The typer application and its sub-apps; command modules register on them."""

from __future__ import annotations

import typer

__all__ = ["app", "bench_app"]

app = typer.Typer(
    name="jaxsched",
    help="Design, tune and ship KV-memory scheduling policies for LLM inference.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
bench_app = typer.Typer(help="Benchmarks that print ratios measured in one run.",
                        no_args_is_help=True)
app.add_typer(bench_app, name="bench")
