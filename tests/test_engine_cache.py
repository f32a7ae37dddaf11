"""The paged KV cache: the block pool, slots, reads through block tables, and the memory
accounting that keeps the scheduler's token capacity within the pool's blocks."""

from __future__ import annotations

import dataclasses

import hypothesis
import hypothesis.strategies as st
import numpy as np
import pytest

from jaxsched import testing as jt
from jaxsched.engine import TINY, Engine, SamplingParams
from jaxsched.engine.cache import BlockPool, OutOfBlocks, blocks_for, pad_table, token_slots
from jaxsched.engine.runner import ModelRunner, SampleArgs
from jaxsched.engine.testing import TEST_ENGINE, random_prompts, tiny_params
from jaxsched.errors import JaxschedError


def test_block_pool():
    pool = BlockPool(6, 4)
    a = pool.allocate(2)
    assert a == [0, 1] and pool.num_used == 2 and pool.num_free == 4
    table = []
    pool.grow(table, 9)  # 9 tokens -> 3 blocks
    assert table == [2, 3, 4]
    pool.grow(table, 12)  # still 3 blocks
    assert len(table) == 3
    with pytest.raises(OutOfBlocks) as err:
        pool.allocate(2)
    assert "\n" not in str(err.value) and isinstance(err.value, JaxschedError)
    pool.free(a)
    assert a == [] and pool.num_free == 3
    assert pool.allocate(1) == [0]  # freed blocks are reused first
    with pytest.raises(RuntimeError, match="freed twice"):
        pool.free([5, 5])
    assert blocks_for(0, 4) == 0 and blocks_for(1, 4) == 1 and blocks_for(8, 4) == 2


def test_slots_follow_the_block_table():
    table = [7, 2, 5]
    slots = token_slots(table, 3, 6, 8, block_size=4, num_slots=40)
    # positions 3..8: block 0 (phys 7) slot 3, block 1 (phys 2) slots 0-3, block 2 (phys 5) 0
    assert slots.tolist() == [31, 8, 9, 10, 11, 20, 40, 40]
    assert pad_table(table, 5).tolist() == [7, 2, 5, 0, 0]


def test_attention_reads_through_the_table_exactly():
    """The same sequence in different physical blocks gives bitwise identical logits."""
    runner = ModelRunner(TINY, TEST_ENGINE, tiny_params())
    seq = random_prompts(1, seed=3, low=20, high=20)[0]
    results = []
    for table in ([0, 1, 2, 3, 4, 5], [30, 4, 17, 9, 22, 11]):
        tok, logits = runner.prefill(seq[:13], 0, table, return_logits=True)
        steps = []
        for p in range(13, 20):
            toks, lg = runner.decode([(seq[p], p, table, SampleArgs())], return_logits=True)
            steps.append(lg[0])
        results.append((tok, logits, np.stack(steps)))
    # the cache is donated to each step: the previous buffers are consumed, not copied
    before = runner.cache.k[0]
    runner.decode([(seq[0], 0, [39], SampleArgs())])
    assert before.is_deleted() and not runner.cache.k[0].is_deleted()
    assert results[0][0] == results[1][0]
    assert np.array_equal(results[0][1], results[1][1])
    assert np.array_equal(results[0][2], results[1][2])


def _check_invariants(engine: Engine) -> None:
    bs = engine.engine_cfg.block_size
    tables = [len(r.table) for r in engine.residents]
    for r in engine.residents:
        assert len(r.table) == blocks_for(r.cached, bs)
        done = r.cached == r.prompt_len + len(r.generated)
        assert r.kv_len == (r.cached - 1 if done else r.cached)
    for r in engine.waiting:
        assert r.table == [] and r.cached == 0
    assert engine.pool.num_used == sum(tables)
    assert sum(r.cached for r in engine.residents) <= engine.engine_cfg.capacity


@st.composite
def batches(draw):
    n = draw(st.integers(3, 9))
    lens = draw(st.lists(st.tuples(st.integers(1, 40), st.integers(1, 24)), min_size=n,
                         max_size=n))
    return [(p, min(o, 64 - p)) for p, o in lens]


@hypothesis.given(batch=batches(), policy=st.sampled_from(["greedy", "vllm"]))
@hypothesis.settings(jt.HYPOTHESIS_SETTINGS, max_examples=6)
def test_blocks_never_run_out(batch, policy):
    """With C = (num_blocks - max_batch) * block_size the pool suffices whatever the
    rounding, and each resident holds exactly ceil(cached / block_size) blocks."""
    ec = TEST_ENGINE
    engine = Engine(engine_cfg=ec, params=tiny_params(), policy=policy,
                    policy_params={"max_num_batched_tokens": 16} if policy == "vllm" else None)
    prompts = [[5] * p for p, _ in batch]
    reqs = [engine.submit(p, SamplingParams(max_tokens=o, ignore_eos=True))
            for p, (_, o) in zip(prompts, batch)]
    for _ in range(2000):
        if not engine.has_work():
            break
        rec = engine.step()
        assert rec.blocks_used <= ec.num_blocks
        assert rec.memory <= ec.capacity
        _check_invariants(engine)
    assert all(r.finished and len(r.generated) == r.sampling.max_tokens for r in reqs)
    assert engine.pool.num_used == 0


def test_full_cache_uses_the_block_margin():
    """Long requests fill the cache: the rounding margin of max_batch blocks is used and
    still suffices."""
    ec = TEST_ENGINE
    engine = Engine(engine_cfg=ec, params=tiny_params())
    for _ in range(6):
        engine.submit([9] * 33, SamplingParams(max_tokens=31, ignore_eos=True))
    peak = 0
    while engine.has_work():
        rec = engine.step()
        peak = max(peak, rec.blocks_used)
        _check_invariants(engine)
    assert sum(r.evicted for r in engine.records) > 0
    assert ec.capacity // ec.block_size < peak <= ec.num_blocks


def test_block_size_one_is_exact():
    ec = dataclasses.replace(TEST_ENGINE, block_size=1, num_blocks=36, max_seq_len=16,
                             capacity_tokens=0)
    assert ec.capacity == 32
    engine = Engine(engine_cfg=ec, params=tiny_params())
    for p in random_prompts(5, seed=4, low=2, high=8):
        engine.submit(p, SamplingParams(max_tokens=8, ignore_eos=True))
    while engine.has_work():
        rec = engine.step()
        assert rec.blocks_used == rec.memory <= ec.capacity
        _check_invariants(engine)
