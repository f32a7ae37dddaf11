"""Streamed workloads in a sliding request window give exactly what the simulator gives on
the materialized stream; a window too small is refused in one line; the chunk call's memory
does not grow with the horizon."""

from __future__ import annotations


import jax
import numpy as np
import pytest

from jaxsched.running import chunked
from jaxsched.core import rollout, sim
from jaxsched.running import sharding as S
from jaxsched.running import stream as ST
from jaxsched import testing as jt
from jaxsched.errors import JaxschedError
from jaxsched.core.model import SimShape, Workload
from jaxsched.policies import get_policy, make_params
from jaxsched.workloads.bursty import Bursty
from jaxsched.workloads.poisson import Poisson
from jaxsched.workloads.replay import TraceReplay
from jaxsched.workloads.saturated import Saturated

SHAPE = SimShape(max_batch=4, queue_size=6, horizon=400, num_classes=2, record_trace=True)
CHUNK = 25  # 16 chunks: the window slides 16 times
BLOCK, BLOCKS = 8, 6  # R = 48 requests on the device per workload
W = 3
RKEYS = jax.random.split(jax.random.key(12), W)
SKEYS = jax.random.split(jax.random.key(11), W)
_TRACE = (np.cumsum(np.random.default_rng(0).exponential(4.0, 37)), np.arange(37) % 4 + 1,
          np.arange(37) % 6 + 1, np.arange(37) % 2)


@pytest.fixture(scope="module", autouse=True)
def _fast_compile():
    with jt.fast_compile():
        yield


def _stream_params(kind, scale=1.0):
    rate = np.array([0.12 * scale, 0.08 * scale], np.float32)
    lengths = (np.array([3, 5]), np.array([4, 7]))
    made = {
        "poisson": lambda: Poisson(*lengths, rate),
        "saturated": lambda: Saturated(*lengths, rate, capacity=20.0, horizon=SHAPE.horizon),
        "bursty": lambda: Bursty(*lengths, rate, high_factor=2.0, low_factor=0.25,
                                 mean_high=20.0, mean_low=30.0),
        "trace": lambda: TraceReplay(*_TRACE[:3], time_scale=1.0 / scale, cls=_TRACE[3]),
    }
    return ST.stream_params(made[kind](), total=500 if kind == "saturated" else None)


def _params(policy, capacity=20.0):
    return sim.SimParams(system=jt.as_system({"capacity": capacity, "d0": 1.0, "d1": 0.0625}),
                         policy=make_params(policy, {}, num_classes=2))


def _streamed(policy, spec, sp, params, **kw):
    return chunked.run_chunked(policy, SHAPE, params, W, lambda lo, hi: (RKEYS[lo:hi],
                                                                         SKEYS[lo:hi]),
                               0, chunk=CHUNK, stream=spec, stream_params=sp, **kw)


@pytest.mark.parametrize("kind,policy_name", [("poisson", "greedy"), ("bursty", "vllm"),
                                              ("trace", "sarathi"), ("saturated", "greedy")])
def test_streamed_window_equals_the_simulator_on_the_materialized_stream(kind, policy_name):
    policy = get_policy(policy_name)
    spec = ST.StreamSpec(kind, BLOCK, BLOCKS)
    sp = _stream_params(kind)
    params = _params(policy)
    res, stats = _streamed(policy, spec, sp, params)
    assert stats.plan.window == spec.window == 48 and stats.plan.num_chunks == 16
    full = jax.vmap(lambda k: ST.materialize(k, spec, sp, 80))(SKEYS)  # 640 requests each
    assert full.arrival.shape == (W, 640)
    assert np.all(np.asarray(full.arrival[:, -1]) > res.final_time)  # holds all it reached
    ref = rollout.simulate(policy, SHAPE, RKEYS, full, params)
    # the window slid far: many more requests arrived than it holds
    assert int(np.min(res.final_arrived)) > 1.5 * spec.window
    jt.assert_same_rollout(res, ref)  # the whole trajectory, bit for bit
    if policy_name == "greedy":
        assert np.sum(res.metrics["evictions"]) > 0
    if kind == "poisson":  # the same compiled run, overloaded: the queue outgrows the window
        with pytest.raises(JaxschedError) as info:
            _streamed(policy, spec, _stream_params(kind, scale=4.0), params)
        msg = str(info.value)
        assert "\n" not in msg and "--window" in msg and "not exact" in msg


def test_stream_laws():
    key = jax.random.key(5)
    bursty = ST.materialize(key, ST.StreamSpec("bursty", 64, 2), _stream_params("bursty"), 4)
    a = np.asarray(bursty.arrival)
    assert np.all(np.diff(a) >= 0) and np.isfinite(a).all()
    # merged Poisson: mean gap 1 / (0.12 + 0.08) = 5, class 0 with probability 0.6
    wl = ST.materialize(key, ST.StreamSpec("poisson", 512, 2), _stream_params("poisson"), 8)
    gaps = np.diff(np.asarray(wl.arrival))
    assert 4.7 < gaps.mean() < 5.3
    assert 0.55 < np.mean(np.asarray(wl.cls) == 0) < 0.65


def _advance_bytes(horizon, stream):
    """XLA's buffer assignment of one compiled chunk call (memory_analysis), one workload."""
    shape = SimShape(max_batch=4, queue_size=6, horizon=horizon, num_classes=2)
    policy = get_policy("greedy")
    params = _params(policy)
    mesh = S.make_mesh(jax.devices()[:1], 1, 1)
    kd = jax.random.key_data(RKEYS[:1])
    init, adv, _ = chunked.chunk_functions(policy, shape, mesh, False, (50,), "threefry2x32",
                                           True, stream)
    if stream is None:
        n = horizon // 2  # N sized from horizon x rate, as the full-array generators do
        data = Workload(*(jax.ShapeDtypeStruct((1, n), dt) for dt in
                          (np.float32, np.int32, np.int32, np.int32, np.bool_)))
        extra = ()
    else:
        data = kd
        extra = (_stream_params("poisson"),)
    carry = jax.eval_shape(init, kd, data, params, *extra)
    ma = adv[50].lower(kd, data, params, *extra, carry).compile().memory_analysis()
    return (ma.argument_size_in_bytes + ma.output_size_in_bytes + ma.temp_size_in_bytes
            - ma.alias_size_in_bytes)


def test_chunk_memory_does_not_grow_with_the_horizon_when_streamed():
    spec = ST.StreamSpec("poisson", 64, 4)
    streamed = [_advance_bytes(h, spec) for h in (2_000, 20_000)]
    full = [_advance_bytes(h, None) for h in (2_000, 20_000)]
    assert streamed[1] == streamed[0]
    assert full[1] > 5 * full[0] and full[1] > 5 * streamed[1]
    est = chunked.rollout_bytes(get_policy("greedy"), SHAPE, 10**6, _params(get_policy("greedy")),
                                50, stream=spec)
    assert est < 4 * streamed[0] and est == chunked.rollout_bytes(
        get_policy("greedy"), SHAPE, 10, _params(get_policy("greedy")), 50, stream=spec)


def test_choose_window_and_refusals():
    shape = SimShape(max_batch=4, queue_size=6, horizon=10**6, num_classes=2)
    block, blocks = ST.choose_window(shape, 1000, 0.2)
    assert block == 64 and block * blocks >= 2 * 200  # two chunks of arrivals at least
    assert ST.choose_window(shape, 1000, 0.2, window=1000) == (64, 15)
    for bad in (lambda: ST.choose_window(shape, 1000, 0.2, window=100),
                lambda: ST.StreamSpec("gamma", 8, 4), lambda: ST.StreamSpec("poisson", 8, 1)):
        with pytest.raises(JaxschedError) as info:
            bad()
        assert "\n" not in str(info.value)


def test_automatic_streaming_and_its_fallback(monkeypatch):
    """``stream=None`` (the CLI's default) streams once the full arrays exceed
    ``STREAM_AUTO_BYTES`` (lowered here); a queue that outgrows the automatic window (an
    overloaded system: C = 300) makes the run start again with full arrays and say so, with
    the full-array result."""
    from jaxsched import api
    from jaxsched.config import DEFAULT_CONFIG, load_config

    monkeypatch.setattr(api, "STREAM_AUTO_BYTES", 1000)
    base = ["workload.num_workloads=2", "workload.horizon=2000", "workload.warmup=50"]
    exp = api.build_experiment(load_config(DEFAULT_CONFIG, base))
    light = api.run_experiment(exp, chunk=100, stream=None)
    assert light.run_stats.plan.window is not None and not light.stream_note
    assert light.run_stats.plan.window < exp.num_requests / 2
    exp = api.build_experiment(load_config(DEFAULT_CONFIG, base + ["system.capacity=300"]))
    heavy = api.run_experiment(exp, chunk=100, stream=None)
    full = api.run_experiment(exp, chunk=100, stream=False)
    assert heavy.run_stats.plan.window is None
    assert "ran again with full request arrays" in heavy.stream_note
    assert "\n" not in heavy.stream_note and "--window" in heavy.stream_note
    assert heavy.summary == full.summary


def test_a_trace_config_streams_the_requests_of_its_full_arrays():
    """The API streams a trace config (a trace has no classes); from the first request (no
    random offset) its stream's first blocks are the full arrays' first requests."""
    from jaxsched import api
    from jaxsched.config import CONFIG_DIR, load_config

    cfg = load_config(CONFIG_DIR / "azure-code.toml",
                      ["workload.random_offset=false", "workload.num_workloads=1",
                       "workload.horizon=300", "workload.warmup=0"])
    exp = api.build_experiment(cfg)
    spec, sp = api.stream_setup(exp, chunk=100)
    streamed = ST.materialize(jax.random.key(0), spec, sp, 2)
    _, full = api.build_workloads(cfg, exp.num_requests, exp.duration)
    n = min(2 * spec.block, exp.num_requests)
    assert n >= 64 and np.asarray(full.valid[0, :n]).sum() > 32
    for name in ("arrival", "prompt", "output", "cls", "valid"):
        np.testing.assert_array_equal(np.asarray(getattr(streamed, name))[:n],
                                      np.asarray(getattr(full, name))[0, :n], err_msg=name)
