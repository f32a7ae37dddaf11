"""vLLM, Sarathi-Serve and SGLang policies: JAX against their plain-Python twins, hand-computed
trajectories of each rule (token budgets and chunking, the watermark, the new-token ratio,
retraction), vmapping over parameters and parameter validation.

One shape and one workload length for the module, so each policy variant compiles once and
every hypothesis example reuses it.
"""

from __future__ import annotations

import chex
import hypothesis
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import strategies as st

from jaxsched.core import rollout, sim
from jaxsched import testing as jt
from jaxsched.core.model import BIG_CHUNK
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
from jaxsched.policies.production import budget_plan, retract
from jaxsched.reference.simulator import reference_for, simulate_reference
from jaxsched.reference.policies import REFERENCE_POLICIES, RefResident, RefView

SHAPE = jt.small_shape(max_batch=4, queue_size=6, horizon=32, num_classes=2)
N = 16
MAX_OUTPUT = 6
WORKLOADS = jt.workloads(n=N, num_classes=2, max_prompt=12, max_output=MAX_OUTPUT,
                         max_arrival=8.0)
SYSTEMS = jt.systems(capacity=(14, 48))
EXAMPLES = 12


def column(run, field):
    return [rec[field] for rec in run.trajectory]


def run_pair(name, options, params, workload, system):
    return jt.run_both(name, SHAPE, workload, system, params=params, options=options)


# --------------------------------------------------------------- JAX against reference

_count = st.integers
PARAMS = {
    "vllm": st.fixed_dictionaries({
        "max_num_seqs": _count(1, 5),
        "max_num_batched_tokens": st.one_of(_count(1, 14), st.just(2048)),
        "watermark": st.sampled_from([0.0, 0.01, 0.1, 0.25, 0.5]),
    }),
    "sarathi": st.fixed_dictionaries({
        "chunk_size": st.one_of(_count(1, 14), st.just(512)),
        "max_num_seqs": _count(1, 5),
    }),
    "sglang": st.fixed_dictionaries({
        "new_token_ratio_init": st.sampled_from([0.0, 0.3, 0.7, 1.0]),
        "new_token_ratio_min": st.sampled_from([0.0, 0.098, 0.25]),
        "new_token_ratio_decay_steps": st.sampled_from([1, 3, 7, 600]),
        "max_new_tokens": st.one_of(_count(1, MAX_OUTPUT + 2), st.just(4096)),
        "retract_steps": _count(0, 4),
    }),
}

VARIANTS = [
    ("vllm", {}),
    ("vllm", {"eviction": "least_progressed"}),
    ("vllm", {"eviction": "fewest_generated"}),
    ("vllm", {"scheduler": "v0"}),
    ("sarathi", {}),
    ("sarathi", {"eviction": "fewest_generated"}),
    ("sglang", {}),
    ("sglang", {"eviction": "newest"}),
    ("sglang", {"eviction": "least_progressed"}),
]


@pytest.mark.parametrize("name,options", VARIANTS, ids=lambda v: str(v))
def test_matches_reference(name, options):
    seen = {"overflow": 0, "chunked": 0}

    @hypothesis.given(wl=WORKLOADS, system=SYSTEMS, params=PARAMS[name])
    @hypothesis.settings(jt.HYPOTHESIS_SETTINGS, max_examples=EXAMPLES)
    def check(wl, system, params):
        jax_run, ref = run_pair(name, options, params, wl, system)
        jt.assert_same_trajectory(jax_run, ref, label=f"{name} {options} {params} {system}")
        seen["overflow"] += sum(column(jax_run, "overflow"))
        seen["chunked"] += sum(p > 0 and a == 0 for p, a in
                               zip(column(jax_run, "prefill_tokens"), column(jax_run, "admitted")))

    check()
    # The examples exercise the interesting branches (eviction; prefill continuing later).
    assert seen["overflow"] > 0
    if name in ("vllm", "sarathi") and options.get("scheduler") != "v0":
        assert seen["chunked"] > 0


# ----------------------------------------------------------------- token budgets


def test_sarathi_chunks_under_the_budget_decodes_first():
    """chunk_size 4; r0 (prompt 10, output 2), r1 (prompt 3, output 1) at t=0.
    it0: r0 chunk 4, r1 refused (no budget left); it1: r0 chunk 4; it2: r0 chunk 2 + first
    token, r1 admitted with chunk 2; it3: r0 decodes (1), r1 chunk 1 + token; both complete."""
    wl = jt.make_workload([(0.0, 10, 2), (0.0, 3, 1)], n=N)
    run = jt.run_jax("sarathi", SHAPE, wl, 100.0, params={"chunk_size": 4})
    assert column(run, "admitted")[:5] == [1, 0, 1, 0, 0]
    assert column(run, "prefill_tokens")[:5] == [4, 4, 4, 1, 0]
    assert column(run, "decode_tokens")[:5] == [0, 0, 1, 2, 0]
    assert column(run, "memory")[:5] == [4, 8, 13, 16, 0]
    assert column(run, "completed")[:5] == [0, 0, 0, 2, 0]


def test_sarathi_admission_needs_this_iterations_memory():
    """As above with C = 12: at it2 r1's first chunk (2) would make 13 > 12, at it3 its chunk
    3 + token would make 12 + 4; it is admitted at it4, after r0 completed."""
    wl = jt.make_workload([(0.0, 10, 2), (0.0, 3, 1)], n=N)
    run = jt.run_jax("sarathi", SHAPE, wl, 12.0, params={"chunk_size": 4})
    assert column(run, "admitted")[:5] == [1, 0, 0, 0, 1]
    assert column(run, "prefill_tokens")[:5] == [4, 4, 2, 0, 3]
    assert not any(column(run, "overflow"))


def test_vllm_chunks_a_prompt_longer_than_the_budget():
    """max_num_batched_tokens 4: a 10-token prompt prefills 4, 4, 2 (v1 chunked prefill); a
    request arriving while r0 decodes gets budget 4 - 1 = 3 for its first chunk."""
    wl = jt.make_workload([(0.0, 10, 4), (3.0, 6, 1)], n=N)
    run = jt.run_jax("vllm", SHAPE, wl, 100.0, params={"max_num_batched_tokens": 4})
    assert column(run, "prefill_tokens")[:6] == [4, 4, 2, 3, 3, 0]
    assert column(run, "decode_tokens")[:6] == [0, 0, 1, 1, 2, 1]
    assert column(run, "admitted")[:6] == [1, 0, 0, 1, 0, 0]


def test_vllm_watermark_blocks_admission():
    """C = 20. r0 (prompt 10, output 5) needs 11; r1 (prompt 4) 5 more and r2 (prompt 1) 2
    more: with watermark 0 all three fit (2 left). With 0.25 C = 5 kept free, r1 would leave
    4: it waits until r0 completes (it4), and the refusal blocks r2 behind it (FCFS)."""
    wl = jt.make_workload([(0.0, 10, 5), (0.0, 4, 2), (0.0, 1, 1)], n=N)
    free = jt.run_jax("vllm", SHAPE, wl, 20.0, params={"watermark": 0.0})
    held = jt.run_jax("vllm", SHAPE, wl, 20.0, params={"watermark": 0.25})
    assert column(free, "admitted")[:6] == [3, 0, 0, 0, 0, 0]
    assert column(held, "admitted")[:6] == [1, 0, 0, 0, 0, 2]
    assert not any(column(held, "overflow"))


def test_vllm_max_num_seqs_caps_residents():
    wl = jt.make_workload([(0.0, 1, 3)] * 3, n=N)
    run = jt.run_jax("vllm", SHAPE, wl, 100.0, params={"max_num_seqs": 2})
    assert column(run, "num_resident")[:3] == [2, 2, 0]
    assert column(run, "admitted")[:4] == [2, 0, 0, 1]


def test_vllm_preempts_the_newest_on_overflow():
    """No reservation for growth: two requests fill C = 8 and the newer is preempted."""
    wl = jt.make_workload([(0.0, 2, 4), (0.0, 2, 4)], n=N)
    run = jt.run_jax("vllm", SHAPE, wl, 8.0, params={"watermark": 0.0})
    assert column(run, "admitted")[0] == 2
    k = column(run, "overflow").index(True)
    assert column(run, "evicted")[k] == 1 and column(run, "num_resident")[k] == 1


def test_vllm_admits_nothing_in_an_iteration_that_preempts():
    """vLLM 0.32's v1 scheduler skips its waiting queue in a step that preempted
    (``if not preempted_reqs`` in ``Scheduler.schedule``). The policy needs no rule of its
    own for it: admission counts every resident at ``l + s + 1`` (at least its memory under
    the plan), so an admission leaves ``M_k <= C`` and an overflowing iteration admitted
    nothing (the twin follows: test_matches_reference). The examples overflow with requests
    other than the victims left waiting."""
    seen = {"overflow_waiting": 0}

    @hypothesis.given(wl=WORKLOADS, system=SYSTEMS, params=PARAMS["vllm"])
    @hypothesis.settings(jt.HYPOTHESIS_SETTINGS, max_examples=EXAMPLES)
    def check(wl, system, params):
        for rec in jt.run_jax("vllm", SHAPE, wl, system, params=params).trajectory:
            if rec["overflow"]:
                assert rec["admitted"] == 0, (params, system)
                seen["overflow_waiting"] += rec["num_waiting"] > rec["evicted"]

    check()
    assert seen["overflow_waiting"] > 0  # overflows with requests left waiting


def test_vllm_v0_prefill_only_iterations_stall_decodes():
    """Slotted. r0 (prompt 4, output 3) at t=0, r1 (prompt 2, output 1) at t=1. v0: it0 r0
    prefills (+ token 1); it1 is prefill-only: r1 prefills and completes while r0 pauses; r0
    decodes at it2 and completes at it3. v1 runs r0's decode beside r1's prefill at it1, so r0
    completes one iteration earlier."""
    wl = jt.make_workload([(0.0, 4, 3), (1.0, 2, 1)], n=N)
    v0 = jt.run_jax("vllm", SHAPE, wl, 100.0, options={"scheduler": "v0"})
    v1 = jt.run_jax("vllm", SHAPE, wl, 100.0)
    assert column(v0, "admitted")[:5] == [1, 1, 0, 0, 0]
    assert column(v0, "prefill_tokens")[:5] == [4, 2, 0, 0, 0]
    assert column(v0, "decode_tokens")[:5] == [1, 1, 1, 1, 0]
    assert column(v0, "memory")[:5] == [5, 8, 6, 7, 0]
    assert column(v0, "completed")[:5] == [0, 1, 0, 1, 0]
    assert column(v1, "completed")[:4] == [0, 1, 1, 0]


def test_vllm_v0_admits_whole_prompts_within_the_budget():
    """max_num_batched_tokens 5: prompts 3, 3 at t=0 go in two prefill-only iterations (3 + 3
    > 5); a prompt of 8 > 5 is admitted alone (never chunked)."""
    wl = jt.make_workload([(0.0, 3, 2), (0.0, 3, 2), (0.0, 8, 1)], n=N)
    run = jt.run_jax("vllm", SHAPE, wl, 100.0, params={"max_num_batched_tokens": 5},
                     options={"scheduler": "v0"})
    assert column(run, "admitted")[:4] == [1, 1, 1, 0]
    assert column(run, "prefill_tokens")[:4] == [3, 3, 8, 0]
    assert column(run, "decode_tokens")[:5] == [1, 1, 1, 2, 0]
    with pytest.raises(PolicyError, match="scheduler"):
        get_policy("vllm", scheduler="v2")


def _slots(rows, b=4):
    """A SlotView from (prompt, generated, cached, is_new) rows, padded to b slots."""
    pad = [(0, 0, 0, False)] * (b - len(rows))
    p, g, c, new = (jnp.asarray(x) for x in zip(*(rows + pad)))
    valid = jnp.arange(b) < len(rows)
    z = jnp.zeros((b,), jnp.int32)
    return SlotView(valid=valid, prompt=p.astype(jnp.int32), output=z + 100,
                    generated=g.astype(jnp.int32), cached=c.astype(jnp.int32), cls=z,
                    arrival=jnp.zeros((b,), jnp.float32), is_new=new.astype(bool))


def test_budget_plan_decodes_first_then_oldest_prefills():
    # decoding (prompt 3, 2 generated), partial prefill (8 left), decoding, new (5 to go)
    slots = _slots([(3, 2, 5, False), (10, 0, 2, False), (4, 1, 5, False), (5, 0, 0, True)])
    run, chunk, need, left = budget_plan(slots, jnp.int32(7))
    assert run.tolist() == [True, True, True, False]
    assert chunk.tolist() == [0, 5, 0, 0]
    assert need.tolist() == [6, 7, 6, 0]
    assert int(left) == 0
    run, chunk, need, left = budget_plan(slots, jnp.int32(20))
    assert chunk.tolist() == [0, 8, 0, 5] and int(left) == 5
    assert need.tolist() == [6, 11, 6, 6]
    run, chunk, _, _ = budget_plan(slots, jnp.int32(1))  # only the oldest decode fits
    assert run.tolist() == [True, False, False, False]


# ------------------------------------------------------------------------- SGLang


def _view(slots, capacity=100.0, excess=0.0, w=6):
    z = jnp.zeros((w,), jnp.int32)
    queue = QueueView(valid=jnp.zeros((w,), bool), prompt=z + 1, output=z + 1, kept=z, cls=z,
                      arrival=jnp.zeros((w,), jnp.float32))
    return SchedView(time=jnp.float32(0), iteration=jnp.int32(0),
                     capacity=jnp.float32(capacity), num_waiting=jnp.int32(0), queue=queue,
                     slots=slots, excess=jnp.float32(excess))


def test_sglang_ratio_decays_linearly_and_resets_after_retraction():
    pol = get_policy("sglang")
    values = {"new_token_ratio_init": 0.7, "new_token_ratio_min": 0.1,
              "new_token_ratio_decay_steps": 4}
    params = make_params(pol, values)
    twin = reference_for("sglang", jt.plain_params(pol, params))
    admit = jax.jit(pol.admit)
    evict = jax.jit(pol.evict)
    key = jax.random.PRNGKey(0)
    slots = _slots([(3, 1, 4, False), (2, 5, 7, False)])
    need = jnp.array([5, 8, 0, 0], jnp.int32)
    pstate = pol.init(params, SHAPE)
    ref_view = RefView(time=0.0, iteration=0, capacity=100.0, num_waiting=0, queue=[],
                       residents=[RefResident(i, 3, 100, 1, 4, 0, 0.0, False) for i in range(2)])
    ratios, ref_ratios = [], []
    overflow_at = {6}
    for k in range(10):
        _, pstate = admit(key, params, pstate, _view(slots))
        twin.admit(ref_view)
        ratios.append(float(pstate.ratio))
        ref_ratios.append(float(twin.ratio))
        excess = 5.0 if k in overflow_at else -10.0
        _, pstate = evict(key, params, pstate, _view(slots, excess=excess), need)
        ref_view.excess = excess
        twin.evict(ref_view, [5, 8])
    d = np.float32(np.float32(0.6) / np.float32(4))
    expect = [0.7, 0.7 - d, 0.7 - 2 * d, 0.7 - 3 * d, 0.1, 0.1, 0.1, 0.7, 0.7 - d, 0.7 - 2 * d]
    np.testing.assert_allclose(ratios, expect, rtol=1e-6)
    assert ratios == ref_ratios


def test_sglang_admission_waits_for_the_ratio_to_decay():
    """C = 30, max_new_tokens 10, ratio 1.0 decaying by 0.1 per iteration. r0 (prompt 5) is
    admitted at it0; r1 (prompt 5) arrives at t=1: at it1 the estimate
    0.9 * ((10 - 1) + 10) = 17.1 exceeds the 30 - 7 - 6 = 17 left; at it2 0.8 * 18 = 14.4 <= 16.
    Without decay (ratio stays 1.0) r1 waits for r0 to complete."""
    wl = jt.make_workload([(0.0, 5, 12), (1.0, 5, 3)], n=N)
    base = {"new_token_ratio_init": 1.0, "new_token_ratio_min": 0.0, "max_new_tokens": 10}
    run = jt.run_jax("sglang", SHAPE, wl, 30.0, params={**base, "new_token_ratio_decay_steps": 10})
    assert column(run, "admitted")[:3] == [1, 0, 1]
    flat = jt.run_jax("sglang", SHAPE, wl, 30.0, params={**base, "new_token_ratio_min": 1.0})
    assert column(flat, "admitted")[:12] == [1] + [0] * 11
    assert column(flat, "admitted")[12] == 1


def test_sglang_retraction_keeps_room_for_retract_steps():
    """Residents (prompt, generated): (5,3), (2,1), (3,1), (4,6); needs 9, 4, 5, 11 (29) with
    C = 27. Order: fewest generated, longest prompt: slot 2, slot 1, slot 0, slot 3."""
    slots = _slots([(5, 3, 8, False), (2, 1, 3, False), (3, 1, 4, False), (4, 6, 10, False)])
    need = jnp.array([9, 4, 5, 11], jnp.int32)
    excess = jnp.float32(29 - 27)
    got = {steps: retract(slots, need, excess, jnp.int32(steps)).tolist() for steps in (0, 2, 10)}
    assert got[0] == [False, False, True, False]  # 24 <= 27
    assert got[2] == [False, True, True, False]  # 24 + 2*3 > 27; 20 + 2*2 <= 27
    assert got[10] == [True, True, True, False]  # never the last one
    twin = reference_for("sglang", {"new_token_ratio_init": 0.7, "new_token_ratio_min": 0.1,
                                    "new_token_ratio_decay_steps": 600, "max_new_tokens": 4096,
                                    "retract_steps": 2})
    view = RefView(time=0.0, iteration=0, capacity=27.0, num_waiting=0, queue=[], excess=2.0,
                   residents=[RefResident(i, p, 100, g, c, 0, 0.0, False) for i, (p, g, c) in
                              enumerate([(5, 3, 8), (2, 1, 3), (3, 1, 4), (4, 6, 10)])])
    assert twin.evict(view, [9, 4, 5, 11]) == got[2]


def test_sglang_retracts_on_overflow_in_a_rollout():
    wl = jt.make_workload([(0.0, 4, 10), (3.0, 2, 10)], n=N)
    params = {"new_token_ratio_init": 0.0, "new_token_ratio_min": 0.0, "retract_steps": 0}
    run = jt.run_jax("sglang", SHAPE, wl, 20.0, params=params)
    # r0 holds k + 5 and r1 k (k >= 3): 2k + 5 > 20 at it8, r1 (fewer generated) goes
    assert column(run, "overflow").index(True) == 8
    assert column(run, "evicted")[8] == 1 and column(run, "memory")[8] == 13


# ---------------------------------------------------------------- vmap over params


def _batch(name, values_list):
    pol = get_policy(name)
    system = jt.as_system({"capacity": 30.0, "d0": 1.0, "d1": 0.125})
    return pol, [sim.SimParams(system=system, policy=make_params(pol, v, num_classes=2))
                 for v in values_list]


SETTINGS8 = {
    "vllm": [{"max_num_batched_tokens": b, "watermark": w, "max_num_seqs": s}
             for b, w, s in zip([1, 2, 3, 4, 6, 8, 12, 2048], [0, .05, .1, .2, 0, .3, .01, .5],
                                [1, 2, 3, 4, 4, 3, 2, 1])],
    "sarathi": [{"chunk_size": c, "max_num_seqs": s}
                for c, s in zip([1, 2, 3, 4, 5, 7, 9, 512], [4, 3, 2, 1, 4, 3, 2, 1])],
    "sglang": [{"new_token_ratio_init": i, "new_token_ratio_decay_steps": d, "max_new_tokens": m,
                "retract_steps": r}
               for i, d, m, r in zip([0, .2, .4, .6, .7, .8, .9, 1], [1, 2, 5, 9, 600, 3, 4, 6],
                                     [1, 2, 3, 4, 5, 6, 7, 4096], [0, 1, 2, 3, 4, 0, 1, 2])],
}


@pytest.mark.parametrize("name", ["vllm", "sarathi", "sglang"])
def test_vmapped_settings_equal_single_calls_without_retracing(name):
    pol, ps = _batch(name, SETTINGS8[name])
    wls = jt.stack([jt.make_workload([(0.25 * i, 1 + (5 * i) % 11, 1 + (3 * i) % 6, i % 2)
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
        chex.assert_trees_all_equal(jax.tree.map(lambda x: x[i], out.trace), one.trace)
    batched(keys, wls, jt.stack(ps[::-1]))
    assert (single._cache_size(), batched._cache_size()) == sizes
    # the settings matter
    assert len({tuple(np.asarray(out.trace.memory[i, 0]).tolist()) for i in range(8)}) > 2


# ----------------------------------------------------------------- params and options


@pytest.mark.parametrize("name,values,key", [
    ("vllm", {"max_num_seqs": 0}, "max_num_seqs"),
    ("vllm", {"max_num_batched_tokens": -4}, "max_num_batched_tokens"),
    ("vllm", {"max_num_batched_tokens": 2.5}, "max_num_batched_tokens"),
    ("vllm", {"watermark": -0.1}, "watermark"),
    ("vllm", {"watermark": 1.5}, "watermark"),
    ("sarathi", {"chunk_size": 0}, "chunk_size"),
    ("sarathi", {"chunk_size": float("nan")}, "chunk_size"),
    ("sglang", {"new_token_ratio_init": -0.7}, "new_token_ratio_init"),
    ("sglang", {"new_token_ratio_min": 2.0}, "new_token_ratio_min"),
    ("sglang", {"new_token_ratio_decay_steps": 0}, "new_token_ratio_decay_steps"),
    ("sglang", {"max_new_tokens": -1}, "max_new_tokens"),
    ("sglang", {"retract_steps": -2}, "retract_steps"),
    ("sglang", {"chunk_size": 3}, "chunk_size"),
])
def test_bad_params_are_refused_naming_the_key(name, values, key):
    with pytest.raises(PolicyError, match=key):
        make_params(get_policy(name), values, num_classes=2)


def test_registered_with_twins_options_and_documented_params():
    for name, eviction in (("vllm", "newest"), ("sarathi", "newest"),
                           ("sglang", "fewest_generated")):
        assert name in list_policies() and name in REFERENCE_POLICIES
        extra = {"scheduler": "v1"} if name == "vllm" else {}
        assert policy_options(name) == {"eviction": eviction, **extra}
        pol = get_policy(name)
        assert not pol.known_lengths
        for pname, spec in pol.params.items():
            assert spec.doc and spec.low is not None, pname
            make_params(pol, {pname: spec.default})  # defaults are feasible
    with pytest.raises(PolicyError, match="eviction"):
        get_policy("vllm", eviction="oldest")
    assert get_policy("sglang").params["new_token_ratio_min"].default == pytest.approx(0.098)
    assert int(BIG_CHUNK) > 0
