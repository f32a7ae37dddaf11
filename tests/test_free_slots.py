"""Free slots are never read: the step leaves a departed request's fields in its slot
(:func:`jaxsched.core.sim._vacate`, one select instead of one per field), so every phase and
every policy must mask by ``valid``.

For every registered policy and eviction order, on hypothesis workloads and systems, a
rollout whose free slots are overwritten with garbage before every iteration has the same
per-iteration record, the same residents and the same accumulators as the plain rollout.
"""

from __future__ import annotations

import dataclasses

import hypothesis
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxsched import testing as jt
from jaxsched.core import rollout, sim
from jaxsched.policies import get_policy, make_params
from jaxsched.tools.profiling import assert_same_carry

SHAPE = dataclasses.replace(jt.small_shape(max_batch=4, queue_size=6, horizon=32, num_classes=2),
                            record_trace=True)
N = 16
WORKLOADS = jt.workloads(n=N, num_classes=2, max_prompt=6, max_output=6, max_arrival=8.0)
SYSTEMS = jt.systems(capacity=(6, 40))
VARIANTS = jt.policy_variants()


@pytest.fixture(scope="module", autouse=True)
def _fast_compile():
    with jt.fast_compile():
        yield


def _poison(slots, salt):
    """Every free slot's fields (all but ``req``) replaced by values no request has."""
    free = ~slots.valid

    def garbage(x):
        if x.dtype == jnp.bool_:
            return jnp.where(free, (salt % 2) == 0, x)
        return jnp.where(free, (977 + 31 * salt).astype(x.dtype), x)

    fields = {f.name: getattr(slots, f.name) for f in dataclasses.fields(slots)}
    return slots.replace(**{k: garbage(v) for k, v in fields.items()
                            if k != "req" and v is not None})


def _rollouts(policy):
    def run(key, workload, params, poisoned):
        def body(carry, _):
            state, pstate, acc = carry
            if poisoned:
                state = state.replace(slots=_poison(state.slots, state.iteration))
            return sim.step(policy, SHAPE, key, workload, params, (state, pstate, acc))

        carry = rollout.init(policy, SHAPE, workload, params)
        return jax.lax.scan(body, carry, None, length=SHAPE.horizon)

    return (jax.jit(lambda k, w, p: run(k, w, p, False)),
            jax.jit(lambda k, w, p: run(k, w, p, True)))


@pytest.mark.parametrize("variant", VARIANTS, ids=jt.variant_id)
def test_free_slots_are_never_read(variant):
    name, options = variant
    policy = get_policy(name, **options)
    plain, poisoned = _rollouts(policy)
    params_of = lambda system: sim.SimParams(  # noqa: E731
        system=jt.as_system(system),
        policy=make_params(policy, {}, num_classes=SHAPE.num_classes))

    @hypothesis.settings(jt.property_settings(6))
    @hypothesis.given(workload=WORKLOADS, system=SYSTEMS)
    def check(workload, system):
        key, params = jax.random.PRNGKey(3), params_of(system)
        carry_a, trace_a = plain(key, workload, params)
        carry_b, trace_b = poisoned(key, workload, params)
        for x, y in zip(jax.tree.leaves(trace_a), jax.tree.leaves(trace_b), strict=True):
            np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
        assert_same_carry(jax.tree.map(lambda x: x[None], carry_a),
                          jax.tree.map(lambda x: x[None], carry_b))

    check()
