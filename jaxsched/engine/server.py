"""An OpenAI-compatible HTTP server over the engine (starlette ASGI app, served by uvicorn).

Routes:

* ``POST /v1/completions`` - OpenAI completions. Body fields: ``prompt`` (a string, a list of
  token ids, or a list with one string), ``max_tokens`` (default 16, >= 1), ``temperature``
  (default 1.0, in [0, 2]; 0 is greedy), ``top_p`` (default 1, in (0, 1]), ``seed``
  (default: random), ``stop`` (a string or up to 4), ``stream`` (server-sent events, one
  ``data: {chunk}`` per new text, then ``data: [DONE]``), ``n`` (1 only), ``model`` (the
  served name or omitted), ``user``, and ``ignore_eos`` (vLLM's extension). ``echo``,
  ``logprobs``, ``suffix``, ``best_of``, ``logit_bias``, ``presence_penalty`` and
  ``frequency_penalty`` are accepted at their neutral values only. Other fields, invalid
  JSON, bad values and prompts the cache can never hold get a 4xx with an OpenAI-style
  ``{"error": {"message", "type", "param", "code"}}`` body; the server keeps serving.
* ``GET /health`` - 200 ``{"status": "ok"}`` while the engine thread is alive, else 503.
* ``GET /metrics`` - Prometheus text: queue length, running requests, KV blocks used/free,
  memory in tokens, evictions, tokens/s, iteration time, totals, HTTP responses by code.
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

from jaxsched.engine.batching import Engine, RequestError, RequestOutput, SamplingParams
from jaxsched.errors import JaxschedError

__all__ = ["EngineLoop", "create_app", "parse_completion_request", "serve", "BadRequest"]

log = logging.getLogger("jaxsched.engine.server")

_FIELDS = {"model", "prompt", "max_tokens", "temperature", "top_p", "seed", "stop", "stream",
           "n", "user", "ignore_eos"}
_NEUTRAL = {"echo": (False,), "logprobs": (None,), "suffix": (None, ""), "best_of": (None, 1),
            "logit_bias": (None, {}), "presence_penalty": (None, 0, 0.0),
            "frequency_penalty": (None, 0, 0.0)}


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
    from starlette.responses import JSONResponse

    kind = "invalid_request_error" if status < 500 else "server_error"
    return JSONResponse({"error": {"message": message, "type": kind, "param": param,
                                   "code": code}}, status_code=status)


def _is_int(x) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _is_num(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def parse_completion_request(body: Any, model_name: str) -> tuple[Any, SamplingParams, bool]:
    """Validate a completions body: ``(prompt, sampling, stream)``; :class:`BadRequest`."""
    if not isinstance(body, dict):
        raise BadRequest("the request body must be a JSON object")
    for key in body:
        if key in _NEUTRAL:
            if body[key] not in _NEUTRAL[key]:
                raise BadRequest(f"{key}={body[key]!r} is not supported", key)
        elif key not in _FIELDS:
            raise BadRequest(f"unknown field {key!r}", key)
    model = body.get("model")
    if model is not None and model != model_name:
        raise BadRequest(f"model {model!r} does not exist; this server serves {model_name!r}",
                         "model", 404, "model_not_found")
    if "prompt" not in body:
        raise BadRequest("missing field 'prompt'", "prompt")
    prompt = body["prompt"]
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
        prompt = prompt[0]
    if not (isinstance(prompt, str)
            or (isinstance(prompt, list) and prompt and all(_is_int(t) for t in prompt))):
        raise BadRequest("prompt must be a string, a list of token ids, or a list with one "
                         "string", "prompt")
    max_tokens = body.get("max_tokens", 16)
    if max_tokens is None:
        max_tokens = 16
    if not _is_int(max_tokens) or max_tokens < 1:
        raise BadRequest(f"max_tokens must be an integer >= 1, got {max_tokens!r}", "max_tokens")
    temperature = body.get("temperature", 1.0)
    temperature = 1.0 if temperature is None else temperature
    if not _is_num(temperature) or not 0 <= temperature <= 2:
        raise BadRequest(f"temperature must be a number in [0, 2], got {temperature!r}",
                         "temperature")
    top_p = body.get("top_p", 1.0)
    top_p = 1.0 if top_p is None else top_p
    if not _is_num(top_p) or not 0 < top_p <= 1:
        raise BadRequest(f"top_p must be a number in (0, 1], got {top_p!r}", "top_p")
    seed = body.get("seed")
    if seed is None:
        seed = random.getrandbits(32)
    elif not _is_int(seed) or not 0 <= seed < 2 ** 32:
        raise BadRequest(f"seed must be an integer in [0, 2^32), got {seed!r}", "seed")
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
        raise BadRequest(f"only n=1 is supported, got {n!r}", "n")
    stream = body.get("stream", False)
    if not isinstance(stream, bool):
        raise BadRequest(f"stream must be a boolean, got {stream!r}", "stream")
    ignore_eos = body.get("ignore_eos", False)
    if not isinstance(ignore_eos, bool):
        raise BadRequest(f"ignore_eos must be a boolean, got {ignore_eos!r}", "ignore_eos")
    user = body.get("user")
    if user is not None and not isinstance(user, str):
        raise BadRequest("user must be a string", "user")
    sampling = SamplingParams(max_tokens=max_tokens, temperature=float(temperature),
                              top_p=float(top_p), seed=seed, stop=tuple(stop),
                              ignore_eos=ignore_eos)
    return prompt, sampling, stream


def _metrics_registry(engine: Engine, http_counter_holder: dict):
    from prometheus_client import CollectorRegistry, Counter
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

    registry = CollectorRegistry(auto_describe=True)

    class EngineCollector:
        def collect(self):
            m = engine.metrics()
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
            for name, (doc, value) in gauges.items():
                yield GaugeMetricFamily(f"jaxsched_engine_{name}", doc, value=value)
            counters = {
                "evictions": ("evicted requests", m.evictions_total),
                "recomputed_tokens": ("cached tokens lost to evictions",
                                      m.recomputed_tokens_total),
                "requests_submitted": ("requests submitted", m.requests_submitted_total),
                "requests_completed": ("requests completed", m.requests_completed_total),
                "prompt_tokens": ("prompt tokens submitted", m.prompt_tokens_total),
                "generated_tokens": ("tokens generated", m.generated_tokens_total),
                "iterations": ("engine iterations", m.iterations_total),
            }
            for name, (doc, value) in counters.items():
                yield CounterMetricFamily(f"jaxsched_engine_{name}", doc, value=value)

    registry.register(EngineCollector())
    http_counter_holder["c"] = Counter("jaxsched_http_responses", "HTTP responses by route "
                                       "and status code", ["route", "code"], registry=registry)
    return registry


def create_app(engine: Engine, model_name: str = "jaxsched-tiny", loop: EngineLoop | None = None):
    """The starlette app serving ``engine`` (its lifespan runs an :class:`EngineLoop`)."""
    from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
    from starlette.applications import Starlette
    from starlette.responses import JSONResponse, Response, StreamingResponse
    from starlette.routing import Route

    loop = loop or EngineLoop(engine)
    holder: dict = {}
    registry = _metrics_registry(engine, holder)
    ids = itertools.count()

    def count(route: str, code: int) -> None:
        holder["c"].labels(route, str(code)).inc()

    def fail(route, message, status=400, param=None, code=None):
        count(route, status)
        return _error(message, status, param, code)

    async def completions(request):
        route = "/v1/completions"
        raw = await request.body()
        try:
            body = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            return fail(route, f"invalid JSON body: {err}")
        try:
            prompt, sampling, stream = parse_completion_request(body, model_name)
        except BadRequest as err:
            return fail(route, str(err), err.status, err.param, err.code)
        aio = asyncio.get_running_loop()
        updates: asyncio.Queue = asyncio.Queue()

        def listener(out: RequestOutput) -> None:
            if stream or out.finished:
                aio.call_soon_threadsafe(updates.put_nowait, out)

        rid = f"cmpl-{next(ids)}-{random.getrandbits(32):08x}"
        try:
            engine.submit(prompt, sampling, request_id=rid, listener=listener)
        except RequestError as err:
            code = "context_length_exceeded" if "exceeds" in str(err) else None
            return fail(route, str(err), 400, "prompt" if code else None, code)
        loop.wake()
        created = int(time.time())

        def chunk(text: str, finish: str | None) -> str:
            return "data: " + json.dumps({
                "id": rid, "object": "text_completion", "created": created, "model": model_name,
                "choices": [{"index": 0, "text": text, "logprobs": None,
                             "finish_reason": finish}],
            }) + "\n\n"

        if stream:
            async def events():
                sent = ""
                finished = False
                try:
                    while True:
                        out = await updates.get()
                        text = out.text
                        delta = text[len(sent):] if text.startswith(sent) else ""
                        if delta:
                            sent += delta
                        if out.finished:
                            finished = True
                            if out.finish_reason == "error":
                                yield "data: " + json.dumps({"error": {
                                    "message": out.error, "type": "server_error"}}) + "\n\n"
                            else:
                                yield chunk(delta, out.finish_reason)
                            yield "data: [DONE]\n\n"
                            return
                        if delta:
                            yield chunk(delta, None)
                finally:
                    if not finished:  # client went away
                        engine.abort(rid)
                        loop.wake()

            count(route, 200)
            return StreamingResponse(events(), media_type="text/event-stream",
                                     headers={"Cache-Control": "no-cache"})

        try:
            out = await updates.get()
        except asyncio.CancelledError:
            engine.abort(rid)
            loop.wake()
            raise
        if out.finish_reason == "error":
            return fail(route, out.error or "engine error", 500)
        count(route, 200)
        return JSONResponse({
            "id": rid, "object": "text_completion", "created": created, "model": model_name,
            "choices": [{"index": 0, "text": out.text, "logprobs": None,
                         "finish_reason": out.finish_reason}],
            "usage": {"prompt_tokens": out.prompt_tokens,
                      "completion_tokens": len(out.token_ids),
                      "total_tokens": out.prompt_tokens + len(out.token_ids)},
        })

    async def health(request):
        if loop.alive:
            count("/health", 200)
            return JSONResponse({"status": "ok"})
        count("/health", 503)
        return JSONResponse({"status": "engine not running"}, status_code=503)

    async def metrics(request):
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

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
    import uvicorn

    uvicorn.run(create_app(engine, model_name), host=host, port=port, log_level=log_level)
