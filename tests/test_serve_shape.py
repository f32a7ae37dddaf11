"""``jaxsched serve`` takes the engine's shape from the policy file's system or from flags;
a flag that contradicts the policy's system is refused unless --adapt-system. Real
subprocesses, real servers on 127.0.0.1."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time

import httpx
import openai
import pytest

from jaxsched.export import policy_file as ex

ENTRY = "import sys; from jaxsched.cli import main; sys.exit(main(sys.argv[1:]))"


def policy_file(tmp_path, capacity=600.0, max_batch=4, queue_size=8):
    snapshot = {
        "system": {"capacity": capacity, "d0": 0.002, "d1": 3e-6, "max_batch": max_batch,
                   "queue_size": queue_size, "restart_on_evict": False},
        "workload": {"kind": "poisson", "horizon": 100, "warmup": 10, "num_workloads": 2,
                     "seed": 0, "classes": [{"prompt_len": 16, "output_len": 8, "rate": 5.0}]},
        "policy": {"name": "greedy"},
    }
    doc = ex.policy_document(snapshot, {}, {k: 1.0 for k in ex.REQUIRED_METRICS},
                             source="t.toml", hardware=None, fingerprint="sha256:" + "0" * 64)
    return ex.write_policy(doc, tmp_path / "policy.json")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def metrics(base: str) -> dict[str, float]:
    out = {}
    for line in httpx.get(base + "/metrics").text.splitlines():
        if line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            out[name] = float(value)
    return out


@contextlib.contextmanager
def serving(*args):
    """``jaxsched serve ARGS`` on a free port; yields ``(base URL, stderr lines so far)``."""
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-c", ENTRY, "serve", "--port", str(port),
                             "--log-level", "warning", *args],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            env=dict(os.environ), text=True)
    base = f"http://127.0.0.1:{port}"
    lines = []
    try:
        deadline = time.monotonic() + 90
        while True:
            assert proc.poll() is None, proc.stderr.read()
            try:
                if httpx.get(base + "/health", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "server did not become healthy"
            time.sleep(0.2)
        yield base, lines
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)
        lines.extend(proc.stderr.read().splitlines())


def test_serve_takes_the_shape_of_the_policy_system(tmp_path):
    path = policy_file(tmp_path, capacity=600.0, max_batch=4, queue_size=8)
    with serving("--policy", str(path)) as (base, lines):
        m = metrics(base)
        assert m["jaxsched_engine_kv_capacity_tokens"] == 600
        assert m["jaxsched_engine_kv_blocks_total"] == -(-600 // 16) + 4
        client = openai.OpenAI(base_url=base + "/v1", api_key="unused", max_retries=0)
        res = client.chat.completions.create(model="jaxsched-tiny", temperature=0,
                                             messages=[{"role": "user", "content": "hi"}],
                                             max_tokens=3, extra_body={"ignore_eos": True})
        assert res.usage.completion_tokens == 3
    assert any("C = 600 tokens in 42 blocks of 16, 4 slots, window 8" in x for x in lines), lines


@pytest.mark.parametrize("flags, text", [
    (["--capacity", "1024"], "--capacity 1024: {path} was tuned for capacity C = 600 tokens "
                             "(system.capacity), not 1024"),
    (["--max-batch", "2"], "--max-batch 2: {path} was tuned for slots (max_batch) = 4"),
    (["--num-blocks", "20", "--block-size", "8"], "--num-blocks 20: {path} was tuned for "
                                                  "capacity C = 600 tokens"),
    (["--adapt-system"], None),
])
def test_serve_refuses_a_shape_other_than_the_policy_system(tmp_path, flags, text):
    path = policy_file(tmp_path)
    args = ["--policy", str(path)] if text else []
    res = subprocess.run([sys.executable, "-c", ENTRY, "serve", "--port", "1", *args, *flags],
                         capture_output=True, text=True, timeout=120)
    err = res.stderr.strip()
    assert res.returncode == 2 and "\n" not in err, err
    expected = text.format(path=path) if text else "--adapt-system: needs --policy FILE"
    assert expected in err and err.startswith("error: ")
    if text:
        assert "--adapt-system" in err


def test_serve_adapts_a_policy_only_when_told_and_says_what_changed(tmp_path):
    path = policy_file(tmp_path, capacity=600.0, max_batch=4, queue_size=8)
    with serving("--policy", str(path), "--capacity", "200", "--max-batch", "2",
                 "--block-size", "8", "--max-seq-len", "64", "--adapt-system") as (base, lines):
        m = metrics(base)
        assert m["jaxsched_engine_kv_capacity_tokens"] == 200
        assert m["jaxsched_engine_kv_blocks_total"] == 200 // 8 + 2
        r = httpx.post(base + "/v1/completions", json={"prompt": "x" * 70, "max_tokens": 1})
        assert r.status_code == 400 and "max_seq_len 64" in r.json()["error"]["message"]
    adapted = [x for x in lines if x.startswith("--adapt-system:")]
    assert len(adapted) == 1, lines
    assert "capacity C 600 -> 200 tokens" in adapted[0]
    assert "slots (max_batch) 4 -> 2" in adapted[0]
    assert "window" not in adapted[0]  # queue_size kept: only what changed is listed
