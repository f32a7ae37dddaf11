"""Multi-process runs on one machine: 2 processes joined by ``jax.distributed`` (coordinator on
127.0.0.1, CPU collectives), each with 2 forced host devices, so 4 devices globally. Through
the API and through ``jaxsched simulate --coordinator ... --json``, every process's metrics
equal, exactly, the single-process 1-device result; only process 0 writes files; bad
distributed flags end in one line."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import jax
import numpy as np
import pytest

from jaxsched import api, testing as jt
from jaxsched.running.chunked import plan_run, rollout_bytes
from jaxsched.cli import main
from jaxsched.config import DEFAULT_CONFIG, load_config

ROOT = Path(__file__).resolve().parents[1]  # the repository: jaxsched and tests import from it
NUM_PROCESSES = 2  # the script below and the expected messages assume 2
TIMEOUT = 240  # seconds for a whole multi-process launch; then every process is killed

OVERRIDES = ["workload.num_workloads=8", "workload.horizon=300", "workload.warmup=20",
             "system.max_batch=32", "system.queue_size=16", "system.capacity=1500"]

# Each process: the CLI joins the run from its flags and prints its JSON on stdout (the horizon
# in 2 chunks, the batch streamed in 2, traces recorded for the plot); then, in the
# same (joined) process, the API runs a parameter-set batch, then a batch whose seed differs
# between the processes, and writes what it got to a file.
_SCRIPT = textwrap.dedent("""
    import json, sys
    coordinator, pid, tmp, budget, overrides = sys.argv[1:4] + [sys.argv[4], sys.argv[5:]]
    from jaxsched.cli import main
    code = main(["simulate", *[a for o in overrides for a in ("--set", o)], "--json",
                 "--per-workload", "--plot", f"{tmp}/plot{pid}.png", "--chunk", "150",
                 "--max-memory", budget, "--coordinator", coordinator, "--num-processes", "2",
                 "--process-id", pid])
    assert code == 0, code
    import jax
    from jaxsched.config import DEFAULT_CONFIG, load_config
    from jaxsched.running.sharding import native_stdout_to_stderr
    from tests.test_multiprocess import params_batch
    from jaxsched import JaxschedError, run
    with native_stdout_to_stderr():  # gloo's messages for the new process groups
        out = params_batch(load_config(DEFAULT_CONFIG, overrides), devices=None)
        try:  # a launch whose processes hold different seeds is refused on every process
            run(load_config(DEFAULT_CONFIG, [*overrides, f"workload.seed={pid}"]))
            out["mismatch"] = None
        except JaxschedError as err:
            out["mismatch"] = str(err)
    out["process"] = [jax.process_index(), jax.process_count(), len(jax.devices()),
                      len(jax.local_devices())]
    with open(f"{tmp}/api{pid}.json", "w") as f:
        json.dump(out, f)
""")


def params_batch(cfg, devices) -> dict:
    """A batch of 2 parameter sets x 5 of the config's workloads (on 4 devices: a 2 x 2 mesh,
    both axes padded) through the API: per-workload metrics as lists, and the mesh."""
    with jt.fast_compile():
        exp = api.build_experiment(cfg)
        keys, wl = api.build_workloads(cfg, exp.num_requests, exp.duration)
        stacked = jt.stack([exp.params, exp.params.replace(
            system=exp.params.system.replace(capacity=exp.params.system.capacity * 0.7))])
        res = api.run_experiment(exp, keys[:5], jax.tree.map(lambda x: x[:5], wl), stacked,
                                 batched_params=True, devices=devices)
    return dict(per=jax.tree.map(lambda x: np.asarray(x).tolist(), res.per_workload),
                mesh=list(res.run_stats.plan.mesh))


def _cpu_collectives() -> str | None:
    """Why this jax/jaxlib cannot run CPU collectives across processes, or None when it can."""
    impl = getattr(jax.config, "jax_cpu_collectives_implementation", None)
    if impl is None:
        return "jax has no jax_cpu_collectives_implementation option"
    maker = {"gloo": "make_gloo_tcp_collectives", "mpi": "make_mpi_collectives"}.get(impl)
    if maker is None:
        return f"jax_cpu_collectives_implementation={impl!r}: no cross-process CPU collectives"
    try:
        from jax._src.lib import _jax
    except ImportError:
        return "jaxlib's _jax extension not found"
    if not hasattr(_jax, maker):
        return f"this jaxlib was built without {impl} CPU collectives (no _jax.{maker})"
    return None


needs_collectives = pytest.mark.skipif(_cpu_collectives() is not None,
                                       reason=str(_cpu_collectives()))


def _assert_same(got: dict, ref: dict, what) -> None:
    """Exactly equal metric lists (NaN equals NaN)."""
    assert sorted(got) == sorted(ref), what
    for key in ref:
        np.testing.assert_array_equal(np.asarray(got[key], np.float64),
                                      np.asarray(ref[key], np.float64), err_msg=f"{what} {key}")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start(argv_of, tmp) -> list[tuple[subprocess.Popen, Any, Any]]:
    """Start ``NUM_PROCESSES`` processes ``argv_of(i)`` (2 forced CPU devices each), their
    stdout and stderr going to files in ``tmp``."""
    env = dict(os.environ, JAX_PLATFORMS="cpu", JAX_DISABLE_MOST_OPTIMIZATIONS="1",
               XLA_FLAGS="--xla_force_host_platform_device_count=2",
               PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT),
                                                        os.environ.get("PYTHONPATH")])))
    for name in ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID",
                 "JAXSCHED_DISTRIBUTED"):
        env.pop(name, None)
    started = []
    try:
        for i in range(NUM_PROCESSES):
            out = open(os.path.join(tmp, f"out{i}"), "w+")
            err = open(os.path.join(tmp, f"err{i}"), "w+")
            started.append((subprocess.Popen(argv_of(i), env=env, stdout=out, stderr=err,
                                             stdin=subprocess.DEVNULL, cwd=ROOT), out, err))
    except BaseException:
        for p, out, err in started:
            p.kill()
            p.wait()
            out.close()
            err.close()
        raise
    return started


def _finish(started, deadline: float) -> list[tuple[int, str, str]]:
    """Wait for every process until ``deadline`` (``time.monotonic()``); as soon as one fails,
    or at the deadline, kill the others. Returns ``(exit code, stdout, stderr)`` each, and
    fails the test naming the first process that failed by itself."""
    procs = [p for p, _, _ in started]
    killed = set()
    try:
        while any(p.poll() is None for p in procs):
            if any(p.poll() not in (None, 0) for p in procs) or time.monotonic() > deadline:
                break
            time.sleep(0.1)
    finally:
        for i, p in enumerate(procs):
            if p.poll() is None:
                p.kill()
                killed.add(i)
            p.wait()
    results = []
    for p, out, err in started:
        out.seek(0)
        err.seek(0)
        results.append((p.returncode, out.read(), err.read()))
        out.close()
        err.close()
    for i, (code, _, err) in enumerate(results):
        if code != 0 and i not in killed:
            pytest.fail(f"process {i} exited with {code}:\n{err[-3000:]}")
    if killed:
        pytest.fail(f"processes {sorted(killed)} still ran after {TIMEOUT} s and were killed:\n"
                    f"{results[min(killed)][2][-3000:]}")
    return results


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """One 2-process launch (each process's stdout and API result, and the launch's folder),
    and, computed here while it runs, the single-process one-device reference (one batch, one
    chunk, no trace): the CLI's JSON and the API's batch."""
    tmp = tmp_path_factory.mktemp("multiprocess")
    cfg = load_config(DEFAULT_CONFIG, OVERRIDES)
    exp = api.build_experiment(cfg, record_trace=True)  # as the CLI builds it for --plot
    budget = rollout_bytes(exp.policy, exp.shape, exp.num_requests, exp.params, 150)
    plan = plan_run(exp.shape, 8, budget, [None] * 4, chunk=150, max_memory=budget)
    assert (plan.mesh, plan.batch, plan.num_batches, plan.num_chunks) == ((1, 4), 4, 2, 2)
    coordinator = f"127.0.0.1:{_free_port()}"
    started = _start(lambda i: [sys.executable, "-c", _SCRIPT, coordinator, str(i), str(tmp),
                                str(budget), *OVERRIDES], str(tmp))
    deadline = time.monotonic() + TIMEOUT
    try:
        with jt.fast_compile():
            res = api.run(cfg, devices=1)
        cli = res.to_json(per_workload=True)
        del cli["sim_seconds"], cli["compile_seconds"]
        reference = cli, params_batch(cfg, devices=1)
    finally:
        results = _finish(started, deadline)
    apis = [json.loads((tmp / f"api{i}.json").read_text()) for i in range(NUM_PROCESSES)]
    return reference, [(out, a) for (_, out, _), a in zip(results, apis)], tmp


@needs_collectives
def test_cli_two_processes_print_the_single_process_result(runs):
    (expected, _), outputs, tmp = runs
    assert sum(expected["per_workload"]["evictions"]) > 0  # the small system does evict
    for i, (out, _) in enumerate(outputs):
        assert len(out.strip().splitlines()) == 1, out  # exactly one JSON object on stdout
        got = json.loads(out)
        del got["sim_seconds"], got["compile_seconds"]
        assert got.pop("run")["workload"]["num_workloads"] == 8  # what was run (CLI only)
        assert got == expected, i  # exact (non-finite values are null in both)
    assert (tmp / "plot0.png").stat().st_size > 0
    assert not (tmp / "plot1.png").exists()  # only process 0 writes files


@needs_collectives
def test_api_two_processes_param_batch_equals_one_device(runs):
    (_, expected), outputs, _ = runs
    assert expected["mesh"] == [1, 1]
    for i, (_, got) in enumerate(outputs):
        assert got["process"] == [i, NUM_PROCESSES, 4, 2]
        assert got["mesh"] == [2, 2]  # param sets split across the processes
        _assert_same(got["per"], expected["per"], f"process {i}")


@pytest.mark.parametrize("argv,message", [
    (["--num-processes", "2"], "--num-processes/--process-id need --coordinator"),
    (["--process-id", "0"], "--num-processes/--process-id need --coordinator"),
    (["--coordinator", "127.0.0.1:1", "--num-processes", "2"],
     "distributed run with coordinator '127.0.0.1:1': give --num-processes and --process-id"),
    (["--coordinator", "localhost", "--num-processes", "2", "--process-id", "0"],
     "--coordinator 'localhost': expected HOST:PORT"),
    (["--coordinator", "127.0.0.1:1", "--num-processes", "2", "--process-id", "2"],
     "--process-id 2: must be below --num-processes 2"),
    (["--coordinator", "127.0.0.1:1", "--num-processes", "0", "--process-id", "0"],
     "--num-processes 0: must be >= 1"),
])
def test_cli_refuses_bad_distributed_flags(argv, message, capsys):
    assert main(["simulate", *argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {message}") and err.count("\n") == 1, err


def test_bad_distributed_environment_is_one_line(monkeypatch, capsys):
    monkeypatch.setenv("JAX_COORDINATOR_ADDRESS", "127.0.0.1:1")
    monkeypatch.setenv("JAX_NUM_PROCESSES", "two")
    monkeypatch.setenv("JAX_PROCESS_ID", "0")
    assert main(["simulate"]) == 2
    err = capsys.readouterr().err
    assert err == "error: JAX_NUM_PROCESSES='two': expected an integer\n"


@needs_collectives
def test_processes_holding_different_runs_are_refused(runs):
    _, outputs, _ = runs
    for _, got in outputs:
        assert got["mismatch"] == ("processes [1] disagree with process 0 on the run's plan, "
                                   "parameters and workloads: launch every process with the same "
                                   "config, flags and seed")
