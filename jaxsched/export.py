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
:func:`server_config` maps a policy file to the nearest flags of vLLM or SGLang.
"""

from __future__ import annotations

import dataclasses
import datetime
import hashlib
import json
import math
from pathlib import Path
from typing import Any, Literal, Mapping

from pydantic import BaseModel, ConfigDict, Field, ValidationError, create_model, model_validator

from jaxsched.config import Config, split_d1
from jaxsched.errors import JaxschedError

__all__ = [
    "SCHEMA_VERSION",
    "SUPPORTED_SCHEMA_VERSIONS",
    "SCHEMA_PATH",
    "REQUIRED_METRICS",
    "SERVERS",
    "PolicyFile",
    "json_schema",
    "write_json_schema",
    "config_snapshot",
    "workload_fingerprint",
    "policy_document",
    "export_from_study",
    "write_policy",
    "read_policy_file",
    "load_policy",
    "document_config",
    "simulate_metrics",
    "ValidationReport",
    "validate_policy",
    "ServerConfig",
    "PLUGIN_SCHEDULER",
    "plugin_command",
    "server_config",
]

SCHEMA_VERSION = 1
SUPPORTED_SCHEMA_VERSIONS = (1,)
SCHEMA_PATH = Path(__file__).resolve().parent / "data" / "policy.schema.json"
REQUIRED_METRICS = ("completed_per_time", "tokens_per_time", "latency_mean", "latency_p95",
                    "evictions")
"""Metrics every policy file records (measured in the hard simulator)."""

SERVERS = ("vllm", "sglang")


# ------------------------------------------------------------------------------------------
# Schema.


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class PolicySection(_Strict):
    """The policy: registry name, static options, parameter values."""

    name: str = Field(min_length=1)
    options: dict[str, str | bool | int | float] = Field(default_factory=dict)
    params: dict[str, float | list[float]]


class SystemSection(_Strict):
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

    @model_validator(mode="after")
    def _split(self):
        split_d1(self.d1, self.d1_prefill, self.d1_context, required=True)
        return self

    @property
    def coefficients(self) -> tuple[float, float]:
        """``(d1_prefill, d1_context)``; a file with only ``d1`` gives it for both."""
        return split_d1(self.d1, self.d1_prefill, self.d1_context, required=True)


class WorkloadSection(_Strict):
    """The workload the metrics were measured on."""

    fingerprint: str = Field(pattern=r"^sha256:[0-9a-f]{64}$")
    source: str
    config: dict[str, Any] = Field(description="the [workload] table, for re-simulation")


def _metrics_model():
    from jaxsched.metrics import METRIC_KEYS

    from tuning.objectives import DERIVED_METRICS

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
# Snapshot and fingerprint of a config.


def _trace_file(cfg_workload: Mapping[str, Any], base_dir: Path | None) -> Path | None:
    from jaxsched import traces

    path = Path(cfg_workload["path"])
    if path.is_file():
        return path
    if base_dir is not None and (base_dir / path).is_file():
        return base_dir / path
    try:
        return traces.shipped_trace_path(str(cfg_workload["path"]))
    except (KeyError, FileNotFoundError, JaxschedError):
        return None


def config_snapshot(cfg: Config) -> dict:
    """A self-contained config dict (``config_from_dict`` rebuilds it): the system's resolved
    capacity, d0, d1_prefill, d1_context, d2 and block_size instead of a profile; a trace path
    made absolute unless it names a shipped trace."""
    system = cfg.system.model_dump(exclude_none=True)
    system.pop("profile", None)
    system.pop("d1", None)
    system.update(capacity=cfg.capacity, d0=cfg.d0, d1_prefill=cfg.d1_prefill,
                  d1_context=cfg.d1_context, d2=cfg.d2, block_size=cfg.block_size)
    workload = cfg.workload.model_dump(exclude_none=True)
    if workload["kind"] == "trace":
        from jaxsched import traces

        try:
            traces.shipped_trace_path(str(workload["path"]))
            shipped = not Path(workload["path"]).is_file()
        except (KeyError, FileNotFoundError, JaxschedError):
            shipped = False
        if not shipped:
            f = _trace_file(workload, Path(cfg.source).parent)
            if f is not None:
                workload["path"] = str(f.resolve())
    return {"system": system, "workload": workload, "policy": cfg.policy.model_dump()}


def _workload_digest(workload: Mapping[str, Any], base_dir: Path | None = None) -> str:
    data = dict(workload)
    if data.get("kind") == "trace":
        f = _trace_file(data, base_dir)
        if f is None:
            raise JaxschedError(f"workload.path: no trace file {data.get('path')!r}")
        data.pop("path")
        data["trace_sha256"] = hashlib.sha256(f.read_bytes()).hexdigest()
    text = json.dumps(data, sort_keys=True, separators=(",", ":"))
    return "sha256:" + hashlib.sha256(text.encode()).hexdigest()


def workload_fingerprint(cfg: Config) -> str:
    """sha256 of the canonical ``[workload]`` table (a trace by its file's content, not its
    path): equal fingerprints, equal workloads."""
    return _workload_digest(cfg.workload.model_dump(exclude_none=True), Path(cfg.source).parent)


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
    from jaxsched import __version__
    from jaxsched.policies import policy_options

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


def export_from_study(storage: str | None, study_name: str, trial: int | None = None) -> PolicyFile:
    """The policy file of a tuned trial: ``trial`` (a number), else the study's best feasible
    trial (a multi-objective study needs ``trial``: one of its Pareto set)."""
    from optuna.trial import TrialState

    from tuning import optuna_search as osr
    from tuning.objectives import Objective
    from tuning.search_space import SearchSpace

    store = osr.open_storage(storage)
    study = osr.load_study(store, study_name)
    meta = osr.study_meta(study)
    if meta is None:
        raise JaxschedError(f"--study {study_name!r}: was not created by jaxsched tune")
    objective = Objective.from_dict(meta["objective"])
    baseline = study.user_attrs.get("baseline_metrics")
    if baseline is not None:
        objective = objective.with_baseline(baseline)
    trials = study.get_trials(deepcopy=False)
    if trial is None:
        best = osr.best_trials(study, objective)
        if not best:
            raise JaxschedError(f"--study {study_name!r}: no complete feasible trial yet")
        if len(best) > 1 or objective.kind == "pareto":
            nums = ", ".join(str(t.number) for t in best)
            if len(best) > 1:
                raise JaxschedError(
                    f"--study {study_name!r} is multi-objective: choose one of its Pareto-optimal "
                    f"trials with --trial N ({nums})"
                )
        chosen = best[0]
    else:
        match = [t for t in trials if t.number == trial]
        if not match:
            raise JaxschedError(f"--trial {trial}: no such trial in study {study_name!r} "
                                f"(trials 0..{len(trials) - 1})")
        chosen = match[0]
        if chosen.state != TrialState.COMPLETE:
            why = chosen.user_attrs.get("fail_reason")
            raise JaxschedError(f"--trial {trial}: is {chosen.state.name.lower()}"
                                f"{': ' + why if why else ''}; export a complete trial")
    space = SearchSpace.from_dict(meta["space"])
    params = space.plain_values(chosen.params)
    metrics = chosen.user_attrs.get("metrics", {})
    constraints = dict(chosen.constraints)
    obj = {
        **objective.to_dict(),
        "values": dict(zip(objective.names, chosen.values)),
        "constraint_values": constraints,
        "feasible": all(v <= 0 for v in constraints.values()),
    }
    tuning = {
        "method": "optuna",
        "sampler": chosen.user_attrs.get("sampler"),
        "study": study_name,
        "trial": chosen.number,
        "storage": osr.redact_url(store.url),
        "evaluated_trials": osr.evaluated_count(study),
    }
    return policy_document(meta["config"], params, metrics, source=meta["source"],
                           hardware=meta.get("hardware"), fingerprint=meta["workload_fingerprint"],
                           objective=obj, tuning=tuning)


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
    from jaxsched import __version__

    from jaxsched.config import read_text

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
    from jaxsched.policies import get_policy, make_params

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
    from jaxsched.config import config_from_dict

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
    import jax
    import jax.numpy as jnp
    import numpy as np

    from jaxsched import api
    from jaxsched.rollout import compiled_simulator
    from tuning.objectives import add_derived, aggregate, measured_time

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
        fp = _workload_digest(doc.workload.config)
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


# ------------------------------------------------------------------------------------------
# Nearest server flags.


@dataclasses.dataclass
class ServerConfig:
    """The nearest configuration of an LLM server for a policy file."""

    server: str
    policy: str
    flags: dict[str, Any]
    env: dict[str, str]
    notes: list[str]
    # vLLM only: the command line that runs the policy itself through jaxsched's scheduler
    # (jaxsched.integrations.vllm), or None with the reason in plugin_refusal.
    plugin_command: str | None = None
    plugin_refusal: str | None = None

    @property
    def command(self) -> str:
        env = " ".join(f"{k}={v}" for k, v in self.env.items())
        parts = []
        for k, v in self.flags.items():
            parts.append(k if v is True else f"{k} {v}")
        if self.server == "vllm":
            cmd = "vllm serve MODEL " + " ".join(parts)
        else:
            cmd = "python -m sglang.launch_server --model-path MODEL " + " ".join(parts)
        return (env + " " + cmd).strip()

    def to_json(self) -> dict:
        out = {"server": self.server, "policy": self.policy, "flags": self.flags,
               "env": self.env, "notes": self.notes, "command": self.command}
        if self.server == "vllm":
            out.update(plugin_command=self.plugin_command, plugin_refusal=self.plugin_refusal)
        return out


PLUGIN_SCHEDULER = "jaxsched.integrations.vllm.JaxschedScheduler"
"""vLLM's ``--scheduler-cls`` for jaxsched policies (:mod:`jaxsched.integrations.vllm`)."""


def plugin_command(doc: PolicyFile, policy_path: str = "policy.json",
                   block_size: int | None = None) -> tuple[str | None, str | None]:
    """``(command, None)``: the ``vllm serve`` line that runs the policy file through the
    jaxsched scheduler (its system as vLLM flags, ``--scheduler-cls`` and
    ``--additional-config``), or ``(None, reason)`` when the plugin would refuse it (the
    checks of :func:`jaxsched.integrations.vllm.plugin.load_setup`)."""
    from jaxsched.integrations.vllm.plugin import EngineSettings, param_values
    from jaxsched.policies import get_policy, make_params

    s, pol = doc.system, doc.policy
    bs = int(block_size or s.block_size)
    if bs == 1:
        return None, ("system.block_size = 1 (token memory): vLLM allocates blocks; tune with "
                      "[system] block_size = 16 (GPU) or 32 (CPU) to run the policy itself")
    blocks = int(float(s.capacity) // bs)
    p = dict(pol.params)
    budget = p.get("max_num_batched_tokens", p.get("chunk_size")) if pol.name in ("vllm", "sarathi") else None
    tokens = int(budget) if budget is not None else 2048
    try:
        policy = get_policy(pol.name, **pol.options)
        params = make_params(policy, p, s.num_classes)
    except JaxschedError as err:
        return None, str(err)
    engine = EngineSettings(num_blocks=blocks, block_size=bs, max_num_seqs=int(s.max_batch),
                            max_num_batched_tokens=tokens)
    if policy.serve_check is not None:
        why = policy.serve_check("vllm", param_values(policy, params), engine.as_dict())
        if why:
            return None, why
    config = json.dumps({"jaxsched": {"policy": str(policy_path)}})
    cmd = (f"vllm serve MODEL --block-size {bs} --num-gpu-blocks-override {blocks} "
           f"--max-num-seqs {int(s.max_batch)} --max-num-batched-tokens {tokens} "
           f"--no-enable-prefix-caching --scheduler-cls {PLUGIN_SCHEDULER} "
           f"--additional-config '{config}'")
    return cmd, None


def _mean_output(doc: PolicyFile) -> float | None:
    classes = doc.workload.config.get("classes") or []
    if not classes:
        return None
    rates = [float(c.get("rate", 0.0)) for c in classes]
    weights = rates if sum(rates) > 0 else [float(c.get("weight", 1.0)) for c in classes]
    total = sum(weights)
    return sum(w * c["output_len"] for w, c in zip(weights, classes)) / total


def _fmt(v: float) -> str:
    return f"{v:g}"


def server_config(doc: PolicyFile, server: str, policy_path: str = "policy.json") -> ServerConfig:
    """The nearest ``server`` (vllm | sglang) flags and environment for a policy file, with a
    note for every tuned parameter (or model setting) the server cannot express. For vLLM
    also the command line that runs the policy itself (:func:`plugin_command`, with
    ``policy_path``); a parameter its flags cannot express is then noted as run by it."""
    if server not in SERVERS:
        raise JaxschedError(f"--to {server!r}: expected one of {', '.join(SERVERS)}")
    vllm = server == "vllm"
    plugin, refusal = plugin_command(doc, policy_path) if vllm else (None, None)
    s, pol = doc.system, doc.policy
    p = dict(pol.params)
    flags: dict[str, Any] = {}
    env: dict[str, str] = {}
    notes: list[str] = []
    seqs_flag = "--max-num-seqs" if vllm else "--max-running-requests"

    # The system the policy was tuned for.
    cap = int(s.capacity)
    if vllm and s.block_size > 1:  # tuned in blocks: the same blocks, floor(C / b) of them
        flags["--block-size"] = int(s.block_size)
        flags["--num-gpu-blocks-override"] = cap // int(s.block_size)
        notes.append(f"capacity C = {cap} KV tokens as {cap // int(s.block_size)} blocks of "
                     f"{s.block_size} (tuned for {s.hardware or 'the configured system'})")
    elif vllm:
        flags["--block-size"] = 16
        flags["--num-gpu-blocks-override"] = math.ceil(cap / 16)
        notes.append(f"capacity C = {cap} KV tokens as 16-token blocks (tuned for "
                     f"{s.hardware or 'the configured system'})")
    else:
        flags["--max-total-tokens"] = cap
        notes.append(f"capacity C = {cap} KV tokens (tuned for {s.hardware or 'the configured system'})")
    flags[seqs_flag] = int(s.max_batch)
    flags["--scheduling-policy" if vllm else "--schedule-policy"] = "fcfs"
    if s.restart_on_evict:
        notes.append(f"restart_on_evict: {server} keeps generated tokens on preemption "
                     "(recompute); the papers' restart-from-scratch model cannot be selected")

    def cap_seqs(v: float, why: str):
        flags[seqs_flag] = int(max(1, min(round(v), s.max_batch)))
        notes.append(why)

    def no_counterpart(name: str, what: str):
        val = p.get(name)
        shown = ", ".join(_fmt(x) for x in val) if isinstance(val, list) else _fmt(val) if val is not None else "?"
        if plugin is not None:
            notes.append(f"{name} = {shown}: {what}; vllm's flags cannot express it, the "
                         f"--scheduler-cls line runs it")
        else:
            notes.append(f"{name} = {shown}: {what}; {server} cannot express it")

    name = pol.name
    handled: set[str] = set()
    if name in ("greedy", "vllm", "sarathi") and "max_num_seqs" in p:
        if p["max_num_seqs"] < s.max_batch:
            flags[seqs_flag] = int(p["max_num_seqs"])
        handled.add("max_num_seqs")
    if name == "vllm":
        if "max_num_batched_tokens" in p:
            if vllm:
                flags["--max-num-batched-tokens"] = int(p["max_num_batched_tokens"])
                flags["--enable-chunked-prefill"] = True
            else:
                flags["--chunked-prefill-size"] = int(p["max_num_batched_tokens"])
                notes.append("max_num_batched_tokens -> --chunked-prefill-size (SGLang caps prefill "
                             "tokens per iteration; decode tokens are not counted)")
            handled.add("max_num_batched_tokens")
        if "watermark" in p:
            if vllm:  # vLLM v1 (0.32) keeps this fraction of the blocks free at admission
                flags["--watermark"] = _fmt(float(p["watermark"]))
            else:
                no_counterpart("watermark", "fraction of C kept free at admission (vLLM's "
                               "watermark)")
            handled.add("watermark")
    if name == "sarathi" and "chunk_size" in p:
        if vllm:
            flags["--max-num-batched-tokens"] = int(p["chunk_size"])
            flags["--enable-chunked-prefill"] = True
        else:
            flags["--chunked-prefill-size"] = int(p["chunk_size"])
        handled.add("chunk_size")
    if name == "sglang":
        keys = ("new_token_ratio_init", "new_token_ratio_min", "new_token_ratio_decay_steps",
                "max_new_tokens", "retract_steps")
        if vllm:
            for k in keys:
                if k in p:
                    no_counterpart(k, "SGLang's reservation of future tokens at admission "
                                   "(vLLM reserves none)")
        else:
            init = float(p.get("new_token_ratio_init", 0.7))
            flags["--schedule-conservativeness"] = 1.0
            env["SGLANG_INIT_NEW_TOKEN_RATIO"] = _fmt(init)
            if "new_token_ratio_min" in p and init > 0:
                env["SGLANG_MIN_NEW_TOKEN_RATIO_FACTOR"] = _fmt(float(p["new_token_ratio_min"]) / init)
            elif "new_token_ratio_min" in p:
                no_counterpart("new_token_ratio_min", "SGLang sets the minimum as a factor of an "
                               "initial ratio of 0")
            if "new_token_ratio_decay_steps" in p:
                env["SGLANG_NEW_TOKEN_RATIO_DECAY_STEPS"] = str(int(round(p["new_token_ratio_decay_steps"])))
            if "max_new_tokens" in p:
                env["SGLANG_CLIP_MAX_NEW_TOKENS_ESTIMATION"] = str(int(p["max_new_tokens"]))
            if "retract_steps" in p:
                env["SGLANG_RETRACT_DECODE_STEPS"] = str(int(p["retract_steps"]))
        handled.update(keys)
    if name == "reserve_full" and "max_new_tokens" in p:
        if vllm:
            no_counterpart("max_new_tokens", "output tokens reserved per request at admission "
                           "(vLLM reserves none; TensorRT-LLM's GUARANTEED_NO_EVICT does)")
        else:
            env["SGLANG_INIT_NEW_TOKEN_RATIO"] = "1"
            env["SGLANG_MIN_NEW_TOKEN_RATIO_FACTOR"] = "1"
            env["SGLANG_CLIP_MAX_NEW_TOKENS_ESTIMATION"] = str(int(p["max_new_tokens"]))
            notes.append("reserve_full: nearest is a constant new-token ratio of 1 with the "
                         "estimate clipped at max_new_tokens")
        handled.add("max_new_tokens")
    if name in ("wait", "nested_wait") and "batch_limit" in p:
        if p["batch_limit"] < s.max_batch:
            flags[seqs_flag] = int(p["batch_limit"])
        handled.add("batch_limit")
    if name in ("flow_control", "flow_control_known") and "budget" in p:
        b = p["budget"]
        total = sum(b) if isinstance(b, list) else float(b)
        mean_o = _mean_output(doc)
        no_counterpart("budget", "admissions per iteration (flow control)")
        if mean_o is not None:
            if isinstance(b, list):
                classes = doc.workload.config.get("classes") or []
                est = sum(bk * c["output_len"] for bk, c in zip(b, classes))
            else:
                est = total * mean_o
            cap_seqs(est, f"nearest: {seqs_flag} {int(max(1, min(round(est), s.max_batch)))} "
                          f"= min(max_batch, budget x output length = {est:.0f}) (Little's law: "
                          "residents at that admission rate)")
        handled.add("budget")
    for k in p:
        if k not in handled:
            spec = None
            try:
                from jaxsched.policies import get_policy

                spec = get_policy(pol.name, **pol.options).params.get(k)
            except JaxschedError:
                pass
            no_counterpart(k, spec.doc.split(";")[0] if spec is not None and spec.doc else f"{name} parameter")
    return ServerConfig(server=server, policy=name, flags=flags, env=env, notes=notes,
                        plugin_command=plugin, plugin_refusal=refusal)


def write_json_schema(path: str | Path = SCHEMA_PATH) -> Path:
    """Regenerate the shipped JSON Schema (``python -m jaxsched.export``)."""
    path = Path(path)
    path.write_text(json.dumps(json_schema(), indent=2) + "\n")
    return path


if __name__ == "__main__":
    print(write_json_schema())
