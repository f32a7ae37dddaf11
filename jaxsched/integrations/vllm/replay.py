"""Driving vLLM in-process on a virtual clock: the data of calibrate and compare-sim.

:func:`open_llm` starts vLLM's offline engine in this process
(``VLLM_ENABLE_V1_MULTIPROCESSING=0``, prefix caching off, eager mode) with
:class:`~jaxsched.integrations.vllm.scheduler.JaxschedScheduler`, whose
:meth:`~jaxsched.integrations.vllm.scheduler.JaxschedScheduler.use_policy` switches between
a jaxsched policy file and vLLM's own scheduling (``None``) between replays, so one engine
(one startup) serves every comparison.

:func:`replay` runs a request list (:class:`jaxsched.engine.compare.ReplayRequest`) the way
the jaxsched engine's replay does (:mod:`jaxsched.engine.compare`): a virtual clock ``V``;
before each step every request with ``a <= V`` is added (arrival ``a``); the step runs
(``LLMEngine.step``: schedule, model, outputs); ``V`` advances by the step's measured time
(this process's CPU time by default, robust when other jobs share the machine; the main
thread's with ``timer="thread"``; wall time with ``timer="wall"``; every clock's time is
kept in ``raw_durations``), less the plugin's own work in the step (building the view and the
policy's decision, a jitted JAX call on the host: :attr:`StepRecord.overhead`), as the
jaxsched engine's replay leaves out its host scheduling; a step that runs nothing while
requests wait advances it by ``idle_step``; idle, ``V`` jumps to the next arrival (or, with
``idle_step``, to the first multiple of it past the arrival, as the simulator's empty
iterations do). With a :class:`~jaxsched.integrations.vllm.probe.SpeedProbe` every step's
time is charged at the probe's reference speed (``dt * p_ref / median of the last probes``,
the probe timed right after the step: see :mod:`jaxsched.integrations.vllm.probe`).
Latency is ``V`` after the
step that completes a request minus ``a``; TTFT likewise at its first token. Every request
runs greedy with ``ignore_eos`` for exactly its output length; token ids are random bytes.
Per step it keeps the scheduler's :class:`~jaxsched.integrations.vllm.scheduler.StepRecord`
with the step's time.
"""

from __future__ import annotations

import dataclasses
import math
import os
import tempfile
import time
from typing import Any, Sequence

import numpy as np

from jaxsched.errors import JaxschedError
from jaxsched.integrations.vllm.probe import SpeedProbe
from jaxsched.integrations.vllm.testing import write_policy_file

__all__ = ["LLMSettings", "open_llm", "warm_up", "scheduler_of", "replay", "replay_metrics"]

TIMERS = {"cpu": time.process_time, "thread": time.thread_time, "wall": time.perf_counter}


@dataclasses.dataclass(frozen=True)
class LLMSettings:
    """The vLLM engine of a replay (what the simulator must be told about it)."""

    block_size: int = 32
    num_blocks: int = 64  # KV blocks requests can hold (vLLM is given one more: its null block)
    max_num_seqs: int = 32
    max_num_batched_tokens: int = 2048
    max_model_len: int = 512
    seed: int = 0
    torch_threads: int = 1  # torch's CPU threads in vLLM's model runner (1: see open_llm)


def open_llm(model: str, policy_file: str | None, settings: LLMSettings = LLMSettings()):
    """vLLM's ``LLM`` in this process with the jaxsched scheduler (``policy_file``, or vLLM's
    own scheduling after startup when None; startup still needs a policy file to check, so a
    greedy one is written next to nothing: see :func:`_bootstrap_policy`)."""
    os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    # vLLM's CPU worker binds one OpenMP thread per core and spins them at every op; on a
    # shared machine a descheduled thread stalls the others, so steps measured on the tiny
    # model took 37-79 ms of wall time instead of 3-5 ms, and repeated identically they
    # differed by a median 54-99% (19% with one thread). One unbound thread keeps a step its own.
    os.environ["VLLM_CPU_OMP_THREADS_BIND"] = "nobind"
    os.environ["OMP_NUM_THREADS"] = str(settings.torch_threads)
    # vLLM's CPU linear layers cache 32 oneDNN matmul primitives each, one per batch size
    # (tokens in the step), over oneDNN's own cache (1024 by default); a batch size not seen
    # recently is compiled again (warm_up, below). Room for every batch size of every layer:
    os.environ.setdefault("ONEDNN_PRIMITIVE_CACHE_CAPACITY", "8192")
    import torch

    torch.set_num_threads(settings.torch_threads)
    from vllm import LLM

    path = policy_file or _bootstrap_policy(settings)
    llm = LLM(model, block_size=settings.block_size,
              num_gpu_blocks_override=settings.num_blocks + 1, enable_prefix_caching=False,
              max_model_len=settings.max_model_len, max_num_seqs=settings.max_num_seqs,
              max_num_batched_tokens=settings.max_num_batched_tokens, enforce_eager=True,
              gpu_memory_utilization=0.2, seed=settings.seed, dtype="float32",
              scheduler_cls="jaxsched.integrations.vllm.JaxschedScheduler",
              additional_config={"jaxsched": {"policy": str(path)}})
    if policy_file is None:
        scheduler_of(llm).use_policy(None)
    return llm


def _bootstrap_policy(settings: LLMSettings) -> str:
    """A greedy policy file matching ``settings`` in a temporary folder (the scheduler checks
    a file at startup; the replay then switches to vLLM's own scheduling)."""
    folder = tempfile.mkdtemp(prefix="jaxsched-vllm-")
    path = os.path.join(folder, "greedy.json")
    write_policy_file(path, "greedy", {}, capacity=settings.num_blocks * settings.block_size,
                      max_batch=settings.max_num_seqs)
    return path


def warm_up(llm, settings: LLMSettings) -> int:
    """Run one step of every batch size ``1 .. max_num_batched_tokens`` (tokens in the step:
    the prompts of requests that generate one token) and decode batches of ``1 ..
    max_num_seqs``, under vLLM's
    own scheduling; returns the steps run. Call it before measured replays: vLLM's CPU
    matmuls compile a oneDNN primitive the first time they meet a batch size, so a first
    replay of a request list measured 1.6-1.7x the time of the same list replayed again (327
    against 191-203 ms, and 1145 against 656-694 ms on a lighter list, tiny model, load 1);
    after this warm-up the first replay was as fast as the next ones (186 against 196-205 ms).
    Leaves the engine on vLLM's own scheduler (a replay sets its policy again)."""
    from vllm import SamplingParams
    from vllm.inputs import TokensPrompt

    engine = llm.llm_engine
    scheduler_of(llm).use_policy(None)
    longest = max(1, min(settings.max_model_len, settings.num_blocks * settings.block_size) - 1)
    one = SamplingParams(max_tokens=1, temperature=0.0, ignore_eos=True)
    rs = np.random.RandomState(settings.seed)
    n = steps = 0

    def run(lengths, sp):
        nonlocal n, steps
        for length in lengths:
            ids = [int(t) + 2 for t in rs.randint(0, 254, size=length)]
            engine.add_request(f"warm-{n}", TokensPrompt(prompt_token_ids=ids), sp)
            n += 1
        while engine.has_unfinished_requests():
            engine.step()
            steps += 1

    for m in range(1, settings.max_num_batched_tokens + 1):
        run([longest] * (m // longest) + ([m % longest] if m % longest else []), one)
    for k in range(1, settings.max_num_seqs + 1):
        run([1] * k, SamplingParams(max_tokens=4, temperature=0.0, ignore_eos=True))
    scheduler_of(llm).records = []
    return steps


def scheduler_of(llm):
    """The in-process scheduler object of an ``LLM``."""
    return llm.llm_engine.engine_core.engine_core.scheduler


def replay(llm, requests: Sequence, *, timer: str = "cpu", seed: int = 0,
           max_steps: int = 200_000, step_time=None, idle_step: float | None = None,
           probe: SpeedProbe | None = None) -> dict[str, Any]:
    """Run ``requests`` through ``llm`` on the virtual clock (module docstring). Returns the
    per-request latency and TTFT, the steps (records with ``time`` = V at the step's start
    and ``duration``) and the end time.

    ``step_time(record) -> seconds``, when given, replaces the measured time of each step by
    a model of it (e.g. the simulator's ``tau`` with fixed coefficients): vLLM's scheduling
    is its own, the clock is noise-free (tests on a shared machine).

    ``idle_step``: seconds a step costs that runs nothing while requests wait (a policy holding
    them back: WAIT's thresholds, flow control's credit); None: its measured time (what a
    server's busy loop takes). compare-sim passes ``d0``, the model's cost of every iteration,
    so a per-iteration budget accrues at the simulator's pace. With ``idle_step`` an idle
    engine also waits for the next arrival in such steps, as the simulator's empty iterations
    do (a request arriving at an idle engine starts at the next multiple of ``idle_step``
    after the last step, not at once: ``idle_step / 2`` later on average); without, the clock
    jumps to the arrival.

    ``probe``: a :class:`~jaxsched.integrations.vllm.probe.SpeedProbe` with its reference set;
    each measured step's time is normalized by it (module docstring); the run's probe times
    are returned as ``probes``."""
    from vllm import SamplingParams
    from vllm.inputs import TokensPrompt

    if timer not in TIMERS:
        raise JaxschedError(f"--timer {timer!r}: expected one of {', '.join(TIMERS)}")
    tick = TIMERS[timer]
    if probe is not None:
        if not probe.reference > 0:
            raise JaxschedError("replay: the speed probe has no reference time")
        probe.timer = tick
        probe.start()
    engine = llm.llm_engine
    sched = scheduler_of(llm)
    if sched.running or sched.waiting:
        raise JaxschedError("replay: the engine still holds requests")
    rs = np.random.RandomState(seed)
    order = sorted(range(len(requests)), key=lambda i: requests[i].arrival)
    vocab = 256  # byte tokens of the tiny test model; any model has at least these ids
    clock = {"v": 0.0}
    sched.clock = lambda: clock["v"]
    sched.timer = tick
    sched.records = []
    latency: dict[int, float] = {}
    ttft: dict[int, float] = {}
    outputs: dict[int, int] = {}
    durations: list[float] = []
    raw: dict[str, list[float]] = {k: [] for k in TIMERS}  # every clock, for A/B checks
    pending = list(order)
    steps = 0
    while pending or engine.has_unfinished_requests():
        if not engine.has_unfinished_requests() and requests[pending[0]].arrival > clock["v"]:
            gap = requests[pending[0]].arrival - clock["v"]
            if idle_step is None or idle_step <= 0:
                clock["v"] = requests[pending[0]].arrival
            else:  # the simulator's empty iterations, idle_step each, until the arrival
                clock["v"] += math.ceil(gap / idle_step - 1e-9) * idle_step
                clock["v"] = max(clock["v"], requests[pending[0]].arrival)
        while pending and requests[pending[0]].arrival <= clock["v"]:
            i = pending.pop(0)
            r = requests[i]
            ids = [int(t) + 2 for t in rs.randint(0, vocab - 2, size=r.prompt_len)]
            sp = SamplingParams(max_tokens=r.output_len, temperature=0.0, ignore_eos=True)
            engine.add_request(str(i), TokensPrompt(prompt_token_ids=ids), sp,
                               arrival_time=r.arrival, priority=int(r.cls))
        n_records = len(sched.records)
        starts = {k: f() for k, f in TIMERS.items()}
        outs = engine.step()
        ends = {k: f() for k, f in TIMERS.items()}
        dt = ends[timer] - starts[timer]
        scale = 1.0
        if probe is not None and step_time is None:  # timed after the step, outside dt
            scale = probe.normalize(1.0)
        steps += 1
        if steps > max_steps:
            raise JaxschedError(f"vLLM replay did not finish in {max_steps} steps")
        if len(sched.records) > n_records:
            if step_time is not None:
                dt = float(step_time(sched.records[-1]))
            else:  # the plugin's own work is left out, as the jaxsched engine's replay does
                dt = max(dt - sched.records[-1].overhead, 0.0) * scale
            durations.append(dt)
            for k in TIMERS:
                raw[k].append(ends[k] - starts[k])
            clock["v"] += dt
        else:  # nothing ran while requests wait (a policy holding them back)
            clock["v"] += dt * scale if idle_step is None else float(idle_step)
        for out in outs:
            i = int(out.request_id)
            n = len(out.outputs[0].token_ids) if out.outputs else 0
            if n and i not in ttft:
                ttft[i] = clock["v"] - requests[i].arrival
            if out.finished:
                latency[i] = clock["v"] - requests[i].arrival
                outputs[i] = n
    records = list(sched.records)
    if len(records) != len(durations):
        raise JaxschedError(f"replay: {len(records)} step records for {len(durations)} steps")
    return {"latency": latency, "ttft": ttft, "outputs": outputs, "records": records,
            "durations": np.asarray(durations),
            "raw_durations": {k: np.asarray(v) for k, v in raw.items()},
            "end_time": clock["v"],
            "probes": np.asarray(probe.probes if probe is not None else []),
            "block_size": sched.settings.block_size, "capacity": sched.settings.capacity}


def _nearest_rank(values, p: float) -> float:
    v = np.sort(np.asarray(list(values), np.float64))
    if v.size == 0:
        return math.nan
    return float(v[max(0, int(math.ceil(p * v.size)) - 1)])


def replay_metrics(run: dict[str, Any], requests: Sequence) -> dict[str, float]:
    """The figures compare-sim reports, from a :func:`replay`: completed per time (completed /
    the last completion), evictions (vLLM's preemptions), peak and time-weighted mean KV
    (blocks in use x block size, vLLM's own allocation), latency and TTFT."""
    lat = run["latency"]
    ends = [requests[i].arrival + t for i, t in lat.items()]
    last = max(ends) if ends else math.nan
    recs = run["records"]
    kv = np.asarray([r.blocks_used for r in recs], np.float64) * run["block_size"]
    dur = run["durations"]
    return {
        "completed": float(len(lat)),
        "completed_per_time": len(lat) / last if lat and last > 0 else 0.0,
        "evictions": float(sum(r.preempted for r in recs)),
        "peak_kv_tokens": float(kv.max()) if kv.size else 0.0,
        "mean_kv_tokens": float(np.sum(kv * dur) / np.sum(dur)) if kv.size else 0.0,
        "latency_mean": float(np.mean(list(lat.values()))) if lat else math.nan,
        "latency_p50": _nearest_rank(lat.values(), 0.5),
        "latency_p95": _nearest_rank(lat.values(), 0.95),
        "ttft_mean": float(np.mean(list(run["ttft"].values()))) if run["ttft"] else math.nan,
    }
