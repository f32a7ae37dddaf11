"""vLLM schedulers: one that records every step, and one that runs a jaxsched policy.

:class:`JaxschedScheduler` is a subclass of vLLM's v1 ``Scheduler``. Each step it

1. **builds the policy's view from vLLM's state** (:meth:`JaxschedScheduler.view`): the
   waiting queue in order (the first ``queue_size`` as the window, ``num_waiting`` all of
   it), the running requests in admission order with ``prompt = num_prompt_tokens``,
   ``generated = num_output_tokens`` and ``cached`` their computed tokens, and the capacity
   ``C = num_blocks x block_size`` tokens (``num_blocks``: the blocks vLLM can allocate, its
   ``num_gpu_blocks`` less the null block of its block pool). vLLM's ``num_computed_tokens`` lags the model's
   ``cached`` by the newest token once a prefill is complete (its KV is written when it is
   fed back), so ``cached = num_computed_tokens + 1`` for a decoding request and
   ``num_computed_tokens`` while prefilling. The output length the policy sees is
   ``max_tokens`` (as in the jaxsched engine); a request's class is its ``priority``;
2. **decides** with :class:`jaxsched.policies.decide.PolicyScheduler`, the function the
   jaxsched engine runs (the model's steps 2-4: admit, seat, plan, evict);
3. **applies the decision through vLLM's own mechanisms**:

   * *eviction*: each victim among the running requests is preempted by vLLM's
     ``_preempt_request`` (blocks freed, recompute on readmission, its id in the step's
     ``preempted_req_ids``), newest first, as vLLM's own preemption;
   * *admission*: the waiting requests the policy did not admit (and this step's victims)
     are hidden from ``self.waiting`` during ``super().schedule()``; vLLM then admits among
     the admitted ones with its own token budget, ``max_num_seqs`` and block checks, so it
     may admit fewer, never more. The queue is restored in its order afterwards;
   * *plan*: running requests the plan pauses are hidden from ``self.running`` during
     ``super().schedule()`` and put back in their places; prefill chunks are vLLM's own
     under its token budget (policies whose plans chunk under another budget are refused
     at startup by their ``serve_check``).

   vLLM still preempts newest-first by itself if blocks run out (the model's safety net:
   the policy's memory model counts the newest token's slot, so this is rare).

A request is never dropped or duplicated: hiding only moves requests between vLLM's lists
and puts each back exactly once (:meth:`JaxschedScheduler.schedule` asserts it).

:class:`RecordingScheduler` is vLLM's own scheduler, unchanged, plus the per-step
:class:`StepRecord` both keep in ``self.records`` (for calibrate, compare-sim and tests).
"""

from __future__ import annotations

import dataclasses
import sys
import time

import numpy as np
from vllm.v1.core.sched.scheduler import Scheduler

from jaxsched.core.model import SimShape
from jaxsched.integrations.vllm.plugin import (
    EngineSettings,
    PluginError,
    load_setup,
    plugin_options,
)
from jaxsched.policies.decide import PolicyScheduler, host_views

__all__ = ["StepRecord", "RecordingScheduler", "JaxschedScheduler", "engine_settings"]


@dataclasses.dataclass(frozen=True)
class StepRecord:
    """One vLLM scheduling step."""

    index: int
    time: float  # the scheduler's clock at the step (seconds)
    prefill_tokens: int  # P: tokens of prefill chunks scheduled
    decode_tokens: int  # D count: decoding requests scheduled (one token each)
    context_tokens: int  # cached tokens of the decoding requests
    prefill_requests: int  # R: requests with a prefill chunk
    admitted: int  # new or resumed requests scheduled from the waiting queue
    preempted: int  # requests preempted in this step (the plugin's and vLLM's own)
    num_running: int  # after the step
    num_waiting: int  # after the step
    blocks_used: int  # KV blocks in use after allocation
    kv_tokens: int  # the model's memory M_k: the running requests' tokens with KV slots,
    # plus the slot of the token each generates in this step (jaxsched.core.model)
    policy_admitted: int = -1  # the policy's admissions (-1: vLLM's own scheduler)
    policy_evicted: int = -1
    iteration: int = -1  # the policy's iteration k of this step (-1: vLLM's own scheduler)
    overhead: float = 0.0  # seconds (self.timer) of the plugin's own work in this step: the
    # view, the policy's decision, hiding and restoring (0 for vLLM's own scheduler)


def engine_settings(scheduler: Scheduler, block_size: int) -> EngineSettings:
    """The settings of a vLLM scheduler that policy decisions depend on."""
    vc = scheduler.vllm_config
    sc = vc.scheduler_config
    return EngineSettings(
        num_blocks=int(scheduler.kv_cache_config.num_blocks) - 1,  # less the null block
        block_size=int(block_size),
        max_num_seqs=int(sc.max_num_seqs),
        max_num_batched_tokens=int(sc.max_num_batched_tokens),
        watermark=float(getattr(sc, "watermark", 0.0) or 0.0),
        chunked_prefill=bool(sc.enable_chunked_prefill),
        prefix_caching=bool(vc.cache_config.enable_prefix_caching),
        async_scheduling=bool(getattr(sc, "async_scheduling", False)),
        speculative=vc.speculative_config is not None,
        kv_connector=vc.kv_transfer_config is not None,
        scheduling_policy=str(getattr(sc.policy, "value", sc.policy)),
    )


def _blocks_used(scheduler: Scheduler) -> int:
    pool = scheduler.kv_cache_manager.block_pool
    # the pool keeps one null block that is never allocated
    return int(pool.num_gpu_blocks - 1 - pool.get_num_free_blocks())


def _kv_tokens(running) -> int:
    """``sum_i cached_i + chunk_i + token_i`` after scheduling: vLLM's computed tokens, plus one
    for a request whose prefill is complete (the newest token's slot; see the view)."""
    total = 0
    for r in running:
        c = r.num_computed_tokens
        total += c + 1 if (c >= r.num_tokens - 1 and c > 0) else c
    return total


class RecordingScheduler(Scheduler):
    """vLLM's v1 scheduler, unchanged, recording a :class:`StepRecord` per non-empty step
    (``self.records``). ``self.clock`` (default ``time.time``) stamps the records; a replay
    driver may set it to its virtual clock."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.records: list[StepRecord] = []
        self.clock = time.time
        self.timer = time.perf_counter  # measures the plugin's overhead (a replay sets it)
        self._overhead = 0.0
        self._policy_counts = (-1, -1, -1)

    def schedule(self, *args, **kwargs):
        before = {r.request_id: r.num_computed_tokens for r in self.running}
        out = super().schedule(*args, **kwargs)
        if out.total_num_scheduled_tokens:
            self._record(out, before)
        return out

    def _record(self, out, before: dict[str, int]) -> None:
        prefill = decode = context = prefill_reqs = 0
        for rid, n in out.num_scheduled_tokens.items():
            req = self.requests[rid]
            start = req.num_computed_tokens - n  # _update_after_schedule advanced it
            if rid in before and n == 1 and start == req.num_tokens - 1 and start > 0:
                decode += 1
                context += start
            else:
                prefill += n
                prefill_reqs += 1
        admitted = sum(1 for rid in out.num_scheduled_tokens if rid not in before)
        self.records.append(StepRecord(
            index=len(self.records), time=float(self.clock()), prefill_tokens=prefill,
            decode_tokens=decode, context_tokens=context, prefill_requests=prefill_reqs,
            admitted=admitted, preempted=len(out.preempted_req_ids or ()),
            num_running=len(self.running), num_waiting=len(self.waiting),
            blocks_used=_blocks_used(self), kv_tokens=_kv_tokens(self.running),
            policy_admitted=self._policy_counts[0],
            policy_evicted=self._policy_counts[1], iteration=self._policy_counts[2],
            overhead=self._overhead))


class JaxschedScheduler(RecordingScheduler):
    """vLLM's v1 scheduler deciding with a jaxsched policy (module docstring).

    ``vllm serve MODEL --scheduler-cls jaxsched.integrations.vllm.JaxschedScheduler
    --additional-config '{"jaxsched": {"policy": "policy.json"}}'``, or
    ``LLM(..., scheduler_cls=JaxschedScheduler, additional_config={...})``.
    """

    def __init__(self, vllm_config, kv_cache_config, structured_output_manager, block_size,
                 *args, **kwargs):
        super().__init__(vllm_config, kv_cache_config, structured_output_manager, block_size,
                         *args, **kwargs)
        self.settings = engine_settings(self, block_size)
        self.jaxsched = None
        try:
            self.use_policy(plugin_options(vllm_config.additional_config))
        except PluginError as err:
            print(f"error: {err}", file=sys.stderr)  # the one line, above vLLM's report
            raise

    def use_policy(self, options) -> None:
        """Decide with the policy file of ``options`` (``{"policy": path, "seed": n}``,
        checked against this engine) from the next step on, with fresh policy state; with
        ``None``, schedule as vLLM's own scheduler (replays compare both on one engine).
        Call it only while the engine holds no requests."""
        if self.running or self.waiting:
            raise RuntimeError("use_policy: the engine still holds requests")
        self.iteration, self._t0, self.records = 0, None, []
        self._policy_counts = (-1, -1, -1)
        if options is None:
            self.jaxsched = self.setup = None
            return
        setup = load_setup(options, self.settings)
        self.jaxsched = PolicyScheduler(
            setup.policy, setup.params,
            SimShape(max_batch=self.settings.max_num_seqs, queue_size=setup.queue_size,
                     horizon=1, num_classes=setup.num_classes),
            float(self.settings.capacity), setup.seed, block_size=self.settings.block_size)
        self.setup = setup

    @property
    def policy_state(self):
        return self.jaxsched.pstate

    # ------------------------------------------------------------------ the view

    def view(self, waiting: list, running: list):
        """``(QueueView, SlotView)`` of the policy from vLLM's lists (module docstring)."""
        w, b = self.jaxsched.shape.queue_size, self.jaxsched.shape.max_batch
        k = self.jaxsched.shape.num_classes
        window = waiting[:w]
        t0 = self._t0

        def cached(r):
            done = r.num_computed_tokens >= r.num_tokens - 1 and r.num_computed_tokens > 0
            return r.num_computed_tokens + 1 if done else r.num_computed_tokens

        queue, slots = host_views(
            window, running, w, b, prompt=lambda r: r.num_prompt_tokens,
            output=lambda r: r.max_tokens, generated=lambda r: r.num_output_tokens,
            cached=cached, cls=lambda r: min(max(int(r.priority), 0), k - 1),
            arrival=lambda r: r.arrival_time - t0)
        return window, queue, slots

    # ------------------------------------------------------------------ one step

    def schedule(self, *args, **kwargs):
        if self.jaxsched is None or (not self.running and not self.waiting):
            self._overhead = 0.0
            return super().schedule(*args, **kwargs)
        t_start = self.timer()
        now = float(self.clock())
        if self._t0 is None:
            self._t0 = now
        waiting0, running0 = list(self.waiting), list(self.running)
        if len(running0) > self.jaxsched.shape.max_batch:  # cannot happen: max_num_seqs
            raise RuntimeError("more running requests than max_num_seqs")
        window, queue, slots = self.view(waiting0, running0)
        dec = self.jaxsched.decide(self.iteration, now - self._t0, len(waiting0), queue, slots)
        self.iteration += 1
        n_run = len(running0)

        # Admission: the window positions admitted and not evicted in the same step.
        admitted = [window[i] for i in np.flatnonzero(dec.admit)]
        seated = n_run + np.arange(len(admitted))
        admitted = [r for r, i in zip(admitted, seated) if not dec.evict[i]]

        # Eviction through vLLM's preemption, newest first (as vLLM's own).
        victims = [running0[i] for i in range(n_run - 1, -1, -1) if dec.evict[i]]
        stamp = time.monotonic()
        for req in victims:
            self.running.remove(req)
            self._preempt_request(req, stamp)

        # Plan: running requests the policy pauses sit out this step.
        paused = {id(running0[i]) for i in range(n_run) if not dec.evict[i] and not dec.run[i]}
        self._policy_counts = (len(admitted), len(victims), self.iteration - 1)

        waiting_all = list(self.waiting)  # victims (prepended) + waiting0
        queue_obj, running_obj = self.waiting, self.running
        visible_ids = {id(r) for r in admitted}
        hidden_running = [r for r in running_obj if id(r) in paused]
        queue_obj.clear()
        queue_obj.extend(r for r in waiting0 if id(r) in visible_ids)
        self.running = [r for r in running_obj if id(r) not in paused]
        try:
            before = {r.request_id: r.num_computed_tokens for r in self.running}
            t_vllm = self.timer()
            out = Scheduler.schedule(self, *args, **kwargs)
            t_vllm = self.timer() - t_vllm
        finally:
            self._restore(queue_obj, waiting_all, running_obj, hidden_running)
        self._overhead = self.timer() - t_start - t_vllm
        if out.total_num_scheduled_tokens:
            self._record(out, before)
        return out

    def _restore(self, queue_obj, waiting_all, running_order, hidden_running) -> None:
        """Put hidden requests back: running ones at their places, waiting ones in queue
        order behind any request vLLM itself preempted in this step (vLLM prepends those)."""
        ran = self.running
        ran_ids = {id(r) for r in ran}
        hidden_ids = {id(r) for r in hidden_running}
        left = list(queue_obj)  # admitted but not scheduled, plus vLLM's own preemptions
        known = {id(r) for r in waiting_all}
        preempted_now = [r for r in left if id(r) not in known]
        scheduled = ran_ids - {id(r) for r in running_order}
        restored_running = [r for r in running_order if id(r) in hidden_ids or id(r) in ran_ids]
        restored_running += [r for r in ran if id(r) not in {id(x) for x in running_order}]
        restored_waiting = preempted_now + [r for r in waiting_all if id(r) not in scheduled]
        total_before = len(running_order) + len(waiting_all)
        total_after = len(restored_running) + len(restored_waiting)
        assert total_before == total_after, (total_before, total_after)
        assert len({id(r) for r in restored_running + restored_waiting}) == total_after
        queue_obj.clear()
        queue_obj.extend(restored_waiting)
        self.waiting = queue_obj
        self.running = restored_running
