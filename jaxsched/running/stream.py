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
whole workload never exists. Each workload kind (:mod:`jaxsched.workloads.registry`) draws
its own blocks (``stream_block`` of :mod:`jaxsched.workloads.poisson`, ``.saturated``,
``.bursty``, ``.replay``, where their laws are written) from its own traced parameters and
carried state; this module holds what every kind shares: the block keys and indices, the
padding, and the window.

Every kind keeps the padding conventions of :mod:`jaxsched.workloads.generators`: arrivals at or after
``duration`` and indices ``>= total`` are padding (``valid = False``, ``arrival = +inf``,
``prompt = output = 1``, ``cls = 0``). Streamed sample paths differ from the full-array
generators' (same law, other draws); :func:`materialize` concatenates a stream's blocks into
an ordinary workload, on which :func:`jaxsched.core.sim.simulate` gives the streamed, windowed
run's per-iteration trajectory, final counters and latency histogram bit for bit (metrics,
float arithmetic on them, to an ulp; ``tests/test_stream.py``).

Exactness. The window is exact while every arrived request from ``head`` on is in it:
before each iteration, with ``a`` the window's arrived count, ``a < R`` (``poisson``,
``bursty``, ``trace``). For a backlog kind (``WorkloadKind.backlog``: ``saturated``) every
request has arrived at time 0; the
``outside = max(total - base - R, 0)`` requests beyond the window are counted in
``num_waiting`` from the start (and count as arrived when they enter the window), and the
window is exact while it holds the look-ahead, ``num_waiting - outside >= queue_size`` (or
``outside = 0``). Iterations that break this are counted (:func:`window_short`); the runner
stops after the first chunk that had one, in one line (:func:`check_lost`).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from jaxsched.errors import JaxschedError
from jaxsched.core.model import RequestState, SimShape, SimState, Workload
from jaxsched.workloads.generators import padded
from jaxsched.workloads.kind import WorkloadKind
from jaxsched.workloads.registry import KINDS, kind_class

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

STREAM_KINDS = tuple(KINDS)

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

    duration: jax.Array  # () float32, arrivals at or after it are padding
    total: jax.Array  # () int32, stream indices >= total are padding
    kind: Any  # the kind's own traced parameters (its ``stream_params()``)


@struct.dataclass
class StreamState:
    """What block ``b + 1`` needs from blocks ``<= b``."""

    block: jax.Array  # () int32, index of the next block
    time: jax.Array  # () float32, last arrival generated (0 at the start)
    kind: Any  # the kind's own carried state (bursty: the phase; trace: the offset)


@struct.dataclass
class Window:
    """The device's slice ``[base, base + R)`` of one workload's stream."""

    workload: Workload  # (R,) requests base .. base + R - 1
    base: jax.Array  # () int32, stream index of window position 0
    stream: StreamState
    lost: jax.Array  # () int32, iterations the window could not hold exactly


def stream_params(kind: WorkloadKind, duration=math.inf, total=None) -> StreamParams:
    """:class:`StreamParams` of a workload kind (its parameters), padding arrivals at or after
    ``duration`` and stream indices ``>= total`` (None: no limit)."""
    total = _NO_LIMIT if total is None else min(int(total), _NO_LIMIT)
    return StreamParams(duration=jnp.asarray(duration, jnp.float32),
                        total=jnp.asarray(total, jnp.int32), kind=kind.stream_params())


def stream_start(key, spec: StreamSpec, sp: StreamParams) -> StreamState:
    """The state before block 0 (the kind's own: e.g. bursty's stationary phase, the trace's
    offset)."""
    return StreamState(block=jnp.zeros((), jnp.int32), time=jnp.zeros((), jnp.float32),
                       kind=kind_class(spec.kind).stream_start(key, spec, sp.kind))


def stream_block(key, spec: StreamSpec, sp: StreamParams, st: StreamState):
    """``(Workload (block,), next state)``: block ``st.block`` of the stream, drawn by the
    kind from the block key ``fold_in(fold_in(key, 1), b)``; padded where the arrival is at or
    after ``duration`` or the index at or after ``total``."""
    nb = spec.block
    bkey = jax.random.fold_in(jax.random.fold_in(key, 1), st.block)
    idx = st.block * nb + jnp.arange(nb, dtype=jnp.int32)
    t, prompt, output, cls, kst = kind_class(spec.kind).stream_block(key, bkey, nb, sp.kind,
                                                                     st.kind, idx, st.time)
    valid = (t < sp.duration) & (idx < sp.total)
    wl = padded(t, prompt, output, cls, valid)
    return wl, st.replace(block=st.block + 1, time=t[-1], kind=kst)


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
    if not kind_class(spec.kind).backlog:
        return jnp.zeros((), jnp.int32)
    return jnp.maximum(sp.total - base - spec.window, 0).astype(jnp.int32)


def window_short(spec: StreamSpec, sp: StreamParams, shape: SimShape, window: Window,
                 state: SimState) -> jax.Array:
    """() bool: the next iteration (from ``state``) would not be exact on this window."""
    arrived = jnp.searchsorted(window.workload.arrival, state.time, side="right")
    if not kind_class(spec.kind).backlog:
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
