"""Workload generators: arrivals and request lengths as padded :class:`~jaxsched.core.model.Workload`.

Every generator takes a PRNG key first and a static number of requests ``N`` (a Python int),
uses no Python loop over requests and returns a :class:`Workload` of static shape (N,), so
that ``jax.vmap(lambda k: gen(k, ...))(keys)`` builds thousands of independent replicas in one
call and ``jax.jit`` compiles once per (N, K). Conventions of every output:

* ``arrival`` (N,) float32 sorted ascending; ``+inf`` where ``valid`` is False;
* ``prompt``, ``output`` (N,) int32 (``>= 1``), ``cls`` (N,) int32 in [0, K);
* ``valid`` (N,) bool, a prefix: the padding entries (``valid = False``) come last and hold
  ``prompt = output = 1``, ``cls = 0``, ``arrival = +inf`` (they never arrive).

Classes have deterministic lengths: a class-k request has prompt ``l_k = prompt_len[k]`` and
output ``o_k = output_len[k]`` (the papers' setting). Time is in simulator units (slots when
``d0 = 1, d1 = 0``; the unit of ``d0`` and ``d1`` otherwise).

A generator keeps the first N requests of its process. Whether N was large enough is the
job of the sizing helpers (``*_num_requests``), plain numpy/Python functions computed once
outside JAX; a workload whose last entry is valid may have been truncated.

Generators
----------
* :func:`poisson` - independent Poisson processes, one per class.
* :func:`saturated` - infinite backlog: every request at time 0, classes i.i.d.
* :func:`bursty` - a two-state Markov-modulated Poisson process (MMPP).
* :func:`trace_replay` / :func:`trace_window` - windows of a recorded trace.
"""

from __future__ import annotations

import math
import operator

import jax
import jax.numpy as jnp
import numpy as np

from jaxsched.errors import JaxschedError
from jaxsched.core.model import Workload, memory_time

__all__ = [
    "poisson",
    "poisson_num_requests",
    "saturated",
    "saturated_num_requests",
    "bursty",
    "bursty_num_requests",
    "bursty_num_switches",
    "trace_replay",
    "trace_window",
    "trace_num_requests",
    "trace_period",
    "memory_time",
    "padded",
]


# --------------------------------------------------------------------------------------------
# helpers


def _static_count(value, name: str) -> int:
    try:
        n = operator.index(value)
    except TypeError:
        raise JaxschedError(
            f"{name} must be a Python int (a static shape), got {type(value).__name__}"
        ) from None
    if n < 1:
        raise JaxschedError(f"{name} must be >= 1, got {n}")
    return n


def _class_lengths(prompt_len, output_len, per_class=None, per_class_name="rate"):
    prompt_len = jnp.asarray(prompt_len, jnp.int32)
    output_len = jnp.asarray(output_len, jnp.int32)
    if prompt_len.ndim != 1 or prompt_len.shape[0] < 1:
        raise JaxschedError(
            f"prompt_len must be a non-empty 1-d array, got shape {prompt_len.shape}"
        )
    if output_len.shape != prompt_len.shape:
        raise JaxschedError(
            f"output_len has shape {output_len.shape}, prompt_len has {prompt_len.shape}: "
            "give one length per class"
        )
    if per_class is not None:
        per_class = jnp.asarray(per_class, jnp.float32)
        if per_class.shape != prompt_len.shape:
            raise JaxschedError(
                f"{per_class_name} has shape {per_class.shape}, prompt_len has "
                f"{prompt_len.shape}: give one value per class"
            )
    return prompt_len, output_len, per_class


def _assemble(times, cls, prompt_len, output_len, duration, n: int) -> Workload:
    """Merge per-class candidate times (K, M) into the first ``n`` arrivals before ``duration``."""
    k, m = times.shape
    flat_t = times.reshape(-1)
    flat_c = jnp.broadcast_to(cls, (k, m)).reshape(-1)
    if flat_t.shape[0] < n:  # fewer candidates than slots: pad with never-arriving entries
        pad = n - flat_t.shape[0]
        flat_t = jnp.concatenate([flat_t, jnp.full((pad,), jnp.inf, flat_t.dtype)])
        flat_c = jnp.concatenate([flat_c, jnp.zeros((pad,), flat_c.dtype)])
    flat_t, flat_c = jax.lax.sort((flat_t, flat_c), num_keys=1, is_stable=True)
    t, c = flat_t[:n], flat_c[:n]
    valid = t < jnp.asarray(duration, jnp.float32)
    return padded(t, prompt_len[c], output_len[c], c, valid)


def padded(arrival, prompt, output, cls, valid) -> Workload:
    """A :class:`Workload` with the padding conventions (module docstring) applied where
    ``valid`` is False."""
    return Workload(
        arrival=jnp.where(valid, arrival, jnp.inf).astype(jnp.float32),
        prompt=jnp.where(valid, prompt, 1).astype(jnp.int32),
        output=jnp.where(valid, output, 1).astype(jnp.int32),
        cls=jnp.where(valid, cls, 0).astype(jnp.int32),
        valid=valid,
    )


def _poisson_times(key, rate, m: int):
    """(K, m): the first m points of independent Poisson processes (+inf where rate <= 0)."""
    gaps = jax.random.exponential(key, (rate.shape[0], m), jnp.float32)
    cum = jnp.cumsum(gaps, axis=1)
    positive = rate > 0
    safe = jnp.where(positive, rate, 1.0)
    return jnp.where(positive[:, None], cum / safe[:, None], jnp.inf)


def _poisson_bound(mean: float) -> int:
    """A count exceeded by Poisson(mean) with negligible probability: mean + 8 sd + 16."""
    mean = max(float(mean), 0.0)
    return int(math.ceil(mean + 8.0 * math.sqrt(mean) + 16.0))


# --------------------------------------------------------------------------------------------
# Poisson


def poisson(key, prompt_len, output_len, rate, duration, num_requests: int) -> Workload:
    """Independent Poisson arrivals per class on ``[0, duration)``, merged by time.

    Class k arrives as a Poisson process of rate ``rate[k]`` (arrivals per unit time): its
    inter-arrival gaps are i.i.d. Exponential(rate[k]), so its count on ``[0, T)`` is
    Poisson(rate[k] T). Each class draws ``N = num_requests`` points (cumulative sums of
    exponential gaps); the union is sorted and its first N points are kept. This is exact:
    no class can contribute more than N of the first N. Points at or after ``duration`` and
    slots beyond the process's count are padding. Rates ``<= 0`` give no arrivals.

    Args:
      key: PRNG key.
      prompt_len, output_len: (K,) int, lengths of each class.
      rate: (K,) float, arrivals per unit time (traced; vmappable).
      duration: float, the horizon T (traced).
      num_requests: static N; size it with :func:`poisson_num_requests`.
    """
    n = _static_count(num_requests, "num_requests")
    prompt_len, output_len, rate = _class_lengths(prompt_len, output_len, rate, "rate")
    times = _poisson_times(key, rate, n)
    cls = jnp.arange(rate.shape[0], dtype=jnp.int32)[:, None]
    return _assemble(times, cls, prompt_len, output_len, duration, n)


def poisson_num_requests(rates, duration) -> int:
    """Static N for :func:`poisson`: ``sum_k ceil(lam_k T + 8 sqrt(lam_k T) + 16)`` (numpy).

    Each term exceeds class k's Poisson(lam_k T) count except with probability far below
    1e-12, so the merged workload is practically never truncated.
    """
    lam_t = np.maximum(np.asarray(rates, np.float64).reshape(-1), 0.0) * float(duration)
    return int(sum(_poisson_bound(x) for x in lam_t))


# --------------------------------------------------------------------------------------------
# saturated


def saturated(key, prompt_len, output_len, weight, num_requests: int) -> Workload:
    """Infinite backlog: N requests all arriving at time 0, classes i.i.d.

    ``P(class = k) = weight[k] / sum(weight)`` for every request independently (categorical
    draw). All N entries are valid; the simulator sees a queue that never empties as long as
    N is large enough (:func:`saturated_num_requests`).
    """
    n = _static_count(num_requests, "num_requests")
    prompt_len, output_len, weight = _class_lengths(prompt_len, output_len, weight, "weight")
    logits = jnp.log(jnp.maximum(weight, 0.0))  # weight 0 -> -inf: never drawn
    cls = jax.random.categorical(key, logits, shape=(n,)).astype(jnp.int32)
    valid = jnp.ones((n,), bool)
    return padded(jnp.zeros((n,), jnp.float32), prompt_len[cls], output_len[cls], cls, valid)


def saturated_num_requests(prompt_len, output_len, capacity, horizon, weight=None,
                           queue_size: int = 0) -> int:
    """Static N for :func:`saturated` so that the backlog never empties within ``horizon``.

    Let ``w_k = l_k o_k + (o_k + o_k^2)/2`` (:func:`memory_time`), the token-iterations a
    class-k request occupies at least. Memory is at most C per iteration, so by Little's law
    the requests completed in H iterations number at most ``H C / min_k w_k``; at most
    ``C / (min_k l_k + 1)`` are resident at any time. The bound is

        N = ceil(H C / min_k w_k + 2 C / (min_k l_k + 1)) + 64 + queue_size

    with the minima over classes of positive weight (all classes when ``weight`` is None);
    ``queue_size`` (the policy's look-ahead window) keeps that window full to the end.
    """
    l = np.asarray(prompt_len, np.float64).reshape(-1)
    o = np.asarray(output_len, np.float64).reshape(-1)
    if weight is not None:
        keep = np.asarray(weight, np.float64).reshape(-1) > 0
        if not keep.any():
            raise JaxschedError("saturated workload: every class weight is <= 0")
        l, o = l[keep], o[keep]
    w_min = float(memory_time(l, o).min())
    c = float(capacity)
    bound = float(horizon) * c / w_min + 2.0 * c / (float(l.min()) + 1.0)
    return int(math.ceil(bound)) + 64 + int(queue_size)


# --------------------------------------------------------------------------------------------
# bursty (Markov-modulated Poisson)


def bursty_num_switches(duration, mean_high, mean_low) -> int:
    """Static number of state switches drawn by :func:`bursty` (Python numbers only).

    A high+low cycle has mean ``m = mean_high + mean_low`` and variance ``mean_high^2 +
    mean_low^2 <= m^2``, so the number of cycles in T has variance at most its mean
    ``c = T / m + 1``; ``2 ceil(c + 8 sqrt(c) + 16)`` switches cover ``[0, T)`` except with
    negligible probability.
    """
    m = float(mean_high) + float(mean_low)
    if not m > 0:
        raise JaxschedError(f"bursty: mean_high + mean_low must be > 0, got {m}")
    return 2 * _poisson_bound(float(duration) / m + 1.0)


def bursty(key, prompt_len, output_len, rate, duration, num_requests: int, high_factor,
           low_factor, mean_high, mean_low, *, num_switches: int | None = None) -> Workload:
    """Two-state Markov-modulated Poisson arrivals on ``[0, duration)``.

    A hidden state alternates between *high* and *low*, with Exponential sojourn times of
    means ``mean_high`` and ``mean_low``; it starts in its stationary law,
    ``P(high) = pi_h = mean_high / (mean_high + mean_low)``. While in state s, class k
    arrives as a Poisson process of rate ``rate[k] * f_s`` (``f_high = high_factor``,
    ``f_low = low_factor``). Long-run (and, from the stationary start, exact) mean rate of
    class k: ``rate[k] (pi_h high_factor + (1 - pi_h) low_factor)``; counts are overdispersed
    relative to Poisson when the factors differ.

    Vectorized by thinning: each class draws ``N`` candidate arrivals at rate
    ``rate[k] * f_max`` (``f_max = max(high_factor, low_factor)``) and keeps each with
    probability ``f_{state(t)} / f_max``, where ``state(t)`` comes from ``searchsorted`` over
    the cumulative switch times (``num_switches`` sojourns, static; by default
    :func:`bursty_num_switches`, which needs ``duration``, ``mean_high`` and ``mean_low`` as
    Python numbers; pass ``num_switches`` to trace them). Size N with
    :func:`bursty_num_requests`, which bounds the candidates of every class.
    """
    n = _static_count(num_requests, "num_requests")
    prompt_len, output_len, rate = _class_lengths(prompt_len, output_len, rate, "rate")
    if num_switches is None:
        try:
            num_switches = bursty_num_switches(duration, mean_high, mean_low)
        except (TypeError, jax.errors.ConcretizationTypeError):
            raise JaxschedError(
                "bursty: duration, mean_high and mean_low are traced; pass num_switches "
                "(see bursty_num_switches)"
            ) from None
    s = _static_count(num_switches, "num_switches")
    k_start, k_sojourn, k_gap, k_keep = jax.random.split(key, 4)

    mean_high = jnp.asarray(mean_high, jnp.float32)
    mean_low = jnp.asarray(mean_low, jnp.float32)
    high_factor = jnp.asarray(high_factor, jnp.float32)
    low_factor = jnp.asarray(low_factor, jnp.float32)

    # Sojourn j (j = 0..s) is high iff start_high xor (j odd); it ends at switch[j].
    pi_high = mean_high / (mean_high + mean_low)
    start_high = jax.random.uniform(k_start) < pi_high
    is_high = start_high ^ (jnp.arange(s + 1) % 2 == 1)
    sojourn = jax.random.exponential(k_sojourn, (s,), jnp.float32)
    sojourn = sojourn * jnp.where(is_high[:s], mean_high, mean_low)
    switch = jnp.cumsum(sojourn)

    f_max = jnp.maximum(high_factor, low_factor)
    times = _poisson_times(k_gap, rate * f_max, n)  # (K, N) candidates
    state_high = is_high[jnp.searchsorted(switch, times, side="right")]
    factor = jnp.where(state_high, high_factor, low_factor)
    u = jax.random.uniform(k_keep, times.shape, jnp.float32)
    keep = u * f_max < factor
    times = jnp.where(keep, times, jnp.inf)
    cls = jnp.arange(rate.shape[0], dtype=jnp.int32)[:, None]
    return _assemble(times, cls, prompt_len, output_len, duration, n)


def bursty_num_requests(rates, duration, high_factor, low_factor) -> int:
    """Static N for :func:`bursty`: :func:`poisson_num_requests` at the peak rates.

    ``sum_k ceil(lam_k f_max T + 8 sqrt(lam_k f_max T) + 16)`` bounds every class's thinning
    candidates on ``[0, T)`` (hence also the kept arrivals) with negligible failure
    probability; ``f_max = max(high_factor, low_factor)``.
    """
    f_max = max(float(high_factor), float(low_factor), 0.0)
    return poisson_num_requests(np.asarray(rates, np.float64) * f_max, duration)


# --------------------------------------------------------------------------------------------
# traces


def trace_period(trace_arrival) -> float:
    """The period P of a trace replayed cyclically (numpy, seconds).

    With arrivals ``t_0 <= ... <= t_{T-1}`` (shifted so ``t_0 = 0``), ``P = t_{T-1} + g`` where
    ``g = t_{T-1} / (T - 1)`` is the mean inter-arrival gap: the copy of the trace that follows
    starts one mean gap after its last request. ``P = 1`` when the trace spans no time.
    """
    t = np.asarray(trace_arrival, np.float64).reshape(-1)
    if t.size == 0:
        raise JaxschedError("trace has no requests")
    span = float(t[-1] - t[0])
    if t.size < 2 or not span > 0:
        return 1.0
    return span + span / (t.size - 1)


def _period_jax(t):
    n = t.shape[0]
    span = t[-1]
    if n < 2:
        return jnp.float32(1.0)
    return jnp.where(span > 0, span + span / (n - 1), 1.0)


def _trace_arrays(trace_arrival, trace_prompt, trace_output, class_bounds, cls=None):
    t = jnp.asarray(trace_arrival, jnp.float32)
    p = jnp.asarray(trace_prompt, jnp.int32)
    o = jnp.asarray(trace_output, jnp.int32)
    if t.ndim != 1 or t.shape[0] < 1:
        raise JaxschedError(f"trace_arrival must be a non-empty 1-d array, got shape {t.shape}")
    if p.shape != t.shape or o.shape != t.shape:
        raise JaxschedError(
            f"trace arrays differ in shape: arrival {t.shape}, prompt {p.shape}, output {o.shape}"
        )
    if cls is not None:
        c = jnp.asarray(cls, jnp.int32).reshape(t.shape)
    elif class_bounds is None:
        c = jnp.zeros(t.shape, jnp.int32)
    else:
        b = jnp.asarray(class_bounds, jnp.int32).reshape(-1)
        c = jnp.searchsorted(b, o, side="left").astype(jnp.int32)
    return t - t[0], p, o, c


def trace_window(trace_arrival, trace_prompt, trace_output, offset, duration, time_scale,
                 num_requests: int, class_bounds=None, cls=None) -> Workload:
    """The requests of a cyclic trace in the window ``[offset, offset + duration / time_scale)``.

    Trace times (seconds, shifted so the first request is at 0) are repeated with period
    P (:func:`trace_period`): copy m of request j arrives at ``t_j + m P``. The window starts
    at ``offset`` trace seconds (``0 <= offset < P``) and holds the requests with
    ``(t_j + m P - offset) * time_scale < duration``; their simulator arrival times are
    ``(t_j + m P - offset) * time_scale``. ``time_scale`` converts trace seconds to simulator
    units (1000 when d0, d1 are in ms; < 1 compresses the trace, i.e. more load). Lengths are
    the trace's. Classes: 0 for all, or with ``class_bounds`` ``b_0 < b_1 < ...`` (K-1,)
    the class of a request is the number of bounds below its output length
    (``o <= b_0`` -> 0, ``b_0 < o <= b_1`` -> 1, ...), or ``cls`` (T,) gives each request's.
    Deterministic; see :func:`trace_replay`.
    """
    n = _static_count(num_requests, "num_requests")
    t, p, o, c = _trace_arrays(trace_arrival, trace_prompt, trace_output, class_bounds, cls)
    size = t.shape[0]
    period = _period_jax(t)
    offset = jnp.asarray(offset, jnp.float32)
    first = jnp.searchsorted(t, offset, side="left")  # first request at or after the offset
    k = first + jnp.arange(n)  # index into the cyclically unrolled trace
    j, cycle = k % size, k // size
    rel = (t[j] - offset) + cycle.astype(jnp.float32) * period
    rel = jax.lax.cummax(jnp.maximum(rel, 0.0))  # guard monotonicity against float32 rounding
    arrival = rel * jnp.asarray(time_scale, jnp.float32)
    valid = arrival < jnp.asarray(duration, jnp.float32)
    return padded(arrival, p[j], o[j], c[j], valid)


def trace_replay(key, trace_arrival, trace_prompt, trace_output, duration, time_scale,
                 num_requests: int, random_offset: bool = True, class_bounds=None,
                 cls=None) -> Workload:
    """A window of ``duration`` simulator units of a recorded trace, at a random offset.

    The offset is ``U * P`` with ``U ~ Uniform[0, 1)`` drawn from ``key`` and P the trace's
    cyclic period (:func:`trace_period`); a window running past the end of the trace wraps
    around to its start, shifted by P so that time stays continuous (:func:`trace_window`).
    Replicas with different keys start at different offsets. With ``random_offset=False``
    the window starts at the first request (offset 0) and ``key`` is unused. Size N with
    :func:`trace_num_requests`.
    """
    if random_offset:
        t = jnp.asarray(trace_arrival, jnp.float32)
        offset = jax.random.uniform(key, (), jnp.float32) * _period_jax(t - t[0])
    else:
        offset = 0.0
    return trace_window(trace_arrival, trace_prompt, trace_output, offset, duration,
                        time_scale, num_requests, class_bounds, cls)


def trace_num_requests(trace_arrival, duration, time_scale) -> int:
    """Static N for :func:`trace_replay`: the most trace requests in any window (numpy).

    The window is ``L = duration / time_scale`` trace seconds of the cyclic trace. Writing
    ``L = q P + r`` (``0 <= r < P``), a window holds ``q T`` requests plus those of a window of
    length r, and a busiest window can be taken to start at a request, so the maximum is
    ``q T + max_j #{i : t_j <= t_i (+P) < t_j + r}``. One is added for float32 rounding at
    the window's edge.
    """
    t = np.asarray(trace_arrival, np.float64).reshape(-1)
    if t.size == 0:
        raise JaxschedError("trace has no requests")
    t = t - t[0]
    period = trace_period(t)
    length = float(duration) / float(time_scale)
    if not length >= 0 or not math.isfinite(length):
        raise JaxschedError(
            f"window length duration/time_scale must be finite and >= 0, got {length}"
        )
    q, r = divmod(length, period)
    unrolled = np.concatenate([t, t + period])
    in_rest = np.searchsorted(unrolled, t + r, side="left") - np.arange(t.size)
    return int(q) * t.size + int(in_rest.max()) + 1
