"""Memory and time of the gradient tuner's descent step, with and without rematerialization.

``python -m tuning.gradient_memory CONFIG [--set KEY=VALUE ...] [--remat S] [--time]``
compiles the tuner's own descent step (``gradient_search._compile_update``: the relaxed
loss's gradient over ``restarts`` points x the config's workloads, an optax update) and
prints XLA's buffer assignment of it (``compiled.memory_analysis()``: arguments, outputs,
temporaries; ``peak_bytes`` is their sum), the compile time and, with ``--time``, the wall
time of one step and the process's peak resident memory. ``--remat S``: leaf segments of S
iterations in :mod:`tuning.nested_remat`'s two-level layout (0: the plain scan; default: the
config's ``[tune.gradient] remat``, else :func:`tuning.gradient_search.remat_segment`). The
seed-001 mix of the README: ``configs/flow-control.toml`` with ``workload.kind=saturated``,
``policy.name=flow_control``, 8 workloads.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import resource
import sys
import time

import jax
import jax.numpy as jnp

from jaxsched import api
from jaxsched.config import load_config
from tuning.tune_job import prepare
from tuning.gradient_search import (_compile_update, _initial_points, _optimizer,
                                    gradient_settings, remat_segment)
from tuning.nested_remat import balanced_plan
from tuning.settings import tune_settings

__all__ = ["measure", "main"]


def measure(cfg, remat: int | None = None, run: bool = False) -> dict:
    """Figures of one compiled descent step of the config's gradient tuner (see module)."""
    job = prepare(cfg, tune_settings(cfg.tune, cfg.source))
    gs = gradient_settings(job.settings.gradient, cfg.source)
    if remat is not None:
        gs = gs.model_copy(update={"remat": remat})
    exp = job.experiment
    keys, workloads = api.build_workloads(cfg, exp.num_requests, exp.duration)
    objective = job.objective
    if objective.kind != "weighted":
        objective = dataclasses.replace(objective, kind="weighted")
    if objective.needs_baseline:  # any positive baseline: the memory and time do not depend on it
        objective = objective.with_baseline({})  # scales 1
    opt = _optimizer(gs)
    u = jnp.asarray(_initial_points(job, gs.restarts, 0))
    state = {"u": u, "opt_state": opt.init(u)}
    t0 = time.perf_counter()
    compiled = _compile_update(job, objective, gs, keys, workloads, opt, state)
    leaf = gs.remat if gs.remat is not None else remat_segment(exp.shape.horizon)
    out = {"horizon": cfg.workload.horizon, "max_batch": cfg.system.max_batch,
           "workloads": cfg.workload.num_workloads, "restarts": gs.restarts,
           "requests_per_workload": exp.num_requests,
           "remat": leaf,
           "plan": dataclasses.asdict(balanced_plan(exp.shape.horizon, leaf)) if leaf else None,
           "compile_s": round(time.perf_counter() - t0, 1)}
    ma = compiled.memory_analysis()
    out.update(argument_bytes=int(ma.argument_size_in_bytes),
               output_bytes=int(ma.output_size_in_bytes), temp_bytes=int(ma.temp_size_in_bytes))
    out["peak_bytes"] = out["argument_bytes"] + out["output_bytes"] + out["temp_bytes"]
    if run:
        t0 = time.perf_counter()
        jax.block_until_ready(compiled(state["u"], state["opt_state"], jnp.float32(1.0)))
        out["step_s"] = round(time.perf_counter() - t0, 1)
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        out["max_rss_bytes"] = int(rss if sys.platform == "darwin" else rss * 1024)
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m tuning.gradient_memory",
                                 description=__doc__.split("\n\n")[0])
    ap.add_argument("config")
    ap.add_argument("--set", dest="overrides", action="append", default=[],
                    metavar="KEY=VALUE")
    ap.add_argument("--remat", type=int, default=None,
                    help="iterations per rematerialized segment (0: plain scan)")
    ap.add_argument("--time", action="store_true", help="run the step once and time it")
    args = ap.parse_args(argv)
    cfg = load_config(args.config, args.overrides)
    print(json.dumps(measure(cfg, args.remat, args.time)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
