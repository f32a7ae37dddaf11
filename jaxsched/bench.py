"""Benchmarks: every ratio they print is measured in the same run.

``bench_sim``: the batched JAX simulator at several batch sizes against the plain-Python
reference simulator on the same workloads.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Callable

import jax
import numpy as np

from jaxsched import api
from jaxsched.config import Config

__all__ = ["SimBenchRow", "SimBench", "bench_sim", "plain_params"]


@dataclasses.dataclass
class SimBenchRow:
    num_workloads: int
    wall_seconds: float  # one compiled call, compilation excluded
    compile_seconds: float
    slot_iterations_per_second: float  # max_batch x horizon x workloads / wall
    requests_per_second: float  # requests completed (all iterations) / wall
    seconds_per_workload: float
    speedup_vs_reference: float  # reference seconds per workload / seconds_per_workload


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


def plain_params(params: dict) -> dict:
    """A policy's traced params as plain Python numbers/lists (for the reference twin)."""
    out = {}
    for k, v in params.items():
        a = np.asarray(v)
        out[k] = a.tolist() if a.ndim else float(a)
    return out


def bench_sim(cfg: Config, batch_sizes=(1, 64, 1024), reference_workloads: int = 2,
              repeats: int = 2, progress: Callable[[str], None] | None = None) -> SimBench:
    """Time the JAX batch at each size and the reference on the first workloads."""
    from jaxsched.reference import reference_for, simulate_reference
    from jaxsched.refpolicies import REFERENCE_POLICIES

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
    )
