"""Chunked horizons and streamed batches give exactly the one-scan result; memory estimates
bound XLA's own; bad sizes are refused in one line."""

from __future__ import annotations


import jax
import numpy as np
import pytest

from jaxsched.running import chunked
from jaxsched.core import rollout, sim
from jaxsched import testing as jt
from jaxsched.errors import JaxschedError
from jaxsched.policies import get_policy, make_params

SHAPE = jt.small_shape(max_batch=4, queue_size=6, horizon=23, num_classes=2)
N = 12
WORKLOADS = jt.stack([
    jt.make_workload([(0.25 * i, 1 + (3 * i) % 5, 1 + (5 * i) % 7, i % 2) for i in range(10)],
                     n=N),
    jt.make_workload([(0.0, 4, 6, 1)] * 6 + [(1.5, 2, 3, 0)] * 4, n=N),
    jt.make_workload([(0.5 * i, 6, 2, 0) for i in range(N)], n=N),
])
KEYS = jax.random.split(jax.random.PRNGKey(7), 3)


@pytest.fixture(scope="module", autouse=True)
def _fast_compile():
    with jt.fast_compile():
        yield


def _params(capacity=12.0, restart=False, max_num_seqs=1e9):
    policy = get_policy("greedy")
    return sim.SimParams(
        system=jt.as_system({"capacity": capacity, "d0": 1.0, "d1": 0.0625,
                             "restart_on_evict": restart}),
        policy=make_params(policy, {"max_num_seqs": max_num_seqs}, num_classes=2),
    )


def _run(params, keys=KEYS, batched=False, **kw):
    def get_batch(lo, hi):
        return keys[lo:hi], jax.tree.map(lambda x: x[lo:hi], WORKLOADS)

    return chunked.run_chunked(get_policy("greedy"), SHAPE, params, 3, get_batch, N,
                               batched_params=batched, **kw)


def _assert_identical(a, b):
    la, lb = jax.tree.leaves(a), jax.tree.leaves(b)
    assert len(la) == len(lb)
    for x, y in zip(la, lb):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_chunks_and_streamed_batches_equal_one_scan_and_the_simulator():
    params = _params(capacity=10.0, restart=True)
    whole, stats = _run(params)
    assert stats.plan.num_chunks == 1 and stats.plan.num_batches == 1
    # the estimate bounds XLA's buffer assignment of the (donated) chunk call on one device
    assert stats.peak_bytes is not None and stats.peak_bytes <= 3 * stats.plan.bytes_per_rollout
    # 23 = 4 x 5 + 3: two compiled chunk lengths; a budget of one rollout streams 3 batches.
    parts, stats = _run(params, chunk=5, max_memory=stats.plan.bytes_per_rollout)
    assert (stats.plan.chunk, stats.plan.num_chunks) == (5, 5)
    assert (stats.plan.batch, stats.plan.num_batches) == (1, 3)
    _assert_identical(whole, parts)
    assert whole.trace.memory.shape == (3, SHAPE.horizon)
    assert np.sum(whole.final_completed) > 0 and np.sum(whole.metrics["evictions"]) > 0

    ref = rollout.simulate(get_policy("greedy"), SHAPE, KEYS, WORKLOADS, params)
    jt.assert_same_rollout(parts, ref)  # the state's trajectory: bit for bit
    with pytest.raises(JaxschedError, match="one workload needs about"):
        _run(params, max_memory=100)


def test_batched_params_and_typed_keys():
    ps = [_params(), _params(capacity=9.0, max_num_seqs=2)]
    stacked = jt.stack(ps)
    both, _ = _run(stacked, batched=True)
    assert both.metrics["evictions"].shape == (2, 3)
    for p, one in enumerate(ps):
        single, _ = _run(one)
        _assert_identical(jax.tree.map(lambda x: x[p], both), single)
    typed = jax.random.split(jax.random.key(7), 3)
    a, _ = _run(ps[0], keys=typed)
    b, _ = _run(ps[0], keys=jax.random.key_data(typed))
    _assert_identical(a, b)


@pytest.mark.parametrize("text,value", [("2GiB", 2 * 2**30), ("512MB", 512 * 10**6),
                                        ("1e9", 10**9), (" 1.5 kib ", 1536), ("100", 100)])
def test_parse_bytes(text, value):
    assert chunked.parse_bytes(text) == value


@pytest.mark.parametrize("text", ["", "2XB", "-1GiB", "GiB", "0", "1e-3"])
def test_parse_bytes_refuses(text):
    with pytest.raises(JaxschedError) as info:
        chunked.parse_bytes(text)
    assert "\n" not in str(info.value) and "--max-memory" in str(info.value)


def test_choose_chunk():
    assert chunked.choose_chunk(600) == 600
    assert chunked.choose_chunk(10_000) == 1000
    assert chunked.choose_chunk(4000) == 1000
    assert chunked.choose_chunk(2400) == 800  # the largest divisor in [500, 1000]
    assert chunked.choose_chunk(1999) == 1000  # prime: a shorter last chunk
    assert chunked.choose_chunk(50, 7) == 7 and chunked.choose_chunk(5, 7) == 5
    with pytest.raises(JaxschedError):
        chunked.choose_chunk(10, 0)
