"""Bounded-memory runs: horizons in chunks, batches streamed, the batch sharded over devices.

One run of ``W`` workloads (x ``P`` parameter sets) x ``H`` iterations is driven from Python as

* ``init``: the initial carry ``(SimState, policy state, Accumulators)`` of every rollout;
* ``advance`` (jitted, the carry donated): ``lax.scan`` of :func:`jaxsched.core.sim.step` over
  ``chunk`` iterations, called ``ceil(H / chunk)`` times; per-iteration traces, when
  recorded, come back to the host after every chunk;
* ``collect``: the accumulators and final counters, gathered to the host; the metrics are
  then computed once for the whole batch (``finalize``, so they do not depend on the device
  count).

These are the four phases of :mod:`jaxsched.core.rollout` (``init``, ``advance``, ``collect``,
``finalize``), batched; :func:`jaxsched.core.rollout.simulate` composes the same four in one call.
:func:`jaxsched.core.sim.step` draws iteration ``k``'s keys from ``fold_in(key, k)``, so a chunked
run is exactly the uninterrupted scan of :func:`jaxsched.core.sim.simulate` (tested bit for bit).
All three functions are ``jit(shard_map(vmap(...)))`` over a :mod:`jaxsched.running.sharding` mesh with
explicit in/out shardings.

Memory. The device holds, per rollout (per workload and parameter set): the carry (slots
``O(B)``, per-request state ``O(N)``, two latency histograms of ``NUM_BINS`` int32), the
workload's request arrays ``O(N)``, and the trace of one chunk when recorded. When the whole
batch does not fit the budget (``max_memory`` bytes per device, or :func:`auto_budget`), it is
streamed through in fixed-size batches (the last one padded with dummy workloads, so one
compilation serves all). With full request arrays ``N``, the number of requests per workload,
is sized from ``horizon x arrival rate``, so they (with the per-request state,
:data:`~jaxsched.core.model.BYTES_PER_REQUEST` per request) grow with the horizon. Streamed
workloads (``stream``, :mod:`jaxsched.running.stream`) replace them by a sliding window of
``R`` requests generated on the device block by block and carried between chunks (indices
relative to its base; slid after every chunk): then nothing on the device depends
on the horizon, and the result is exactly the simulator's on the materialized stream.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import os
import re
import resource
import sys
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as PS

from jaxsched.core import rollout as R
from jaxsched.running import sharding as S
from jaxsched.running import stream as ST
from jaxsched.errors import JaxschedError
from jaxsched.core.model import WORKLOAD_BYTES_PER_REQUEST, SimShape, Workload
from jaxsched.policies.base import Policy
from jaxsched.core.sim import RolloutResult, SimParams, StepOutput

__all__ = [
    "DEFAULT_CHUNK",
    "RunPlan",
    "RunStats",
    "parse_bytes",
    "format_bytes",
    "auto_budget",
    "choose_chunk",
    "rollout_bytes",
    "plan_run",
    "chunk_functions",
    "run_chunked",
]

DEFAULT_CHUNK = 1000
"""Iterations per ``advance`` call when none is given (a divisor of H near it if one exists)."""

_STEP_TEMP_FACTOR = 2  # the scan's carry in and out (measured: see rollout_bytes)

_UNITS = {"": 1, "b": 1, "k": 10**3, "kb": 10**3, "m": 10**6, "mb": 10**6, "g": 10**9,
          "gb": 10**9, "t": 10**12, "tb": 10**12, "kib": 2**10, "mib": 2**20, "gib": 2**30,
          "tib": 2**40}


def parse_bytes(text: str, what: str = "--max-memory") -> int:
    """``"2GiB"``, ``"512MB"``, ``"1.5e9"`` -> bytes (KiB/MiB/GiB binary, KB/MB/GB decimal)."""
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+(?:[eE][+-]?[0-9]+)?)\s*([a-zA-Z]*)\s*", str(text))
    unit = m.group(2).lower() if m else None
    if m is None or unit not in _UNITS:
        raise JaxschedError(f"{what} {text!r}: expected a size such as 2GiB, 512MB or 1e9 (bytes)")
    value = float(m.group(1)) * _UNITS[unit]
    if not value >= 1:
        raise JaxschedError(f"{what} {text!r}: must be at least 1 byte")
    return int(value)


def format_bytes(n: float | None) -> str:
    """``1.5 GiB`` style."""
    if n is None:
        return "n/a"
    for unit, size in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if abs(n) >= size:
            return f"{n / size:.2f} {unit}"
    return f"{int(n)} B"


def _host_available_bytes() -> int:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return 4 * 2**30


def auto_budget(devices) -> tuple[int, str]:
    """``(bytes per device, how it was chosen)`` for a run on ``devices``.

    Accelerators: 80% of the smallest free memory (``bytes_limit - bytes_in_use`` of
    :meth:`jax.Device.memory_stats`). CPU (no memory stats): half of the host's available
    memory (``MemAvailable``), divided among the process's devices of the run (forced host
    devices share the host's memory).
    """
    local = [d for d in devices if d.process_index == jax.process_index()]
    stats = [d.memory_stats() for d in local]
    if all(s and "bytes_limit" in s for s in stats):
        free = min(s["bytes_limit"] - s.get("bytes_in_use", 0) for s in stats)
        return int(0.8 * free), "80% of the device's free memory (memory_stats)"
    return (int(0.5 * _host_available_bytes() / max(len(local), 1)),
            "half the host's available memory / devices (CPU: no memory_stats)")


def choose_chunk(horizon: int, chunk: int | None = None) -> int:
    """Iterations per call: ``chunk`` (clipped to H), else ``DEFAULT_CHUNK`` or the largest
    divisor of H in ``[DEFAULT_CHUNK / 2, DEFAULT_CHUNK]`` (so no second, shorter chunk has
    to be compiled)."""
    if chunk is not None:
        if chunk < 1:
            raise JaxschedError(f"--chunk {chunk}: must be >= 1")
        return min(int(chunk), horizon)
    if horizon <= DEFAULT_CHUNK:
        return horizon
    for d in range(DEFAULT_CHUNK, DEFAULT_CHUNK // 2 - 1, -1):
        if horizon % d == 0:
            return d
    return DEFAULT_CHUNK


def _nbytes(tree) -> int:
    return int(sum(math.prod(x.shape) * np.dtype(x.dtype).itemsize
                   for x in jax.tree.leaves(tree)))


def rollout_bytes(policy: Policy, shape: SimShape, num_requests: int, params: SimParams,
                  chunk: int, batched_params: bool = False,
                  stream: ST.StreamSpec | None = None) -> int:
    """Estimated device bytes of one rollout (one workload, one parameter set).

    ``2 x carry + workload + one chunk of trace``: the carry (exact, from its shapes) twice for
    the scan's input and output, the request arrays
    (:data:`~jaxsched.core.model.WORKLOAD_BYTES_PER_REQUEST` per request) and, when recorded,
    ``chunk`` :class:`StepOutput` records. The factor 2 bounds XLA's own buffer assignment of
    the chunk call (``compiled.memory_analysis()``; checked in ``tests/test_chunked.py``).
    With a ``stream`` the requests are its window's ``R`` (``num_requests`` is ignored) and
    the window's arrays are part of the carry: nothing depends on the horizon.
    """
    one = jax.tree.map(lambda x: jax.ShapeDtypeStruct(np.shape(x)[1:] if batched_params
                                                      else np.shape(x), jnp.asarray(x).dtype),
                       params)
    if stream is not None:
        num_requests = stream.window
    wl = Workload(*(jax.ShapeDtypeStruct((num_requests,), dt) for dt in
                    (jnp.float32, jnp.int32, jnp.int32, jnp.int32, jnp.bool_)))
    carry = jax.eval_shape(functools.partial(R.init, policy, shape), wl, one)
    trace = 0
    if shape.record_trace:
        trace = chunk * 4 * len(dataclasses.fields(StepOutput))  # () int32/float32 fields
    return (_STEP_TEMP_FACTOR * (_nbytes(carry) + (0 if stream is None else _nbytes(wl) + 64))
            + (0 if stream is not None else num_requests * WORKLOAD_BYTES_PER_REQUEST)
            + 8 + trace)


@dataclasses.dataclass(frozen=True)
class RunPlan:
    """How a run is laid out: mesh, chunks, streamed batches."""

    num_devices: int
    mesh: tuple[int, int]  # (dp, dw): devices along the param-set and workload axes
    chunk: int  # iterations per advance call
    num_chunks: int  # ceil(H / chunk)
    batch: int  # workloads per streamed call (padded to a multiple of dw)
    num_batches: int
    num_workloads: int  # W (before padding)
    num_params: int | None  # P (before padding), None when params are shared
    padded_params: int | None  # P rounded up to a multiple of dp
    bytes_per_rollout: int  # estimate, see rollout_bytes
    budget: int  # bytes per device
    budget_source: str
    window: int | None = None  # streamed: requests held per rollout (jaxsched.running.stream), else None


@dataclasses.dataclass
class RunStats:
    plan: RunPlan
    compile_seconds: float
    sim_seconds: float  # init + every advance + collect + finalize + transfers to the host
    peak_bytes: int | None  # per device
    peak_source: str
    host_peak_rss: int  # bytes, this process


def plan_run(shape: SimShape, num_workloads: int, bytes_per_rollout: int, devices: list,
             num_params: int | None = None, chunk: int | None = None,
             max_memory: int | None = None) -> RunPlan:
    """Mesh split, chunk length and streamed batch size for the budget."""
    n = len(devices)
    dp, dw = S.mesh_split(n, num_params, num_workloads)
    padded_p = None if num_params is None else S.round_up(num_params, dp)
    per_device_p = 1 if num_params is None else padded_p // dp
    c = choose_chunk(shape.horizon, chunk)
    if max_memory is None:
        budget, source = auto_budget(devices)
        budget = S.min_over_processes(budget)  # multi-host: every process plans the same run
    else:
        budget, source = int(max_memory), "--max-memory"
    per_device = budget // (bytes_per_rollout * per_device_p)
    if per_device < 1:
        raise JaxschedError(
            f"one workload needs about {format_bytes(bytes_per_rollout * per_device_p)} per device "
            f"but the budget is {format_bytes(budget)} ({source}); raise --max-memory, use more "
            "devices, or shorten the horizon or the chunk")
    padded_w = S.round_up(num_workloads, dw)
    if padded_w <= per_device * dw:
        batch, num_batches = padded_w, 1
    else:
        batch = per_device * dw
        num_batches = -(-num_workloads // batch)
    return RunPlan(num_devices=n, mesh=(dp, dw), chunk=c, num_chunks=-(-shape.horizon // c),
                   batch=batch, num_batches=num_batches, num_workloads=num_workloads,
                   num_params=num_params, padded_params=padded_p,
                   bytes_per_rollout=bytes_per_rollout, budget=budget, budget_source=source)


@functools.lru_cache(maxsize=32)
def chunk_functions(policy: Policy, shape: SimShape, mesh, batched_params: bool,
                    lengths: tuple[int, ...], key_impl: str | None, donate: bool = True,
                    stream: ST.StreamSpec | None = None):
    """``(init, {length: advance}, collect)`` jitted over ``mesh`` (cached).

    * ``init(keys (W, ...), workloads (W, N), params) -> carry`` (leading (W,) or (P, W));
    * ``advance(keys, workloads, params, carry) -> (carry, trace (.., W, length) or None)``,
      the carry donated;
    * ``collect(carry) -> rollout.Final``: accumulators and final counters (metrics are
      computed from them on the host side, see :func:`_finalizer`).

    With a ``stream`` (:mod:`jaxsched.running.stream`) the workloads are replaced by the streams'
    keys ``skeys (W, ...)`` and the shared :class:`~jaxsched.running.stream.StreamParams` ``sp``
    comes last: ``init(keys, skeys, params, sp)``, ``advance(keys, skeys, params, sp,
    carry)``, ``collect(carry, sp)``; the carry is ``(sim carry, Window)``, and ``advance``
    runs the chunk on the window, counting inexact iterations
    (:func:`~jaxsched.running.stream.window_short`), then slides it (:func:`~jaxsched.running.stream.slide`).

    ``keys`` are raw key data (``key_impl`` names the typed key's implementation, or None for
    legacy uint32 keys). Every function is ``jit(shard_map(vmap ...))`` with in/out shardings:
    workloads and keys split over the mesh's workload axis, param sets (when batched) over
    its param axis, the carry over both.
    """
    wa, pa = S.WORKLOAD_AXIS, S.PARAM_AXIS
    lead = PS(pa, wa) if batched_params else PS(wa)
    p_spec = PS(pa) if batched_params else PS()
    w_spec = PS(wa)
    named = lambda s: NamedSharding(mesh, s)  # noqa: E731
    extra_specs = () if stream is None else (PS(),)  # the stream's params: replicated

    def batch(fn, in_axes_w, in_axes_p):
        f = jax.vmap(fn, in_axes=in_axes_w)
        return jax.vmap(f, in_axes=in_axes_p) if batched_params else f

    def wrap(keys):
        return keys if key_impl is None else jax.random.wrap_key_data(keys, impl=key_impl)

    def init_local(keys, workloads, params, *extra):
        del keys
        if stream is None:
            return batch(functools.partial(R.init, policy, shape), (0, None), (None, 0))(
                workloads, params)
        return batch(functools.partial(R.init_stream, policy, shape, stream),
                     (0, None, None), (None, None, 0))(wrap(workloads), extra[0], params)

    def advance_one(length, key, workload, params, carry):
        return R.advance(policy, shape, key, workload, params, carry, length)

    def advance_stream(length, key, skey, sp, params, carry):
        return R.advance_stream(policy, shape, stream, key, skey, sp, params, carry, length)

    def make_advance(length):
        if stream is None:
            def local(keys, workloads, params, carry):
                return batch(functools.partial(advance_one, length), (0, 0, None, 0),
                             (None, None, 0, 0))(wrap(keys), workloads, params, carry)
        else:
            def local(keys, skeys, params, sp, carry):
                return batch(functools.partial(advance_stream, length),
                             (0, 0, None, None, 0), (None, None, None, 0, 0))(
                    wrap(keys), wrap(skeys), sp, params, carry)

        in_specs = (w_spec, w_spec, p_spec) + extra_specs + (lead,)
        sm = jax.shard_map(local, mesh=mesh, in_specs=in_specs, out_specs=(lead, lead),
                           check_vma=False)
        return jax.jit(sm, in_shardings=tuple(named(x) for x in in_specs),
                       out_shardings=(named(lead), named(lead)),
                       donate_argnums=(len(in_specs) - 1,) if donate else ())

    def collect_local(carry, *extra):
        def one(carry, *extra):
            if stream is None:
                return R.collect(carry)
            return R.collect_stream(stream, extra[0], carry)

        return batch(one, (0,) + (None,) * len(extra), (0,) + (None,) * len(extra))(
            carry, *extra)

    in_init = (w_spec, w_spec, p_spec) + extra_specs
    init = jax.jit(
        jax.shard_map(init_local, mesh=mesh, in_specs=in_init, out_specs=lead,
                      check_vma=False),
        in_shardings=tuple(named(x) for x in in_init), out_shardings=named(lead))
    in_collect = (lead,) + extra_specs
    collect = jax.jit(
        jax.shard_map(collect_local, mesh=mesh, in_specs=in_collect, out_specs=lead,
                      check_vma=False),
        in_shardings=tuple(named(x) for x in in_collect), out_shardings=named(lead))
    return init, {n: make_advance(n) for n in lengths}, collect


@functools.lru_cache(maxsize=16)
def _finalizer(record_trace: bool, batched_params: bool):
    """``jit(vmap(rollout.finalize))`` over the whole gathered (.., W) batch at once.

    Metrics are computed here, on the default device, from the accumulators of every
    workload together, never per shard or per streamed batch: XLA's vectorized and scalar
    code may round a division differently, so computing them per shard would make the last
    bit depend on the device count.
    """
    def one(params, final: R.Final) -> RolloutResult:
        return R.finalize(params, final, record_trace)

    f = jax.vmap(one, in_axes=(None, 0))
    return jax.jit(jax.vmap(f, in_axes=(0, 0)) if batched_params else f)


def _compile(fn, *args):
    """``(fn.lower(*args).compile(), seconds it took)``, cached on the arguments' shapes,
    dtypes, weak types and shardings (a repeated run does not compile again; its compile time
    is the first one's)."""
    leaves, treedef = jax.tree.flatten(args)
    specs = tuple((tuple(x.shape), x.dtype, getattr(x, "sharding", None),
                   bool(getattr(x, "weak_type", False))) for x in leaves)
    return _compile_abstract(fn, treedef, jax.config.read("jax_disable_most_optimizations"),
                             specs)


@functools.lru_cache(maxsize=64)
def _compile_abstract(fn, treedef, fast: bool, specs):
    """:func:`_compile` on abstract arguments (``fast``: part of the key only, the flag is
    read by the compiler)."""
    args = jax.tree.unflatten(treedef, [jax.ShapeDtypeStruct(s, d, sharding=sh, weak_type=w)
                                        for s, d, sh, w in specs])
    t0 = time.perf_counter()
    compiled = fn.lower(*args).compile()
    return compiled, time.perf_counter() - t0


def _shaped(tree, sharding):
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding), tree)


def _host_rss() -> int:
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(rss if sys.platform == "darwin" else rss * 1024)


def _peak(devices, compiled_advance) -> tuple[int | None, str]:
    local = [d for d in devices if d.process_index == jax.process_index()]
    stats = [d.memory_stats() for d in local]
    if all(s and "peak_bytes_in_use" in s for s in stats):
        return max(int(s["peak_bytes_in_use"]) for s in stats), "device peak_bytes_in_use"
    try:
        ma = compiled_advance.memory_analysis()
        b = (ma.argument_size_in_bytes + ma.output_size_in_bytes + ma.temp_size_in_bytes
             - ma.alias_size_in_bytes)
        return int(b), "XLA buffer assignment of the chunk call (memory_analysis)"
    except Exception:  # noqa: BLE001 - not every backend implements it
        return None, "unavailable"


def run_chunked(policy: Policy, shape: SimShape, params: SimParams, num_workloads: int,
                get_batch: Callable[[int, int], tuple[Any, Workload]], num_requests: int,
                batched_params: bool = False, devices: int | list | None = None,
                chunk: int | None = None, max_memory: int | None = None, donate: bool = True,
                progress: Callable[[str, int, int], None] | None = None,
                stream: ST.StreamSpec | None = None, stream_params: ST.StreamParams | None = None,
                ) -> tuple[RolloutResult, RunStats]:
    """Simulate ``num_workloads`` workloads in chunks, streamed batches, sharded over devices.

    ``get_batch(lo, hi) -> (keys (hi - lo,), workloads (hi - lo, N))`` supplies workloads
    ``[lo, hi)`` (host or device arrays; called once per streamed batch, so large batches are
    never built whole). ``params`` has a leading (P,) axis when ``batched_params``.
    ``devices``: a count (the first ones), a list, or None for all. Returns the
    :class:`RolloutResult` as numpy arrays, leading (W,) or (P, W) (trace (.., W, H) when
    ``shape.record_trace``), and the run's :class:`RunStats`. Equal, bit for bit, to
    :func:`jaxsched.core.sim.simulate` on the same inputs for every device count and chunk.

    Streamed (``stream`` and ``stream_params`` given, :mod:`jaxsched.running.stream`): ``get_batch``
    returns ``(keys, stream keys)`` instead, each workload is generated block by block into
    a sliding window of ``stream.window`` requests (``num_requests`` is ignored), and the
    result equals :func:`jaxsched.core.sim.simulate` on the materialized streams
    (:func:`jaxsched.running.stream.materialize`); a window too small for that raises a one-line
    :class:`~jaxsched.running.stream.WindowTooSmall` (a :class:`JaxschedError`) at the end of the
    first chunk that was not exact.
    """
    devs = devices if isinstance(devices, list) else S.select_devices(devices)
    num_params = int(jax.tree.leaves(params)[0].shape[0]) if batched_params else None
    if (stream is None) != (stream_params is None):
        raise JaxschedError("run_chunked: give both stream and stream_params, or neither")
    if chunk is None and shape.leap and not shape.record_trace and stream is None:
        chunk = shape.horizon  # leaping workloads would wait for the busiest at each chunk end
    per = rollout_bytes(policy, shape, num_requests, params, choose_chunk(shape.horizon, chunk),
                        batched_params, stream)
    plan = plan_run(shape, num_workloads, per, devs, num_params, chunk, max_memory)
    if stream is not None:
        plan = dataclasses.replace(plan, window=stream.window)
    dp, dw = plan.mesh
    mesh = S.make_mesh(devs, dp, dw)
    lengths = [plan.chunk] * (shape.horizon // plan.chunk)
    if shape.horizon % plan.chunk:
        lengths.append(shape.horizon % plan.chunk)
    wa = 1 if batched_params else 0
    lead = PS(S.PARAM_AXIS, S.WORKLOAD_AXIS) if batched_params else PS(S.WORKLOAD_AXIS)
    host_params = jax.tree.map(np.asarray, params)
    if batched_params:
        host_params = S.pad_params(host_params, plan.padded_params)
    d_params = S.put(host_params, NamedSharding(mesh, PS(S.PARAM_AXIS) if batched_params
                                                else PS()))
    w_sharding = NamedSharding(mesh, PS(S.WORKLOAD_AXIS))

    def load(b):
        lo = b * plan.batch
        hi = min(lo + plan.batch, num_workloads)
        keys, wl = get_batch(lo, hi)
        kd, impl = S.key_data(keys)
        if stream is None:
            wl, kd = S.pad_workloads(wl, kd, plan.batch)
        else:  # stream keys, padded with zero keys (their rollouts are dropped)
            wl, _ = S.key_data(wl)
            pad = ((0, plan.batch - kd.shape[0]),) + ((0, 0),) * (kd.ndim - 1)
            kd, wl = np.pad(kd, pad), np.pad(wl, pad)
        if b == 0:  # multi-host: every process must hold the same run and batch
            S.check_same_on_all_processes((plan, shape, policy.name, host_params, kd, wl),
                                          "the run's plan, parameters and workloads")
        return S.put(kd, w_sharding), S.put(wl, w_sharding), impl, hi - lo

    keys, wl, impl, real = load(0)
    init, advance, collect = chunk_functions(policy, shape, mesh, batched_params,
                                             tuple(sorted(set(lengths))),
                                             None if impl is None else str(impl), donate,
                                             stream)
    extra = () if stream is None else (S.put(jax.tree.map(np.asarray, stream_params),
                                             NamedSharding(mesh, PS())),)
    c_init, compile_seconds = _compile(init, keys, wl, d_params, *extra)
    carry_shape = _shaped(jax.eval_shape(init, keys, wl, d_params, *extra),
                          NamedSharding(mesh, lead))
    c_adv = {}
    for n, f in advance.items():
        c_adv[n], seconds = _compile(f, keys, wl, d_params, *extra, carry_shape)
        compile_seconds += seconds
    c_col, seconds = _compile(collect, carry_shape, *extra)
    compile_seconds += seconds
    finalize = _finalizer(shape.record_trace, batched_params)

    pieces, traces = [], []
    total = plan.num_batches * len(lengths)
    sim_seconds = 0.0
    for b in range(plan.num_batches):
        if b:
            keys, wl, impl, real = load(b)
        t1 = time.perf_counter()
        carry = c_init(keys, wl, d_params, *extra)
        chunks = []
        for i, n in enumerate(lengths):
            carry, tr = c_adv[n](keys, wl, d_params, *extra, carry)
            if stream is not None:  # stop at the first chunk that was not exact
                lost = S.to_host(carry[1].lost)
                ST.check_lost(np.take(lost, np.arange(real), axis=wa), stream,
                              sum(lengths[:i + 1]))
            if shape.record_trace:
                tr = S.to_host(tr)
                chunks.append(jax.tree.map(lambda x: np.take(x, np.arange(real), axis=wa), tr))
            if progress is not None:
                progress(f"batch {b + 1}/{plan.num_batches}, iterations "
                         f"{sum(lengths[:i + 1])}/{shape.horizon}", b * len(lengths) + i + 1,
                         total)
        col = S.to_host(c_col(carry, *extra))
        sim_seconds += time.perf_counter() - t1
        pieces.append(jax.tree.map(lambda x: np.take(x, np.arange(real), axis=wa), col))
        if shape.record_trace:
            traces.append(jax.tree.map(lambda *xs: np.concatenate(xs, axis=-1), *chunks))
    t1 = time.perf_counter()
    col = jax.tree.map(lambda *xs: np.concatenate(xs, axis=wa), *pieces)
    if batched_params:
        col = jax.tree.map(lambda x: x[:num_params], col)
        host_params = jax.tree.map(lambda x: x[:num_params], host_params)
    sim_seconds += time.perf_counter() - t1
    col = col.replace(lost=None)
    c_fin, seconds = _compile(finalize, host_params, col)
    compile_seconds += seconds
    t1 = time.perf_counter()
    out = jax.tree.map(np.asarray, c_fin(host_params, col))
    sim_seconds += time.perf_counter() - t1
    trace = None
    if shape.record_trace:
        trace = jax.tree.map(lambda *xs: np.concatenate(xs, axis=wa), *traces)
        if batched_params:
            trace = jax.tree.map(lambda x: x[:num_params], trace)
    out = out.replace(trace=trace)
    peak, source = _peak(devs, c_adv[lengths[0]])
    return out, RunStats(plan=plan, compile_seconds=compile_seconds, sim_seconds=sim_seconds,
                         peak_bytes=peak, peak_source=source, host_peak_rss=_host_rss())
