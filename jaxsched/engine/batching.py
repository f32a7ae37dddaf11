"""Continuous batching: a request queue and a scheduler that runs the simulator's policies.

Each call of :meth:`Engine.step` is one iteration of the model in :mod:`jaxsched.core.model`,
decided by the same :class:`~jaxsched.policies.base.Policy` functions the simulator runs and
applied with the same rules as :func:`jaxsched.core.sim.step`:

1. **Arrivals.** Requests submitted since the last iteration join the waiting queue, ordered
   by submission (an evicted request rejoins at its submission position).
2. **Admission.** A :class:`~jaxsched.policies.base.SchedView` is built from the engine's
   state, padded to the static ``max_batch`` (B) and ``queue_size`` (W): the first W waiting
   requests and the residents in admission order. ``policy.admit`` picks requests; admissions
   beyond the free slots are dropped in queue order; admitted requests become the newest
   residents, each with ``cached = 0`` and its kept tokens ``g``.
3. **Plan.** ``policy.plan`` says who runs and each one's prefill chunk cap; the chunk is
   clipped to the pending prefill ``l + g - cached``; a chunk that completes the prefill
   also generates a token.
4. **Memory.** ``need_i = cached_i + c_i + t_i``; with ``excess = sum need - C``,
   ``policy.evict`` chooses victims, then newest-first eviction until memory fits. An evicted
   request frees its blocks and rejoins the queue keeping its generated tokens (vLLM's
   recompute preemption, ``restart_on_evict = False``); at readmission it prefills its prompt
   plus the tokens generated so far.
5. **Execution.** Each prefilling survivor runs its chunk (one jitted call per request,
   padded to a power-of-two bucket); all decoding survivors run in one jitted decode call.
   The record counts the calls (``model_calls``) and the prefilling requests
   (``prefill_requests``, ``R``): an iteration costs a fixed amount per call besides its
   tokens, which ``tau = d0 + d1 (P + D) + d2 R`` models (the decode call's share in ``d0``).
6. **Completion.** A request finishes at ``max_tokens`` tokens, at EOS (unless
   ``ignore_eos``) or at a stop sequence, and frees its blocks.

Steps 2-4 are one jitted function (:func:`jaxsched.policies.decide.decide`, shared with the
vLLM plugin) per (policy, shape); the host applies its decisions to the block pool and the
request objects.

Memory accounting (the simulator's model, in tokens)
----------------------------------------------------
A request holds ``cached = l + s`` tokens after its prefill and ``s`` generated tokens
(``cached`` counts the prefill chunks processed so far while it prefills); in an iteration it
needs ``m = cached + c + t`` (``t = 1`` for the slot of the token it generates). The KV the
engine actually writes is at most that: the keys and values of the processed prompt and of
the generated tokens but the newest (whose KV is written when it is fed back), so
``kv_len = cached - 1`` once the prefill is complete and ``kv_len = cached`` before.

Memory is counted as ``EngineConfig.memory`` says. With ``"blocks"`` the policy sees the
model's block memory at the cache's ``block_size`` (``need = block_size ceil(m /
block_size)``, capacity ``C = num_blocks * block_size``): the blocks the engine allocates are
exactly the ones the policy and the simulator (``[system] block_size``) count, and the pool
holds them whenever ``sum need <= C``. With ``"tokens"`` (the default, the engine's behaviour
before block memory) the policy sees token memory and
the scheduler's capacity is ``C = (num_blocks - max_batch) * block_size`` tokens. Blocks are
allocated so that every survivor's block table covers its ``m`` tokens
(``ceil(m / block_size)`` blocks) before it runs, and freed when it is evicted or completes.
Rounding up wastes less than one block per resident, so with ``sum m <= C`` (which the
eviction step guarantees) the blocks in use are at most
``sum ceil(m_i / bs) <= (C + B (bs - 1)) / bs < C / bs + B = num_blocks``: the pool never runs
out (the engine raises :class:`~jaxsched.engine.cache.OutOfBlocks` if it ever did). With
``block_size = 1`` the accounting is exact and ``C = num_blocks - max_batch``.

A request can only ever complete if ``l + max_tokens <= min(C, max_seq_len)``; longer ones
are refused at submission. The policy sees ``max_tokens`` as the output length (policies
with known lengths read it; the true length may be shorter when EOS or a stop sequence ends
the request). ``view.time`` is wall-clock seconds since the engine started; arrival times
likewise.

Differences from the simulator
------------------------------
* The engine iterates only while it holds requests: the simulator's iterations of an empty
  system are not run, so policy state that counts iterations (SGLang's ratio decay) advances
  over busy iterations only. With requests present, every iteration is run, including ones
  where the policy holds everything back.
* Evicted requests always keep their tokens (``restart_on_evict = False``).
* Iteration times are measured, not ``d0 + d1 (P + D) + d2 R``; the records
  (:class:`IterationRecord`) are the data to fit ``d0, d1, d2`` on. ``Engine.time_calls``
  runs and times an iteration's model calls (:func:`run_calls`: once); calibration and
  ``compare-sim`` replace it by their measurement mode
  (:class:`jaxsched.engine.calibrate.MeasuredCalls`), so :meth:`Engine.step` only serves.

Given the same arrivals per iteration, the engine's admissions, evictions, memory and token
counts equal the simulator's iteration by iteration (``tests/test_engine_batching.py``).

Numerics
--------
Batched and single decoding are bitwise identical in float32 on CPU: every decode call has
the static shape ``(max_batch, 1)`` and gathers the full block-table width, masked weights
are exactly zero, and each row's arithmetic does not depend on the other rows or on which
physical blocks hold its cache. A request whose computation path differs (its prompt split
into other prefill chunks, or tokens recomputed by a prefill after an eviction instead of
decoded one by one) gets logits that differ by about 1e-6 relative (XLA's vectorized ``exp``
and reductions depend on the array shape), so greedy tokens agree unless two logits tie to
that precision; the tests check exact token equality under chunked prefill and evictions for
every registered policy.
"""

from __future__ import annotations

import bisect
import collections
import dataclasses
import functools
import itertools
import math
import threading
import time
from typing import Any, Callable, Mapping, Sequence

import jax
import numpy as np

from jaxsched.engine.cache import BlockPool
from jaxsched.engine.config import TINY, EngineConfig, EngineConfigError, ModelConfig
from jaxsched.engine.model import init_params
from jaxsched.engine.runner import ModelRunner, SampleArgs
from jaxsched.engine.tokenizer import ByteTokenizer
from jaxsched.errors import JaxschedError
from jaxsched.core.model import SimShape
from jaxsched.policies import get_policy
from jaxsched.policies.base import Policy
from jaxsched.policies.decide import Decision, PolicyScheduler, decide, host_views

__all__ = [
    "RequestError",
    "SamplingParams",
    "Request",
    "RequestOutput",
    "IterationRecord",
    "EngineMetrics",
    "Call",
    "CallTiming",
    "CallTimer",
    "run_calls",
    "Decision",
    "decide",
    "PolicyScheduler",
    "Engine",
]


class RequestError(JaxschedError, ValueError):
    """A request the engine refuses (bad sampling settings, too long for the cache)."""


@dataclasses.dataclass(frozen=True)
class SamplingParams:
    """Per-request generation settings. ``temperature = 0`` is greedy."""

    max_tokens: int = 16
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int = 0
    stop: tuple[str, ...] = ()
    ignore_eos: bool = False

    def __post_init__(self):
        if isinstance(self.stop, str):
            object.__setattr__(self, "stop", (self.stop,))
        else:
            object.__setattr__(self, "stop", tuple(self.stop))
        if (not isinstance(self.max_tokens, int) or isinstance(self.max_tokens, bool)
                or self.max_tokens < 1):
            raise RequestError(f"max_tokens must be an integer >= 1, got {self.max_tokens!r}")
        if not (isinstance(self.temperature, (int, float)) and math.isfinite(self.temperature)
                and self.temperature >= 0):
            raise RequestError(f"temperature must be a finite number >= 0, got "
                               f"{self.temperature!r}")
        if not (isinstance(self.top_p, (int, float)) and 0 < self.top_p <= 1):
            raise RequestError(f"top_p must be in (0, 1], got {self.top_p!r}")
        if (not isinstance(self.seed, int) or isinstance(self.seed, bool)
                or not 0 <= self.seed < 2 ** 32):
            raise RequestError(f"seed must be an integer in [0, 2^32), got {self.seed!r}")
        for s in self.stop:
            if not isinstance(s, str) or not s:
                raise RequestError(f"stop sequences must be non-empty strings, got {s!r}")


@dataclasses.dataclass(frozen=True)
class RequestOutput:
    """A snapshot of a request's output. ``text`` is what is safe to show so far (held back:
    a suffix that may start a stop sequence, an unfinished UTF-8 character); when
    ``finished`` it is the final text, cut before a stop sequence."""

    request_id: str
    prompt_tokens: int
    token_ids: tuple[int, ...]
    text: str
    finished: bool
    finish_reason: str | None  # "length", "stop", "abort", "error"
    evictions: int = 0
    error: str | None = None


@dataclasses.dataclass(eq=False)
class Request:
    """Engine-side state of one request (mutated by the engine thread only)."""

    request_id: str
    prompt_ids: list[int]
    sampling: SamplingParams
    cls: int
    seq: int  # submission order: the queue order
    arrival: float  # seconds since the engine started
    listener: Callable[[RequestOutput], None] | None = None
    generated: list[int] = dataclasses.field(default_factory=list)
    table: list[int] = dataclasses.field(default_factory=list)  # block table
    cached: int = 0  # the model's cached tokens
    kv_len: int = 0  # positions whose KV is in the cache
    status: str = "waiting"  # waiting | running | finished
    finish_reason: str | None = None
    error: str | None = None
    evictions: int = 0
    text: str = ""  # visible text
    first_token_time: float | None = None
    finish_time: float | None = None
    done_event: threading.Event = dataclasses.field(default_factory=threading.Event)

    @property
    def prompt_len(self) -> int:
        return len(self.prompt_ids)

    @property
    def finished(self) -> bool:
        return self.status == "finished"

    eos_id: int | None = None  # stops the request (None with ignore_eos)

    def output(self) -> RequestOutput:
        ids = self.generated
        if self.finish_reason == "stop" and ids and ids[-1] == self.eos_id:
            ids = ids[:-1]
        return RequestOutput(self.request_id, self.prompt_len, tuple(ids), self.text,
                             self.finished, self.finish_reason, self.evictions, self.error)


@dataclasses.dataclass(frozen=True)
class IterationRecord:
    """One iteration, for metrics and calibration of ``tau = d0 + d1 (P + D) + d2 R``."""

    index: int
    start: float  # seconds since the engine started
    duration: float  # wall seconds of the whole iteration (scheduling included)
    compute_time: float  # wall seconds of the model calls
    prefill_tokens: int  # P_k
    context_tokens: int  # D_k: cached tokens of the decoding requests (before the new token)
    decode_tokens: int  # tokens generated
    memory: int  # M_k after eviction, tokens
    overflow: bool  # M_k > C before eviction
    admitted: int
    evicted: int
    completed: int
    num_waiting: int  # after the iteration
    num_running: int  # after the iteration
    blocks_used: int  # during execution
    model_calls: int = 0  # jitted model calls executed (prefill chunks + one decode batch)
    prefill_requests: int = 0  # R_k: requests that processed prefill tokens (one call each)
    probe_time: float = math.nan  # the speed probe's time beside this iteration (if timed)
    raw_compute_time: float = math.nan  # compute_time before speed normalization


@dataclasses.dataclass(frozen=True)
class EngineMetrics:
    """A snapshot for the server's /metrics."""

    queue_length: int
    running: int
    kv_blocks_used: int
    kv_blocks_free: int
    kv_blocks_total: int
    kv_capacity_tokens: int
    memory_tokens: int
    evictions_total: int
    recomputed_tokens_total: int
    requests_submitted_total: int
    requests_completed_total: int
    prompt_tokens_total: int
    generated_tokens_total: int
    iterations_total: int
    tokens_per_second: float
    iteration_seconds: float  # the last iteration's duration


Call = tuple[Callable[..., Any], tuple]
"""A model call of an iteration: ``(fn, args)``; calling it again rewrites the same KV to the
same slots and samples the same tokens (a measurement may repeat it)."""


@dataclasses.dataclass(frozen=True)
class CallTiming:
    """How long an iteration's model calls took (the timing fields of :class:`IterationRecord`)."""

    compute_time: float  # seconds of the calls (the measurement's figure)
    raw_compute_time: float  # seconds of the calls before any speed normalization
    probe_time: float = math.nan  # the speed probe's seconds beside them (if timed)
    extra_time: float = 0.0  # seconds spent measuring (repeats, probes): not the iteration's


CallTimer = Callable[[Sequence[Call]], tuple[list, CallTiming]]
"""Runs the calls once each, in order, and returns ``(their results, CallTiming)``."""


def run_calls(calls: Sequence[Call], clock: Callable[[], float]) -> tuple[list, CallTiming]:
    """Serving: run each call once; ``compute_time`` is their time on ``clock``."""
    t0 = clock()
    results = [fn(*args) for fn, args in calls]
    elapsed = clock() - t0
    return results, CallTiming(elapsed, elapsed)


# --------------------------------------------------------------------------- the engine


class Engine:
    """The decode engine: a model runner, a paged cache, a queue and a policy scheduler.

    ``policy``: a :class:`Policy` or a registered name (built with ``policy_options``);
    ``policy_params``: its parameter values or parameter dict. ``params``: model parameters
    (random from ``seed`` when None). ``tokenizer``: byte-level by default.

    Thread safety: :meth:`submit` and :meth:`abort` may be called from any thread;
    :meth:`step` from one thread at a time. Listeners are called from the stepping thread.
    """

    def __init__(self, model_cfg: ModelConfig = TINY, engine_cfg: EngineConfig | None = None,
                 params=None, *, policy: Policy | str = "greedy",
                 policy_params: Mapping[str, Any] | None = None,
                 policy_options: Mapping[str, Any] | None = None, tokenizer=None, seed: int = 0,
                 record_limit: int = 100_000, clock: Callable[[], float] = time.perf_counter):
        self.model_cfg = model_cfg
        self.engine_cfg = engine_cfg or EngineConfig()
        self.tokenizer = tokenizer or ByteTokenizer()
        if self.tokenizer.vocab_size > model_cfg.vocab_size:
            raise EngineConfigError(f"tokenizer vocabulary ({self.tokenizer.vocab_size}) exceeds the "
                               f"model's vocab_size ({model_cfg.vocab_size})")
        if isinstance(policy, str):
            policy = get_policy(policy, **dict(policy_options or {}))
        self.policy = policy
        ec = self.engine_cfg
        self.scheduler = PolicyScheduler(
            policy, policy_params, SimShape(max_batch=ec.max_batch, queue_size=ec.queue_size,
                                            horizon=1, num_classes=ec.num_classes),
            float(ec.capacity), seed, block_size=int(ec.memory_block_size))
        if params is None:
            params = init_params(model_cfg, seed)
        self.runner = ModelRunner(model_cfg, self.engine_cfg, params)
        ec = self.engine_cfg
        self.pool = BlockPool(ec.num_blocks, ec.block_size)
        self._clock = clock
        self._t0 = clock()
        self._lock = threading.Lock()
        self._incoming: list[Request] = []
        self._aborts: set[str] = set()
        self._seq = itertools.count()
        self._ids = itertools.count()
        self.waiting: list[Request] = []  # queue order (by seq)
        self.residents: list[Request] = []  # admission order
        self.requests: dict[str, Request] = {}  # active (not finished)
        self.records: collections.deque[IterationRecord] = collections.deque(maxlen=record_limit)
        self.iteration = 0
        self._counters = collections.Counter()
        self._recent: collections.deque = collections.deque()  # (end time, tokens)
        self._last_duration = 0.0
        self._memory = 0
        self.time_calls: CallTimer = functools.partial(run_calls, clock=self.now)
        """Runs an iteration's model calls and times them: once, on the engine's clock, when
        serving; calibration and ``compare-sim`` put their measurement mode here
        (:class:`jaxsched.engine.calibrate.MeasuredCalls`: repeats, speed probe)."""

    # ---------------------------------------------------------------- requests

    def now(self) -> float:
        """Seconds since the engine started."""
        return self._clock() - self._t0

    def encode(self, prompt: str | Sequence[int]) -> list[int]:
        if isinstance(prompt, str):
            return self.tokenizer.encode(prompt)
        ids = [int(i) for i in prompt]
        bad = [i for i in ids if not 0 <= i < self.model_cfg.vocab_size]
        if bad:
            raise RequestError(f"prompt token id {bad[0]} is outside the vocabulary "
                               f"[0, {self.model_cfg.vocab_size})")
        return ids

    def check(self, prompt_len: int, sampling: SamplingParams) -> None:
        """Refuse a request the cache can never hold (one-line :class:`RequestError`)."""
        if prompt_len < 1:
            raise RequestError("the prompt is empty (no tokens)")
        limit = self.engine_cfg.max_request_tokens
        if prompt_len + sampling.max_tokens > limit:
            raise RequestError(
                f"prompt of {prompt_len} tokens plus max_tokens {sampling.max_tokens} exceeds "
                f"the {limit} tokens one request can hold (min of KV capacity "
                f"{self.engine_cfg.capacity} and max_seq_len {self.engine_cfg.max_seq_len})")

    def submit(self, prompt: str | Sequence[int], sampling: SamplingParams | None = None, *,
               request_id: str | None = None, cls: int = 0,
               listener: Callable[[RequestOutput], None] | None = None) -> Request:
        """Queue a request (text or token ids); returns its :class:`Request` (wait on
        ``request.done_event``)."""
        sampling = sampling or SamplingParams()
        ids = self.encode(prompt)
        self.check(len(ids), sampling)
        if not 0 <= int(cls) < self.engine_cfg.num_classes:
            raise RequestError(f"class {cls} outside [0, {self.engine_cfg.num_classes})")
        with self._lock:
            rid = request_id if request_id is not None else f"req-{next(self._ids)}"
            if rid in self.requests:
                raise RequestError(f"request id {rid!r} is already in use")
            req = Request(rid, ids, sampling, int(cls), next(self._seq), self.now(), listener)
            req.eos_id = None if sampling.ignore_eos else self.tokenizer.eos_id
            self.requests[rid] = req
            self._incoming.append(req)
            self._counters["submitted"] += 1
            self._counters["prompt_tokens"] += len(ids)
        return req

    def abort(self, request_id: str) -> None:
        """Cancel a request (takes effect at the next iteration)."""
        with self._lock:
            self._aborts.add(request_id)

    def has_work(self) -> bool:
        return bool(self.waiting or self.residents or self._incoming or self._aborts)

    # ---------------------------------------------------------------- the loop

    def _arrivals(self) -> None:
        with self._lock:
            incoming, self._incoming = self._incoming, []
            aborts, self._aborts = self._aborts, set()
        for req in incoming:
            self._enqueue(req)
        for rid in aborts:
            req = self.requests.get(rid)
            if req is None:
                continue
            if req in self.residents:
                self.residents.remove(req)
                self.pool.free(req.table)
            elif req in self.waiting:
                self.waiting.remove(req)
            self._finish(req, "abort")

    def _enqueue(self, req: Request) -> None:
        req.status = "waiting"
        keys = [r.seq for r in self.waiting]
        self.waiting.insert(bisect.bisect(keys, req.seq), req)

    def _views(self):
        ec = self.engine_cfg
        b, w = ec.max_batch, ec.queue_size
        window = self.waiting[:w]

        queue, slots = host_views(
            window, self.residents, w, b, prompt=lambda r: r.prompt_len,
            output=lambda r: r.sampling.max_tokens, generated=lambda r: len(r.generated),
            cached=lambda r: r.cached, cls=lambda r: r.cls, arrival=lambda r: r.arrival)
        return window, queue, slots

    def step(self) -> IterationRecord | None:
        """Run one iteration; ``None`` when there was nothing to do."""
        t_start = self.now()
        self._arrivals()
        if not (self.waiting or self.residents):
            return None
        window, queue, slots = self._views()
        dec = self.scheduler.decide(self.iteration, t_start, len(self.waiting), queue, slots)

        # 2. Admission: the admitted window positions become the newest residents.
        admitted = [window[i] for i in np.flatnonzero(dec.admit)]
        for req in admitted:
            self.waiting.remove(req)
            req.status, req.cached, req.kv_len = "running", 0, 0
        self.residents.extend(admitted)
        assert len(self.residents) == int(np.sum(dec.slots.valid))

        # 4. Evictions: free blocks, rejoin the queue keeping the generated tokens.
        survivors = []
        for i, req in enumerate(self.residents):
            if dec.evict[i]:
                self._counters["recomputed_tokens"] += req.cached
                self.pool.free(req.table)
                req.cached = req.kv_len = 0
                req.evictions += 1
                self._counters["evictions"] += 1
                self._enqueue(req)
            else:
                survivors.append((i, req))
        for i, req in survivors:
            self.pool.grow(req.table, int(dec.need[i]))  # OutOfBlocks would be a bug
        blocks_used = self.pool.num_used
        memory = int(np.sum(dec.need))
        self._memory = memory

        # 5. Execution: one call per prefill chunk, then one decode call for the decoders.
        running = [(i, req) for i, req in survivors if dec.run[i]]
        prefills = [(i, req, int(dec.chunk[i])) for i, req in running if dec.chunk[i] > 0]
        decoders = [(i, req) for i, req in running if dec.chunk[i] <= 0 and dec.token[i]]
        calls: list[Call] = []
        for i, req, c in prefills:
            assert req.kv_len == req.cached
            seq = req.prompt_ids + req.generated
            calls.append((self.runner.prefill, (seq[req.kv_len: req.kv_len + c], req.kv_len,
                                                req.table, self._sample_args(req))))
        rows = []
        for i, req in decoders:
            assert req.kv_len == req.cached - 1 == req.prompt_len + len(req.generated) - 1
            rows.append((req.generated[-1], req.kv_len, req.table, self._sample_args(req)))
        context_tokens = sum(req.cached for _, req in decoders)
        if rows:
            calls.append((self.runner.decode, (rows,)))
        results, timing = self.time_calls(calls)
        new_tokens: dict[int, int] = {}
        for (i, req, c), tok in zip(prefills, results):
            req.kv_len += c
            req.cached += c
            if dec.token[i]:
                assert req.kv_len == req.prompt_len + len(req.generated)
                new_tokens[i] = tok
        for (i, req), tok in zip(decoders, results[-1] if rows else ()):
            req.kv_len += 1
            new_tokens[i] = tok

        # 6. Tokens, completions.
        now = self.now()
        completed = 0
        keep = []
        for i, req in survivors:
            if i in new_tokens:
                req.cached += 1
                req.generated.append(new_tokens[i])
                if req.first_token_time is None:
                    req.first_token_time = now
                reason = self._update_text(req, new_tokens[i])
                if reason is not None:
                    self.pool.free(req.table)
                    self._finish(req, reason)
                    completed += 1
                    continue
                self._notify(req)
            keep.append(req)
        self.residents = keep

        end = self.now()
        record = IterationRecord(
            index=self.iteration, start=t_start, duration=end - t_start - timing.extra_time,
            compute_time=timing.compute_time,
            prefill_tokens=sum(c for _, _, c in prefills),
            context_tokens=context_tokens,
            decode_tokens=len(new_tokens), memory=memory,
            overflow=bool(dec.excess > 0), admitted=len(admitted), evicted=int(np.sum(dec.evict)),
            completed=completed, num_waiting=len(self.waiting), num_running=len(self.residents),
            blocks_used=blocks_used, model_calls=len(calls), prefill_requests=len(prefills),
            probe_time=timing.probe_time, raw_compute_time=timing.raw_compute_time)
        self.records.append(record)
        self.iteration += 1
        self._counters["generated_tokens"] += len(new_tokens)
        self._counters["completed"] += completed
        self._last_duration = record.duration
        self._recent.append((end, len(new_tokens)))
        return record

    def _sample_args(self, req: Request) -> SampleArgs:
        sp = req.sampling
        return SampleArgs(sp.temperature, sp.top_p, sp.seed, len(req.generated))

    def _update_text(self, req: Request, tok: int) -> str | None:
        """Update the visible text; the finish reason if the request is done."""
        sp = req.sampling
        if req.eos_id is not None and tok == req.eos_id:
            req.text = self.tokenizer.decode(req.generated[:-1])
            return self._stop_cut(req) or "stop"
        full = self.tokenizer.decode(req.generated)
        req.text = full
        reason = self._stop_cut(req)
        if reason:
            return reason
        if len(req.generated) >= sp.max_tokens:
            return "length"
        # Hold back a suffix that may start a stop sequence, and unfinished characters.
        hold = 0
        for s in sp.stop:
            for k in range(min(len(s) - 1, len(full)), 0, -1):
                if full.endswith(s[:k]):
                    hold = max(hold, k)
                    break
        visible = full[: len(full) - hold]
        req.text = visible.rstrip("\ufffd")
        return None

    @staticmethod
    def _stop_cut(req: Request) -> str | None:
        cut = [req.text.find(s) for s in req.sampling.stop]
        cut = [c for c in cut if c >= 0]
        if cut:
            req.text = req.text[: min(cut)]
            return "stop"
        return None

    def _finish(self, req: Request, reason: str, error: str | None = None) -> None:
        req.status, req.finish_reason, req.error = "finished", reason, error
        req.finish_time = self.now()
        self.requests.pop(req.request_id, None)
        self._notify(req)
        req.done_event.set()

    def _notify(self, req: Request) -> None:
        if req.listener is not None:
            try:
                req.listener(req.output())
            except Exception:  # a listener must not break the loop
                pass

    def fail_all(self, message: str) -> None:
        """Finish every active request with an error (after an engine failure)."""
        self._arrivals()
        for req in list(self.residents) + list(self.waiting):
            self.pool.free(req.table)
            self._finish(req, "error", message)
        self.residents, self.waiting = [], []

    # ---------------------------------------------------------------- conveniences

    def run_until_idle(self, max_iterations: int | None = None,
                       stall_limit: int = 10_000) -> int:
        """Step until no request is left (or ``max_iterations``); returns iterations run.

        Raises :class:`~jaxsched.errors.JaxschedError` after ``stall_limit`` consecutive
        iterations that compute nothing while requests wait (a policy that never admits
        them, e.g. a reservation larger than the capacity)."""
        n = idle = 0
        while self.has_work() and (max_iterations is None or n < max_iterations):
            rec = self.step()
            n += 1
            idle = idle + 1 if rec is None or not (rec.prefill_tokens or rec.decode_tokens) else 0
            if idle >= stall_limit:
                raise JaxschedError(
                    f"engine stalled: policy {self.policy.name!r} ran nothing for {idle} "
                    f"iterations with {len(self.waiting)} requests waiting; check its "
                    f"parameters against the capacity of {self.engine_cfg.capacity} tokens")
        return n

    def generate(self, prompts: Sequence[str | Sequence[int]],
                 sampling: SamplingParams | Sequence[SamplingParams] | None = None,
                 max_iterations: int | None = None) -> list[RequestOutput]:
        """Submit all prompts, run until they finish, return their outputs in order."""
        if sampling is None or isinstance(sampling, SamplingParams):
            sampling = [sampling] * len(prompts)
        reqs = [self.submit(p, s) for p, s in zip(prompts, sampling)]
        self.run_until_idle(max_iterations)
        return [r.output() for r in reqs]

    def metrics(self, window_s: float = 10.0) -> EngineMetrics:
        now = self._clock()
        while self._recent and self._recent[0][0] < self.now() - window_s:
            self._recent.popleft()
        span = min(window_s, max(now - self._t0, 1e-9))
        tps = sum(n for _, n in list(self._recent)) / span
        c = self._counters
        return EngineMetrics(
            queue_length=len(self.waiting) + len(self._incoming),
            running=len(self.residents),
            kv_blocks_used=self.pool.num_used,
            kv_blocks_free=self.pool.num_free,
            kv_blocks_total=self.pool.num_blocks,
            kv_capacity_tokens=self.engine_cfg.capacity,
            memory_tokens=self._memory if self.residents else 0,
            evictions_total=c["evictions"],
            recomputed_tokens_total=c["recomputed_tokens"],
            requests_submitted_total=c["submitted"],
            requests_completed_total=c["completed"],
            prompt_tokens_total=c["prompt_tokens"],
            generated_tokens_total=c["generated_tokens"],
            iterations_total=self.iteration,
            tokens_per_second=tps,
            iteration_seconds=self._last_duration,
        )
