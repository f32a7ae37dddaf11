"""Sharding over devices changes no result: 1 device and 4 (forced host) devices give
identical per-workload and aggregated metrics, also with padding, streaming and a sharded
param-set axis."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

from jaxsched.running import sharding as S
from jaxsched.cli import main

# Runs in a subprocess: the device count is fixed when JAX starts.
_SCRIPT = textwrap.dedent("""
    import dataclasses, json, jax, numpy as np
    from jaxsched import api, testing as jt
    from jaxsched.config import DEFAULT_CONFIG, load_config
    assert len(jax.devices()) == 4, jax.devices()
    cfg = load_config(DEFAULT_CONFIG, ["workload.num_workloads=6", "workload.horizon=40",
                                       "workload.warmup=5", "system.max_batch=16",
                                       "system.queue_size=8", "system.capacity=600"])
    out = {}
    with jt.fast_compile():
        exp = api.build_experiment(cfg)
        keys, wl = api.build_workloads(cfg, exp.num_requests, exp.duration)
        stacked = jt.stack([exp.params, exp.params.replace(
            system=exp.params.system.replace(capacity=exp.params.system.capacity * 0.7))])
        for name, kw in [("one", dict(devices=1)), ("four", dict(devices=4)),
                         ("four_streamed", dict(devices=4, chunk=15, max_memory=1))]:
            if "max_memory" in kw:  # one rollout per device per streamed batch
                kw["max_memory"] = res.run_stats.plan.bytes_per_rollout
            res = api.run_experiment(exp, **kw)
            out[name] = dict(per=res.per_workload, summary=res.summary,
                             plan=[res.run_stats.plan.mesh, res.run_stats.plan.num_batches])
            # a sharded param-set axis: P = 2, W = 5 -> mesh (2, 2), both axes padded
            sub = jax.tree.map(lambda x: x[:5], wl)
            res = api.run_experiment(exp, keys[:5], sub, stacked, batched_params=True,
                                     devices=kw["devices"])
            out[name + "_params"] = dict(per=res.per_workload, plan=[res.run_stats.plan.mesh])
        # streamed workloads in a sliding window of 3 blocks of 64 requests, slid every 5
        # iterations; 6 workloads padded to 8 on 4 devices
        for name, n in [("one_stream", 1), ("four_stream", 4)]:
            res = api.run_experiment(exp, devices=n, chunk=5, stream=True, window=192)
            out[name] = dict(per=res.per_workload, plan=[res.run_stats.plan.mesh,
                                                         res.run_stats.plan.window])
        # the tuners' K x W batch: 3 points of a flow_control search space, 1 vs 4 devices
        from tuning.batch_evaluator import BatchEvaluator
        from tuning.tune_job import prepare
        tcfg = load_config(DEFAULT_CONFIG, ["workload.num_workloads=6", "workload.horizon=40",
                                            "workload.warmup=5", "system.max_batch=16",
                                            "system.queue_size=8", "system.capacity=600",
                                            "policy.name=flow_control"])
        for n in (1, 4):
            job = prepare(tcfg)
            job = dataclasses.replace(job, settings=job.settings.model_copy(
                update={"devices": n}))
            ev = BatchEvaluator(job, 3)
            u = len(job.space.names)
            pts = [job.space.point_from_unit(np.full(u, f)) for f in (0.2, 0.5, 0.9)]
            out[f"tune{n}"] = dict(per=ev.evaluate_per_workload(pts), devices=ev.num_devices)
    print(json.dumps(jax.tree.map(lambda x: np.asarray(x).tolist(), out)))
""")


def test_one_and_four_devices_give_identical_results():
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4",
               JAX_PLATFORMS="cpu")
    proc = subprocess.run([sys.executable, "-c", _SCRIPT], env=env, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["one"]["plan"] == [[1, 1], 1] and out["four"]["plan"] == [[1, 4], 1]
    assert out["four_streamed"]["plan"] == [[1, 4], 2]  # 6 workloads -> 2 batches of 4
    assert out["four_params"]["plan"] == [[2, 2]] and out["one_params"]["plan"] == [[1, 1]]
    for other in ("four", "four_streamed"):
        assert out[other]["per"] == out["one"]["per"], other  # exact, NaN as null
        assert out[other]["summary"] == out["one"]["summary"], other
    assert out["four_params"]["per"] == out["one_params"]["per"]
    assert len(out["one_params"]["per"]["evictions"]) == 2
    assert len(out["one_params"]["per"]["evictions"][0]) == 5
    assert sum(out["one"]["per"]["evictions"]) > 0  # the small system does evict
    assert out["four_stream"]["plan"] == [[1, 4], 192]
    assert out["four_stream"]["per"] == out["one_stream"]["per"]
    assert sum(out["one_stream"]["per"]["evictions"]) > 0
    # the tuners' evaluator shards its K x W batch when given 4 devices: same metrics
    assert out["tune1"]["devices"] == 1 and out["tune4"]["devices"] == 4
    assert out["tune4"]["per"] == out["tune1"]["per"]
    assert len(out["tune1"]["per"]["evictions"]) == 3
    assert len(set(map(tuple, out["tune1"]["per"]["completed_per_time"]))) > 1  # points differ


@pytest.mark.parametrize("n,p,w,expected", [(4, None, 6, (1, 4)), (4, 2, 5, (2, 2)),
                                             (4, 3, 8, (1, 4)), (4, 8, 1, (4, 1)),
                                             (1, 5, 7, (1, 1)), (6, 3, 4, (3, 2))])
def test_mesh_split(n, p, w, expected):
    assert S.mesh_split(n, p, w) == expected


def test_round_up_and_padding():
    import numpy as np

    assert S.round_up(5, 4) == 8 and S.round_up(8, 4) == 8
    dummy = S.dummy_workloads(2, 3)
    assert not dummy.valid.any() and np.isinf(dummy.arrival).all()
    padded = S.pad_params({"a": np.arange(3.0)}, 5)
    assert padded["a"].tolist() == [0, 1, 2, 2, 2]


def test_cli_refuses_bad_devices_and_memory(capsys):
    assert main(["simulate", "--devices", "64"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --devices 64: only") and err.count("\n") == 1
    assert main(["simulate", "--max-memory", "lots"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --max-memory 'lots'") and err.count("\n") == 1
