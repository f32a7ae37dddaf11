"""The server against the official ``openai`` Python client on 127.0.0.1: completions and
chat completions (streamed and not, usage in the last chunk), the latency histograms, and
faults (a body nested 100,000 deep, clients that disconnect before their reply)."""

from __future__ import annotations

import asyncio
import time

import httpx
import openai
import pytest

from jaxsched.engine import Engine, SamplingParams
from jaxsched.engine.server import chat_prompt, create_app
from jaxsched.engine.testing import TEST_ENGINE, LoopbackServer, solo_outputs, tiny_params
from jaxsched.engine.tokenizer import ByteTokenizer


def scrape(base: str) -> dict[str, float]:
    """``/metrics`` as ``{sample name with labels: value}``."""
    r = httpx.get(base + "/metrics")
    assert r.status_code == 200
    values = {}
    for line in r.text.splitlines():
        if line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            values[name] = float(value)
    return values


@pytest.fixture(scope="module")
def server():
    engine = Engine(engine_cfg=TEST_ENGINE, params=tiny_params())
    with LoopbackServer(create_app(engine, model_name="tiny")) as base:
        client = openai.OpenAI(base_url=base + "/v1", api_key="unused", max_retries=0,
                               timeout=60)
        yield base, client, engine


def greedy(prompt: str, n: int) -> str:
    ids = solo_outputs([prompt], [SamplingParams(max_tokens=n, ignore_eos=True)])[0]
    return ByteTokenizer().decode(ids)


def test_completions_with_the_openai_client(server):
    base, client, _ = server
    res = client.completions.create(model="tiny", prompt="The cache", max_tokens=12,
                                    temperature=0, extra_body={"ignore_eos": True})
    assert res.object == "text_completion" and res.model == "tiny"
    assert res.choices[0].text == greedy("The cache", 12)
    assert res.choices[0].finish_reason == "length"
    assert (res.usage.prompt_tokens, res.usage.completion_tokens) == (10, 12)
    chunks = list(client.completions.create(
        model="tiny", prompt="The cache", max_tokens=12, temperature=0, stream=True,
        stream_options={"include_usage": True}, extra_body={"ignore_eos": True}))
    *texts, last = chunks
    assert "".join(c.choices[0].text for c in texts) == res.choices[0].text
    assert all(c.usage is None for c in texts)
    assert last.choices == [] and last.usage.model_dump() == res.usage.model_dump()
    # the defaults OpenAI documents: temperature 1.0 (random sampling), 16 tokens
    res = client.completions.create(model="tiny", prompt="Hello", seed=3,
                                    extra_body={"ignore_eos": True})
    assert res.usage.completion_tokens == 16


def test_chat_completions_with_the_openai_client(server):
    base, client, _ = server
    messages = [{"role": "system", "content": "Be brief."},
                {"role": "user", "content": [{"type": "text", "text": "Hi"}]}]
    prompt = chat_prompt(messages)
    assert prompt == "<|system|>\nBe brief.\n<|user|>\nHi\n<|assistant|>\n"
    res = client.chat.completions.create(model="tiny", messages=messages, temperature=0,
                                         max_completion_tokens=9,
                                         extra_body={"ignore_eos": True})
    assert res.object == "chat.completion"
    msg = res.choices[0].message
    assert msg.role == "assistant" and msg.content == greedy(prompt, 9)
    assert res.choices[0].finish_reason == "length"
    assert res.usage.completion_tokens == 9
    assert res.usage.prompt_tokens == len(ByteTokenizer().encode(prompt))
    stream = client.chat.completions.create(
        model="tiny", messages=messages, temperature=0, max_tokens=9, stream=True,
        stream_options={"include_usage": True}, extra_body={"ignore_eos": True})
    chunks = list(stream)
    assert all(c.object == "chat.completion.chunk" for c in chunks)
    assert chunks[0].choices[0].delta.role == "assistant"
    *body, last = chunks
    assert "".join(c.choices[0].delta.content or "" for c in body) == msg.content
    assert body[-1].choices[0].finish_reason == "length"
    assert last.choices == [] and last.usage.model_dump() == res.usage.model_dump()
    # the client's stream helper, and fields clients send that the server ignores or
    # accepts at their neutral values
    with client.chat.completions.stream(model="tiny", messages=messages, temperature=0,
                                        max_tokens=9, n=1, presence_penalty=0,
                                        frequency_penalty=0, logprobs=False, store=False,
                                        parallel_tool_calls=False, user="u",
                                        extra_body={"ignore_eos": True}) as s:
        done = [ev.content for ev in s if ev.type == "content.done"]
    assert done == [msg.content]
    # a plain call: every default
    res = client.chat.completions.create(model="tiny", messages=[{"role": "user",
                                                                  "content": "hi"}])
    assert res.choices[0].finish_reason in ("length", "stop")


def test_bad_requests(server):
    base, client, _ = server
    with pytest.raises(openai.BadRequestError, match="stream_options is only allowed"):
        client.chat.completions.create(model="tiny", messages=[{"role": "user",
                                                                "content": "hi"}],
                                       stream_options={"include_usage": True})
    with pytest.raises(openai.BadRequestError, match="tools"):
        client.chat.completions.create(model="tiny", messages=[{"role": "user",
                                                                "content": "hi"}],
                                       tools=[{"type": "function",
                                               "function": {"name": "f"}}])
    with pytest.raises(openai.NotFoundError, match="does not exist"):
        client.chat.completions.create(model="gpt-9", messages=[{"role": "user",
                                                                 "content": "hi"}])
    cases = [({"messages": []}, "non-empty list"),
             ({"messages": [{"role": "robot", "content": "x"}]}, "role"),
             ({"messages": [{"role": "user", "content": [{"type": "image_url"}]}]},
              "text parts"),
             ({"messages": [{"role": "user", "content": "x"}], "bogus": 1}, "unknown field"),
             ({"messages": [{"role": "user", "content": "x"}],
               "max_completion_tokens": 0}, "max_completion_tokens"),
             ({"prompt": "x", "stream": True, "stream_options": {"x": 1}}, "stream_options")]
    for body, text in cases:
        route = "/v1/completions" if "prompt" in body else "/v1/chat/completions"
        r = httpx.post(base + route, json=body)
        assert r.status_code == 400, body
        assert text in r.json()["error"]["message"], (body, r.text)


def test_deeply_nested_body_is_a_counted_json_400(server):
    base, _, _ = server
    before = scrape(base).get(
        'jaxsched_http_responses_total{code="400",route="/v1/completions"}', 0)
    for route in ("/v1/completions", "/v1/chat/completions"):
        r = httpx.post(base + route, content=b"[" * 100_000 + b"]" * 100_000,
                       headers={"content-type": "application/json"})
        assert r.status_code == 400 and r.headers["content-type"] == "application/json"
        assert r.json()["error"]["message"] == "invalid JSON body: nested too deeply"
    after = scrape(base)
    assert after['jaxsched_http_responses_total{code="400",route="/v1/completions"}'] \
        == before + 1
    assert after['jaxsched_http_responses_total{code="400",route="/v1/chat/completions"}'] >= 1
    assert httpx.get(base + "/health").status_code == 200


def test_latency_histograms(server):
    base, client, _ = server
    names = ("jaxsched_request_time_to_first_token_seconds",
             "jaxsched_request_time_per_output_token_seconds",
             "jaxsched_request_e2e_latency_seconds")
    before = scrape(base)
    t0 = time.monotonic()
    for n in (1, 5):
        client.completions.create(model="tiny", prompt="ab", max_tokens=n, temperature=0,
                                  extra_body={"ignore_eos": True})
    wall = time.monotonic() - t0
    after = scrape(base)
    counts = {m: after[f"{m}_count"] - before.get(f"{m}_count", 0) for m in names}
    assert counts == {names[0]: 2, names[1]: 1, names[2]: 2}  # TPOT needs >= 2 tokens
    e2e = after[f"{names[2]}_sum"] - before.get(f"{names[2]}_sum", 0)
    ttft = after[f"{names[0]}_sum"] - before.get(f"{names[0]}_sum", 0)
    assert 0 < ttft <= e2e <= wall
    assert after[f'{names[2]}_bucket{{le="+Inf"}}'] == after[f"{names[2]}_count"]


def test_disconnected_requests_are_aborted_and_free_their_blocks():
    """16 non-streamed and 4 streamed requests of 60 tokens; the clients go away once the
    first tokens are out: the engine stops them all and frees every block."""
    engine = Engine(engine_cfg=TEST_ENGINE, params=tiny_params())
    max_tokens, n_plain, n_stream = 60, 16, 4

    async def clients(base):
        async with httpx.AsyncClient(base_url=base, timeout=120,
                                     limits=httpx.Limits(max_connections=32)) as c:
            body = {"prompt": "a", "max_tokens": max_tokens, "ignore_eos": True,
                    "temperature": 0}

            async def streamed():
                async with c.stream("POST", "/v1/completions", json=body | {"stream": True}) \
                        as r:
                    async for _ in r.aiter_lines():
                        pass

            tasks = [asyncio.ensure_future(c.post("/v1/completions", json=body))
                     for _ in range(n_plain)]
            tasks += [asyncio.ensure_future(streamed()) for _ in range(n_stream)]
            while engine.metrics().generated_tokens_total == 0:
                await asyncio.sleep(0.005)
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    with LoopbackServer(create_app(engine)) as base:
        asyncio.run(clients(base))
        deadline = time.monotonic() + 60
        while True:
            m = scrape(base)
            if m["jaxsched_engine_running"] == m["jaxsched_engine_queue_length"] == 0:
                break
            assert time.monotonic() < deadline, m
            time.sleep(0.05)
        aborted = m['jaxsched_requests_aborted_total{route="/v1/completions"}']
    assert m["jaxsched_engine_requests_submitted_total"] == n_plain + n_stream
    assert aborted == n_plain + n_stream - m["jaxsched_engine_requests_completed_total"]
    assert aborted >= n_plain  # 4 slots: most requests were still waiting
    assert m["jaxsched_engine_generated_tokens_total"] < (n_plain + n_stream) * max_tokens / 2
    assert m["jaxsched_engine_kv_blocks_free"] == TEST_ENGINE.num_blocks
    assert engine.pool.num_used == 0 and not engine.requests
