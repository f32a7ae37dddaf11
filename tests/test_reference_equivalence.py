"""The JAX simulator against the plain-Python reference, iteration by iteration, for every
registered policy (default parameters; every eviction order where the factory has an
``eviction`` option) over hypothesis-generated workloads.

Every example runs four systems on the same workload: restart_on_evict false and true, each
slotted (d0=1, d1=0) and with an iteration-time model (dyadic d0, d1_prefill, d1_context > 0,
equal or not), each with a block size drawn from 1, 2 and 4 (memory in whole blocks). A
policy registered
without a twin in jaxsched/reference/policies fails here. The shape and workload length are those of
the policy test modules, so a full run reuses their compiled simulators; XLA optimizations
are off while this module compiles (compile time dominates; results are unchanged).
"""

from __future__ import annotations

import hypothesis
import pytest
from hypothesis import strategies as st

from jaxsched import testing as jt
from jaxsched.policies import list_policies
from jaxsched.reference.policies import REFERENCE_POLICIES

SHAPE = jt.small_shape(max_batch=4, queue_size=6, horizon=32, num_classes=2)
N = 16
EXAMPLES = 12  # x 4 systems = 48 comparisons per policy with its default options
EXAMPLES_OTHER_EVICTION = 6  # the other eviction orders (the admission path is the same)
WORKLOADS = jt.workloads(n=N, num_classes=2, max_prompt=6, max_output=6, max_arrival=8.0)
SYSTEMS = st.tuples(
    jt.systems(capacity=(6, 40), slotted=True, restart_on_evict=False),
    jt.systems(capacity=(6, 40), slotted=True, restart_on_evict=True),
    jt.systems(capacity=(6, 40), slotted=False, restart_on_evict=False),
    jt.systems(capacity=(6, 40), slotted=False, restart_on_evict=True),
)
VARIANTS = jt.policy_variants()


@pytest.fixture(scope="module", autouse=True)
def _fast_compile():
    with jt.fast_compile():
        yield


def test_every_registered_policy_has_a_twin():
    missing = [name for name in list_policies() if name not in REFERENCE_POLICIES]
    assert not missing, f"policies without a reference twin in jaxsched/reference/policies: {missing}"


def test_variants_cover_every_policy_and_eviction_order():
    names = {name for name, _ in VARIANTS}
    assert names == set(list_policies())
    assert ("greedy", {"eviction": "least_progressed"}) in VARIANTS
    assert ("greedy", {"eviction": "fewest_generated"}) in VARIANTS


@pytest.mark.parametrize("variant", VARIANTS, ids=jt.variant_id)
def test_jax_matches_reference(variant):
    name, options = variant
    if name not in REFERENCE_POLICIES:
        pytest.fail(f"policy {name!r} has no reference twin in jaxsched/reference/policies")

    @hypothesis.settings(jt.HYPOTHESIS_SETTINGS,
                         max_examples=EXAMPLES_OTHER_EVICTION if options else EXAMPLES)
    @hypothesis.given(workload=WORKLOADS, systems=SYSTEMS)
    def check(workload, systems):
        for system in systems:
            run, ref = jt.run_both(name, SHAPE, workload, system, options=options)
            jt.assert_same_trajectory(run, ref, label=f"{name} {options} {system}")

    check()
