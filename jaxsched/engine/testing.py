"""Helpers for engine tests: one shared small engine shape (so jitted steps compile once per
test session), cached tiny weights, one-at-a-time reference decoding, and a driver that runs
the engine on a simulator :class:`~jaxsched.core.model.Workload` in lockstep with the slotted
simulator (``d0 = 1, d1 = 0``)."""

from __future__ import annotations

import dataclasses
import functools
import socket
import threading
import time
from typing import Any, Sequence

import numpy as np
import uvicorn

from jaxsched.engine.batching import Engine, SamplingParams
from jaxsched.engine.config import TINY, EngineConfig, ModelConfig
from jaxsched.engine.model import init_params

__all__ = [
    "TEST_ENGINE",
    "tiny_params",
    "random_prompts",
    "solo_outputs",
    "engine_trace",
    "SIM_FIELDS",
    "LoopbackServer",
]

TEST_ENGINE = EngineConfig(block_size=4, num_blocks=40, max_batch=4, queue_size=8,
                           max_seq_len=64, min_prefill_bucket=16)
"""Block size 4, 40 blocks (capacity 144 tokens; tests lower it with ``capacity_tokens``),
4 slots, a window of 8, 64 tokens per request: prefill buckets 16, 32, 64."""

SIM_FIELDS = ("admitted", "evicted", "completed", "memory", "overflow", "prefill_tokens",
              "decode_tokens", "context_tokens", "num_waiting", "num_resident")
"""Per-iteration fields compared between the engine and the simulator."""


@functools.lru_cache(maxsize=4)
def tiny_params(seed: int = 0, cfg: ModelConfig = TINY):
    """Random weights of ``cfg`` (cached)."""
    return init_params(cfg, seed)


def random_prompts(n: int, seed: int = 0, low: int = 1, high: int = 24,
                   vocab: int = 256) -> list[list[int]]:
    """``n`` prompts of byte token ids with lengths in ``[low, high]``."""
    rs = np.random.RandomState(seed)
    return [[int(t) for t in rs.randint(0, vocab, size=int(rs.randint(low, high + 1)))]
            for _ in range(n)]


def solo_outputs(prompts: Sequence[Any], samplings: Sequence[SamplingParams],
                 engine_cfg: EngineConfig = TEST_ENGINE, params=None,
                 cfg: ModelConfig = TINY) -> list[tuple[int, ...]]:
    """Token ids of each request decoded alone (one engine, one request at a time)."""
    params = tiny_params(0, cfg) if params is None else params
    engine = Engine(cfg, dataclasses.replace(engine_cfg, capacity_tokens=0), params)
    out = []
    for prompt, sp in zip(prompts, samplings):
        req = engine.submit(prompt, sp)
        engine.run_until_idle()
        out.append(req.output().token_ids)
    return out


def engine_trace(engine: Engine, workload, horizon: int, prompts: Sequence[Any] | None = None,
                 seed: int = 0) -> tuple[list[dict], list]:
    """Drive ``engine`` through ``horizon`` iterations of a single-replica simulator
    workload: before iteration ``k``, submit the requests with ``arrival <= k`` (prompts of
    the workload's lengths, ``max_tokens`` = its output, ``ignore_eos``). Returns
    ``(records, requests)``: per iteration a dict of :data:`SIM_FIELDS` (all zero when the
    engine had nothing to do) and the submitted requests."""
    arrival = np.asarray(workload.arrival)
    valid = np.asarray(workload.valid)
    prompt = np.asarray(workload.prompt)
    output = np.asarray(workload.output)
    cls = np.asarray(workload.cls)
    rs = np.random.RandomState(seed)
    order = [i for i in range(len(arrival)) if valid[i]]
    reqs, records, nxt = [], [], 0
    for k in range(horizon):
        while nxt < len(order) and arrival[order[nxt]] <= k:
            i = order[nxt]
            ids = (prompts[i] if prompts is not None
                   else [int(t) for t in rs.randint(0, 256, size=int(prompt[i]))])
            reqs.append(engine.submit(ids, SamplingParams(max_tokens=int(output[i]),
                                                          ignore_eos=True), cls=int(cls[i])))
            nxt += 1
        rec = engine.step()
        if rec is None:
            records.append({f: 0 for f in SIM_FIELDS} | {"overflow": False})
            continue
        records.append({
            "admitted": rec.admitted, "evicted": rec.evicted, "completed": rec.completed,
            "memory": rec.memory, "overflow": rec.overflow,
            "prefill_tokens": rec.prefill_tokens, "decode_tokens": rec.decode_tokens,
            "context_tokens": rec.context_tokens, "num_waiting": rec.num_waiting,
            "num_resident": rec.num_running,
        })
    return records, reqs


class LoopbackServer:
    """uvicorn serving an ASGI ``app`` on a free port of 127.0.0.1 in a thread; the context
    manager yields the base URL and shuts the server (and the app's lifespan) down on exit."""

    def __init__(self, app, start_timeout: float = 30.0):
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.start_timeout = start_timeout
        config = uvicorn.Config(app, log_level="warning", lifespan="on",
                                timeout_graceful_shutdown=5)
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]},
                                       daemon=True)

    def __enter__(self) -> str:
        self.thread.start()
        deadline = time.monotonic() + self.start_timeout
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("the server did not start")
            time.sleep(0.02)
        return f"http://127.0.0.1:{self.port}"

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=20)
        self.sock.close()
