"""The papers' qualitative findings, with fixed seeds and generous margins."""

from __future__ import annotations

import numpy as np

from jaxsched import api, theory
from jaxsched.config import load_config
from jaxsched.tools.reproduce import (
    WAIT_LABELS,
    _saturated_config,
    _wait_bound,
    _wait_contenders,
    _with_policy,
)


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


def _wait_runs(base, keys):
    """Summaries of the WAIT reproduction's contenders named by ``WAIT_LABELS`` keys."""
    settings = {c.label: c.settings for c in _wait_contenders()}
    return {k: api.run(_with_policy(base, settings[WAIT_LABELS[k]])).summary for k in keys}


def test_wait_and_nested_wait_reach_the_fluid_bound_and_beat_the_papers_baselines():
    """wait-high (1 of its 4 workloads): WAIT's and Nested WAIT's fitted thresholds (Nested
    WAIT: the fluid thresholds (6, 3, 1), as the strict ratios do not fit C) keep memory below
    C and reach the fluid throughput; vLLM's prefill-first iterations stall the decodes until
    greedy admission overflows memory, and Sarathi's 512-token budget cannot decode the ~950
    residents the load needs: both fall behind (measured, all 4 workloads: latency 11.6 s and
    12.5 s vs 31.4 s and 32.8 s)."""
    base = load_config("configs/wait-high.toml", ["workload.num_workloads=1"])
    bound, _ = _wait_bound(base)
    runs = _wait_runs(base, ("wait", "nested_wait", "vllm_v0", "sarathi"))
    for key in ("wait", "nested_wait"):
        ours = runs[key]
        assert ours["tokens_per_time"] >= 0.95 * bound, key
        assert ours["evictions"] == 0 and ours["peak_memory"] <= base.capacity, key
        for other in ("vllm_v0", "sarathi"):
            assert ours["latency_mean"] < 0.8 * runs[other]["latency_mean"], (key, other)
            assert ours["latency_p95"] < runs[other]["latency_p95"], (key, other)
    assert runs["vllm_v0"]["evictions"] > 0  # greedy admission overflows under long decodes


def test_nested_wait_meets_the_bound_on_wait_low():
    """On wait-low Nested WAIT's guaranteed thresholds (strict ratios, Chernoff buffer) hold:
    no evictions, the fluid throughput, and lower latency than vLLM's prefill-first
    scheduler."""
    low = load_config("configs/wait-low.toml", ["workload.num_workloads=1",
                                                 "workload.horizon=1500", "workload.warmup=300"])
    bound, _ = _wait_bound(low)
    runs = _wait_runs(low, ("nested_wait", "wait", "vllm_v0"))
    for key in ("nested_wait", "wait"):
        assert runs[key]["evictions"] == 0, key
        assert runs[key]["tokens_per_time"] >= 0.95 * bound, key
        assert runs[key]["latency_mean"] < 0.8 * runs["vllm_v0"]["latency_mean"], key
