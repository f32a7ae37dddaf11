"""Histogram percentiles against exact nearest-rank ones, and empty histograms."""

from __future__ import annotations

import math

import hypothesis
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import strategies as st

from jaxsched.core import metrics as M
from jaxsched import testing as jt
from jaxsched.reference.simulator import nearest_rank

REL = 2.0 ** (1.0 / M.BINS_PER_OCTAVE) - 1.0  # one bin: 1.089%
assert REL < 0.011


@jax.jit
def _hist_percentiles(values, mask, lo, ps):
    bins = jnp.where(mask, M.bin_index(values, lo), M.NUM_BINS)
    hist = jnp.zeros((M.NUM_BINS,), jnp.int32).at[bins].add(1, mode="drop")
    return jax.vmap(lambda p: M.hist_percentile(hist, lo, p))(ps)


MAX_SAMPLES = 64


def _percentiles(samples, lo, ps):
    values = np.zeros(MAX_SAMPLES, np.float32)
    mask = np.zeros(MAX_SAMPLES, bool)
    values[: len(samples)] = samples
    mask[: len(samples)] = True
    return np.asarray(_hist_percentiles(values, mask, np.float32(lo), np.float32(ps)))


@hypothesis.settings(jt.HYPOTHESIS_SETTINGS, max_examples=200)
@hypothesis.given(
    d0=st.sampled_from([0.25, 1.0, 0.276]),
    d1=st.sampled_from([0.0, 0.0115, 0.125]),
    octaves=st.lists(st.floats(0.0, 20.0), min_size=1, max_size=MAX_SAMPLES),
    p=st.integers(1, 1000).map(lambda k: k / 1000),  # p n is never within 1e-3 of a rank

)
def test_histogram_percentile_within_one_bin_of_nearest_rank(d0, d1, octaves, p):
    lo = float(M.histogram_floor(d0, d1))
    # samples at or above the floor (latencies last at least one iteration of >= d0 + d1)
    samples = [float(np.float32(lo * 2.0 ** o)) for o in octaves]
    samples = [max(s, float(np.float32(lo))) for s in samples]
    ps = [0.5, 0.95, 0.99, p]
    got = _percentiles(samples, lo, ps)
    for q, value in zip(ps, got):
        exact = nearest_rank(samples, q)
        assert abs(value / exact - 1.0) <= 0.011, (q, value, exact)


def test_latency_values_on_bin_edges_and_duplicates():
    lo = float(M.histogram_floor(1.0, 0.0))  # 0.5
    samples = [1.0, 2.0, 2.0, 3.0, 5.0, 8.0, 8.0, 8.0]
    got = _percentiles(samples, lo, [0.1, 0.25, 0.5, 0.75, 0.95, 1.0])
    want = [1.0, 2.0, 3.0, 8.0, 8.0, 8.0]  # ranks 1, 2, 4, 6, 8, 8
    np.testing.assert_allclose(got, want, rtol=REL)


def test_nearest_rank_definition():
    assert nearest_rank([4.0, 1.0, 3.0, 2.0], 0.5) == 2.0  # ceil(2) = 2nd
    assert nearest_rank([4.0, 1.0, 3.0, 2.0], 0.51) == 3.0  # ceil(2.04) = 3rd
    assert nearest_rank([4.0, 1.0, 3.0, 2.0], 0.95) == 4.0
    assert nearest_rank([4.0, 1.0, 3.0, 2.0], 0.001) == 1.0
    assert nearest_rank([7.0], 0.99) == 7.0
    assert nearest_rank(list(range(1, 21)), 0.95) == 19  # exactly 19, not 20
    assert math.isnan(nearest_rank([], 0.5))


def test_empty_histogram_is_nan():
    hist = jnp.zeros((M.NUM_BINS,), jnp.int32)
    for p in (0.01, 0.5, 0.95, 1.0):
        assert math.isnan(float(M.hist_percentile(hist, 0.5, p)))


def test_finalize_without_completions():
    acc = M.init_accumulators()
    acc = acc.replace(elapsed=jnp.float32(10.0), memory_time=jnp.float32(50.0))
    out = M.finalize(acc, jnp.int32(3), jnp.float32(20.0), M.histogram_floor(1.0, 0.0))
    assert set(out) == set(M.METRIC_KEYS)
    for key in ("latency_mean", "latency_p50", "latency_p95", "latency_p99", "ttft_mean",
                "ttft_p95"):
        assert math.isnan(float(out[key])), key
    assert float(out["completed_per_time"]) == 0.0
    assert float(out["mean_memory"]) == pytest.approx(5.0)
    assert float(out["utilization"]) == pytest.approx(0.25)
    assert float(out["queue_final"]) == 3.0


def test_bin_index_of_exact_octaves():
    lo = 0.5
    xs = jnp.asarray([0.5, 1.0, 2.0, 64.0, 0.25, 1e12], jnp.float32)
    got = np.asarray(M.bin_index(xs, lo))
    # octave o starts at bin 64 o; below the floor clips to 0, far above to the last bin
    np.testing.assert_array_equal(got, [0, 64, 128, 64 * 7, 0, M.NUM_BINS - 1])
