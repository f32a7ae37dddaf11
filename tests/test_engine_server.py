"""The OpenAI-compatible server: validation, streaming, health and metrics, and a load test
of 64 concurrent clients on 127.0.0.1 against one-at-a-time decoding."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import random
import time

import httpx
import pytest
from starlette.testclient import TestClient

from jaxsched.engine import Engine, SamplingParams
from jaxsched.engine.server import create_app
from jaxsched.engine.testing import TEST_ENGINE, LoopbackServer, solo_outputs, tiny_params
from jaxsched.engine.tokenizer import ByteTokenizer


@pytest.fixture(scope="module")
def served():
    engine = Engine(engine_cfg=TEST_ENGINE, params=tiny_params())
    app = create_app(engine, model_name="tiny")
    with TestClient(app) as client:
        yield client, engine


def sse_texts(lines):
    texts, finish, done = [], None, False
    for line in lines:
        if not line:
            continue
        assert line.startswith("data: ")
        data = line[len("data: "):]
        if data == "[DONE]":
            done = True
            continue
        assert not done
        choice = json.loads(data)["choices"][0]
        texts.append(choice["text"])
        finish = choice["finish_reason"] or finish
    assert done
    return "".join(texts), finish


BAD = [
    (b"{not json", 400, "invalid JSON"),
    (b"[1, 2]", 400, "JSON object"),
    ({"max_tokens": 3}, 400, "missing field 'prompt'"),
    ({"prompt": "hi", "max_tokens": -2}, 400, "max_tokens"),
    ({"prompt": "hi", "max_tokens": 0}, 400, "max_tokens"),
    ({"prompt": "hi", "max_tokens": 2.5}, 400, "max_tokens"),
    ({"prompt": "hi", "temperature": -1}, 400, "temperature"),
    ({"prompt": "hi", "top_p": 0}, 400, "top_p"),
    ({"prompt": "hi", "n": 2}, 400, "n=1"),
    ({"prompt": "hi", "logprobs": 3}, 400, "logprobs"),
    ({"prompt": "hi", "bogus": True}, 400, "unknown field 'bogus'"),
    ({"prompt": "x" * 100, "max_tokens": 4}, 400, "exceeds"),
    ({"prompt": [1, 999], "max_tokens": 4}, 400, "vocabulary"),
    ({"prompt": {"a": 1}}, 400, "prompt must be"),
    ({"prompt": "hi", "stop": ["", "x"]}, 400, "stop"),
    ({"prompt": "hi", "model": "gpt-9"}, 404, "does not exist"),
]


def test_bad_requests_get_4xx_and_the_server_keeps_serving(served):
    client, _ = served
    for body, status, text in BAD:
        if isinstance(body, bytes):
            r = client.post("/v1/completions", content=body,
                            headers={"content-type": "application/json"})
        else:
            r = client.post("/v1/completions", json=body)
        assert r.status_code == status, (body, r.text)
        err = r.json()["error"]
        assert text in err["message"] and "\n" not in err["message"]
        ok = client.post("/v1/completions",
                         json={"prompt": "hi", "max_tokens": 2, "temperature": 0})
        assert ok.status_code == 200
    assert client.get("/health").json() == {"status": "ok"}


def test_completion_stream_and_one_at_a_time_agree(served):
    client, engine = served
    body = {"model": "tiny", "prompt": "The cache", "max_tokens": 12, "temperature": 0,
            "ignore_eos": True}
    r = client.post("/v1/completions", json=body)
    assert r.status_code == 200
    res = r.json()
    choice = res["choices"][0]
    assert res["object"] == "text_completion" and res["model"] == "tiny"
    assert choice["finish_reason"] == "length"
    assert res["usage"] == {"prompt_tokens": 10, "completion_tokens": 12, "total_tokens": 22}
    ref = solo_outputs(["The cache"], [SamplingParams(max_tokens=12, ignore_eos=True)])[0]
    assert choice["text"] == ByteTokenizer().decode(ref)
    with client.stream("POST", "/v1/completions", json=body | {"stream": True}) as s:
        assert s.status_code == 200
        assert s.headers["content-type"].startswith("text/event-stream")
        text, finish = sse_texts(list(s.iter_lines()))
    assert text == choice["text"] and finish == "length"
    # token-id prompts and stop sequences
    r = client.post("/v1/completions", json={"prompt": [256, 84, 104], "max_tokens": 3,
                                             "temperature": 0})
    assert r.status_code == 200 and r.json()["usage"]["prompt_tokens"] == 3


def test_health_and_metrics(served):
    client, engine = served
    client.post("/v1/completions", json={"prompt": "hi", "max_tokens": 3, "temperature": 0})
    client.post("/v1/completions", json={"prompt": "hi", "max_tokens": -3})
    r = client.get("/metrics")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    text = r.text
    values = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            values[name] = float(value)
    for name in ("queue_length", "running", "kv_blocks_used", "kv_blocks_free",
                 "tokens_per_second", "iteration_seconds", "evictions_total",
                 "requests_completed_total", "generated_tokens_total"):
        assert f"jaxsched_engine_{name}" in values, name
    assert values["jaxsched_engine_kv_blocks_free"] == TEST_ENGINE.num_blocks
    assert values["jaxsched_engine_requests_completed_total"] >= 1
    assert values['jaxsched_http_responses_total{code="400",route="/v1/completions"}'] >= 1
    assert client.get("/v1/models").json()["data"][0]["id"] == "tiny"


# ------------------------------------------------------------------------------ load test


def test_load_64_concurrent_clients():
    rng = random.Random(7)
    words = "the quick brown fox jumps over a lazy dog while caches fill up".split()
    jobs = []
    for i in range(64):
        prompt = " ".join(rng.choice(words) for _ in range(rng.randint(1, 6)))[:40]
        body = {"prompt": prompt, "max_tokens": rng.randint(1, 12), "temperature": 0,
                "ignore_eos": i % 2 == 0, "stream": i % 3 == 0}
        if i % 5 == 0:  # seeded sampling
            body |= {"temperature": 0.8, "top_p": 0.9, "seed": 1000 + i}
        jobs.append(body)
    # a smaller capacity than the pool so that the load also evicts
    engine = Engine(engine_cfg=dataclasses.replace(TEST_ENGINE, capacity_tokens=96),
                    params=tiny_params())
    app = create_app(engine)
    tok = ByteTokenizer()

    async def one(client, body):
        if body["stream"]:
            async with client.stream("POST", "/v1/completions", json=body) as r:
                assert r.status_code == 200
                lines = [line async for line in r.aiter_lines()]
            return sse_texts(lines)
        r = await client.post("/v1/completions", json=body)
        assert r.status_code == 200, r.text
        choice = r.json()["choices"][0]
        return choice["text"], choice["finish_reason"]

    async def run_all(base):
        limits = httpx.Limits(max_connections=64, max_keepalive_connections=64)
        async with httpx.AsyncClient(base_url=base, timeout=120, limits=limits) as client:
            return await asyncio.wait_for(
                asyncio.gather(*(one(client, b) for b in jobs)), timeout=180)

    with LoopbackServer(app) as base:
        t0 = time.monotonic()
        results = asyncio.run(run_all(base))
        elapsed = time.monotonic() - t0
        assert httpx.get(base + "/health").status_code == 200
    # clean shutdown: uvicorn and the engine thread stopped
    assert not app.state.loop.alive
    assert len(results) == 64 and elapsed < 180
    m = engine.metrics()
    assert m.requests_completed_total == m.requests_submitted_total == 64
    assert m.queue_length == 0 and m.running == 0 and engine.pool.num_used == 0
    assert not engine.requests
    assert m.evictions_total > 0
    # outputs equal one-at-a-time decoding
    sps = [SamplingParams(max_tokens=b["max_tokens"], temperature=b["temperature"],
                          top_p=b.get("top_p", 1.0), seed=b.get("seed", 0),
                          ignore_eos=b["ignore_eos"]) for b in jobs]
    solo = solo_outputs([b["prompt"] for b in jobs], sps)
    for body, (text, finish), ids in zip(jobs, results, solo):
        assert text == tok.decode(ids), body
        assert finish == ("length" if len(ids) == body["max_tokens"] else "stop"), body
