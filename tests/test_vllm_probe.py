"""The vLLM replay's speed probe: its normalization arithmetic, computed by hand, and the
profile field that carries its reference from calibrate to compare-sim."""

from __future__ import annotations

import math
import subprocess
import sys
from types import SimpleNamespace

import pytest

from jaxsched.engine.calibrate import read_profile, write_profile
from jaxsched.integrations.vllm.compare import fit_runs
from jaxsched.integrations.vllm.probe import normalized_duration
from jaxsched.integrations.vllm.replay import LLMSettings


def test_normalized_duration_by_the_rolling_median_of_the_last_probes():
    # probes 1, 2, 3, 10, 4 (an outlier at 10): median of the last five is 3
    assert normalized_duration(2.0, [1.0, 2.0, 3.0, 10.0, 4.0], 1.5) == pytest.approx(1.0)
    # six probes, window 5: the first is dropped, median of 2, 3, 10, 4, 8 is 4
    assert normalized_duration(2.0, [1.0, 2.0, 3.0, 10.0, 4.0, 8.0], 1.0) == pytest.approx(0.5)
    # window 2: median of the last two (4, 8) is 6
    assert normalized_duration(3.0, [1.0, 4.0, 8.0], 2.0, window=2) == pytest.approx(1.0)
    assert normalized_duration(2.0, [], 1.0) == 2.0  # no probe yet: as measured


def test_probe_reference_goes_from_the_fit_to_the_profile(tmp_path):
    settings = LLMSettings(num_blocks=8, max_num_seqs=4, max_num_batched_tokens=256,
                           max_model_len=128)
    records, durations = [], []
    for k in range(12):  # tau = 1 ms + 2 us per prefill token + 1 us per context token
        p, c = 16 * (k % 3), 8 * k
        records.append(SimpleNamespace(prefill_tokens=p, context_tokens=c,
                                       prefill_requests=int(p > 0)))
        durations.append(1e-3 + 2e-6 * p + 1e-6 * c)
    run = {"records": records, "durations": durations}
    result = fit_runs({"serve": run}, settings, "tiny", "cpu", probe_reference=2.5e-4)
    assert result.d0 == pytest.approx(1e-3, rel=1e-6)
    path = tmp_path / "vllm.toml"
    write_profile(result, path)
    _, engine, calibration = read_profile(path)
    assert calibration["probe_reference_s"] == pytest.approx(2.5e-4)
    assert engine["engine"] == "vllm"
    unprobed = fit_runs({"serve": run}, settings, "tiny", "cpu")
    assert math.isnan(unprobed.probe_reference)


@pytest.mark.parametrize("args, line", [
    (["--policy", "greedy", "--replays", "2"], "error: --replays: only with --engine vllm"),
    (["--engine", "vllm", "--policy", "vllm", "--replays", "0"],
     "error: --replays 0: must be >= 1"),
])
def test_replays_is_checked_in_one_line(args, line):
    proc = subprocess.run([sys.executable, "-m", "jaxsched", "compare-sim", *args],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip().splitlines() == [proc.stderr.strip()]
    assert proc.stderr.strip().startswith(line), proc.stderr
