"""Flow control (Dong & Cao 2026) and its baselines: JAX policies against their plain-Python
twins, hand-computed trajectories, the memory bound of Algorithm 1, vmapping over parameters
and parameter validation.

Shapes are fixed per test group so each policy compiles once and hypothesis examples reuse it.
"""

from __future__ import annotations

import functools

import chex
import hypothesis
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import strategies as st

from jaxsched.core import rollout, sim
from jaxsched import testing as jt
from jaxsched.core.model import SimShape
from jaxsched.policies import PolicyError, get_policy, make_params
from jaxsched.policies.flow_control import draw_budget, memory_time
from jaxsched.reference.simulator import reference_for, simulate_reference

SHAPE = jt.small_shape(max_batch=4, queue_size=6, horizon=32, num_classes=2)
N = 16
MAX_OUTPUT = 6
WORKLOADS = jt.workloads(n=N, num_classes=2, max_prompt=6, max_output=MAX_OUTPUT,
                         max_arrival=8.0)
SYSTEMS = jt.systems(capacity=(6, 40))
EXAMPLES = 12


# ------------------------------------------------------------------------------ helpers


@functools.lru_cache(maxsize=None)
def _admit_key_fn(horizon: int):
    """The admission keys the simulator derives from a rollout key (see ``jaxsched.core.sim``)."""
    return jax.jit(lambda key: jax.vmap(lambda t: sim.step_keys(key, t)[0])(
        jnp.arange(horizon)))


@functools.lru_cache(maxsize=None)
def _draw_fn(distribution: str):
    return jax.jit(jax.vmap(lambda k, b: draw_budget(k, b, distribution), in_axes=(0, None)))


def budget_draws(key, budget, distribution: str, horizon: int) -> list[int]:
    """``B_t`` for t < horizon, as the JAX policy draws them in a rollout with ``key``."""
    keys = _admit_key_fn(horizon)(key)
    return [int(b) for b in np.asarray(_draw_fn(distribution)(keys, jnp.float32(budget)))]


def run_pair(name, options, params, workload, system, key=None, shape=SHAPE):
    """JAX run and reference run of one workload; the twin gets the random budget draws
    (``flow_control``) or the slot count (``mc_*``) it cannot know otherwise."""
    key = jax.random.PRNGKey(0) if key is None else key
    jax_run = jt.run_jax(name, shape, workload, system, params=params, options=options, key=key)
    pol = get_policy(name, **options)
    pp = make_params(pol, {k: np.asarray(v) for k, v in params.items()},
                     num_classes=shape.num_classes)
    extra = {}
    if name == "flow_control" and options.get("budget_distribution", "fixed") != "fixed":
        extra["draws"] = budget_draws(key, pp["budget"], options["budget_distribution"],
                                      shape.horizon)
    if name in ("mc_sf", "mc_benchmark"):
        extra["max_batch"] = shape.max_batch
    twin = reference_for(name, jt.plain_params(pol, pp), {**options, **extra})
    ref = simulate_reference(workload, shape, jt.as_system(system), twin)
    return jax_run, ref


def column(run, field):
    return [rec[field] for rec in run.trajectory]


# --------------------------------------------------------------- JAX against reference

_BUDGET = st.floats(0.0, 3.0, allow_nan=False, width=32)
PARAMS = {
    "flow_control_known": st.builds(lambda a, b: {"budget": [a, b]}, _BUDGET, _BUDGET),
    "flow_control": st.builds(lambda b: {"budget": b}, st.floats(0.0, 4.0, width=32)),
    "alpha_protection": st.builds(lambda a: {"alpha": a}, st.floats(0.0, 0.875, width=32)),
    "mc_sf": st.builds(lambda s: {"length_scale": s}, st.floats(0.25, 3.0, width=32)),
    "mc_benchmark": st.builds(lambda s: {"length_scale": s}, st.floats(0.25, 3.0, width=32)),
    "reserve_full": st.builds(lambda m: {"max_new_tokens": m},
                              st.one_of(st.integers(1, MAX_OUTPUT + 1), st.just(1e9))),
}

VARIANTS = [  # default options as {} so the compiled simulators are shared with other tests
    ("flow_control_known", {}),
    ("flow_control_known", {"eviction": "fewest_generated"}),
    ("flow_control", {}),
    ("flow_control", {"eviction": "least_progressed"}),
    ("flow_control", {"budget_distribution": "poisson"}),
    ("flow_control", {"budget_distribution": "bernoulli"}),
    ("alpha_protection", {}),
    ("mc_sf", {}),
    ("mc_benchmark", {}),
    ("reserve_full", {}),
]


def _never_overflows(name, params) -> bool:
    """Rules that provably never overflow: exact or over-estimated predictions (mc_*), a
    reservation covering every output (reserve_full)."""
    if name in ("mc_sf", "mc_benchmark"):
        return float(np.float32(params["length_scale"])) >= 1.0
    if name == "reserve_full":
        return params["max_new_tokens"] >= MAX_OUTPUT
    return False


@pytest.mark.parametrize("name,options", VARIANTS, ids=lambda v: str(v))
def test_matches_reference(name, options):
    @hypothesis.given(wl=WORKLOADS, system=SYSTEMS, params=PARAMS[name],
                      seed=st.integers(0, 2**31 - 1))
    @hypothesis.settings(jt.HYPOTHESIS_SETTINGS, max_examples=EXAMPLES)
    def check(wl, system, params, seed):
        jax_run, ref = run_pair(name, options, params, wl, system, key=jax.random.PRNGKey(seed))
        jt.assert_same_trajectory(jax_run, ref, label=f"{name} {options} {params}")
        if _never_overflows(name, params):
            assert not any(column(jax_run, "overflow")), (name, params)

    check()


# --------------------------------------------------------------------- hand-computed


def saturated(count, prompt=1, output=2, cls=0, arrival=0.0):
    return [(arrival, prompt, output, cls)] * count


def test_fractional_credit_admits_1_1_2():
    # b = 4/3: A_t = c + b gives 1, 1, 2 and repeats; a long queue, room for everything.
    wl = jt.make_workload(saturated(N), n=N)
    run, ref = run_pair("flow_control_known", {}, {"budget": [4 / 3, 0.0]}, wl, 1000.0)
    assert column(run, "admitted")[:12] == [1, 1, 2] * 4
    jt.assert_same_trajectory(run, ref)
    run, _ = run_pair("flow_control", {}, {"budget": 4 / 3}, wl, 1000.0)
    assert column(run, "admitted")[:12] == [1, 1, 2] * 4


def test_per_class_fifo_is_not_blocked_by_other_classes():
    # Queue: three class-1 requests then class-0 ones. b = (1, 1/2): class 0 gets one per
    # iteration although the head of the queue is class 1; class 1 one every other iteration.
    reqs = saturated(3, cls=1) + saturated(9, cls=0)
    wl = jt.make_workload(reqs, n=N)
    run, ref = run_pair("flow_control_known", {}, {"budget": [1.0, 0.5]}, wl, 1000.0)
    assert column(run, "admitted")[:6] == [1, 2, 1, 2, 1, 2]
    jt.assert_same_trajectory(run, ref)


def test_unused_budget_is_not_banked():
    # Integer b = 2 and nothing waiting for 4 iterations, then 6 requests: 2, 2, 2 (Algorithm
    # 1's min(b, Q)), not a burst of the unused allowance.
    wl = jt.make_workload(saturated(6, output=1, arrival=4.0), n=N)
    run, _ = run_pair("flow_control_known", {}, {"budget": [2.0, 2.0]}, wl, 1000.0)
    assert column(run, "admitted")[:8] == [0, 0, 0, 0, 2, 2, 2, 0]
    run, _ = run_pair("flow_control", {}, {"budget": 2.5}, wl, 1000.0)
    # credit: 0.5, 0, 0.5, 0 | 2.5 -> 2 (c 0.5), 3 -> 3 (c 0), 2.5 -> 1 left (c 0.5)
    assert column(run, "admitted")[:7] == [0, 0, 0, 0, 2, 3, 1]


def test_flow_control_admits_without_memory_check_then_evicts_lifo():
    # Two requests (l = 4, o = 5), C = 10. Iteration 1: 6 + 6 > 10, the newest is evicted.
    # flow_control (no memory check) readmits it every iteration and evicts it again (LIFO:
    # the just-admitted one goes); greedy sees no room and waits until request 0 completes.
    wl = jt.make_workload([(0.0, 4, 5), (0.0, 4, 5)], n=N)
    fc, ref = run_pair("flow_control", {}, {"budget": 100.0}, wl, 10.0)
    jt.assert_same_trajectory(fc, ref)
    gr = jt.run_jax("greedy", SHAPE, wl, 10.0)
    assert column(fc, "admitted")[:6] == [2, 0, 1, 1, 1, 1]
    assert column(fc, "evicted")[:6] == [0, 1, 1, 1, 1, 0]
    assert column(fc, "memory")[:6] == [10, 6, 7, 8, 9, 6]
    assert column(gr, "admitted")[:6] == [2, 0, 0, 0, 0, 1]
    assert column(gr, "evicted")[:6] == [0, 1, 0, 0, 0, 0]
    # Both complete request 0 in iteration 4 and hold the same memory: only the admission
    # rule differs.
    assert column(fc, "memory") == column(gr, "memory")


def test_flow_control_with_room_equals_greedy():
    # Memory never binds: a large budget admits whatever greedy admits (the free slots).
    wl = jt.make_workload([(0.25 * i, 1 + i % 3, 1 + i % 5) for i in range(N)], n=N)
    fc, _ = run_pair("flow_control", {}, {"budget": 100.0}, wl, 1000.0)
    gr = jt.run_jax("greedy", SHAPE, wl, 1000.0)
    assert fc.trajectory == gr.trajectory


def test_alpha_protection_clears_every_resident():
    # C = 10, alpha = 0.2: admit while memory <= 8. Two requests (l = 3, o = 4) take 4 + 4 = 8;
    # iteration 2 needs 6 + 6 > 10: both are evicted (greedy would evict one).
    wl = jt.make_workload([(0.0, 3, 4), (0.0, 3, 4)], n=N)
    system = {"capacity": 10.0, "restart_on_evict": True}
    run, ref = run_pair("alpha_protection", {}, {"alpha": 0.2}, wl, system)
    jt.assert_same_trajectory(run, ref)
    assert column(run, "admitted")[:4] == [2, 0, 0, 2]
    assert column(run, "evicted")[:4] == [0, 0, 2, 0]
    assert column(run, "memory")[:3] == [8, 10, 0]
    # alpha = 0.5 (limit 5): one at a time.
    run, _ = run_pair("alpha_protection", {}, {"alpha": 0.5}, wl, system)
    assert column(run, "admitted")[:6] == [1, 0, 0, 0, 1, 0]
    assert not any(column(run, "overflow"))


def test_mc_sf_prefers_the_shortest_and_checks_future_memory():
    # Queue: long (l = 2, o = 8) then short (l = 2, o = 2). A request needs l + 1 + t at
    # offset t while it runs: the long one peaks at 2 + 8 = 10 (t = 7), the short at 4 (t = 1);
    # together the projection is 8 at t = 1 and 10 at t = 7.
    wl = jt.make_workload([(0.0, 2, 8), (0.0, 2, 2)], n=N)
    # C = 10: both fit at every check time; both rules admit both.
    sf, ref = run_pair("mc_sf", {}, {}, wl, 10.0)
    jt.assert_same_trajectory(sf, ref)
    assert column(sf, "admitted")[0] == 2
    # C = 9: the long one never fits (10 > 9). MC-SF takes the short one first, then stops at
    # the long one; MC-Benchmark is blocked by the long one at the head of the queue.
    sf, ref = run_pair("mc_sf", {}, {}, wl, 9.0)
    jt.assert_same_trajectory(sf, ref)
    bench, ref = run_pair("mc_benchmark", {}, {}, wl, 9.0)
    jt.assert_same_trajectory(bench, ref)
    assert column(sf, "admitted")[:3] == [1, 0, 0]
    assert column(sf, "completed")[:2] == [0, 1]
    assert sum(column(bench, "admitted")) == 0
    # Greedy ignores growth: it admits both at C = 9 and must evict later.
    gr = jt.run_jax("greedy", SHAPE, wl, 9.0)
    assert column(gr, "admitted")[0] == 2 and sum(column(gr, "evicted")) > 0


def test_mc_sf_admits_in_length_order_up_to_the_free_slots():
    # Five requests, lengths 5, 4, 3, 2, 1 in queue order; 4 slots, ample memory: MC-SF keeps
    # the 4 shortest (queue positions 1..4), not the first 4 in queue order.
    wl = jt.make_workload([(0.0, 1, 5 - i) for i in range(5)], n=N)
    sf, ref = run_pair("mc_sf", {}, {}, wl, 1000.0)
    jt.assert_same_trajectory(sf, ref)
    # The shortest (o = 1) completes in iteration 0, o = 2 in iteration 1, ...
    assert column(sf, "completed")[:4] == [1, 1, 1, 1]
    bench, _ = run_pair("mc_benchmark", {}, {}, wl, 1000.0)
    assert column(bench, "completed")[:2] == [0, 1]


def test_reserve_full_reserves_the_output():
    # Two requests (l = 2, o = 4) need 2 + 4 = 6 each: C = 11 holds one reservation at a time,
    # though both would fit the first iterations. max_new_tokens = 2 reserves 4 each: both
    # are admitted and the LIFO safety net evicts one when they grow.
    wl = jt.make_workload([(0.0, 2, 4), (0.0, 2, 4)], n=N)
    run, ref = run_pair("reserve_full", {}, {}, wl, 11.0)
    jt.assert_same_trajectory(run, ref)
    assert column(run, "admitted")[:6] == [1, 0, 0, 0, 1, 0]
    assert not any(column(run, "overflow"))
    run, ref = run_pair("reserve_full", {}, {"max_new_tokens": 2}, wl, 11.0)
    jt.assert_same_trajectory(run, ref)
    assert column(run, "admitted")[0] == 2
    # Memory 3 + 3, 4 + 4, 5 + 5, then 6 + 6 > 11: the newest goes in iteration 3.
    assert column(run, "evicted")[:5] == [0, 0, 0, 1, 0]


# ------------------------------------------------- Algorithm 1's memory bound (Thm. 3.3)

PAPER_CLASSES = ((2, 4), (2, 8), (2, 12))  # the paper's (10, 20), (10, 40), (10, 60) / 5
PAPER_SHAPE = SimShape(max_batch=32, queue_size=48, horizon=40, num_classes=3,
                       record_trace=True)
PAPER_N = 192


def paper_workload(seed: int, rate: float = 2.5):
    """Poisson(rate) arrivals per class per iteration: above every budget tested (the paper's
    lambda = 5 > b = 4 is an overload too), so every class always has requests waiting."""
    rng = np.random.default_rng(seed)
    reqs = []
    for t in range(PAPER_SHAPE.horizon):
        for k, (l, o) in enumerate(PAPER_CLASSES):
            reqs += [(float(t), l, o, k)] * int(rng.poisson(rate))
    return jt.make_workload(reqs[:PAPER_N], n=PAPER_N)


def budget_sequence(b: float, horizon: int) -> list[int]:
    """n_t = floor((t + 1) b) - floor(t b) (exact for dyadic b)."""
    return [int(np.floor((t + 1) * b) - np.floor(t * b)) for t in range(horizon)]


def memory_bound(budgets, horizon) -> int:
    """max_t sum_k sum_{j=1}^{o_k} (l_k + j) n^k_{t-j+1}: memory if every budget is used."""
    worst = 0
    seqs = [budget_sequence(b, horizon) for b in budgets]
    for t in range(horizon):
        total = 0
        for (l, o), n in zip(PAPER_CLASSES, seqs):
            total += sum((l + j) * n[t - j + 1] for j in range(1, o + 1) if t - j + 1 >= 0)
        worst = max(worst, total)
    return worst


def test_paper_setting_stays_within_the_memory_bound():
    # Integer budgets (Algorithm 1 as in the paper): memory <= sum_k b_k w_k, reached exactly
    # once every class is saturated, so C = 175 > 172 = sum b w for b = (1, 1, 1) (the paper:
    # 16240 < 16492) never overflows, and C = 171 does. Fractional (dyadic) budgets: the
    # activations are dominated by the fixed sequence n_t, so memory <= memory_bound(b) and
    # C = memory_bound(b) never overflows. One batched call per capacity setting.
    w = [memory_time(l, o) for l, o in PAPER_CLASSES]
    assert w == [18, 52, 102]
    pol = get_policy("flow_control_known")
    integer = np.array([[1.0, 1.0, 1.0], [2.0, 1.0, 0.0], [0.0, 0.0, 1.0], [1.0, 2.0, 0.0]])
    loads = integer @ np.array(w)  # 172, 88, 102, 122
    fractional = np.random.default_rng(0).integers(0, 13, size=(4, 3)) / 8
    bounds = np.array([memory_bound(b, PAPER_SHAPE.horizon) for b in fractional])
    budgets = np.concatenate([integer, fractional])
    wls = jt.stack([paper_workload(seed) for seed in range(2)])
    keys = jax.random.split(jax.random.PRNGKey(0), 2)

    def run(capacities):
        params = jt.stack([
            sim.SimParams(system=jt.as_system(float(c)),
                          policy=make_params(pol, {"budget": b}, num_classes=3))
            for b, c in zip(budgets, capacities)
        ])
        res = rollout.simulate(pol, PAPER_SHAPE, keys, wls, params, batched_params=True)
        peak = np.asarray(res.trace.memory).max(axis=-1)  # (P, W)
        return peak, np.asarray(res.trace.overflow).any(axis=-1)

    peak, overflow = run(np.concatenate([np.full(4, 175.0), bounds]))
    assert not overflow.any()
    np.testing.assert_array_equal(peak[:4], np.repeat(loads, 2).reshape(-1, 2))
    assert (peak[4:] <= bounds[:, None]).all()
    assert (peak[4:] >= 0.9 * (fractional @ np.array(w))[:, None]).all()  # the bound is close
    peak, overflow = run(np.concatenate([np.full(4, 171.0), bounds]))
    assert overflow[0].all() and not overflow[1:].any()  # 172 > 171: the bound is tight


# ---------------------------------------------------------------- vmap over parameters


@pytest.mark.parametrize("distribution", ["fixed", "poisson"])
def test_vmapped_budgets_equal_single_calls_without_retracing(distribution):
    options = {} if distribution == "fixed" else {"budget_distribution": distribution}
    pol = get_policy("flow_control", **options)
    wls = jt.stack([jt.make_workload([(0.25 * i, 1 + i % 4, 1 + (3 * i) % 6) for i in range(N)]),
                    jt.make_workload([(0.0, 2, 3)] * N)])
    keys = jax.random.split(jax.random.PRNGKey(7), 2)
    system = jt.as_system({"capacity": 24.0, "restart_on_evict": True})
    single = rollout.compiled_simulator(pol, SHAPE)  # shared with the tests above
    batched = rollout.compiled_simulator(pol, SHAPE, batched_params=True)

    def params(b):
        return sim.SimParams(system=system, policy=make_params(pol, {"budget": b}))

    for budgets in (np.linspace(0.0, 3.5, 8), np.linspace(0.3, 6.0, 8)):
        out = batched(keys, wls, jt.stack([params(b) for b in budgets]))
        for i, b in enumerate(budgets):
            one = single(keys, wls, params(b))
            chex.assert_trees_all_equal(jax.tree.map(lambda x: x[i], out.trace), one.trace)
    # Two batches of 8 settings and 16 single settings: one compiled program each.
    assert batched._cache_size() == 1 and single._cache_size() == 1
    assert len(set(np.asarray(out.trace.admitted).sum(axis=(1, 2)).tolist())) > 1


def test_per_class_budgets_vmap():
    pol = get_policy("flow_control_known")
    wls = jt.stack([jt.make_workload([(0.0, 1 + i % 3, 2 + i % 4, i % 2) for i in range(N)])])
    keys = jax.random.PRNGKey(1)[None]
    system = jt.as_system(30.0)
    rng = np.random.default_rng(0)
    budgets = rng.uniform(0.0, 2.5, size=(8, 2)).astype(np.float32)
    ps = [sim.SimParams(system=system, policy=make_params(pol, {"budget": b}, num_classes=2))
          for b in budgets]
    out = rollout.simulate(pol, SHAPE, keys, wls, jt.stack(ps), batched_params=True)
    for i, p in enumerate(ps):
        one = rollout.simulate(pol, SHAPE, keys, wls, p)
        chex.assert_trees_all_equal(jax.tree.map(lambda x: x[i], out.trace), one.trace)


# ----------------------------------------------------------------- params and options


@pytest.mark.parametrize("name,values,key", [
    ("flow_control_known", {"budget": [1.0, -0.5]}, "budget"),
    ("flow_control", {"budget": -1.0}, "budget"),
    ("flow_control", {"budget": float("nan")}, "budget"),
    ("alpha_protection", {"alpha": 1.0}, "alpha"),
    ("alpha_protection", {"alpha": -0.1}, "alpha"),
    ("mc_sf", {"length_scale": 0.0}, "length_scale"),
    ("mc_benchmark", {"length_scale": -1.0}, "length_scale"),
    ("reserve_full", {"max_new_tokens": 0}, "max_new_tokens"),
    ("reserve_full", {"max_new_tokens": 2.5}, "max_new_tokens"),
    ("flow_control_known", {"budget": [1.0, 1.0, 1.0]}, "budget"),
    ("flow_control", {"bduget": 1.0}, "bduget"),
])
def test_bad_params_are_refused_naming_the_key(name, values, key):
    with pytest.raises(PolicyError, match=key):
        make_params(get_policy(name), values, num_classes=2)


def test_bad_options_are_refused():
    with pytest.raises(PolicyError, match="budget_distribution"):
        get_policy("flow_control", budget_distribution="gamma")
    with pytest.raises(PolicyError, match="eviction"):
        get_policy("flow_control_known", eviction="oldest")
    with pytest.raises(PolicyError, match="eviction"):
        get_policy("alpha_protection", eviction="newest")
    with pytest.raises(ValueError, match="draws"):
        reference_for("flow_control", {"budget": 1.0}, {"budget_distribution": "poisson"})


def test_specs_and_flags():
    for name in ("flow_control_known", "flow_control", "alpha_protection", "mc_sf",
                 "mc_benchmark", "reserve_full"):
        pol = get_policy(name)
        for pname, spec in pol.params.items():
            assert spec.doc, (name, pname)
            assert spec.low is not None, (name, pname)
    assert get_policy("flow_control_known").params["budget"].per_class
    assert not get_policy("flow_control").params["budget"].per_class
    assert {n for n in ("flow_control_known", "flow_control", "alpha_protection", "mc_sf",
                        "mc_benchmark", "reserve_full") if get_policy(n).known_lengths} == \
        {"mc_sf", "mc_benchmark", "reserve_full"}


def test_fit_defaults_fill_the_memory_condition():
    info = {"capacity": 16492.0, "d0": 1.0, "d1": 0.0, "prompt_len": [10, 10, 10],
            "output_len": [20, 40, 60], "rate": [5.0, 5.0, 5.0], "weight": [1.0, 1.0, 1.0]}
    w = [memory_time(10, o) for o in (20, 40, 60)]
    assert w == [410, 1220, 2430]
    b = get_policy("flow_control_known").fit_defaults(info)["budget"]
    assert np.allclose(b, b[0]) and np.isclose(np.dot(b, w), 0.95 * 16492)
    # Saturated workloads: the weights give the mix.
    b2 = get_policy("flow_control_known").fit_defaults({**info, "rate": None,
                                                        "weight": [2.0, 1.0, 1.0]})["budget"]
    assert np.isclose(b2[0], 2 * b2[1]) and np.isclose(np.dot(b2, w), 0.95 * 16492)
    total = get_policy("flow_control").fit_defaults(info)["budget"]
    assert np.isclose(total, sum(b))
