"""Experiment configs: TOML files validated with pydantic schemas.

A config has four tables::

    [system]      capacity (tokens) or profile (hardware profile TOML), d0, d1 (or
                  d1_prefill and d1_context), d2, block_size, max_batch, queue_size,
                  restart_on_evict
    [workload]    kind = poisson | saturated | bursty | trace, horizon, warmup,
                  num_workloads, seed, [[workload.classes]] prompt_len, output_len, rate, weight;
                  for traces path, format (azure | mooncake), time_scale
    [policy]      name, then the policy's options and parameters
    [tune]        tuning settings (read by the tuners)

Unknown keys, wrong types and out-of-range values are refused with one line naming the file
and the key. ``--set section.key=value`` overrides are applied before validation.

Iteration-time coefficients (:mod:`jaxsched.core.model`): ``d1`` is the papers' single coefficient
and means ``d1_prefill = d1_context = d1``. One table (a config's ``[system]``, a profile) may
give ``d1`` together with a split key only if they are equal; otherwise it is refused in one
line. A config's keys override its profile's: ``d1`` sets both, a split key its own.
"""

from __future__ import annotations

import hashlib
import json
import math
import tomllib
from pathlib import Path
from typing import Any, Literal, Mapping

from pydantic import BaseModel, ConfigDict, Field, ValidationError, create_model, model_validator

from jaxsched.workloads import traces
from jaxsched.workloads.bursty import BurstyConfig  # the bursty kind's table (re-exported)
from jaxsched.workloads.registry import KINDS
from jaxsched.errors import JaxschedError

__all__ = [
    "ClassConfig",
    "BurstyConfig",
    "SystemConfig",
    "WorkloadConfig",
    "PolicyConfig",
    "Config",
    "HardwareProfile",
    "SystemProfile",
    "load_config",
    "config_from_dict",
    "apply_overrides",
    "load_profile",
    "format_validation",
    "split_d1",
    "SplitCoefficients",
    "read_text",
    "short_repr",
    "check_numeric_ranges",
    "check_memory_fits_int32",
    "config_snapshot",
    "workload_digest",
    "workload_fingerprint",
    "CONFIG_DIR",
    "DEFAULT_CONFIG",
]

def _config_dir() -> Path:
    here = Path(__file__).resolve().parent
    packaged = here / "configs"  # an installed wheel: the build copies configs/ there
    return packaged if packaged.is_dir() else here.parent / "configs"


CONFIG_DIR = _config_dir()
"""The shipped configs: the repository's top-level ``configs/`` folder in a source checkout,
``jaxsched/configs`` in an installed wheel (see ``setup.py``). A bare config name such as
``flow-control`` is looked up there."""

DEFAULT_CONFIG = Path(__file__).resolve().parent / "data" / "default.toml"
"""The small embedded default that ``jaxsched simulate`` runs without a config."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def split_d1(d1, d1_prefill, d1_context, required: bool = False):
    """``(d1_prefill, d1_context)`` of one table: a split key where given, else ``d1``. A split
    key that differs from a ``d1`` given with it is refused (``ValueError`` naming the key);
    ``required``: both must end up set. Missing values stay None."""
    for name, value in (("d1_prefill", d1_prefill), ("d1_context", d1_context)):
        if d1 is not None and value is not None and value != d1:
            raise ValueError(f"{name} = {value:g} differs from d1 = {d1:g}: give d1 (both "
                             "coefficients) or d1_prefill and d1_context, not both")
    p = d1 if d1_prefill is None else d1_prefill
    c = d1 if d1_context is None else d1_context
    if required and (p is None or c is None):
        raise ValueError("d1 (or both d1_prefill and d1_context) is required")
    return p, c


class SplitCoefficients(_Strict):
    """A table that gives the iteration time's per-token coefficients, both required: its
    ``d1_prefill`` and ``d1_context`` fields, or a single ``d1`` for both (:func:`split_d1`)."""

    @model_validator(mode="after")
    def _split(self):
        split_d1(self.d1, self.d1_prefill, self.d1_context, required=True)
        return self

    @property
    def coefficients(self) -> tuple[float, float]:
        """``(d1_prefill, d1_context)``, a single ``d1`` giving both."""
        return split_d1(self.d1, self.d1_prefill, self.d1_context, required=True)


class ClassConfig(_Strict):
    """One request class: deterministic prompt and output lengths (the papers' setting)."""

    prompt_len: int = Field(gt=0, description="l: prompt tokens")
    output_len: int = Field(gt=0, description="o: output tokens")
    rate: float = Field(default=0.0, ge=0, description="arrivals per unit time (poisson, bursty)")
    weight: float = Field(default=1.0, gt=0, description="class share (saturated)")


class SystemConfig(_Strict):
    capacity: float | None = Field(default=None, gt=0, description="C: KV tokens")
    profile: str | None = Field(default=None, description="hardware profile TOML")
    d0: float | None = Field(default=None, ge=0, description="time per iteration")
    d1: float | None = Field(default=None, ge=0,
                             description="time per prefill or context token (both)")
    d1_prefill: float | None = Field(default=None, ge=0, description="time per prefill token")
    d1_context: float | None = Field(default=None, ge=0,
                                     description="time per context token of a decode")
    d2: float | None = Field(default=None, ge=0, description="time per prefilling request")
    block_size: int | None = Field(default=None, ge=1,
                                   description="tokens per KV block (default: profile's, else 1)")
    max_batch: int = Field(default=256, ge=1, description="resident request slots")
    queue_size: int = Field(default=64, ge=1, description="scheduler look-ahead window")
    restart_on_evict: bool = Field(default=False, description="evicted requests lose progress")
    leap: bool = Field(default=False, description="leap over quiet iterations (same metrics; "
                       "policies greedy, vllm, flow_control)")

    @model_validator(mode="after")
    def _split(self):
        split_d1(self.d1, self.d1_prefill, self.d1_context)
        return self


class _WorkloadKeys(_Strict):
    """The [workload] keys every kind shares (the kinds' own tables are added below)."""

    kind: Literal[tuple(KINDS)] = Field(  # type: ignore[valid-type]
        description="arrivals: Poisson per class, an infinite backlog (saturated), "
                    "Markov-modulated Poisson (bursty), or a replayed trace")
    horizon: int = Field(gt=0, description="iterations per rollout")
    warmup: int = Field(default=0, ge=0, description="iterations before metrics count")
    num_workloads: int = Field(default=8, ge=1, description="independent replicas simulated "
                               "side by side (vmapped)")
    seed: int = Field(default=0, description="random seed of the arrivals")
    classes: list[ClassConfig] = Field(default_factory=list,
                                       description="request classes (all kinds but trace)")
    duration: float | None = Field(default=None, gt=0, description="span of arrival times")
    max_requests: int | None = Field(default=None, gt=0, description="cap on requests/replica")
    path: str | None = Field(default=None, description="trace: CSV/JSONL file, or a shipped "
                             "trace's name (azure_code, azure_conv)")
    format: Literal["azure", "mooncake"] | None = Field(default=None, description="trace: "
                                                          "the file's format")
    time_scale: float = Field(default=1.0, gt=0, description="trace seconds -> time units")
    random_offset: bool = Field(default=True, description="trace: each replica starts at a "
                                "random offset (wrapping around)")

    @model_validator(mode="after")
    def _kind_fields(self):
        if self.warmup >= self.horizon:
            raise ValueError(f"warmup ({self.warmup}) must be smaller than horizon ({self.horizon})")
        KINDS[self.kind].check_config(self)
        return self


# [workload]: the shared keys plus one optional sub-table per kind that has one (its
# config_table), so that a new kind's settings need no edit here.
WorkloadConfig = create_model(
    "WorkloadConfig", __base__=_WorkloadKeys, __module__=__name__,
    **{key: (model | None, Field(default=None, description=text))
       for key, model, text in (k.config_table for k in KINDS.values() if k.config_table)})


class PolicyConfig(BaseModel):
    """``name`` plus the policy's options and parameters (checked by the policy registry)."""

    model_config = ConfigDict(extra="allow", frozen=True)
    name: str = "greedy"

    def settings(self) -> dict[str, Any]:
        return dict(self.model_extra or {})


class Config(_Strict):
    system: SystemConfig
    workload: WorkloadConfig
    policy: PolicyConfig = PolicyConfig()
    tune: dict[str, Any] = Field(default_factory=dict)
    source: str = Field(default="<config>", exclude=True)
    # resolved from a profile and the config: capacity, d0, d1_prefill, d1_context, d2,
    # block_size (when set), hardware name
    resolved: dict[str, Any] = Field(default_factory=dict, exclude=True)

    @property
    def capacity(self) -> float:
        return float(self.resolved["capacity"])

    @property
    def d0(self) -> float:
        return float(self.resolved["d0"])

    @property
    def d1_prefill(self) -> float:
        return float(self.resolved["d1_prefill"])

    @property
    def d1_context(self) -> float:
        return float(self.resolved["d1_context"])

    @property
    def d1(self) -> float:
        """The papers' single ``d1``, for the theory (WAIT thresholds, fluid bounds): the common
        value when ``d1_prefill = d1_context``. When they differ the theory's
        ``tau = d0 + d1 M`` has no single coefficient to take, and this raises a one-line
        :class:`JaxschedError` asking for ``system.d1`` (setting it in the config makes both
        equal)."""
        p, c = self.d1_prefill, self.d1_context
        if p != c:
            raise JaxschedError(
                f"{self.source}: system.d1: the theory uses one d1 but d1_prefill = {p:g} "
                f"and d1_context = {c:g} differ; set system.d1 to the value it should use")
        return p

    @property
    def block_size(self) -> int:
        """Tokens per KV block: ``system.block_size``, else the profile's, else 1."""
        return int(self.resolved.get("block_size", 1))

    @property
    def d2(self) -> float:
        """Time per prefilling request (0: the papers' ``tau = d0 + d1 (P + D)``)."""
        return float(self.resolved.get("d2", 0.0))

    @property
    def num_classes(self) -> int:
        return max(1, len(self.workload.classes))


class HardwareProfile(SplitCoefficients):
    """A GPU + model pair. KV capacity in tokens:

    ``C = floor((gpu_memory_gib * 2**30 * memory_utilization - weight_bytes) / kv_bytes_per_token)``
    with ``weight_bytes = num_params_billion * 1e9 * bytes_per_param`` and
    ``kv_bytes_per_token = 2 * num_layers * num_kv_heads * head_dim * kv_bytes`` (K and V
    for every layer and KV head), divided by ``tensor_parallel`` GPUs' worth of weights and
    multiplied by their memory. ``d0, d1_prefill, d1_context, d2``: the iteration time
    ``tau = d0 + d1_prefill P + d1_context D + d2 R`` (:mod:`jaxsched.core.model`; ``d2`` per
    prefilling request, default 0); an older profile's single ``d1`` gives both.
    """

    name: str
    gpu: str
    gpu_memory_gib: float = Field(gt=0)
    num_gpus: int = Field(default=1, ge=1)
    memory_utilization: float = Field(default=0.9, gt=0, le=1)
    model: str
    num_params_billion: float = Field(gt=0)
    bytes_per_param: float = Field(default=2.0, gt=0)
    num_layers: int = Field(gt=0)
    num_kv_heads: int = Field(gt=0)
    head_dim: int = Field(gt=0)
    kv_bytes: float = Field(default=2.0, gt=0)
    d0: float = Field(ge=0, description="fitted time per iteration")
    d1: float | None = Field(default=None, ge=0, description="time per token (both kinds)")
    d1_prefill: float | None = Field(default=None, ge=0, description="time per prefill token")
    d1_context: float | None = Field(default=None, ge=0, description="time per context token")
    d2: float = Field(default=0.0, ge=0, description="fitted time per prefilling request")
    block_size: int | None = Field(default=None, ge=1, description="tokens per KV block")
    time_unit: str = "s"
    note: str = ""

    @property
    def kv_bytes_per_token(self) -> float:
        return 2 * self.num_layers * self.num_kv_heads * self.head_dim * self.kv_bytes

    @property
    def capacity(self) -> int:
        total = self.gpu_memory_gib * 2**30 * self.num_gpus * self.memory_utilization
        free = total - self.num_params_billion * 1e9 * self.bytes_per_param
        if free <= 0:
            raise JaxschedError(
                f"hardware profile {self.name!r}: the weights "
                f"({self.num_params_billion}B params) do not fit in GPU memory"
            )
        return int(math.floor(free / self.kv_bytes_per_token))


class SystemProfile(SplitCoefficients):
    """A measured system (``jaxsched calibrate`` writes one): a profile TOML with a
    ``[system]`` table giving the KV capacity in tokens directly, the fitted ``d0, d1, d2`` and
    the fit's error. Other tables of the file (``[engine]``) are ignored here."""

    name: str
    model: str
    device: str
    capacity: int = Field(gt=0, description="C: KV tokens")
    d0: float = Field(ge=0, description="fitted time per iteration")
    d1: float | None = Field(default=None, ge=0, description="time per token (both kinds)")
    d1_prefill: float | None = Field(default=None, ge=0, description="time per prefill token")
    d1_context: float | None = Field(default=None, ge=0, description="time per context token")
    d2: float = Field(default=0.0, ge=0, description="fitted time per prefilling request")
    block_size: int | None = Field(default=None, ge=1,
                                   description="tokens per KV block of the engine")
    time_unit: str = "s"
    fit_rms: float | None = Field(default=None, ge=0)
    fit_rel_error: float | None = Field(default=None, ge=0)
    samples: int | None = Field(default=None, ge=0)
    note: str = ""

    @property
    def gpu(self) -> str:
        return self.device

    @property
    def num_gpus(self) -> int:
        return 1


def format_validation(where: str, err: ValidationError, section: str = "") -> str:
    """One line for a pydantic error: ``where: section.key.path: message (got value)``."""
    first = err.errors()[0]
    loc = section + ".".join(str(p) for p in first["loc"] if p not in ("function-after",))
    loc = loc.rstrip(".")
    msg = first["msg"]
    if first["type"] == "extra_forbidden":
        msg = "unknown key"
    if msg.startswith("Value error, "):
        msg = msg[len("Value error, "):]
    if "input" in first and first["type"] not in ("extra_forbidden", "missing", "value_error"):
        msg += f" (got {short_repr(first['input'])})"
    return f"{where}: {loc}: {msg}" if loc else f"{where}: {msg}"


def short_repr(value: Any, limit: int = 60) -> str:
    """``repr(value)`` cut to ``limit`` characters: an error line never repeats a huge value."""
    text = repr(value)
    return text if len(text) <= limit else f"{text[:limit - 15]}... ({len(text)} chars)"


# What the simulator's arrays can hold: lengths, counts and memory sums are int32, times,
# rates and parameters float32 (smallest normal: XLA flushes subnormals to zero on CPU).
INT32_MAX = 2**31 - 1
FLOAT32_MAX = 3.4028234e38
FLOAT32_TINY = 1.1754944e-38


def check_numeric_ranges(data: dict, source: str,
                         sections: tuple[str, ...] = ("system", "workload", "policy")) -> None:
    """Refuse numbers the simulator cannot represent, naming the key: non-finite values,
    finite values beyond float32 (or below its smallest normal, but not 0), integers beyond
    int32 (seeds excepted)."""
    def walk(node, where):
        if isinstance(node, dict):
            for k, v in node.items():
                walk(v, f"{where}.{k}")
        elif isinstance(node, list):
            for i, v in enumerate(node):
                walk(v, f"{where}.{i}")
        elif isinstance(node, bool):
            return
        elif isinstance(node, int):
            if abs(node) > INT32_MAX and not where.endswith(".seed"):
                raise JaxschedError(f"{source}: {where}: {short_repr(node)} is beyond int32 "
                                    f"(|x| <= {INT32_MAX})")
        elif isinstance(node, float):
            if not math.isfinite(node):
                raise JaxschedError(f"{source}: {where}: must be finite (got {node})")
            if abs(node) > FLOAT32_MAX:
                raise JaxschedError(f"{source}: {where}: {node:g} is beyond float32 "
                                    f"(|x| <= {FLOAT32_MAX:.2e})")
            if node != 0 and abs(node) < FLOAT32_TINY:
                raise JaxschedError(f"{source}: {where}: {node:g} underflows float32 "
                                    f"(use 0 or |x| >= {FLOAT32_TINY:.2e})")

    for section in sections:
        if isinstance(data.get(section), dict):
            walk(data[section], section)


def check_memory_fits_int32(cfg: "Config") -> None:
    """Resident memory is summed in int32: refuse a system whose sums could wrap. The sum is
    at most ``max_batch`` requests of the longest length (prompt + output; a trace's requests
    are bounded by the capacity), and is compared with the capacity."""
    cap = float(cfg.resolved["capacity"])
    where = cfg.source
    if cap > INT32_MAX:
        raise JaxschedError(f"{where}: system.capacity: {cap:g} tokens is beyond int32 "
                            f"(memory is summed in int32; at most {INT32_MAX})")
    classes = cfg.workload.classes
    longest = max((c.prompt_len + c.output_len for c in classes), default=0)
    if not KINDS[cfg.workload.kind].class_lengths or not classes:
        longest = cap
    worst = cfg.system.max_batch * longest
    if worst > INT32_MAX:
        raise JaxschedError(
            f"{where}: system.max_batch: {cfg.system.max_batch} slots x {longest:g} tokens "
            f"(the longest request) = {worst:.3g} could wrap the int32 memory sum "
            f"(at most {INT32_MAX}); lower max_batch")


def read_text(path: Path) -> str:
    """A file's text; a missing, unreadable or non-UTF-8 file is a one-line
    :class:`JaxschedError`."""
    try:
        return Path(path).read_bytes().decode("utf-8")
    except UnicodeDecodeError as err:
        line = err.object[:err.start].count(b"\n") + 1
        raise JaxschedError(f"{path} line {line}: not UTF-8 text (byte 0x{err.object[err.start]:02x} "
                            f"at offset {err.start})") from None
    except IsADirectoryError:
        raise JaxschedError(f"{path}: is a folder, expected a file") from None
    except FileNotFoundError:
        raise JaxschedError(f"{path}: no such file") from None
    except OSError as err:
        raise JaxschedError(f"{path}: cannot read: {err.strerror}") from None


def _read_toml(path: Path) -> dict:
    text = read_text(path)
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        raise JaxschedError(f"{path}: invalid TOML: {err}") from None


def load_profile(ref: str, base_dir: Path) -> HardwareProfile | SystemProfile:
    """A hardware profile by path (relative to the config's folder) or shipped name: a
    ``[hardware]`` table (:class:`HardwareProfile`) or a measured ``[system]`` table
    (:class:`SystemProfile`)."""
    candidates = [base_dir / ref, Path(ref), CONFIG_DIR / "hardware" / f"{ref}.toml",
                  CONFIG_DIR / "hardware" / ref]
    path = next((p for p in candidates if p.is_file()), None)
    if path is None:
        raise JaxschedError(f"system.profile: no hardware profile {ref!r}")
    data = _read_toml(path)
    kind = HardwareProfile
    if "hardware" not in data and isinstance(data.get("system"), dict):
        kind, table = SystemProfile, data["system"]
    else:
        table = data.get("hardware", data)
    try:
        return kind(**table)
    except ValidationError as err:
        raise JaxschedError(format_validation(str(path), err)) from None
    except TypeError as err:
        raise JaxschedError(f"{path}: {err}") from None


def _parse_value(text: str) -> Any:
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def apply_overrides(data: dict, overrides: list[str] | tuple[str, ...]) -> dict:
    """Apply ``section.key=value`` overrides (TOML values; list indices allowed:
    ``workload.classes.0.rate=2``)."""
    for item in overrides:
        if "=" not in item:
            raise JaxschedError(f"--set {item!r}: expected section.key=value")
        dotted, raw = item.split("=", 1)
        parts = [p for p in dotted.strip().split(".") if p]
        if len(parts) < 2:
            raise JaxschedError(f"--set {item!r}: expected section.key=value")
        node: Any = data
        for i, part in enumerate(parts[:-1]):
            if isinstance(node, list):
                try:
                    node = node[int(part)]
                except (ValueError, IndexError):
                    raise JaxschedError(f"--set {dotted}: no item {part!r}") from None
                continue
            if part not in node or not isinstance(node[part], (dict, list)):
                node[part] = {}
            node = node[part]
        last = parts[-1]
        if isinstance(node, list):
            try:
                node[int(last)] = _parse_value(raw)
            except (ValueError, IndexError):
                raise JaxschedError(f"--set {dotted}: no item {last!r}") from None
        else:
            node[last] = _parse_value(raw)
    return data


def config_from_dict(data: dict, source: str = "<config>", base_dir: Path | None = None) -> Config:
    """Validate a config dict; resolve the hardware profile."""
    base_dir = base_dir or Path.cwd()
    for section in ("system", "workload"):
        if section not in data:
            raise JaxschedError(f"{source}: missing [{section}] table")
    check_numeric_ranges(data, source)
    try:
        cfg = Config(**data, source=source)
    except ValidationError as err:
        raise JaxschedError(format_validation(source, err)) from None
    except TypeError as err:  # a table given as a value (system = 3)
        raise JaxschedError(f"{source}: {short_repr(str(err), 200)}") from None
    sysc = cfg.system
    resolved: dict[str, Any] = {"hardware": None}
    if sysc.profile is not None:
        prof = load_profile(sysc.profile, base_dir)
        d1p, d1c = prof.coefficients
        resolved.update(capacity=prof.capacity, d0=prof.d0, d1_prefill=d1p, d1_context=d1c,
                        d2=prof.d2, hardware=f"{prof.model} on {prof.num_gpus}x {prof.gpu}")
        if prof.block_size is not None:
            resolved["block_size"] = prof.block_size
    if sysc.block_size is not None:
        resolved["block_size"] = sysc.block_size
    # the config's keys override the profile's; its d1 sets both coefficients
    d1p, d1c = split_d1(sysc.d1, sysc.d1_prefill, sysc.d1_context)
    given = {"capacity": sysc.capacity, "d0": sysc.d0, "d1_prefill": d1p, "d1_context": d1c,
             "d2": sysc.d2}
    for key, default in (("capacity", None), ("d0", 1.0), ("d1_prefill", 0.0),
                         ("d1_context", 0.0), ("d2", 0.0)):
        value = given[key]
        if value is not None:
            resolved[key] = value
        elif key not in resolved:
            if default is None:
                raise JaxschedError(f"{source}: system.capacity: set capacity or profile")
            resolved[key] = default
    if resolved["d0"] + min(resolved["d1_prefill"], resolved["d1_context"]) <= 0:
        raise JaxschedError(f"{source}: system.d0: d0 + d1 must be positive")
    cap = resolved["capacity"]
    bs = int(resolved.get("block_size", 1))
    usable = cap if bs == 1 else bs * math.floor(cap / bs)  # C_b, jaxsched.core.model
    blocks = "" if bs == 1 else f" ({usable:g} in whole blocks of {bs})"
    for i, c in enumerate(cfg.workload.classes):
        if c.prompt_len >= usable:
            raise JaxschedError(
                f"{source}: workload.classes.{i}.prompt_len: {c.prompt_len} does not fit in "
                f"system.capacity = {cap:g} tokens{blocks}"
            )
        if bs * math.ceil((c.prompt_len + c.output_len) / bs) > usable:
            raise JaxschedError(
                f"{source}: workload.classes.{i}.output_len: prompt + output = "
                f"{c.prompt_len + c.output_len} exceeds system.capacity = {cap:g} tokens"
                f"{blocks} (the request could never complete)"
            )
    coefficients = ("capacity", "d0", "d1_prefill", "d1_context", "d2")
    check_numeric_ranges({"system": {k: resolved[k] for k in coefficients if k in resolved}},
                         f"{source} (resolved from system.profile)" if sysc.profile else source)
    out = cfg.model_copy(update={"resolved": resolved})
    check_memory_fits_int32(out)
    return out


def load_config(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """Read, override and validate a TOML config. A bare name (``flow-control``) finds a
    config shipped with the package."""
    path = Path(path)
    if not path.is_file() and not path.suffix:
        shipped = CONFIG_DIR / f"{path.name}.toml"
        if shipped.is_file():
            path = shipped
    data = _read_toml(path)
    data = apply_overrides(data, list(overrides))
    source = "embedded default config" if path == DEFAULT_CONFIG else str(path)
    return config_from_dict(data, source=source, base_dir=path.parent)


# ------------------------------------------------------------------------------------------
# Snapshot and fingerprint of a config.


def _trace_file(cfg_workload: Mapping[str, Any], base_dir: Path | None) -> Path | None:
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


def workload_digest(workload: Mapping[str, Any], base_dir: Path | None = None) -> str:
    """sha256 of a canonical ``[workload]`` table (a trace by its file's content)."""
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
    return workload_digest(cfg.workload.model_dump(exclude_none=True), Path(cfg.source).parent)
