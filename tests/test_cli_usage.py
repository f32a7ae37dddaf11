"""Usage errors, --version, help and signals through real ``python -m jaxsched`` subprocesses.

Each bad command line ends in one line on stderr, without a traceback, and exit 2; Ctrl-C and
SIGTERM end in one line and 130 / 143 at every point: while the modules import, while XLA
compiles the simulator, and while it runs.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time

import pytest

TINY = ["--set", "workload.num_workloads=1", "--set", "workload.horizon=60",
        "--set", "workload.warmup=10"]


def jaxsched(*args, timeout=120, **kw):
    return subprocess.run([sys.executable, "-m", "jaxsched", *args], capture_output=True,
                          text=True, timeout=timeout, **kw)


def one_line_error(proc) -> str:
    assert "Traceback" not in proc.stderr, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("error: ")
    return lines[0]


@pytest.mark.parametrize("argv, fragment", [
    (["simulat"], "No such command 'simulat'"),
    (["simulate", "--bogus"], "No such option: --bogus"),
    (["--bogus"], "No such option: --bogus"),
    (["tune"], "Missing argument"),
    (["tune", "x.toml", "--trials", "abc"], "'--trials'"),
    (["tune", "x.toml", "--trials", "0"], "greater than or equal to 1"),
    (["tune", "x.toml", "--batch", "-1"], "'--batch'"),
    (["simulate", "--set"], "'--set' requires an argument"),
    (["simulate", "--devices", "two"], "'--devices'"),
    (["reproduce"], "Missing argument"),
    (["export", "--trial", "-2"], "'--trial'"),
    (["bench", "nope"], "No such command 'nope'"),
    (["validate"], "Missing argument"),
])
def test_usage_error_is_one_line_and_exit_2(argv, fragment):
    proc = jaxsched(*argv)
    assert proc.returncode == 2, proc.stderr
    assert proc.stdout == ""
    assert fragment in one_line_error(proc)


def test_version():
    from jaxsched import __version__

    proc = jaxsched("--version")
    assert proc.returncode == 0 and proc.stderr == ""
    assert proc.stdout.strip() == f"jaxsched {__version__}"


@pytest.mark.parametrize("argv", [["-h"], ["--help"], ["simulate", "-h"], ["bench", "--help"],
                                  [], ["bench"]])
def test_help_exits_0_on_stdout(argv):
    proc = jaxsched(*argv, env={**os.environ, "COLUMNS": "80"})
    assert proc.returncode == 0 and proc.stderr == ""
    assert "Usage: jaxsched" in proc.stdout
    assert all(len(line) <= 80 for line in proc.stdout.splitlines())


def test_help_shows_metavars_not_python_types():
    proc = jaxsched("simulate", "--help", env={**os.environ, "COLUMNS": "120"})
    assert proc.returncode == 0
    assert "<bool>" not in proc.stdout and "<list[str]>" not in proc.stdout
    assert "KEY=VALUE" in proc.stdout and "INTEGER" in proc.stdout


def test_shell_completion_is_offered():
    proc = jaxsched("--help", env={**os.environ, "COLUMNS": "120"})
    assert "--install-completion" in proc.stdout
    # the script for a named shell (--show-completion detects the shell from the process
    # tree, which a detached run does not have)
    script = jaxsched(env={**os.environ, "_JAXSCHED_COMPLETE": "source_bash"})
    assert script.returncode == 0 and "_JAXSCHED_COMPLETE" in script.stdout


def test_usage_errors_do_not_import_jax():
    # the command line is checked before the simulator's dependencies load
    code = ("import sys; from jaxsched.cli import main; c = main(['simulate', '--bogus']); "
            "print(c, 'jax' in sys.modules)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=60)
    assert proc.stdout.split() == ["2", "False"]


# --- signals ----------------------------------------------------------------------------------

LONG = ["simulate", "--set", "workload.num_workloads=2", "--set", "workload.horizon=400000",
        "--set", "workload.warmup=10", "--chunk", "500"]


def _signal_when(argv, sig, marker: str | None, delay: float = 0.0):
    """Start ``jaxsched argv`` with JAX's compile log on; once a stderr line contains
    ``marker`` (None: at once), wait ``delay`` s and send ``sig``. Returns (rc, stderr)."""
    env = {**os.environ, "JAX_LOG_COMPILES": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "jaxsched", *argv], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env)
    lines: list[str] = []
    seen = threading.Event()

    def read():
        for line in proc.stderr:
            lines.append(line)
            if marker is not None and marker in line:
                seen.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        if marker is not None:
            assert seen.wait(180), "".join(lines[-20:])
        time.sleep(delay)
        assert proc.poll() is None, "the run ended before the signal"
        proc.send_signal(sig)
        proc.wait(timeout=60)
    finally:
        proc.kill()
        proc.wait()
    reader.join(10)
    return proc.returncode, "".join(lines)


def _last_line_is_the_signal(stderr: str, code: int) -> None:
    assert "Traceback" not in stderr and "Fatal Python error" not in stderr, stderr[-2000:]
    ours = [line for line in stderr.splitlines() if line.startswith("error: ")]
    expected = {130: "error: interrupted (SIGINT)", 143: "error: terminated (SIGTERM)"}[code]
    assert ours == [expected], stderr[-2000:]
    assert stderr.rstrip().endswith(expected)


@pytest.mark.parametrize("sig, code, marker, delay", [
    (signal.SIGINT, 130, None, 0.3),                                    # importing
    (signal.SIGTERM, 143, "Compiling jit(local)", 0.5),                 # XLA compiling
    (signal.SIGINT, 130, "Compiling jit(local)", 1.0),
    (signal.SIGTERM, 143, "Finished XLA compilation of jit(local)", 0.5),  # running
    (signal.SIGINT, 130, "Finished XLA compilation of jit(local)", 1.5),
])
def test_signal_during_simulate_is_one_line_and_128_plus_signum(sig, code, marker, delay):
    rc, stderr = _signal_when(LONG, sig, marker, delay)
    assert rc == code, stderr[-2000:]
    _last_line_is_the_signal(stderr, code)


def test_sigterm_during_tune_compile(tmp_path):
    argv = ["tune", "configs/flow-control-small.toml", "--trials", "400", "--batch", "4",
            "--workloads", "1", "--no-plots", "--storage", str(tmp_path / "t.db"),
            "--set", "workload.horizon=2000"]
    rc, stderr = _signal_when(argv, signal.SIGTERM, "Compiling jit(", 2.0)
    assert rc == 143, stderr[-2000:]
    _last_line_is_the_signal(stderr, 143)


# --- output paths, checked before any work -----------------------------------------------------

# a folder nobody can create files in, root included (the mode bits do not stop root)
UNWRITABLE = "/proc/self"


@pytest.mark.parametrize("argv, fragment", [
    (["simulate", "--plot", "x.xyz"], "--plot x.xyz: expected a .png or .svg or .pdf file"),
    (["simulate", "--plot", "{tmp}/missing/x.png"], "/missing does not exist"),
    (["simulate", "--plot", f"{UNWRITABLE}/x.png"], "is not writable"),
    (["simulate", "--plot", "{tmp}/dir.png"], "is a folder, expected a file"),
    (["bench", "scale", "--plot", "scale.txt"], "--plot scale.txt: expected a .png"),
    (["export", "--study", "s", "--storage", "{tmp}/nope.db"], "nope.db: no such SQLite file"),
    (["export", "--study", "s", "--storage", "sqlite:///{tmp}/nope.db"], "no such SQLite file"),
    (["export", "--study", "s", "--out", f"{UNWRITABLE}/p.json"], "--out"),
    (["export", "--study", "s", "--out", "{tmp}/missing/p.json"], "does not exist"),
    (["reproduce", "flow-control", "--out", f"{UNWRITABLE}/r"], "--out"),
    (["tune", "configs/flow-control-small.toml", "--plots", f"{UNWRITABLE}/p"], "--plots"),
    (["calibrate", "--out", "profile.json"], "--out profile.json: expected a .toml file"),
])
def test_output_paths_are_refused_before_any_work(argv, fragment, tmp_path):
    argv = [a.replace("{tmp}", str(tmp_path)) for a in argv]
    (tmp_path / "dir.png").mkdir()
    proc = jaxsched(*argv)
    assert proc.returncode == 2, proc.stderr
    assert fragment in one_line_error(proc)
    assert not (tmp_path / "nope.db").exists()  # a missing database is not created


def test_sigint_during_reproduce(tmp_path):
    argv = ["reproduce", "flow-control", "--scale", "0.05", "--out", str(tmp_path / "r")]
    rc, stderr = _signal_when(argv, signal.SIGINT, "Compiling jit(local)", 0.5)
    assert rc == 130, stderr[-2000:]
    _last_line_is_the_signal(stderr, 130)
