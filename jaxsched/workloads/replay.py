"""The ``trace`` workload kind: a recorded trace (:mod:`.traces`) replayed cyclically.

Copy m of request j arrives at ``(t_j + m P - offset) x time_scale`` (P the trace's period,
:func:`jaxsched.workloads.generators.trace_period`; ``offset = U P`` per replica, or 0). Full
arrays: :func:`jaxsched.workloads.generators.trace_replay`. Stream: consecutive requests of the
unrolled trace, block b starting at unrolled index ``first + b x block`` (``first``: the first
request at or after the offset). Lengths are the trace's; classes 0 unless given.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from jaxsched.core.model import Workload
from jaxsched.errors import JaxschedError
from jaxsched.workloads import generators as G
from jaxsched.workloads import traces
from jaxsched.workloads.kind import WorkloadKind, start_keys

__all__ = ["TraceReplay", "TraceStream", "TraceStart", "load_config_trace"]


@struct.dataclass
class TraceStream:
    """Traced parameters of a trace stream."""

    arrival: jax.Array  # (T,) float32 trace seconds from the first request
    prompt: jax.Array  # (T,) int32
    output: jax.Array  # (T,) int32
    cls: jax.Array  # (T,) int32
    period: jax.Array  # () float32, P
    time_scale: jax.Array  # () float32, simulator units per trace second


@struct.dataclass
class TraceStart:
    """Where a replica's stream starts in the trace."""

    first: jax.Array  # () int32, unrolled index of the stream's first request
    offset: jax.Array  # () float32, window offset in trace seconds


def load_config_trace(cfg) -> traces.Trace:
    """The trace of a config's ``workload.path`` (as given, next to the config, or a shipped
    trace's name); a request longer than the capacity is refused naming its line."""
    wl = cfg.workload
    path = Path(wl.path)
    if not path.is_file():
        base = Path(cfg.source).parent
        if (base / wl.path).is_file():
            path = base / wl.path
        else:
            try:
                path = traces.shipped_trace_path(wl.path)
            except (KeyError, FileNotFoundError, JaxschedError):
                raise JaxschedError(f"{cfg.source}: workload.path: no trace file {wl.path!r}") from None
    trace = traces.load_trace(str(path), wl.format)
    too_long = np.asarray(trace.prompt) + np.asarray(trace.output) > cfg.capacity
    if np.any(too_long):
        i = int(np.argmax(too_long))
        line = int(trace.line[i]) if getattr(trace, "line", None) is not None else i + 1
        raise JaxschedError(
            f"{path} line {line}: prompt + output = {int(trace.prompt[i] + trace.output[i])} "
            f"tokens exceeds system.capacity = {cfg.capacity:g} (the request could never complete)"
        )
    return trace


def _max_in_window(times: np.ndarray, span: float, window: float) -> int:
    """Most trace requests in any window of length ``window`` (cyclic over ``span``)."""
    t = np.sort(times)
    reps = int(math.ceil(window / max(span, 1e-12))) + 1
    ext = np.concatenate([t + r * span for r in range(reps + 1)])
    ends = np.searchsorted(ext, ext[: len(t)] + window, side="left")
    return int(np.max(ends - np.arange(len(t))))


@dataclasses.dataclass(frozen=True, eq=False)  # numpy fields: compared by identity
class TraceReplay(WorkloadKind):
    """A trace's requests (arrival in trace seconds) replayed at ``time_scale``."""

    arrival: np.ndarray  # (T,) float64 trace seconds, ascending
    prompt: np.ndarray  # (T,) int
    output: np.ndarray  # (T,) int
    time_scale: float = 1.0  # simulator units per trace second
    random_offset: bool = True  # each replica starts at U x P (else at the first request)
    cls: np.ndarray | None = None  # (T,) int classes (None: all 0)

    name = "trace"
    class_lengths = False

    @classmethod
    def check_config(cls, wl) -> None:
        if not wl.path:
            raise ValueError("path is required when kind = 'trace'")
        if wl.format is None:
            raise ValueError("format (azure | mooncake) is required when kind = 'trace'")

    @classmethod
    def from_config(cls, cfg) -> "TraceReplay":
        trace = load_config_trace(cfg)
        return cls(trace.arrival, trace.prompt, trace.output, cfg.workload.time_scale,
                   bool(cfg.workload.random_offset))

    def _shifted(self) -> np.ndarray:
        """(T,) float64 seconds after the first request."""
        return np.asarray(self.arrival, np.float64) - float(self.arrival[0])

    def num_requests(self, duration: float) -> int:
        span = float(self.arrival[-1] - self.arrival[0]) * self.time_scale
        span = max(span, 1e-9)
        return _max_in_window(np.asarray(self.arrival) * self.time_scale, span, duration) + 1

    def draw(self, key, duration: float, num_requests: int) -> Workload:
        ta = jnp.asarray(self._shifted(), jnp.float32)
        return G.trace_replay(key, ta, jnp.asarray(self.prompt, jnp.int32),
                              jnp.asarray(self.output, jnp.int32), duration, self.time_scale,
                              num_requests, random_offset=self.random_offset, cls=self.cls)

    def arrivals_per_iteration(self, tau: float) -> float:
        per_time = len(self.arrival) / (G.trace_period(self.arrival) * self.time_scale)
        return per_time * tau

    def stream_params(self) -> TraceStream:
        shifted = self._shifted()
        cls = np.zeros(len(shifted), np.int32) if self.cls is None else self.cls
        return TraceStream(arrival=jnp.asarray(shifted, jnp.float32),
                           prompt=jnp.asarray(self.prompt, jnp.int32),
                           output=jnp.asarray(self.output, jnp.int32),
                           cls=jnp.asarray(cls, jnp.int32),
                           period=jnp.asarray(G.trace_period(shifted), jnp.float32),
                           time_scale=jnp.asarray(self.time_scale, jnp.float32))

    @staticmethod
    def stream_start(key, spec, sp: TraceStream) -> TraceStart:
        """The offset ``U x P`` (``spec.random_offset``) or 0, and the first request at or
        after it."""
        if spec.random_offset:
            offset = jax.random.uniform(start_keys(key)[2], (), jnp.float32) * sp.period
        else:
            offset = jnp.zeros((), jnp.float32)
        first = jnp.searchsorted(sp.arrival, offset, side="left").astype(jnp.int32)
        return TraceStart(first=first, offset=offset)

    @staticmethod
    def stream_block(key, bkey, nb: int, sp: TraceStream, st: TraceStart, idx, time):
        size = sp.arrival.shape[0]
        k = st.first + idx
        j, cycle = k % size, k // size
        rel = (sp.arrival[j] - st.offset) + cycle.astype(jnp.float32) * sp.period
        t = jax.lax.cummax(jnp.maximum(jnp.maximum(rel, 0.0) * sp.time_scale, time))
        return t, sp.prompt[j], sp.output[j], sp.cls[j], st
