"""The relaxed and straight-through modes of the simulator (``jaxsched.core.model.RELAX_MODES``).

* As the temperature goes to 0 the relaxed metrics approach the hard ones (and equal them at
  a temperature where every sigmoid saturates); at a high temperature they differ.
* Straight-through: the forward pass is the hard simulator at every temperature.
* Gradients with respect to a policy parameter (the flow-control budget, the vLLM watermark)
  and system parameters (capacity, d1_prefill, d1_context) are finite and match central finite
  differences of the relaxed objective, at points where no hard decision changes within the
  difference step; with blocks of 4 tokens too (memory in block tokens).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxsched.core import rollout, sim
from jaxsched import testing as jt
from jaxsched.core.model import SimShape, system_params
from jaxsched.policies import get_policy, make_params

CASES = [
    ("flow_control", {"budget": 2.3}),
    ("flow_control_known", {"budget": [1.5, 1.0]}),
    ("vllm", {"watermark": 0.1}),
    ("sglang", {"new_token_ratio_init": 0.05, "new_token_ratio_min": 0.0, "max_new_tokens": 8}),
    ("wait", {"threshold": [2, 2]}),
]


@pytest.fixture(autouse=True)
def _fast_compile():
    with jt.fast_compile():  # many small simulators: compile time dominates
        yield


METRICS = ("completed_per_time", "tokens_per_time", "latency_mean", "ttft_mean", "evictions",
           "recomputed_tokens", "mean_memory", "peak_memory", "overflow_steps", "latency_p95")


def _workload(seed: int, n: int = 48, span: float = 24.0, offset: float = 0.0):
    rng = np.random.default_rng(seed)
    arrival = np.sort(rng.uniform(0, span, n))
    if offset:
        arrival = np.floor(arrival) + offset
    reqs = [(float(a), int(rng.integers(1, 7)), int(rng.integers(2, 12)), int(rng.integers(0, 2)))
            for a in arrival]
    return jt.make_workload(reqs)


def _run(policy: str, values: dict, workload, relax: str, temperature=None, *, capacity=40.0,
         d1=0.0, horizon=40, d2=0.0, **split):
    pol = get_policy(policy)
    shape = SimShape(max_batch=12, queue_size=8, horizon=horizon, num_classes=2, relax=relax)
    pp = make_params(pol, values, num_classes=2)
    sp = sim.SimParams(system_params(capacity, 1.0, d1, True, d2, **split), pp,
                       None if relax == "hard" else jnp.float32(temperature))
    res = rollout.simulate(pol, shape, jax.random.PRNGKey(1)[None], jt.stack([workload]), sp)
    return {k: float(np.asarray(v)[0]) for k, v in res.metrics.items()}


@pytest.mark.parametrize("policy,values", CASES)
def test_relaxed_tends_to_hard_as_temperature_falls(policy, values):
    wl = _workload(0)
    hard = _run(policy, values, wl, "hard")
    assert hard["evictions"] > 0, "the setting must overflow for the test to mean something"
    errors = []
    for temp in (2.0, 0.3, 0.05, 1e-3):
        relaxed = _run(policy, values, wl, "relaxed", temp)
        err = max(abs(relaxed[m] - hard[m]) / max(abs(hard[m]), 1e-6) for m in METRICS
                  if np.isfinite(hard[m]))
        errors.append(err)
    assert errors[0] > 1e-3, f"the relaxation is not active at a high temperature: {errors}"
    assert errors[-1] < 1e-5, f"relaxed != hard at temperature 1e-3: {errors}"
    assert errors[-1] <= errors[1] <= errors[0] + 1e-9, errors


@pytest.mark.parametrize("policy,values", CASES[:3])
def test_straight_through_forward_is_hard(policy, values):
    wl = _workload(1)
    hard = _run(policy, values, wl, "hard")
    for temp in (5.0, 0.2):
        st = _run(policy, values, wl, "straight_through", temp)
        for m in METRICS:
            assert st[m] == pytest.approx(hard[m], rel=1e-6, nan_ok=True), (m, temp)


@pytest.mark.parametrize("policy,values", [CASES[0], CASES[2]])  # flow control, vLLM
def test_block_memory_and_split_coefficients_relax_to_hard(policy, values):
    # memory in blocks of 4 tokens (mass-weighted block tokens in the relaxed modes) and
    # tau = d0 + d1_prefill P + d1_context D with the two coefficients apart
    wl = _workload(0)
    system = dict(capacity=41.0, d1_prefill=0.25, d1_context=0.0625, block_size=4)
    hard = _run(policy, values, wl, "hard", **system)
    tokens = _run(policy, values, wl, "hard", **{**system, "block_size": 1})
    assert hard["evictions"] > 0 and hard["peak_memory"] % 4 == 0
    assert hard["peak_memory"] <= 40  # C_b: the whole blocks in 41 tokens
    assert hard != tokens, "blocks must change the trajectory"
    for relax, temp, tol in (("relaxed", 1e-3, 1e-5), ("straight_through", 0.5, 1e-6)):
        got = _run(policy, values, wl, relax, temp, **system)
        for m in METRICS:
            assert got[m] == pytest.approx(hard[m], rel=tol, nan_ok=True), (relax, m)


def test_prefill_request_time_relaxes_to_hard():
    # tau = d0 + d1 (P + D) + d2 R: the relaxed R is the admitted mass of prefilling requests.
    policy, values = CASES[0]
    wl = _workload(0)
    hard = _run(policy, values, wl, "hard", d1=0.125, d2=0.5)
    base = _run(policy, values, wl, "hard", d1=0.125)
    assert hard["completed_per_time"] != base["completed_per_time"], "d2 must change time"
    for relax, temp, tol in (("relaxed", 1e-3, 1e-5), ("straight_through", 0.5, 1e-6)):
        got = _run(policy, values, wl, relax, temp, d1=0.125, d2=0.5)
        for m in METRICS:
            assert got[m] == pytest.approx(hard[m], rel=tol, nan_ok=True), (relax, m)


def test_relaxed_mode_needs_a_known_mode():
    with pytest.raises(ValueError, match="relax"):
        SimShape(max_batch=2, queue_size=2, horizon=4, num_classes=1, relax="soft")


# ---------------------------------------------------------------------- finite differences


def _objective_fn(policy: str, values: dict, param: str, workload, *, horizon, base_capacity,
                  base_d1, relax="relaxed", temperature=0.5, block_size=1, remat=None):
    """f(x): a mix of mass-weighted metrics, as a function of one parameter ``param``
    (a policy parameter name, or ``capacity`` / ``d1_prefill`` / ``d1_context``)."""
    pol = get_policy(policy)
    shape = SimShape(max_batch=12, queue_size=8, horizon=horizon, num_classes=2, relax=relax)
    pp0 = make_params(pol, values, num_classes=2)

    def f(x):
        pp = dict(pp0)
        system = system_params(base_capacity, 1.0, base_d1, True, block_size=block_size)
        if param in ("capacity", "d1_prefill", "d1_context"):
            system = dataclasses.replace(system, **{param: x})
        else:
            pp[param] = x
        sp = sim.SimParams(system, pp, jnp.float32(temperature))
        res = rollout.make_rollout(pol, shape, remat)(jax.random.PRNGKey(1), workload, sp)
        m = res.metrics
        return (m["completed_per_time"] + 0.1 * m["evictions"] + 0.01 * m["mean_memory"]
                + 0.5 * m["overflow_steps"])

    return f


@pytest.mark.parametrize("policy,values,param,x0,h,d1,block_size", [
    # budget 2.003 +- 0.002: floor(credit + budget) stays 2 for 32 iterations
    ("flow_control", {"budget": 2.003}, "budget", 2.003, 2e-3, 0.0, 1),
    ("vllm", {"watermark": 0.1}, "watermark", 0.1013, 2e-4, 0.0, 1),
    # capacity 40.3 +- 0.1: no hard overflow or eviction changes (memory is whole tokens)
    ("flow_control", {"budget": 2.0}, "capacity", 40.3, 0.1, 0.0, 1),
    # d1 small: iteration ends never cross an arrival (arrivals at half-integers)
    ("flow_control", {"budget": 2.0}, "d1_prefill", 2e-5, 5e-6, 2e-5, 1),
    ("flow_control", {"budget": 2.0}, "d1_context", 2e-5, 5e-6, 2e-5, 1),
    # blocks of 4 tokens: the budget's gradient through block-token memory
    ("flow_control", {"budget": 2.003}, "budget", 2.003, 2e-3, 0.0, 4),
])
def test_gradients_match_central_finite_differences(policy, values, param, x0, h, d1,
                                                    block_size):
    wl = _workload(2, n=40, span=30.0, offset=0.5)
    f = _objective_fn(policy, values, param, wl, horizon=32, base_capacity=40.3, base_d1=d1,
                      block_size=block_size)
    x = jnp.float32(x0)
    grad = float(jax.jit(jax.grad(f))(x))
    fd = (float(jax.jit(f)(x + h)) - float(jax.jit(f)(x - h))) / (2 * h)
    assert np.isfinite(grad)
    assert abs(grad) > 1e-4, f"gradient vanished for {param}: {grad}"
    assert grad == pytest.approx(fd, rel=0.03, abs=0.02 * max(abs(fd), 1e-2)), (grad, fd)


@pytest.mark.parametrize("policy,values,param,x0,relax,block_size", [
    ("flow_control", {"budget": 2.003}, "budget", 2.003, "straight_through", 1),
    # WAIT thresholds are whole requests: straight through the floor in both modes
    ("wait", {"threshold": [2, 2]}, "threshold", [2.0, 2.0], "relaxed", 1),
    # blocks of 4: C_b = 4 floor(C / 4) passes its gradient straight through (d C_b / d C = 1;
    # the forward value is constant between multiples of 4, so no finite difference sees it)
    ("flow_control", {"budget": 2.0}, "capacity", 41.5, "relaxed", 4),
])
def test_gradients_are_finite_and_nonzero(policy, values, param, x0, relax, block_size):
    wl = _workload(2, n=40, span=30.0, offset=0.5)
    f = _objective_fn(policy, values, param, wl, horizon=32, base_capacity=40.3, base_d1=0.0,
                      relax=relax, block_size=block_size)
    g = np.asarray(jax.jit(jax.grad(f))(jnp.asarray(x0, jnp.float32)))
    assert np.all(np.isfinite(g)) and np.any(g != 0.0), g


@pytest.mark.parametrize("policy,values,param,x0,relax", [
    ("flow_control", {"budget": 2.003}, "budget", 2.003, "relaxed"),
    ("flow_control", {"budget": 2.0}, "capacity", 40.3, "relaxed"),
    ("vllm", {"watermark": 0.1}, "watermark", 0.1013, "straight_through"),
])
def test_rematerialized_segments_give_the_same_values_and_gradients(policy, values, param, x0,
                                                                     relax):
    # jax.checkpoint over segments of 8 (4 segments) and of 5 (6 segments and a tail of 2)
    wl = _workload(2, n=40, span=30.0, offset=0.5)
    kw = dict(horizon=32, base_capacity=40.3, base_d1=0.0, relax=relax)
    x = jnp.float32(x0)
    plain = jax.jit(jax.value_and_grad(_objective_fn(policy, values, param, wl, **kw)))(x)
    assert abs(float(plain[1])) > 1e-4, "the gradient must not vanish for the test to mean much"
    for remat in (8, 5):
        got = jax.jit(jax.value_and_grad(
            _objective_fn(policy, values, param, wl, remat=remat, **kw)))(x)
        for a, b in zip(got, plain):
            assert float(a) == pytest.approx(float(b), rel=1e-5, abs=1e-7), (remat, got, plain)


def test_rematerialized_segments_leave_the_trajectory_unchanged():
    pol = get_policy("flow_control")
    shape = SimShape(max_batch=12, queue_size=8, horizon=32, num_classes=2, record_trace=True)
    sp = sim.SimParams(system_params(40.3, 1.0, 0.0, True),
                       make_params(pol, {"budget": 2.0}, num_classes=2))
    wl = _workload(2, n=40, span=30.0, offset=0.5)
    plain = rollout.make_rollout(pol, shape)(jax.random.PRNGKey(1), wl, sp)
    for remat in (8, 5):  # 4 segments; 6 segments and a tail of 2
        got = rollout.make_rollout(pol, shape, remat)(jax.random.PRNGKey(1), wl, sp)
        assert got.trace.time.shape == (32,)
        jt.assert_same_rollout(got, plain)
