"""``jaxsched tune``, ``jaxsched export``, ``jaxsched validate`` and ``jaxsched bench tune``."""

from __future__ import annotations

import dataclasses
import json
import math
import os
from pathlib import Path
from typing import Optional

import typer

from jaxsched.cli.app import app, bench_app
from jaxsched.errors import JaxschedError

__all__ = ["tune", "export", "validate", "bench_tune_command"]


def _fmt(x) -> str:
    from jaxsched.cli.tables import fmt

    if x is None:
        return "-"
    return fmt(x)


def _best_table(outcome, title: str):
    from rich.table import Table

    obj = outcome.objective
    table = Table(title=title, title_justify="left")
    table.add_column("trial", justify="right")
    for n in obj.names:
        table.add_column(n, justify="right")
    dims = outcome.space.names
    for d in dims:
        table.add_column(d, justify="right")
    shown = [m for m in ("completed_per_time", "latency_p95", "evictions_per_request")
             if m not in obj.names]
    for m in shown:
        table.add_column(m, justify="right")
    for c in obj.constraints:
        table.add_column(c.name, justify="right")
    for t in outcome.best:
        m = t.user_attrs.get("metrics", {})
        row = [str(t.number)] + [_fmt(v) for v in t.values]
        row += [_fmt(t.params.get(d)) for d in dims]
        row += [_fmt(m.get(k)) for k in shown]
        row += ["ok" if t.constraints.get(c.name, 0) <= 0 else "violated" for c in obj.constraints]
        table.add_row(*row)
    return table


@app.command()
def tune(
    config: Path = typer.Argument(..., help="TOML config; its \\[tune] table sets the defaults"),
    method: Optional[str] = typer.Option(None, help="optuna | gradient (default: tune.method)"),
    trials: Optional[int] = typer.Option(None, min=1, help="target evaluated trials in the study"),
    batch: Optional[int] = typer.Option(None, min=1, help="K: parameter sets per simulator call"),
    storage: Optional[str] = typer.Option(None, help="SQLAlchemy URL or SQLite file "
                                          "(default: tune.storage, else sqlite:///jaxsched-tune.db)"),
    study: Optional[str] = typer.Option(None, help="study name (default: <config>-<policy>)"),
    sampler: Optional[str] = typer.Option(None, help="tpe | cmaes | nsga2 | random"),
    objective: Optional[str] = typer.Option(None, help="weighted | pareto (default: tune.objective)"),
    workloads: Optional[int] = typer.Option(None, min=1, help="workloads per trial"),
    devices: Optional[int] = typer.Option(None, "--devices", min=1, help="devices the K x W "
                                          "batch is sharded over (default: tune.devices, else "
                                          "all)"),
    seed: Optional[int] = typer.Option(None, help="sampler seed (give each worker its own)"),
    set_: list[str] = typer.Option([], "--set", help="override: section.key=value (repeatable)"),
    plots: Optional[Path] = typer.Option(None, help="folder for the PNG plots (default: out/tune/<study>)"),
    no_plots: bool = typer.Option(False, "--no-plots", help="do not draw plots"),
    as_json: bool = typer.Option(False, "--json", help="print exactly one JSON object on stdout"),
    steps: Optional[int] = typer.Option(None, min=1, help="gradient: optimizer steps "
                                        "(default: tune.gradient.steps)"),
    checkpoint_dir: Optional[Path] = typer.Option(
        None, help="gradient: orbax checkpoint folder; rerunning with it resumes "
                   "(default: out/tune/<study>/checkpoints)"),
):
    """Tune a config's policy parameters; rerun the same command to continue the study
    (Optuna) or resume from the last checkpoint (gradient; --trials: restarts)."""
    from rich.console import Console

    from jaxsched.cli.checks import check_output_dir
    from jaxsched.config import load_config
    from tuning.settings import METHODS, SAMPLERS, tune_settings

    err = Console(stderr=True)
    if not no_plots:
        check_output_dir(plots, "--plots")
    check_output_dir(checkpoint_dir, "--checkpoint-dir")
    cfg = load_config(config, set_)
    settings = tune_settings(cfg.tune, cfg.source)
    if devices is not None:
        settings = settings.model_copy(update={"devices": devices})
    method = method or settings.method
    if method not in METHODS:
        raise JaxschedError(f"--method {method!r}: expected one of {', '.join(METHODS)}")
    if sampler is not None and sampler not in SAMPLERS:
        raise JaxschedError(f"--sampler {sampler!r}: expected one of {', '.join(SAMPLERS)}")
    if objective is not None and objective not in ("weighted", "pareto"):
        raise JaxschedError(f"--objective {objective!r}: expected weighted or pareto")
    if method == "gradient":
        from tuning import gradient_available

        if not gradient_available():
            raise JaxschedError("--method gradient: the gradient tuner is not available yet "
                                "(no module tuning.gradient_search); use --method optuna")
        from tuning import gradient_search

        gradient_search.tune_command(cfg, settings, trials=trials, storage=storage, study=study,
                                     seed=seed, plots=False if no_plots else plots,
                                     as_json=as_json, checkpoint_dir=checkpoint_dir,
                                     steps=steps, workloads=workloads)
        return
    _tune_optuna(cfg, settings, err, trials=trials, batch=batch, storage=storage, study=study,
                 sampler=sampler, objective=objective, workloads=workloads, seed=seed,
                 plots=plots, no_plots=no_plots, as_json=as_json, overrides=set_)


def _tune_optuna(cfg, settings, err, *, trials, batch, storage, study, sampler, objective,
                 workloads, seed, plots, no_plots, as_json, overrides=()):
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from jaxsched.cli.tables import print_table
    from tuning.optuna_loop import run_optuna
    from tuning.study_storage import load_study, open_storage
    from tuning.tune_job import prepare

    job = prepare(cfg, settings, objective_kind=objective, num_workloads=workloads)
    store = open_storage(storage or settings.storage)
    target = trials or settings.trials
    columns = (TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
               TextColumn("{task.fields[best]}"), TextColumn("{task.fields[rate]}"),
               TimeElapsedColumn())
    weighted = job.objective.kind == "weighted"

    # a terminal only: a pipe or a log file gets the summary, not the bar's redraws
    with Progress(*columns, console=err, transient=False,
                  disable=as_json or not err.is_terminal) as bar:
        task = bar.add_task("starting", total=target, best="", rate="")

        def status(msg):
            bar.update(task, description=msg)

        def progress(p):
            if weighted:
                best = f"best {p.best[0]:.4g}" if p.best else "no feasible trial"
            else:
                best = f"Pareto set {p.pareto_size}"
            bar.update(task, completed=min(p.evaluated, target), best=best,
                       rate=f"{p.trials_per_second:.2f} trials/s evaluating",
                       description=f"tuning {job.experiment.policy.name}")

        outcome = run_optuna(job, trials=target, batch=batch, storage=store,
                             study_name=study, sampler=sampler, seed=seed,
                             progress=progress, status=status)
        bar.update(task, completed=min(outcome.evaluated, target), description="done")
    if not no_plots:
        from tuning.study_plots import save_plots  # matplotlib: only when drawing

        st = load_study(store, outcome.study_name)
        out_dir = plots or Path("out") / "tune" / outcome.study_name
        outcome.plots, outcome.plot_notes = save_plots(st, outcome.objective, out_dir)
    if as_json:
        from jaxsched.cli.tables import run_info

        typer.echo(json.dumps({**outcome.to_json(),
                               "run": run_info(cfg, job.experiment, overrides)}))
        return
    console = Console()
    if outcome.interrupted:
        err.print(f"[yellow]marked failed:[/] trials {outcome.interrupted} left running by "
                  "stopped workers")
    if outcome.failed:
        err.print(f"[yellow]failed:[/] {len(outcome.failed)} trials with non-finite metrics "
                  "(reason in the trial's fail_reason)")
    if outcome.best:
        title = (f"best trial of study {outcome.study_name!r}" if weighted
                 else f"Pareto set of study {outcome.study_name!r} ({len(outcome.best)} trials)")
        print_table(console, _best_table(outcome, title), heading_prefix="trial ")
    else:
        console.print("no complete feasible trial yet")
    if outcome.baseline_fallback:
        err.print(f"[yellow]baseline:[/] {', '.join(outcome.baseline_fallback)} of the config's "
                  "own parameters: 0 or not finite, so scaled by 1 instead of by it")
    console.print(
        f"{len(outcome.told)} trials here in {outcome.batches} batches of up to {outcome.batch} "
        f"({outcome.eval_trials_per_second:.2f} trials/s evaluating as in the progress bar, "
        f"{outcome.trials_per_second:.2f} trials/s with compile {outcome.compile_seconds:.1f} s; "
        f"simulate {outcome.sim_seconds:.1f} s); study: {outcome.evaluated}/{outcome.target} "
        f"evaluated"
        + (f", trial {outcome.baseline} is the config's own parameters (the baseline)"
           if outcome.baseline is not None else "")
        + f", storage {outcome.storage}",
        soft_wrap=False)
    for p in outcome.plots:
        console.print(f"wrote {p}")
    for n in outcome.plot_notes:
        err.print(f"[yellow]plot {n}[/]")


@app.command()
def export(
    study: Optional[str] = typer.Option(None, help="study to export from"),
    storage: Optional[str] = typer.Option(None, help="SQLAlchemy URL or SQLite file of the study"),
    trial: Optional[int] = typer.Option(None, min=0, help="trial number (default: the best)"),
    out: Optional[Path] = typer.Option(None, help="output file (default: policy.json; with --to: "
                                       "print only)"),
    to: Optional[str] = typer.Option(None, help="vllm | sglang: the nearest server flags instead"),
    policy: Optional[Path] = typer.Option(None, help="with --to: convert this policy file "
                                          "instead of a study"),
    as_json: bool = typer.Option(False, "--json", help="print exactly one JSON object on stdout"),
):
    """Write a tuned trial as a versioned policy config, or as vLLM/SGLang flags (--to)."""
    from rich.console import Console

    from jaxsched.export import policy_file as ex
    from jaxsched.cli.checks import check_existing_sqlite, check_output_file
    from jaxsched.export.server_flags import SERVERS, server_config

    if to is not None and to not in SERVERS:
        raise JaxschedError(f"--to {to!r}: expected one of {', '.join(SERVERS)}")
    check_output_file(out if (out is not None or to is not None) else Path("policy.json"),
                      "--out")
    if policy is None and study is not None:
        check_existing_sqlite(storage)
    if policy is not None:
        if to is None:
            raise JaxschedError("--policy: give --to vllm|sglang (the file is already a policy config)")
        doc = ex.read_policy_file(policy)
    elif study is None:
        raise JaxschedError("export: give --study NAME (and --storage URL), or --policy FILE --to SERVER")
    else:
        from tuning.export_study import export_from_study  # reads a study: Optuna

        doc = export_from_study(storage, study, trial)
    console = Console()
    if to is None:
        path = ex.write_policy(doc, out or Path("policy.json"))
        if as_json:
            typer.echo(json.dumps({"path": str(path), **doc.model_dump(mode="json")}))
            return
        t = doc.tuning
        console.print(f"wrote {path}: {doc.policy.name} {json.dumps(doc.policy.params)}"
                      + (f" (study {t.study!r}, trial {t.trial})" if t else ""))
        return
    sc = server_config(doc, to, str(policy) if policy is not None else "policy.json")
    if out is not None:
        out.write_text(json.dumps(sc.to_json(), indent=2) + "\n")
    if as_json:
        typer.echo(json.dumps(sc.to_json()))
        return
    console.print(f"[bold]{to}[/] for {doc.policy.name}:")
    console.print(sc.command, soft_wrap=True, markup=False)
    for n in sc.notes:
        console.print(f"  note: {n}", markup=False)
    if sc.plugin_command is not None:
        console.print("the policy itself, through jaxsched's vLLM scheduler:")
        console.print(sc.plugin_command, soft_wrap=True, markup=False)
    elif sc.plugin_refusal is not None:
        console.print(f"  note: jaxsched's vLLM scheduler cannot run it: {sc.plugin_refusal}",
                      markup=False)
    if out is not None:
        console.print(f"wrote {out}")


@app.command()
def validate(
    policy_file: Path = typer.Argument(..., help="policy config written by jaxsched export"),
    rtol: float = typer.Option(0.01, min=0, help="relative tolerance on the recorded metrics"),
    no_simulate: bool = typer.Option(False, "--no-simulate", help="check the file only"),
    as_json: bool = typer.Option(False, "--json", help="print exactly one JSON object on stdout"),
):
    """Check a policy config (schema, version, ranges) and re-simulate its recorded metrics."""
    from rich.console import Console
    from rich.table import Table

    from jaxsched.export.policy_file import validate_policy

    err = Console(stderr=True)
    from jaxsched.cli.tables import status_progress

    with status_progress(err, f"validating {policy_file}"
                         f"{'' if no_simulate else ' (re-simulating)'}", enabled=not as_json):
        report = validate_policy(policy_file, rtol=rtol, simulate=not no_simulate)
    if as_json:
        typer.echo(json.dumps(report.to_json()))
    else:
        console = Console()
        for n in report.notes:
            err.print(f"[yellow]note:[/] {n}")
        if report.simulated:
            table = Table(title=f"{policy_file}: {report.policy}, recorded vs re-simulated "
                          f"(rtol {rtol:g})", title_justify="left")
            for col in ("metric", "recorded", "re-simulated", "rel. diff", ""):
                table.add_column(col, justify="right" if col not in ("metric", "") else "left")
            for m, a, b, d, ok in report.rows:
                table.add_row(m, _fmt(a), _fmt(b), "-" if not math.isfinite(d) else f"{d:.2e}",
                              "ok" if ok else "[red]MISMATCH[/]")
            console.print(table)
        console.print(f"{policy_file}: valid (schema_version 1, {report.policy})"
                      if report.ok else f"{policy_file}: metrics do not match")
    if not report.ok:
        bad = next(r for r in report.rows if not r[4])
        raise JaxschedError(f"{policy_file}: metrics.{bad[0]}: recorded {_fmt(bad[1])}, "
                            f"re-simulated {_fmt(bad[2])} (beyond rtol {rtol:g})")


@bench_app.command("tune")
def bench_tune_command(
    config: Optional[Path] = typer.Argument(None, help="TOML config (default: the embedded default)"),
    set_: list[str] = typer.Option([], "--set", help="override: section.key=value"),
    trials: int = typer.Option(32, min=1, help="trials run each way"),
    batch: int = typer.Option(16, min=1, help="K: parameter sets per call in the batched run"),
    workloads: Optional[int] = typer.Option(None, min=1, help="workloads per trial"),
    sampler: Optional[str] = typer.Option(None, help="tpe | cmaes | nsga2 | random"),
    as_json: bool = typer.Option(False, "--json", help="one JSON object on stdout"),
    gradient: bool = typer.Option(False, "--gradient", help="instead: wall time to reach an "
                                  "objective value, gradient search vs Optuna (--trials for Optuna)"),
    steps: Optional[int] = typer.Option(None, min=1, help="--gradient: descent steps"),
    target: Optional[float] = typer.Option(None, help="--gradient: objective value to reach "
                                           "(default: the best either reached, less 2%)"),
    single: bool = typer.Option(True, "--single/--no-single",
                                help="also run the trials one per call (and compare the metrics)"),
    size: str = typer.Option("200x64x2000", "--size", help="TRIALSxWORKLOADSxITERATIONS of the "
                             "tuning run whose wall time is reported (projected from this run "
                             "when it is smaller)"),
):
    """Optuna trials/s with K trials per vmapped call vs one trial per call, and the wall time
    of a tuning run of --size (or, with --gradient, time to reach an objective value:
    gradient search vs Optuna)."""
    from rich.console import Console
    from rich.table import Table

    from jaxsched.cli.checks import parse_int_list
    from jaxsched.config import DEFAULT_CONFIG, load_config
    from tuning.tune_bench import bench_tune

    run_size = parse_int_list(size.replace("x", ","), "--size")
    if len(run_size) != 3:
        raise JaxschedError(f"--size {size!r}: expected TRIALSxWORKLOADSxITERATIONS, "
                            "e.g. 200x64x2000")
    err = Console(stderr=True)
    cfg = load_config(config or DEFAULT_CONFIG, set_)
    if gradient:
        from tuning.gradient_search import bench_gradient_vs_optuna

        with err.status("benchmarking…") as status:
            g = bench_gradient_vs_optuna(cfg, optuna_trials=trials, batch=batch, sampler=sampler,
                                         steps=steps, target=target, num_workloads=workloads,
                                         progress=lambda msg: status.update(msg))
        if as_json:
            typer.echo(json.dumps(dataclasses.asdict(g)))
            return
        table = Table(title=(f"jaxsched bench tune --gradient: {g.policy}, {g.num_workloads} "
                             f"workloads x {g.horizon} iterations, {g.device}; target "
                             f"{g.target:.4g} (config's point {g.baseline_score:.4g})"),
                      title_justify="left")
        for col in ("tuner", "budget", "compile s", "best", "to target", "wall s to target"):
            table.add_column(col, justify="right")
        fmt = lambda x: "not reached" if x is None else f"{x:.1f}"  # noqa: E731
        table.add_row("gradient", f"{g.gradient_steps} steps x {g.gradient_restarts} restarts",
                      f"{g.gradient_compile_seconds:.1f}", f"{g.gradient_best:.4g}",
                      "-" if g.gradient_steps_to_target is None else f"step {g.gradient_steps_to_target}",
                      fmt(g.gradient_seconds_to_target))
        table.add_row(f"optuna ({g.optuna_sampler})", f"{g.optuna_trials} trials, K={g.optuna_batch}",
                      f"{g.optuna_compile_seconds:.1f}", f"{g.optuna_best:.4g}",
                      "-" if g.optuna_trials_to_target is None else f"trial {g.optuna_trials_to_target}",
                      fmt(g.optuna_seconds_to_target))
        Console().print(table)
        return
    with err.status("benchmarking…") as status:
        r = bench_tune(cfg, trials=trials, batch=batch, sampler=sampler, num_workloads=workloads,
                       progress=lambda msg: status.update(msg), single=single,
                       target=run_size)
    if as_json:
        typer.echo(json.dumps(dataclasses.asdict(r)))
        return
    table = Table(title=(f"jaxsched bench tune: {r.policy}, {r.sampler}, {r.trials} trials x "
                         f"{r.num_workloads} workloads x {r.horizon} iterations, {r.device}"),
                  title_justify="left")
    for col in ("mode", "compile s", "wall s", "trials/s", "speedup"):
        table.add_column(col, justify="right")
    if r.single_seconds is not None:
        table.add_row("one at a time", f"{r.single_compile_seconds:.1f}",
                      f"{r.single_seconds:.2f}", f"{r.single_trials_per_second:.2f}", "1.0x")
    table.add_row(f"batched (K={r.batch})", f"{r.batched_compile_seconds:.1f}",
                  f"{r.batched_seconds:.2f}", f"{r.batched_trials_per_second:.2f}",
                  "-" if r.speedup is None else f"{r.speedup:.1f}x")
    if r.identical is not None:
        table.caption = (f"same points both ways: "
                         f"{'identical metrics' if r.identical else f'max relative difference {r.max_relative_difference:.1e}'}")
    Console().print(table)
    how = "projected from this run" if r.projected else "measured"
    Console().print(
        f"{r.target_trials} trials x {r.target_workloads} workloads x {r.target_horizon} "
        f"iterations (K={r.batch}): {r.target_seconds:.0f} s = {r.target_seconds / 60:.1f} min, "
        f"{how} (compile {r.batched_compile_seconds:.1f} s included; load average "
        f"{r.load_average[0]:g} -> {r.load_average[1]:g} on {os.cpu_count()} cores)")
