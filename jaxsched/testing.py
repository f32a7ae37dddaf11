"""Helpers for policy tests: run the JAX simulator and the reference on the same input and
compare them iteration by iteration.

Typical use in a policy's test module::

    from jaxsched import testing as jt

    SHAPE = jt.small_shape(max_batch=4, queue_size=6, horizon=40, num_classes=2)

    @hypothesis.given(wl=jt.workloads(n=24, num_classes=2), system=jt.systems())
    @hypothesis.settings(jt.HYPOTHESIS_SETTINGS, max_examples=30)
    def test_my_policy_matches_reference(wl, system):
        jax_run, ref = jt.run_both("my_policy", SHAPE, wl, system, options={"eviction": "newest"})
        jt.assert_same_trajectory(jax_run, ref)

Keep one :class:`~jaxsched.core.model.SimShape` and one workload length ``N`` per test module:
the jitted simulator is cached per (policy, shape) and compiled once per ``N``; everything
else (capacity, ``d0``, ``d1``, ``d2``, ``restart_on_evict``, policy parameters, the workload's
contents) is traced and reused across examples.

Exact agreement of times needs exactly representable values: the strategies here draw ``d0``,
``d1``, ``d2`` and arrival times from dyadic grids (multiples of powers of two), so float32
(JAX) and float64 (reference) arithmetic give the same numbers.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import math
import os
from typing import Any, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jaxsched.running import chunked
from jaxsched.core import rollout, sim
from jaxsched.core.metrics import METRIC_KEYS
from jaxsched.core.model import SimShape, SystemParams, Workload, system_params
from jaxsched.policies import get_policy, list_policies, make_params, policy_options
from jaxsched.policies.base import EVICTION_ORDERS, Policy
from jaxsched.reference.simulator import (
    STEP_FIELDS,
    ReferenceResult,
    reference_for,
    simulate_reference,
)

__all__ = [
    "HYPOTHESIS_SETTINGS",
    "LONG_PROFILE",
    "property_settings",
    "COUNT_METRICS",
    "MEAN_METRICS",
    "PERCENTILE_METRICS",
    "JaxRun",
    "small_shape",
    "make_workload",
    "stack",
    "as_system",
    "plain_params",
    "variant_id",
    "policy_variants",
    "fast_compile",
    "run_jax",
    "run_reference",
    "run_both",
    "trace_records",
    "assert_same_trajectory",
    "assert_same_metrics",
    "jax_states",
    "workloads",
    "systems",
    "BLOCK_SIZES",
    "small_tuning_config",
    "assert_same_rollout",
]

COUNT_METRICS = ("evictions", "recomputed_tokens", "overflow_steps", "queue_final",
                 "peak_memory")
"""Metrics compared exactly."""

MEAN_METRICS = ("completed_per_time", "tokens_per_time", "latency_mean", "ttft_mean",
                "mean_memory", "utilization")
"""Metrics compared to a relative tolerance (float32 sums against float64 ones)."""

PERCENTILE_METRICS = ("latency_p50", "latency_p95", "latency_p99", "ttft_p95")
"""Metrics the JAX simulator reads from a log histogram (within 1.1% of the exact value)."""

_INT_FIELDS = tuple(f for f in STEP_FIELDS if f not in ("time", "duration"))


def _hypothesis_settings():
    try:
        from hypothesis import HealthCheck, Phase, settings
    except ImportError:  # hypothesis is a test dependency only
        return None
    return settings(
        deadline=None,
        derandomize=True,  # the same examples on every run: reproducible CI
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
        max_examples=25,
        # no "explain" phase: its line tracing makes JAX calls very slow on a failure
        phases=(Phase.explicit, Phase.reuse, Phase.generate, Phase.shrink),
    )


HYPOTHESIS_SETTINGS = _hypothesis_settings()
"""Base ``hypothesis.settings`` for simulator tests: no deadline, derandomized, no example
database, no explain phase (pass it as the parent of ``settings(...)`` and set
``max_examples``; add ``phases=...`` without ``Phase.shrink`` for faster failures)."""

LONG_PROFILE = "long"
"""The hypothesis profile ``tests/conftest.py`` registers for long runs
(``HYPOTHESIS_PROFILE=long``): :data:`HYPOTHESIS_SETTINGS`, random instead of derandomized,
``HYPOTHESIS_MAX_EXAMPLES`` examples (default 2000) per test."""


def property_settings(max_examples: int):
    """The settings of a property test: :data:`HYPOTHESIS_SETTINGS` with ``max_examples``
    (the same few examples on every run), or the :data:`LONG_PROFILE` profile when the
    environment selects it (``HYPOTHESIS_PROFILE=long``)."""
    import hypothesis

    if os.environ.get("HYPOTHESIS_PROFILE") == LONG_PROFILE:
        return hypothesis.settings.get_profile(LONG_PROFILE)
    return hypothesis.settings(HYPOTHESIS_SETTINGS, max_examples=max_examples)


def small_shape(max_batch: int = 4, queue_size: int = 8, horizon: int = 32,
               num_classes: int = 2, warmup: int = 0) -> SimShape:
    """A small :class:`SimShape` with ``record_trace=True`` (per-iteration outputs on)."""
    return SimShape(max_batch=max_batch, queue_size=queue_size, horizon=horizon,
                    num_classes=num_classes, warmup=warmup, record_trace=True)


# ------------------------------------------------------------------------------ building


def make_workload(requests: Sequence[Sequence[float]], n: int | None = None) -> Workload:
    """A single-replica :class:`Workload` from ``(arrival, prompt, output)`` or
    ``(arrival, prompt, output, cls)`` tuples, sorted by arrival, padded to ``n`` entries
    (default: exactly the requests) with never-arriving padding (``arrival = +inf``,
    ``prompt = output = 1``, ``cls = 0``, ``valid = False``)."""
    requests = [tuple(r) for r in requests]
    n = len(requests) if n is None else int(n)
    if n < max(len(requests), 1):
        raise ValueError(f"n={n} is smaller than the {len(requests)} requests (or 0)")
    arrival = np.full(n, np.inf, np.float32)
    prompt = np.ones(n, np.int32)
    output = np.ones(n, np.int32)
    cls = np.zeros(n, np.int32)
    valid = np.zeros(n, bool)
    for i, r in enumerate(requests):
        if len(r) not in (3, 4):
            raise ValueError(f"request {i}: expected (arrival, prompt, output[, cls]), got {r}")
        arrival[i], prompt[i], output[i] = r[0], r[1], r[2]
        cls[i] = r[3] if len(r) == 4 else 0
        valid[i] = True
        if i and arrival[i] < arrival[i - 1]:
            raise ValueError(f"request {i}: requests must be sorted by arrival")
    return Workload(arrival=jnp.asarray(arrival), prompt=jnp.asarray(prompt),
                    output=jnp.asarray(output), cls=jnp.asarray(cls), valid=jnp.asarray(valid))


def stack(items: Sequence[Any]):
    """Stack pytrees (workloads, ``SimParams``) along a new leading axis."""
    return jax.tree.map(lambda *xs: jnp.stack(xs), *items)


def as_system(system: Any) -> SystemParams:
    """A :class:`SystemParams` from one, from a mapping with keys capacity, d0, d1 (or
    d1_prefill, d1_context), d2, block_size, restart_on_evict (missing: ``d0=1, d1=0, d2=0,
    block_size=1, restart_on_evict=False``), or a number (the capacity, slotted)."""
    if isinstance(system, SystemParams):
        return system
    if isinstance(system, Mapping):
        return system_params(**system)
    return system_params(system)


def _policy(policy: str | Policy, options: Mapping[str, Any] | None) -> Policy:
    if isinstance(policy, Policy):
        if options:
            raise ValueError("options go with a policy name, not a built Policy")
        return policy
    return get_policy(policy, **dict(options or {}))


def plain_params(policy: str | Policy, params: Mapping[str, Any]) -> dict:
    """The JAX parameter dict (:func:`jaxsched.policies.make_params`) as plain Python for a
    reference twin: scalars as floats (ints for integer parameters), per-class arrays as
    lists. Values are the float32 numbers the JAX policy sees."""
    pol = _policy(policy, None) if isinstance(policy, str) else policy
    out = {}
    for name, value in params.items():
        arr = np.asarray(value)
        spec = pol.params.get(name)
        integer = spec is not None and spec.integer
        conv = (lambda v: int(v)) if integer else (lambda v: float(v))
        if arr.ndim == 0:
            out[name] = conv(arr)
        else:
            out[name] = [conv(v) for v in arr.reshape(-1)] if arr.ndim == 1 else arr.tolist()
    return out


def policy_variants(evictions: bool = True) -> list[tuple[str, dict]]:
    """``(name, options)`` for every registered policy: its default options (``{}``) and, when
    the factory has an ``eviction`` option and ``evictions`` is set, one variant per other
    eviction order (``{"eviction": order}``). Options equal to a default are left out, so
    the variants are the same ``Policy`` objects (and compiled simulators) as
    ``get_policy(name)`` builds in other tests."""
    out = []
    for name in list_policies():
        out.append((name, {}))
        default = policy_options(name).get("eviction")
        if evictions and default is not None:
            out.extend((name, {"eviction": order}) for order in EVICTION_ORDERS
                       if order != default)
    return out


def variant_id(variant: tuple[str, dict]) -> str:
    """A pytest id for a :func:`policy_variants` entry: the name, then each option's value."""
    name, options = variant
    return name + "".join(f"-{v}" for v in options.values())


@contextlib.contextmanager
def fast_compile():
    """Context manager: compile with most XLA optimizations off
    (``jax_disable_most_optimizations``), restoring the setting afterwards. For tests whose
    time is dominated by compiling many small simulators; results are unchanged."""
    old = jax.config.read("jax_disable_most_optimizations")
    jax.config.update("jax_disable_most_optimizations", True)
    try:
        yield
    finally:
        jax.config.update("jax_disable_most_optimizations", old)


# ------------------------------------------------------------------------------- running


@dataclasses.dataclass
class JaxRun:
    """The JAX simulator's answer for one workload, as plain Python."""

    trajectory: list[dict]  # per iteration: StepOutput fields -> Python numbers
    metrics: dict[str, float]
    result: sim.RolloutResult  # the raw result (leading axis 1: one workload)


def trace_records(result: sim.RolloutResult, index: int = 0) -> list[dict]:
    """Per-iteration records (dicts of Python numbers) of workload ``index`` of a result with
    a trace of shape (W, H)."""
    if result.trace is None:
        raise ValueError("the result has no trace: simulate with SimShape(record_trace=True)")
    cols = {f: np.asarray(getattr(result.trace, f))[index] for f in STEP_FIELDS}
    horizon = cols["time"].shape[0]
    records = []
    for k in range(horizon):
        rec = {}
        for f in STEP_FIELDS:
            v = cols[f][k]
            rec[f] = bool(v) if f == "overflow" else float(v) if f in ("time", "duration") \
                else int(v)
        records.append(rec)
    return records


def run_jax(policy: str | Policy, shape: SimShape, workload: Workload, system: Any,
            params: Mapping[str, Any] | None = None, options: Mapping[str, Any] | None = None,
            key: jax.Array | None = None) -> JaxRun:
    """Run one workload with a trace on the path ``jaxsched simulate`` runs
    (:func:`jaxsched.running.chunked.run_chunked`: the phases of :mod:`jaxsched.core.rollout`, the horizon
    in chunks of at most :data:`~jaxsched.running.chunked.DEFAULT_CHUNK` iterations, one device).
    ``params``: user values for :func:`make_params` or an already built parameter dict
    (defaults for the rest)."""
    pol = _policy(policy, options)
    shape = dataclasses.replace(shape, record_trace=True)
    pp = make_params(pol, _as_values(params), num_classes=shape.num_classes)
    sp = sim.SimParams(system=as_system(system), policy=pp)
    key = jax.random.PRNGKey(0) if key is None else key
    keys, workloads = key[None], stack([workload])
    n = int(workloads.arrival.shape[-1])
    result, _ = chunked.run_chunked(pol, shape, sp, 1, lambda lo, hi: (keys, workloads), n,
                                    devices=1)
    metrics = {k: float(np.asarray(v)[0]) for k, v in result.metrics.items()}
    return JaxRun(trajectory=trace_records(result, 0), metrics=metrics, result=result)


def _as_values(params: Mapping[str, Any] | None) -> dict:
    return {k: np.asarray(v) for k, v in dict(params or {}).items()}


def run_reference(policy: str, shape: SimShape, workload: Workload, system: Any,
                  params: Mapping[str, Any] | None = None,
                  options: Mapping[str, Any] | None = None) -> ReferenceResult:
    """Run the reference simulator with the twin of policy ``policy`` (a registered name),
    the same defaults as :func:`run_jax` for the parameters left unset."""
    pol = _policy(policy, options)
    pp = make_params(pol, _as_values(params), num_classes=shape.num_classes)
    twin = reference_for(policy, plain_params(pol, pp), options)
    return simulate_reference(workload, shape, as_system(system), twin)


def run_both(policy: str, shape: SimShape, workload: Workload, system: Any,
             params: Mapping[str, Any] | None = None,
             options: Mapping[str, Any] | None = None,
             key: jax.Array | None = None) -> tuple[JaxRun, ReferenceResult]:
    """:func:`run_jax` and :func:`run_reference` on the same input."""
    return (run_jax(policy, shape, workload, system, params, options, key),
            run_reference(policy, shape, workload, system, params, options))


@functools.lru_cache(maxsize=32)
def _state_scanner(policy: Policy, shape: SimShape):
    def scan_states(key, workload, params):
        carry = rollout.init(policy, shape, workload, params)

        def body(carry, _):
            carry, out = sim.step(policy, shape, key, workload, params, carry)
            return carry, (carry[0], out)

        _, (states, trace) = jax.lax.scan(body, carry, None, length=shape.horizon)
        return states, trace

    return jax.jit(scan_states)


def jax_states(policy: str | Policy, shape: SimShape, workload: Workload, system: Any,
               params: Mapping[str, Any] | None = None,
               options: Mapping[str, Any] | None = None, key: jax.Array | None = None):
    """``(states, trace)``: the :class:`~jaxsched.core.model.SimState` after every iteration and the
    :class:`~jaxsched.core.sim.StepOutput` of every iteration (leading axis H), for one workload,
    by scanning :func:`jaxsched.core.sim.step` (for tests that need per-request state, which
    ``RolloutResult`` does not carry)."""
    pol = _policy(policy, options)
    shape = dataclasses.replace(shape, record_trace=True)
    pp = make_params(pol, _as_values(params), num_classes=shape.num_classes)
    sp = sim.SimParams(system=as_system(system), policy=pp)
    key = jax.random.PRNGKey(0) if key is None else key
    return _state_scanner(pol, shape)(key, workload, sp)


# ----------------------------------------------------------------------------- comparing


def _records(run: Any) -> list[dict]:
    traj = run.trajectory if hasattr(run, "trajectory") else run
    return [r if isinstance(r, dict) else r.as_dict() for r in traj]


def _close(a: float, b: float, rtol: float, atol: float = 0.0) -> bool:
    if math.isnan(a) or math.isnan(b):
        return math.isnan(a) and math.isnan(b)
    if math.isinf(a) or math.isinf(b):
        return a == b
    return abs(a - b) <= atol + rtol * max(abs(a), abs(b))


def _show(rec: dict) -> str:
    return ", ".join(f"{k}={rec[k]}" for k in STEP_FIELDS)


def assert_same_metrics(jax_metrics: Mapping[str, float], ref_metrics: Mapping[str, float], *,
                        mean_rtol: float = 1e-5, pct_rtol: float = 0.012,
                        label: str = "") -> None:
    """Counts exactly, means within ``mean_rtol`` (relative), percentiles within ``pct_rtol``;
    NaN equals NaN. Fails naming the first differing metric."""
    prefix = f"{label}: " if label else ""
    for key in METRIC_KEYS:
        if key not in jax_metrics or key not in ref_metrics:
            raise AssertionError(f"{prefix}metric {key!r} missing "
                                 f"(jax: {key in jax_metrics}, reference: {key in ref_metrics})")
        a, b = float(jax_metrics[key]), float(ref_metrics[key])
        if key in COUNT_METRICS:
            ok = _close(a, b, 0.0)
        elif key in PERCENTILE_METRICS:
            ok = _close(a, b, pct_rtol)
        else:
            ok = _close(a, b, mean_rtol, 1e-9)
        if not ok:
            raise AssertionError(f"{prefix}metric {key}: jax={a!r} reference={b!r}")


def assert_same_trajectory(jax_run: Any, ref: Any, *, time_rtol: float = 1e-6,
                           check_metrics: bool = True, mean_rtol: float = 1e-5,
                           pct_rtol: float = 0.012, label: str = "") -> None:
    """Compare two runs iteration by iteration: every ``StepOutput`` field, integers and flags
    exactly, ``time`` and ``duration`` within ``time_rtol`` (relative, plus 1e-9 absolute);
    then the metrics (:func:`assert_same_metrics`). ``jax_run`` and ``ref`` may be a
    :class:`JaxRun`, a ``ReferenceResult`` or a list of records (dicts or ``StepRecord``s;
    then pass ``check_metrics=False`` or objects with ``.metrics``). The failure message names
    the first differing iteration and field and shows both records."""
    prefix = f"{label}: " if label else ""
    a_recs, b_recs = _records(jax_run), _records(ref)
    if len(a_recs) != len(b_recs):
        raise AssertionError(f"{prefix}trajectories differ in length: "
                             f"{len(a_recs)} vs {len(b_recs)}")
    for k, (a, b) in enumerate(zip(a_recs, b_recs)):
        for f in STEP_FIELDS:
            x, y = a[f], b[f]
            if f in _INT_FIELDS:
                ok = int(x) == int(y)
            else:
                ok = _close(float(x), float(y), time_rtol, 1e-9)
            if not ok:
                raise AssertionError(
                    f"{prefix}iteration {k}, field {f}: first={x!r} second={y!r}\n"
                    f"  first:  {_show(a)}\n  second: {_show(b)}"
                )
    if check_metrics:
        assert_same_metrics(jax_run.metrics, ref.metrics, mean_rtol=mean_rtol,
                            pct_rtol=pct_rtol, label=label)


# ---------------------------------------------------------------------------- strategies


def workloads(n: int = 24, num_classes: int = 2, max_prompt: int = 6, max_output: int = 6,
              max_arrival: float = 8.0, grid: float = 0.25, min_requests: int = 1):
    """Hypothesis strategy: a single-replica :class:`Workload` of fixed length ``n`` (so the
    jitted simulator compiles once) holding between ``min_requests`` and ``n`` valid requests
    with prompt in [1, max_prompt], output in [1, max_output], class in [0, num_classes) and
    arrival times on a grid of ``grid`` (a power of two) in [0, max_arrival], sorted; the rest
    is padding."""
    from hypothesis import strategies as st

    if grid <= 0 or math.log2(grid) != int(math.log2(grid)):
        raise ValueError(f"grid must be a power of two for exact times, got {grid}")
    steps = int(max_arrival / grid)

    @st.composite
    def build(draw):
        m = draw(st.integers(min_requests, n))
        ticks = sorted(draw(st.lists(st.integers(0, steps), min_size=m, max_size=m)))
        prompt = draw(st.lists(st.integers(1, max_prompt), min_size=m, max_size=m))
        output = draw(st.lists(st.integers(1, max_output), min_size=m, max_size=m))
        cls = draw(st.lists(st.integers(0, num_classes - 1), min_size=m, max_size=m))
        return make_workload(
            [(t * grid, p, o, c) for t, p, o, c in zip(ticks, prompt, output, cls)], n=n)

    return build()


BLOCK_SIZES = (1, 2, 4)
"""The block sizes :func:`systems` draws from (1: the token model)."""


def systems(capacity: tuple[int, int] = (6, 40), slotted: bool | None = None,
            restart_on_evict: bool | None = None, block_sizes: Sequence[int] = BLOCK_SIZES):
    """Hypothesis strategy: a dict (capacity, d0, d1_prefill, d1_context, d2, block_size,
    restart_on_evict) for :func:`as_system`. ``slotted=True`` gives ``d0=1``, both ``d1 = 0``,
    ``d2=0``; ``False`` dyadic ``d0`` in {1/2, 1, 2}, ``d1_prefill`` and ``d1_context`` each in
    {1/16, 1/8, 1/4} (equal or not) and ``d2`` (time per prefilling request) in
    {0, 1/8, 1/2}; ``None`` either. Integer capacity in the given range; ``block_size`` from
    ``block_sizes``."""
    from hypothesis import strategies as st

    restart = st.booleans() if restart_on_evict is None else st.just(bool(restart_on_evict))
    slot = st.just((1.0, 0.0, 0.0, 0.0))
    coef = st.sampled_from([0.0625, 0.125, 0.25])
    timed = st.tuples(st.sampled_from([0.5, 1.0, 2.0]), coef, coef,
                      st.sampled_from([0.0, 0.125, 0.5]))
    timing = {True: slot, False: timed, None: st.one_of(slot, timed)}[slotted]
    return st.builds(
        lambda c, t, r, bs: {"capacity": float(c), "d0": t[0], "d1_prefill": t[1],
                             "d1_context": t[2], "d2": t[3], "block_size": bs,
                             "restart_on_evict": r},
        st.integers(*capacity), timing, restart, st.sampled_from(tuple(block_sizes)))


def small_tuning_config(tune: str = "", horizon: int = 120, workloads: int = 3,
                        policy: str = "flow_control") -> str:
    """TOML of the tuning tests' small setting: C = 600, 24 slots, two Poisson classes
    (prompt 4, outputs 8 and 16, 0.6 per unit time each), ``policy`` and a ``[tune]`` table
    holding ``tune`` (lines appended to it)."""
    return f"""
[system]
capacity = 600
max_batch = 24
queue_size = 8

[workload]
kind = "poisson"
horizon = {horizon}
warmup = 20
num_workloads = {workloads}
seed = 0

[[workload.classes]]
prompt_len = 4
output_len = 8
rate = 0.6

[[workload.classes]]
prompt_len = 4
output_len = 16
rate = 0.6

[policy]
name = "{policy}"

[tune]
{tune}
"""


def assert_same_rollout(result: Any, ref: Any) -> None:
    """A chunked, sharded or streamed :class:`~jaxsched.core.sim.RolloutResult` against
    :func:`jaxsched.core.sim.simulate`'s: the trajectory (when recorded), final counters and latency
    histogram bit for bit; the metrics to one ulp (``rtol = 1e-6``: float arithmetic on the
    same accumulators, which XLA may round differently in two programs)."""
    if ref.trace is not None:
        for f in dataclasses.fields(sim.StepOutput):
            np.testing.assert_array_equal(getattr(result.trace, f.name),
                                          np.asarray(getattr(ref.trace, f.name)),
                                          err_msg=f.name)
    for f in ("final_time", "final_arrived", "final_completed", "final_waiting",
              "final_resident", "latency_hist"):
        np.testing.assert_array_equal(getattr(result, f), np.asarray(getattr(ref, f)),
                                      err_msg=f)
    for k, v in ref.metrics.items():
        np.testing.assert_allclose(result.metrics[k], np.asarray(v), rtol=1e-6, equal_nan=True,
                                   err_msg=k)
