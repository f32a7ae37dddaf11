"""Benchmarks: every ratio they print is measured in the same run.

``bench_replay``: a trace replay (``configs/azure-conv.toml`` at :data:`REPLAY_SETTINGS`)
stepped one iteration at a time and with leaps over quiet iterations
(:mod:`jaxsched.core.leap`), side by side on the same workloads, with the metrics compared.

``bench_sim``: the batched JAX simulator at several batch sizes against two plain-Python
references on the same workloads: the reference simulator (:mod:`jaxsched.reference.simulator`, every
phase of the model written out, simple rather than fast) and, for greedy admission on a
saturated backlog, :func:`tight_greedy`, a tight loop of that one model (the setting of
``configs/tight-greedy.toml``).
"""

from __future__ import annotations

import bisect
import dataclasses
import time
from typing import Callable

import jax
import numpy as np

from jaxsched import api
from jaxsched.config import Config
from jaxsched.core.rollout import compiled_simulator
from jaxsched.reference.policies import REFERENCE_POLICIES
from jaxsched.reference.simulator import reference_for, simulate_reference

__all__ = ["SimBenchRow", "SimBench", "bench_sim", "plain_params", "tight_greedy",
           "REPLAY_SETTINGS", "ReplayRow", "ReplayBench", "bench_replay"]


@dataclasses.dataclass
class SimBenchRow:
    num_workloads: int
    wall_seconds: float  # one compiled call, compilation excluded
    compile_seconds: float
    slot_iterations_per_second: float  # max_batch x horizon x workloads / wall
    requests_per_second: float  # requests completed (all iterations) / wall
    seconds_per_workload: float
    speedup_vs_reference: float  # reference seconds per workload / seconds_per_workload
    speedup_vs_tight: float  # tight-loop seconds per workload / seconds_per_workload (or NaN)


@dataclasses.dataclass
class SimBench:
    config_source: str
    policy: str
    horizon: int
    max_batch: int
    device: str
    reference_workloads: int
    reference_seconds_per_workload: float
    reference_requests_per_second: float
    reference_agrees: bool  # completed counts identical on the compared workloads
    rows: list[SimBenchRow]
    tight_seconds_per_workload: float = float("nan")  # NaN: the tight loop does not apply
    tight_requests_per_second: float = float("nan")
    tight_agrees: bool | None = None  # completed counts identical to the JAX batch's


def plain_params(params: dict) -> dict:
    """A policy's traced params as plain Python numbers/lists (for the reference twin)."""
    out = {}
    for k, v in params.items():
        a = np.asarray(v)
        out[k] = a.tolist() if a.ndim else float(a)
    return out


def tight_greedy(prompt, output, capacity: float, max_batch: int, queue_size: int,
                 horizon: int, d0: float, d1_prefill: float, d1_context: float,
                 d2: float = 0.0, restart: bool = False) -> tuple[int, float]:
    """``(completed, T_H)`` of greedy admission on a saturated backlog, as a tight loop.

    Every request waits from time 0, in order. Each iteration admits FCFS (at most
    ``queue_size``, up to ``max_batch`` residents) while ``l + g + 1`` fits in what the
    residents leave after their next token, evicts newest first while the residents' next
    tokens overflow ``C`` (an evicted request rejoins the queue at its place, keeping its
    ``g`` tokens unless ``restart``), prefills whole, gives every resident one token
    (``tau = d0 + d1_prefill P + d1_context D + d2 R``) and completes those that reach their
    output. The model of :mod:`jaxsched.core.model` (memory in whole tokens, ``block_size = 1``)
    for this one policy, with no window, trace or metrics.
    """
    res, gen = [], []  # residents in admission order: request index, tokens generated
    kept, back = {}, []  # tokens kept by evicted requests; their indices, sorted
    n, nxt, t, completed = len(prompt), 0, 0.0, 0
    for _ in range(horizon):
        old = len(res)  # a resident holds l + g tokens and needs one more, as does a new one
        used = sum(prompt[i] + g + 1 for i, g in zip(res, gen))
        while len(res) < max_batch and len(res) - old < queue_size and (back or nxt < n):
            i = back[0] if back else nxt
            if used + prompt[i] + kept.get(i, 0) + 1 > capacity:
                break
            used += prompt[i] + kept.get(i, 0) + 1
            res.append(i)
            gen.append(kept.pop(i, 0))
            nxt += not back
            back = back[1:] if back else back
        while used > capacity:  # evict newest first; rejoin the queue at its place
            i, g = res.pop(), gen.pop()
            used -= prompt[i] + g + 1
            kept[i] = 0 if restart else g
            bisect.insort(back, i)
        old = min(old, len(res))
        tokens = [prompt[i] + g for i, g in zip(res, gen)]  # P (new) and D (old)
        t += (d0 + d1_prefill * sum(tokens[old:]) + d1_context * sum(tokens[:old])
              + d2 * (len(res) - old))
        live = [k for k, i in enumerate(res) if gen[k] + 1 < output[i]]
        completed += len(res) - len(live)
        res, gen = [res[k] for k in live], [gen[k] + 1 for k in live]
    return completed, t


def _tight_applies(cfg: Config, exp) -> bool:
    mns = float(np.asarray(exp.params.policy.get("max_num_seqs", np.inf)))
    return (exp.policy.name == "greedy" and cfg.workload.kind == "saturated"
            and mns >= exp.shape.max_batch
            and int(np.asarray(exp.params.system.block_size)) == 1
            and cfg.policy.settings().get("eviction", "newest") == "newest")


def bench_sim(cfg: Config, batch_sizes=(1, 64, 1024), reference_workloads: int = 2,
              repeats: int = 2, progress: Callable[[str], None] | None = None) -> SimBench:
    """Time the JAX batch at each size and the reference on the first workloads."""
    say = progress or (lambda msg: None)
    biggest = max(batch_sizes)
    big_cfg = cfg.model_copy(update={"workload": cfg.workload.model_copy(update={"num_workloads": biggest})})
    exp = api.build_experiment(big_cfg)
    say(f"building {biggest} workloads")
    keys, workloads = api.build_workloads(big_cfg, exp.num_requests, exp.duration)
    rows = []
    for w in batch_sizes:
        sub_keys = keys[:w]
        sub = jax.tree.map(lambda x: x[:w], workloads)
        sub_exp = dataclasses.replace(
            exp, config=big_cfg.model_copy(
                update={"workload": big_cfg.workload.model_copy(update={"num_workloads": w})}))
        say(f"JAX simulator: {w} workloads")
        best = None
        for _ in range(max(1, repeats)):
            res = api.run_experiment(sub_exp, sub_keys, sub)
            if best is None or res.sim_seconds < best.sim_seconds:
                best = res
        completed = float(np.sum(best.final_completed))
        t = best.sim_seconds
        rows.append(SimBenchRow(
            num_workloads=w,
            wall_seconds=t,
            compile_seconds=best.compile_seconds,
            slot_iterations_per_second=exp.shape.max_batch * exp.shape.horizon * w / t,
            requests_per_second=completed / t,
            seconds_per_workload=t / w,
            speedup_vs_reference=float("nan"),
            speedup_vs_tight=float("nan"),
        ))

    ref_n = min(reference_workloads, biggest)
    ref_time = 0.0
    ref_completed = 0
    agrees = True
    if exp.policy.name in REFERENCE_POLICIES and ref_n > 0:
        jax_done = api.run_experiment(exp, keys[:ref_n],
                                      jax.tree.map(lambda x: x[:ref_n], workloads)).final_completed
        options = {k: v for k, v in cfg.policy.settings().items() if k not in exp.policy.params}
        for i in range(ref_n):
            say(f"reference simulator: workload {i + 1}/{ref_n}")
            one = jax.tree.map(lambda x: np.asarray(x[i]), workloads)
            twin = reference_for(exp.policy.name, plain_params(exp.params.policy), options)
            t0 = time.perf_counter()
            ref = simulate_reference(one, exp.shape, exp.params.system, twin)
            ref_time += time.perf_counter() - t0
            done = ref.trajectory[-1].num_completed
            ref_completed += int(done)
            agrees &= int(done) == int(jax_done[i])
        per = ref_time / ref_n
        for row in rows:
            row.speedup_vs_reference = per / row.seconds_per_workload
    else:
        per = float("nan")
    tight = {}
    if _tight_applies(cfg, exp) and ref_n > 0:
        sysp = {k: float(np.asarray(getattr(exp.params.system, k)))
                for k in ("capacity", "d0", "d1_prefill", "d1_context", "d2")}
        restart = bool(np.asarray(exp.params.system.restart_on_evict))
        jax_done = api.run_experiment(exp, keys[:ref_n],
                                      jax.tree.map(lambda x: x[:ref_n], workloads)).final_completed
        t_time, t_completed, t_agrees = 0.0, 0, True
        for i in range(ref_n):
            say(f"tight loop: workload {i + 1}/{ref_n}")
            valid = np.asarray(workloads.valid[i])
            prompt = np.asarray(workloads.prompt[i])[valid].tolist()
            output = np.asarray(workloads.output[i])[valid].tolist()
            t0 = time.perf_counter()
            done, _ = tight_greedy(prompt, output, sysp["capacity"], exp.shape.max_batch,
                                   exp.shape.queue_size, exp.shape.horizon, sysp["d0"],
                                   sysp["d1_prefill"], sysp["d1_context"], sysp["d2"],
                                   restart)
            t_time += time.perf_counter() - t0
            t_completed += done
            t_agrees &= done == int(jax_done[i])
        tight = dict(tight_seconds_per_workload=t_time / ref_n,
                     tight_requests_per_second=t_completed / t_time, tight_agrees=t_agrees)
        for row in rows:
            row.speedup_vs_tight = t_time / ref_n / row.seconds_per_workload
    return SimBench(
        config_source=cfg.source,
        policy=exp.policy.name,
        horizon=exp.shape.horizon,
        max_batch=exp.shape.max_batch,
        device=str(jax.devices()[0].device_kind),
        reference_workloads=ref_n,
        reference_seconds_per_workload=per,
        reference_requests_per_second=ref_completed / ref_time if ref_time else float("nan"),
        reference_agrees=agrees,
        rows=rows,
        **tight,
    )


REPLAY_SETTINGS = ("policy.name=vllm", "policy.scheduler=v0", "system.max_batch=128",
                   "workload.horizon=8000", "workload.num_workloads=1024")
"""``--set`` overrides of ``jaxsched bench replay`` before the user's: issue 14's setting
(``configs/azure-conv.toml``, A100 profile, vLLM v0, 128 slots, 1024 windows of 8,000
iterations)."""


@dataclasses.dataclass
class ReplayRow:
    leap: bool
    wall_seconds: float  # the run, compilation excluded (best of the repeats)
    compile_seconds: float
    completed: int  # requests completed over all iterations and workloads
    requests_per_second: float  # completed / wall
    iterations_per_second: float  # workloads x horizon / wall


@dataclasses.dataclass
class ReplayBench:
    config_source: str
    policy: str
    horizon: int
    max_batch: int
    num_workloads: int
    device: str
    rows: list[ReplayRow]
    speedup: float  # leaping requests/s over stepping requests/s
    identical: bool  # every per-workload metric and completed count equal, bit for bit
    moves_workloads: int = 0  # workloads whose moves were counted (0: not counted)
    moves_mean: float = float("nan")  # moves (leap + step) per workload, mean over them
    moves_max: int = 0  # the most moves of one workload: what a batch of them waits for


def bench_replay(cfg: Config, repeats: int = 1, moves: int = 0,
                 progress: Callable[[str], None] | None = None) -> ReplayBench:
    """Run the config's batch with ``system.leap`` off and on (same workloads, the default
    chunked path), time each (best of ``repeats``) and compare their metrics; with ``moves``,
    count the moves of the first ``moves`` workloads (a traced leaping run, untimed)."""
    say = progress or (lambda msg: None)
    exp = api.build_experiment(cfg)
    say(f"building {cfg.workload.num_workloads} workloads")
    keys, workloads = api.build_workloads(cfg, exp.num_requests, exp.duration)
    rows, results = [], []
    for leap in (False, True):
        run_exp = dataclasses.replace(exp, shape=dataclasses.replace(exp.shape, leap=leap))
        best = None
        for i in range(max(1, repeats)):
            say(f"{'leaping' if leap else 'stepping'}: run {i + 1}/{max(1, repeats)}")
            res = api.run_experiment(run_exp, keys, workloads)
            if best is None or res.sim_seconds < best.sim_seconds:
                best = res
        completed = int(np.sum(best.final_completed))
        w, t = cfg.workload.num_workloads, best.sim_seconds
        rows.append(ReplayRow(leap=leap, wall_seconds=t, compile_seconds=best.compile_seconds,
                              completed=completed, requests_per_second=completed / t,
                              iterations_per_second=w * exp.shape.horizon / t))
        results.append(best)
    plain, leaping = results
    counted = {}
    if moves:
        say(f"counting moves of {min(moves, len(keys))} workloads")
        m = min(moves, len(keys))
        shape = dataclasses.replace(exp.shape, leap=True, record_trace=True)
        trace = compiled_simulator(exp.policy, shape)(
            keys[:m], jax.tree.map(lambda x: x[:m], workloads), exp.params).trace
        per = np.sum(np.asarray(trace.stepped), axis=-1)
        counted = dict(moves_workloads=m, moves_mean=float(per.mean()), moves_max=int(per.max()))
    identical = bool(np.array_equal(plain.final_completed, leaping.final_completed)) and all(
        np.array_equal(plain.per_workload[k], leaping.per_workload[k], equal_nan=True)
        for k in plain.per_workload)
    return ReplayBench(
        config_source=cfg.source, policy=exp.policy.name, horizon=exp.shape.horizon,
        max_batch=exp.shape.max_batch, num_workloads=cfg.workload.num_workloads,
        device=str(jax.devices()[0].device_kind), rows=rows,
        speedup=rows[1].requests_per_second / rows[0].requests_per_second,
        identical=identical, **counted)
