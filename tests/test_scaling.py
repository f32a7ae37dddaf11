"""``bench scale``: a tiny sweep end to end, the roofline arithmetic, one-line flag errors;
the profiling A/B's "before" variant still applies to the current step, and its
step-against-a-file A/B checks trajectories."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from jaxsched.tools import scaling
from jaxsched import testing as jt
from jaxsched.cli import main
from jaxsched.config import DEFAULT_CONFIG, load_config

SMALL = ["system.max_batch=8", "system.queue_size=4", "system.capacity=400",
         "workload.horizon=20", "workload.warmup=0"]


def test_tiny_sweep_and_plot(tmp_path):
    cfg = load_config(DEFAULT_CONFIG, SMALL)
    with jt.fast_compile():
        res = scaling.bench_scale(cfg, str(DEFAULT_CONFIG), SMALL, workloads=(1, 3), slots=(8,),
                                  horizons=(10,), fixed_workloads=2, forced_devices=0,
                                  backends=["cpu"], repeats=1, bandwidth=1e10)
    assert [(p.num_workloads, p.max_batch, p.horizon) for p in res.points] == [
        (1, 8, 20), (3, 8, 20), (2, 8, 20), (2, 8, 10)]
    for p in res.points:
        assert p.slot_iterations_per_second == pytest.approx(
            p.max_batch * p.horizon * p.num_workloads / p.wall_seconds)
        assert p.peak_bytes and p.num_batches == 1
    (roof,) = res.rooflines
    assert roof.bandwidth == 1e10 and roof.bandwidth_source == "--bandwidth"
    assert roof.roofline_slot_iterations_per_second == pytest.approx(
        1e10 * 8 / scaling.step_bytes(8, 4))
    assert roof.xla_bytes_per_step > 0
    png = scaling.plot_scale(res, tmp_path / "scale.png")
    assert (tmp_path / "scale.png").stat().st_size > 1000 and png.endswith("scale.png")


def test_roofline_inputs():
    assert scaling.step_bytes(128, 32) == 2 * 128 * 29 + 32 * 23 + 64 + 2 * 128 * 6 \
        + 4 * 128 * 4 + 100

    class Dev:
        device_kind = "NVIDIA H100 80GB HBM3"

    assert scaling.peak_bandwidth(Dev()) == (3.35e12, "data sheet (H100)")
    Dev.device_kind = "NVIDIA H100 PCIe"
    assert scaling.peak_bandwidth(Dev())[0] == 2.0e12
    assert scaling.peak_bandwidth(Dev(), 5e11) == (5e11, "--bandwidth")


@pytest.mark.parametrize("argv,start", [
    (["--headline", "10000by10"], "error: --headline '10000by10': expected"),
    (["--workloads", "1,x"], "error: --workloads '1,x': expected"),
    (["--slots", "0"], "error: --slots '0': values must be >= 1"),
    (["--max-memory", "2 parsecs"], "error: --max-memory '2 parsecs': expected"),
])
def test_bench_scale_flag_errors(argv, start, capsys):
    assert main(["bench", "scale", *argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith(start) and err.count("\n") == 1


def test_profiling_before_variant_applies():
    from jaxsched.tools import profiling

    before = profiling.sim_variant((profiling._BEFORE_SEARCH_BLOCK,))
    assert hasattr(before, "step") and before is not np  # the rollout lives in jaxsched.core.rollout


def test_profiling_ab_step_checks_the_trajectories(tmp_path):
    """``profiling --before FILE``: a copy of this step, and one that keeps its residents in
    other slots, run against it with the same final trajectories; a step whose iterations last
    twice as long is refused before any timing."""
    from pathlib import Path

    from jaxsched.tools import profiling
    from jaxsched.core import sim

    source = Path(sim.__file__).read_text()
    exp, keys, wl = profiling.load_case(2, 12, ("system.max_batch=8", "system.queue_size=4"))
    same = tmp_path / "same.py"
    same.write_text(source)
    result = profiling.ab_step(exp, keys, wl, profiling.sim_from_file(same), repeats=1)
    assert result["before"] > 0 and result["after"] > 0
    assert result["rate_after"] == pytest.approx(8 * 12 * 2 / result["after"])
    eager = tmp_path / "eager.py"  # compacts every iteration: other slots, one trajectory
    lazy = "        slots=_vacate(ran, completed.stays) if lazy else _compact(ran, completed.stays),\n"
    assert source.count(lazy) == 1
    eager.write_text(source.replace(lazy, "        slots=_compact(ran, completed.stays),\n"))
    result = profiling.ab_step(exp, keys, wl, profiling.sim_from_file(eager, "jaxsched._eager"),
                               repeats=1)
    assert result["ratio"] > 0
    slower = tmp_path / "slower.py"
    old = "    t1 = state.time + executed.tau\n"
    assert source.count(old) == 1
    slower.write_text(source.replace(old, "    t1 = state.time + 2 * executed.tau\n"))
    with pytest.raises(AssertionError):
        profiling.ab_step(exp, keys, wl, profiling.sim_from_file(slower, "jaxsched._slower"),
                          repeats=1)


def test_profiling_bad_config_is_one_line(tmp_path):
    """``python -m jaxsched.tools.profiling --config`` with a missing file, or a bad ``--set``:
    one line naming the file or key, exit code 2, no traceback."""
    for args, named in ((["--config", str(tmp_path / "missing.toml")], "missing.toml"),
                        (["--set", "system.bogus=1"], "system.bogus")):
        done = subprocess.run([sys.executable, "-m", "jaxsched.tools.profiling", *args],
                              capture_output=True, text=True, timeout=120)
        assert done.returncode == 2, done.stderr
        lines = done.stderr.strip().splitlines()
        assert len(lines) == 1 and named in lines[0], done.stderr
        assert "Traceback" not in done.stderr
