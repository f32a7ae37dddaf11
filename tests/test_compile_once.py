"""Traced parameters never recompile, and a batch of parameter sets in one call equals the
separate calls.

Capacity, d0, d1, restart_on_evict and the policy's parameters are traced: changing them
(or the workload's contents) must reuse the compiled rollout. ``batched_params=True`` vmaps
over a leading axis P of the parameters: the (P, W) result must equal P calls of (W,).
"""

from __future__ import annotations

import chex
import jax
import numpy as np
import pytest

from jaxsched.core import rollout, sim
from jaxsched import testing as jt
from jaxsched.policies import get_policy, make_params

SHAPE = jt.small_shape(max_batch=4, queue_size=6, horizon=24, num_classes=2)
N = 12

WORKLOADS = jt.stack([
    jt.make_workload([(0.25 * i, 1 + (3 * i) % 5, 1 + (5 * i) % 7, i % 2) for i in range(10)],
                     n=N),
    jt.make_workload([(0.0, 4, 6, 1)] * 6 + [(1.5, 2, 3, 0)] * 4, n=N),
    jt.make_workload([(0.5 * i, 6, 2, 0) for i in range(N)], n=N),
])
KEYS = jax.random.split(jax.random.PRNGKey(7), 3)

# (capacity, d0, d1, restart_on_evict, max_num_seqs)
SETTINGS = [
    (12.0, 1.0, 0.0, False, 1e9),
    (20.0, 1.0, 0.0, True, 1e9),
    (9.0, 0.5, 0.125, False, 2),
    (30.0, 2.0, 0.25, True, 3),
    (15.0, 1.0, 0.0625, False, 1),
]


@pytest.fixture(scope="module", autouse=True)
def _fast_compile():
    with jt.fast_compile():
        yield


def _params(policy, capacity, d0, d1, restart, max_num_seqs):
    return sim.SimParams(
        system=jt.as_system({"capacity": capacity, "d0": d0, "d1": d1,
                             "restart_on_evict": restart}),
        policy=make_params(policy, {"max_num_seqs": max_num_seqs}, num_classes=2),
    )


def test_changing_traced_parameters_does_not_retrace():
    policy = get_policy("greedy")
    chex.clear_trace_counter()
    counted = chex.assert_max_traces(rollout.make_rollout(policy, SHAPE), n=1)
    fn = jax.jit(jax.vmap(counted, in_axes=(0, 0, None)))
    memories = set()
    for setting in SETTINGS:
        out = fn(KEYS, WORKLOADS, _params(policy, *setting))  # raises on a second trace
        memories.add(tuple(np.asarray(out.trace.memory).ravel().tolist()))
    # Another workload batch of the same shape, too.
    fn(KEYS[::-1], jax.tree.map(lambda x: x[::-1], WORKLOADS), _params(policy, *SETTINGS[0]))
    assert len(memories) == len(SETTINGS)  # the parameters did change the rollouts
    chex.clear_trace_counter()


def test_compiled_simulator_cache_is_reused_across_parameters():
    policy = get_policy("greedy")
    compiled = rollout.compiled_simulator(policy, SHAPE)
    assert rollout.compiled_simulator(policy, SHAPE) is compiled  # cached on (policy, shape)
    compiled(KEYS, WORKLOADS, _params(policy, *SETTINGS[0]))
    size = compiled._cache_size()
    for setting in SETTINGS[1:]:
        rollout.simulate(policy, SHAPE, KEYS, WORKLOADS, _params(policy, *setting))
    assert compiled._cache_size() == size


@pytest.mark.parametrize("name", ["greedy"])
def test_batched_parameters_equal_separate_calls(name):
    policy = get_policy(name)
    params = [_params(policy, *s) for s in SETTINGS]
    batched = rollout.simulate(policy, SHAPE, KEYS, WORKLOADS, jt.stack(params),
                           batched_params=True)
    assert np.asarray(batched.trace.memory).shape == (len(SETTINGS), 3, SHAPE.horizon)
    for p, one_params in enumerate(params):
        one = rollout.simulate(policy, SHAPE, KEYS, WORKLOADS, one_params)
        for field in ("memory", "admitted", "evicted", "completed", "overflow", "num_waiting",
                      "prefill_tokens", "decode_tokens", "context_tokens", "discarded_tokens"):
            np.testing.assert_array_equal(np.asarray(getattr(batched.trace, field))[p],
                                          np.asarray(getattr(one.trace, field)), err_msg=field)
        for field in ("time", "duration"):
            np.testing.assert_allclose(np.asarray(getattr(batched.trace, field))[p],
                                       np.asarray(getattr(one.trace, field)), rtol=1e-6)
        for key, value in one.metrics.items():
            np.testing.assert_allclose(np.asarray(batched.metrics[key])[p], np.asarray(value),
                                       rtol=1e-6, equal_nan=True, err_msg=key)
        np.testing.assert_array_equal(np.asarray(batched.final_completed)[p],
                                      np.asarray(one.final_completed))
