"""Calibrate the simulator on vLLM, then replay the same requests in both, side by side.

Calibration (:func:`calibrate`): serving runs (request lists replayed by
:func:`~jaxsched.integrations.vllm.replay.replay` under vLLM's own scheduler) give one sample
per step: prefill tokens ``P``, context tokens ``D`` (cached tokens of the decoding
requests), prefilling requests ``R`` and the step's measured time. ``d0, d1_prefill,
d1_context, d2`` of ``tau = d0 + d1_prefill P + d1_context D + d2 R`` are their non-negative
least-squares fit (the single-``d1`` fits are reported beside it), by the jaxsched engine's
fitting code (:func:`jaxsched.engine.calibrate.fit_split_tau`,
:func:`~jaxsched.engine.calibrate.fit_tau`);
the profile (:func:`jaxsched.engine.calibrate.write_profile`) records the capacity
``num_blocks x block_size``, and its ``[engine]`` table the vLLM settings, so compare-sim
starts the same engine.

Comparison (:func:`compare`): one request list through vLLM (its own scheduler, or a jaxsched
policy file through the plugin) and through the simulator with the profile's coefficients and
the matching policy, in block memory at vLLM's block size: ``vllm`` with vLLM's
``max_num_seqs``, ``max_num_batched_tokens`` and ``watermark`` for vLLM's own scheduler; the
file's policy and parameters for the plugin. The simulator keeps generated tokens on
eviction, as vLLM's recompute preemption does (``restart_on_evict = false``). Two mappings
make the simulator's memory vLLM's own, block for block (checked on a replay timed by
``tau``, where the simulator then preempted as often as vLLM, 7 and 7, and peaked at the same
736 tokens; without them 6 against 7, and 768 against 736):

* the capacity is the blocks vLLM can allocate, ``num_blocks x block_size``, where vLLM is
  started with one block more (its block pool keeps a null block that no request holds);
* under vLLM's own scheduler each prompt is one token shorter in the simulator
  (:func:`sim_requests`): vLLM allocates a token's slot in the step that feeds it back, the
  model in the step that generates it, so a decoding request holds ``l + s`` slots in vLLM
  and ``l + s + 1`` in the model. The plugin's policy decides on the model's memory (its
  view counts the newest token), so its requests are replayed as they are.

Reported for both: completed, completed per time, evictions
(preemptions), peak and time-weighted mean KV (vLLM: blocks in use x block size; the
simulator: its block memory ``M_k``), latency mean/p50/p95 and mean
TTFT, with relative errors (:class:`jaxsched.engine.compare.CompareResult`).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Sequence

import numpy as np

from jaxsched.engine.calibrate import (
    CalibrationResult,
    CalibrationRow,
    device_description,
    fit_split_tau,
    fit_tau,
)
from jaxsched.engine.compare import COMPARE_KEYS, EXTRA_KEYS, CompareResult, simulate_requests
from jaxsched.errors import JaxschedError
from jaxsched.integrations.vllm.probe import SpeedProbe
from jaxsched.integrations.vllm.replay import LLMSettings, replay, replay_metrics, scheduler_of
from jaxsched.policies import get_policy, make_params

__all__ = ["VLLM_KEYS", "steps_of", "fit_runs", "calibrate", "settings_from_profile",
           "vllm_policy", "tau_of", "sim_requests", "compare"]

VLLM_KEYS = COMPARE_KEYS + EXTRA_KEYS


def steps_of(run: dict[str, Any]):
    """``(P, D, R, times)`` arrays of a replay's steps."""
    recs = run["records"]
    return (np.array([r.prefill_tokens for r in recs], np.float64),
            np.array([r.context_tokens for r in recs], np.float64),
            np.array([r.prefill_requests for r in recs], np.float64),
            np.asarray(run["durations"], np.float64))


def fit_runs(runs: dict[str, dict], settings: LLMSettings, model: str, timer: str,
             probe_reference: float = float("nan")) -> CalibrationResult:
    """Fit ``d0, d1_prefill, d1_context, d2`` on the steps of labelled replays."""
    parts = {label: steps_of(run) for label, run in runs.items()}
    P, D, R, T = (np.concatenate([p[i] for p in parts.values()]) for i in range(4))
    if T.size < 4:
        raise JaxschedError(f"calibrate: only {T.size} vLLM steps measured; replay more requests")
    b0, b1, _, _, b_rel, b_mar = fit_tau(P + D, T)  # the papers' model: d2 = 0
    s0, s1, s2, _, s_rel, s_mar = fit_tau(P + D, T, R)  # one d1 for both kinds
    d0, dp, dc, d2, rms, rel, mar = fit_split_tau(P, D, T, R)
    rows = []
    for label, (p, c, q, t) in parts.items():
        if t.size:
            rows.append(CalibrationRow(label, int(t.size), float(p.mean()), float(c.mean()),
                                       1e3 * float(t.mean()),
                                       1e3 * float(np.mean(d0 + dp * p + dc * c + d2 * q)),
                                       0.0, float(q.mean())))
    engine = {"engine": "vllm", **dataclasses.asdict(settings)}
    return CalibrationResult(
        d0=d0, d1_prefill=dp, d1_context=dc, fit_rms=rms, fit_rel_error=rel,
        mean_abs_rel_error=mar, samples=int(T.size),
        capacity=int(settings.num_blocks * settings.block_size), model=model,
        device=f"vLLM on {device_description()}", engine=engine, rows=tuple(rows),
        overhead_mean=0.0, timer=timer, timing_repeats=1, d2=d2,
        block_size=int(settings.block_size), single_d0=s0, single_d1=s1, single_d2=s2,
        single_rel_error=s_rel, single_mean_abs_rel_error=s_mar, base_d0=b0, base_d1=b1,
        base_rel_error=b_rel, base_mean_abs_rel_error=b_mar, probe_reference=probe_reference)


def calibrate(llm, settings: LLMSettings, serving: Sequence[tuple[str, Sequence]], model: str,
              timer: str = "cpu", seed: int = 0, progress=None,
              probe: SpeedProbe | None = None) -> CalibrationResult:
    """Replay each ``(label, requests)`` under vLLM's own scheduler and fit the steps
    (normalized by ``probe`` when given: its reference is the profile's
    ``probe_reference_s``)."""
    sched = scheduler_of(llm)
    sched.use_policy(None)
    replay(llm, serving[0][1][: min(8, len(serving[0][1]))], timer=timer, seed=seed,
           probe=probe)  # warm-up
    runs = {}
    for j, (label, requests) in enumerate(serving):
        if progress:
            progress(f"serving run {j + 1}/{len(serving)} ({label})")
        runs[label] = replay(llm, requests, timer=timer, seed=seed + j, probe=probe)
    return fit_runs(runs, settings, model, timer,
                    probe.reference if probe is not None else float("nan"))


def settings_from_profile(engine_table: dict[str, Any], where: str) -> LLMSettings:
    """The :class:`LLMSettings` of a profile's ``[engine]`` table (written by calibrate)."""
    table = dict(engine_table)
    if table.pop("engine", None) != "vllm":
        raise JaxschedError(f"{where}: not a vLLM profile ([engine] engine = \"vllm\"); run "
                            "jaxsched calibrate --engine vllm")
    known = {f.name for f in dataclasses.fields(LLMSettings)}
    unknown = sorted(set(table) - known)
    if unknown:
        raise JaxschedError(f"{where}: [engine] {unknown[0]}: unknown vLLM setting")
    settings = LLMSettings(**{k: int(v) for k, v in table.items()})
    if settings.torch_threads < 1:
        raise JaxschedError(f"{where}: [engine] torch_threads = {settings.torch_threads}: "
                            "must be >= 1")
    return settings


def vllm_policy(settings: LLMSettings, watermark: float = 0.0):
    """jaxsched's ``vllm`` policy with the engine's settings: ``(policy, params dict)``."""
    return get_policy("vllm"), {"max_num_seqs": float(settings.max_num_seqs),
                                "max_num_batched_tokens": float(settings.max_num_batched_tokens),
                                "watermark": float(watermark)}


def tau_of(system: dict[str, Any]):
    """``record -> d0 + d1_prefill P + d1_context D + d2 R`` with ``system``'s coefficients
    (a ``step_time`` for :func:`~jaxsched.integrations.vllm.replay.replay`)."""
    d0, dp = float(system["d0"]), float(system["d1_prefill"])
    dc, d2 = float(system["d1_context"]), float(system.get("d2", 0.0))
    return lambda r: d0 + dp * r.prefill_tokens + dc * r.context_tokens + d2 * r.prefill_requests


def sim_requests(requests: Sequence, own_scheduler: bool) -> list:
    """The requests the simulator replays. Under vLLM's own scheduler each prompt is one token
    shorter (see the module docstring: vLLM allocates a token's slot when the token is fed
    back, the model when it is generated, so ``l - 1 + s + 1`` is vLLM's ``l + s``); under the
    plugin the requests as they are (its policy decides on the model's memory)."""
    if not own_scheduler:
        return list(requests)
    return [dataclasses.replace(r, prompt_len=r.prompt_len - 1) if r.prompt_len > 1 else r
            for r in requests]


def compare(llm, requests: Sequence, system: dict[str, Any], settings: LLMSettings,
            policy_file: str | None = None, timer: str = "cpu", seed: int = 0,
            queue_size: int = 64, step_time=None, offset: bool = True,
            probe: SpeedProbe | None = None, replays: int = 1) -> CompareResult:
    """Replay ``requests`` through vLLM (``policy_file`` through the plugin, else vLLM's own
    scheduler) and through the simulator with ``system``'s ``d0, d1_prefill, d1_context, d2``
    (a profile's ``[system]`` table as :func:`jaxsched.engine.calibrate.read_profile` gives
    it) and the engine's block memory. ``step_time``, ``probe``: see
    :func:`~jaxsched.integrations.vllm.replay.replay`. ``replays``: vLLM replays the list
    this often and reports each figure's median (the simulator is deterministic; a measured
    clock is not: see :mod:`jaxsched.integrations.vllm.probe`)."""
    if not requests:
        raise JaxschedError("no requests to replay")
    sched = scheduler_of(llm)
    sched.use_policy(None if policy_file is None else {"policy": str(policy_file), "seed": seed})
    if policy_file is None:
        policy, raw = vllm_policy(settings, sched.settings.watermark)
        max_batch, num_classes = settings.max_num_seqs, 1
    else:
        setup = sched.setup
        policy, raw = setup.policy, dict(setup.doc.policy.params)
        max_batch, queue_size = int(setup.doc.system.max_batch), setup.queue_size
        num_classes = setup.num_classes
    runs = []
    for _ in range(max(1, replays)):  # each replay from the policy's initial state
        sched.use_policy(None if policy_file is None
                         else {"policy": str(policy_file), "seed": seed})
        runs.append(replay(llm, requests, timer=timer, seed=seed, step_time=step_time,
                           idle_step=float(system["d0"]), probe=probe))
    per_run = [replay_metrics(run, requests) for run in runs]
    eng = {k: float(np.median([m[k] for m in per_run])) for k in per_run[0]}
    # the trajectory shown and the step counts: the replay nearest the median end time
    ends = np.array([run["end_time"] for run in runs])
    run = runs[int(np.argmin(np.abs(ends - np.median(ends))))]
    params = make_params(policy, raw, num_classes)
    d0, dp, dc = float(system["d0"]), float(system["d1_prefill"]), float(system["d1_context"])
    d2 = float(system.get("d2", 0.0))
    capacity = float(settings.num_blocks * settings.block_size)
    idle = max(0.0, run["end_time"]) / max(d0, 1e-12)
    horizon = int(min(2 * len(run["records"]) + idle + 64, 400_000))
    for _ in range(3):
        sim = simulate_requests(sim_requests(requests, offset and policy_file is None),
                                policy, params, capacity, d0, dp, max_batch,
                                queue_size, horizon, num_classes, seed, d2, d1_prefill=dp,
                                d1_context=dc, block_size=settings.block_size)
        if sim["all_done"]:
            break
        horizon *= 4
    t = np.asarray([r.time for r in run["records"]], np.float64)
    m = np.asarray([r.blocks_used for r in run["records"]], np.float64) * settings.block_size
    return CompareResult(engine=eng, sim={k: sim["metrics"][k] for k in VLLM_KEYS},
                         engine_memory=(t, m), sim_memory=sim["memory"],
                         num_requests=len(requests),
                         policy=policy.name if policy_file is None else f"{policy.name} (plugin)",
                         engine_iterations=len(run["records"]),
                         sim_iterations=sim["iterations"], keys=VLLM_KEYS,
                         engine_runs=tuple(per_run) if len(per_run) > 1 else ())
