"""The Python API, mirroring the CLI: load a config, build a workload batch, simulate, read
metrics.

>>> import jaxsched
>>> cfg = jaxsched.load_config(jaxsched.DEFAULT_CONFIG)
>>> result = jaxsched.run(cfg)
>>> result.summary["completed_per_time"]  # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxsched.core import metrics as M
from jaxsched.config import Config
from jaxsched.errors import JaxschedError
from jaxsched.core.model import BYTES_PER_REQUEST, SimShape, Workload, system_params
from jaxsched.policies import Policy, get_policy, make_params, policy_options
from jaxsched.core.sim import SimParams
from jaxsched.running import stream as ST
from jaxsched.running.chunked import choose_chunk, run_chunked
from jaxsched.workloads.kind import WorkloadKind, config_classes
from jaxsched.workloads.registry import kind_class

__all__ = [
    "Experiment",
    "SimulationResult",
    "build_experiment",
    "build_workloads",
    "workload_context",
    "workload_kind",
    "stream_setup",
    "STREAM_AUTO_BYTES",
    "run",
    "run_experiment",
]

# Refuse a workload (one replica) whose request arrays alone would exceed this many bytes.
_MAX_WORKLOAD_BYTES = 6 * 2**30
STREAM_AUTO_BYTES = 2**20
"""``stream=None`` (auto) streams a workload kind that supports it when one replica's full
request arrays would exceed this many bytes and the window is at most half of them."""


@dataclasses.dataclass(frozen=True)
class Experiment:
    """Everything a config describes, built: static shape, policy, traced params."""

    config: Config
    shape: SimShape
    policy: Policy
    params: SimParams
    duration: float  # span of arrival times (simulator time units)
    num_requests: int  # N: padded requests per replica
    kind: WorkloadKind  # the workload kind with its parameters (a trace: loaded)


@dataclasses.dataclass
class SimulationResult:
    experiment: Experiment
    per_workload: dict[str, np.ndarray]  # metric -> (W,) (or (P, W) for params batches)
    summary: dict[str, float | np.ndarray]  # metric -> mean across workloads
    compile_seconds: float
    sim_seconds: float
    trace: Any = None  # StepOutput of numpy arrays (W, H) when recorded
    latency_hist: np.ndarray | None = None  # (W, NUM_BINS) when recorded
    arrivals_ended: float = 0.0  # fraction of workloads whose clock passed the arrival span
    final_completed: np.ndarray | None = None  # (W,) requests completed over all iterations
    run_stats: Any = None  # jaxsched.running.chunked.RunStats: devices, chunks, batches, peak memory
    stream_note: str = ""  # why an automatically streamed run fell back to full arrays

    @property
    def num_workloads(self) -> int:
        return self.experiment.config.workload.num_workloads

    @property
    def horizon(self) -> int:
        return self.experiment.shape.horizon

    def to_json(self, per_workload: bool = False) -> dict:
        out = {k: M.jsonable(self.summary[k]) for k in M.METRIC_KEYS}
        out.update(
            num_workloads=self.num_workloads,
            horizon=self.horizon,
            sim_seconds=self.sim_seconds,
            compile_seconds=self.compile_seconds,
        )
        if per_workload:
            out["per_workload"] = {k: M.jsonable(self.per_workload[k]) for k in M.METRIC_KEYS}
        return out


def _tau_bound(cfg: Config) -> float:
    """Longest possible iteration: prefill plus context tokens never exceed C, prefilling
    requests never exceed ``min(max_batch, C)``."""
    return (cfg.d0 + max(cfg.d1_prefill, cfg.d1_context) * cfg.capacity
            + cfg.d2 * min(cfg.system.max_batch, cfg.capacity))


def workload_context(cfg: Config) -> dict:
    """System and workload facts for a policy's ``fit_defaults`` and for the theory module.
    ``d1`` is the theory's single coefficient, None when ``d1_prefill`` and ``d1_context``
    differ (a theory fit then refuses, see ``Config.d1``)."""
    prompt, output, rate, weight = config_classes(cfg)
    rates = rate.tolist() if kind_class(cfg.workload.kind).uses_rates else None
    single = cfg.d1_prefill == cfg.d1_context
    return {
        "capacity": cfg.capacity,
        "d0": cfg.d0,
        "d1": cfg.d1 if single else None,
        "d1_prefill": cfg.d1_prefill,
        "d1_context": cfg.d1_context,
        "prompt_len": prompt.tolist(),
        "output_len": output.tolist(),
        "rate": rates,
        "weight": weight.tolist(),
        "horizon": cfg.workload.horizon,
    }


def workload_kind(cfg: Config) -> WorkloadKind:
    """The config's workload kind with its parameters (:mod:`jaxsched.workloads.registry`;
    a trace is loaded here)."""
    return kind_class(cfg.workload.kind).from_config(cfg)


def _duration_and_size(cfg: Config, kind: WorkloadKind) -> tuple[float, int]:
    wl = cfg.workload
    duration = wl.duration or wl.horizon * _tau_bound(cfg)
    n = int(kind.num_requests(duration))
    if wl.max_requests is not None:
        n = min(n, wl.max_requests)
    n = max(n, 1)
    return float(duration), n


def _check_size(cfg: Config, n: int) -> None:
    total = n * BYTES_PER_REQUEST  # one replica: batches larger than memory are streamed
    if total > _MAX_WORKLOAD_BYTES:
        raise JaxschedError(
            f"{cfg.source}: workload: one replica of {n} requests would need "
            f"{total / 2**30:.1f} GiB; set workload.duration or workload.max_requests, or "
            "stream it (--stream)"
        )


def _derived_keys(keys):
    """A workload's two keys from its key: ``(rollout key, generator key)`` (the simulator's
    draws and the workload's, or its stream's)."""
    return (jax.vmap(lambda k: jax.random.fold_in(k, 2))(keys),
            jax.vmap(lambda k: jax.random.fold_in(k, 1))(keys))


def build_workloads(cfg: Config, num_requests: int | None = None, duration: float | None = None,
                    keys=None, kind: WorkloadKind | None = None) -> tuple[jax.Array, Workload]:
    """``(rollout keys (W,), workload batch (W, N))`` for the config; each replica has its own
    key (derived from ``workload.seed``). ``kind``: the config's :func:`workload_kind`, when
    already built."""
    wl = cfg.workload
    kind = workload_kind(cfg) if kind is None else kind
    if num_requests is None or duration is None:
        duration, num_requests = _duration_and_size(cfg, kind)
    if keys is None:
        keys = jax.random.split(jax.random.key(wl.seed), wl.num_workloads)
    roll_keys, gen_keys = _derived_keys(keys)
    n = int(num_requests)
    _check_size(cfg, n)
    fn = lambda k: kind.draw(k, duration, n)  # noqa: E731
    workloads = jax.jit(jax.vmap(fn))(gen_keys)
    return roll_keys, workloads


def build_experiment(cfg: Config, record_trace: bool = False) -> Experiment:
    """Shape, policy and params for a config (policy options/params validated)."""
    settings = cfg.policy.settings()
    options = {k: v for k, v in settings.items() if k in policy_options(cfg.policy.name)}
    values = {k: v for k, v in settings.items() if k not in options}
    policy = get_policy(cfg.policy.name, **options)
    if policy.fit_defaults is not None:
        missing = {k for k in policy.params if k not in values}
        if missing:
            fitted = policy.fit_defaults({**workload_context(cfg), "params": dict(values)})
            values.update({k: v for k, v in fitted.items() if k in missing})
    pparams = make_params(policy, values, cfg.num_classes, where=f"{cfg.source}: policy.")
    shape = SimShape(
        max_batch=cfg.system.max_batch,
        queue_size=cfg.system.queue_size,
        horizon=cfg.workload.horizon,
        num_classes=cfg.num_classes,
        warmup=cfg.workload.warmup,
        record_trace=record_trace,
        leap=cfg.system.leap and not record_trace,  # plots read per-iteration records
    )
    if policy.check_shape is not None:
        policy.check_shape(pparams, shape, f"{cfg.source}: policy.")
    params = SimParams(
        system=system_params(cfg.capacity, cfg.d0, restart_on_evict=cfg.system.restart_on_evict,
                             d2=cfg.d2, d1_prefill=cfg.d1_prefill, d1_context=cfg.d1_context,
                             block_size=cfg.block_size),
        policy=pparams,
    )
    kind = workload_kind(cfg)
    # Checked against the size limit when full arrays are built (a streamed run needs none).
    duration, n = _duration_and_size(cfg, kind)
    return Experiment(cfg, shape, policy, params, duration, n, kind)


def stream_setup(exp: Experiment, chunk: int | None = None, window: int | None = None):
    """``(StreamSpec, StreamParams)`` of the config's workload kind for a streamed run
    (:mod:`jaxsched.running.stream`); the window is ``window`` requests (rounded down to whole
    blocks) or chosen from the arrivals per chunk (:func:`jaxsched.running.stream.choose_window`).
    Padding follows the full-array generators: arrivals at or after the duration, and for
    ``saturated`` (or with ``workload.max_requests``) stream indices ``>= N``."""
    cfg = exp.config
    wl = cfg.workload
    if wl.kind not in ST.STREAM_KINDS:
        raise JaxschedError(f"--stream: workload kind {wl.kind!r} cannot be streamed "
                            f"(streams: {', '.join(ST.STREAM_KINDS)})")
    c = choose_chunk(exp.shape.horizon, chunk)
    rate = exp.kind.arrivals_per_iteration(_tau_bound(cfg))
    block, blocks = ST.choose_window(exp.shape, c, rate, window)
    spec = ST.StreamSpec(wl.kind, block, blocks, random_offset=bool(wl.random_offset))
    total = exp.num_requests if (exp.kind.backlog or wl.max_requests is not None) else None
    return spec, ST.stream_params(exp.kind, duration=exp.duration, total=total)


def run_experiment(exp: Experiment, keys=None, workloads: Workload | None = None,
                   params: SimParams | None = None, batched_params: bool = False,
                   devices: int | None = None, chunk: int | None = None,
                   max_memory: int | None = None, progress=None,
                   stream: bool | None = False, window: int | None = None) -> SimulationResult:
    """Compile (timed separately), run, and summarize.

    The batch goes through :func:`jaxsched.running.chunked.run_chunked`: sharded over ``devices`` (a
    count; default every device), the horizon in calls of ``chunk`` iterations, streamed in
    batches that fit ``max_memory`` bytes per device (default: from the free memory). None
    of the three changes a result. ``progress(message, done, total)`` is called per chunk.

    ``stream``: generate each workload block by block into a sliding window of requests on
    the device (:mod:`jaxsched.running.stream`; ``window`` requests, default automatic) instead of
    building its full request arrays, so memory does not grow with the horizon; the sample
    paths differ from the full-array generators'. ``None`` decides automatically: stream
    when the kind supports it, the workloads are not given, and the full arrays of one
    replica would exceed :data:`STREAM_AUTO_BYTES` with a window at most half their size
    (or when ``window`` is given); if the queue then outgrows the window the run starts
    again with full arrays (``SimulationResult.stream_note`` says so). An explicit
    ``stream=True`` raises :class:`jaxsched.running.stream.WindowTooSmall` instead.
    """
    params = exp.params if params is None else params
    kind = exp.config.workload.kind
    spec = sp = None
    if stream is None and window is not None:  # a window size asks for streaming
        stream = True
    auto = stream is None
    if stream is None:
        stream = False
        if workloads is None and kind in ST.STREAM_KINDS \
                and exp.num_requests * BYTES_PER_REQUEST > STREAM_AUTO_BYTES:
            spec, sp = stream_setup(exp, chunk, window)
            stream = 2 * spec.window <= exp.num_requests
    if stream:
        if workloads is not None:
            raise JaxschedError("--stream: the workloads are generated on the device; "
                                "a given workload batch cannot be streamed")
        if spec is None:
            spec, sp = stream_setup(exp, chunk, window)
    elif workloads is None:
        _check_size(exp.config, exp.num_requests)
    if workloads is None:
        num = exp.config.workload.num_workloads
        base = keys if keys is not None else jax.random.split(
            jax.random.key(exp.config.workload.seed), num)

        def get_batch(lo, hi):  # built per streamed batch: the whole batch never exists at once
            if stream:  # rollout keys and stream keys, derived as build_workloads does
                return _derived_keys(base[lo:hi])
            return build_workloads(exp.config, exp.num_requests, exp.duration, base[lo:hi],
                                   exp.kind)
    else:
        num = int(jax.tree.leaves(workloads)[0].shape[0])

        def get_batch(lo, hi):
            return keys[lo:hi], jax.tree.map(lambda x: x[lo:hi], workloads)
    n_req = int(jax.tree.leaves(workloads)[0].shape[-1]) if workloads is not None \
        else exp.num_requests
    try:
        res, stats = run_chunked(exp.policy, exp.shape, params, num, get_batch, n_req,
                                 batched_params=batched_params, devices=devices, chunk=chunk,
                                 max_memory=max_memory, progress=progress,
                                 stream=spec if stream else None,
                                 stream_params=sp if stream else None)
    except ST.WindowTooSmall as err:
        if not (auto and stream):
            raise
        # Chosen automatically: run again with full arrays rather than fail.
        out = run_experiment(exp, keys, workloads, params, batched_params, devices, chunk,
                             max_memory, progress, stream=False)
        out.stream_note = f"{err}; ran again with full request arrays"
        return out
    per_workload = {k: np.asarray(v) for k, v in res.metrics.items()}
    summary = {k: np.asarray(jnp.nanmean(jnp.asarray(v), axis=-1)) for k, v in per_workload.items()}
    summary = {k: (float(v) if v.ndim == 0 else v) for k, v in summary.items()}
    trace = jax.tree.map(np.asarray, res.trace) if res.trace is not None else None
    hist = np.asarray(res.latency_hist) if res.latency_hist is not None else None
    ended = 0.0
    if not exp.kind.backlog:
        ended = float(np.mean(np.asarray(res.final_time) > exp.duration))
    return SimulationResult(
        experiment=exp,
        per_workload=per_workload,
        summary=summary,
        compile_seconds=stats.compile_seconds,
        sim_seconds=stats.sim_seconds,
        trace=trace,
        latency_hist=hist,
        arrivals_ended=ended,
        final_completed=np.asarray(res.final_completed),
        run_stats=stats,
    )


def run(cfg: Config, record_trace: bool = False, devices: int | None = None,
        chunk: int | None = None, max_memory: int | None = None,
        stream: bool | None = False, window: int | None = None) -> SimulationResult:
    """Build everything from a config and simulate its workload batch (``devices``, ``chunk``,
    ``max_memory``, ``stream``, ``window``: see :func:`run_experiment`)."""
    return run_experiment(build_experiment(cfg, record_trace=record_trace), devices=devices,
                          chunk=chunk, max_memory=max_memory, stream=stream, window=window)
