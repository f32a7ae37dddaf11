"""Search spaces: defaults from every registered policy's Param specs, [tune.space] overrides,
per-class expansion, the unit-cube map the gradient tuner uses."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxsched.errors import JaxschedError
from jaxsched.policies import get_policy, list_policies, make_params
from jaxsched.policies.registry import check_params
from tuning.search_space import SPREAD, UNBOUNDED, build_search_space, default_range
from tuning.settings import SpaceEntry

K = 3
CAPACITY = 5000.0


def space_for(name, overrides=None, base=None):
    policy = get_policy(name)
    base = base if base is not None else make_params(policy, {}, K)
    return policy, build_search_space(policy, K, base, CAPACITY,
                                      {k: SpaceEntry(**v) for k, v in (overrides or {}).items()},
                                      source="test.toml")


@pytest.mark.parametrize("name", list_policies())
def test_every_registered_policy_gets_a_valid_space(name):
    policy, space = space_for(name)
    assert space.dims or space.fixed
    names = [d.name for d in space.dims]
    assert len(names) == len(set(names))
    for pname, spec in policy.params.items():
        dims = [d for d in space.dims if d.param == pname]
        if spec.per_class and dims:
            assert [d.index for d in dims] == list(range(K)), "one dimension per class"
        for d in dims:
            assert d.low < d.high
            if spec.low is not None:
                assert d.low >= spec.low
            if spec.high is not None:
                assert d.high <= spec.high
            assert d.high <= max(CAPACITY, spec.high or 0, d.low * SPREAD ** 2)
            if d.log:
                assert d.low > 0
            if spec.integer:
                assert d.integer and d.low == int(d.low) and d.high == int(d.high)
    point = space.default_point()
    dists = space.distributions()
    for n, v in point.items():
        assert dists[n]._contains(dists[n].to_internal_repr(v)), (n, v)
    values = space.values(point)
    check_params(policy, values, K)  # every value is feasible for the policy
    stacked = space.stack([point, point])
    for pname, spec in policy.params.items():
        assert stacked[pname].shape == ((2, K) if spec.per_class else (2,))
        assert stacked[pname].dtype == np.float32


def test_default_range_rules():
    from jaxsched.policies.base import Param

    # both bounds finite: the spec's range, linear unless it spans two decades
    assert default_range(Param(0.2, low=0.0, high=0.99), 0.2, CAPACITY) == (0.0, 0.99, False)
    # open above: [r / 4, 4 r] on a log scale around the reference value
    lo, hi, log = default_range(Param(1.0, low=0.0), 12.0, CAPACITY)
    assert (lo, hi, log) == (3.0, 48.0, True)
    # an "unlimited" sentinel default: up to the capacity, log when it spans two decades
    lo, hi, log = default_range(Param(1e9, low=1, integer=True), 1e9, CAPACITY)
    assert (lo, hi, log) == (1.0, CAPACITY, True)
    # an upper bound at or above UNBOUNDED is a sentinel, not a search bound
    lo, hi, _ = default_range(Param(256, low=1, high=2 ** 31 - 1, integer=True), 256, CAPACITY)
    assert (lo, hi) == (64.0, 1024.0) and hi < UNBOUNDED


def test_per_class_budgets_expand_and_tie():
    _, space = space_for("flow_control_known")
    assert [d.name for d in space.dims] == ["budget[0]", "budget[1]", "budget[2]"]
    point = {"budget[0]": 1.0, "budget[1]": 2.0, "budget[2]": 3.5}
    assert space.values(point)["budget"].tolist() == [1.0, 2.0, 3.5]
    _, tied = space_for("flow_control_known", {"budget": {"tied": True, "low": 1, "high": 9}})
    assert [d.name for d in tied.dims] == ["budget"]
    assert tied.values({"budget": 4.0})["budget"].tolist() == [4.0] * K


def test_overrides_ranges_scales_and_fixed_values():
    _, space = space_for("vllm", {
        "max_num_seqs": {"low": 8, "high": 64, "log": False},
        "watermark": {"search": False},
        "max_num_batched_tokens": {"fixed": 4096},
    })
    (d,) = space.dims
    assert (d.name, d.low, d.high, d.log, d.integer) == ("max_num_seqs", 8, 64, False, True)
    assert set(space.fixed) == {"watermark", "max_num_batched_tokens"}
    v = space.values({"max_num_seqs": 16})
    assert float(v["max_num_batched_tokens"]) == 4096 and math.isclose(float(v["watermark"]), 0.01,
                                                                       rel_tol=1e-6)
    _, per = space_for("flow_control_known", {"budget": {"low": [1, 2, 3], "high": [4, 5, 6]}})
    assert [(d.low, d.high) for d in per.dims] == [(1, 4), (2, 5), (3, 6)]


@pytest.mark.parametrize("name,override,message", [
    ("flow_control", {"nope": {"low": 1}}, "tune.space.nope: policy 'flow_control' has no parameter"),
    ("flow_control", {"budget": {"low": 5, "high": 5}}, "tune.space.budget: low (5) must be smaller"),
    ("alpha_protection", {"alpha": {"high": 1.5}}, "tune.space.alpha.high: 1.5 is above"),
    ("flow_control", {"budget": {"low": 0, "high": 4, "log": True}}, "tune.space.budget.log"),
    ("flow_control_known", {"budget": {"low": [1, 2]}}, "needs one value per class (3), got 2"),
    ("greedy", {"max_num_seqs": {"integer": False}}, "takes integer values only"),
    ("flow_control", {"budget": {"tied": True}}, "is not a per-class parameter"),
    ("flow_control", {"budget": {"fixed": -1}}, "tune.space.budget.fixed: budget must be >= 0"),
])
def test_bad_overrides_are_refused_naming_the_key(name, override, message):
    with pytest.raises(JaxschedError) as err:
        space_for(name, override)
    assert str(err.value).startswith("test.toml: ")
    assert message in str(err.value)


def test_unit_cube_map_is_invertible_and_differentiable():
    _, space = space_for("flow_control_known")
    point = {"budget[0]": 0.5, "budget[1]": 1.0, "budget[2]": 3.25}
    u = space.to_unit(point)
    assert np.all((u >= 0) & (u <= 1))
    params = space.from_unit(jnp.asarray(u))
    np.testing.assert_allclose(np.asarray(params["budget"]), [0.5, 1.0, 3.25], rtol=1e-5)
    grad = jax.grad(lambda x: jnp.sum(space.from_unit(x)["budget"]))(jnp.asarray(u, jnp.float32))
    assert np.all(np.asarray(grad) > 0)
