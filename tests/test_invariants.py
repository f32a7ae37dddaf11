"""Properties of the JAX simulator's trajectories on random workloads (hypothesis).

* Per iteration, for every registered policy (its default options), with block sizes 1, 2
  and 4 drawn: arrived = completed + waiting + resident; memory <= C_b (the whole blocks in
  C) and a multiple of the block size; at most max_batch residents; an overflow evicts
  someone; the clock advances by tau = d0 + d1_prefill P + d1_context D + d2 R; the
  cumulative counters and the metrics agree with the trace.
* From the state after every iteration (scanning ``jaxsched.core.sim.step``): the tokens
  generated add up (decoded = outputs of the completed + progress of the residents + tokens
  kept by waiting requests + tokens discarded by restarts); a request completes exactly in the
  iteration in which it generates its o-th token; its latency is at least o iterations; the
  memory of an iteration is what the survivors hold afterwards plus what the completed ones
  freed; the waiting count is the arrived requests neither resident nor completed.
* A workload whose completion times are known in advance: with room for everyone, request i
  completes at T = o_i.
"""

from __future__ import annotations

import math

import hypothesis
import numpy as np
import pytest
from hypothesis import strategies as st

from jaxsched import testing as jt
from jaxsched.policies import list_policies

SHAPE = jt.small_shape(max_batch=4, queue_size=6, horizon=32, num_classes=2)
N = 16
WORKLOADS = jt.workloads(n=N, num_classes=2, max_prompt=6, max_output=6, max_arrival=8.0)
SYSTEMS = jt.systems(capacity=(6, 40))
STATE_POLICIES = [p for p in ("greedy", "sarathi") if p in list_policies()]


@pytest.fixture(scope="module", autouse=True)
def _fast_compile():
    with jt.fast_compile():
        yield


def _column(run, field):
    return np.array([r[field] for r in run.trajectory])


@pytest.mark.parametrize("name", list_policies())
def test_trace_invariants(name):
    @hypothesis.settings(jt.property_settings(10))
    @hypothesis.given(workload=WORKLOADS, system=SYSTEMS)
    def check(workload, system):
        run = jt.run_jax(name, SHAPE, workload, system)
        col = lambda f: _column(run, f)  # noqa: E731
        d0, d1p, d1c, d2 = (system["d0"], system["d1_prefill"], system["d1_context"],
                            system.get("d2", 0.0))
        bs = system["block_size"]
        cap = bs * math.floor(system["capacity"] / bs)  # C_b: the whole blocks in C
        np.testing.assert_array_equal(
            col("arrived"), col("num_completed") + col("num_waiting") + col("num_resident"))
        assert np.all(col("memory") <= cap), (col("memory"), cap)
        assert np.all(col("memory") % bs == 0)  # every resident holds whole blocks
        assert np.all(col("num_resident") <= SHAPE.max_batch)
        assert np.all(col("evicted")[col("overflow")] >= 1)
        np.testing.assert_array_equal(col("num_completed"), np.cumsum(col("completed")))
        assert np.all(np.diff(col("arrived")) >= 0)
        # tau = d0 + d1_prefill P + d1_context D + d2 R: R prefilling requests, >= 1 iff
        # P > 0, <= max_batch.
        extra = col("duration") - (d0 + d1p * col("prefill_tokens")
                                   + d1c * col("context_tokens"))
        if d2 == 0:
            np.testing.assert_allclose(extra, 0.0, atol=1e-6 * (1 + col("duration").max()))
        else:
            r = extra / d2
            np.testing.assert_allclose(r, np.round(r), atol=1e-4)
            np.testing.assert_array_equal(np.round(r) >= 1, col("prefill_tokens") > 0)
            assert np.all(np.round(r) <= np.minimum(col("prefill_tokens"), SHAPE.max_batch))
        np.testing.assert_allclose(col("time")[1:], (col("time") + col("duration"))[:-1],
                                   rtol=1e-6)
        assert col("time")[0] == 0.0
        # With restarts off, nothing is discarded.
        if not system["restart_on_evict"]:
            assert not np.any(col("discarded_tokens"))
        # The metrics (warmup 0) summarize the same trace.
        m = run.metrics
        assert m["evictions"] == col("evicted").sum()
        assert m["overflow_steps"] == col("overflow").sum()
        assert m["peak_memory"] == col("memory").max()
        assert m["queue_final"] == col("num_waiting")[-1]
        elapsed = col("duration").sum()
        assert m["completed_per_time"] == pytest.approx(col("completed").sum() / elapsed,
                                                        rel=1e-5)
        assert m["mean_memory"] == pytest.approx(
            (col("memory") * col("duration")).sum() / elapsed, rel=1e-5, abs=1e-6)
        if col("completed").sum():
            assert m["latency_mean"] >= d0  # at least one iteration
        else:
            assert math.isnan(m["latency_mean"])
        r = run.result
        assert int(r.final_completed[0]) == col("num_completed")[-1]
        assert int(r.final_waiting[0]) == col("num_waiting")[-1]
        assert int(r.final_resident[0]) == col("num_resident")[-1]
        assert int(r.final_arrived[0]) == col("arrived")[-1]

    check()


def _state_lists(states, k):
    """(resident {index: (generated, cached)}, taken (N,), kept (N,)) after iteration k."""
    req = np.asarray(states.slots.req[k])
    gen = np.asarray(states.slots.generated[k])
    cached = np.asarray(states.slots.cached[k])
    resident = {int(i): (int(g), int(c)) for i, g, c in zip(req, gen, cached) if i >= 0}
    return resident, np.asarray(states.requests.taken[k]), np.asarray(states.requests.kept[k])


@pytest.mark.parametrize("name", STATE_POLICIES)
def test_tokens_add_up_and_requests_complete_at_their_output(name):
    @hypothesis.settings(jt.property_settings(15))
    @hypothesis.given(workload=WORKLOADS, system=SYSTEMS)
    def check(workload, system):
        states, trace = jt.jax_states(name, SHAPE, workload, system)
        arrival = np.asarray(workload.arrival)
        prompt = np.asarray(workload.prompt)
        output = np.asarray(workload.output)
        valid = np.asarray(workload.valid)
        time = np.asarray(trace.time)
        duration = np.asarray(trace.duration)
        decoded = np.cumsum(np.asarray(trace.decode_tokens))
        discarded = np.cumsum(np.asarray(trace.discarded_tokens))
        d0, bs = system["d0"], system["block_size"]

        def blocks(tokens):  # block tokens: bs ceil(tokens / bs)
            return bs * -(-tokens // bs)

        resident_pre, taken_pre, kept_pre = {}, np.zeros(N, bool), np.zeros(N, np.int64)
        completed_pre: set[int] = set()
        for k in range(SHAPE.horizon):
            resident, taken, kept = _state_lists(states, k)
            completed = {int(i) for i in np.flatnonzero(taken) if int(i) not in resident}
            assert completed >= completed_pre, f"k={k}: a completed request came back"
            new = completed - completed_pre
            assert len(new) == int(trace.completed[k]), k
            t1 = time[k] + duration[k]
            for i in new:
                # its last token was generated in this iteration: it had o - 1 before, as a
                # resident or as tokens kept while waiting (readmitted and finished at once)
                before = resident_pre[i][0] if i in resident_pre else int(kept_pre[i])
                assert before == output[i] - 1, (k, i, before, output[i])
                latency = t1 - arrival[i]
                assert latency >= duration[k] - 1e-6
                assert latency >= output[i] * d0 - 1e-6, (k, i, latency)
            # tokens: decoded = completed outputs + resident progress + kept + discarded
            in_queue = valid & ~taken
            total = (sum(int(output[i]) for i in completed)
                     + sum(g for g, _ in resident.values())
                     + int(kept[in_queue].sum()) + int(discarded[k]))
            assert decoded[k] == total, (k, decoded[k], total)
            # memory of the iteration = what survivors hold now + what completions freed,
            # each in whole blocks
            freed = sum(blocks(int(prompt[i] + output[i])) for i in new)
            held = sum(blocks(c) for _, c in resident.values())
            assert int(trace.memory[k]) == held + freed, k
            for i, (g, c) in resident.items():
                assert 0 <= g < output[i] and c <= prompt[i] + g, (k, i, g, c)
            # waiting = arrived by T_k, neither resident nor completed
            arrived_now = valid & (arrival <= time[k])
            assert int(trace.num_waiting[k]) == int((arrived_now & ~taken).sum()), k
            assert not np.any(kept[~valid]), k
            resident_pre, taken_pre, kept_pre, completed_pre = resident, taken, kept, completed

    check()


@hypothesis.settings(jt.property_settings(15))
@hypothesis.given(outputs=st.lists(st.integers(1, 20), min_size=1, max_size=SHAPE.max_batch),
                  prompt=st.integers(1, 6))
def test_requests_with_room_complete_exactly_after_their_output(outputs, prompt):
    # Everyone arrives at 0 and fits (4 slots, huge capacity, slotted): request i is admitted
    # at k=0, generates one token per iteration and completes at T = o_i.
    wl = jt.make_workload([(0.0, prompt, o) for o in outputs], n=N)
    run = jt.run_jax("greedy", SHAPE, wl, {"capacity": 1000.0})
    completed = _column(run, "completed")
    for k in range(SHAPE.horizon):
        assert completed[k] == sum(o == k + 1 for o in outputs), k
    assert run.metrics["latency_mean"] == pytest.approx(np.mean(outputs), rel=1e-6)
    assert run.metrics["ttft_mean"] == pytest.approx(1.0)
    assert _column(run, "prefill_tokens")[0] == prompt * len(outputs)
    assert _column(run, "decode_tokens").sum() == sum(outputs)
