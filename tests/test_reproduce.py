"""The papers' qualitative findings, with fixed seeds and generous margins."""

from __future__ import annotations

import numpy as np

from jaxsched import api, theory
from jaxsched.config import load_config
from jaxsched.reproduce import _saturated_config, _with_policy


def test_flow_control_beats_greedy_on_the_flow_control_setting():
    base = load_config("configs/flow-control.toml",
                       ["workload.horizon=500", "workload.warmup=150", "workload.num_workloads=2"])
    greedy = api.run(base).summary
    fc = api.run(_with_policy(base, {"name": "flow_control_known", "budget": [4, 4, 4]})).summary
    assert fc["evictions"] < 0.1 * greedy["evictions"]
    assert fc["latency_p95"] < greedy["latency_p95"]
    assert fc["completed_per_time"] >= 0.98 * greedy["completed_per_time"]


def test_saturated_greedy_with_long_outputs_loses_throughput_and_oscillates():
    prompt, output, capacity = 10, 100, 2000
    cfg = _saturated_config(capacity, prompt, [output], horizon=2400, warmup=800,
                            max_batch=capacity // (prompt + 1) + 8)
    res = api.run(cfg, record_trace=True)
    pred = theory.congestion_homogeneous(capacity, prompt, output)
    thr = res.summary["completed_per_time"]
    assert thr < 0.75 * pred.fixed_point  # a large share of x* is lost
    assert abs(thr - pred.cycle_throughput) < 0.15 * pred.cycle_throughput
    osc = theory.detect_oscillation(res.trace.num_resident[0], warmup=800)
    assert osc.oscillating and abs(osc.period - output) < 0.1 * output


def test_coprime_decode_lengths_oscillate_less_than_a_common_divisor():
    amplitude = {}
    for outs in ([20, 40], [19, 41]):
        cfg = _saturated_config(20000, 100, outs, horizon=1600, warmup=800, max_batch=206)
        res = api.run(cfg, record_trace=True)
        osc = theory.detect_oscillation(res.trace.num_resident[0], warmup=800)
        amplitude[tuple(outs)] = osc.relative_amplitude
    assert theory.decode_gcd([20, 40]).gcd == 20 and theory.decode_gcd([19, 41]).gcd == 1
    assert amplitude[(19, 41)] < 0.5 * amplitude[(20, 40)]
    assert np.isfinite(list(amplitude.values())).all()
