"""Discoverability: ``jaxsched policies``, ``jaxsched configs``, the generated config reference,
and configs by name from an installed wheel (package data), through real subprocesses."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def jaxsched(*args, **kw):
    return subprocess.run([sys.executable, "-m", "jaxsched", *args], capture_output=True,
                          text=True, timeout=120, **kw)


def test_policies_lists_every_policy_with_its_parameters():
    from jaxsched.policies import get_policy, list_policies

    proc = jaxsched("policies", "--json")
    assert proc.returncode == 0, proc.stderr
    cat = {p["name"]: p for p in json.loads(proc.stdout)}
    assert sorted(cat) == list_policies()
    for name, entry in cat.items():
        spec = get_policy(name).params
        assert [q["name"] for q in entry["params"]] == list(spec)
        for q in entry["params"]:
            assert q["default"] == spec[q["name"]].default
            assert q["low"] == spec[q["name"]].low and q["high"] == spec[q["name"]].high
    assert cat["flow_control"]["paper"].startswith("Dong & Cao 2026")
    assert "arXiv 2504.11320" in cat["wait"]["paper"]
    assert cat["flow_control"]["options"]["eviction"] == "newest"


def test_policies_table_fits_80_columns_and_names_the_paper():
    proc = jaxsched("policies", env={**os.environ, "COLUMNS": "80"})
    assert proc.returncode == 0
    assert all(len(line) <= 80 for line in proc.stdout.splitlines())
    assert "budget = 1.0 [0, inf]" in proc.stdout and "Jaillet et al. 2025" in proc.stdout


def test_policy_by_name_and_unknown_name():
    proc = jaxsched("policies", "wait", env={**os.environ, "COLUMNS": "80"})
    assert proc.returncode == 0
    assert "threshold = 1 [1, 2^30], integer, per class, log scale" in proc.stdout
    assert "cohort" in proc.stdout  # the parameter's meaning and the docstring
    bad = jaxsched("policies", "nope")
    assert bad.returncode == 2 and "Traceback" not in bad.stderr
    assert bad.stderr.strip().splitlines() == [bad.stderr.strip()]
    assert "unknown policy 'nope'; known policies: alpha_protection" in bad.stderr


def test_configs_lists_the_shipped_configs():
    proc = jaxsched("configs", "--json")
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    names = {c["name"]: c for c in data["configs"]}
    assert set(names) == {p.stem for p in (ROOT / "configs").glob("*.toml")}
    assert names["flow-control"]["capacity"] == 16492 and names["saturated"]["workload"] == "saturated"
    assert names["flow-control-small"]["policy"] == "flow_control"
    assert all(c["description"] and "error" not in c for c in data["configs"])
    text = jaxsched("configs", env={**os.environ, "COLUMNS": "80"})
    assert all(len(line) <= 80 for line in text.stdout.splitlines())


def test_config_reference_is_up_to_date():
    from jaxsched.cli.catalog import config_reference as render

    committed = (ROOT / "docs" / "config-reference.md").read_text()
    assert committed == render(), ("docs/config-reference.md is stale: run "
                                   "python -m jaxsched.cli.catalog > docs/config-reference.md")
    from jaxsched.config import SystemConfig, WorkloadConfig

    for key in (*SystemConfig.model_fields, *WorkloadConfig.model_fields):
        assert f"`system.{key}`" in committed or f"`workload.{key}`" in committed


def test_configs_work_by_name_from_an_installed_wheel(tmp_path):
    """Build a wheel, install it into a throwaway venv (no dependencies: the system site's),
    and load a shipped config by name from outside the source tree."""
    src = tmp_path / "src"  # a copy: building in the checkout would leave build/ there
    shutil.copytree(ROOT, src, ignore=shutil.ignore_patterns(".git", "build", "out", "*.db",
                                                             "__pycache__", "*.egg-info"))
    wheel_dir = tmp_path / "wheel"
    build = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps",
                            "--no-build-isolation", "-q", "-w", str(wheel_dir), str(src)],
                           capture_output=True, text=True, timeout=300, cwd=tmp_path)
    if build.returncode != 0:
        pytest.skip(f"cannot build a wheel here: {build.stderr.strip()[-300:]}")
    (wheel,) = wheel_dir.glob("jaxsched-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    for p in (ROOT / "configs").rglob("*.toml"):
        assert f"jaxsched/configs/{p.relative_to(ROOT / 'configs').as_posix()}" in names
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", str(venv)],
                   check=True, timeout=120)
    py = venv / "bin" / "python"
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    # --force-reinstall: the system site may hold jaxsched (an editable checkout) already
    inst = subprocess.run([str(py), "-m", "pip", "install", "--no-deps", "--force-reinstall",
                           str(wheel)], capture_output=True, text=True, timeout=300, env=env)
    assert inst.returncode == 0, inst.stdout + inst.stderr
    code = ("import jaxsched, jaxsched.config as c; "
            "cfg = c.load_config('flow-control'); print(jaxsched.__file__); print(cfg.capacity)")
    proc = subprocess.run([str(py), "-c", code], capture_output=True, text=True, timeout=120,
                          cwd=tmp_path, env=env)
    assert proc.returncode == 0, proc.stderr
    where, capacity = proc.stdout.split()
    assert Path(where).is_relative_to(venv), inst.stdout  # the wheel's copy, not a checkout
    assert float(capacity) == 16492
    listed = subprocess.run([str(py), "-m", "jaxsched", "configs", "--json"], capture_output=True,
                            text=True, timeout=120, cwd=tmp_path, env=env)
    assert listed.returncode == 0, listed.stderr
    data = json.loads(listed.stdout)
    assert Path(data["folder"]).is_relative_to(venv) and len(data["configs"]) >= 7
