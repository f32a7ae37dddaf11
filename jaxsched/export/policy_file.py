"""Policy configs: the versioned JSON file a tuned policy ships as, its loader and validator.

A policy file (schema version 1, JSON Schema in ``jaxsched/data/policy.schema.json``)::

    {
      "schema_version": 1,
      "kind": "jaxsched-policy",
      "jaxsched_version": "0.1.0",
      "created": "2026-05-20T12:00:00Z",
      "policy":   {"name": "flow_control", "options": {}, "params": {"budget": 12.3}},
      "system":   {"capacity": 16492, "d0": 1, "d1": 0, "d1_prefill": 0, "d1_context": 0,
                   "d2": 0, "block_size": 1, "max_batch": 1024, "queue_size": 64,
                   "restart_on_evict": true, "num_classes": 3, "hardware": null},
      "workload": {"fingerprint": "sha256:...", "source": "configs/flow-control.toml",
                   "config": {... the [workload] table ...}},
      "metrics":  {"completed_per_time": 11.4, "latency_mean": 330, "latency_p95": 488,
                   "tokens_per_time": 458, "evictions": 207, ...},
      "objective": {"kind": "weighted", "terms": [...], "constraints": [...],
                    "values": {"score": 0.61}, "constraint_values": {}, "feasible": true},
      "tuning":   {"method": "optuna", "sampler": "tpe", "study": "...", "trial": 17, ...}
    }

:func:`load_policy` is the one function from a file to a policy of the registry and its
parameter pytree (what the engine's scheduler uses); :func:`validate_policy` also re-simulates
the recorded setting and compares the metrics. Files with another ``schema_version`` or with
unknown fields are refused with one line naming the file and the field. ``system.block_size``,
``system.d1_prefill`` and ``system.d1_context`` are optional: a file without them (written
before they existed) means blocks of one token and ``d1`` for both coefficients. A file gives
``d1`` (written only when the two are equal), the split pair, or both when they agree.
:func:`jaxsched.export.server_flags.server_config` maps a policy file to the nearest flags of vLLM or
SGLang; ``tuning.export_study.export_from_study`` writes one from a tuned study.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import math
from pathlib import Path
from typing import Any, Literal, Mapping

import jax
import jax.numpy as jnp
import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError, create_model

from jaxsched import __version__, api
from jaxsched.config import (
    Config,
    SplitCoefficients,
    config_from_dict,
    read_text,
    split_d1,
    workload_digest,
)
from jaxsched.errors import JaxschedError
from jaxsched.core.metrics import DERIVED_METRICS, METRIC_KEYS, add_derived, aggregate, measured_time
from jaxsched.policies import get_policy, make_params, policy_options
from jaxsched.core.rollout import compiled_simulator

__all__ = [
    "SCHEMA_VERSION",
    "SUPPORTED_SCHEMA_VERSIONS",
    "SCHEMA_PATH",
    "REQUIRED_METRICS",
    "PolicyFile",
    "json_schema",
    "write_json_schema",
    "policy_document",
    "write_policy",
    "read_policy_file",
    "load_policy",
    "document_config",
    "simulate_metrics",
    "ValidationReport",
    "validate_policy",
]

SCHEMA_VERSION = 1
SUPPORTED_SCHEMA_VERSIONS = (1,)
SCHEMA_PATH = Path(__file__).resolve().parents[1] / "data" / "policy.schema.json"
REQUIRED_METRICS = ("completed_per_time", "tokens_per_time", "latency_mean", "latency_p95",
                    "evictions")
"""Metrics every policy file records (measured in the hard simulator)."""


# ------------------------------------------------------------------------------------------
# Schema.


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class PolicySection(_Strict):
    """The policy: registry name, static options, parameter values."""

    name: str = Field(min_length=1)
    options: dict[str, str | bool | int | float] = Field(default_factory=dict)
    params: dict[str, float | list[float]]


class SystemSection(SplitCoefficients):
    """The system profile the policy was tuned for."""

    capacity: float = Field(gt=0, description="C: KV-cache tokens")
    d0: float = Field(ge=0, description="time per iteration")
    d1: float | None = Field(default=None, ge=0, description="time per prefill or context token "
                             "in an iteration (the papers' single d1: both coefficients)")
    d1_prefill: float | None = Field(default=None, ge=0, description="time per prefill token "
                                     "(optional: files without it mean d1)")
    d1_context: float | None = Field(default=None, ge=0, description="time per context token "
                                     "of a decoding request (optional: files without it mean d1)")
    d2: float = Field(default=0.0, ge=0, description="time per prefilling request in an "
                      "iteration (optional: files without it mean 0)")
    block_size: int = Field(default=1, ge=1, description="tokens per KV block (optional: files "
                            "without it mean 1, the token model)")
    max_batch: int = Field(ge=1)
    queue_size: int = Field(ge=1)
    restart_on_evict: bool
    num_classes: int = Field(ge=1)
    hardware: str | None = Field(default=None, description="model on GPU, from the hardware profile")


class WorkloadSection(_Strict):
    """The workload the metrics were measured on."""

    fingerprint: str = Field(pattern=r"^sha256:[0-9a-f]{64}$")
    source: str
    config: dict[str, Any] = Field(description="the [workload] table, for re-simulation")


def _metrics_model():
    fields: dict[str, Any] = {}
    for k in tuple(METRIC_KEYS) + DERIVED_METRICS:
        fields[k] = (float | None, ...) if k in REQUIRED_METRICS else (float | None, None)
    return create_model("MetricsSection", __base__=_Strict, **fields)


MetricsSection = _metrics_model()
MetricsSection.__doc__ = ("Metrics achieved in the hard simulator, averaged over the workloads "
                          "(null where undefined, e.g. no request completed).")


class TermSection(_Strict):
    metric: str
    direction: Literal["maximize", "minimize"]
    weight: float
    scale: float | None = None


class ConstraintSection(_Strict):
    metric: str
    bound: float
    upper: bool


class ObjectiveSection(_Strict):
    """The objective tuned and its values for this policy."""

    kind: Literal["weighted", "pareto"]
    terms: list[TermSection]
    constraints: list[ConstraintSection] = Field(default_factory=list)
    values: dict[str, float]
    constraint_values: dict[str, float] = Field(default_factory=dict)
    feasible: bool


class TuningSection(_Strict):
    """Where the policy came from."""

    method: str
    sampler: str | None = None
    study: str
    trial: int = Field(ge=0)
    storage: str = Field(description="storage URL without password")
    evaluated_trials: int = Field(ge=0)


class PolicyFile(_Strict):
    """A jaxsched policy config (schema version 1)."""

    schema_version: Literal[1]
    kind: Literal["jaxsched-policy"] = "jaxsched-policy"
    jaxsched_version: str
    created: datetime.datetime
    policy: PolicySection
    system: SystemSection
    workload: WorkloadSection
    metrics: MetricsSection  # type: ignore[valid-type]
    objective: ObjectiveSection | None = None
    tuning: TuningSection | None = None


def json_schema() -> dict:
    """The JSON Schema of :class:`PolicyFile` (what ``policy.schema.json`` ships)."""
    schema = PolicyFile.model_json_schema()
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": "urn:jaxsched:policy-schema:1",
        **schema,
    }


# ------------------------------------------------------------------------------------------
# Writing.


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0)


def _clean_metrics(metrics: Mapping[str, Any]) -> dict:
    known = set(MetricsSection.model_fields)
    out = {}
    for k, v in metrics.items():
        if k in known:
            out[k] = float(v) if v is not None and math.isfinite(float(v)) else None
    for k in REQUIRED_METRICS:
        out.setdefault(k, None)
    return out


def _coefficients(system: Mapping[str, Any]) -> dict:
    """``d1_prefill`` and ``d1_context`` of a snapshot's system (``d1`` giving both), and ``d1``
    as well when they are equal (the papers' notation)."""
    p, c = split_d1(system.get("d1"), system.get("d1_prefill"), system.get("d1_context"),
                    required=True)
    out = {"d1_prefill": float(p), "d1_context": float(c)}
    if p == c:
        out["d1"] = float(p)
    return out


def policy_document(snapshot: Mapping[str, Any], params: Mapping[str, Any], metrics: Mapping[str, Any],
                    *, source: str, hardware: str | None, fingerprint: str,
                    objective: Mapping[str, Any] | None = None,
                    tuning: Mapping[str, Any] | None = None) -> PolicyFile:
    """A :class:`PolicyFile` from a config snapshot, parameter values and metrics."""
    pol = dict(snapshot["policy"])
    name = pol.pop("name")
    options_known = policy_options(name)
    options = {k: v for k, v in pol.items() if k in options_known}
    system = snapshot["system"]
    workload = snapshot["workload"]
    num_classes = max(1, len(workload.get("classes") or []))
    doc = {
        "schema_version": SCHEMA_VERSION,
        "kind": "jaxsched-policy",
        "jaxsched_version": __version__,
        "created": _now(),
        "policy": {"name": name, "options": options, "params": dict(params)},
        "system": {
            "capacity": float(system["capacity"]), "d0": float(system["d0"]),
            **_coefficients(system), "d2": float(system.get("d2", 0.0)),
            "block_size": int(system.get("block_size", 1)),
            "max_batch": int(system["max_batch"]), "queue_size": int(system["queue_size"]),
            "restart_on_evict": bool(system.get("restart_on_evict", False)),
            "num_classes": num_classes, "hardware": hardware,
        },
        "workload": {"fingerprint": fingerprint, "source": source, "config": dict(workload)},
        "metrics": _clean_metrics(metrics),
        "objective": dict(objective) if objective is not None else None,
        "tuning": dict(tuning) if tuning is not None else None,
    }
    return PolicyFile(**doc)


def write_policy(doc: PolicyFile, path: str | Path) -> Path:
    """Write a policy file (pretty JSON)."""
    path = Path(path)
    if path.parent and not path.parent.exists():
        raise JaxschedError(f"--out {path}: folder {path.parent} does not exist")
    text = json.dumps(doc.model_dump(mode="json"), indent=2) + "\n"
    path.write_text(text)
    return path


# ------------------------------------------------------------------------------------------
# Reading and loading.


def _format_error(where: str, err: ValidationError) -> str:
    first = err.errors()[0]
    loc = ".".join(str(p) for p in first["loc"])
    msg = first["msg"]
    if first["type"] == "extra_forbidden":
        msg = "unknown field"
    elif first["type"] == "missing":
        msg = "missing field"
    if msg.startswith("Value error, "):
        msg = msg[len("Value error, "):]
    if "input" in first and first["type"] not in ("extra_forbidden", "missing", "value_error"):
        got = repr(first["input"])
        msg += f" (got {got[:60] + '...' if len(got) > 60 else got})"
    return f"{where}: {loc}: {msg}" if loc else f"{where}: {msg}"


def read_policy_file(path: str | Path) -> PolicyFile:
    """Parse and check a policy file: JSON, schema version, fields (no unknown ones)."""
    path = Path(path)
    text = read_text(path)
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        raise JaxschedError(f"{path}: invalid JSON: line {err.lineno} column {err.colno}: {err.msg}") from None
    if not isinstance(data, dict):
        raise JaxschedError(f"{path}: not a jaxsched policy file (expected a JSON object)")
    if "schema_version" not in data:
        raise JaxschedError(f"{path}: schema_version: missing field (not a jaxsched policy file?)")
    version = data["schema_version"]
    if isinstance(version, bool) or not isinstance(version, int):
        raise JaxschedError(f"{path}: schema_version: expected an integer, got {version!r}")
    if version not in SUPPORTED_SCHEMA_VERSIONS:
        newer = version > max(SUPPORTED_SCHEMA_VERSIONS)
        raise JaxschedError(
            f"{path}: schema_version {version} is not supported: jaxsched {__version__} reads "
            f"schema_version {', '.join(map(str, SUPPORTED_SCHEMA_VERSIONS))}"
            f"{' (written by a newer jaxsched: upgrade)' if newer else ''}"
        )
    try:
        return PolicyFile(**data)
    except ValidationError as err:
        raise JaxschedError(_format_error(str(path), err)) from None


def load_policy(path: str | Path):
    """``(policy, params, meta)`` from a policy file: the :class:`~jaxsched.policies.Policy`
    from the registry (with the file's options), its traced parameter pytree (validated
    against the parameters' ranges; parameters the file omits take their defaults) and the
    parsed :class:`PolicyFile`."""
    doc = read_policy_file(path)
    try:
        policy = get_policy(doc.policy.name, **doc.policy.options)
    except JaxschedError as err:
        raise JaxschedError(f"{path}: policy: {err}") from None
    params = make_params(policy, doc.policy.params, doc.system.num_classes,
                         where=f"{path}: policy.params.")
    return policy, params, doc


def document_config(doc: PolicyFile, source: str = "<policy file>") -> Config:
    """The config that reproduces a policy file's setting (system, workload, policy)."""
    s = doc.system
    data = {
        "system": {"capacity": s.capacity, "d0": s.d0, "d1_prefill": s.coefficients[0],
                   "d1_context": s.coefficients[1], "d2": s.d2, "block_size": s.block_size,
                   "max_batch": s.max_batch,
                   "queue_size": s.queue_size, "restart_on_evict": s.restart_on_evict},
        "workload": json.loads(json.dumps(doc.workload.config)),
        "policy": {"name": doc.policy.name, **doc.policy.options, **doc.policy.params},
    }
    return config_from_dict(data, source=source)


def simulate_metrics(cfg: Config) -> dict[str, float]:
    """Workload-averaged metrics (derived ones included) of a config, through the same
    batched simulator call as the tuners (one parameter set)."""
    exp = api.build_experiment(cfg)
    keys, workloads = api.build_workloads(cfg, exp.num_requests, exp.duration)
    params = jax.tree.map(lambda x: jnp.asarray(x)[None], exp.params)
    res = compiled_simulator(exp.policy, exp.shape, True)(keys, workloads, params)
    res = jax.block_until_ready(res)
    per = {k: np.asarray(v, np.float64)[0] for k, v in res.metrics.items()}
    elapsed = measured_time(cfg.workload.horizon, cfg.workload.warmup, cfg.d0,
                            max(cfg.d1_prefill, cfg.d1_context),
                            np.asarray(res.final_time, np.float64)[0], d2=cfg.d2)
    agg = aggregate(add_derived(per, elapsed))
    return {k: float(v) for k, v in agg.items()}


@dataclasses.dataclass
class ValidationReport:
    path: str
    policy: str
    rows: list[tuple[str, float | None, float | None, float, bool]]  # metric, file, sim, rel, ok
    notes: list[str]
    rtol: float
    simulated: bool

    @property
    def ok(self) -> bool:
        return all(r[4] for r in self.rows)

    def to_json(self) -> dict:
        return {
            "path": self.path, "policy": self.policy, "ok": self.ok, "rtol": self.rtol,
            "simulated": self.simulated, "notes": self.notes,
            "metrics": [{"metric": m, "recorded": a, "simulated": b, "relative_difference": d,
                         "ok": ok} for m, a, b, d, ok in self.rows],
        }


def validate_policy(path: str | Path, rtol: float = 0.01, atol: float = 1e-6,
                    simulate: bool = True) -> ValidationReport:
    """Check a policy file (schema, version, parameter ranges, workload fingerprint) and, with
    ``simulate``, re-simulate its setting and compare every recorded metric within ``rtol``
    (relative) or ``atol``."""
    policy, _, doc = load_policy(path)
    notes = []
    missing = [p for p in policy.params if p not in doc.policy.params]
    if missing:
        notes.append(f"policy.params: {', '.join(missing)} not in the file (registry defaults used)")
    cfg = document_config(doc, source=str(path))
    try:
        fp = workload_digest(doc.workload.config)
    except JaxschedError as err:
        raise JaxschedError(f"{path}: {err}") from None
    if fp != doc.workload.fingerprint:
        raise JaxschedError(f"{path}: workload.fingerprint: does not match workload.config "
                            "(the workload was edited after export)")
    rows = []
    if simulate:
        sim = simulate_metrics(cfg)
        recorded = doc.metrics.model_dump()
        for k, rec in recorded.items():
            if rec is None and k not in REQUIRED_METRICS:
                continue
            got = sim.get(k)
            got = got if got is not None and math.isfinite(got) else None
            if rec is None or got is None:
                ok = rec is None and got is None
                rows.append((k, rec, got, 0.0 if ok else math.inf, ok))
                continue
            diff = abs(got - rec)
            rel = diff / max(abs(rec), 1e-12)
            rows.append((k, rec, got, rel, diff <= atol or rel <= rtol))
    return ValidationReport(str(path), policy.name, rows, notes, rtol, simulate)


def write_json_schema(path: str | Path = SCHEMA_PATH) -> Path:
    """Regenerate the shipped JSON Schema (``python -m jaxsched.export.policy_file``)."""
    path = Path(path)
    path.write_text(json.dumps(json_schema(), indent=2) + "\n")
    return path


if __name__ == "__main__":
    print(write_json_schema())
