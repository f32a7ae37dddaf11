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
    devices: Optional[int] = typer.Option(None, "--devices", help="devices to shard the workloads over (default: all)"),
    chunk: Optional[int] = typer.Option(None, "--chunk", help="iterations per device call (default: about 1000)"),
    max_memory: Optional[str] = typer.Option(None, "--max-memory", help="bytes per device, e.g. 2GiB (default: from free memory); larger batches are streamed"),
    stream: Optional[bool] = typer.Option(None, "--stream/--no-stream", help="generate each workload block by block into a sliding request window on the device, so memory does not grow with the horizon (poisson, bursty, saturated, trace; other sample paths than the full arrays). Default: stream when one workload's full request arrays would exceed 1 MiB and the window is at most half of them, and run again with full arrays if the queue outgrows the window"),
    window: Optional[int] = typer.Option(None, "--window", help="requests per workload in the streamed window (implies --stream unless --no-stream; default: from the arrivals of two chunks plus the look-ahead); a run whose queue outgrows it fails in one line"),
    coordinator: Optional[str] = typer.Option(None, "--coordinator", help="multi-host: coordinator host:port (or JAX_COORDINATOR_ADDRESS)"),
    num_processes: Optional[int] = typer.Option(None, "--num-processes", help="multi-host: number of processes"),
    process_id: Optional[int] = typer.Option(None, "--process-id", help="multi-host: this process's index"),
):
    """Simulate a config's workloads under its policy."""
    from rich.console import Console

    from jaxsched import api
    from jaxsched.running.chunked import parse_bytes
    from jaxsched.cli.checks import IMAGE_SUFFIXES, check_output_file
    from jaxsched.cli.sanity import simulation_warnings, warn
    from jaxsched.cli.tables import metrics_table, print_table, run_info, run_progress
    from jaxsched.config import DEFAULT_CONFIG, load_config
    from jaxsched.running.sharding import (initialize_distributed, is_main_process,
                                   native_stdout_to_stderr, select_devices)

    err = Console(stderr=True)
    check_output_file(plot, "--plot", IMAGE_SUFFIXES)
    cfg = load_config(config or DEFAULT_CONFIG, set_)
    budget = None if max_memory is None else parse_bytes(max_memory)
    distributed = initialize_distributed(coordinator, num_processes, process_id)
    select_devices(devices)  # a bad --devices fails here, in one line
    exp = api.build_experiment(cfg, record_trace=plot is not None)
    # multi-process: the collectives' native messages go to stderr, stdout keeps the result
    with native_stdout_to_stderr(distributed), \
            run_progress(err, f"simulating {cfg.workload.num_workloads} workloads x "
                         f"{cfg.workload.horizon} iterations ({exp.policy.name})",
                         enabled=not as_json) as progress:
        result = api.run_experiment(exp, devices=devices, chunk=chunk, max_memory=budget,
                                    progress=progress, stream=stream, window=window)
    if result.stream_note:
        err.print(f"[yellow]warning:[/] {result.stream_note}")
    for line in simulation_warnings(result):
        warn(err, line)
    if result.arrivals_ended > 0:
        err.print(f"[yellow]warning:[/] in {result.arrivals_ended:.0%} of the workloads the clock "
                  f"passed the arrival span ({exp.duration:g}); set workload.duration")
    if plot is not None and is_main_process():  # multi-process: process 0 writes the files
        from jaxsched.tools.plots import plot_simulation

        plot_simulation(result, plot)
        err.print(f"wrote {plot}")
    if as_json:
        typer.echo(json.dumps({**result.to_json(per_workload=per_workload),
                               "run": run_info(cfg, exp, set_)}))
        return
    console = Console()
    print_table(console, metrics_table(result, per_workload=per_workload))
