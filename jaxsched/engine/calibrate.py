"""Calibrate the simulator's iteration-time model
``tau = d0 + d1_prefill P + d1_context D + d2 R`` on the engine.

:func:`calibrate` drives an :class:`~jaxsched.engine.batching.Engine` through two kinds of runs
and records every iteration it executes (:class:`~jaxsched.engine.batching.IterationRecord`):

* **grid runs**: for every batch size ``b`` and prompt length ``l``, ``b`` requests of ``l``
  random byte tokens generating ``output_len`` tokens each, run to completion (one prefill
  iteration, then decode iterations with growing contexts);
* **serving runs** (the iterations a real replay executes): request lists replayed on the
  engine's virtual clock (:func:`jaxsched.engine.compare.replay_engine`), so that prefill
  chunks, decode batches, admissions and queueing mix as they do under load. The lists are
  Poisson arrivals with uniform lengths, or windows of a workload config (a trace) scaled to
  the engine as ``compare-sim`` scales them.

A first pass over every prefill bucket and the grid compiles every shape and is discarded.
Each iteration gives one sample ``(P_k, D_k, R_k, compute_time_k)`` (``R_k``: the requests
that process prefill tokens in it, ``IterationRecord.prefill_requests``; the engine runs each
as its own model call); ``d0, d1_prefill, d1_context, d2`` are their non-negative
least-squares fit (:func:`fit_nonneg`: ``numpy.linalg.lstsq`` on every subset of the
coefficients, the best fit with all of them ``>= 0``). Two comparisons on the same samples are
reported beside it: the single-``d1`` fit ``tau = d0 + d1 (P + D) + d2 R`` (what calibrate
wrote before the coefficients were split; ``[calibration] single_d1_*``) and the papers'
model without ``d2``, ``tau = d0 + d1 (P + D)`` (``without_d2_*``). ``compute_time`` is the
engine's model calls, timed by
the ``timer``: ``"wall"`` (``time.perf_counter``) or ``"cpu"`` (``time.process_time``, this
process's CPU seconds: on a machine shared with other jobs it is far less disturbed by them
than wall time; the engine's XLA calls run on one thread, so on an idle machine both agree).
With ``timing_repeats = k > 1`` every iteration's model calls run ``k`` times (they are
idempotent) and the fastest pass is its ``compute_time``: the minimum filters out the
interference of other jobs, which on a shared machine otherwise changes the measured times
by tens of percent from one minute to the next. The engine's scheduling work
(``duration - compute_time``) is not fitted and is reported separately as the overhead.

*Speed probe* (``probe=True``, ``calibrate --probe``). The minimum does not remove a slowdown
that lasts longer than an iteration (another job on the same physical core, sharing caches or
memory bandwidth): the engine's CPU time then moves by 20-25% between identical replays on a
2-core machine. With the probe, a reference ``s_ref`` is measured after warm-up (median of 15
runs of :meth:`~jaxsched.engine.runner.ModelRunner.probe`, a decode call of padding rows), and
every iteration's time is ``s_ref`` times the median over its timing passes of (pass time /
the probe timed right after that pass) (:class:`MeasuredCalls`): ``d0, d1, d2`` are then in
seconds at the reference speed, and ``compare-sim`` scales its replay's iterations by the
same reference (``[calibration] probe_reference_s``), so both see one steady machine.

The fit's error is reported three ways: the RMS residual relative to the mean time, the mean
per-iteration ``|residual| / time``, and per run the *bias* ``sum(predicted) / sum(measured)
- 1`` (what matters for throughput over a run).

:func:`write_profile` writes a system profile that a config includes with
``[system] profile = "profile.toml"`` (read by :func:`jaxsched.config.load_profile` as a
:class:`~jaxsched.config.SystemProfile`)::

    [system]          name, model, device, capacity (the engine's C in tokens), d0,
                      d1_prefill, d1_context, d2, block_size (with engine memory = "blocks"),
                      time_unit, fit_rms, fit_rel_error, samples, note
    [calibration]     timer, mean |rel| error, the single-d1 fit, the fit without d2
                      (not read by configs)
    [engine]          the EngineConfig the profile was measured with (compare-sim rebuilds it)
"""

from __future__ import annotations

import dataclasses
import math
import time
import tomllib
from pathlib import Path
from typing import Any, Sequence

import jax
import numpy as np

from jaxsched.config import split_d1
from jaxsched.engine.batching import Call, CallTiming, Engine, SamplingParams
from jaxsched.engine.build import resolve_model_config
from jaxsched.engine.compare import (
    poisson_requests,
    replay_engine,
    requests_from_config,
    warm_up,
)
from jaxsched.engine.tokenizer import load_tokenizer
from jaxsched.engine.weights import load_weights
from jaxsched.errors import JaxschedError

__all__ = [
    "TIMERS",
    "MeasuredCalls",
    "CalibrationRow",
    "CalibrationResult",
    "open_engine",
    "model_label",
    "device_description",
    "fit_nonneg",
    "fit_tau",
    "fit_split_tau",
    "fit_linear",
    "calibrate",
    "measure_probe",
    "poisson_serving",
    "workload_serving",
    "write_profile",
    "read_engine_section",
    "read_profile",
]


TIMERS = {"wall": time.perf_counter, "cpu": time.process_time}
"""What ``compute_time`` is measured with (see the module docstring)."""


class MeasuredCalls:
    """Measurement mode for :attr:`Engine.time_calls <jaxsched.engine.batching.Engine>`
    (calibration, ``compare-sim``): the iteration's model calls run ``repeats`` times (the
    repeats rewrite the same KV and sample the same tokens) and the fastest pass is
    ``compute_time``; the repeats are left out of the iteration's ``duration``. The minimum
    filters out other jobs' interference on a shared machine.

    Speed normalization (``speed_reference`` in seconds, see the module docstring): every
    pass is followed by one run of the runner's speed probe, and ``compute_time =
    speed_reference x median_r(pass_r / probe_r)``, the time the calls would take at the speed
    the probe had when ``speed_reference`` was measured (``raw_compute_time`` keeps the fastest
    pass). Other jobs that slow this process (sharing a core, caches, memory bandwidth) slow
    the adjacent probe alike and drop out of the ratio."""

    def __init__(self, engine: Engine, repeats: int = 1, speed_reference: float | None = None):
        if repeats < 1:
            raise JaxschedError(f"--repeat-calls {repeats}: must be >= 1")
        self.engine = engine
        self.repeats = int(repeats)
        self.speed_reference = speed_reference

    def time_probe(self) -> float:
        """Seconds of one run of the runner's speed probe on the engine's clock."""
        now = self.engine.now
        t0 = now()
        self.engine.runner.probe()
        return max(now() - t0, 1e-9)

    def __call__(self, calls: Sequence[Call]) -> tuple[list, CallTiming]:
        now = self.engine.now
        t0 = now()
        results = [fn(*args) for fn, args in calls]
        passes = [now() - t0]
        if not calls:
            return results, CallTiming(passes[0], passes[0])
        t_extra = now()
        normalize = self.speed_reference is not None
        probes = [self.time_probe()] if normalize else []
        for _ in range(self.repeats - 1):
            t0 = now()
            for fn, args in calls:
                fn(*args)
            passes.append(now() - t0)
            if normalize:
                probes.append(self.time_probe())
        raw = min(passes)
        if not normalize:
            return results, CallTiming(raw, raw, extra_time=now() - t_extra)
        ratios = np.asarray(passes) / np.asarray(probes)
        compute = self.speed_reference * float(np.median(ratios))
        return results, CallTiming(compute, raw, min(probes), now() - t_extra)


@dataclasses.dataclass(frozen=True)
class CalibrationRow:
    """Measured iterations of one run (a grid cell or a serving run)."""

    run: str  # "grid b=4 l=32" or "serve ..."
    iterations: int
    mean_prefill: float  # mean P
    mean_context: float  # mean D
    measured_ms: float  # mean compute time
    predicted_ms: float  # mean d0 + d1_prefill P + d1_context D + d2 R
    overhead_ms: float  # mean duration - compute_time
    mean_requests: float = 0.0  # mean R (prefilling requests)

    @property
    def mean_tokens(self) -> float:
        return self.mean_prefill + self.mean_context

    @property
    def rel_error(self) -> float:
        """The run's bias: ``|sum predicted - sum measured| / sum measured``."""
        return abs(self.predicted_ms - self.measured_ms) / max(self.measured_ms, 1e-12)


@dataclasses.dataclass(frozen=True)
class CalibrationResult:
    d0: float
    d1_prefill: float  # time per prefill token
    d1_context: float  # time per context token of a decoding request
    fit_rms: float  # seconds: RMS of the residuals
    fit_rel_error: float  # RMS residual / mean measured time
    mean_abs_rel_error: float  # mean |residual| / measured, per iteration
    samples: int
    capacity: int
    model: str
    device: str
    engine: dict[str, Any]
    rows: tuple[CalibrationRow, ...]
    overhead_mean: float  # seconds of scheduling per iteration (not in the fit)
    timer: str = "wall"
    timing_repeats: int = 1  # model calls of each iteration run this often; fastest pass kept
    d2: float = 0.0  # time per prefilling request
    block_size: int = 1  # the engine's memory blocks (1: token memory)
    # The same samples with one d1 for both kinds of token: tau = d0 + d1 (P + D) + d2 R.
    single_d0: float = math.nan
    single_d1: float = math.nan
    single_d2: float = math.nan
    single_rel_error: float = math.nan  # RMS residual / mean time
    single_mean_abs_rel_error: float = math.nan
    # The same samples fitted without the per-request term (d2 = 0): the error before it.
    base_d0: float = math.nan
    base_d1: float = math.nan
    base_rel_error: float = math.nan  # RMS residual / mean time
    base_mean_abs_rel_error: float = math.nan
    probe_reference: float = math.nan  # seconds of the speed probe at the reference speed

    def profile_dict(self, name: str | None = None) -> dict[str, Any]:
        """The ``[system]`` table of the profile."""
        return {
            "name": name or f"jaxsched-engine-{self.model}-{self.device.split()[0]}",
            "model": self.model,
            "device": self.device,
            "capacity": int(self.capacity),
            "d0": float(self.d0),
            "d1_prefill": float(self.d1_prefill),
            "d1_context": float(self.d1_context),
            "d2": float(self.d2),
            **({"block_size": int(self.block_size)} if self.block_size > 1 else {}),
            "time_unit": "s",
            "fit_rms": float(self.fit_rms),
            "fit_rel_error": float(self.fit_rel_error),
            "samples": int(self.samples),
            "note": ("measured by jaxsched calibrate: tau = d0 + d1_prefill (prefill tokens) + "
                     "d1_context (context tokens) + d2 (prefilling requests) fitted to the "
                     f"engine's model compute time per iteration ({self.timer} timer); "
                     f"scheduling overhead of {1e3 * self.overhead_mean:.2f} ms/iteration not "
                     "included"),
        }

    def calibration_dict(self) -> dict[str, Any]:
        """The ``[calibration]`` table: how it was measured, and the prefill/context fit."""
        out = {"timer": self.timer, "timing_repeats": self.timing_repeats,
               "mean_abs_rel_error": float(self.mean_abs_rel_error),
               "overhead_s": float(self.overhead_mean)}
        if math.isfinite(self.probe_reference):
            out["probe_reference_s"] = float(self.probe_reference)
        if math.isfinite(self.single_d0):
            out.update(single_d1_d0=float(self.single_d0), single_d1_d1=float(self.single_d1),
                       single_d1_d2=float(self.single_d2),
                       single_d1_rel_error=float(self.single_rel_error),
                       single_d1_mean_abs_rel_error=float(self.single_mean_abs_rel_error))
        if math.isfinite(self.base_d0):
            out.update(without_d2_d0=float(self.base_d0), without_d2_d1=float(self.base_d1),
                       without_d2_rel_error=float(self.base_rel_error),
                       without_d2_mean_abs_rel_error=float(self.base_mean_abs_rel_error))
        return out


def model_label(model: str | Path | None) -> str:
    """A short name for ``--model``: ``tiny`` by default, else the file's stem or folder name."""
    if model is None:
        return "tiny"
    p = Path(model)
    return p.name if p.is_dir() else p.stem


def open_engine(model: str | Path | None = None, engine_cfg=None, policy="greedy",
                policy_params=None, seed: int = 0, clock=None):
    """An engine for ``--model``: None (the tiny model), a model TOML or name, or a folder with
    ``*.safetensors`` + ``config.json`` (and optionally ``tokenizer.json``)."""
    weights = None
    cfg_source = model
    if model is not None and Path(model).is_dir():
        weights, cfg_source = Path(model), None
    elif model is not None and Path(model).suffix == ".safetensors":
        weights, cfg_source = Path(model), None
    cfg = resolve_model_config(cfg_source, weights)
    tokenizer = None
    if weights is not None:
        folder = weights if weights.is_dir() else weights.parent
        if (folder / "tokenizer.json").is_file():
            tokenizer = folder / "tokenizer.json"
    return Engine(cfg, engine_cfg, load_weights(cfg, weights, seed), policy=policy,
                  policy_params=policy_params, tokenizer=load_tokenizer(tokenizer), seed=seed,
                  clock=clock or time.perf_counter)


def device_description() -> str:
    """``"cpu (cpu)"``, ``"gpu (NVIDIA H100 ...)"``: the platform and kind of JAX's device 0."""
    d = jax.devices()[0]
    return f"{d.platform} ({getattr(d, 'device_kind', d.platform)})"


def fit_nonneg(columns: Sequence[Sequence[float]], times: Sequence[float]
               ) -> tuple[np.ndarray, float, float, float]:
    """Non-negative least squares ``times ~ c0 + sum_j c_j columns_j`` with every ``c >= 0``.

    Exact for a few columns: the optimum of a convex problem over the orthant is the
    unconstrained optimum on one of its faces, so every subset of coefficients is fitted
    unconstrained (the others 0) and the best non-negative fit is kept. Returns
    ``(coefficients, rms, rel_rms, mean_abs_rel)``: the RMS residual in seconds, that RMS over
    the mean time, and the mean per-sample ``|residual| / time``."""
    y = np.asarray(times, np.float64)
    if y.size < 2:
        raise JaxschedError("calibration needs at least 2 measured iterations")
    a = np.stack([np.ones_like(y)] + [np.asarray(c, np.float64) for c in columns], axis=1)
    k = a.shape[1]
    best, best_sse = np.zeros(k), float(np.sum(y ** 2))
    for mask in range(1, 1 << k):
        free = [j for j in range(k) if mask >> j & 1]
        sub, *_ = np.linalg.lstsq(a[:, free], y, rcond=None)
        if np.any(sub < 0):
            continue
        coef = np.zeros(k)
        coef[free] = sub
        sse = float(np.sum((a @ coef - y) ** 2))
        if sse < best_sse:
            best, best_sse = coef, sse
    resid = a @ best - y
    rms = float(np.sqrt(np.mean(resid ** 2)))
    rel = rms / max(float(np.mean(y)), 1e-30)
    mean_abs_rel = float(np.mean(np.abs(resid) / np.maximum(y, 1e-30)))
    return best, rms, rel, mean_abs_rel


def fit_tau(tokens: Sequence[float], times: Sequence[float],
            requests: Sequence[float] | None = None
            ) -> tuple[float, float, float, float, float, float]:
    """Least-squares ``times ~ d0 + d1 tokens + d2 requests`` with ``d0, d1, d2 >= 0``
    (:func:`fit_nonneg`; ``requests=None``: ``d2 = 0``, the papers' ``d0 + d1 tokens``).

    Returns ``(d0, d1, d2, rms, rel_rms, mean_abs_rel)``."""
    cols = [tokens] if requests is None else [tokens, requests]
    coef, rms, rel, mean_abs_rel = fit_nonneg(cols, times)
    d2 = float(coef[2]) if requests is not None else 0.0
    return float(coef[0]), float(coef[1]), d2, rms, rel, mean_abs_rel


def fit_split_tau(prefill: Sequence[float], context: Sequence[float], times: Sequence[float],
                  requests: Sequence[float] | None = None
                  ) -> tuple[float, float, float, float, float, float, float]:
    """Least-squares ``times ~ d0 + d1_prefill prefill + d1_context context + d2 requests``
    with every coefficient ``>= 0`` (:func:`fit_nonneg`; ``requests=None``: ``d2 = 0``).

    Returns ``(d0, d1_prefill, d1_context, d2, rms, rel_rms, mean_abs_rel)``."""
    cols = [prefill, context] + ([] if requests is None else [requests])
    coef, rms, rel, mean_abs_rel = fit_nonneg(cols, times)
    d2 = float(coef[3]) if requests is not None else 0.0
    return float(coef[0]), float(coef[1]), float(coef[2]), d2, rms, rel, mean_abs_rel


def fit_linear(columns: Sequence[Sequence[float]], times: Sequence[float]
               ) -> tuple[np.ndarray, float]:
    """Unconstrained least squares ``times ~ c0 + sum_j c_j columns_j``: ``(coefficients,
    RMS residual / mean time)``."""
    y = np.asarray(times, np.float64)
    a = np.stack([np.ones_like(y)] + [np.asarray(c, np.float64) for c in columns], axis=1)
    coef, *_ = np.linalg.lstsq(a, y, rcond=None)
    rms = float(np.sqrt(np.mean((a @ coef - y) ** 2)))
    return coef, rms / max(float(np.mean(y)), 1e-30)


def _run_batch(engine, batch_size: int, prompt_len: int, output_len: int, rng) -> list:
    sp = SamplingParams(max_tokens=output_len, temperature=0.0, ignore_eos=True)
    start = len(engine.records)
    for _ in range(batch_size):
        engine.submit([int(t) for t in rng.randint(0, 256, size=prompt_len)], sp)
    engine.run_until_idle()
    return list(engine.records)[start:]


def calibrate(engine, batch_sizes: Sequence[int] = (1, 2, 4, 8),
              prompt_lens: Sequence[int] = (8, 32, 96, 192), output_len: int = 8,
              repeats: int = 1, model: str = "tiny", seed: int = 0,
              progress=None, serving=None, clock=None, timer: str = "wall",
              timing_repeats: int = 1, probe: bool = False) -> CalibrationResult:
    """Measure ``engine`` over the (batch size, prompt length) grid and the serving runs, then
    fit ``d0, d1, d2``. ``serving(d0) -> [(label, requests), ...]`` builds the serving runs (lists
    of :class:`~jaxsched.engine.compare.ReplayRequest`) given a preliminary ``d0`` fitted on
    the grid; they are replayed on ``clock``, the
    :class:`~jaxsched.engine.compare.VirtualClock` the engine was built with. ``timer`` names
    what the clock measures (recorded in the result); ``timing_repeats`` sets the engine's
    measurement (each iteration's model calls run
    that many times, the fastest pass is its time); ``probe`` normalizes every iteration's
    time by the speed probe (module docstring). Both through :class:`MeasuredCalls`, which
    this sets as the engine's ``time_calls``.

    Batch sizes above ``max_batch`` and prompt lengths that do not fit (``l + output_len``
    above the engine's per-request limit, or a batch above its capacity) are clipped."""
    ec = engine.engine_cfg
    limit = ec.max_request_tokens
    if timer not in TIMERS:
        raise JaxschedError(f"--timer {timer!r}: expected one of {', '.join(TIMERS)}")
    if output_len < 1 or output_len >= limit:
        raise JaxschedError(f"--output-len {output_len}: must be in [1, {limit})")
    if serving is not None and clock is None:
        raise JaxschedError("serving runs need the engine's VirtualClock")
    measured = engine.time_calls = MeasuredCalls(engine, timing_repeats)
    grid = []
    for b in sorted(set(min(int(b), ec.max_batch) for b in batch_sizes)):
        per_req = min(limit, ec.capacity // b)
        for l in sorted(set(prompt_lens)):
            l = max(1, min(int(l), per_req - output_len))
            if (b, l) not in grid:
                grid.append((b, l))
    rng = np.random.RandomState(seed)
    warm_up(engine, seed)  # compile every prefill bucket (serving runs may reach any)
    for i, (b, l) in enumerate(grid):  # warm-up: compile every bucket and shape
        if progress:
            progress(f"compiling {i + 1}/{len(grid)} (batch {b}, prompt {l})")
        _run_batch(engine, b, l, min(2, output_len), rng)
    if probe:
        measured.speed_reference = measure_probe(measured)
    runs: dict[str, list] = {}
    for r in range(max(1, repeats)):
        for i, (b, l) in enumerate(grid):
            if progress:
                progress(f"measuring {i + 1}/{len(grid)} (batch {b}, prompt {l})")
            recs = _run_batch(engine, b, l, output_len, rng)
            runs.setdefault(f"grid b={b} l={l}", []).extend(recs)
    if serving is not None:
        grid_recs = [rec for v in runs.values() for rec in v
                     if rec.prefill_tokens + rec.context_tokens > 0]
        d0_grid = fit_tau([rec.prefill_tokens + rec.context_tokens for rec in grid_recs],
                          [rec.compute_time for rec in grid_recs],
                          [rec.prefill_requests for rec in grid_recs])[0]
        serving = list(serving(max(d0_grid, 1e-6)))
    for r in range(max(1, repeats)):
        for j, (label, requests) in enumerate(serving or ()):
            if progress:
                progress(f"serving run {j + 1}/{len(serving)} ({label})")
            start = len(engine.records)
            replay_engine(engine, clock, requests, seed + r)
            runs.setdefault(label, []).extend(list(engine.records)[start:])
            clock.run()  # replay_engine leaves the clock frozen; grid runs need it running
    runs = {k: [rec for rec in v if rec.prefill_tokens + rec.context_tokens > 0]
            for k, v in runs.items()}
    recs = [rec for v in runs.values() for rec in v]
    P = np.array([rec.prefill_tokens for rec in recs], np.float64)
    D = np.array([rec.context_tokens for rec in recs], np.float64)
    R = np.array([rec.prefill_requests for rec in recs], np.float64)
    times = np.array([rec.compute_time for rec in recs])
    b0, b1, _, _, b_rel, b_mar = fit_tau(P + D, times)  # the papers' model: d2 = 0
    s0, s1, s2, _, s_rel, s_mar = fit_tau(P + D, times, R)  # one d1 for both kinds
    d0, dp, dc, d2, rms, rel, mar = fit_split_tau(P, D, times, R)
    rows = []
    for label, rr in runs.items():
        if not rr:
            continue
        p = np.array([r.prefill_tokens for r in rr], np.float64)
        c = np.array([r.context_tokens for r in rr], np.float64)
        q = np.array([r.prefill_requests for r in rr], np.float64)
        ct = np.array([r.compute_time for r in rr])
        ov = np.array([r.duration - r.compute_time for r in rr])
        rows.append(CalibrationRow(label, len(rr), float(p.mean()), float(c.mean()),
                                   1e3 * float(ct.mean()),
                                   1e3 * float(np.mean(d0 + dp * p + dc * c + d2 * q)),
                                   1e3 * float(ov.mean()), float(q.mean())))
    overhead = float(np.mean([r.duration - r.compute_time for r in recs]))
    return CalibrationResult(
        d0=d0, d1_prefill=dp, d1_context=dc, fit_rms=rms, fit_rel_error=rel,
        mean_abs_rel_error=mar, samples=len(recs), capacity=int(ec.capacity), model=model,
        device=device_description(), engine=dataclasses.asdict(ec), rows=tuple(rows),
        overhead_mean=overhead, timer=timer, timing_repeats=int(timing_repeats), d2=d2,
        block_size=int(ec.memory_block_size), single_d0=s0, single_d1=s1, single_d2=s2,
        single_rel_error=s_rel, single_mean_abs_rel_error=s_mar, base_d0=b0, base_d1=b1,
        base_rel_error=b_rel, base_mean_abs_rel_error=b_mar,
        probe_reference=float(measured.speed_reference) if probe else math.nan)


def measure_probe(measured: MeasuredCalls, samples: int = 15) -> float:
    """The speed probe's reference time: the median of ``samples`` runs of the runner's probe
    on the engine's clock (a unit of time, the same for calibration and replay)."""
    measured.engine.runner.probe()  # compiled already by any decode; kept out of the timings
    return float(np.median([measured.time_probe() for _ in range(samples)]))


def poisson_serving(num_requests: int = 48, loads: Sequence[float] = (0.1, 0.2, 0.4),
                    prompt_range=(8, 96), output_range=(4, 32), seed: int = 0):
    """Serving runs for :func:`calibrate`: ``num_requests`` Poisson arrivals with uniform
    lengths at each load (requests per ``d0``; about 0.4 fills 8 slots of 20-token
    requests)."""

    def make(d0: float):
        return [(f"serve poisson {load:g}/d0",
                 poisson_requests(num_requests, load / d0, prompt_range, output_range,
                                  seed + 1 + j))
                for j, load in enumerate(loads)]

    return make


def workload_serving(cfg, max_request_tokens: int, num_requests: int = 48,
                     max_output: int = 32, time_scales: Sequence[float] = (0.5, 1.0, 2.0),
                     num_classes: int = 1, seed: int = 0):
    """Serving runs for :func:`calibrate` from a workload config (e.g. a trace): one window
    per time scale, scaled as ``compare-sim`` scales it
    (:func:`~jaxsched.engine.compare.requests_from_config`), from workload seeds
    ``seed + 1, seed + 2, ..`` (other windows than ``compare-sim``'s replica 0 with the
    config's seed, when it is 0)."""

    def make(d0: float):
        out = []
        for j, ts in enumerate(time_scales):
            wl = cfg.workload.model_copy(update={"seed": int(cfg.workload.seed) + seed + 1 + j})
            c = cfg.model_copy(update={"workload": wl})
            out.append((f"serve {Path(str(cfg.source)).stem} x{ts:g} (seed {wl.seed})",
                        requests_from_config(c, max_request_tokens, d0, num_requests,
                                             max_output, ts, num_classes)))
        return out

    return make


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        if not math.isfinite(v):
            raise ValueError(f"cannot write {v!r} to TOML")
        return repr(v)
    s = str(v).replace("\\", "\\\\").replace('"', '\\"').replace("\n", " ")
    return f'"{s}"'


def write_profile(result: CalibrationResult, path: str | Path, name: str | None = None) -> Path:
    """Write the system profile TOML (``[system]`` + ``[engine]``); returns the path."""
    path = Path(path)
    lines = [
        "# System profile measured by `jaxsched calibrate` on the jaxsched engine.",
        "# Include it from a config with:  [system] profile = \"" + path.name + "\"",
        "# tau = d0 + d1_prefill * (prefill tokens) + d1_context * (context tokens)",
        "#       + d2 * (prefilling requests), in seconds per iteration.",
        "[system]",
    ]
    lines += [f"{k} = {_toml_value(v)}" for k, v in result.profile_dict(name).items()]
    lines += ["", "# How it was measured; the single-d1 fit tau = d0 + d1 (P + D) + d2 R and "
              "the fit without d2 on the same samples (comparisons only).", "[calibration]"]
    lines += [f"{k} = {_toml_value(v)}" for k, v in result.calibration_dict().items()]
    lines += ["", "# The engine shape the profile was measured with (jaxsched compare-sim "
              "rebuilds it).", "[engine]"]
    lines += [f"{k} = {_toml_value(v)}" for k, v in result.engine.items()]
    try:
        if path.parent and not path.parent.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("\n".join(lines) + "\n")
    except OSError as err:
        raise JaxschedError(f"{path}: cannot write: {err.strerror or err}") from None
    return path


def read_engine_section(path: str | Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """``(system table, engine table)`` of a profile written by :func:`write_profile` (the
    engine table is empty for other profiles)."""
    system, engine, _ = read_profile(path)
    return system, engine


def read_profile(path: str | Path) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    """``(system, engine, calibration)`` tables of a profile (the last two may be empty);
    ``d2`` is 0 where the profile has none (profiles written before it existed);
    ``d1_prefill`` and ``d1_context`` are ``d1`` where only it is given (likewise; giving both
    kinds that differ is refused); a ``probe_reference_s`` must be positive."""
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise JaxschedError(f"{path}: no such profile") from None
    except (OSError, tomllib.TOMLDecodeError) as err:
        raise JaxschedError(f"{path}: cannot read profile: {err}") from None
    system = data.get("system")
    if not isinstance(system, dict) or not {"capacity", "d0"} <= set(system) or not (
            "d1" in system or {"d1_prefill", "d1_context"} <= set(system)):
        raise JaxschedError(f"{path}: not a system profile (needs a [system] table with "
                            "capacity, d0, d1_prefill and d1_context (or d1); run jaxsched "
                            "calibrate)")
    try:
        dp, dc = split_d1(system.get("d1"), system.get("d1_prefill"), system.get("d1_context"),
                          required=True)
    except ValueError as err:
        raise JaxschedError(f"{path}: system: {err}") from None
    system = {**system, "d1_prefill": dp, "d1_context": dc, "d2": system.get("d2", 0.0),
              "block_size": system.get("block_size", 1)}
    d2 = system["d2"]
    if isinstance(d2, bool) or not isinstance(d2, (int, float)) or not d2 >= 0:
        raise JaxschedError(f"{path}: system.d2: expected a number >= 0, got {system['d2']!r}")
    calibration = dict(data.get("calibration") or {})
    ref = calibration.get("probe_reference_s")
    if ref is not None and (isinstance(ref, bool) or not isinstance(ref, (int, float))
                            or not ref > 0):
        raise JaxschedError(f"{path}: calibration.probe_reference_s: expected a positive "
                            f"number of seconds, got {ref!r}")
    return system, dict(data.get("engine") or {}), calibration
