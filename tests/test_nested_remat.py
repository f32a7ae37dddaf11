"""The gradient tuner's rollout (tuning.nested_remat): two-level checkpointing with compact
boundary carries gives the plain scan's trajectory, values and gradients.

* Every segment plan covers the horizon exactly.
* The boundary codec is lossless on a real carry and smaller than it.
* The carry after the nested layout equals the plain scan's, bit for bit, with evictions that
  keep generated tokens (``kept`` non-zero, narrowed at the boundaries).
* Values and gradients equal the plain scan's (whose gradients ``tests/test_relaxed.py``
  checks against finite differences), and match central finite differences directly.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxsched import testing as jt
from jaxsched.core import rollout, sim
from jaxsched.core.model import SimShape, system_params
from jaxsched.policies import get_policy, make_params
from tuning.nested_remat import SegmentPlan, balanced_plan, carry_codec, make_relaxed_rollout, \
    nested_advance, plan_segments


@pytest.fixture(autouse=True)
def _fast_compile():
    with jt.fast_compile():
        yield


def _workload(seed: int = 2, n: int = 40, span: float = 30.0):
    rng = np.random.default_rng(seed)
    arrival = np.floor(np.sort(rng.uniform(0, span, n))) + 0.5
    return jt.make_workload([(float(a), int(rng.integers(1, 7)), int(rng.integers(2, 12)),
                              int(rng.integers(0, 2))) for a in arrival])


def _setup(relax="relaxed", restart_on_evict=True, capacity=40.3, budget=2.003, horizon=32):
    pol = get_policy("flow_control")
    shape = SimShape(max_batch=12, queue_size=8, horizon=horizon, num_classes=2, relax=relax)
    sp = sim.SimParams(system_params(capacity, 1.0, 0.0, restart_on_evict),
                       make_params(pol, {"budget": budget}, num_classes=2), jnp.float32(0.5))
    return pol, shape, sp


def test_every_plan_covers_the_horizon():
    for horizon in range(1, 200, 7):
        for leaf in (1, 2, 3, 5, 8, 64, 500):
            p = plan_segments(horizon, leaf)
            assert p.horizon == horizon, (horizon, leaf, p)
            assert 0 <= p.tail < p.leaf and 0 <= p.rest < p.inner
            b = balanced_plan(horizon, leaf)
            assert b.horizon == horizon and 0 <= b.rest < b.inner and b.tail < b.leaf
    p = plan_segments(32, 3)  # 10 leaves: 2 groups of 4, 2 more leaves, a tail of 2
    assert (p.leaf, p.inner, p.outer, p.rest, p.tail) == (3, 4, 2, 2, 2)
    # 1000 = 125 x 8 = 125 x (4 x 2), 3000 = 125 x 24 = 125 x (6 x 4): nothing left over
    assert balanced_plan(1000, 128) == SegmentPlan(leaf=125, inner=4, outer=2, rest=0, tail=0)
    assert balanced_plan(3000, 128) == SegmentPlan(leaf=125, inner=6, outer=4, rest=0, tail=0)


def test_codec_is_lossless_and_smaller():
    pol, shape, sp = _setup(restart_on_evict=False)
    wl = _workload(n=400, span=300.0)
    carry = rollout.init(pol, shape, wl, sp)
    carry = rollout.advance(pol, shape, jax.random.PRNGKey(1), wl, sp, carry, 20)[0]
    codec = carry_codec(carry, {"kept": int(np.max(np.asarray(wl.output)))})
    encoded = codec.encode(carry)
    size = lambda t: sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(t))  # noqa: E731
    # per request: taken and first_done (1 byte each) as bits, kept (4 bytes) in one byte
    assert size(carry) - size(encoded) >= int(4.7 * 400)
    back = codec.decode(encoded)
    for a, b in zip(jax.tree.leaves(back), jax.tree.leaves(carry)):
        assert a.dtype == b.dtype and a.shape == b.shape
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_nested_layout_leaves_the_trajectory_unchanged():
    # tight memory, progress kept on eviction: requests go back to the queue with kept > 0
    pol, shape, sp = _setup(relax="hard", restart_on_evict=False, capacity=30.0, budget=4.0)
    wl = _workload()
    key = jax.random.PRNGKey(1)
    plain = rollout.advance(pol, shape, key, wl, sp, rollout.init(pol, shape, wl, sp), 32)[0]
    bounds = {"kept": int(np.max(np.asarray(wl.output)))}

    def run(c, n):
        return rollout.advance(pol, shape, key, wl, sp, c, n)[0]

    c0 = rollout.init(pol, shape, wl, sp)  # leaves of 3: two groups of 4, 2 leaves, a tail
    got = jax.jit(lambda c: nested_advance(run, c, plan_segments(32, 3),
                                           carry_codec(c, bounds)))(c0)
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(plain)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert np.any(np.asarray(plain[0].requests.kept) > 0), "the test needs kept tokens"


def _objective(pol, shape, wl, plan, param):
    bounds = (("kept", int(np.max(np.asarray(wl.output)))),)
    fn = make_relaxed_rollout(pol, shape, plan, bounds)

    _, _, sp0 = _setup()

    def f(x):
        if param == "capacity":
            sp = sp0.replace(system=dataclasses.replace(sp0.system, capacity=x))
        else:
            sp = sp0.replace(policy={**sp0.policy, param: x})
        m = fn(jax.random.PRNGKey(1), wl, sp).metrics
        return (m["completed_per_time"] + 0.1 * m["evictions"] + 0.01 * m["mean_memory"]
                + 0.5 * m["overflow_steps"])

    return f


def test_values_and_gradients_equal_the_plain_scan_and_finite_differences():
    # budget 2.003 +- 0.002: floor(credit + budget) stays 2 for 32 iterations (test_relaxed)
    param, x0, h = "budget", 2.003, 2e-3
    pol, shape, _ = _setup()
    wl = _workload()
    x = jnp.float32(x0)
    plain = jax.jit(jax.value_and_grad(_objective(pol, shape, wl, None, param)))(x)
    assert abs(float(plain[1])) > 1e-4, "the gradient must not vanish for the test to mean much"
    f = _objective(pol, shape, wl, plan_segments(32, 3), param)  # two groups of 4 leaves of 3, 2 leaves, a tail
    got = jax.jit(jax.value_and_grad(f))(x)
    for a, b in zip(got, plain):
        assert float(a) == pytest.approx(float(b), rel=1e-5, abs=1e-7), (got, plain)
    fd = (float(jax.jit(f)(x + h)) - float(jax.jit(f)(x - h))) / (2 * h)
    assert float(got[1]) == pytest.approx(fd, rel=0.03, abs=0.02 * max(abs(fd), 1e-2))
