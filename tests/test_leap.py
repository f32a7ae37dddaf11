"""Leaping over quiet iterations (jaxsched.core.leap) against the one-iteration rollout.

For every policy with a ``quiet_bound`` hook, on hypothesis-drawn workloads and systems
(block sizes 1, 2, 4; slotted and timed; a warm-up that a leap may straddle): the stepped
iterations' records equal the one-iteration trace's at the same iterations bit for bit, the
iterations leapt over are quiet in that trace, and the metrics, final counters and latency
histogram are identical, on the batch simulator and on the chunked path ``jaxsched simulate``
runs (chunks shorter than the horizon); the stepped records also match the reference
simulator's. A golden computed by hand has a leap that crosses a KV block, one stopped by an
arrival, and one that runs to the end.
"""

from __future__ import annotations

import dataclasses
import math

import hypothesis
import jax
import numpy as np
import pytest
from hypothesis import strategies as st

from jaxsched import testing as jt
from jaxsched.core import rollout as R
from jaxsched.core import sim
from jaxsched.policies import get_policy, make_params
from jaxsched.running import chunked
from jaxsched.reference.simulator import STEP_FIELDS

SHAPE = jt.small_shape(max_batch=4, queue_size=6, horizon=40, num_classes=2, warmup=2)
N = 12
EXAMPLES = 6  # x 2 systems per policy
WORKLOADS = jt.workloads(n=N, num_classes=2, max_prompt=6, max_output=14, max_arrival=24.0)
SYSTEMS = st.tuples(jt.systems(capacity=(8, 60), slotted=True),
                    jt.systems(capacity=(8, 60), slotted=False))
LEAPING = [("greedy", {}), ("vllm", {}), ("vllm", {"scheduler": "v0"}), ("flow_control", {})]
FIELDS = [f.name for f in dataclasses.fields(sim.StepOutput)]


@pytest.fixture(scope="module", autouse=True)
def _fast_compile():
    with jt.fast_compile():
        yield


def _runs(name, options, workload, system, shape=SHAPE, values=None, chunk=SHAPE.horizon // 2):
    """The one-iteration rollout (traced), the leaping one (traced) and the leaping chunked
    run (no trace), on one workload."""
    pol = get_policy(name, **options)
    sp = sim.SimParams(system=jt.as_system(system),
                       policy=make_params(pol, values or {}, shape.num_classes))
    keys, wls = jax.random.PRNGKey(3)[None], jt.stack([workload])
    plain = R.compiled_simulator(pol, shape)(keys, wls, sp)
    leaping = R.compiled_simulator(pol, dataclasses.replace(shape, leap=True))(keys, wls, sp)
    quick = dataclasses.replace(shape, leap=True, record_trace=False)
    chunk, _ = chunked.run_chunked(pol, quick, sp, 1, lambda lo, hi: (keys, wls),
                                   workload.num_requests, devices=1, chunk=chunk)
    return plain, leaping, chunk


def _moves(leaping):
    """``(stepped iterations, quiet counts, stepped flags)`` of workload 0's moves."""
    tr = leaping.trace
    return (np.asarray(tr.iteration)[0], np.asarray(tr.quiet)[0], np.asarray(tr.stepped)[0])


def assert_leap_exact(plain, leaping, chunk, horizon):
    """Stepped records equal the plain trace's, leapt iterations are quiet there, and the
    metrics, counters and histograms are identical (the chunked run's too). Returns the
    number of iterations leapt over."""
    its, quiet, stepped = _moves(leaping)
    assert int(quiet.sum() + stepped.sum()) == horizon
    assert not quiet[~stepped].any()
    k = 0
    for it, q, s in zip(its, quiet, stepped):  # the moves tile the horizon in order
        for j in range(k, k + q):
            for f in ("admitted", "evicted", "completed", "prefill_tokens"):
                assert int(np.asarray(getattr(plain.trace, f))[0, j]) == 0, (f, j)
            assert not bool(np.asarray(plain.trace.overflow)[0, j]), j
            assert (np.asarray(plain.trace.arrived)[0, j]
                    == np.asarray(plain.trace.arrived)[0, max(j - 1, 0)]), j
        k += q
        if s:
            assert it == k
            k += 1
    assert k == horizon
    for f in FIELDS:
        want = np.asarray(getattr(plain.trace, f))[0][its[stepped]]
        got = np.asarray(getattr(leaping.trace.event, f))[0][stepped]
        np.testing.assert_array_equal(got, want, err_msg=f)
    for other in (leaping, chunk):
        for f in ("final_time", "final_arrived", "final_completed", "final_waiting",
                  "final_resident"):
            np.testing.assert_array_equal(np.asarray(getattr(other, f)),
                                          np.asarray(getattr(plain, f)), err_msg=f)
        for key, v in plain.metrics.items():
            np.testing.assert_array_equal(np.asarray(other.metrics[key]), np.asarray(v),
                                          err_msg=key)
    np.testing.assert_array_equal(leaping.latency_hist, plain.latency_hist)
    return int(quiet.sum())


@pytest.mark.parametrize("variant", LEAPING, ids=jt.variant_id)
def test_leap_matches_one_iteration_steps_and_reference(variant):
    name, options = variant
    leapt = []

    @hypothesis.settings(jt.HYPOTHESIS_SETTINGS, max_examples=EXAMPLES)
    @hypothesis.given(workload=WORKLOADS, systems=SYSTEMS)
    def check(workload, systems):
        for system in systems:
            plain, leaping, chunk = _runs(name, options, workload, system)
            leapt.append(assert_leap_exact(plain, leaping, chunk, SHAPE.horizon))
            ref = jt.run_reference(name, SHAPE, workload, system, options=options)
            its, _, stepped = _moves(leaping)
            events = [{f: np.asarray(getattr(leaping.trace.event, f))[0][i].item()
                       for f in STEP_FIELDS} for i in np.flatnonzero(stepped)]
            ref_events = [ref.trajectory[k].as_dict() for k in its[stepped]]
            jt.assert_same_trajectory(events, ref_events, check_metrics=False,
                                      label=f"{name} {options} {system}")
            metrics = {k: float(np.asarray(v)[0]) for k, v in chunk.metrics.items()}
            jt.assert_same_metrics(metrics, ref.metrics, label=f"{name} {options} {system}")

    check()
    if name != "flow_control":  # flow_control leaps only while nothing waits: may not occur
        assert sum(leapt) > 0, "no example leapt"


GOLDEN_SYSTEM = {"capacity": 100.0, "d0": 1.0, "d1_prefill": 0.5, "d1_context": 0.25,
                 "block_size": 4}


def test_golden_leaps_by_hand():
    """One request A (0, 2, 5), greedy, tau = 1 + P/2 + D/4, blocks of 4, warm-up 2.

    k=0: A admitted, prefills 2 (+ its first token): tau = 2, T1 = 2, need [3]_4 = 4.
    k=1..3 quiet (A decodes, s = 1..3 < o - 1): cached 3, 4, 5, tau = 1.75, 2, 2.25, T4 = 8;
    needs [4]_4 = 4, [5]_4 = 8, [6]_4 = 8 (a block crossed and the warm-up ended in the leap).
    k=4: A's fifth token completes it: cached 6, tau = 2.5, T5 = 10.5, need [7]_4 = 8.
    k=5..38 quiet (nothing resident or waiting), k=39 stepped (a leap stops short of the
    end): tau = 1 each, T40 = 45.5.
    Counted from k=2: time 2 + 2.25 + 2.5 + 35 = 41.75, sum M tau = 8 (2 + 2.25 + 2.5) = 54,
    peak 8; A's latency 10.5; its first token (k=0) is before the warm-up's end.
    """
    workload = jt.make_workload([(0.0, 2, 5)], n=N)
    plain, leaping, chunk = _runs("greedy", {}, workload, GOLDEN_SYSTEM)
    its, quiet, stepped = _moves(leaping)
    assert list(its[:3]) == [0, 4, 39] and list(quiet[:3]) == [0, 3, 34]
    assert stepped[:3].all() and not stepped[3:].any() and not quiet[3:].any()
    assert_leap_exact(plain, leaping, chunk, SHAPE.horizon)
    m = {k: float(np.asarray(v)[0]) for k, v in chunk.metrics.items()}
    assert float(chunk.final_time[0]) == 45.5
    assert m["mean_memory"] == pytest.approx(54 / 41.75, rel=1e-6)
    assert m["peak_memory"] == 8.0
    assert m["latency_mean"] == 10.5 and math.isnan(m["ttft_mean"])
    assert m["completed_per_time"] == pytest.approx(1 / 41.75, rel=1e-6)


def test_golden_arrival_stops_a_leap():
    """A (0, 2, 5) as above and B (4, 1, 1): T3 = 5.75 is the first iteration start >= 4, so
    the leap from k=1 stops after k=1, 2 (T2 = 3.75 < 4) and k=3 is stepped (B arrives, is
    admitted and, prefilling its one token, completes at T4 = 5.75 + 1 + 1/2 + 5/4 = 8.5)."""
    workload = jt.make_workload([(0.0, 2, 5), (4.0, 1, 1)], n=N)
    plain, leaping, chunk = _runs("greedy", {}, workload, GOLDEN_SYSTEM)
    its, quiet, stepped = _moves(leaping)
    assert list(its[:3]) == [0, 3, 4] and list(quiet[:3]) == [0, 2, 0]
    assert_leap_exact(plain, leaping, chunk, SHAPE.horizon)
    ev = leaping.trace.event
    assert float(ev.time[0, 1]) == 5.75 and int(ev.admitted[0, 1]) == 1
    assert float(ev.duration[0, 1]) == 2.75 and int(ev.completed[0, 1]) == 1


def test_leap_needs_hard_mode():
    with pytest.raises(ValueError, match="leap"):
        dataclasses.replace(SHAPE, leap=True, relax="relaxed")
