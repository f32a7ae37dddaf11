"""An OpenAI-compatible HTTP server over the engine (starlette ASGI app, served by uvicorn).

Routes:

* ``POST /v1/completions`` - OpenAI completions. Body fields: ``prompt`` (a string, a list of
  token ids, or a list with one string), ``max_tokens`` (default 16, >= 1), ``temperature``
  (default 1.0 as in OpenAI's API: random sampling; in [0, 2]; 0 is greedy), ``top_p``
  (default 1, in (0, 1]), ``seed`` (default: random), ``stop`` (a string or up to 4),
  ``stream`` (server-sent events, one ``data: {chunk}`` per new text, then ``data: [DONE]``),
  ``stream_options`` (with ``stream`` only: ``include_usage`` adds a last chunk with empty
  ``choices`` and the ``usage``; every chunk before it carries ``"usage": null``;
  ``include_obfuscation`` is ignored), ``n`` (1 only), ``model`` (the served name or
  omitted), ``user`` (ignored), and ``ignore_eos`` (vLLM's extension). ``echo``,
  ``logprobs``, ``suffix``, ``best_of``, ``logit_bias``, ``presence_penalty`` and
  ``frequency_penalty`` are accepted at their neutral values only.
* ``POST /v1/chat/completions`` - OpenAI chat completions: ``messages`` (roles system,
  developer, user, assistant, tool; content a string or a list of text parts) rendered by
  :func:`chat_prompt`, ``max_completion_tokens`` (or ``max_tokens``), and the sampling and
  streaming fields above; streamed chunks are ``chat.completion.chunk`` objects whose first
  delta carries the role. ``logprobs``, ``top_logprobs``, ``tools``, ``tool_choice``,
  ``functions``, ``function_call``, ``response_format`` (``text``), ``modalities``
  (``["text"]``), ``audio``, ``prediction`` and ``web_search_options`` are accepted at their
  neutral values only; ``store``, ``metadata``, ``service_tier``, ``parallel_tool_calls``,
  ``reasoning_effort``, ``verbosity``, ``safety_identifier``, ``prompt_cache_key``,
  ``prompt_cache_retention``, ``prompt_cache_options`` and ``moderation`` are ignored.
* Both: other fields, invalid JSON (nested too deeply included), bad values and prompts the
  cache can never hold get a 4xx with an OpenAI-style ``{"error": {"message", "type",
  "param", "code"}}`` body; an unexpected failure gets a JSON 500; all are counted and the
  server keeps serving. A client that disconnects before its reply aborts its request
  (streamed or not): the engine frees its blocks at the next iteration.
* ``GET /health`` - 200 ``{"status": "ok"}`` while the engine thread is alive, else 503.
* ``GET /metrics`` - Prometheus text: queue length, running requests, KV blocks used/free,
  memory in tokens, evictions, tokens/s, iteration time, totals, HTTP responses by route and
  code, requests aborted by a disconnect, and histograms of time to first token, time per
  output token (per request: ``(t_last - t_first) / (tokens - 1)``) and end-to-end latency
  of the requests that completed (``length`` or ``stop``), in seconds on the engine's clock
  from submission.
* ``GET /v1/models`` - the served model.

An :class:`EngineLoop` thread steps the engine while it has work and sleeps on an event
otherwise; the app's lifespan starts and stops it (requests still in flight at shutdown end
with ``finish_reason = "abort"``). :func:`serve` runs the app with uvicorn (loopback by
default).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import random
import threading
import time
from typing import Any

import uvicorn
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from starlette.applications import Starlette
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from jaxsched.engine.batching import Engine, RequestError, RequestOutput, SamplingParams
from jaxsched.errors import JaxschedError

__all__ = [
    "EngineLoop",
    "create_app",
    "parse_completion_request",
    "parse_chat_request",
    "chat_prompt",
    "serve",
    "BadRequest",
    "DEFAULT_MAX_TOKENS",
    "DEFAULT_TEMPERATURE",
    "LATENCY_BUCKETS",
    "TPOT_BUCKETS",
]

log = logging.getLogger("jaxsched.engine.server")

DEFAULT_MAX_TOKENS = 16
"""``max_tokens`` when a request omits it (as OpenAI's completions)."""

DEFAULT_TEMPERATURE = 1.0
"""``temperature`` when a request omits it (as OpenAI): random sampling; 0 is greedy."""

_COMMON = {"model", "max_tokens", "temperature", "top_p", "seed", "stop", "stream",
           "stream_options", "n", "user", "ignore_eos"}
_COMPLETION = _COMMON | {"prompt"}
_CHAT = _COMMON | {"messages", "max_completion_tokens"}
_NEUTRAL_COMMON = {"logit_bias": (None, {}), "presence_penalty": (None, 0, 0.0),
                   "frequency_penalty": (None, 0, 0.0)}
_NEUTRAL_COMPLETION = _NEUTRAL_COMMON | {"echo": (None, False), "logprobs": (None,),
                                         "suffix": (None, ""), "best_of": (None, 1)}
_NEUTRAL_CHAT = _NEUTRAL_COMMON | {
    "logprobs": (None, False), "top_logprobs": (None, 0), "tools": (None, []),
    "tool_choice": (None, "none", "auto"), "functions": (None, []),
    "function_call": (None, "none", "auto"), "response_format": (None, {"type": "text"}),
    "modalities": (None, ["text"]), "audio": (None,), "prediction": (None,),
    "web_search_options": (None,)}
_IGNORED_CHAT = {"store", "metadata", "service_tier", "parallel_tool_calls",
                 "reasoning_effort", "verbosity", "safety_identifier", "prompt_cache_key",
                 "prompt_cache_retention", "prompt_cache_options", "moderation"}
"""Chat fields accepted and ignored: they steer OpenAI's hosted service (storage, tiers,
caching, reasoning), not the text a model generates."""

_ROLES = ("system", "developer", "user", "assistant", "tool")


class BadRequest(JaxschedError, ValueError):
    """A request the server refuses with a 4xx."""

    def __init__(self, message: str, param: str | None = None, status: int = 400,
                 code: str | None = None):
        super().__init__(message)
        self.param, self.status, self.code = param, status, code


class EngineLoop:
    """Steps an :class:`Engine` in a daemon thread while it has work."""

    def __init__(self, engine: Engine, idle_wait: float = 0.05, stall_sleep: float = 0.001):
        self.engine = engine
        self.idle_wait = idle_wait
        self.stall_sleep = stall_sleep
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.errors = 0

    def start(self) -> None:
        if self._thread is None or not self._thread.is_alive():
            self._stop.clear()
            self._thread = threading.Thread(target=self._run, name="jaxsched-engine",
                                            daemon=True)
            self._thread.start()

    def wake(self) -> None:
        self._wake.set()

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def stop(self, timeout: float = 10.0) -> None:
        """Stop stepping; requests still active end with ``finish_reason = "abort"``."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)
        self._thread = None
        eng = self.engine
        eng._arrivals()
        for req in list(eng.residents) + list(eng.waiting):
            eng.abort(req.request_id)
        eng._arrivals()

    def _run(self) -> None:
        eng = self.engine
        while not self._stop.is_set():
            if not eng.has_work():
                self._wake.wait(self.idle_wait)
                self._wake.clear()
                continue
            try:
                rec = eng.step()
            except Exception as err:  # keep serving; fail what was in flight
                self.errors += 1
                log.exception("engine step failed")
                eng.fail_all(f"engine error: {type(err).__name__}: {err}")
                continue
            if rec is None or not (rec.prefill_tokens or rec.decode_tokens):
                time.sleep(self.stall_sleep)  # a policy holding requests back: do not spin


def _error(message: str, status: int = 400, param: str | None = None, code: str | None = None):
    kind = "invalid_request_error" if status < 500 else "server_error"
    return JSONResponse({"error": {"message": message, "type": kind, "param": param,
                                   "code": code}}, status_code=status)


def _is_int(x) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _is_num(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def _check_fields(body: Any, fields: set, neutral: dict, ignored: set = frozenset()) -> None:
    if not isinstance(body, dict):
        raise BadRequest("the request body must be a JSON object")
    for key in body:
        if key in neutral:
            if body[key] not in neutral[key]:
                raise BadRequest(f"{key}={_short(body[key])} is not supported", key)
        elif key not in fields and key not in ignored:
            raise BadRequest(f"unknown field {_short(key)}", key)


def _short(value: Any, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "..."


def _sampling(body: dict, model_name: str, max_tokens_key: str = "max_tokens"
              ) -> tuple[SamplingParams, bool, bool]:
    """The fields common to completions and chat: ``(sampling, stream, include_usage)``."""
    model = body.get("model")
    if model is not None and model != model_name:
        raise BadRequest(f"model {_short(model)} does not exist; this server serves "
                         f"{model_name!r}", "model", 404, "model_not_found")
    max_tokens = body.get(max_tokens_key)
    if max_tokens is None and max_tokens_key != "max_tokens":
        max_tokens_key = "max_tokens"
        max_tokens = body.get("max_tokens")
    if max_tokens is None:
        max_tokens = DEFAULT_MAX_TOKENS
    if not _is_int(max_tokens) or max_tokens < 1:
        raise BadRequest(f"{max_tokens_key} must be an integer >= 1, got {_short(max_tokens)}",
                         max_tokens_key)
    temperature = body.get("temperature")
    temperature = DEFAULT_TEMPERATURE if temperature is None else temperature
    if not _is_num(temperature) or not 0 <= temperature <= 2:
        raise BadRequest(f"temperature must be a number in [0, 2], got {_short(temperature)}",
                         "temperature")
    top_p = body.get("top_p")
    top_p = 1.0 if top_p is None else top_p
    if not _is_num(top_p) or not 0 < top_p <= 1:
        raise BadRequest(f"top_p must be a number in (0, 1], got {_short(top_p)}", "top_p")
    seed = body.get("seed")
    if seed is None:
        seed = random.getrandbits(32)
    elif not _is_int(seed) or not 0 <= seed < 2 ** 32:
        raise BadRequest(f"seed must be an integer in [0, 2^32), got {_short(seed)}", "seed")
    stop = body.get("stop")
    if stop is None:
        stop = ()
    elif isinstance(stop, str):
        stop = (stop,)
    if not (isinstance(stop, (list, tuple)) and len(stop) <= 4
            and all(isinstance(s, str) and s for s in stop)):
        raise BadRequest("stop must be a non-empty string or a list of up to 4 of them", "stop")
    n = body.get("n", 1)
    if n not in (None, 1) or isinstance(n, bool):
        raise BadRequest(f"only n=1 is supported, got {_short(n)}", "n")
    stream = body.get("stream")
    stream = False if stream is None else stream
    if not isinstance(stream, bool):
        raise BadRequest(f"stream must be a boolean, got {_short(stream)}", "stream")
    include_usage = False
    options = body.get("stream_options")
    if options is not None:
        if not stream:
            raise BadRequest("stream_options is only allowed with stream=true",
                             "stream_options")
        if not isinstance(options, dict) or set(options) - {"include_usage",
                                                             "include_obfuscation"}:
            raise BadRequest("stream_options must be an object with include_usage (and "
                             "include_obfuscation, ignored)", "stream_options")
        include_usage = options.get("include_usage", False)
        if not isinstance(include_usage, bool):
            raise BadRequest("stream_options.include_usage must be a boolean",
                             "stream_options")
    ignore_eos = body.get("ignore_eos", False)
    if not isinstance(ignore_eos, bool):
        raise BadRequest(f"ignore_eos must be a boolean, got {_short(ignore_eos)}",
                         "ignore_eos")
    user = body.get("user")
    if user is not None and not isinstance(user, str):
        raise BadRequest("user must be a string", "user")
    sampling = SamplingParams(max_tokens=max_tokens, temperature=float(temperature),
                              top_p=float(top_p), seed=seed, stop=tuple(stop),
                              ignore_eos=ignore_eos)
    return sampling, stream, include_usage


def parse_completion_request(body: Any, model_name: str
                             ) -> tuple[Any, SamplingParams, bool, bool]:
    """Validate a completions body: ``(prompt, sampling, stream, include_usage)``;
    :class:`BadRequest` otherwise."""
    _check_fields(body, _COMPLETION, _NEUTRAL_COMPLETION)
    if "prompt" not in body:
        raise BadRequest("missing field 'prompt'", "prompt")
    prompt = body["prompt"]
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
        prompt = prompt[0]
    if not (isinstance(prompt, str)
            or (isinstance(prompt, list) and prompt and all(_is_int(t) for t in prompt))):
        raise BadRequest("prompt must be a string, a list of token ids, or a list with one "
                         "string", "prompt")
    sampling, stream, usage = _sampling(body, model_name)
    return prompt, sampling, stream, usage


def _message_text(content: Any, i: int) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = []
        for part in content:
            if not (isinstance(part, dict) and part.get("type") == "text"
                    and isinstance(part.get("text"), str)):
                raise BadRequest(f"messages[{i}].content: only text parts "
                                 "({\"type\": \"text\", \"text\": ...}) are supported",
                                 "messages")
            parts.append(part["text"])
        return "".join(parts)
    raise BadRequest(f"messages[{i}].content must be a string or a list of text parts",
                     "messages")


def chat_prompt(messages: Any) -> str:
    """The chat template: each message as ``<|role|>\\n{content}\\n``, then
    ``<|assistant|>\\n`` for the reply (roles system, developer, user, assistant, tool;
    content a string or text parts). A model's own template is not read."""
    if not isinstance(messages, list) or not messages:
        raise BadRequest("messages must be a non-empty list", "messages")
    lines = []
    for i, msg in enumerate(messages):
        if not isinstance(msg, dict) or "role" not in msg:
            raise BadRequest(f"messages[{i}] must be an object with a role", "messages")
        role = msg["role"]
        if role not in _ROLES:
            raise BadRequest(f"messages[{i}].role {_short(role)}: expected one of "
                             f"{', '.join(_ROLES)}", "messages")
        content = msg.get("content")
        text = "" if content is None and role == "assistant" else _message_text(content, i)
        lines.append(f"<|{role}|>\n{text}\n")
    return "".join(lines) + "<|assistant|>\n"


def parse_chat_request(body: Any, model_name: str) -> tuple[str, SamplingParams, bool, bool]:
    """Validate a chat completions body: ``(prompt, sampling, stream, include_usage)`` with
    the prompt rendered by :func:`chat_prompt`; :class:`BadRequest` otherwise."""
    _check_fields(body, _CHAT, _NEUTRAL_CHAT, _IGNORED_CHAT)
    if "messages" not in body:
        raise BadRequest("missing field 'messages'", "messages")
    prompt = chat_prompt(body["messages"])
    sampling, stream, usage = _sampling(body, model_name, "max_completion_tokens")
    return prompt, sampling, stream, usage


LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0,
                   7.5, 10.0, 20.0, 40.0, 80.0)
"""Bucket bounds (seconds) of the TTFT and end-to-end latency histograms."""

TPOT_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4,
                0.5, 0.75, 1.0, 2.5)
"""Bucket bounds (seconds) of the time-per-output-token histogram."""


class _Metrics:
    """The server's Prometheus registry: the engine's gauges and counters (read at scrape
    time), HTTP responses by route and code, and per-request latency histograms."""

    def __init__(self, engine: Engine):
        self.registry = CollectorRegistry(auto_describe=True)
        self.registry.register(_EngineCollector(engine))
        self.http = Counter("jaxsched_http_responses", "HTTP responses by route and status "
                            "code", ["route", "code"], registry=self.registry)
        self.aborted = Counter("jaxsched_requests_aborted", "requests aborted because their "
                               "client disconnected, by route", ["route"],
                               registry=self.registry)
        self.ttft = Histogram("jaxsched_request_time_to_first_token_seconds",
                              "seconds from submission to the first generated token",
                              buckets=LATENCY_BUCKETS, registry=self.registry)
        self.tpot = Histogram("jaxsched_request_time_per_output_token_seconds",
                              "mean seconds per output token after the first, per request "
                              "(requests with >= 2 tokens)", buckets=TPOT_BUCKETS,
                              registry=self.registry)
        self.e2e = Histogram("jaxsched_request_e2e_latency_seconds",
                             "seconds from submission to the last token",
                             buckets=LATENCY_BUCKETS, registry=self.registry)

    def finished(self, req) -> None:
        """Observe a request that ended with ``length`` or ``stop`` (engine clock)."""
        if req.finish_reason not in ("length", "stop") or req.finish_time is None:
            return
        self.e2e.observe(max(0.0, req.finish_time - req.arrival))
        if req.first_token_time is not None:
            self.ttft.observe(max(0.0, req.first_token_time - req.arrival))
            n = len(req.generated)
            if n >= 2:
                self.tpot.observe(max(0.0, (req.finish_time - req.first_token_time) / (n - 1)))


class _EngineCollector:
    def __init__(self, engine: Engine):
        self.engine = engine

    def collect(self):
        m = self.engine.metrics()
        gauges = {
            "queue_length": ("requests waiting to be admitted", m.queue_length),
            "running": ("resident requests", m.running),
            "kv_blocks_used": ("KV cache blocks in use", m.kv_blocks_used),
            "kv_blocks_free": ("KV cache blocks free", m.kv_blocks_free),
            "kv_blocks_total": ("KV cache blocks in the pool", m.kv_blocks_total),
            "kv_capacity_tokens": ("scheduler capacity C in tokens", m.kv_capacity_tokens),
            "memory_tokens": ("memory M_k of the last iteration in tokens", m.memory_tokens),
            "tokens_per_second": ("generated tokens per second over the last 10 s",
                                  m.tokens_per_second),
            "iteration_seconds": ("duration of the last iteration", m.iteration_seconds),
        }
        counters = {
            "evictions": ("evicted requests", m.evictions_total),
            "recomputed_tokens": ("cached tokens lost to evictions", m.recomputed_tokens_total),
            "requests_submitted": ("requests submitted", m.requests_submitted_total),
            "requests_completed": ("requests completed", m.requests_completed_total),
            "prompt_tokens": ("prompt tokens submitted", m.prompt_tokens_total),
            "generated_tokens": ("tokens generated", m.generated_tokens_total),
            "iterations": ("engine iterations", m.iterations_total),
        }
        for family, table in ((GaugeMetricFamily, gauges), (CounterMetricFamily, counters)):
            for name, (doc, value) in table.items():
                yield family(f"jaxsched_engine_{name}", doc, value=value)


async def _disconnected(request) -> None:
    """Return once the client of ``request`` (whose body was read) has disconnected."""
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return


def create_app(engine: Engine, model_name: str = "jaxsched-tiny", loop: EngineLoop | None = None):
    """The starlette app serving ``engine`` (its lifespan runs an :class:`EngineLoop`)."""
    loop = loop or EngineLoop(engine)
    metrics_ = _Metrics(engine)
    ids = itertools.count()

    def count(route: str, code: int) -> None:
        metrics_.http.labels(route, str(code)).inc()

    def fail(route, message, status=400, param=None, code=None):
        count(route, status)
        return _error(message, status, param, code)

    def guarded(route: str):
        """Count and answer any uncaught error as a JSON 500 (the server keeps serving)."""
        def wrap(handler):
            async def run(request):
                try:
                    return await handler(request, route)
                except Exception as err:
                    log.exception("%s failed", route)
                    return fail(route, f"internal error: {type(err).__name__}", 500)
            return run
        return wrap

    async def read_json(request):
        """The body as JSON, or a :class:`BadRequest` (invalid, or nested too deeply)."""
        raw = await request.body()
        try:
            return json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise BadRequest(f"invalid JSON body: {err}") from None
        except RecursionError:
            raise BadRequest("invalid JSON body: nested too deeply") from None

    def usage(out: RequestOutput) -> dict:
        return {"prompt_tokens": out.prompt_tokens, "completion_tokens": len(out.token_ids),
                "total_tokens": out.prompt_tokens + len(out.token_ids)}

    async def generate(request, route, chat: bool):
        try:
            body = await read_json(request)
            parse = parse_chat_request if chat else parse_completion_request
            prompt, sampling, stream, include_usage = parse(body, model_name)
        except BadRequest as err:
            return fail(route, str(err), err.status, err.param, err.code)
        aio = asyncio.get_running_loop()
        updates: asyncio.Queue = asyncio.Queue()

        def listener(out: RequestOutput) -> None:
            if stream or out.finished:
                aio.call_soon_threadsafe(updates.put_nowait, out)

        rid = f"{'chatcmpl' if chat else 'cmpl'}-{next(ids)}-{random.getrandbits(32):08x}"
        try:
            req = engine.submit(prompt, sampling, request_id=rid, listener=listener)
        except RequestError as err:
            code = "context_length_exceeded" if "exceeds" in str(err) else None
            return fail(route, str(err), 400, "prompt" if code else None, code)
        loop.wake()
        created = int(time.time())
        kind = "chat.completion" if chat else "text_completion"
        head = {"id": rid, "object": kind + (".chunk" if chat and stream else ""),
                "created": created, "model": model_name}

        def abort() -> None:
            engine.abort(rid)
            loop.wake()
            metrics_.aborted.labels(route).inc()

        if stream:
            def event(choices: list, extra: dict | None = None) -> str:
                data = dict(head, choices=choices)
                if include_usage:
                    data["usage"] = None
                return "data: " + json.dumps(data | (extra or {})) + "\n\n"

            def piece(text: str, finish: str | None, first: bool = False) -> dict:
                if not chat:
                    return {"index": 0, "text": text, "logprobs": None, "finish_reason": finish}
                delta = {"role": "assistant", "content": text} if first else \
                    ({"content": text} if text else {})
                return {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}

            async def events():
                sent = ""
                finished = False
                try:
                    if chat:
                        yield event([piece("", None, first=True)])
                    while True:
                        out = await updates.get()
                        text = out.text
                        delta = text[len(sent):] if text.startswith(sent) else ""
                        sent += delta
                        if out.finished:
                            finished = True
                            if out.finish_reason == "error":
                                yield "data: " + json.dumps({"error": {
                                    "message": out.error, "type": "server_error"}}) + "\n\n"
                            else:
                                metrics_.finished(req)
                                yield event([piece(delta, out.finish_reason)])
                                if include_usage:
                                    yield event([], {"usage": usage(out)})
                            yield "data: [DONE]\n\n"
                            return
                        if delta:
                            yield event([piece(delta, None)])
                finally:
                    if not finished:  # client went away
                        abort()

            count(route, 200)
            return StreamingResponse(events(), media_type="text/event-stream",
                                     headers={"Cache-Control": "no-cache"})

        # Non-streamed: wait for the output or for the client to go away, whichever first.
        result = asyncio.ensure_future(updates.get())
        gone = asyncio.ensure_future(_disconnected(request))
        try:
            await asyncio.wait({result, gone}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            gone.cancel()
            if not result.done():
                result.cancel()
                abort()
        if result.cancelled():
            count(route, 499)  # nginx's "client closed request": nobody reads the reply
            return Response(status_code=499)
        out = result.result()
        if out.finish_reason == "error":
            return fail(route, out.error or "engine error", 500)
        metrics_.finished(req)
        count(route, 200)
        if chat:
            choice = {"index": 0, "message": {"role": "assistant", "content": out.text},
                      "logprobs": None, "finish_reason": out.finish_reason}
        else:
            choice = {"index": 0, "text": out.text, "logprobs": None,
                      "finish_reason": out.finish_reason}
        return JSONResponse(dict(head, choices=[choice], usage=usage(out)))

    @guarded("/v1/completions")
    async def completions(request, route):
        return await generate(request, route, chat=False)

    @guarded("/v1/chat/completions")
    async def chat_completions(request, route):
        return await generate(request, route, chat=True)

    async def health(request):
        if loop.alive:
            count("/health", 200)
            return JSONResponse({"status": "ok"})
        count("/health", 503)
        return JSONResponse({"status": "engine not running"}, status_code=503)

    async def metrics(request):
        return Response(generate_latest(metrics_.registry), media_type=CONTENT_TYPE_LATEST)

    async def models(request):
        return JSONResponse({"object": "list", "data": [
            {"id": model_name, "object": "model", "created": 0, "owned_by": "jaxsched"}]})

    @contextlib.asynccontextmanager
    async def lifespan(app):
        loop.start()
        try:
            yield
        finally:
            loop.stop()

    app = Starlette(routes=[
        Route("/v1/completions", completions, methods=["POST"]),
        Route("/v1/chat/completions", chat_completions, methods=["POST"]),
        Route("/health", health, methods=["GET"]),
        Route("/metrics", metrics, methods=["GET"]),
        Route("/v1/models", models, methods=["GET"]),
    ], lifespan=lifespan)
    app.state.engine = engine
    app.state.loop = loop
    return app


def serve(engine: Engine, host: str = "127.0.0.1", port: int = 8000,
          model_name: str = "jaxsched-tiny", log_level: str = "info") -> None:
    """Run the app with uvicorn until interrupted (loopback by default)."""
    uvicorn.run(create_app(engine, model_name), host=host, port=port, log_level=log_level)
