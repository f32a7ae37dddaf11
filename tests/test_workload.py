"""Workload generators: distributions, padding conventions, static shapes, vmap over keys."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxsched.workloads import generators as W
from jaxsched.errors import JaxschedError
from jaxsched.core.model import Workload
from jaxsched.workloads.traces import load_trace

PROMPT = np.array([10, 20, 30], np.int32)
OUTPUT = np.array([20, 40, 60], np.int32)


def keys(n, seed=0):
    return jax.random.split(jax.random.key(seed), n)


def check_conventions(w: Workload, duration=None, num_classes=3):
    """The padding/sorting conventions of every generator, on a batch (R, N)."""
    a, v = np.asarray(w.arrival), np.asarray(w.valid)
    assert w.arrival.dtype == jnp.float32 and w.valid.dtype == jnp.bool_
    for x in (w.prompt, w.output, w.cls):
        assert x.dtype == jnp.int32
    assert np.all(a[..., 1:] >= a[..., :-1]), "arrivals sorted ascending"
    # valid is a prefix; padding never arrives and holds harmless lengths
    assert np.all(np.diff(v.astype(np.int8), axis=-1) <= 0)
    assert np.all(np.isinf(a[~v])) and np.all(np.isfinite(a[v]))
    assert np.all(a[v] >= 0)
    if duration is not None:
        assert np.all(a[v] < duration)
    assert np.all(np.asarray(w.prompt) >= 1) and np.all(np.asarray(w.output) >= 1)
    c = np.asarray(w.cls)
    assert np.all((c >= 0) & (c < num_classes))
    assert np.all(c[~v] == 0) and np.all(np.asarray(w.prompt)[~v] == 1)


# ------------------------------------------------------------------------------------------
# Poisson


def test_poisson_counts_match_rates_over_replicas():
    rate = np.array([0.5, 1.0, 2.0], np.float32)
    duration, reps = 100.0, 512
    n = W.poisson_num_requests(rate, duration)
    w = jax.jit(jax.vmap(lambda k: W.poisson(k, PROMPT, OUTPUT, rate, duration, n)))(keys(reps))
    assert w.arrival.shape == (reps, n)
    check_conventions(w, duration)
    v, c = np.asarray(w.valid), np.asarray(w.cls)
    assert not v[:, -1].any(), "the sizing helper left room: nothing truncated"
    for k, lam in enumerate(rate):
        counts = (v & (c == k)).sum(axis=1)
        mean = lam * duration
        # mean within 5 standard errors; Poisson dispersion (variance/mean) near 1
        assert abs(counts.mean() - mean) < 5 * math.sqrt(mean / reps)
        assert 0.8 < counts.var() / mean < 1.25
    # deterministic lengths per class
    assert np.all(np.asarray(w.prompt)[v] == PROMPT[c[v]])
    assert np.all(np.asarray(w.output)[v] == OUTPUT[c[v]])
    # arrival times of a homogeneous process on [0, T) are uniform: mean T/2, var T^2/12
    a = np.asarray(w.arrival)[v]
    assert abs(a.mean() - duration / 2) < 0.01 * duration
    assert abs(a.var() - duration**2 / 12) < 0.02 * duration**2 / 12


def test_poisson_interarrival_exponential_single_class():
    rate, duration, reps = 4.0, 50.0, 64
    n = W.poisson_num_requests([rate], duration)
    w = jax.jit(jax.vmap(lambda k: W.poisson(k, [5], [7], [rate], duration, n)))(keys(reps, 1))
    a, v = np.asarray(w.arrival), np.asarray(w.valid)
    gaps = np.concatenate([np.diff(a[r, v[r]]) for r in range(reps)])
    assert abs(gaps.mean() - 1 / rate) < 0.03 / rate
    assert abs(gaps.std() - 1 / rate) < 0.05 / rate  # exponential: sd = mean


def test_poisson_zero_rate_class_and_truncation():
    w = W.poisson(jax.random.key(3), PROMPT, OUTPUT, jnp.array([0.0, 1.0, 0.0]), 1000.0, 64)
    check_conventions(jax.tree.map(lambda x: x[None], w), 1000.0)
    v = np.asarray(w.valid)
    assert v.all(), "1000 expected arrivals truncated to the first 64"
    assert np.all(np.asarray(w.cls) == 1)
    # an empty horizon gives an all-padding workload
    e = W.poisson(jax.random.key(3), PROMPT, OUTPUT, jnp.ones(3), 0.0, 16)
    assert not np.asarray(e.valid).any() and np.all(np.isinf(np.asarray(e.arrival)))


def test_poisson_num_requests_formula():
    rates, t = [0.5, 2.0], 100.0
    want = sum(math.ceil(l * t + 8 * math.sqrt(l * t) + 16) for l in rates)
    assert W.poisson_num_requests(rates, t) == want
    assert W.poisson_num_requests([0.0], 10.0) == 16


def test_vmap_256_keys_one_jitted_call_static_shape_and_replicas_differ():
    traces = []

    def gen(k, rate):
        traces.append(1)
        return W.poisson(k, PROMPT, OUTPUT, rate, 20.0, 128)

    f = jax.jit(jax.vmap(gen, in_axes=(0, None)))
    w1 = f(keys(256), jnp.array([1.0, 1.0, 1.0]))
    w2 = f(keys(256, 7), jnp.array([2.0, 0.5, 1.0]))  # new keys and traced rates: no retrace
    assert len(traces) == 1
    assert w1.arrival.shape == w2.arrival.shape == (256, 128)
    a = np.asarray(w1.arrival)
    assert len({a[r, :3].tobytes() for r in range(256)}) == 256, "every replica differs"
    # same key, same workload
    again = W.poisson(keys(256)[5], PROMPT, OUTPUT, jnp.ones(3), 20.0, 128)
    np.testing.assert_array_equal(np.asarray(again.arrival), a[5])


def test_bad_static_arguments():
    with pytest.raises(JaxschedError, match="num_requests"):
        W.poisson(jax.random.key(0), PROMPT, OUTPUT, jnp.ones(3), 1.0, 0)
    with pytest.raises(JaxschedError, match="num_requests"):
        W.poisson(jax.random.key(0), PROMPT, OUTPUT, jnp.ones(3), 1.0, 10.5)
    with pytest.raises(JaxschedError, match="rate"):
        W.poisson(jax.random.key(0), PROMPT, OUTPUT, jnp.ones(2), 1.0, 10)
    with pytest.raises(JaxschedError, match="output_len"):
        W.saturated(jax.random.key(0), PROMPT, OUTPUT[:2], jnp.ones(3), 10)


# ------------------------------------------------------------------------------------------
# saturated


def test_saturated_class_mix_matches_weights():
    weight = np.array([1.0, 3.0, 0.0, 6.0], np.float32)
    p = weight / weight.sum()
    n, reps = 2000, 64
    lp, lo = np.array([1, 2, 3, 4]), np.array([5, 6, 7, 8])
    w = jax.jit(jax.vmap(lambda k: W.saturated(k, lp, lo, weight, n)))(keys(reps, 2))
    check_conventions(w, num_classes=4)
    assert np.all(np.asarray(w.valid)) and np.all(np.asarray(w.arrival) == 0.0)
    c = np.asarray(w.cls).reshape(-1)
    freq = np.bincount(c, minlength=4) / c.size
    se = np.sqrt(p * (1 - p) / c.size)
    assert np.all(np.abs(freq - p) <= 5 * se + 1e-12)
    assert freq[2] == 0.0, "a zero-weight class is never drawn"
    assert np.all(np.asarray(w.prompt) == lp[np.asarray(w.cls)])
    # replicas differ
    assert not np.array_equal(np.asarray(w.cls)[0], np.asarray(w.cls)[1])


def test_saturated_num_requests_bound():
    l, o = np.array([10, 10, 10]), np.array([20, 40, 60])
    c, h = 16492.0, 1000
    w_min = 10 * 20 + (20 + 400) / 2  # 410
    want = math.ceil(h * c / w_min + 2 * c / 11 + 64)
    assert W.saturated_num_requests(l, o, c, h) == want
    # a zero-weight class does not set the minimum
    w2 = 10 * 40 + (40 + 1600) / 2
    want2 = math.ceil(h * c / w2 + 2 * c / 11 + 64) + 16
    assert W.saturated_num_requests(l, o, c, h, weight=[0, 1, 1], queue_size=16) == want2
    np.testing.assert_allclose(W.memory_time(l, o), [410.0, 1220.0, 2430.0])
    with pytest.raises(JaxschedError):
        W.saturated_num_requests(l, o, c, h, weight=[0, 0, 0])


# ------------------------------------------------------------------------------------------
# bursty


def test_bursty_mean_rate_and_overdispersion():
    rate = np.array([1.0, 0.5], np.float32)
    duration, reps = 200.0, 512
    hi, lo, m_hi, m_lo = 3.0, 0.2, 10.0, 30.0
    n = W.bursty_num_requests(rate, duration, hi, lo)
    gen = lambda k: W.bursty(k, [5, 6], [7, 8], rate, duration, n, hi, lo, m_hi, m_lo)
    w = jax.jit(jax.vmap(gen))(keys(reps, 4))
    check_conventions(w, duration, num_classes=2)
    v, c = np.asarray(w.valid), np.asarray(w.cls)
    assert not v[:, -1].any()
    pi_hi = m_hi / (m_hi + m_lo)
    mix = pi_hi * hi + (1 - pi_hi) * lo  # 0.9
    # MMPP count variance: mean + 2 lam^2 (hi-lo)^2 pi_h pi_l / (q_h+q_l)^2 (q T - 1 + e^{-q T})
    q = 1 / m_hi + 1 / m_lo
    for k, lam in enumerate(rate):
        counts = (v & (c == k)).sum(axis=1)
        mean = lam * duration * mix
        extra = 2 * lam**2 * (hi - lo) ** 2 * pi_hi * (1 - pi_hi) / q**2 * (
            q * duration - 1 + math.exp(-q * duration))
        var = mean + extra
        assert abs(counts.mean() - mean) < 5 * math.sqrt(var / reps)
        assert counts.var() / mean > 3.0, "overdispersed relative to Poisson"
        assert 0.6 < counts.var() / var < 1.5
    # both classes share one modulating state: their counts are positively correlated
    c0, c1 = (v & (c == 0)).sum(1), (v & (c == 1)).sum(1)
    assert np.corrcoef(c0, c1)[0, 1] > 0.5


def test_bursty_equal_factors_is_poisson():
    rate, duration, reps = np.array([2.0], np.float32), 50.0, 512
    n = W.bursty_num_requests(rate, duration, 1.5, 1.5)
    w = jax.jit(jax.vmap(lambda k: W.bursty(k, [3], [4], rate, duration, n, 1.5, 1.5, 5.0, 5.0)))(
        keys(reps, 5))
    counts = np.asarray(w.valid).sum(1)
    mean = 2.0 * 1.5 * duration
    assert abs(counts.mean() - mean) < 5 * math.sqrt(mean / reps)
    assert 0.8 < counts.var() / mean < 1.25


def test_bursty_traced_means_need_num_switches():
    rate = jnp.ones(1)

    @jax.jit
    def traced(k, m_hi):
        return W.bursty(k, [1], [1], rate, 10.0, 64, 2.0, 0.5, m_hi, 1.0)

    with pytest.raises(JaxschedError, match="num_switches"):
        traced(jax.random.key(0), 1.0)

    @jax.jit
    def given(k, m_hi):
        return W.bursty(k, [1], [1], rate, 10.0, 64, 2.0, 0.5, m_hi, 1.0, num_switches=64)

    assert given(jax.random.key(0), 1.0).arrival.shape == (64,)
    assert W.bursty_num_switches(100.0, 10.0, 10.0) == 2 * math.ceil(6 + 8 * math.sqrt(6) + 16)


# ------------------------------------------------------------------------------------------
# traces

window = jax.jit(W.trace_window, static_argnums=(6,))

SMALL_T = np.array([0.0, 1.0, 3.0, 6.0])  # period 6 + 6/3 = 8
SMALL_P = np.array([11, 12, 13, 14])
SMALL_O = np.array([21, 22, 23, 24])


def test_trace_window_wraps_cyclically_golden():
    assert W.trace_period(SMALL_T) == 8.0
    # window [5, 15) trace seconds: 6, then the next copy 8, 9, 11, 14
    w = window(SMALL_T, SMALL_P, SMALL_O, 5.0, 10.0, 1.0, 8)
    v = np.asarray(w.valid)
    np.testing.assert_allclose(np.asarray(w.arrival)[v], [1.0, 3.0, 4.0, 6.0, 9.0])
    np.testing.assert_array_equal(np.asarray(w.prompt)[v], [14, 11, 12, 13, 14])
    np.testing.assert_array_equal(np.asarray(w.output)[v], [24, 21, 22, 23, 24])
    assert v.sum() == 5 and np.all(np.isinf(np.asarray(w.arrival)[~v]))
    # several periods in one window: 3 full copies (12) + [0, 1) -> 13
    w = window(SMALL_T, SMALL_P, SMALL_O, 0.0, 25.0, 1.0, 32)
    assert int(np.asarray(w.valid).sum()) == 13
    # time_scale: simulator time = trace seconds * time_scale
    w = window(SMALL_T, SMALL_P, SMALL_O, 5.0, 10_000.0, 1000.0, 8)
    np.testing.assert_allclose(np.asarray(w.arrival)[np.asarray(w.valid)],
                               [1000.0, 3000.0, 4000.0, 6000.0, 9000.0])


def test_trace_num_requests_is_the_busiest_window():
    rng = np.random.default_rng(0)
    t = np.sort(rng.uniform(0, 50, 40))
    t -= t[0]
    period = W.trace_period(t)
    for length in (0.5, 3.0, 17.0, 0.999 * period, 2.5 * period):
        # brute force: windows starting at every copy of every request (busiest start there)
        starts = np.concatenate([t, t + period])
        unrolled = np.concatenate([t + m * period for m in range(6)])
        best = max(int(np.sum((unrolled >= s) & (unrolled < s + length))) for s in starts)
        assert W.trace_num_requests(t, length * 10.0, 10.0) == best + 1


@pytest.fixture(scope="module")
def code_trace():
    return load_trace("azure_code")


def test_trace_full_span_preserves_lengths_multiset(code_trace):
    tr = code_trace
    size = len(tr)
    period = W.trace_period(tr.arrival)
    wrap_gap = period - tr.arrival[-1]
    n = size + 8
    # from the start: a window just longer than the span holds every request once, in order
    dur = (tr.arrival[-1] + wrap_gap / 2) * 1000.0
    w = W.trace_replay(jax.random.key(0), tr.arrival, tr.prompt, tr.output, dur, 1000.0, n,
                       random_offset=False)
    v = np.asarray(w.valid)
    assert v.sum() == size
    np.testing.assert_array_equal(np.asarray(w.prompt)[v], tr.prompt)
    np.testing.assert_array_equal(np.asarray(w.output)[v], tr.output)
    np.testing.assert_allclose(np.asarray(w.arrival)[v], tr.arrival * 1000.0, atol=0.5)
    # from offsets between requests, a window of one period holds each request exactly once
    gaps = np.diff(tr.arrival)
    wide = np.flatnonzero(gaps > 1.0)
    wide = wide[[3, len(wide) // 2, -2]]
    for i in wide:
        offset = (tr.arrival[i] + tr.arrival[i + 1]) / 2
        w = window(tr.arrival, tr.prompt, tr.output, offset, period, 1.0, n)
        v = np.asarray(w.valid)
        assert v.sum() == size
        got = sorted(zip(np.asarray(w.prompt)[v], np.asarray(w.output)[v]))
        assert got == sorted(zip(tr.prompt, tr.output))
        # the window starts with request i+1 and wraps to request 0 after the last
        assert np.asarray(w.prompt)[0] == tr.prompt[i + 1]
        assert np.asarray(w.prompt)[size - 1 - i] == tr.prompt[0]


def test_trace_replay_counts_scaling_and_vmap(code_trace):
    tr = code_trace
    dur, scale = 300_000.0, 1000.0  # five minutes of trace in ms
    n = W.trace_num_requests(tr.arrival, dur, scale)
    calls = []

    def gen(k):
        calls.append(1)
        return W.trace_replay(k, tr.arrival, tr.prompt, tr.output, dur, scale, n)

    w = jax.jit(jax.vmap(gen))(keys(256, 6))
    assert len(calls) == 1 and w.arrival.shape == (256, n)
    check_conventions(w, dur, num_classes=1)
    v = np.asarray(w.valid)
    counts = v.sum(1)
    assert counts.max() <= n - 1 and not v[:, -1].any()
    # expected count: rate of the cyclic trace times the window
    expect = len(tr) / W.trace_period(tr.arrival) * 300.0
    assert abs(counts.mean() - expect) < 0.15 * expect
    a = np.asarray(w.arrival)
    assert len({a[r, :2].tobytes() for r in range(256)}) > 250, "replicas start elsewhere"
    # every replica is a contiguous stretch of the trace: its (prompt, output) sequence
    # appears in the cyclic trace
    pairs = tr.prompt * 100_000 + tr.output
    seq = np.asarray(w.prompt)[0, v[0]] * 100_000 + np.asarray(w.output)[0, v[0]]
    starts = np.flatnonzero(pairs == seq[0])
    cyc = np.concatenate([pairs, pairs])
    assert any(np.array_equal(cyc[s:s + len(seq)], seq) for s in starts)
    # the window count at a known offset equals a numpy count
    for offset in (100.37, 1234.567, 3400.11):
        wo = window(tr.arrival, tr.prompt, tr.output, offset, dur, scale, n)
        period = W.trace_period(tr.arrival)
        cyc_t = np.concatenate([tr.arrival, tr.arrival + period])
        want = np.sum((cyc_t >= offset) & (cyc_t < offset + 300.0))
        assert int(np.asarray(wo.valid).sum()) == want


def test_trace_time_scale_scales_interarrival_times(code_trace):
    tr = code_trace
    offset = (tr.arrival[500] + tr.arrival[501]) / 2
    base = window(tr.arrival, tr.prompt, tr.output, offset, 30.0, 1.0, 256)
    fast = window(tr.arrival, tr.prompt, tr.output, offset, 30.0 * 0.25, 0.25, 256)
    vb, vf = np.asarray(base.valid), np.asarray(fast.valid)
    assert vb.sum() == vf.sum() > 10
    gb = np.diff(np.asarray(base.arrival)[vb])
    gf = np.diff(np.asarray(fast.arrival)[vf])
    np.testing.assert_allclose(gf, 0.25 * gb, rtol=1e-3, atol=1e-5)
    np.testing.assert_array_equal(np.asarray(base.output), np.asarray(fast.output))
    # time_scale < 1 compresses the trace: more requests in the same simulated duration
    more = window(tr.arrival, tr.prompt, tr.output, offset, 30.0, 0.25, 512)
    assert np.asarray(more.valid).sum() > 3 * vb.sum()


def test_trace_replay_class_bounds_and_fixed_offset():
    w = W.trace_replay(jax.random.key(1), SMALL_T, SMALL_P, SMALL_O, 7.5, 1.0, 8,
                       random_offset=False, class_bounds=[21, 23])
    v = np.asarray(w.valid)
    np.testing.assert_array_equal(np.asarray(w.output)[v], [21, 22, 23, 24])
    np.testing.assert_array_equal(np.asarray(w.cls)[v], [0, 1, 1, 2])
    np.testing.assert_allclose(np.asarray(w.arrival)[v], SMALL_T)
    # random_offset=False ignores the key
    w2 = W.trace_replay(jax.random.key(2), SMALL_T, SMALL_P, SMALL_O, 7.5, 1.0, 8,
                        random_offset=False, class_bounds=[21, 23])
    np.testing.assert_array_equal(np.asarray(w.arrival), np.asarray(w2.arrival))
    with pytest.raises(JaxschedError, match="shape"):
        window(SMALL_T, SMALL_P[:3], SMALL_O, 0.0, 1.0, 1.0, 4)
