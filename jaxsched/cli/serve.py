"""Engine commands: ``jaxsched serve``, ``calibrate``, ``compare-sim`` and ``bench engine``."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Optional

import typer

from jaxsched.cli.app import app, bench_app
from jaxsched.cli.checks import IMAGE_SUFFIXES, check_output_file, parse_int_list
from jaxsched.errors import JaxschedError

__all__ = ["serve", "calibrate", "compare_sim", "bench_engine", "resolve_policy",
           "serve_shape", "ENGINES"]

ENGINES = ("jaxsched", "vllm")
"""What ``calibrate`` and ``compare-sim`` drive (``--engine``)."""

# The options calibrate and compare-sim share: which engine, and the vLLM engine's shape.
ENGINE_OPTION = typer.Option("jaxsched", "--engine", help="jaxsched (its own engine) or vllm "
                             "(vLLM in-process on --model DIR)")
VLLM_OPTIONS = {
    "block_size": typer.Option(None, "--block-size", help="vllm: KV block size (default 32)"),
    "num_blocks": typer.Option(None, "--num-blocks", help="vllm: KV blocks "
                               "requests can hold (default 64; vLLM is given one more, its "
                               "null block)"),
    "max_num_seqs": typer.Option(None, "--max-num-seqs", help="vllm: max_num_seqs (default 32)"),
    "max_num_batched_tokens": typer.Option(None, "--max-num-batched-tokens",
                                           help="vllm: token budget (default 2048)"),
    "max_model_len": typer.Option(None, "--max-model-len", help="vllm: max_model_len "
                                  "(default 512)"),
}


def resolve_policy(policy: Optional[str], with_doc: bool = False):
    """``(Policy, raw parameter values, num_classes)`` for ``--policy``: an exported policy
    file (``*.json`` or an existing file, read by :func:`jaxsched.export.policy_file.load_policy`), a
    registered policy name, or None (greedy). ``with_doc``: the parsed policy file (None for
    a name) is appended."""
    from jaxsched.policies import get_policy

    doc = None
    if policy is None:
        out = get_policy("greedy"), {}, 1
    elif Path(policy).suffix == ".json" or Path(policy).exists():
        path = Path(policy)
        if not path.is_file():
            raise JaxschedError(f"--policy {policy}: no such policy file")
        try:
            from jaxsched.export.policy_file import load_policy
        except ImportError:  # pragma: no cover - the export module is optional
            raise JaxschedError("--policy: policy files need jaxsched.export.policy_file; pass a policy "
                                "name instead") from None
        pol, _params, doc = load_policy(path)
        out = pol, dict(doc.policy.params), int(doc.system.num_classes)
    else:
        try:
            out = get_policy(policy), {}, 1
        except JaxschedError as err:
            raise JaxschedError(f"--policy {policy}: {err}") from None
    return out + (doc,) if with_doc else out


def serve_shape(system=None, *, capacity: int | None = None, num_blocks: int | None = None,
                block_size: int | None = None, max_batch: int | None = None,
                queue_size: int | None = None, max_seq_len: int | None = None,
                adapt: bool = False, source: str = "the policy file") -> tuple[dict, list[str]]:
    """The engine's shape for ``serve``: ``(EngineConfig fields, changes)``.

    Flags win; the rest comes from the policy file's ``system`` (capacity C, slots B, window
    W) when there is one, else from :class:`~jaxsched.engine.config.EngineConfig`'s
    defaults. The pool holds ``ceil(C / block_size) + B`` blocks (one spare per slot, see
    :mod:`jaxsched.engine.batching`), and the scheduler's capacity is exactly C. A flag that
    contradicts the policy's system is refused with one line unless ``adapt``; then
    ``changes`` lists what differs from the system the policy was tuned for.
    """
    from jaxsched.engine.config import EngineConfig

    d = EngineConfig()
    block_size = block_size or d.block_size
    for flag, v in (("--capacity", capacity), ("--num-blocks", num_blocks),
                    ("--block-size", block_size), ("--max-batch", max_batch),
                    ("--queue-size", queue_size), ("--max-seq-len", max_seq_len)):
        if v is not None and v < 1:
            raise JaxschedError(f"{flag} {v}: must be >= 1")
    if adapt and system is None:
        raise JaxschedError("--adapt-system: needs --policy FILE (an exported policy)")
    tuned: dict[str, int] = {}
    if system is not None:
        if system.capacity != int(system.capacity):
            raise JaxschedError(
                f"{source}: system.capacity {system.capacity:g} is not a whole number of "
                "tokens; give --capacity N --adapt-system to serve it")
        tuned = {"capacity": int(system.capacity), "max_batch": int(system.max_batch),
                 "queue_size": int(system.queue_size)}
    b = max_batch or tuned.get("max_batch", d.max_batch)
    cap_flag = "--capacity"
    if capacity is None and num_blocks is not None:
        cap_flag = "--num-blocks"
        if num_blocks <= b:
            raise JaxschedError(f"--num-blocks {num_blocks}: must exceed the {b} slots "
                                "(capacity is (num_blocks - max_batch) * block_size)")
        capacity = (num_blocks - b) * block_size
    c = capacity or tuned.get("capacity", d.capacity)
    blocks = num_blocks or -(-c // block_size) + b
    if (blocks - b) * block_size < c:
        raise JaxschedError(f"--num-blocks {blocks}: {blocks - b} blocks of {block_size} "
                            f"beyond the slots hold fewer than the {c} tokens of --capacity")
    w = queue_size or tuned.get("queue_size", d.queue_size)
    given = {"capacity": c, "max_batch": b, "queue_size": w}
    labels = {"capacity": (cap_flag, "capacity C", " tokens"),
              "max_batch": ("--max-batch", "slots (max_batch)", ""),
              "queue_size": ("--queue-size", "scheduler window (queue_size)", "")}
    changes = [f"{labels[k][1]} {tuned[k]} -> {given[k]}{labels[k][2]}"
               for k in tuned if given[k] != tuned[k]]
    if changes and not adapt:
        k = next(k for k in tuned if given[k] != tuned[k])
        flag = labels[k][0]
        value = {"--capacity": capacity, "--num-blocks": num_blocks, "--max-batch": max_batch,
                 "--queue-size": queue_size}[flag]
        raise JaxschedError(
            f"{flag} {value}: {source} was tuned for {labels[k][1]} = {tuned[k]}{labels[k][2]} "
            f"(system.{k}), not {given[k]}; drop the flag to serve it as tuned, or pass "
            "--adapt-system to serve it on this shape anyway")
    seq = max_seq_len or min(d.max_seq_len, c)
    full = (blocks - b) * block_size
    values = {"block_size": block_size, "num_blocks": blocks, "max_batch": b,
              "queue_size": w, "max_seq_len": seq,
              "capacity_tokens": 0 if c == full else c}
    return values, changes


def _engine_cfg(table: dict | None = None, num_classes: int = 1, max_batch: int | None = None):
    from jaxsched.engine.config import EngineConfig, EngineConfigError

    values = dict(table or {})
    values["num_classes"] = max(1, int(num_classes))
    if max_batch is not None:
        values["max_batch"] = max_batch
    known = {f.name for f in dataclasses.fields(EngineConfig)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise JaxschedError(f"profile [engine]: unknown setting {unknown[0]!r}")
    try:
        return EngineConfig(**values)
    except EngineConfigError as err:
        raise JaxschedError(str(err)) from None


@app.command()
def serve(
    policy: Optional[str] = typer.Option(None, "--policy", help="exported policy.json (or a "
                                         "registered policy name; default greedy)"),
    model: Optional[str] = typer.Option(None, "--model", help="model TOML/name, or a folder "
                                        "with safetensors + config.json (default: tiny)"),
    capacity: Optional[int] = typer.Option(None, "--capacity", help="KV capacity C in tokens "
                                           "(default: the policy file's system.capacity, "
                                           "else 1024)"),
    num_blocks: Optional[int] = typer.Option(None, "--num-blocks", help="KV blocks in the "
                                             "pool (default: ceil(C / block size) + slots)"),
    block_size: Optional[int] = typer.Option(None, "--block-size", help="tokens per KV block "
                                             "(default 16)"),
    max_batch: Optional[int] = typer.Option(None, "--max-batch", help="slots: resident "
                                            "requests (default: the policy file's "
                                            "system.max_batch, else 8)"),
    queue_size: Optional[int] = typer.Option(None, "--queue-size", help="scheduler window "
                                             "(default: the policy file's system.queue_size, "
                                             "else 16)"),
    max_seq_len: Optional[int] = typer.Option(None, "--max-seq-len", help="most tokens of "
                                              "one request (default min(256, C))"),
    adapt_system: bool = typer.Option(False, "--adapt-system", help="serve a policy file on "
                                      "a shape other than the system it was tuned for "
                                      "(prints what differs)"),
    host: str = typer.Option("127.0.0.1", "--host", help="interface to bind (loopback default)"),
    port: int = typer.Option(8000, "--port", help="TCP port"),
    name: Optional[str] = typer.Option(None, "--name", help="served model name"),
    seed: int = typer.Option(0, "--seed", help="seed of random weights (no checkpoint)"),
    log_level: str = typer.Option("info", "--log-level", help="uvicorn log level"),
):
    """Serve the engine over an OpenAI-compatible HTTP API, scheduled by a policy.

    The engine's shape (capacity, slots, window) is the policy file's system unless flags
    say otherwise; a flag that contradicts it is refused unless --adapt-system."""
    from jaxsched.engine.calibrate import model_label, open_engine
    from jaxsched.engine.server import serve as run_server

    if not 0 <= port < 65536:
        raise JaxschedError(f"--port {port}: must be in [0, 65535]")
    pol, params, k, doc = resolve_policy(policy, with_doc=True)
    shape, changes = serve_shape(doc.system if doc is not None else None, capacity=capacity,
                                 num_blocks=num_blocks, block_size=block_size,
                                 max_batch=max_batch, queue_size=queue_size,
                                 max_seq_len=max_seq_len, adapt=adapt_system,
                                 source=str(policy))
    if changes:
        typer.echo(f"--adapt-system: serving {policy} with " + "; ".join(changes)
                   + " (its system as tuned: left of each arrow)", err=True)
    ec = _engine_cfg(shape, num_classes=k)
    engine = open_engine(model, ec, pol, params, seed)
    served = name or f"jaxsched-{model_label(model)}"
    typer.echo(f"serving {served} with policy {pol.name} on http://{host}:{port} "
               f"(C = {ec.capacity} tokens in {ec.num_blocks} blocks of {ec.block_size}, "
               f"{ec.max_batch} slots, window {ec.queue_size}, up to {ec.max_seq_len} tokens "
               "per request)", err=True)
    run_server(engine, host=host, port=port, model_name=served, log_level=log_level)


def _serving(serve_runs: int, workload: Optional[Path], limit: int, num_requests: int,
             max_output: int, time_scale: float, num_classes: int, seed: int):
    """The serving runs of a calibration: windows of ``workload`` (at ``time_scale`` x 0.5,
    1, 2, ...) or Poisson arrivals at rising loads; None when ``serve_runs`` is 0."""
    from jaxsched.engine.calibrate import poisson_serving, workload_serving

    if serve_runs < 0:
        raise JaxschedError(f"--serve-runs {serve_runs}: must be >= 0")
    if serve_runs == 0:
        return None
    factors = [0.5 * 2.0 ** (j / max(1, serve_runs - 1) * 2) for j in range(serve_runs)] \
        if serve_runs > 1 else [1.0]
    if workload is not None:
        from jaxsched.config import load_config

        cfg = load_config(workload)
        return workload_serving(cfg, limit, num_requests, max_output,
                                [time_scale * f for f in factors], num_classes, seed)
    return poisson_serving(num_requests, [0.2 / f for f in factors],
                           (8, min(96, limit - 33)), (4, min(max_output, 32)), seed)


def _calibrate(model, ec, batches, prompts, output_len, repeats, seed, timer, serving,
               repeat_calls=1, progress=None, probe=False):
    from jaxsched.engine import compare as C
    from jaxsched.engine.calibrate import TIMERS, calibrate as run_calibration, model_label
    from jaxsched.engine.calibrate import open_engine

    if timer not in TIMERS:
        raise JaxschedError(f"--timer {timer!r}: expected one of {', '.join(TIMERS)}")
    clock = C.VirtualClock(TIMERS[timer])
    engine = open_engine(model, ec, "greedy", None, seed, clock=clock)
    return run_calibration(engine, batches, prompts, output_len, repeats, model_label(model),
                           seed, progress=progress, serving=serving, clock=clock, timer=timer,
                           timing_repeats=repeat_calls, probe=probe)


@app.command()
def calibrate(
    out: Path = typer.Option(..., "--out", help="system profile TOML to write"),
    model: Optional[str] = typer.Option(None, "--model", help="model TOML/name or checkpoint "
                                        "folder (default: tiny)"),
    batches: str = typer.Option("1,2,4,8", "--batches", help="batch sizes, comma-separated"),
    prompts: str = typer.Option("8,32,96,192", "--prompts", help="prompt lengths, comma-separated"),
    output_len: int = typer.Option(8, "--output-len", help="tokens generated per request"),
    repeats: int = typer.Option(1, "--repeats", help="measured passes over the grid"),
    max_batch: Optional[int] = typer.Option(None, "--max-batch", help="engine slots (default 8)"),
    serve_runs: int = typer.Option(3, "--serve-runs", help="serving runs (replays under rising "
                                   "load) sampled besides the grid; 0: grid only"),
    workload: Optional[Path] = typer.Option(None, "--workload", help="config whose workload "
                                            "windows the serving runs replay (default: Poisson)"),
    num_requests: int = typer.Option(48, "--num-requests", help="requests per serving run"),
    max_output: int = typer.Option(32, "--max-output", help="cap on scaled output lengths"),
    time_scale: float = typer.Option(1.0, "--time-scale", help="arrival stretch of the middle "
                                     "serving run (as in compare-sim)"),
    timer: str = typer.Option("wall", "--timer", help="wall (perf_counter) or cpu "
                              "(process CPU time: robust on a shared machine)"),
    repeat_calls: int = typer.Option(5, "--repeat-calls", help="run each iteration's model "
                                     "calls this often, keep the fastest (1: measure once)"),
    probe: bool = typer.Option(False, "--probe/--no-probe", help="scale every iteration's "
                               "time by a speed probe timed beside it (steadier on a shared "
                               "machine; compare-sim then does the same)"),
    engine: str = ENGINE_OPTION,
    block_size: Optional[int] = VLLM_OPTIONS["block_size"],
    num_blocks: Optional[int] = VLLM_OPTIONS["num_blocks"],
    max_num_seqs: Optional[int] = VLLM_OPTIONS["max_num_seqs"],
    max_num_batched_tokens: Optional[int] = VLLM_OPTIONS["max_num_batched_tokens"],
    max_model_len: Optional[int] = VLLM_OPTIONS["max_model_len"],
    seed: int = typer.Option(0, "--seed"),
    as_json: bool = typer.Option(False, "--json", help="one JSON object on stdout"),
):
    """Fit the simulator's iteration time d0 + d1 (P + D) + d2 R on the engine; write a profile."""
    from rich.console import Console
    from rich.table import Table

    from jaxsched.engine.calibrate import write_profile

    err = Console(stderr=True)
    check_output_file(out, "--out", (".toml",))
    bs = parse_int_list(batches, "--batches")
    ls = parse_int_list(prompts, "--prompts")
    if repeats < 1:
        raise JaxschedError(f"--repeats {repeats}: must be >= 1")
    if num_requests < 1 or not time_scale > 0:
        raise JaxschedError("--num-requests must be >= 1 and --time-scale > 0")
    if engine not in ENGINES:
        raise JaxschedError(f"--engine {engine!r}: expected one of {', '.join(ENGINES)}")
    if engine == "vllm":
        from jaxsched.integrations.vllm import cli as V

        settings = V.settings_from_options(block_size, num_blocks, max_num_seqs,
                                           max_num_batched_tokens, max_model_len, seed)
        limit = min(settings.max_model_len, settings.num_blocks * settings.block_size) - 1
        serving = _serving(serve_runs, workload, limit, num_requests, max_output, time_scale,
                           1, seed)
        with err.status("calibrating vLLM…") as status:
            out_d = V.calibrate_command(out, model, settings, serving, timer, seed, as_json,
                                        progress=lambda m: status.update(m), probe=probe)
        return _print_calibration(out_d["result"], out, as_json)
    ec = _engine_cfg(max_batch=max_batch)
    serving = _serving(serve_runs, workload, ec.max_request_tokens, num_requests, max_output,
                       time_scale, ec.num_classes, seed)
    with err.status("calibrating…") as status:
        result = _calibrate(model, ec, bs, ls, output_len, repeats, seed, timer, serving,
                            repeat_calls, progress=lambda m: status.update(m), probe=probe)
    write_profile(result, out)
    _print_calibration(result, out, as_json)


def _print_calibration(result, out: Path, as_json: bool) -> None:
    from rich.console import Console
    from rich.table import Table

    if as_json:
        d = dataclasses.asdict(result)
        d["rows"] = [dict(dataclasses.asdict(r), rel_error=r.rel_error) for r in result.rows]
        d["profile"] = str(out)
        typer.echo(json.dumps(d))
        return
    console = Console(width=140)
    console.print(f"jaxsched calibrate: {result.model} on {result.device}, "
                  f"C = {result.capacity} tokens, {result.timer} timer, fastest of "
                  f"{result.timing_repeats} runs of each iteration's calls"
                  + (f", speed probe {1e3 * result.probe_reference:.3f} ms"
                     if result.probe_reference == result.probe_reference else ""))
    table = Table()
    for col in ("run", "iterations", "mean P", "mean D", "mean R", "measured ms", "fit ms",
                "bias", "overhead ms"):
        table.add_column(col, justify="right")
    for r in result.rows:
        table.add_row(r.run, str(r.iterations), f"{r.mean_prefill:.1f}", f"{r.mean_context:.1f}",
                      f"{r.mean_requests:.2f}", f"{r.measured_ms:.3f}", f"{r.predicted_ms:.3f}",
                      f"{(r.predicted_ms - r.measured_ms) / max(r.measured_ms, 1e-12):+.1%}",
                      f"{r.overhead_ms:.3f}")
    console.print(table)
    if result.base_d0 == result.base_d0:
        console.print(
            f"without d2: d0 = {1e3 * result.base_d0:.4f} ms, d1 = {1e6 * result.base_d1:.4f} "
            f"us/token; fit error: RMS {result.base_rel_error:.1%} of the mean, mean |rel| "
            f"{result.base_mean_abs_rel_error:.1%}")
    if result.single_d0 == result.single_d0:
        console.print(
            f"one d1 for both kinds: d0 = {1e3 * result.single_d0:.4f} ms, d1 = "
            f"{1e6 * result.single_d1:.4f} us/token, d2 = {1e3 * result.single_d2:.4f} ms; fit "
            f"error: RMS {result.single_rel_error:.1%} of the mean, mean |rel| "
            f"{result.single_mean_abs_rel_error:.1%}")
    console.print(
        f"d0 = {1e3 * result.d0:.4f} ms, d1_prefill = {1e6 * result.d1_prefill:.4f} us/token, "
        f"d1_context = {1e6 * result.d1_context:.4f} us/token, d2 = "
        f"{1e3 * result.d2:.4f} ms/prefilling request over "
        f"{result.samples} iterations; fit error: RMS {1e3 * result.fit_rms:.4f} ms "
        f"({result.fit_rel_error:.1%} of the mean), mean |rel| {result.mean_abs_rel_error:.1%}; "
        f"scheduling overhead {1e3 * result.overhead_mean:.3f} ms/iteration (not fitted); "
        f"wrote {out}")


@app.command("compare-sim")
def compare_sim(
    policy: str = typer.Option(..., "--policy", help="exported policy.json (or a policy name)"),
    workload: Optional[Path] = typer.Option(None, "--workload", help="config whose workload is "
                                            "replayed (default: a synthetic Poisson list)"),
    profile: Optional[Path] = typer.Option(None, "--profile", help="system profile from "
                                           "jaxsched calibrate (default: calibrate now)"),
    plot: Optional[Path] = typer.Option(None, "--plot", help="PNG of both memory trajectories"),
    rtol: float = typer.Option(0.15, "--rtol", min=0, help="warn when a metric's relative "
                               "error exceeds this"),
    model: Optional[str] = typer.Option(None, "--model", help="model TOML/name or folder"),
    num_requests: int = typer.Option(48, "--num-requests", help="requests replayed"),
    max_output: int = typer.Option(32, "--max-output", help="cap on scaled output lengths"),
    time_scale: float = typer.Option(1.0, "--time-scale", help="stretch (>1) the arrivals"),
    rate: float = typer.Option(300.0, "--rate", help="synthetic arrivals per second"),
    timer: Optional[str] = typer.Option(None, "--timer", help="wall or cpu (default: the "
                                        "profile's timer, else wall; --engine vllm also "
                                        "takes thread, and defaults to cpu)"),
    repeat_calls: Optional[int] = typer.Option(None, "--repeat-calls", help="timing repeats "
                                               "of each iteration's calls (default: the "
                                               "profile's, else 5)"),
    probe: Optional[bool] = typer.Option(None, "--probe/--no-probe", help="speed probe "
                                         "normalization (default: as the profile was "
                                         "calibrated, else off)"),
    replays: Optional[int] = typer.Option(None, "--replays", help="--engine vllm: replay the "
                                          "requests this often and report each figure's "
                                          "median (default 5)"),
    engine: str = ENGINE_OPTION,
    block_size: Optional[int] = VLLM_OPTIONS["block_size"],
    num_blocks: Optional[int] = VLLM_OPTIONS["num_blocks"],
    max_num_seqs: Optional[int] = VLLM_OPTIONS["max_num_seqs"],
    max_num_batched_tokens: Optional[int] = VLLM_OPTIONS["max_num_batched_tokens"],
    max_model_len: Optional[int] = VLLM_OPTIONS["max_model_len"],
    seed: int = typer.Option(0, "--seed"),
    as_json: bool = typer.Option(False, "--json", help="one JSON object on stdout"),
):
    """Replay the same requests through the engine and the calibrated simulator."""
    from rich.console import Console

    from jaxsched.cli.sanity import comparison_warnings, warn
    from jaxsched.engine import compare as C
    from jaxsched.engine.calibrate import TIMERS, MeasuredCalls, open_engine, read_profile
    from jaxsched.policies import make_params

    err = Console(stderr=True)
    check_output_file(plot, "--plot", IMAGE_SUFFIXES)
    if num_requests < 1:
        raise JaxschedError(f"--num-requests {num_requests}: must be >= 1")
    if not time_scale > 0 or not rate > 0:
        raise JaxschedError("--time-scale and --rate must be > 0")
    if engine not in ENGINES:
        raise JaxschedError(f"--engine {engine!r}: expected one of {', '.join(ENGINES)}")
    if replays is not None and replays < 1:
        raise JaxschedError(f"--replays {replays}: must be >= 1")
    if engine == "vllm":
        return _compare_vllm(policy, profile, workload, model, plot, num_requests, max_output,
                             time_scale, rate, timer, seed, as_json, err, rtol,
                             (block_size, num_blocks, max_num_seqs, max_num_batched_tokens,
                              max_model_len), probe, 5 if replays is None else replays)
    if replays is not None:
        raise JaxschedError("--replays: only with --engine vllm (the jaxsched engine's replay "
                            "is timed call by call: --repeat-calls)")
    pol, raw_params, k = resolve_policy(policy)
    if timer is not None and timer not in TIMERS:
        raise JaxschedError(f"--timer {timer!r}: expected one of {', '.join(TIMERS)}")
    if profile is not None:
        system, engine_table, cal_table = read_profile(profile)
        timer = timer or str(cal_table.get("timer", "wall"))
        if repeat_calls is None:
            repeat_calls = int(cal_table.get("timing_repeats", 5))
        if timer not in TIMERS:
            raise JaxschedError(f"{profile}: [calibration] timer {timer!r}: expected one of "
                                f"{', '.join(TIMERS)}")
        reference = cal_table.get("probe_reference_s")
        if probe and reference is None:
            raise JaxschedError(f"{profile}: --probe needs a profile calibrated with --probe "
                                "([calibration] probe_reference_s)")
        if probe is False:
            reference = None
    else:
        timer = timer or "wall"
        repeat_calls = 5 if repeat_calls is None else repeat_calls
        with err.status("no --profile: calibrating the engine…"):
            ec0 = _engine_cfg()
            serving = _serving(2, workload, ec0.max_request_tokens, num_requests, max_output,
                               time_scale, 1, seed)
            cal = _calibrate(model, ec0, (1, 4, 8), (8, 64, 120), 6, 1, seed, timer, serving,
                             repeat_calls, probe=bool(probe))
        reference = cal.probe_reference if probe else None
        system = cal.profile_dict()
        engine_table = cal.engine
    ec = _engine_cfg(engine_table, num_classes=k)
    if int(system["capacity"]) != ec.capacity:
        err.print(f"[yellow]warning:[/] profile capacity {system['capacity']} differs from the "
                  f"engine's {ec.capacity}; the simulator uses the profile's")
    with err.status("compiling the engine…"):
        C.warm_up(open_engine(model, ec, pol, raw_params, seed), seed)
    clock = C.VirtualClock(TIMERS[timer])
    engine = open_engine(model, ec, pol, raw_params, seed, clock=clock)
    if reference is not None:  # checked by read_profile
        reference = float(reference)
    engine.time_calls = MeasuredCalls(engine, repeat_calls, reference)
    limit = ec.max_request_tokens
    if workload is not None:
        from jaxsched.config import load_config

        cfg = load_config(workload)
        requests = C.requests_from_config(cfg, limit, float(system["d0"]) or 1e-3, num_requests,
                                          max_output, time_scale, k)
        source = str(workload)
    else:
        requests = C.poisson_requests(num_requests, rate / time_scale,
                                      (8, min(96, limit - 33)), (4, min(max_output, 32)), seed)
        source = f"synthetic Poisson, {rate / time_scale:g}/s"
    params = make_params(pol, raw_params, ec.num_classes)
    with err.status(f"replaying {len(requests)} requests through the engine and simulator…"):
        result = C.compare(engine, clock, requests, pol, params, system, seed)
    if plot is not None:
        C.plot_memory(result, plot, float(system["capacity"]))
        err.print(f"wrote {plot}")
    if as_json:
        for line in comparison_warnings(result.rel_errors(), rtol):
            warn(err, line)
        d = result.to_json()
        d["source"] = source
        d["timer"] = timer
        d["repeat_calls"] = repeat_calls
        d["probe_reference_s"] = reference
        typer.echo(json.dumps(d))
        return
    rel = result.rel_errors()
    for line in comparison_warnings(rel, rtol):
        warn(err, line)
    console = Console(width=140)
    console.print(f"jaxsched compare-sim: {pol.name}, {len(requests)} requests from {source}; "
                  f"C = {system['capacity']}, d0 = {1e3 * system['d0']:.4f} ms, "
                  f"d1_prefill = {1e6 * system['d1_prefill']:.4f} us/token, "
                  f"d1_context = {1e6 * system['d1_context']:.4f} us/token, "
                  f"d2 = {1e3 * float(system.get('d2', 0.0)):.4f} ms/prefilling request")
    console.print(_comparison_table(result, rel, C.COMPARE_KEYS, "engine"))
    console.print(f"engine: {result.engine_iterations} iterations on a virtual clock advanced by "
                  f"measured compute time ({timer} timer, fastest of {repeat_calls}"
                  + (f", scaled by the speed probe (reference {1e3 * reference:.3f} ms)"
                     if reference is not None else "")
                  + f"); simulator: {result.sim_iterations} busy iterations; latency and time "
                  "in seconds")


def _comparison_table(result, rel, keys, engine_label: str):
    """compare-sim's table: each metric for the engine and the simulator, and their relative
    error (counts as integers)."""
    from rich.table import Table

    table = Table()
    for col in ("metric", engine_label, "simulator", "rel error"):
        table.add_column(col, justify="right")
    for key in keys:
        fmt = (lambda x: f"{x:.0f}") if key in ("completed", "evictions", "peak_kv_tokens") \
            else (lambda x: f"{x:.4g}")
        table.add_row(key, fmt(result.engine[key]), fmt(result.sim[key]),
                      "n/a" if rel[key] != rel[key] else f"{rel[key]:.1%}")
    return table


def _compare_vllm(policy, profile, workload, model, plot, num_requests, max_output, time_scale,
                  rate, timer, seed, as_json, err, rtol, vllm_options, probe=None,
                  replays=5):
    """compare-sim --engine vllm (jaxsched.integrations.vllm.cli)."""
    from rich.console import Console

    from jaxsched.cli.sanity import comparison_warnings, warn

    from jaxsched.engine import compare as C
    from jaxsched.integrations.vllm import cli as V

    settings = V.settings_from_options(*vllm_options, seed)
    limit = min(settings.max_model_len, settings.num_blocks * settings.block_size) - 1
    serving = _serving(2, workload, limit, num_requests, max_output, time_scale, 1, seed)
    with err.status("starting vLLM…") as status:
        out = V.compare_command(policy, profile, workload, model, settings, num_requests,
                                max_output, time_scale, rate, timer, seed, serving,
                                progress=lambda m: status.update(m), probe=probe,
                                replays=replays)
    result, system = out["result"], out["system"]
    if plot is not None:
        C.plot_memory(result, plot, float(out["settings"].num_blocks * out["settings"].block_size),
                      engine_label="vLLM")
        err.print(f"wrote {plot}")
    rel = result.rel_errors()
    for line in comparison_warnings(rel, rtol, "recalibrate on a quieter machine"):
        warn(err, line)
    if as_json:
        typer.echo(V.compare_json(out))
        return
    st = out["settings"]
    console = Console(width=140)
    console.print(f"jaxsched compare-sim --engine vllm: {result.policy}, {result.num_requests} "
                  f"requests from {out['source']}; {st.num_blocks} blocks x {st.block_size} = "
                  f"{st.num_blocks * st.block_size} tokens, max_num_seqs {st.max_num_seqs}, "
                  f"max_num_batched_tokens {st.max_num_batched_tokens}; d0 = "
                  f"{1e3 * system['d0']:.4f} ms, d1_prefill = {1e6 * system['d1_prefill']:.4f} "
                  f"us, d1_context = {1e6 * system['d1_context']:.4f} us, d2 = "
                  f"{1e3 * float(system.get('d2', 0.0)):.4f} ms")
    console.print(_comparison_table(result, rel, result.keys, "vLLM"))
    console.print(f"vLLM: median of {max(1, len(result.engine_runs))} replays; "
                  f"{result.engine_iterations} steps on a virtual clock advanced by each "
                  f"step's measured time ({out['timer']} timer"
                  + (f", scaled by the speed probe (reference "
                     f"{1e3 * out['probe_reference_s']:.3f} ms)"
                     if out["probe_reference_s"] else "") + "); simulator: "
                  f"{result.sim_iterations} busy iterations; KV in tokens (M_k), time in seconds")


@bench_app.command("engine")
def bench_engine(
    model: Optional[str] = typer.Option(None, "--model", help="model TOML/name or folder"),
    batches: str = typer.Option("1,2,4,8", "--batches", help="batch sizes, comma-separated"),
    prompt_len: int = typer.Option(16, "--prompt-len", help="prompt tokens per request"),
    output_len: int = typer.Option(32, "--output-len", help="tokens generated per request"),
    seed: int = typer.Option(0, "--seed"),
    as_json: bool = typer.Option(False, "--json", help="one JSON object on stdout"),
):
    """Engine decode throughput and iteration time vs batch size."""
    import time

    import jax
    import numpy as np
    from rich.console import Console
    from rich.table import Table

    from jaxsched.engine.batching import SamplingParams
    from jaxsched.engine.calibrate import device_description, open_engine

    bs = parse_int_list(batches, "--batches")
    has_gpu = any(d.platform == "gpu" for d in jax.devices())
    engine = open_engine(model, _engine_cfg(max_batch=max(8, max(bs))), "greedy", None, seed)
    if prompt_len < 1 or output_len < 1 or prompt_len + output_len > engine.engine_cfg.max_request_tokens:
        raise JaxschedError(f"--prompt-len + --output-len must be in [2, "
                            f"{engine.engine_cfg.max_request_tokens}]")
    rs = np.random.RandomState(seed)
    sp = SamplingParams(max_tokens=output_len, ignore_eos=True)
    rows = []
    for b in bs:
        for warm in (True, False):
            sp_run = SamplingParams(max_tokens=2, ignore_eos=True) if warm else sp
            start = len(engine.records)
            for _ in range(b):
                engine.submit([int(t) for t in rs.randint(0, 256, size=prompt_len)], sp_run)
            t0 = time.perf_counter()
            engine.run_until_idle()
            wall = time.perf_counter() - t0
        recs = [r for r in list(engine.records)[start:] if r.prefill_tokens == 0
                and r.decode_tokens > 0]
        tokens = sum(r.decode_tokens for r in recs)
        dec_time = sum(r.duration for r in recs)
        rows.append({
            "batch": b, "decode_iterations": len(recs),
            "decode_tokens_per_s": tokens / dec_time if dec_time > 0 else 0.0,
            "iteration_ms": 1e3 * dec_time / max(len(recs), 1),
            "compute_ms": 1e3 * sum(r.compute_time for r in recs) / max(len(recs), 1),
            "wall_s": wall,
        })
    device = device_description()
    if as_json:
        typer.echo(json.dumps({"device": device, "gpu": has_gpu, "rows": rows}))
        return
    table = Table(title=f"jaxsched bench engine: {device}, prompt {prompt_len}, "
                        f"output {output_len}", title_justify="left")
    for col in ("batch", "decode iterations", "decode tokens/s", "iteration ms", "compute ms",
                "wall s"):
        table.add_column(col, justify="right")
    for r in rows:
        table.add_row(str(r["batch"]), str(r["decode_iterations"]),
                      f"{r['decode_tokens_per_s']:,.0f}", f"{r['iteration_ms']:.3f}",
                      f"{r['compute_ms']:.3f}", f"{r['wall_s']:.2f}")
    if not has_gpu:
        table.caption = "no GPU available: measured on CPU"
    Console(width=140).print(table)
