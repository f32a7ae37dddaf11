"""Golden trajectories computed by hand from the model (jaxsched/core/model.py), asserted iteration
by iteration against both the JAX simulator and the reference simulator.

Each expected row lists, for iteration k, the StepOutput fields in this order:
    (time, duration, memory, admitted, evicted, completed, overflow, arrived,
     num_waiting, num_resident, num_completed, prefill, decode, context, discarded)
Requests are written (arrival, prompt, output); "s" is the number of generated tokens, the
need of a resident is cached + prefill chunk + new token ([t]_b: rounded up to whole blocks of
b tokens when the system has a block size).
"""

from __future__ import annotations

import math

import pytest

from jaxsched import testing as jt
from jaxsched.reference.simulator import STEP_FIELDS

SHAPE = jt.small_shape(max_batch=8, queue_size=16, horizon=12, num_classes=1)
SHAPE_2SLOTS = jt.small_shape(max_batch=2, queue_size=16, horizon=12, num_classes=1)
SHAPE_WARMUP = jt.small_shape(max_batch=8, queue_size=16, horizon=12, num_classes=1, warmup=2)
N = 4

# A(0,3,3), B(0,3,2), C(0,3,4), D(1,2,2)
ABCD = jt.make_workload([(0, 3, 3), (0, 3, 2), (0, 3, 4), (1, 2, 2)], n=N)


def idle(ks, arrived, completed, t0=None, d=1.0):
    """Rows of empty iterations (nothing resident or waiting), one unit long each."""
    rows = []
    for i, k in enumerate(ks):
        t = float(k) if t0 is None else t0 + i * d
        rows.append((t, d, 0, 0, 0, 0, False, arrived, 0, 0, completed, 0, 0, 0, 0))
    return rows


def check(rows, run, ref):
    """Both simulators follow the hand-computed rows, and agree with each other."""
    assert len(rows) == len(run.trajectory) == len(ref.trajectory)
    for k, row in enumerate(rows):
        expected = dict(zip(STEP_FIELDS, row))
        for name, traj in (("jax", run.trajectory), ("reference", ref.trajectory)):
            got = traj[k] if isinstance(traj[k], dict) else traj[k].as_dict()
            for f in STEP_FIELDS:
                if f in ("time", "duration"):
                    ok = math.isclose(got[f], expected[f], rel_tol=1e-6)
                else:
                    ok = got[f] == expected[f]
                assert ok, f"{name}: iteration {k}, {f}: got {got[f]}, expected {expected[f]}"
    jt.assert_same_trajectory(run, ref)


def check_metrics(metrics, expected, pct_rtol=0.0111):
    for key, want in expected.items():
        tol = pct_rtol if key in jt.PERCENTILE_METRICS else 1e-6
        assert math.isclose(metrics[key], want, rel_tol=tol), (key, metrics[key], want)


def test_greedy_eviction_and_readmission_keep_tokens():
    # greedy, C=14, d0=1, d1=0.
    # k=0 T=0: A,B,C arrived; greedy admits A (needs 4), B (8), C (12 <= 14). Each prefills 3
    #   and generates its first token: memory 12, P=9. TTFT A,B,C = 1. s=1 each (cached 4).
    # k=1 T=1: D arrives; the residents leave 14-15 < 0 free, D waits. Each resident needs 5:
    #   15 > 14 -> overflow; evict C (newest, need 5 covers excess 1): recomputed += 4 (its
    #   cached), C keeps its 1 token. A,B decode (context 4+4=8): memory 10. B has 2 = o:
    #   completes at T=2 (latency 2). Waiting: C, D.
    # k=2 T=2: A (s=2, cached 5) leaves 14-6=8 free; C needs 3+1+1=5, D 2+0+1=3: both admitted
    #   (C first: index order). A decodes (need 6, context 5); C prefills 3+1=4 and generates
    #   (need 5), D prefills 2 and generates (need 3): memory 14, P=6. A completes at T=3
    #   (latency 3); D's first token at T=3 (TTFT 2); C already had its first token.
    # k=3 T=3: C (s=2, cached 5) needs 6, D (s=1, cached 3) needs 4: memory 10, context 8.
    #   D completes at T=4 (latency 3).
    # k=4 T=4: C (s=3, cached 6) needs 7, context 6: completes at T=5 (latency 5).
    # k=5..11: idle.
    rows = [
        (0.0, 1.0, 12, 3, 0, 0, False, 3, 0, 3, 0, 9, 3, 0, 0),
        (1.0, 1.0, 10, 0, 1, 1, True, 4, 2, 1, 1, 0, 2, 8, 0),
        (2.0, 1.0, 14, 2, 0, 1, False, 4, 0, 2, 2, 6, 3, 5, 0),
        (3.0, 1.0, 10, 0, 0, 1, False, 4, 0, 1, 3, 0, 2, 8, 0),
        (4.0, 1.0, 7, 0, 0, 1, False, 4, 0, 0, 4, 0, 1, 6, 0),
    ] + idle(range(5, 12), arrived=4, completed=4)
    run, ref = jt.run_both("greedy", SHAPE, ABCD, {"capacity": 14.0})
    check(rows, run, ref)
    # latencies B 2, A 3, D 3, C 5; TTFT A,B,C 1, D 2; 12 iterations of length 1.
    expected = {
        "completed_per_time": 4 / 12, "tokens_per_time": (3 + 2 + 4 + 2) / 12,
        "latency_mean": 3.25, "latency_p50": 3.0, "latency_p95": 5.0, "latency_p99": 5.0,
        "ttft_mean": 1.25, "ttft_p95": 2.0, "evictions": 1.0, "recomputed_tokens": 4.0,
        "mean_memory": (12 + 10 + 14 + 10 + 7) / 12, "peak_memory": 14.0,
        "overflow_steps": 1.0, "queue_final": 0.0, "utilization": 53 / 12 / 14,
    }
    check_metrics(ref.metrics, expected, pct_rtol=0.0)
    check_metrics(run.metrics, expected)
    assert [r.completion_time for r in ref.requests] == [3.0, 2.0, 5.0, 4.0]
    assert [r.first_token_time for r in ref.requests] == [1.0, 1.0, 1.0, 3.0]


def test_greedy_warmup_excludes_early_iterations_from_metrics():
    # The trajectory of the first golden; metrics count k >= 2 only: completions A (k=2),
    # D (k=3), C (k=4) with latencies 3, 3, 5; D's first token (TTFT 2); no eviction or
    # overflow (k=1 is excluded); elapsed T_12 - T_2 = 10; memory 14 + 10 + 7 over it.
    run, ref = jt.run_both("greedy", SHAPE_WARMUP, ABCD, {"capacity": 14.0})
    jt.assert_same_trajectory(run, ref)
    expected = {
        "completed_per_time": 3 / 10, "tokens_per_time": (3 + 2 + 4) / 10,
        "latency_mean": 11 / 3, "latency_p50": 3.0, "latency_p95": 5.0,
        "ttft_mean": 2.0, "ttft_p95": 2.0, "evictions": 0.0, "recomputed_tokens": 0.0,
        "mean_memory": 31 / 10, "peak_memory": 14.0, "overflow_steps": 0.0,
        "queue_final": 0.0, "utilization": 31 / 10 / 14,
    }
    check_metrics(ref.metrics, expected, pct_rtol=0.0)
    check_metrics(run.metrics, expected)


def test_greedy_restart_on_evict_loses_progress():
    # As the first golden until C's eviction at k=1, which now discards C's token
    # (discarded 1, kept 0).
    # k=2 T=2: A (s=2) leaves 8 free; C needs 3+0+1=4, D 3: both admitted. A decodes (need 6,
    #   context 5), C prefills 3 (need 4), D prefills 2 (need 3): memory 13, P=5. A completes
    #   at T=3. C's token is its first again, but TTFT was already recorded at k=0.
    # k=3 T=3: C (s=1, cached 4) needs 5, D (s=1, cached 3) needs 4: memory 9, context 7.
    #   D completes at T=4 (latency 3).
    # k=4 T=4: C (s=2, cached 5) needs 6, context 5.
    # k=5 T=5: C (s=3, cached 6) needs 7, context 6: completes at T=6 (latency 6).
    rows = [
        (0.0, 1.0, 12, 3, 0, 0, False, 3, 0, 3, 0, 9, 3, 0, 0),
        (1.0, 1.0, 10, 0, 1, 1, True, 4, 2, 1, 1, 0, 2, 8, 1),
        (2.0, 1.0, 13, 2, 0, 1, False, 4, 0, 2, 2, 5, 3, 5, 0),
        (3.0, 1.0, 9, 0, 0, 1, False, 4, 0, 1, 3, 0, 2, 7, 0),
        (4.0, 1.0, 6, 0, 0, 0, False, 4, 0, 1, 3, 0, 1, 5, 0),
        (5.0, 1.0, 7, 0, 0, 1, False, 4, 0, 0, 4, 0, 1, 6, 0),
    ] + idle(range(6, 12), arrived=4, completed=4)
    run, ref = jt.run_both("greedy", SHAPE, ABCD, {"capacity": 14.0, "restart_on_evict": True})
    check(rows, run, ref)
    # 12 tokens generated = 11 delivered + 1 discarded; latencies B 2, A 3, D 3, C 6.
    expected = {
        "latency_mean": 3.5, "latency_p50": 3.0, "latency_p99": 6.0, "ttft_mean": 1.25,
        "tokens_per_time": 11 / 12, "evictions": 1.0, "recomputed_tokens": 4.0,
        "mean_memory": (12 + 10 + 13 + 9 + 6 + 7) / 12, "peak_memory": 13.0,
    }
    check_metrics(ref.metrics, expected, pct_rtol=0.0)
    check_metrics(run.metrics, expected)


def test_iteration_time_from_prefill_and_context_tokens():
    # greedy, C=100, d0=1, d1=1/4: tau = 1 + (P + D)/4. A(0,4,2), B(1,2,1), C(2.5,1,3).
    # k=0 T=0: A admitted, prefills 4 (need 5): tau = 1 + 4/4 = 2. TTFT A = 2.
    # k=1 T=2: B arrived (C not yet: 2.5 > 2); admitted, prefills 2 (need 3); A decodes with
    #   context 5 (need 6): memory 9, tau = 1 + (2 + 5)/4 = 2.75 -> T=4.75. A (s=2) and B
    #   (s=1) complete: latencies 4.75 and 3.75; TTFT B = 3.75.
    # k=2 T=4.75: C arrived, admitted, prefills 1 (need 2): tau 1.25 -> T=6; TTFT C = 3.5.
    # k=3 T=6: C decodes, context 2 (need 3): tau 1.5 -> T=7.5.
    # k=4 T=7.5: C decodes, context 3 (need 4): tau 1.75 -> T=9.25; completes, latency 6.75.
    # k=5..7: idle iterations of d0 = 1.
    shape = jt.small_shape(max_batch=8, queue_size=16, horizon=8, num_classes=1)
    wl = jt.make_workload([(0, 4, 2), (1, 2, 1), (2.5, 1, 3)], n=N)
    rows = [
        (0.0, 2.0, 5, 1, 0, 0, False, 1, 0, 1, 0, 4, 1, 0, 0),
        (2.0, 2.75, 9, 1, 0, 2, False, 2, 0, 0, 2, 2, 2, 5, 0),
        (4.75, 1.25, 2, 1, 0, 0, False, 3, 0, 1, 2, 1, 1, 0, 0),
        (6.0, 1.5, 3, 0, 0, 0, False, 3, 0, 1, 2, 0, 1, 2, 0),
        (7.5, 1.75, 4, 0, 0, 1, False, 3, 0, 0, 3, 0, 1, 3, 0),
    ] + idle(range(5, 8), arrived=3, completed=3, t0=9.25)
    run, ref = jt.run_both("greedy", shape, wl, {"capacity": 100.0, "d0": 1.0, "d1": 0.25})
    check(rows, run, ref)
    elapsed = 12.25
    expected = {
        "completed_per_time": 3 / elapsed, "tokens_per_time": 6 / elapsed,
        "latency_mean": (4.75 + 3.75 + 6.75) / 3, "latency_p50": 4.75, "latency_p95": 6.75,
        "ttft_mean": (2 + 3.75 + 3.5) / 3, "ttft_p95": 3.75,
        "mean_memory": (5 * 2 + 9 * 2.75 + 2 * 1.25 + 3 * 1.5 + 4 * 1.75) / elapsed,
        "peak_memory": 9.0, "evictions": 0.0, "overflow_steps": 0.0,
    }
    check_metrics(ref.metrics, expected, pct_rtol=0.0)
    check_metrics(run.metrics, expected)


def test_readmitted_prefill_counts_kept_tokens_in_iteration_time():
    # The first golden's workload with d1 = 1/2: tau = 1 + (P + D)/2.
    # k=0 T=0: A,B,C prefill 3 each: P=9, tau 5.5. TTFT A,B,C = 5.5.
    # k=1 T=5.5: D arrived; overflow, C evicted (keeps 1 token); A,B decode, D=8: tau 5 ->
    #   T=10.5. B completes (latency 10.5).
    # k=2 T=10.5: C readmitted prefills l + g = 3 + 1 = 4, D prefills 2: P=6; A decodes with
    #   context 5: tau = 1 + 11/2 = 6.5 -> T=17. A completes (latency 17); TTFT D = 16.
    # k=3 T=17: C (cached 5) and D (cached 3) decode: tau 1 + 8/2 = 5 -> T=22; D completes
    #   (latency 21).
    # k=4 T=22: C (cached 6): tau 4 -> T=26; C completes (latency 26).
    # k=5..7: idle, tau = 1.
    shape = jt.small_shape(max_batch=8, queue_size=16, horizon=8, num_classes=1)
    rows = [
        (0.0, 5.5, 12, 3, 0, 0, False, 3, 0, 3, 0, 9, 3, 0, 0),
        (5.5, 5.0, 10, 0, 1, 1, True, 4, 2, 1, 1, 0, 2, 8, 0),
        (10.5, 6.5, 14, 2, 0, 1, False, 4, 0, 2, 2, 6, 3, 5, 0),
        (17.0, 5.0, 10, 0, 0, 1, False, 4, 0, 1, 3, 0, 2, 8, 0),
        (22.0, 4.0, 7, 0, 0, 1, False, 4, 0, 0, 4, 0, 1, 6, 0),
    ] + idle(range(5, 8), arrived=4, completed=4, t0=26.0)
    run, ref = jt.run_both("greedy", shape, ABCD, {"capacity": 14.0, "d0": 1.0, "d1": 0.5})
    check(rows, run, ref)
    expected = {
        "latency_mean": (10.5 + 17 + 21 + 26) / 4, "ttft_mean": (3 * 5.5 + 16) / 4,
        "completed_per_time": 4 / 29, "recomputed_tokens": 4.0,
    }
    check_metrics(ref.metrics, expected, pct_rtol=0.0)
    check_metrics(run.metrics, expected)


def test_prefilling_requests_add_d2_each_to_iteration_time():
    # The first golden's workload with d1 = 1/2 and d2 = 2 per prefilling request:
    # tau = 1 + (P + D)/2 + 2 R. Decisions as with d2 = 0 (greedy; D arrives at 1 <= T_1).
    # k=0 T=0: A,B,C prefill 3 each: P=9, R=3, tau = 1 + 4.5 + 6 = 11.5. TTFT A,B,C = 11.5.
    # k=1 T=11.5: D arrived; overflow, C evicted (keeps 1 token); A,B decode, D=8, R=0:
    #   tau 5 -> T=16.5. B completes (latency 16.5).
    # k=2 T=16.5: C readmitted prefills 3 + 1 = 4, D prefills 2: P=6, R=2; A decodes with
    #   context 5: tau = 1 + 11/2 + 4 = 10.5 -> T=27. A completes (latency 27); TTFT D = 26.
    # k=3 T=27: C (cached 5) and D (cached 3) decode, R=0: tau 5 -> T=32; D completes
    #   (latency 31).
    # k=4 T=32: C (cached 6): tau 4 -> T=36; C completes (latency 36).
    # k=5..7: idle, tau = 1.
    shape = jt.small_shape(max_batch=8, queue_size=16, horizon=8, num_classes=1)
    rows = [
        (0.0, 11.5, 12, 3, 0, 0, False, 3, 0, 3, 0, 9, 3, 0, 0),
        (11.5, 5.0, 10, 0, 1, 1, True, 4, 2, 1, 1, 0, 2, 8, 0),
        (16.5, 10.5, 14, 2, 0, 1, False, 4, 0, 2, 2, 6, 3, 5, 0),
        (27.0, 5.0, 10, 0, 0, 1, False, 4, 0, 1, 3, 0, 2, 8, 0),
        (32.0, 4.0, 7, 0, 0, 1, False, 4, 0, 0, 4, 0, 1, 6, 0),
    ] + idle(range(5, 8), arrived=4, completed=4, t0=36.0)
    run, ref = jt.run_both("greedy", shape, ABCD,
                           {"capacity": 14.0, "d0": 1.0, "d1": 0.5, "d2": 2.0})
    check(rows, run, ref)
    expected = {
        "latency_mean": (16.5 + 27 + 31 + 36) / 4, "ttft_mean": (3 * 11.5 + 26) / 4,
        "completed_per_time": 4 / 39, "recomputed_tokens": 4.0,
    }
    check_metrics(ref.metrics, expected, pct_rtol=0.0)
    check_metrics(run.metrics, expected)


def test_max_num_seqs_caps_residents_like_free_slots():
    # greedy, C=100, max_num_seqs=2. A(0,1,2), B(0,1,1), C(0,1,1).
    # k=0: 2 seats: A, B admitted (C blocked, FCFS); both prefill 1 and generate: memory 4,
    #   P=2. B completes at T=1 (latency 1).
    # k=1: 1 seat: C admitted (prefill 1, need 2); A decodes (context 2, need 3): memory 5.
    #   A and C complete at T=2 (latencies 2, 2).
    wl = jt.make_workload([(0, 1, 2), (0, 1, 1), (0, 1, 1)], n=N)
    rows = [
        (0.0, 1.0, 4, 2, 0, 1, False, 3, 1, 1, 1, 2, 2, 0, 0),
        (1.0, 1.0, 5, 1, 0, 2, False, 3, 0, 0, 3, 1, 2, 2, 0),
    ] + idle(range(2, 12), arrived=3, completed=3)
    run, ref = jt.run_both("greedy", SHAPE, wl, {"capacity": 100.0},
                           params={"max_num_seqs": 2})
    check(rows, run, ref)
    # Without the cap but with 2 slots, greedy admits all three and the simulator drops the
    # admission beyond the free slots (C at k=0): the same trajectory.
    run2, ref2 = jt.run_both("greedy", SHAPE_2SLOTS, wl, {"capacity": 100.0})
    check(rows, run2, ref2)
    assert ref.metrics["latency_mean"] == pytest.approx(5 / 3)


def test_window_shows_the_first_waiting_requests_after_many_completions():
    # Regression test for the look-ahead window (2 slots, window of 4, restart_on_evict).
    # X(0,1,100) and Y1..Y14 (0,1,1), C=10. X is admitted at k=0 with Y1; at k=i (i=1..6) X
    # has s=i and needs i+2, leaving 10-(i+2) >= 2 for one Y_{i+1} (the other admissions are
    # dropped: one free slot), which completes in the iteration. k=7, 8: X alone (needs 9,
    # 10). k=9: X needs 11 > 10 -> evicted (recomputed 10, discards its 9 tokens).
    # k=10: the queue is X, Y8..Y14, the window X, Y8, Y9, Y10: greedy admits all four, the
    # two slots take X and Y8. Seven completed requests lie between X and Y8 in the workload:
    # the window must still show the first four *waiting* requests.
    shape = jt.small_shape(max_batch=2, queue_size=4, horizon=12, num_classes=1)
    wl = jt.make_workload([(0, 1, 100)] + [(0, 1, 1)] * 14)
    run, ref = jt.run_both("greedy", shape, wl, {"capacity": 10.0, "restart_on_evict": True})
    jt.assert_same_trajectory(run, ref)
    traj = run.trajectory
    assert [r["admitted"] for r in traj] == [2, 1, 1, 1, 1, 1, 1, 0, 0, 0, 2, 1]
    assert [r["memory"] for r in traj] == [4, 5, 6, 7, 8, 9, 10, 9, 10, 0, 4, 5]
    assert traj[9]["evicted"] == 1 and traj[9]["discarded_tokens"] == 9
    assert traj[10]["num_waiting"] == 6 and traj[10]["completed"] == 1
    assert run.metrics["recomputed_tokens"] == 10.0


def test_block_memory_rounds_every_resident_up_to_whole_blocks():
    # greedy, C = 13 in blocks of 4: C_b = 12 usable tokens (3 whole blocks); split iteration
    # time d0 = 1, d1_prefill = 1/2, d1_context = 1/8. A(0,3,3), B(0,3,3), C(0,3,2).
    # k=0 T=0: each needs [3 + 0 + 1]_4 = 4: 4 + 4 + 4 = 12 <= 12, all admitted. P = 9:
    #   tau = 1 + 9/2 = 5.5. s=1, cached 4 each; TTFT 5.5 each.
    # k=1 T=5.5: each needs 4 + 1 = 5 tokens -> 8 (a second block): M = 24 > 12, excess 12:
    #   evict C (newest, frees 8 < 12 short) and B (8 + 8 >= 12); the token model (need 5 each,
    #   excess 15 - 13 = 2) would evict C alone. recomputed += 4 + 4; B, C keep 1 token.
    #   A decodes, context 4: tau = 1 + 4/8 = 1.5 -> T=7. Memory 8.
    # k=2 T=7: free 12 - [3 + 2 + 1]_4 = 4; B needs [3 + 1 + 1]_4 = 8: blocked, and C behind it.
    #   A decodes (need [6]_4 = 8, context 5): tau = 1.625 -> T=8.625; A completes (8.625).
    # k=3 T=8.625: B admitted (8 <= 12; C's 8 does not fit in the 4 left); it prefills 3 + 1
    #   and generates (need [5]_4 = 8): P = 4, tau = 3 -> T=11.625.
    # k=4 T=11.625: free 12 - [6]_4 = 4 < 8, C waits; B decodes (context 5): tau = 1.625 ->
    #   T=13.25; B completes (13.25).
    # k=5 T=13.25: C admitted, prefills 4, generates its 2nd token: tau 3 -> T=16.25, completes.
    # k=6..11: idle.
    wl = jt.make_workload([(0, 3, 3), (0, 3, 3), (0, 3, 2)], n=N)
    rows = [
        (0.0, 5.5, 12, 3, 0, 0, False, 3, 0, 3, 0, 9, 3, 0, 0),
        (5.5, 1.5, 8, 0, 2, 0, True, 3, 2, 1, 0, 0, 1, 4, 0),
        (7.0, 1.625, 8, 0, 0, 1, False, 3, 2, 0, 1, 0, 1, 5, 0),
        (8.625, 3.0, 8, 1, 0, 0, False, 3, 1, 1, 1, 4, 1, 0, 0),
        (11.625, 1.625, 8, 0, 0, 1, False, 3, 1, 0, 2, 0, 1, 5, 0),
        (13.25, 3.0, 8, 1, 0, 1, False, 3, 0, 0, 3, 4, 1, 0, 0),
    ] + idle(range(6, 12), arrived=3, completed=3, t0=16.25)
    system = {"capacity": 13.0, "d0": 1.0, "d1_prefill": 0.5, "d1_context": 0.125,
              "block_size": 4}
    run, ref = jt.run_both("greedy", SHAPE, wl, system)
    check(rows, run, ref)
    expected = {
        "latency_mean": (8.625 + 13.25 + 16.25) / 3, "ttft_mean": 5.5,
        "completed_per_time": 3 / 22.25, "recomputed_tokens": 8.0, "evictions": 2.0,
        "peak_memory": 12.0,
    }
    check_metrics(ref.metrics, expected, pct_rtol=0.0)
    check_metrics(run.metrics, expected)
    # The same system in tokens (block_size 1): needs 5 each at k=1, only C is evicted.
    _, tokens = jt.run_both("greedy", SHAPE, wl, {**system, "block_size": 1})
    assert (tokens.trajectory[1].evicted, tokens.trajectory[1].memory) == (1, 10)
