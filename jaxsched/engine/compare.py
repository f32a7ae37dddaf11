"""Replay one request list through the engine and through the simulator, side by side.

Requests
--------
:func:`requests_from_config` takes replica 0 of a config's workload (any kind, e.g. a trace
replay) and scales it down to the engine:

* lengths: ``scale = min(1, max_request_tokens / max(l + o))`` over the first
  ``num_requests`` requests; ``l' = max(1, round(l * scale))``, ``o' = max(1, round(o *
  scale))``, then ``o'`` is capped at ``max_output`` and ``l'`` clipped so that
  ``l' + o' <= max_request_tokens`` (the engine's ``min(C, max_seq_len)``);
* time: ``a' = a * time_scale * d0_profile / d0_config``: arrivals keep their spacing measured
  in base iteration times (``d0``; with a slotted config, ``d0 = 1``, one slot becomes one
  engine ``d0``). ``time_scale`` (the ``--time-scale`` option) stretches (> 1) or compresses
  (< 1) the arrivals further.

Engine clock (the replay's virtual time)
----------------------------------------
The engine runs on a virtual clock ``V``: before each iteration every request with
``a' <= V`` is submitted (its arrival recorded as exactly ``a'``); the iteration runs; then
``V`` advances by the iteration's measured ``compute_time`` (the model calls; the CPU
scheduling overhead is left out, as in the calibration), measured by the clock's timer: wall
time, or this process's CPU time (``--timer cpu``, robust when other jobs share the machine;
``compare-sim`` uses the timer the profile was calibrated with). When the engine is idle ``V``
jumps to the next arrival. A request's latency is ``V`` after the iteration that completes it minus
``a'``. So the engine's timing is measured, its scheduling decisions are its own, and only the
host overhead of this small CPU engine is excluded.

Simulator
---------
The same list becomes a one-replica :class:`~jaxsched.core.model.Workload`, simulated with the
profile's ``capacity, d0, d1_prefill, d1_context, d2`` (and ``block_size``), the
engine's ``max_batch``/``queue_size``,
``restart_on_evict = false`` (the engine keeps generated tokens) and the same policy and
parameters, for enough iterations to complete every request.

Metrics, for both: ``completed_per_time`` = requests completed / time of the last completion;
``evictions``; ``peak_kv_tokens`` (the largest ``M_k``); latency mean, p50, p95 (nearest rank;
the simulator's are read from its log histogram, within 1.1%).
"""

from __future__ import annotations

import dataclasses
import math
import time
from pathlib import Path
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jaxsched import api
from jaxsched.core.model import SimShape, Workload, system_params
from jaxsched.core.rollout import compiled_simulator
from jaxsched.core.sim import SimParams
from jaxsched.engine.batching import SamplingParams
from jaxsched.errors import JaxschedError

__all__ = [
    "ReplayRequest",
    "CompareResult",
    "COMPARE_KEYS",
    "EXTRA_KEYS",
    "VirtualClock",
    "requests_from_config",
    "poisson_requests",
    "warm_up",
    "replay_engine",
    "simulate_requests",
    "compare",
    "plot_memory",
]

COMPARE_KEYS = ("completed", "completed_per_time", "evictions", "peak_kv_tokens",
                "latency_mean", "latency_p50", "latency_p95")
EXTRA_KEYS = ("mean_kv_tokens", "ttft_mean")
"""Also reported by :func:`simulate_requests` (and by the vLLM replay): the time-weighted mean
of ``M_k`` over busy time and the mean time to first token."""


@dataclasses.dataclass(frozen=True)
class ReplayRequest:
    arrival: float  # seconds on the engine's virtual clock
    prompt_len: int
    output_len: int
    cls: int = 0


@dataclasses.dataclass
class CompareResult:
    engine: dict[str, float]
    sim: dict[str, float]
    engine_memory: tuple[np.ndarray, np.ndarray]  # (time, M_k)
    sim_memory: tuple[np.ndarray, np.ndarray]
    num_requests: int
    policy: str
    engine_iterations: int
    sim_iterations: int
    keys: tuple[str, ...] = COMPARE_KEYS  # the metrics compared
    engine_runs: tuple[dict[str, float], ...] = ()  # each replay's figures, when ``engine``
    # is their per-figure median (vLLM: repeated replays of the same requests)

    def rel_errors(self) -> dict[str, float]:
        """``|sim - engine| / |engine|`` per key (nan when the engine's value is 0 and the
        simulator's is not; 0 when both are 0)."""
        out = {}
        for k in self.keys:
            e, s = self.engine[k], self.sim[k]
            if e == 0:
                out[k] = 0.0 if s == 0 else math.nan
            else:
                out[k] = abs(s - e) / abs(e)
        return out

    def to_json(self) -> dict[str, Any]:
        def clean(d):
            return {k: (None if isinstance(v, float) and not math.isfinite(v) else v)
                    for k, v in d.items()}

        out = {"engine": clean(self.engine), "sim": clean(self.sim),
               "rel_error": clean(self.rel_errors()), "num_requests": self.num_requests,
               "policy": self.policy, "engine_iterations": self.engine_iterations,
               "sim_iterations": self.sim_iterations}
        if self.engine_runs:
            out["engine_replays"] = [clean(r) for r in self.engine_runs]
        return out


class VirtualClock:
    """The engine's clock in :func:`replay_engine`: frozen at ``base`` between iterations,
    running during one (so ``compute_time`` is still measured) by ``timer``:
    ``time.perf_counter`` (wall) by default, or ``time.process_time`` (CPU seconds of this
    process; see :mod:`jaxsched.engine.calibrate`). It starts running."""

    def __init__(self, timer=time.perf_counter):
        self.base = 0.0
        self.timer = timer
        self._anchor: float | None = timer()

    def __call__(self) -> float:
        if self._anchor is None:
            return self.base
        return self.base + (self.timer() - self._anchor)

    def run(self) -> None:
        self._anchor = self.timer()

    def freeze(self, base: float) -> None:
        self._anchor = None
        self.base = base


def _nearest_rank(values: Sequence[float], p: float) -> float:
    v = np.sort(np.asarray(values, np.float64))
    if v.size == 0:
        return math.nan
    return float(v[max(0, int(math.ceil(p * v.size)) - 1)])


def poisson_requests(n: int, rate: float, prompt_range=(8, 96), output_range=(4, 32),
                     seed: int = 0) -> list[ReplayRequest]:
    """``n`` requests with Poisson arrivals (``rate`` per second) and uniform lengths."""
    rs = np.random.RandomState(seed)
    t = np.cumsum(rs.exponential(1.0 / rate, size=n))
    return [ReplayRequest(float(a), int(rs.randint(prompt_range[0], prompt_range[1] + 1)),
                          int(rs.randint(output_range[0], output_range[1] + 1)))
            for a in t]


def requests_from_config(cfg, max_request_tokens: int, d0_profile: float, num_requests: int = 48,
                         max_output: int = 32, time_scale: float = 1.0,
                         num_classes: int = 1) -> list[ReplayRequest]:
    """Replica 0 of ``cfg``'s workload scaled to the engine (see the module docstring)."""
    cfg1 = cfg.model_copy(update={"workload": cfg.workload.model_copy(update={"num_workloads": 1})})
    _, wl = api.build_workloads(cfg1)
    valid = np.asarray(wl.valid[0])
    arrival = np.asarray(wl.arrival[0], np.float64)[valid][:num_requests]
    prompt = np.asarray(wl.prompt[0], np.int64)[valid][:num_requests]
    output = np.asarray(wl.output[0], np.int64)[valid][:num_requests]
    cls = np.asarray(wl.cls[0], np.int64)[valid][:num_requests]
    if arrival.size == 0:
        raise JaxschedError(f"{cfg.source}: the workload has no requests")
    scale = min(1.0, max_request_tokens / float(np.max(prompt + output)))
    lp = np.maximum(1, np.round(prompt * scale)).astype(int)
    lo = np.minimum(np.maximum(1, np.round(output * scale)).astype(int), max_output)
    lo = np.minimum(lo, max_request_tokens - 1)
    lp = np.minimum(lp, max_request_tokens - lo)
    d0_cfg = cfg.d0 if cfg.d0 > 0 else cfg.d0 + min(cfg.d1_prefill, cfg.d1_context)
    factor = time_scale * d0_profile / d0_cfg
    a = (arrival - arrival[0]) * factor
    return [ReplayRequest(float(t), int(p), int(o), int(min(c, num_classes - 1)))
            for t, p, o, c in zip(a, lp, lo, cls)]


def warm_up(engine, seed: int = 0) -> None:
    """Compile what a replay will run (every prefill bucket, the decode step, the policy's
    decision) on a throwaway ``engine`` with the replay engine's model, shapes and policy, so
    that compilation time does not land on the replay's clock."""
    ec = engine.engine_cfg
    rs = np.random.RandomState(seed)
    sp = SamplingParams(max_tokens=2, temperature=0.0, ignore_eos=True)
    for bucket in ec.prefill_buckets():
        n = max(1, min(bucket, ec.max_request_tokens - 2))
        engine.submit([int(t) for t in rs.randint(0, 256, size=n)], sp)
        engine.run_until_idle()
        if n < bucket:
            break


def replay_engine(engine, clock: VirtualClock, requests: Sequence[ReplayRequest], seed: int = 0,
                  max_iterations: int = 200_000) -> dict[str, Any]:
    """Run ``requests`` through ``engine`` (built with ``clock=clock``) on the virtual clock."""
    rs = np.random.RandomState(seed)
    order = sorted(range(len(requests)), key=lambda i: requests[i].arrival)
    prompts = {i: [int(t) for t in rs.randint(0, 256, size=requests[i].prompt_len)]
               for i in order}
    pending = list(order)
    live: dict[int, Any] = {}
    latency: dict[int, float] = {}
    mem_t, mem_m = [], []
    evictions = 0
    v = 0.0
    iters = 0
    o = clock()  # the engine's clock reads o + v (the engine may have run before)
    while pending or engine.has_work():
        if not engine.has_work() and pending and requests[pending[0]].arrival > v:
            v = requests[pending[0]].arrival  # idle: jump to the next arrival
        while pending and requests[pending[0]].arrival <= v:
            i = pending.pop(0)
            r = requests[i]
            clock.freeze(o + r.arrival)  # the engine records the arrival as o + a'
            sp = SamplingParams(max_tokens=r.output_len, temperature=0.0, ignore_eos=True)
            live[i] = engine.submit(prompts[i], sp, cls=r.cls)
        clock.freeze(o + v)
        clock.run()
        rec = engine.step()
        clock.freeze(o + v)
        iters += 1
        if iters > max_iterations:
            raise JaxschedError(f"engine replay did not finish in {max_iterations} iterations")
        if rec is None:
            continue
        mem_t.append(v)
        mem_m.append(rec.memory)
        evictions += rec.evicted
        v += rec.compute_time
        clock.freeze(o + v)
        for i in [i for i, req in live.items() if req.finished]:
            latency[i] = v - requests[i].arrival
            del live[i]
    lat = list(latency.values())
    ends = [requests[i].arrival + latency[i] for i in latency]
    last = max(ends) if ends else math.nan
    return {
        "metrics": {
            "completed": float(len(lat)),
            "completed_per_time": len(lat) / last if lat and last > 0 else 0.0,
            "evictions": float(evictions),
            "peak_kv_tokens": float(max(mem_m) if mem_m else 0),
            "latency_mean": float(np.mean(lat)) if lat else math.nan,
            "latency_p50": _nearest_rank(lat, 0.5),
            "latency_p95": _nearest_rank(lat, 0.95),
        },
        "memory": (np.asarray(mem_t), np.asarray(mem_m)),
        "iterations": iters,
        "end_time": v,
    }


def simulate_requests(requests: Sequence[ReplayRequest], policy, params, capacity: float,
                      d0: float, d1: float, max_batch: int, queue_size: int, horizon: int,
                      num_classes: int = 1, seed: int = 0, d2: float = 0.0, *,
                      d1_prefill: float | None = None, d1_context: float | None = None,
                      block_size: int = 1) -> dict[str, Any]:
    """Simulate ``requests`` (one replica) for ``horizon`` iterations with
    ``tau = d0 + d1_prefill P + d1_context D + d2 R`` (each split coefficient ``d1`` unless
    given, as in :func:`jaxsched.core.model.system_params`) and memory in blocks of
    ``block_size``."""
    reqs = sorted(requests, key=lambda r: r.arrival)
    wl = Workload(
        arrival=jnp.asarray([[r.arrival for r in reqs]], jnp.float32),
        prompt=jnp.asarray([[r.prompt_len for r in reqs]], jnp.int32),
        output=jnp.asarray([[r.output_len for r in reqs]], jnp.int32),
        cls=jnp.asarray([[r.cls for r in reqs]], jnp.int32),
        valid=jnp.ones((1, len(reqs)), bool),
    )
    shape = SimShape(max_batch=max_batch, queue_size=queue_size, horizon=int(horizon),
                     num_classes=num_classes, warmup=0, record_trace=True)
    if policy.check_shape is not None:
        policy.check_shape(params, shape, "policy.")
    sp = SimParams(system=system_params(capacity, d0, d1, False, d2, d1_prefill=d1_prefill,
                                        d1_context=d1_context, block_size=block_size),
                   policy=params)
    keys = jax.random.split(jax.random.key(seed), 1)
    res = jax.block_until_ready(compiled_simulator(policy, shape)(keys, wl, sp))
    m = {k: float(np.asarray(v)[0]) for k, v in res.metrics.items()}
    tr = res.trace
    t = np.asarray(tr.time[0], np.float64)
    dur = np.asarray(tr.duration[0], np.float64)
    memory = np.asarray(tr.memory[0])
    completed = np.asarray(tr.completed[0])
    n_done = int(np.sum(completed))
    busy = memory > 0
    last = float((t + dur)[np.flatnonzero(completed)[-1]]) if n_done else math.nan
    busy_time = float(np.sum(dur[busy]))
    return {
        "metrics": {
            "completed": float(n_done),
            "completed_per_time": n_done / last if n_done and last > 0 else 0.0,
            "evictions": m["evictions"],
            "peak_kv_tokens": float(memory.max()) if memory.size else 0.0,
            "latency_mean": m["latency_mean"],
            "latency_p50": m["latency_p50"],
            "latency_p95": m["latency_p95"],
            "mean_kv_tokens": (float(np.sum(memory[busy] * dur[busy]) / busy_time)
                               if busy_time > 0 else 0.0),
            "ttft_mean": m.get("ttft_mean", math.nan),
        },
        "memory": (t[busy], memory[busy]),
        "iterations": int(np.sum(busy)),
        "all_done": n_done == len(reqs),
    }


def compare(engine, clock: VirtualClock, requests: Sequence[ReplayRequest], policy, params,
            profile: dict[str, Any], seed: int = 0) -> CompareResult:
    """Replay on the engine, then simulate with the profile's ``capacity, d0, d1_prefill,
    d1_context, d2, block_size`` (``d2`` 0 and ``block_size`` 1 when the profile has none; a
    single ``d1`` gives both coefficients)."""
    if not requests:
        raise JaxschedError("no requests to replay")
    eng = replay_engine(engine, clock, requests, seed)
    ec = engine.engine_cfg
    d0 = float(profile["d0"])
    dp = float(profile.get("d1_prefill", profile.get("d1")))
    dc = float(profile.get("d1_context", profile.get("d1")))
    d2 = float(profile.get("d2", 0.0))
    block_size = int(profile.get("block_size", 1))
    capacity = float(profile.get("capacity", ec.capacity))
    # Enough iterations for the simulator to finish: the engine's busy iterations plus its
    # idle time in units of d0, doubled; retried longer if that was not enough.
    idle = max(0.0, eng["end_time"]) / max(d0 + min(dp, dc), 1e-12)
    horizon = int(min(2 * eng["iterations"] + idle + 64, 400_000))
    for _ in range(3):
        sim = simulate_requests(requests, policy, params, capacity, d0, dp, ec.max_batch,
                                ec.queue_size, horizon, ec.num_classes, seed, d2,
                                d1_context=dc, block_size=block_size)
        if sim["all_done"]:
            break
        horizon *= 4
    return CompareResult(engine=eng["metrics"], sim={k: sim["metrics"][k] for k in COMPARE_KEYS},
                         engine_memory=eng["memory"], sim_memory=sim["memory"],
                         num_requests=len(requests), policy=policy.name,
                         engine_iterations=eng["iterations"], sim_iterations=sim["iterations"])


def plot_memory(result: CompareResult, path: str | Path, capacity: float | None = None,
                engine_label: str = "engine") -> Path:
    """A PNG of both memory trajectories ``M_k`` over (virtual) time."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(path)
    fig, ax = plt.subplots(figsize=(8, 4))
    et, em = result.engine_memory
    st, sm = result.sim_memory
    ax.step(et, em, where="post", label=f"{engine_label} (measured)", lw=1.2)
    ax.step(st, sm, where="post", label="simulator (calibrated)", lw=1.2, alpha=0.8)
    if capacity:
        ax.axhline(capacity, color="k", ls="--", lw=0.8, label=f"capacity C = {capacity:g}")
    ax.set_xlabel(f"time (s, {engine_label} virtual clock)")
    ax.set_ylabel("KV memory M_k (tokens)")
    ax.set_title(f"{result.policy}: {result.num_requests} requests, {engine_label} vs simulator")
    ax.legend(loc="best")
    fig.tight_layout()
    try:
        fig.savefig(path, dpi=110)
    except OSError as err:
        raise JaxschedError(f"{path}: cannot write: {err.strerror or err}") from None
    finally:
        plt.close(fig)
    return path
