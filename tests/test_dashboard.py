"""optuna-dashboard on a jaxsched study's storage, as the README documents: a real
``optuna-dashboard`` process on 127.0.0.1, its page loaded in headless Chromium (Debian's
``chromium`` package; skipped when it is not installed)."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time

import httpx
import pytest

from jaxsched.config import load_config
from jaxsched.testing import small_tuning_config
from tuning.optuna_loop import run_optuna
from tuning.tune_job import prepare

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def chromium(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    """Headless Chromium (no sandbox: CI runs as root), virtual time for the page's scripts."""
    return subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu",
                           "--disable-dev-shm-usage", "--virtual-time-budget=15000", *args],
                          capture_output=True, text=True, timeout=timeout)


@pytest.mark.skipif(CHROMIUM is None, reason="headless Chromium is not installed (Debian: "
                                             "apt-get install chromium)")
def test_optuna_dashboard_shows_the_study(tmp_path):
    dashboard = shutil.which("optuna-dashboard")
    assert dashboard, "optuna-dashboard is missing: pip install -e '.[test]'"
    cfg = tmp_path / "small.toml"
    cfg.write_text(small_tuning_config(horizon=60, workloads=2))
    url = f"sqlite:///{tmp_path / 'tune.db'}"
    out = run_optuna(prepare(load_config(cfg)), trials=4, batch=4, storage=url,
                         study_name="dash-study")
    assert out.evaluated == 4
    port = free_port()
    proc = subprocess.Popen([dashboard, url, "--host", "127.0.0.1", "--port", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None, proc.stderr.read()
            try:
                studies = httpx.get(base + "/api/studies", timeout=2).json()["study_summaries"]
                break
            except httpx.TransportError:
                assert time.monotonic() < deadline, "optuna-dashboard did not start"
                time.sleep(0.2)
        (study,) = studies
        assert study["study_name"] == "dash-study"
        # the study list, rendered by the page's scripts
        dom = chromium("--dump-dom", base + "/dashboard/")
        assert dom.returncode == 0, dom.stderr[-2000:]
        assert "dash-study" in dom.stdout
        # the study's own page: its name and trials in the DOM, and a screenshot
        page = f"{base}/dashboard/studies/{study['study_id']}"
        dom = chromium("--dump-dom", page)
        assert f"dash-study (id={study['study_id']})" in dom.stdout
        assert "History" in dom.stdout
        shot = tmp_path / "dashboard.png"
        res = chromium("--window-size=1280,800", f"--screenshot={shot}", page)
        assert res.returncode == 0 and shot.stat().st_size > 10_000, res.stderr[-2000:]
        assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)
