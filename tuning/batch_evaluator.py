"""K parameter sets x W workloads in one compiled, vmapped simulator call: how every Optuna
batch (and the gradient tuner's hard-simulator checks) is evaluated."""

from __future__ import annotations

import functools
import time
from typing import Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jaxsched import api
from jaxsched.core.rollout import compiled_simulator
from jaxsched.core.sim import SimParams
from jaxsched.running import sharding
from jaxsched.running.chunked import run_chunked
from tuning.objectives import ALL_METRICS, add_derived, aggregate, measured_time
from tuning.tune_job import TuneJob

__all__ = ["BatchEvaluator"]


@functools.lru_cache(maxsize=8)
def _compiled_batch(policy, shape, treedef, specs):
    """The batched-parameter simulator of ``policy`` and ``shape`` compiled for arguments of
    ``specs`` (shape, dtype, weak type of each leaf of ``treedef``): kept for later evaluators
    of the same policy, shape and sizes."""
    args = jax.tree.unflatten(treedef, [jax.ShapeDtypeStruct(s, d, weak_type=w)
                                        for s, d, w in specs])
    return compiled_simulator(policy, shape, batched_params=True).lower(*args).compile()


class BatchEvaluator:
    """K parameter sets x W workloads in one compiled, vmapped simulator call.

    The simulator is compiled once for the batch size (ahead of time, kept for later
    evaluators of the same policy, shape and sizes in this process); a batch with fewer points
    is padded with the reference point, so no batch recompiles.

    Devices: ``tune.devices`` (``--devices``; default every device). With more than one, the
    K x W batch goes through :func:`jaxsched.running.chunked.run_chunked`, its parameter-set and
    workload axes sharded over a device mesh (compiled on the first call, cached), with the
    same metrics, bit for bit, as on one device.
    """

    def __init__(self, job: TuneJob, batch: int, keys=None, workloads=None):
        self.job = job
        self.batch = int(batch)
        self._devices = sharding.select_devices(job.settings.devices)  # bad --devices: now
        exp = job.experiment
        if workloads is None:
            keys, workloads = api.build_workloads(job.config, exp.num_requests, exp.duration)
        self.keys, self.workloads = keys, workloads
        k = self.batch
        self._system = jax.tree.map(lambda x: jnp.broadcast_to(x, (k,) + x.shape), exp.params.system)
        self._default = job.space.default_point()
        self.compile_seconds = 0.0
        self.sim_seconds = 0.0
        self.calls = 0
        self._compiled = None
        if len(self._devices) > 1:  # sharded: run_chunked compiles on the first call
            return
        example = SimParams(system=self._system,
                            policy={n: jnp.asarray(v) for n, v in job.space.stack([self._default] * k).items()})
        leaves, treedef = jax.tree.flatten((keys, workloads, example))
        specs = tuple((tuple(x.shape), x.dtype, bool(getattr(x, "weak_type", False)))
                      for x in leaves)
        t0 = time.perf_counter()
        self._compiled = _compiled_batch(exp.policy, exp.shape, treedef, specs)
        self.compile_seconds = time.perf_counter() - t0

    @property
    def num_devices(self) -> int:
        return len(self._devices)

    def _simulate(self, params):
        """The batch's :class:`~jaxsched.core.sim.RolloutResult`, leading (K, W)."""
        if self._compiled is not None:
            return jax.block_until_ready(self._compiled(self.keys, self.workloads, params))
        exp = self.job.experiment
        keys, wl = self.keys, self.workloads
        res, stats = run_chunked(
            exp.policy, exp.shape, params, int(keys.shape[0]),
            lambda lo, hi: (keys[lo:hi], jax.tree.map(lambda x: x[lo:hi], wl)),
            int(wl.arrival.shape[-1]), batched_params=True, devices=self._devices)
        if self.calls == 0:
            self.compile_seconds = stats.compile_seconds
        return res

    @property
    def default_point(self) -> dict:
        return dict(self._default)

    def evaluate_per_workload(self, points: Sequence[Mapping[str, float]]) -> dict[str, np.ndarray]:
        """Per-workload metrics (incl. derived) of up to K points: arrays (len(points), W)."""
        n = len(points)
        if not 0 < n <= self.batch:
            raise ValueError(f"evaluate takes 1..{self.batch} points, got {n}")
        padded = list(points) + [self._default] * (self.batch - n)
        pol = {k: jnp.asarray(v) for k, v in self.job.space.stack(padded).items()}
        params = SimParams(system=self._system, policy=pol)
        t0 = time.perf_counter()
        res = self._simulate(params)
        self.sim_seconds += time.perf_counter() - t0
        self.calls += 1
        per = {k: np.asarray(v, np.float64)[:n] for k, v in res.metrics.items()}
        cfg = self.job.config
        elapsed = measured_time(cfg.workload.horizon, cfg.workload.warmup, cfg.d0,
                                max(cfg.d1_prefill, cfg.d1_context), np.asarray(res.final_time, np.float64)[:n], d2=cfg.d2)
        return add_derived(per, elapsed)

    def evaluate(self, points: Sequence[Mapping[str, float]]) -> list[dict[str, float]]:
        """Workload-averaged metrics (:data:`tuning.objectives.ALL_METRICS`) of each point."""
        agg = aggregate(self.evaluate_per_workload(points))
        return [{k: float(agg[k][i]) for k in ALL_METRICS if k in agg} for i in range(len(points))]
