"""Workload streams and the sliding request window: device memory independent of the horizon.

A full-array :class:`~jaxsched.core.model.Workload` holds every request of the horizon, ``N``
about ``horizon x arrival rate``. In streamed mode the device instead holds a *window* of
``R = blocks x block`` consecutive requests ``[base, base + R)`` of an unbounded stream, and
:func:`jaxsched.core.sim.step` runs unchanged on the window as if it were the whole workload:
every request index of the carry (``head``, ``arrived``, ``slots.req``) is relative to
``base``. Between chunks of iterations :func:`slide` drops the whole blocks before the
oldest request still needed,

    oldest = min(head, min_i slots.req_i),   dropped blocks m = floor(oldest / block),

shifts the window's arrays and the relative indices by ``d = m x block`` and fills the freed
tail with the next ``m`` blocks of the stream. Requests before ``head`` are resident or
completed; a resident may be evicted and rejoin the queue at its index, hence ``oldest``.

Streams. Block ``b`` of a workload is generated on the device from ``(key, b, state)``
(:func:`stream_block`; ``fold_in(key, b)`` and a small carried :class:`StreamState`), so the
whole workload never exists. Kinds:

* ``poisson``: the merged process of independent per-class Poisson processes, i.e. one
  Poisson process of rate ``Lambda = sum_k max(rate_k, 0)`` with i.i.d. classes,
  ``P(class = k) = rate_k / Lambda``: ``a_i = a_{i-1} + E_i / Lambda``, ``E_i ~ Exp(1)``,
  ``a_{-1}`` = the carried last arrival of the previous block (0 at the start).
* ``saturated``: ``total`` requests at time 0, classes i.i.d. by weight.
* ``bursty``: the two-state MMPP of :func:`jaxsched.workloads.generators.bursty` by time change: the
  unit-rate points ``y_i = sum_{j <= i} E_j`` are mapped through the inverse of the
  cumulative intensity ``Lambda f_{s(t)}``, one sojourn at a time (a ``while_loop`` over the
  sojourns a block spans); the phase, the time left in the current sojourn and the sojourn
  counter are carried. Starts in the stationary law, like the full-array generator.
* ``trace``: consecutive requests of the cyclically unrolled trace of
  :func:`jaxsched.workloads.generators.trace_window` (copy m of request j at ``t_j + m P - offset``),
  block b starting at unrolled index ``first + b x block``.

Every kind keeps the padding conventions of :mod:`jaxsched.workloads.generators`: arrivals at or after
``duration`` and indices ``>= total`` are padding (``valid = False``, ``arrival = +inf``,
``prompt = output = 1``, ``cls = 0``). Streamed sample paths differ from the full-array
generators' (same law, other draws); :func:`materialize` concatenates a stream's blocks into
an ordinary workload, on which :func:`jaxsched.core.sim.simulate` gives the streamed, windowed
run's per-iteration trajectory, final counters and latency histogram bit for bit (metrics,
float arithmetic on them, to an ulp; ``tests/test_stream.py``).

Exactness. The window is exact while every arrived request from ``head`` on is in it:
before each iteration, with ``a`` the window's arrived count, ``a < R`` (``poisson``,
``bursty``, ``trace``). For ``saturated`` every request has arrived at time 0; the
``outside = max(total - base - R, 0)`` requests beyond the window are counted in
``num_waiting`` from the start (and count as arrived when they enter the window), and the
window is exact while it holds the look-ahead, ``num_waiting - outside >= queue_size`` (or
``outside = 0``). Iterations that break this are counted (:func:`window_short`); the runner
stops after the first chunk that had one, in one line (:func:`check_lost`).
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from jaxsched.errors import JaxschedError
from jaxsched.core.model import RequestState, SimShape, SimState, Workload
from jaxsched.workloads.generators import padded, trace_period

__all__ = [
    "STREAM_KINDS",
    "StreamSpec",
    "StreamParams",
    "StreamState",
    "Window",
    "stream_params",
    "stream_start",
    "stream_block",
    "materialize",
    "init_window",
    "outside",
    "window_short",
    "slide",
    "choose_window",
    "check_lost",
    "WindowTooSmall",
]

STREAM_KINDS = ("poisson", "saturated", "bursty", "trace")

_NO_LIMIT = 2**31 - 1


class WindowTooSmall(JaxschedError):
    """A streamed run's window could not hold its queue (the run would not be exact)."""


@dataclasses.dataclass(frozen=True)
class StreamSpec:
    """Static description of a stream and its window (hashable; changing it recompiles)."""

    kind: str  # one of STREAM_KINDS
    block: int  # requests per generated block
    blocks: int  # blocks in the window: R = blocks x block
    random_offset: bool = True  # trace: start at U x period (else at the first request)

    def __post_init__(self):
        if self.kind not in STREAM_KINDS:
            raise JaxschedError(f"stream kind {self.kind!r}: expected one of {STREAM_KINDS}")
        if int(self.block) < 1 or int(self.blocks) < 2:
            raise JaxschedError(f"stream window: need block >= 1 and blocks >= 2, got "
                                f"block={self.block}, blocks={self.blocks}")

    @property
    def window(self) -> int:
        """R, requests held on the device per rollout."""
        return self.block * self.blocks


@struct.dataclass
class StreamParams:
    """Traced parameters of a stream, shared by every workload of a run."""

    prompt_len: jax.Array  # (K,) int32, per-class prompt length
    output_len: jax.Array  # (K,) int32, per-class output length
    rate: jax.Array  # (K,) float32, arrivals per unit time (saturated: class weights)
    duration: jax.Array  # () float32, arrivals at or after it are padding
    total: jax.Array  # () int32, stream indices >= total are padding
    high_factor: jax.Array  # () float32, bursty
    low_factor: jax.Array  # () float32, bursty
    mean_high: jax.Array  # () float32, bursty: mean high sojourn
    mean_low: jax.Array  # () float32, bursty: mean low sojourn
    trace_arrival: jax.Array  # (T,) float32 trace seconds from the first request
    trace_prompt: jax.Array  # (T,) int32
    trace_output: jax.Array  # (T,) int32
    trace_cls: jax.Array  # (T,) int32
    trace_period: jax.Array  # () float32, P of jaxsched.workloads.generators.trace_period (1 without)
    time_scale: jax.Array  # () float32, simulator units per trace second


@struct.dataclass
class StreamState:
    """What block ``b + 1`` needs from blocks ``<= b``."""

    block: jax.Array  # () int32, index of the next block
    time: jax.Array  # () float32, last arrival generated (0 at the start)
    high: jax.Array  # () bool, bursty: current phase
    remaining: jax.Array  # () float32, bursty: time left in the sojourn after ``time``
    sojourn: jax.Array  # () int32, bursty: index of the current sojourn
    first: jax.Array  # () int32, trace: unrolled index of the stream's first request
    offset: jax.Array  # () float32, trace: window offset in trace seconds


@struct.dataclass
class Window:
    """The device's slice ``[base, base + R)`` of one workload's stream."""

    workload: Workload  # (R,) requests base .. base + R - 1
    base: jax.Array  # () int32, stream index of window position 0
    stream: StreamState
    lost: jax.Array  # () int32, iterations the window could not hold exactly


def stream_params(prompt_len, output_len, rate, duration=math.inf, total=None,
                  high_factor=1.0, low_factor=1.0, mean_high=1.0, mean_low=1.0,
                  trace=None, time_scale=1.0) -> StreamParams:
    """Build :class:`StreamParams`; ``trace`` is ``(arrival, prompt, output, cls)`` arrays
    (arrival in seconds; shifted here so the first request is at 0)."""
    prompt_len = jnp.asarray(prompt_len, jnp.int32).reshape(-1)
    output_len = jnp.asarray(output_len, jnp.int32).reshape(-1)
    rate = jnp.asarray(rate, jnp.float32).reshape(-1)
    if not prompt_len.shape == output_len.shape == rate.shape or prompt_len.shape[0] < 1:
        raise JaxschedError(f"stream: prompt_len {prompt_len.shape}, output_len "
                            f"{output_len.shape}, rate {rate.shape}: give one per class")
    if trace is None:
        ta, tp, to, tc = (jnp.zeros((1,), jnp.float32),) + (jnp.ones((1,), jnp.int32),) * 2 \
            + (jnp.zeros((1,), jnp.int32),)
        period = 1.0
    else:
        ta = jnp.asarray(trace[0], jnp.float32)
        ta = ta - ta[0]
        tp, to, tc = (jnp.asarray(x, jnp.int32) for x in trace[1:])
        period = trace_period(trace[0])
    f32 = lambda x: jnp.asarray(x, jnp.float32)  # noqa: E731
    total = _NO_LIMIT if total is None else min(int(total), _NO_LIMIT)
    return StreamParams(prompt_len=prompt_len, output_len=output_len, rate=rate,
                        duration=f32(duration), total=jnp.asarray(total, jnp.int32),
                        high_factor=f32(high_factor), low_factor=f32(low_factor),
                        mean_high=f32(mean_high), mean_low=f32(mean_low), trace_arrival=ta,
                        trace_prompt=tp, trace_output=to, trace_cls=tc,
                        trace_period=f32(period), time_scale=f32(time_scale))


def stream_start(key, spec: StreamSpec, sp: StreamParams) -> StreamState:
    """The state before block 0 (bursty: stationary phase and residual sojourn; trace:
    the offset ``U x P`` or 0)."""
    k_start = jax.random.fold_in(key, 0)
    k_phase, k_rem, k_off = jax.random.split(k_start, 3)
    pi_high = sp.mean_high / (sp.mean_high + sp.mean_low)
    high = jax.random.uniform(k_phase) < pi_high
    rem = jax.random.exponential(k_rem, (), jnp.float32) * jnp.where(high, sp.mean_high,
                                                                     sp.mean_low)
    if spec.kind == "trace" and spec.random_offset:
        offset = jax.random.uniform(k_off, (), jnp.float32) * sp.trace_period
    else:
        offset = jnp.zeros((), jnp.float32)
    first = jnp.searchsorted(sp.trace_arrival, offset, side="left").astype(jnp.int32)
    zi = jnp.zeros((), jnp.int32)
    return StreamState(block=zi, time=jnp.zeros((), jnp.float32), high=high, remaining=rem,
                       sojourn=zi, first=first, offset=offset)


def _bursty_times(key, sp: StreamParams, st: StreamState, y):
    """Times after ``st.time`` of the unit-rate points ``y`` (ascending) under the MMPP
    intensity ``Lambda f_s``; returns (relative times, new phase, remaining, sojourn).
    Sojourn j's length is ``Exp(1) x mean`` from ``fold_in(key, j)`` (``key``: the
    stream's sojourn key, so sojourns do not depend on block boundaries)."""
    lam = jnp.sum(jnp.maximum(sp.rate, 0.0))
    lam_h, lam_l = lam * sp.high_factor, lam * sp.low_factor
    last = y[-1]

    def rate_of(high):
        return jnp.where(high, lam_h, lam_l)

    def assign(t, mass0, time0, high):
        r = rate_of(high)
        safe = jnp.where(r > 0, r, 1.0)
        return jnp.where((y >= mass0) & (r > 0), time0 + (y - mass0) / safe, t)

    def more(c):
        _, mass0, _, high, rem, _ = c
        return mass0 + rem * rate_of(high) <= last

    def next_sojourn(c):
        t, mass0, time0, high, rem, j = c
        t = assign(t, mass0, time0, high)
        mass1 = mass0 + rem * rate_of(high)
        j = j + 1
        high = ~high
        length = jax.random.exponential(jax.random.fold_in(key, j), (), jnp.float32)
        length = length * jnp.where(high, sp.mean_high, sp.mean_low)
        return t, mass1, time0 + rem, high, length, j

    start = (jnp.full(y.shape, jnp.inf, jnp.float32), jnp.zeros((), jnp.float32),
             jnp.zeros((), jnp.float32), st.high, st.remaining, st.sojourn)
    ok = jnp.maximum(lam_h, lam_l) > 0
    t, mass0, time0, high, rem, j = jax.lax.while_loop(
        lambda c: ok & more(c), next_sojourn, start)
    t = assign(t, mass0, time0, high)
    r = jnp.where(rate_of(high) > 0, rate_of(high), 1.0)
    rem = jnp.maximum(rem - (last - mass0) / r, 0.0)
    t = jax.lax.cummax(jnp.where(ok, t, jnp.inf))  # float rounding at sojourn ends
    return t, high, rem, j


def stream_block(key, spec: StreamSpec, sp: StreamParams, st: StreamState):
    """``(Workload (block,), next state)``: block ``st.block`` of the stream (equations in
    the module docstring)."""
    nb = spec.block
    bkey = jax.random.fold_in(jax.random.fold_in(key, 1), st.block)
    k_gap, k_cls = jax.random.split(bkey)
    idx = st.block * nb + jnp.arange(nb, dtype=jnp.int32)
    high, rem, soj = st.high, st.remaining, st.sojourn
    if spec.kind == "trace":
        size = sp.trace_arrival.shape[0]
        k = st.first + idx
        j, cycle = k % size, k // size
        rel = (sp.trace_arrival[j] - st.offset) + cycle.astype(jnp.float32) * sp.trace_period
        t = jax.lax.cummax(jnp.maximum(jnp.maximum(rel, 0.0) * sp.time_scale, st.time))
        prompt, output, cls = sp.trace_prompt[j], sp.trace_output[j], sp.trace_cls[j]
    else:
        lam = jnp.maximum(sp.rate, 0.0)
        logits = jnp.log(lam)  # rate (weight) 0 -> -inf: never drawn
        cls = jax.random.categorical(k_cls, logits, shape=(nb,)).astype(jnp.int32)
        prompt, output = sp.prompt_len[cls], sp.output_len[cls]
        if spec.kind == "saturated":
            t = jnp.zeros((nb,), jnp.float32)
        else:
            e = jax.random.exponential(k_gap, (nb,), jnp.float32)
            total = jnp.sum(lam)
            if spec.kind == "poisson":
                rel = jnp.where(total > 0, jnp.cumsum(e / jnp.where(total > 0, total, 1.0)),
                                jnp.inf)
            else:
                rel, high, rem, soj = _bursty_times(jax.random.fold_in(key, 2), sp, st,
                                                     jnp.cumsum(e))
            t = st.time + rel
    valid = (t < sp.duration) & (idx < sp.total)
    wl = padded(t, prompt, output, cls, valid)
    new = st.replace(block=st.block + 1, time=t[-1], high=high, remaining=rem, sojourn=soj)
    return wl, new


def _blocks(key, spec: StreamSpec, sp: StreamParams, st: StreamState, count: int):
    def body(s, _):
        wl, s = stream_block(key, spec, sp, s)
        return s, wl

    st, wl = jax.lax.scan(body, st, None, length=count)
    return jax.tree.map(lambda x: x.reshape(-1), wl), st


def materialize(key, spec: StreamSpec, sp: StreamParams, num_blocks: int) -> Workload:
    """The stream's first ``num_blocks`` blocks as one ordinary (num_blocks x block,)
    workload (for tests and comparisons; the JAX path never builds it)."""
    return _blocks(key, spec, sp, stream_start(key, spec, sp), int(num_blocks))[0]


def init_window(key, spec: StreamSpec, sp: StreamParams) -> Window:
    """The window at the start: blocks ``0 .. blocks - 1``, base 0."""
    wl, st = _blocks(key, spec, sp, stream_start(key, spec, sp), spec.blocks)
    zi = jnp.zeros((), jnp.int32)
    return Window(workload=wl, base=zi, stream=st, lost=zi)


def outside(spec: StreamSpec, sp: StreamParams, base) -> jax.Array:
    """Arrived requests beyond the window that ``num_waiting`` already counts: for
    ``saturated`` ``max(total - base - R, 0)``, else 0."""
    if spec.kind != "saturated":
        return jnp.zeros((), jnp.int32)
    return jnp.maximum(sp.total - base - spec.window, 0).astype(jnp.int32)


def window_short(spec: StreamSpec, sp: StreamParams, shape: SimShape, window: Window,
                 state: SimState) -> jax.Array:
    """() bool: the next iteration (from ``state``) would not be exact on this window."""
    arrived = jnp.searchsorted(window.workload.arrival, state.time, side="right")
    if spec.kind != "saturated":
        return arrived >= spec.window
    out = outside(spec, sp, window.base)
    waiting = state.num_waiting + (arrived - state.arrived) - out
    return (out > 0) & (waiting < shape.queue_size)


def slide(key, spec: StreamSpec, sp: StreamParams, window: Window, state: SimState):
    """Drop the whole blocks before ``oldest = min(head, residents' indices)``, shift the
    arrays and the relative indices by ``d``, fill the tail from the stream.
    Returns ``(window, state)``."""
    r, nb = spec.window, spec.block
    req = state.slots.req
    resident = req >= 0
    oldest = jnp.minimum(state.head, jnp.min(jnp.where(resident, req, r)))
    m = jnp.clip(oldest // nb, 0, spec.blocks).astype(jnp.int32)
    d = m * nb
    pos = jnp.arange(r, dtype=jnp.int32)
    src = jnp.minimum(pos + d, r - 1)
    fresh = pos >= r - d

    def shift(x, fill):
        return jnp.where(fresh, fill, x[src])

    wl = window.workload
    wl = Workload(arrival=shift(wl.arrival, jnp.inf), prompt=shift(wl.prompt, 1),
                  output=shift(wl.output, 1), cls=shift(wl.cls, 0),
                  valid=shift(wl.valid, False))
    rq = state.requests
    rq = RequestState(taken=shift(rq.taken, False), kept=shift(rq.kept, 0),
                      first_done=shift(rq.first_done, False))

    def fill(c):
        i, wl, st = c
        blk, st = stream_block(key, spec, sp, st)
        at = r - d + i * nb
        wl = jax.tree.map(lambda a, b: jax.lax.dynamic_update_slice(a, b, (at,)), wl, blk)
        return i + 1, wl, st

    _, wl, st = jax.lax.while_loop(lambda c: c[0] < m, fill,
                                   (jnp.zeros((), jnp.int32), wl, window.stream))
    base = window.base + d
    moved_in = outside(spec, sp, window.base) - outside(spec, sp, base)
    state = state.replace(  # the moved-in requests (saturated) were counted as arrived
        head=state.head - d,
        arrived=state.arrived - d + moved_in,
        slots=state.slots.replace(req=jnp.where(resident, req - d, -1)),
        requests=rq,
    )
    return window.replace(workload=wl, base=base, stream=st), state


def choose_window(shape: SimShape, chunk: int, arrivals_per_iteration: float,
                  window: int | None = None) -> tuple[int, int]:
    """``(block, blocks)`` for a window of about ``window`` requests, or automatically

        R >= 2 x (A + 8 sqrt(A) + 16) + 4 (queue_size + 2 max_batch),  A = rate x chunk,

    the arrivals of two chunks (with an 8-sigma margin) plus a backlog of four look-ahead
    spans; ``block = max(queue_size + 2 max_batch, 64)``, and one block more for the
    partial block before the oldest request."""
    span = shape.queue_size + 2 * shape.max_batch
    block = max(span, 64)
    if window is not None:
        if int(window) < 2 * block:
            raise JaxschedError(f"--window {window}: must be at least {2 * block} requests "
                                f"(two blocks of queue_size + 2 max_batch, min 64)")
        return block, max(2, int(window) // block)
    a = max(float(arrivals_per_iteration), 0.0) * chunk
    need = 2.0 * (a + 8.0 * math.sqrt(a) + 16.0) + 4.0 * span
    return block, max(2, int(math.ceil(need / block)) + 1)


def check_lost(lost, spec: StreamSpec, iterations: int | None = None) -> None:
    """One-line :class:`WindowTooSmall` when any rollout ran iterations on a window too
    small to be exact (``lost``: per-rollout counts; ``iterations``: how far the run got)."""
    lost = np.asarray(lost)
    if lost.size and int(lost.max()) > 0:
        bad = int(np.count_nonzero(lost))
        when = "" if iterations is None else f" by iteration {iterations}"
        raise WindowTooSmall(
            f"streamed run not exact: the request window of {spec.window} requests could not "
            f"hold every waiting request in {bad} rollout(s){when} (the queue outgrew it: heavy "
            f"load or long requests); raise --window (e.g. to {4 * spec.window}) or use "
            "--no-stream")
