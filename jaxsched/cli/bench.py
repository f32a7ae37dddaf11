"""``jaxsched bench ...``: benchmarks printing ratios measured in one run."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Optional

import typer

from jaxsched.cli.app import bench_app
from jaxsched.cli.checks import IMAGE_SUFFIXES, check_output_file, parse_int_list

__all__ = ["sim", "scale", "replay"]


@bench_app.command("sim")
def sim(
    config: Optional[Path] = typer.Argument(None, help="TOML config (default: the embedded default)"),
    set_: list[str] = typer.Option([], "--set", help="override: section.key=value"),
    workloads: str = typer.Option("1,64,1024", help="batch sizes, comma-separated"),
    reference_workloads: int = typer.Option(2, help="workloads run through the reference"),
    as_json: bool = typer.Option(False, "--json", help="one JSON object on stdout"),
):
    """Simulator throughput at several batch sizes, and the speedup over the reference
    simulator and (greedy, saturated: e.g. the config tight-greedy) over a tight loop."""
    from rich.console import Console
    from rich.table import Table

    from jaxsched.tools.bench import bench_sim
    from jaxsched.config import DEFAULT_CONFIG, load_config

    err = Console(stderr=True)
    cfg = load_config(config or DEFAULT_CONFIG, set_)
    with err.status("benchmarking…") as status:
        result = bench_sim(cfg, parse_int_list(workloads, "--workloads"), reference_workloads,
                           progress=lambda msg: status.update(msg))
    if as_json:
        typer.echo(json.dumps(dataclasses.asdict(result)))
        return
    table = Table(title=(f"jaxsched bench sim: {result.policy}, horizon {result.horizon}, "
                         f"max_batch {result.max_batch}, {result.device}"), title_justify="left")
    tight = result.tight_agrees is not None
    for col in ("workloads", "wall s", "slot-iterations/s", "requests/s", "ms/workload",
                "speedup vs reference") + (("speedup vs tight loop",) if tight else ()):
        table.add_column(col, justify="right")
    for r in result.rows:
        table.add_row(str(r.num_workloads), f"{r.wall_seconds:.3f}",
                      f"{r.slot_iterations_per_second:.3e}", f"{r.requests_per_second:,.0f}",
                      f"{1e3 * r.seconds_per_workload:.2f}", f"{r.speedup_vs_reference:.1f}x",
                      *((f"{r.speedup_vs_tight:.1f}x",) if tight else ()))
    caption = (
        f"reference: {1e3 * result.reference_seconds_per_workload:.1f} ms/workload, "
        f"{result.reference_requests_per_second:,.0f} requests/s over {result.reference_workloads} "
        f"workloads; completed counts {'agree' if result.reference_agrees else 'DISAGREE'}"
    )
    if tight:
        caption += (
            f"\ntight loop (jaxsched.tools.bench.tight_greedy): "
            f"{1e3 * result.tight_seconds_per_workload:.1f} ms/workload, "
            f"{result.tight_requests_per_second:,.0f} requests/s; completed counts "
            f"{'agree' if result.tight_agrees else 'DISAGREE'}")
    else:
        caption += "\ntight loop: n/a (greedy on a saturated workload only; e.g. tight-greedy)"
    table.caption = caption
    Console().print(table)


@bench_app.command("replay")
def replay(
    config: Optional[Path] = typer.Argument(None, help="TOML config (default: azure-conv)"),
    set_: list[str] = typer.Option([], "--set", help="override: section.key=value (after "
                                   "the benchmark's own: vllm v0, 128 slots, 1024 x 8000)"),
    repeats: int = typer.Option(1, min=1, help="runs of each, the fastest counts"),
    moves: int = typer.Option(0, min=0, help="count the moves (leap + step) of this many "
                              "workloads (a traced run, untimed)"),
    as_json: bool = typer.Option(False, "--json", help="one JSON object on stdout"),
):
    """A trace replay stepped one iteration at a time and with leaps over quiet iterations
    (system.leap), in the same run: simulated requests per wall-second of each, and whether
    their metrics are identical."""
    from rich.console import Console
    from rich.table import Table

    from jaxsched.config import load_config
    from jaxsched.tools.bench import REPLAY_SETTINGS, bench_replay

    err = Console(stderr=True)
    cfg = load_config(config or "azure-conv", list(REPLAY_SETTINGS) + list(set_))
    with err.status("benchmarking…") as status:
        result = bench_replay(cfg, repeats, moves, progress=lambda msg: status.update(msg))
    if as_json:
        typer.echo(json.dumps(dataclasses.asdict(result)))
        return
    table = Table(title=(f"jaxsched bench replay: {result.policy}, {result.num_workloads} "
                         f"workloads x {result.horizon} iterations, max_batch "
                         f"{result.max_batch}, {result.device}"), title_justify="left")
    for col in ("leap", "wall s", "compile s", "completed", "requests/s", "iterations/s"):
        table.add_column(col, justify="right")
    for r in result.rows:
        table.add_row("on" if r.leap else "off", f"{r.wall_seconds:.2f}",
                      f"{r.compile_seconds:.1f}", f"{r.completed:,}",
                      f"{r.requests_per_second:,.0f}", f"{r.iterations_per_second:.3e}")
    table.caption = (f"leaping / stepping: {result.speedup:.2f}x requests per wall-second; "
                     f"metrics {'identical' if result.identical else 'DIFFER'}")
    if result.moves_workloads:
        table.caption += (f"\nmoves per workload over {result.moves_workloads}: mean "
                          f"{result.moves_mean:,.0f}, max {result.moves_max:,} (of "
                          f"{result.horizon} iterations; a batch waits for its busiest)")
    Console().print(table)


def _headline(text: str | None) -> tuple[int, int] | None:
    from jaxsched.errors import JaxschedError

    if text is None:
        return None
    parts = text.lower().replace(",", "").split("x")
    try:
        w, h = (int(p) for p in parts)
    except ValueError:
        raise JaxschedError(f"--headline {text!r}: expected WORKLOADSxITERATIONS, e.g. 10000x10000") \
            from None
    if w < 1 or h < 1:
        raise JaxschedError(f"--headline {text!r}: both numbers must be >= 1")
    return w, h


@bench_app.command("scale")
def scale(
    config: Optional[Path] = typer.Argument(None, help="TOML config (default: the embedded default)"),
    set_: list[str] = typer.Option([], "--set", help="override: section.key=value"),
    workloads: Optional[str] = typer.Option(None, help="workload counts (default: 1,16,256,1024 on CPU; 1..16384 on accelerators)"),
    slots: Optional[str] = typer.Option(None, help="max_batch values (default: 32,128,512 on CPU; up to 2048 on accelerators)"),
    horizons: Optional[str] = typer.Option(None, help="horizons (default: 150,600,2400 on CPU; up to 10000 on accelerators)"),
    fixed_workloads: Optional[int] = typer.Option(None, help="workloads for the slot and horizon sweeps (64 CPU, 1024 accelerators)"),
    shard_workloads: Optional[int] = typer.Option(None, help="workloads for the sharding-efficiency runs (256 CPU, 4096 accelerators)"),
    forced_devices: int = typer.Option(4, help="forced host CPU devices for the sharding runs when no backend has several devices (0: skip)"),
    backends: Optional[str] = typer.Option(None, help="comma-separated backends (default: every available one)"),
    repeats: int = typer.Option(2, help="runs per point (the best counts; the first compiles)"),
    max_memory: Optional[str] = typer.Option(None, "--max-memory", help="bytes per device, e.g. 2GiB (default: from free memory)"),
    bandwidth: Optional[float] = typer.Option(None, help="peak memory bandwidth in GB/s for the roofline (default: data sheet, or a measured copy on CPU)"),
    headline: Optional[str] = typer.Option(None, help="also run WxH, e.g. 10000x10000 (meant for a GPU)"),
    stream: Optional[bool] = typer.Option(False, "--stream/--no-stream", help="generate the workloads block by block into a sliding request window (see simulate --stream): peak memory stays flat along --horizons; default --no-stream"),
    plot: Optional[Path] = typer.Option(None, "--plot", help="write the log-log scaling PNG here"),
    as_json: bool = typer.Option(False, "--json", help="one JSON object on stdout"),
):
    """Throughput vs workloads, slots and horizon on every backend; sharding efficiency; roofline."""
    from rich.console import Console
    from rich.table import Table

    from jaxsched.running.chunked import format_bytes, parse_bytes
    from jaxsched.config import DEFAULT_CONFIG, load_config
    from jaxsched.tools.scaling import bench_scale, plot_scale

    err = Console(stderr=True)
    check_output_file(plot, "--plot", IMAGE_SUFFIXES)
    path = str(config or DEFAULT_CONFIG)
    cfg = load_config(path, set_)
    budget = None if max_memory is None else parse_bytes(max_memory)
    sweeps = {"workloads": workloads, "slots": slots, "horizons": horizons}
    args = {k: None if v is None else parse_int_list(v, f"--{k}") for k, v in sweeps.items()}
    args["headline"] = _headline(headline)
    with err.status("benchmarking…") as status:
        result = bench_scale(cfg, path, list(set_), fixed_workloads=fixed_workloads,
                             shard_workloads=shard_workloads, forced_devices=forced_devices,
                             backends=backends.split(",") if backends else None,
                             repeats=repeats, max_memory=budget,
                             bandwidth=None if bandwidth is None else bandwidth * 1e9,
                             progress=lambda msg: status.update(msg), stream=stream, **args)
    if plot is not None:
        plot_scale(result, plot)
        err.print(f"wrote {plot}")
    if as_json:
        typer.echo(json.dumps(dataclasses.asdict(result)))
        return
    console = Console()
    table = Table(title=f"jaxsched bench scale: {result.policy} ({result.config_source})",
                  title_justify="left")
    for col in ("backend", "devices", "workloads", "slots", "horizon", "N", "window", "wall s",
                "slot-iterations/s", "requests/s", "batches", "peak/device"):
        table.add_column(col, justify="right")
    for p in result.points:
        table.add_row(p.backend, str(p.num_devices), str(p.num_workloads), str(p.max_batch),
                      str(p.horizon), str(p.num_requests), str(p.window or "-"),
                      f"{p.wall_seconds:.3f}",
                      f"{p.slot_iterations_per_second:.3e}", f"{p.requests_per_second:,.0f}",
                      str(p.num_batches), format_bytes(p.peak_bytes))
    sources = sorted({p.peak_source for p in result.points})
    table.caption = "peak: " + "; ".join(sources)
    if any(p.window for p in result.points):
        table.caption += ("; window: requests held per workload when streamed (the N of the "
                          "full arrays is then never allocated)")
    console.print(table)
    roof = Table(title="memory-bandwidth roofline of the step", title_justify="left")
    for col in ("backend", "device", "bandwidth", "bytes/step/workload (shapes)",
                "XLA bytes accessed/step/workload", "roofline slot-iterations/s/device",
                "measured best / roofline"):
        roof.add_column(col, justify="right")
    for r in result.rooflines:
        best = max((p.slot_iterations_per_second / p.num_devices for p in result.points
                    if p.backend == r.backend and p.max_batch == r.max_batch), default=0.0)
        roof.add_row(r.backend, r.device_kind, f"{r.bandwidth / 1e9:,.0f} GB/s ({r.bandwidth_source})",
                     f"{r.bytes_per_step:,}", f"{r.xla_bytes_per_step:,.0f}",
                     f"{r.roofline_slot_iterations_per_second:.3e}",
                     f"{best / r.roofline_slot_iterations_per_second:.2%}")
    console.print(roof)
    if result.sharding:
        sh = Table(title="sharding efficiency: the same batch on n devices", title_justify="left")
        for col in ("backend", "devices", "workloads", "wall s", "slot-iterations/s",
                    "efficiency"):
            sh.add_column(col, justify="right")
        for s in result.sharding:
            sh.add_row(s.backend, str(s.num_devices), str(s.num_workloads),
                       f"{s.wall_seconds:.3f}", f"{s.slot_iterations_per_second:.3e}",
                       f"{s.efficiency:.2f}")
        if result.sharding_note:
            sh.caption = result.sharding_note
        console.print(sh)
