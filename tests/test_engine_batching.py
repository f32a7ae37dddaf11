"""Continuous batching: the engine runs the simulator's policies with the simulator's rules.

* Outputs of a batch under every registered policy (a small cache forces evictions and
  recomputation) equal the outputs of decoding each request alone.
* The engine's per-iteration admissions, evictions, memory and token counts equal the JAX
  simulator's on the same workload (slotted time, ``d0 = 1, d1 = 0``).
* Sampling, stop conditions, request validation, compile counts, metrics.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from jaxsched import testing as jt
from jaxsched.engine import Engine, RequestError, SamplingParams
from jaxsched.engine.calibrate import MeasuredCalls
from jaxsched.engine.runner import compile_counts
from jaxsched.engine.testing import (
    SIM_FIELDS,
    TEST_ENGINE,
    engine_trace,
    random_prompts,
    solo_outputs,
    tiny_params,
)
from jaxsched.errors import JaxschedError
from jaxsched.policies import list_policies

SMALL = dataclasses.replace(TEST_ENGINE, capacity_tokens=40)  # forces evictions

# Parameters that make a policy admit anything in a 40-token cache with 4 slots; policies
# not listed run with their defaults (a newly registered one is tested that way too).
POLICY_PARAMS = {
    "vllm": {"max_num_batched_tokens": 8, "max_num_seqs": 4},  # chunked prefill
    "sarathi": {"chunk_size": 8, "max_num_seqs": 4},
    "sglang": {"max_new_tokens": 14},
}

# Policies whose residents wait for new arrivals by design (Nested WAIT: "when arrivals
# stop, segment 1 stays short and every resident waits"; with its default single segment
# and full slots nothing runs again): a closed batch never finishes, so they run a bounded
# number of iterations and every request's tokens so far must be a prefix of its solo
# output.
NEEDS_ARRIVALS = {"nested_wait"}

PROMPTS = random_prompts(8, seed=1, low=1, high=20)
MAX_TOKENS = [10, 6, 14, 12, 3, 9, 5, 8]
GREEDY = [SamplingParams(max_tokens=m, ignore_eos=True) for m in MAX_TOKENS]


@pytest.fixture(scope="module")
def solo():
    return solo_outputs(PROMPTS, GREEDY)


@pytest.mark.parametrize("policy", list_policies())
def test_batch_equals_solo_under_every_policy(policy, solo):
    engine = Engine(engine_cfg=SMALL, params=tiny_params(), policy=policy,
                    policy_params=POLICY_PARAMS.get(policy))
    reqs = [engine.submit(p, s) for p, s in zip(PROMPTS, GREEDY)]
    if policy in NEEDS_ARRIVALS:
        engine.run_until_idle(max_iterations=100, stall_limit=10**6)
        outs = [r.output() for r in reqs]
        assert sum(len(o.token_ids) for o in outs) > 0
        for o, ref in zip(outs, solo):
            assert o.token_ids == ref[: len(o.token_ids)]
        return
    engine.run_until_idle(max_iterations=3000, stall_limit=500)
    outs = [r.output() for r in reqs]
    assert all(o.finished and o.finish_reason == "length" for o in outs)
    assert [o.token_ids for o in outs] == solo
    recs = list(engine.records)
    assert all(r.memory <= SMALL.capacity for r in recs)
    assert all(r.blocks_used <= SMALL.num_blocks for r in recs)
    assert sum(r.decode_tokens for r in recs) == sum(MAX_TOKENS)
    assert engine.pool.num_used == 0 and not engine.requests
    if policy == "greedy":  # greedy reserves nothing: the small cache must evict
        assert sum(r.evicted for r in recs) > 0
        assert any(o.evictions > 0 for o in outs)


WORKLOAD = [(0, 5, 6), (0, 12, 4), (0, 3, 9), (1, 9, 5), (2, 7, 7), (2, 14, 3), (3, 4, 8),
            (5, 10, 6), (6, 6, 5), (8, 3, 10)]


@pytest.mark.parametrize("policy,memory", [("greedy", "tokens"), ("vllm", "tokens"),
                                           ("flow_control", "tokens"), ("greedy", "blocks"),
                                           ("vllm", "blocks")])
def test_engine_trace_equals_simulator(policy, memory):
    # memory = "blocks": the engine's policy counts its cache's 4-token blocks, and so does the
    # simulator with [system] block_size = 4 (capacity_tokens 40: 10 blocks)
    horizon = 40
    wl = jt.make_workload(WORKLOAD)
    params = POLICY_PARAMS.get(policy, {})
    ec = dataclasses.replace(SMALL, memory=memory)
    engine = Engine(engine_cfg=ec, params=tiny_params(), policy=policy, policy_params=params)
    records, reqs = engine_trace(engine, wl, horizon)
    shape = jt.small_shape(max_batch=SMALL.max_batch, queue_size=SMALL.queue_size,
                           horizon=horizon, num_classes=1)
    system = {"capacity": ec.capacity, "block_size": ec.memory_block_size}
    with jt.fast_compile():
        run = jt.run_jax(policy, shape, wl, system, params=params)
    if memory == "blocks":
        assert ec.capacity == 40 and ec.memory_block_size == 4
        assert all(r["memory"] % 4 == 0 for r in records)
        assert all(r.blocks_used * 4 == r.memory for r in engine.records)  # exact accounting
    for k in range(horizon):
        expected = {f: run.trajectory[k][f] for f in SIM_FIELDS}
        assert records[k] == expected, f"iteration {k}"
    assert all(r.finished for r in reqs)
    if policy == "greedy":
        assert sum(r["evicted"] for r in records) > 0


def test_sampling_is_per_request_and_batch_independent():
    sps = [SamplingParams(max_tokens=8, temperature=0.9, top_p=0.9, seed=s, ignore_eos=True)
           for s in range(len(PROMPTS))]
    solo = solo_outputs(PROMPTS, sps)
    engine = Engine(engine_cfg=SMALL, params=tiny_params())
    outs = engine.generate(PROMPTS, sps)
    assert [o.token_ids for o in outs] == solo
    # another seed changes the sample; a tiny nucleus is greedy
    other = solo_outputs(PROMPTS[:1], [dataclasses.replace(sps[0], seed=12345)])
    assert other[0] != solo[0]
    nucleus = solo_outputs(PROMPTS[:2], [dataclasses.replace(s, top_p=1e-6) for s in sps[:2]])
    greedy = solo_outputs(PROMPTS[:2], [SamplingParams(max_tokens=8, ignore_eos=True)] * 2)
    assert nucleus == greedy


def test_stop_sequences_eos_and_max_tokens():
    engine = Engine(engine_cfg=TEST_ENGINE, params=tiny_params())
    tok = engine.tokenizer
    prompt = PROMPTS[0]
    full = engine.generate([prompt], SamplingParams(max_tokens=20, ignore_eos=True))[0]
    assert len(full.token_ids) == 20 and full.finish_reason == "length"
    text = tok.decode(full.token_ids)
    assert full.text == text
    # a stop string: the first ASCII character after the first three generated characters
    ascii_at = [i for i, ch in enumerate(text) if i >= 3 and 32 <= ord(ch) < 127]
    assert ascii_at, text  # deterministic: random bytes of the tiny model
    stop = text[ascii_at[0]]
    out = engine.generate([prompt], SamplingParams(max_tokens=20, stop=(stop,),
                                                   ignore_eos=True))[0]
    assert out.finish_reason == "stop"
    assert out.text == text[: text.find(stop)]
    assert out.token_ids == full.token_ids[: len(out.token_ids)]
    assert len(out.token_ids) < 20
    # EOS ends a request (unless ignore_eos): make the model's next token the EOS id
    engine.tokenizer = type(tok)()
    first = full.token_ids[0]
    engine.tokenizer.eos_id = first
    out = engine.generate([prompt], SamplingParams(max_tokens=5))[0]
    assert out.finish_reason == "stop" and out.token_ids == () and out.text == ""


def test_block_memory_capacity_counts_every_block():
    # tokens: (40 - 4) blocks x 4 = 144 (one block per slot held back); blocks: 40 x 4 = 160
    assert TEST_ENGINE.capacity == 144 and TEST_ENGINE.memory_block_size == 1
    blocks = dataclasses.replace(TEST_ENGINE, memory="blocks")
    assert blocks.capacity == 160 and blocks.memory_block_size == 4
    assert dataclasses.replace(blocks, capacity_tokens=41).capacity == 40  # whole blocks
    with pytest.raises(JaxschedError, match="engine.memory must be one of tokens, blocks"):
        dataclasses.replace(TEST_ENGINE, memory="pages")


def test_request_validation():
    engine = Engine(engine_cfg=TEST_ENGINE, params=tiny_params())
    limit = TEST_ENGINE.max_request_tokens
    with pytest.raises(RequestError, match="exceeds"):
        engine.submit([1] * (limit - 3), SamplingParams(max_tokens=4))
    engine.submit([1] * (limit - 4), SamplingParams(max_tokens=4))  # exactly fits
    with pytest.raises(RequestError, match="max_tokens"):
        SamplingParams(max_tokens=-1)
    with pytest.raises(RequestError, match="top_p"):
        SamplingParams(top_p=0.0)
    with pytest.raises(RequestError, match="temperature"):
        SamplingParams(temperature=float("nan"))
    with pytest.raises(RequestError, match="outside the vocabulary"):
        engine.submit([300], SamplingParams())
    with pytest.raises(RequestError, match="empty"):
        engine.submit([], SamplingParams())
    for err in (RequestError,):
        assert issubclass(err, JaxschedError)


def test_stalled_policy_is_reported():
    # sglang reserving 4096 new tokens per request never admits into 40 tokens
    engine = Engine(engine_cfg=SMALL, params=tiny_params(), policy="sglang")
    engine.submit(PROMPTS[0], GREEDY[0])
    with pytest.raises(JaxschedError, match="stalled"):
        engine.run_until_idle(stall_limit=20)


def test_abort_frees_blocks():
    engine = Engine(engine_cfg=TEST_ENGINE, params=tiny_params())
    a = engine.submit(PROMPTS[1], SamplingParams(max_tokens=30, ignore_eos=True))
    b = engine.submit(PROMPTS[2], SamplingParams(max_tokens=3, ignore_eos=True))
    engine.step()
    assert engine.pool.num_used > 0
    engine.abort(a.request_id)
    engine.run_until_idle()
    assert a.output().finish_reason == "abort" and a.done_event.is_set()
    assert b.output().finish_reason == "length"
    assert engine.pool.num_used == 0


def test_compilations_are_bounded_by_buckets():
    cfg = TEST_ENGINE
    engine = Engine(engine_cfg=cfg, params=tiny_params())
    prompts = [[7] * n for n in range(1, 61, 3)]
    outs = engine.generate(prompts, [SamplingParams(max_tokens=2, ignore_eos=True)] * len(prompts))
    assert all(len(o.token_ids) == 2 for o in outs)
    mine = {k: v for k, v in compile_counts().items()
            if f"nb={cfg.blocks_per_seq}/slots={cfg.num_blocks * cfg.block_size}" in k}
    prefill = [k for k in mine if k.startswith("prefill/")]
    decode = [k for k in mine if k.startswith("decode/")]
    assert len(prefill) <= len(cfg.prefill_buckets()) == 3
    assert {int(k.split("/T=")[1].split("/")[0]) for k in prefill} <= set(cfg.prefill_buckets())
    assert len(decode) == 1
    assert all(v == 1 for v in mine.values()), mine


def test_metrics_and_records():
    engine = Engine(engine_cfg=SMALL, params=tiny_params())
    engine.generate(PROMPTS, GREEDY)
    m = engine.metrics()
    assert m.queue_length == 0 and m.running == 0
    assert m.kv_blocks_used == 0 and m.kv_blocks_free == SMALL.num_blocks
    assert m.requests_completed_total == len(PROMPTS) == m.requests_submitted_total
    assert m.generated_tokens_total == sum(MAX_TOKENS)
    assert m.prompt_tokens_total == sum(map(len, PROMPTS))
    assert m.iterations_total == len(engine.records)
    assert m.evictions_total == sum(r.evicted for r in engine.records) > 0
    assert m.tokens_per_second > 0 and m.iteration_seconds > 0
    for r in engine.records:
        assert r.duration >= r.compute_time >= 0
        assert r.memory <= SMALL.capacity
        assert r.num_running <= SMALL.max_batch
    # prefill tokens computed = prompts + recomputation after evictions
    assert (sum(r.prefill_tokens for r in engine.records)
            == m.prompt_tokens_total + m.recomputed_tokens_total)


def test_policy_object_and_params_dict_plug_in():
    from jaxsched.policies import get_policy, make_params

    pol = get_policy("vllm")
    params = make_params(pol, {"max_num_batched_tokens": 8, "max_num_seqs": 4})
    engine = Engine(engine_cfg=SMALL, params=tiny_params(), policy=pol, policy_params=params)
    outs = engine.generate(PROMPTS[:3], GREEDY[:3])
    assert [o.token_ids for o in outs] == solo_outputs(PROMPTS[:3], GREEDY[:3])
    assert np.asarray(engine.scheduler.params["max_num_batched_tokens"]) == 8


def test_timing_repeats_change_nothing_but_the_timing():
    """Measurement mode reruns each iteration's model calls (same KV, same tokens) and keeps
    the fastest pass: outputs, records and evictions are those of a normal run."""
    engine = Engine(engine_cfg=SMALL, params=tiny_params())
    engine.time_calls = MeasuredCalls(engine, repeats=3)
    outs = engine.generate(PROMPTS[:4], GREEDY[:4])
    assert [o.token_ids for o in outs] == solo_outputs(PROMPTS[:4], GREEDY[:4])
    recs = list(engine.records)
    assert all(r.duration >= r.compute_time >= 0 for r in recs)
    assert all(r.model_calls == 0 for r in recs if not (r.prefill_tokens or r.decode_tokens))
    assert sum(r.model_calls for r in recs) >= len(PROMPTS[:4])


def test_speed_probe_scales_the_compute_time_and_changes_no_output():
    """With ``speed_reference`` every timing pass is followed by the probe (a decode of padding
    rows: it leaves the cache alone, so outputs equal solo decoding) and ``compute_time =
    reference x median(pass / probe)``: with the probe pinned at q, ``reference / q`` times
    the median pass, which is at least the fastest (``raw_compute_time``)."""
    engine = Engine(engine_cfg=SMALL, params=tiny_params())
    engine.time_calls = MeasuredCalls(engine, repeats=3, speed_reference=0.5)
    outs = engine.generate(PROMPTS[:4], GREEDY[:4])
    assert [o.token_ids for o in outs] == solo_outputs(PROMPTS[:4], GREEDY[:4])
    ran = [r for r in engine.records if r.model_calls]
    assert ran and all(r.probe_time > 0 and r.raw_compute_time > 0 for r in ran)
    engine = Engine(engine_cfg=SMALL, params=tiny_params())
    engine.time_calls = measured = MeasuredCalls(engine, repeats=3, speed_reference=0.5)
    measured.time_probe = lambda: 0.25
    engine.generate(PROMPTS[:2], GREEDY[:2])
    ran = [r for r in engine.records if r.model_calls]
    assert all(r.probe_time == 0.25 for r in ran)
    assert all(r.compute_time >= 2.0 * r.raw_compute_time * (1 - 1e-9) for r in ran)
    idle = [r for r in engine.records if not r.model_calls]
    assert all(r.probe_time != r.probe_time for r in idle)  # nan: nothing to time
