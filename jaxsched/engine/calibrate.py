"""Calibrate the simulator's iteration-time model ``tau = d0 + d1 (P + D)`` on the engine.

:func:`calibrate` drives an :class:`~jaxsched.engine.batching.Engine` with synthetic requests:
for every batch size ``b`` and prompt length ``l`` it submits ``b`` requests of ``l`` random
byte tokens that generate ``output_len`` tokens each (``ignore_eos``), and runs them to
completion. The first iteration of such a run prefills ``b * l`` tokens, the following ones
decode with growing contexts, so the runs cover a range of ``P + D``. A first pass over the
same runs compiles every prefill bucket and the decode step and is discarded.

Each :class:`~jaxsched.engine.batching.IterationRecord` gives one sample
``(P_k + D_k, compute_time_k)``; ``d0, d1`` are their least-squares fit (``numpy.linalg.lstsq``,
with ``d0, d1 >= 0`` enforced by refitting one of them when the unconstrained fit makes it
negative). ``compute_time`` is the wall time of the model calls; the engine's scheduling work
(the jitted policy decision and the host bookkeeping, ``duration - compute_time``) is not part
of the fit and is reported separately as the overhead.

:func:`write_profile` writes a system profile that a config includes with
``[system] profile = "profile.toml"`` (read by :func:`jaxsched.config.load_profile` as a
:class:`~jaxsched.config.SystemProfile`)::

    [system]          name, model, device, capacity (the engine's C in tokens), d0, d1,
                      time_unit, fit_rms, fit_rel_error, samples, note
    [engine]          the EngineConfig the profile was measured with (compare-sim rebuilds it)
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from jaxsched.errors import JaxschedError

__all__ = [
    "CalibrationRow",
    "CalibrationResult",
    "open_engine",
    "model_label",
    "device_description",
    "fit_tau",
    "calibrate",
    "write_profile",
    "read_engine_section",
    "parse_int_list",
]


@dataclasses.dataclass(frozen=True)
class CalibrationRow:
    """Measured iterations of one (batch size, prompt length) run."""

    batch_size: int
    prompt_len: int
    iterations: int
    mean_tokens: float  # mean P + D
    measured_ms: float  # mean compute time
    predicted_ms: float  # mean d0 + d1 (P + D)
    overhead_ms: float  # mean duration - compute_time

    @property
    def rel_error(self) -> float:
        return abs(self.predicted_ms - self.measured_ms) / max(self.measured_ms, 1e-12)


@dataclasses.dataclass(frozen=True)
class CalibrationResult:
    d0: float
    d1: float
    fit_rms: float  # seconds: RMS of the residuals
    fit_rel_error: float  # RMS residual / mean measured time
    mean_abs_rel_error: float  # mean |residual| / measured, per iteration
    samples: int
    capacity: int
    model: str
    device: str
    engine: dict[str, Any]
    rows: tuple[CalibrationRow, ...]
    overhead_mean: float  # seconds of scheduling per iteration (not in the fit)

    def profile_dict(self, name: str | None = None) -> dict[str, Any]:
        """The ``[system]`` table of the profile."""
        return {
            "name": name or f"jaxsched-engine-{self.model}-{self.device.split()[0]}",
            "model": self.model,
            "device": self.device,
            "capacity": int(self.capacity),
            "d0": float(self.d0),
            "d1": float(self.d1),
            "time_unit": "s",
            "fit_rms": float(self.fit_rms),
            "fit_rel_error": float(self.fit_rel_error),
            "samples": int(self.samples),
            "note": ("measured by jaxsched calibrate: tau = d0 + d1 (prefill + context tokens) "
                     "fitted to the engine's model compute time per iteration; scheduling "
                     f"overhead of {1e3 * self.overhead_mean:.2f} ms/iteration not included"),
        }


def parse_int_list(text: str, option: str) -> tuple[int, ...]:
    """``"1,2,4"`` -> ``(1, 2, 4)``; a one-line :class:`JaxschedError` otherwise."""
    try:
        values = tuple(int(x) for x in str(text).split(",") if x.strip())
    except ValueError:
        raise JaxschedError(f"{option} {text!r}: expected comma-separated integers") from None
    if not values or min(values) < 1:
        raise JaxschedError(f"{option} {text!r}: expected integers >= 1")
    return values


def model_label(model: str | Path | None) -> str:
    """A short name for ``--model``: ``tiny`` by default, else the file's stem or folder name."""
    if model is None:
        return "tiny"
    p = Path(model)
    return p.name if p.is_dir() else p.stem


def open_engine(model: str | Path | None = None, engine_cfg=None, policy="greedy",
                policy_params=None, seed: int = 0, clock=None):
    """An engine for ``--model``: None (the tiny model), a model TOML or name, or a folder with
    ``*.safetensors`` + ``config.json`` (and optionally ``tokenizer.json``)."""
    import time

    from jaxsched.engine.build import resolve_model_config
    from jaxsched.engine.batching import Engine
    from jaxsched.engine.tokenizer import load_tokenizer
    from jaxsched.engine.weights import load_weights

    weights = None
    cfg_source = model
    if model is not None and Path(model).is_dir():
        weights, cfg_source = Path(model), None
    elif model is not None and Path(model).suffix == ".safetensors":
        weights, cfg_source = Path(model), None
    cfg = resolve_model_config(cfg_source, weights)
    tokenizer = None
    if weights is not None:
        folder = weights if weights.is_dir() else weights.parent
        if (folder / "tokenizer.json").is_file():
            tokenizer = folder / "tokenizer.json"
    return Engine(cfg, engine_cfg, load_weights(cfg, weights, seed), policy=policy,
                  policy_params=policy_params, tokenizer=load_tokenizer(tokenizer), seed=seed,
                  clock=clock or time.perf_counter)


def device_description() -> str:
    """``"cpu (cpu)"``, ``"gpu (NVIDIA H100 ...)"``: the platform and kind of JAX's device 0."""
    import jax

    d = jax.devices()[0]
    return f"{d.platform} ({getattr(d, 'device_kind', d.platform)})"


def fit_tau(tokens: Sequence[float], times: Sequence[float]) -> tuple[float, float, float, float, float]:
    """Least-squares ``times ~ d0 + d1 tokens`` with ``d0, d1 >= 0``.

    Returns ``(d0, d1, rms, rel_rms, mean_abs_rel)``: the RMS residual in seconds, that RMS over
    the mean time, and the mean per-sample ``|residual| / time``."""
    x = np.asarray(tokens, np.float64)
    y = np.asarray(times, np.float64)
    if x.size < 2:
        raise JaxschedError("calibration needs at least 2 measured iterations")
    a = np.stack([np.ones_like(x), x], axis=1)
    (d0, d1), *_ = np.linalg.lstsq(a, y, rcond=None)
    if d1 < 0:  # no token dependence visible: a constant
        d0, d1 = float(np.mean(y)), 0.0
    elif d0 < 0:  # through the origin
        d0, d1 = 0.0, float(np.dot(x, y) / max(np.dot(x, x), 1e-30))
    resid = d0 + d1 * x - y
    rms = float(np.sqrt(np.mean(resid ** 2)))
    rel = rms / max(float(np.mean(y)), 1e-30)
    mean_abs_rel = float(np.mean(np.abs(resid) / np.maximum(y, 1e-30)))
    return float(d0), float(d1), rms, rel, mean_abs_rel


def _run_batch(engine, batch_size: int, prompt_len: int, output_len: int, rng) -> list:
    from jaxsched.engine.batching import SamplingParams

    sp = SamplingParams(max_tokens=output_len, temperature=0.0, ignore_eos=True)
    start = len(engine.records)
    for _ in range(batch_size):
        engine.submit([int(t) for t in rng.randint(0, 256, size=prompt_len)], sp)
    engine.run_until_idle()
    return list(engine.records)[start:]


def calibrate(engine, batch_sizes: Sequence[int] = (1, 2, 4, 8),
              prompt_lens: Sequence[int] = (8, 32, 96, 192), output_len: int = 8,
              repeats: int = 1, model: str = "tiny", seed: int = 0,
              progress=None) -> CalibrationResult:
    """Measure ``engine`` over the (batch size, prompt length) grid and fit ``d0, d1``.

    Batch sizes above ``max_batch`` and prompt lengths that do not fit (``l + output_len``
    above the engine's per-request limit, or a batch above its capacity) are clipped."""
    ec = engine.engine_cfg
    limit = ec.max_request_tokens
    if output_len < 1 or output_len >= limit:
        raise JaxschedError(f"--output-len {output_len}: must be in [1, {limit})")
    grid = []
    for b in sorted(set(min(int(b), ec.max_batch) for b in batch_sizes)):
        per_req = min(limit, ec.capacity // b)
        for l in sorted(set(prompt_lens)):
            l = max(1, min(int(l), per_req - output_len))
            if (b, l) not in grid:
                grid.append((b, l))
    rng = np.random.RandomState(seed)
    for i, (b, l) in enumerate(grid):  # warm-up: compile every bucket and shape
        if progress:
            progress(f"compiling {i + 1}/{len(grid)} (batch {b}, prompt {l})")
        _run_batch(engine, b, l, min(2, output_len), rng)
    per_row: dict[tuple[int, int], list] = {g: [] for g in grid}
    for r in range(max(1, repeats)):
        for i, (b, l) in enumerate(grid):
            if progress:
                progress(f"measuring {i + 1}/{len(grid)} (batch {b}, prompt {l})")
            recs = _run_batch(engine, b, l, output_len, rng)
            per_row[(b, l)].extend(rec for rec in recs
                                   if rec.prefill_tokens + rec.context_tokens > 0)
    recs = [rec for g in grid for rec in per_row[g]]
    tokens = [rec.prefill_tokens + rec.context_tokens for rec in recs]
    times = [rec.compute_time for rec in recs]
    d0, d1, rms, rel, mar = fit_tau(tokens, times)
    rows = []
    for (b, l) in grid:
        rr = per_row[(b, l)]
        if not rr:
            continue
        tok = np.array([r.prefill_tokens + r.context_tokens for r in rr], np.float64)
        ct = np.array([r.compute_time for r in rr])
        ov = np.array([r.duration - r.compute_time for r in rr])
        rows.append(CalibrationRow(b, l, len(rr), float(tok.mean()), 1e3 * float(ct.mean()),
                                   1e3 * float(np.mean(d0 + d1 * tok)), 1e3 * float(ov.mean())))
    overhead = float(np.mean([r.duration - r.compute_time for r in recs]))
    return CalibrationResult(
        d0=d0, d1=d1, fit_rms=rms, fit_rel_error=rel, mean_abs_rel_error=mar,
        samples=len(recs), capacity=int(ec.capacity), model=model,
        device=device_description(), engine=dataclasses.asdict(ec), rows=tuple(rows),
        overhead_mean=overhead)


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        if not math.isfinite(v):
            raise ValueError(f"cannot write {v!r} to TOML")
        return repr(v)
    s = str(v).replace("\\", "\\\\").replace('"', '\\"').replace("\n", " ")
    return f'"{s}"'


def write_profile(result: CalibrationResult, path: str | Path, name: str | None = None) -> Path:
    """Write the system profile TOML (``[system]`` + ``[engine]``); returns the path."""
    path = Path(path)
    lines = [
        "# System profile measured by `jaxsched calibrate` on the jaxsched engine.",
        "# Include it from a config with:  [system] profile = \"" + path.name + "\"",
        "# tau = d0 + d1 * (prefill tokens + context tokens), in seconds per iteration.",
        "[system]",
    ]
    lines += [f"{k} = {_toml_value(v)}" for k, v in result.profile_dict(name).items()]
    lines += ["", "# The engine shape the profile was measured with (jaxsched compare-sim "
              "rebuilds it).", "[engine]"]
    lines += [f"{k} = {_toml_value(v)}" for k, v in result.engine.items()]
    try:
        if path.parent and not path.parent.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("\n".join(lines) + "\n")
    except OSError as err:
        raise JaxschedError(f"{path}: cannot write: {err.strerror or err}") from None
    return path


def read_engine_section(path: str | Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """``(system table, engine table)`` of a profile written by :func:`write_profile` (the
    engine table is empty for other profiles)."""
    import tomllib

    path = Path(path)
    try:
        data = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise JaxschedError(f"{path}: no such profile") from None
    except (OSError, tomllib.TOMLDecodeError) as err:
        raise JaxschedError(f"{path}: cannot read profile: {err}") from None
    system = data.get("system")
    if not isinstance(system, dict) or not {"capacity", "d0", "d1"} <= set(system):
        raise JaxschedError(f"{path}: not a system profile (needs a [system] table with "
                            "capacity, d0, d1; run jaxsched calibrate)")
    engine = data.get("engine") or {}
    return system, dict(engine)
