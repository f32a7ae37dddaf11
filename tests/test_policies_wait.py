"""WAIT and Nested WAIT: JAX against the plain-Python twins, hand-computed trajectories of the
cohort and segment rules, WAIT at its fluid thresholds on a Poisson workload, vmapping over
parameters, fitted defaults and parameter validation.

One shape and one workload length for the equality tests, so each variant compiles once.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import hypothesis
from hypothesis import strategies as st

from jaxsched.core import rollout, sim
from jaxsched import theory
from jaxsched.workloads import generators as workload
from jaxsched import testing as jt
from jaxsched.core.model import SimShape, system_params
from jaxsched.policies import (
    PolicyError,
    QueueView,
    SchedView,
    SlotView,
    get_policy,
    list_policies,
    make_params,
    policy_options,
)
from jaxsched.policies.wait import check_shape, nested_chain
from jaxsched.reference.simulator import reference_for, simulate_reference
from jaxsched.reference.policies import REFERENCE_POLICIES, RefResident, RefView

SHAPE = jt.small_shape(max_batch=5, queue_size=6, horizon=32, num_classes=2)
N = 16
WORKLOADS = jt.workloads(n=N, num_classes=2, max_prompt=6, max_output=7, max_arrival=8.0)
SYSTEMS = jt.systems(capacity=(8, 48))
EXAMPLES = 12


def column(run, field):
    return [rec[field] for rec in run.trajectory]


def run_pair(name, options, params, wl, system, shape=SHAPE):
    """JAX and reference runs; the twin gets ``max_batch`` (cohorts must fit the free slots),
    which the reference view does not carry."""
    jax_run = jt.run_jax(name, shape, wl, system, params=params, options=options)
    pol = get_policy(name, **options)
    pp = make_params(pol, {k: np.asarray(v) for k, v in params.items()},
                     num_classes=shape.num_classes)
    twin = reference_for(name, jt.plain_params(pol, pp), {**options, "max_batch": shape.max_batch})
    return jax_run, simulate_reference(wl, shape, jt.as_system(system), twin)


def run(name, requests, capacity=100.0, options=None, **params):
    return jt.run_jax(name, SHAPE, jt.make_workload(requests, n=N), capacity, params=params,
                      options=options or {})


# --------------------------------------------------------------- JAX against reference

_n = st.integers(1, 3)
PARAMS = {
    "wait": st.fixed_dictionaries({
        "threshold": st.lists(_n, min_size=2, max_size=2),
        "batch_limit": st.integers(1, 7),
    }),
    "nested_wait": st.fixed_dictionaries({
        "boundary": st.lists(st.integers(1, 6), min_size=2, max_size=2).map(sorted),
        "threshold": st.lists(_n, min_size=2, max_size=2),
        "safety_buffer": st.sampled_from([0.0, 2.0, 6.5]),
    }),
}

VARIANTS = [
    ("wait", {}),
    ("wait", {"mode": "gated"}),
    ("wait", {"eviction": "least_progressed"}),
    ("nested_wait", {}),
    ("nested_wait", {"eviction": "fewest_generated"}),
]


@pytest.mark.parametrize("name,options", VARIANTS, ids=lambda v: str(v))
def test_matches_reference(name, options):
    seen = {"overflow": 0, "paused": 0}

    @hypothesis.given(wl=WORKLOADS, system=SYSTEMS, params=PARAMS[name])
    @hypothesis.settings(jt.HYPOTHESIS_SETTINGS, max_examples=EXAMPLES)
    def check(wl, system, params):
        jax_run, ref = run_pair(name, options, params, wl, system)
        jt.assert_same_trajectory(jax_run, ref, label=f"{name} {options} {params} {system}")
        seen["overflow"] += sum(column(jax_run, "overflow"))
        seen["paused"] += sum(r > d - c for r, d, c in zip(
            column(jax_run, "num_resident"), column(jax_run, "decode_tokens"),
            column(jax_run, "completed")))

    check()
    if name == "wait" and options.get("mode", "advance") == "advance":
        assert seen["overflow"] > 0  # the LIFO safety net is exercised
    else:
        assert seen["paused"] > 0  # residents wait with their cache


# --------------------------------------------------------------------- WAIT by hand

# class 0 arrives at t = 0, 1, 2, 3, 4, 5; class 1 at t = 1 and 3 (prompt 1, output 2)
COHORTS = [(0.0, 1, 2, 0), (1.0, 1, 2, 0), (1.0, 1, 2, 1), (2.0, 1, 2, 0), (3.0, 1, 2, 0),
           (3.0, 1, 2, 1), (4.0, 1, 2, 0), (5.0, 1, 2, 0)]


def test_wait_admits_a_cohort_only_at_the_threshold():
    """n = (3, 1): class 0 enters in cohorts of 3 when the third one waits (it2, it5); class 1
    one at a time. Residents advance every iteration (mode advance)."""
    out = run("wait", COHORTS, threshold=[3, 1])
    assert column(out, "admitted")[:7] == [0, 1, 3, 1, 0, 3, 0]
    assert column(out, "completed")[:7] == [0, 0, 1, 3, 1, 0, 3]
    assert column(out, "num_waiting")[:7] == [1, 2, 0, 1, 2, 0, 0]


def test_wait_gated_runs_a_class_only_when_its_cohort_enters():
    """n = (2, 1); class 0 at t = 0, 2, 3, 4, class 1 at t = 1, 3 (output 2). Mode gated: a
    class's residents run only when a cohort of it enters. it1: c1a runs; it2: cohort A runs,
    c1a waits; it3: c1b enters, c1a completes, A waits; it4: cohort B enters, A completes.
    Mode advance completes each one iteration after its cohort."""
    reqs = [(0.0, 1, 2, 0), (1.0, 1, 2, 1), (2.0, 1, 2, 0), (3.0, 1, 2, 0), (3.0, 1, 2, 1),
            (4.0, 1, 2, 0)]
    gated = run("wait", reqs, options={"mode": "gated"}, threshold=[2, 1])
    assert column(gated, "admitted")[:6] == [0, 1, 2, 1, 2, 0]
    assert column(gated, "decode_tokens")[:6] == [0, 1, 2, 2, 4, 0]
    assert column(gated, "completed")[:6] == [0, 0, 0, 1, 2, 0]
    advance = run("wait", reqs, threshold=[2, 1])
    assert column(advance, "admitted")[:6] == [0, 1, 2, 1, 2, 0]
    assert column(advance, "completed")[:6] == [0, 0, 1, 2, 1, 2]


def test_wait_cohort_waits_for_memory_and_seats():
    """A cohort enters whole or not at all: 3 requests of prompt 3 need 12 > C = 11; with
    C = 12 they enter; with batch_limit 2 they never do."""
    reqs = [(0.0, 3, 2, 0)] * 3
    assert column(run("wait", reqs, 11.0, threshold=[3, 1]), "admitted")[:3] == [0, 0, 0]
    assert column(run("wait", reqs, 12.0, threshold=[3, 1]), "admitted")[:3] == [3, 0, 0]
    assert sum(column(run("wait", reqs, 99.0, threshold=[3, 1], batch_limit=2), "admitted")) == 0


def _slot_view(rows, b=6):
    """SlotView from (cls, generated, is_new) rows (prompt 2, whole prefill pending iff
    generated == 0)."""
    valid = np.arange(b) < len(rows)
    rows = rows + [(0, 0, False)] * (b - len(rows))
    cls, gen, new = (np.asarray(x) for x in zip(*rows))
    return SlotView(valid=jnp.asarray(valid), prompt=jnp.full((b,), 2, jnp.int32),
                    output=jnp.full((b,), 9, jnp.int32), generated=jnp.asarray(gen, jnp.int32),
                    cached=jnp.asarray(np.where(gen > 0, 2 + gen, 0), jnp.int32),
                    cls=jnp.asarray(cls, jnp.int32), arrival=jnp.zeros((b,), jnp.float32),
                    is_new=jnp.asarray(new, bool))


def _sched(slots, w=6):
    z = jnp.zeros((w,), jnp.int32)
    q = QueueView(valid=jnp.zeros((w,), bool), prompt=z + 1, output=z + 1, kept=z, cls=z,
                  arrival=jnp.zeros((w,), jnp.float32))
    return SchedView(time=jnp.float32(0), iteration=jnp.int32(0), capacity=jnp.float32(99),
                     num_waiting=jnp.int32(0), queue=q, slots=slots, excess=jnp.float32(0))


def _ref_view(rows):
    res = [RefResident(i, 2, 9, g, 2 + g if g else 0, c, 0.0, new)
           for i, (c, g, new) in enumerate(rows)]
    return RefView(time=0.0, iteration=0, capacity=99.0, num_waiting=0, queue=[], residents=res)


def test_wait_caps_each_stage_at_n_j():
    """a_js = min(n_j, n_js): with n = (2, 1), of three class-0 residents at stage 2 the two
    oldest run; one class-1 resident per stage runs. (Two cohorts share a stage only after a
    readmission with kept tokens.)"""
    rows = [(0, 2, False), (0, 2, False), (1, 2, False), (0, 2, False), (1, 2, False),
            (0, 0, True)]
    pol = get_policy("wait")
    params = make_params(pol, {"threshold": [2, 1]}, num_classes=2)
    plan = pol.plan(jax.random.PRNGKey(0), params, (), _sched(_slot_view(rows)))
    expect = [True, True, True, False, False, True]
    assert plan.run.tolist() == expect
    twin = reference_for("wait", {"threshold": [2, 1], "batch_limit": 256})
    assert [r for r, _ in twin.plan(_ref_view(rows))] == expect


# -------------------------------------------------------------- Nested WAIT by hand

# prompt 1; pairs (output 2, output 4) arriving at t = 0, 5, 10
PAIRS = [(t, 1, o) for t in (0.0, 5.0, 10.0) for o in (2, 4)]


def test_nested_wait_segments_pause_when_an_entry_is_short():
    """boundary (2, 4), n = (2, 1). it0: cohort {r0, r1} enters and runs. it1-4: no cohort,
    segment 1 is short, everything pauses. it5: cohort {r2, r3}; segment 1 runs (r0 completes,
    r1 reaches stage 2, segment 2's entry). it6-9: segment 1 short, so segment 2 pauses too
    although r1 waits at its entry. it10: both run: r2, r3, r4, r5 and r1 decode (5 tokens)."""
    out = run("nested_wait", PAIRS, boundary=[2, 4], threshold=[2, 1])
    assert column(out, "admitted")[:11] == [2, 0, 0, 0, 0, 2, 0, 0, 0, 0, 2]
    assert column(out, "decode_tokens")[:11] == [2, 0, 0, 0, 0, 4, 0, 0, 0, 0, 5]
    assert column(out, "completed")[:11] == [0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 1]
    # n_2 = 2: one entrant is short of segment 2's threshold, r1 keeps waiting at it10
    out = run("nested_wait", PAIRS, boundary=[2, 4], threshold=[2, 2])
    assert column(out, "decode_tokens")[10] == 4
    # with its cache: memory at it6 = r1 (1 + 2) + r2, r3 (1 + 1 each)
    assert column(out, "memory")[6] == 3 + 2 + 2


def test_nested_wait_admission_keeps_the_safety_buffer():
    """A cohort of two prompts of 3 needs 2 (3 + 1) = 8 tokens: with C = 10 a buffer of 2
    allows it, a buffer of 2.5 does not; fewer than n_1 waiting never enter."""
    reqs = [(0.0, 3, 2), (0.0, 3, 2)]
    ok = run("nested_wait", reqs, 10.0, boundary=[2, 9], threshold=[2, 1], safety_buffer=2.0)
    no = run("nested_wait", reqs, 10.0, boundary=[2, 9], threshold=[2, 1], safety_buffer=2.5)
    few = run("nested_wait", reqs[:1], 99.0, boundary=[2, 9], threshold=[2, 1])
    assert column(ok, "admitted")[0] == 2
    assert sum(column(no, "admitted")) == 0
    assert sum(column(few, "admitted")) == 0


def test_nested_wait_runs_its_residents_while_memory_refuses_the_cohort():
    """C = 8, n = (1, 1), two prompts of 3 (output 4) at t = 0. it0: r0 enters (4 tokens).
    it1-3: r1 waits but r0 (5, 6, 7 tokens) + r1 (4) > C: the cohort is refused for memory,
    not for want of arrivals, so r0 keeps running (the paper's rule would pause it for ever:
    nothing would complete and no memory would be freed) and completes at it3; it4: r1
    enters. The twin agrees."""
    reqs = [(0.0, 3, 4), (0.0, 3, 4)]
    out = run("nested_wait", reqs, 8.0, boundary=[2, 9], threshold=[1, 1])
    assert column(out, "admitted")[:5] == [1, 0, 0, 0, 1]
    assert column(out, "decode_tokens")[:5] == [1, 1, 1, 1, 1]
    assert column(out, "completed")[:5] == [0, 0, 0, 1, 0]
    assert column(out, "memory")[:5] == [4, 5, 6, 7, 4]
    params = {"boundary": [2, 9], "threshold": [1, 1], "safety_buffer": 0.0}
    jax_run, ref = run_pair("nested_wait", {}, params, jt.make_workload(reqs, n=N), 8.0)
    jt.assert_same_trajectory(jax_run, ref, label="nested_wait blocked")


def test_nested_wait_reads_no_lengths_or_classes():
    """Swapping the output lengths and classes of waiting requests does not change admission
    or the plan until one completes."""
    pol = get_policy("nested_wait")
    assert not pol.known_lengths
    a = run("nested_wait", [(0.0, 2, 5, 0), (0.0, 2, 9, 1)], boundary=[3, 7], threshold=[2, 1])
    b = run("nested_wait", [(0.0, 2, 9, 1), (0.0, 2, 6, 0)], boundary=[3, 7], threshold=[2, 1])
    for f in ("admitted", "decode_tokens", "memory"):
        assert column(a, f)[:4] == column(b, f)[:4]


# ------------------------------------------------------- WAIT at its fluid thresholds

FLUID = {"prompt_len": [4, 2], "output_len": [6, 10], "rate": [1.5, 0.7],
         "capacity": 320.0, "d0": 1.0, "d1": 0.002}


@pytest.mark.parametrize("mode", ["advance", "gated"])
def test_wait_at_fluid_thresholds_is_eviction_free_at_full_throughput(mode):
    """Two Poisson classes, d1 > 0: the fitted thresholds satisfy d0 + d1 M^pi <= n_j/lambda_j
    and M^pi <= C, so WAIT never evicts, memory stays within one cohort per stage
    (sum_j n_j l'_j (l_j + (l'_j + 1)/2) in this model) and the token throughput is within a
    few percent of sum_j lambda_j l'_j."""
    pol = get_policy("wait", mode=mode)
    fitted = pol.fit_defaults({**FLUID, "weight": FLUID["rate"]})
    expect = theory.wait_thresholds(FLUID["prompt_len"], FLUID["output_len"], FLUID["rate"],
                                    capacity=FLUID["capacity"], d0=FLUID["d0"], d1=FLUID["d1"])
    assert fitted["threshold"] == list(expect.thresholds) and expect.feasible
    horizon = 1200
    shape = SimShape(max_batch=64, queue_size=16, horizon=horizon, num_classes=2, warmup=120)
    duration = horizon * (FLUID["d0"] + FLUID["d1"] * FLUID["capacity"])
    n = workload.poisson_num_requests(FLUID["rate"], duration)
    keys = jax.random.split(jax.random.PRNGKey(0), 4)
    wls = jax.vmap(lambda k: workload.poisson(k, jnp.array(FLUID["prompt_len"]),
                                              jnp.array(FLUID["output_len"]),
                                              jnp.array(FLUID["rate"]), duration, n))(keys)
    params = sim.SimParams(system=system_params(FLUID["capacity"], FLUID["d0"], FLUID["d1"]),
                           policy=make_params(pol, fitted, num_classes=2))
    m = {k: np.asarray(v) for k, v in rollout.simulate(pol, shape, keys, wls, params).metrics.items()}
    target = sum(r * o for r, o in zip(FLUID["rate"], FLUID["output_len"]))
    assert np.all(m["evictions"] == 0) and np.all(m["overflow_steps"] == 0)
    bound = sum(nj * o * (l + (o + 1) / 2) for nj, l, o in
                zip(fitted["threshold"], FLUID["prompt_len"], FLUID["output_len"]))
    assert np.all(m["peak_memory"] <= bound) and bound <= expect.memory <= FLUID["capacity"]
    assert abs(float(np.mean(m["tokens_per_time"])) / target - 1) < 0.03
    assert np.all(m["queue_final"] < 20)  # the queues stay short: stable


# ---------------------------------------------------------------- vmap over params


SETTINGS8 = {
    "wait": [{"threshold": [a, b], "batch_limit": c}
             for a, b, c in zip([1, 2, 3, 1, 2, 3, 1, 2], [1, 1, 2, 3, 3, 2, 2, 1],
                                [5, 5, 4, 3, 9, 5, 2, 4])],
    "nested_wait": [{"boundary": bd, "threshold": th, "safety_buffer": sb}
                    for bd, th, sb in zip([[1, 3], [2, 2], [2, 5], [3, 6], [1, 6], [4, 4],
                                           [2, 3], [5, 6]],
                                          [[1, 1], [2, 1], [2, 2], [3, 1], [1, 2], [2, 3],
                                           [3, 3], [1, 1]],
                                          [0, 1, 2, 3, 0, 5, 0, 8])],
}


@pytest.mark.parametrize("name,options", [("wait", {"mode": "gated"}), ("nested_wait", {})])
def test_vmapped_settings_equal_single_calls_without_retracing(name, options):
    pol = get_policy(name, **options)
    system = jt.as_system({"capacity": 30.0, "d0": 1.0, "d1": 0.125})
    ps = [sim.SimParams(system=system, policy=make_params(pol, v, num_classes=2))
          for v in SETTINGS8[name]]
    wls = jt.stack([jt.make_workload([(0.25 * i, 1 + (5 * i) % 6, 1 + (3 * i) % 7, i % 2)
                                      for i in range(N)])])
    keys = jax.random.PRNGKey(3)[None]
    # the simulators the rest of the module compiled (same policy, shape and N): a new
    # parameter setting must not add an entry to their jit caches
    single = rollout.compiled_simulator(pol, SHAPE, False)
    batched = rollout.compiled_simulator(pol, SHAPE, True)
    out = batched(keys, wls, jt.stack(ps))
    single(keys, wls, ps[0])
    sizes = (single._cache_size(), batched._cache_size())
    for i, p in enumerate(ps):
        one = single(keys, wls, p)
        for f in ("memory", "admitted", "decode_tokens", "evicted", "time"):
            np.testing.assert_array_equal(np.asarray(getattr(out.trace, f))[i],
                                          np.asarray(getattr(one.trace, f)), err_msg=f)
    batched(keys, wls, jt.stack(ps[::-1]))
    assert (single._cache_size(), batched._cache_size()) == sizes
    assert len({tuple(np.asarray(out.trace.memory[i, 0]).tolist()) for i in range(8)}) > 2


# ----------------------------------------------------------------- fitted defaults


def test_fit_defaults_practical_rule_without_rates():
    pol = get_policy("wait")
    info = {**FLUID, "rate": None, "weight": [3.0, 1.0]}
    # n_j = max(1, floor(B rho_j / (l'_j + 1))), B = 256: 256*0.75/7 = 27.4, 256*0.25/11 = 5.8
    assert pol.fit_defaults(info) == {"threshold": [27, 5]}
    assert pol.fit_defaults({**info, "params": {"batch_limit": 40}}) == {"threshold": [4, 1]}


def test_fit_defaults_refuse_infeasible_settings_in_one_line():
    pol = get_policy("wait")
    with pytest.raises(PolicyError, match="infeasible") as err:
        pol.fit_defaults({**FLUID, "capacity": 200.0, "weight": [1, 1]})  # M^pi = 301 > C
    assert "\n" not in str(err.value) and "wait" in str(err.value)
    with pytest.raises(PolicyError, match="unstable"):
        pol.fit_defaults({**FLUID, "d1": 0.01, "weight": [1, 1]})
    nested = get_policy("nested_wait")
    with pytest.raises(PolicyError, match="nested_wait") as err:
        nested.fit_defaults({**FLUID, "capacity": 50.0, "weight": [1, 1]})
    assert "\n" not in str(err.value)


def test_nested_fit_defaults_sort_segments_and_size_the_buffer():
    nested = get_policy("nested_wait")
    info = {"capacity": 1e6, "d0": 1.0, "d1": 0.0, "prompt_len": [10] * 4,
            "output_len": [40, 20, 160, 80], "rate": [0.04, 0.02, 0.16, 0.08],
            "weight": [1, 1, 1, 1], "horizon": 2000}
    fit = nested.fit_defaults(info)
    assert fit["boundary"] == [20, 40, 80, 160]
    n = fit["threshold"]
    check = theory.nested_wait(10, [20, 40, 80, 160], [0.02, 0.04, 0.08, 0.16], n, d0=1.0,
                               d1=0.0, horizon=2000.0, capacity=1e6)
    assert check.feasible and fit["safety_buffer"] == pytest.approx(sum(check.buffer))
    assert n == nested_chain(n[0], list(check.continue_prob))
    # saturated: the largest chain that fits; duplicates give empty segments
    sat = nested.fit_defaults({**info, "rate": None, "capacity": 3e5})
    assert sat["threshold"][0] > n[0]
    dup = nested.fit_defaults({**info, "output_len": [20, 20, 40, 40]})
    assert dup["boundary"] == [20, 20, 40, 40] and dup["threshold"][0] == dup["threshold"][1]
    make_params(nested, dup, num_classes=4)


def test_nested_fit_falls_back_to_the_fluid_thresholds():
    """wait-high's numbers: rates 3:2:1 make p = (1/2, 1/3), and the strict ratios need a chain
    such as (6, 4, 2), whose M^pi = 164,720 exceeds C; the fluid thresholds
    ceil(Lambda_k t) = (6, 3, 1) (M^pi = 120,620, entry cohorts (20 + 100) 3 + (20 + 200) 1
    = 580) fit. With too little memory for both, one line names both reasons."""
    nested = get_policy("nested_wait")
    info = {"capacity": 136490.0, "d0": 0.0276, "d1": 3.5e-7, "prompt_len": [20] * 3,
            "output_len": [100, 200, 300], "rate": [42.1, 28.1, 14.0], "weight": [1] * 3,
            "horizon": 3000}
    fit = nested.fit_defaults(info)
    assert fit == {"boundary": [100, 200, 300], "threshold": [6, 3, 1], "safety_buffer": 580.0}
    with pytest.raises(PolicyError, match="nested_wait: no feasible thresholds") as err:
        nested.fit_defaults({**info, "capacity": 121199.0})
    msg = str(err.value)
    assert "\n" not in msg and "fluid thresholds [6, 3, 1]" in msg and "121200 > C" in msg


# ----------------------------------------------------------------- params and shapes


@pytest.mark.parametrize("name,values,key", [
    ("wait", {"threshold": [1, 0]}, "threshold"),
    ("wait", {"threshold": [1, -2]}, "threshold"),
    ("wait", {"threshold": [1.5, 2]}, "threshold"),
    ("wait", {"threshold": [1, 2, 3]}, "threshold"),
    ("wait", {"batch_limit": 0}, "batch_limit"),
    ("nested_wait", {"boundary": [0, 3]}, "boundary"),
    ("nested_wait", {"threshold": [2, -1]}, "threshold"),
    ("nested_wait", {"safety_buffer": -1.0}, "safety_buffer"),
    ("nested_wait", {"safety_buffer": float("inf")}, "safety_buffer"),
    ("nested_wait", {"treshold": [1, 1]}, "treshold"),
])
def test_bad_params_are_refused_naming_the_key(name, values, key):
    with pytest.raises(PolicyError, match=key):
        make_params(get_policy(name), values, num_classes=2)


@pytest.mark.parametrize("name,values,key", [
    ("wait", {"threshold": [7, 1]}, "queue_size"),
    ("wait", {"threshold": [3, 1], "batch_limit": 2}, "batch_limit"),
    ("nested_wait", {"threshold": [6, 1]}, "threshold"),
    ("nested_wait", {"threshold": [2, 6]}, "max_batch"),
    ("nested_wait", {"boundary": [5, 3]}, "boundary"),
])
def test_thresholds_a_shape_cannot_reach_are_refused(name, values, key):
    pol = get_policy(name)
    with pytest.raises(PolicyError, match=key):
        check_shape(pol, values, SHAPE)
    # the parameter dict (with defaults) and batched values are checked the same way
    with pytest.raises(PolicyError, match=key):
        check_shape(pol, jt.stack([make_params(pol, values, num_classes=2)] * 2), SHAPE)


def test_feasible_params_pass_the_shape_check():
    for name, values in SETTINGS8.items():
        pol = get_policy(name)
        for v in values:
            check_shape(pol, make_params(pol, v, num_classes=2), SHAPE)
    check_shape("greedy", {"anything": 1}, SHAPE)


def test_registered_with_twins_options_and_documented_params():
    assert policy_options("wait") == {"eviction": "newest", "mode": "advance"}
    assert policy_options("nested_wait") == {"eviction": "newest"}
    for name in ("wait", "nested_wait"):
        assert name in list_policies() and name in REFERENCE_POLICIES
        pol = get_policy(name)
        assert pol.fit_defaults is not None
        for pname, spec in pol.params.items():
            assert spec.doc and spec.low is not None, pname
    assert get_policy("wait").params["threshold"].per_class
    assert get_policy("wait").known_lengths and not get_policy("nested_wait").known_lengths
    with pytest.raises(PolicyError, match="mode"):
        get_policy("wait", mode="paper")
