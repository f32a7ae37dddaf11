"""The benchmarks' second reference: the tight plain-Python loop of greedy admission on a
saturated backlog (jaxsched.tools.bench.tight_greedy) is the model, checked against the reference
simulator; ``bench sim`` times it beside the reference on the same workloads."""

from __future__ import annotations

import json

import jax
import numpy as np
import pytest

from jaxsched import api
from jaxsched.tools.bench import plain_params, tight_greedy
from jaxsched.cli import main
from jaxsched.config import load_config
from jaxsched.reference.simulator import reference_for, simulate_reference


@pytest.mark.parametrize("overrides", [
    [],  # the setting, shortened: overflows and evicts newest first from iteration 3
    ["system.restart_on_evict=true", "system.max_batch=40", "system.queue_size=8",
     "system.capacity=3000"],
    ["system.d1_prefill=0.002", "system.d1_context=0.001", "system.d2=0.5",
     "system.capacity=5000"],
])
def test_tight_loop_completes_what_the_reference_does_at_the_same_time(overrides):
    cfg = load_config("tight-greedy", ["workload.horizon=300", "workload.warmup=50",
                                       "workload.num_workloads=1", *overrides])
    exp = api.build_experiment(cfg)
    _, wl = api.build_workloads(cfg, exp.num_requests, exp.duration)
    one = jax.tree.map(lambda x: np.asarray(x[0]), wl)
    twin = reference_for("greedy", plain_params(exp.params.policy), {})
    ref = simulate_reference(one, exp.shape, exp.params.system, twin)
    assert sum(r.evicted for r in ref.trajectory) > 0, "the setting must evict to test much"
    s = exp.params.system
    done, end = tight_greedy(one.prompt[one.valid].tolist(), one.output[one.valid].tolist(),
                             float(s.capacity), exp.shape.max_batch, exp.shape.queue_size,
                             exp.shape.horizon, float(s.d0), float(s.d1_prefill),
                             float(s.d1_context), float(s.d2), bool(s.restart_on_evict))
    last = ref.trajectory[-1]
    assert done == last.num_completed > 0
    assert end == pytest.approx(last.time + last.duration, rel=1e-9)


def test_bench_sim_times_the_tight_loop_beside_the_reference(capsys):
    code = main(["bench", "sim", "tight-greedy", "--json", "--workloads", "1,2",
                 "--reference-workloads", "1", "--set", "workload.horizon=120",
                 "--set", "workload.warmup=10"])
    data = json.loads(capsys.readouterr().out)
    assert code == 0
    assert data["reference_agrees"] is True and data["tight_agrees"] is True
    assert data["tight_seconds_per_workload"] > 0
    assert all(r["speedup_vs_tight"] > 0 for r in data["rows"])


def test_bench_replay_steps_and_leaps_the_same_replay(capsys):
    code = main(["bench", "replay", "--json", "--moves", "2", "--set", "workload.num_workloads=2",
                 "--set", "workload.horizon=300", "--set", "workload.warmup=20",
                 "--set", "workload.max_requests=200", "--set", "system.max_batch=32"])
    data = json.loads(capsys.readouterr().out)
    assert code == 0
    assert data["policy"] == "vllm" and data["horizon"] == 300 and data["num_workloads"] == 2
    assert [r["leap"] for r in data["rows"]] == [False, True]
    assert data["identical"] is True
    assert data["rows"][0]["completed"] == data["rows"][1]["completed"] > 0
    assert all(r["requests_per_second"] > 0 for r in data["rows"])
    assert data["moves_workloads"] == 2 and 0 < data["moves_mean"] <= data["moves_max"] <= 300
