"""Service-induced congestion: Ao, Dong, Luo, Simchi-Levi (arXiv 2606.15555; PAPERS.md Sec. 3).

Saturated greedy admission: its eviction-free fixed point ``x* = 2M / (l1 (2 l0 + l1 + 1))``
(``= M / memory_time(l0, l1)``), the maximal-eviction limit cycle, the gcd test of decode
lengths, coprime suggestions, the heterogeneous fixed point ``x* = M / sum_k p_k C_k``, and an
oscillation detector for simulated memory traces. :func:`congestion_homogeneous`,
:func:`congestion_heterogeneous`, :func:`decode_gcd`, :func:`coprime_decode_lengths`,
:func:`detect_oscillation`; each docstring states its equation.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from functools import reduce
from typing import Sequence

import numpy as np

from jaxsched.core.model import memory_time
from jaxsched.errors import JaxschedError
from jaxsched.theory.inputs import _vec, _num, _same_len, _arr, _tup, _class_prob

__all__ = [
    "greedy_fixed_point",
    "greedy_cycle_throughput",
    "GreedyCongestion",
    "congestion_homogeneous",
    "DecodeGcd",
    "decode_gcd",
    "HeteroCongestion",
    "congestion_heterogeneous",
    "CoprimeSuggestion",
    "coprime_decode_lengths",
    "Oscillation",
    "detect_oscillation",
]


def greedy_fixed_point(capacity, prompt_len, output_len):
    """Saturated greedy's eviction-free fixed point ``x* = 2M / (l1 (2 l0 + l1 + 1))``.

    Admissions (= completions) per iteration; Ao, Dong, Luo, Simchi-Levi (arXiv 2606.15555),
    homogeneous saturated regime (PAPERS.md Sec. 3). Equals ``M / memory_time(l0, l1)``.
    Elementwise; numpy or ``jax.numpy``.
    """
    m, l0, l1 = _arr(capacity), _arr(prompt_len), _arr(output_len)
    return 2 * m / (l1 * (2 * l0 + l1 + 1))


def greedy_cycle_throughput(capacity, prompt_len, output_len):
    """Throughput of the maximal-eviction limit cycle ``M / (l1 (l0 + l1))`` per iteration.

    arXiv 2606.15555 (PAPERS.md Sec. 3): a cohort of ``M/(l0+1)`` is admitted, evictions
    trim it to ``M/(l0+1+j)`` at stage ``j``, ``M/(l0+l1)`` complete every ``l1`` iterations.
    Elementwise; numpy or ``jax.numpy``.
    """
    m, l0, l1 = _arr(capacity), _arr(prompt_len), _arr(output_len)
    return m / (l1 * (l0 + l1))


# --------------------------------------------------------------------------------------------
# Service-induced congestion (Ao, Dong, Luo, Simchi-Levi, arXiv 2606.15555)
# --------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class GreedyCongestion:
    """Saturated greedy, homogeneous workload (see :func:`congestion_homogeneous`)."""

    memory_time: float  # C = l1 (l0 + (l1 + 1)/2)
    fixed_point: float  # x* = 2M / (l1 (2 l0 + l1 + 1)), admissions = completions per iteration
    cycle_throughput: float  # M / (l1 (l0 + l1)), completions per iteration on the worst cycle
    ratio: float  # cycle / fixed point = (2 l0 + l1 + 1) / (2 (l0 + l1))
    cycle_admissions: float  # M / (l0 + 1), the cohort admitted once per cycle
    cycle_period: int  # l1 iterations


def congestion_homogeneous(capacity: float, prompt_len: float, output_len: int) -> GreedyCongestion:
    """Greedy admission with least-progressed eviction, saturated, one class (arXiv 2606.15555, PAPERS.md Sec. 3).

    Stage convention of the paper: a request at stage ``j = 0..l1-1`` uses ``l0 + 1 + j``
    tokens (jaxsched's ``l + j`` after ``j`` tokens, plus the slot of the next one)::

        x*    = 2M / (l1 (2 l0 + l1 + 1))   eviction-free fixed point (unstable)
        cycle = M / (l1 (l0 + l1))           maximal-eviction cycle (M/(l0+1), 0, ..., 0), period l1
        ratio = (2 l0 + l1 + 1) / (2 (l0 + l1))   -> 1/2 as l1/l0 grows

    Greedy is unstable for Poisson rates above ``cycle`` even when below ``x*`` (the paper's
    M = 2000, l0 = 10, l1 = 40: cycle 1.00, x* 1.64). Raises :class:`JaxschedError` on
    malformed input.
    """
    fn = "congestion_homogeneous"
    m = _num(fn, "capacity", capacity, low=0, strict=True)
    l0 = _num(fn, "prompt_len", prompt_len, low=0)
    l1 = _num(fn, "output_len", output_len, low=1)
    if l1 != round(l1):
        raise JaxschedError(f"{fn}: output_len must be an integer, got {output_len!r}")
    x = float(greedy_fixed_point(m, l0, l1))
    cyc = float(greedy_cycle_throughput(m, l0, l1))
    return GreedyCongestion(memory_time=float(memory_time(l0, l1)), fixed_point=x,
                            cycle_throughput=cyc, ratio=(2 * l0 + l1 + 1) / (2 * (l0 + l1)),
                            cycle_admissions=m / (l0 + 1), cycle_period=int(l1))


@dataclasses.dataclass(frozen=True)
class DecodeGcd:
    """The gcd test of decode lengths (see :func:`decode_gcd`)."""

    lengths: tuple[int, ...]  # distinct decode lengths, ascending
    gcd: int  # g
    stable_predicted: bool  # g == 1
    unstable_modes: int  # g - 1 synchronized modes just outside the unit circle
    note: str


def decode_gcd(output_len: Sequence[int]) -> DecodeGcd:
    """Synchronization test of arXiv 2606.15555 (PAPERS.md Sec. 3), prompt-dominated regime.

    With ``g = gcd`` of the (distinct) decode lengths: ``g > 1`` makes the eviction-free
    equilibrium unstable, with ``g - 1`` synchronized modes just outside the unit circle;
    ``g = 1`` makes it globally asymptotically stable. The theorem holds in the regime
    ``l0 = r L, M = c L, L`` large; the prompt length needed grows like the cube of the
    longer decode length, so short prompts can be unstable even with ``g = 1``. A single
    length ``l1 > 1`` gives ``g = l1``, consistent with the homogeneous instability.
    """
    fn = "decode_gcd"
    o = _vec(fn, "output_len", output_len, low=1, integer=True)
    lengths = tuple(sorted({int(v) for v in o}))
    g = reduce(math.gcd, lengths)
    if g == 1:
        note = "gcd 1: equilibrium stable in the prompt-dominated regime"
    else:
        note = f"gcd {g}: {g - 1} synchronized mode(s), eviction-free equilibrium unstable"
    return DecodeGcd(lengths=lengths, gcd=g, stable_predicted=g == 1, unstable_modes=g - 1,
                     note=note)


@dataclasses.dataclass(frozen=True)
class HeteroCongestion:
    """Saturated greedy, heterogeneous classes (see :func:`congestion_heterogeneous`)."""

    share: tuple[float, ...]  # p_k (normalized)
    memory_time: tuple[float, ...]  # C_k = l1_k (l0_k + (l1_k + 1)/2)
    fixed_point: float  # x* = M / sum_k p_k C_k
    class_admissions: tuple[float, ...]  # p_k x*
    gcd: DecodeGcd


def congestion_heterogeneous(capacity: float, prompt_len: Sequence[float],
                             output_len: Sequence[int],
                             share: Sequence[float] | None = None) -> HeteroCongestion:
    """Eviction-free fixed point with class shares (arXiv 2606.15555, PAPERS.md Sec. 3).

    ``x* = M / sum_k p_k C_k`` with ``C_k = l1_k (l0_k + (l1_k + 1)/2)`` (= :func:`memory_time`)
    and admissions split by shares ``p_k`` (normalized; default uniform), plus the gcd test
    of :func:`decode_gcd`. Raises :class:`JaxschedError` on malformed input.
    """
    fn = "congestion_heterogeneous"
    m = _num(fn, "capacity", capacity, low=0, strict=True)
    l0 = _vec(fn, "prompt_len", prompt_len, low=0)
    l1 = _vec(fn, "output_len", output_len, low=1, integer=True)
    _same_len(fn, prompt_len=l0, output_len=l1)
    p = _class_prob(fn, l0.size, None, share)
    c = memory_time(l0, l1)
    x = m / float(np.sum(p * c))
    return HeteroCongestion(share=_tup(p), memory_time=_tup(c), fixed_point=x,
                            class_admissions=_tup(p * x), gcd=decode_gcd(l1))


@dataclasses.dataclass(frozen=True)
class CoprimeSuggestion:
    """Nearby decode lengths with gcd 1 (see :func:`coprime_decode_lengths`)."""

    original: tuple[int, ...]  # distinct lengths, ascending
    suggested: tuple[int, ...]  # same order: suggested[i] replaces original[i]
    gcd_before: int
    gcd_after: int  # 1
    total_change: int  # sum of decrements
    mode: str  # "set" or "pairwise"


def coprime_decode_lengths(output_len: Sequence[int], mode: str = "set",
                           max_total_change: int = 64) -> CoprimeSuggestion:
    """Suggest nearby decode lengths that desynchronize completions (arXiv 2606.15555, remedies).

    The paper's remedy mixes decode lengths so their gcd is 1 (its example: tiers
    128/256/512 -> 127/255/509). Lengths only go down (a tier's cap is not exceeded), stay
    ``>= 1`` and distinct.

    * ``mode="set"`` (default): the smallest total decrement making the gcd of the whole set
      1 (the condition of :func:`decode_gcd`); ties prefer changing longer lengths (smallest
      sum of relative changes). 128/256/512 -> 128/256/511.
    * ``mode="pairwise"``: stronger, every pair coprime (no two classes synchronize with
      each other). Greedy in ascending order: keep the shortest, lower each next length by
      the least amount that makes it coprime with all kept ones. 128/256/512 -> 128/255/511.

    Already-coprime inputs come back unchanged. Raises :class:`JaxschedError` on malformed
    input or if no solution within ``max_total_change`` exists (set mode).
    """
    fn = "coprime_decode_lengths"
    o = _vec(fn, "output_len", output_len, low=1, integer=True)
    lengths = sorted({int(v) for v in o})
    g0 = reduce(math.gcd, lengths)
    if mode == "set":
        best = tuple(lengths)
        total = 0
        if g0 != 1:
            found = None
            m = len(lengths)
            for d in range(1, max_total_change + 1):
                cands = []
                for combo in itertools.combinations_with_replacement(range(m), d):
                    dec = [0] * m
                    for i in combo:
                        dec[i] += 1
                    new = [x - di for x, di in zip(lengths, dec)]
                    if min(new) < 1 or len(set(new)) < m or reduce(math.gcd, new) != 1:
                        continue
                    cost = sum(di / x for di, x in zip(dec, lengths))
                    cands.append((cost, tuple(-di for di in dec), tuple(new)))
                if cands:
                    found = min(cands)[2]
                    total = d
                    break
            if found is None:
                raise JaxschedError(f"{fn}: no lengths within total change {max_total_change} "
                                    f"have gcd 1")
            best = found
    elif mode == "pairwise":
        kept: list[int] = []
        for x in lengths:
            y = x
            while y >= 1 and (y in kept or any(math.gcd(y, z) != 1 for z in kept)):
                y -= 1
            if y < 1:
                raise JaxschedError(f"{fn}: cannot lower {x} to a length coprime with {kept}")
            kept.append(y)
        best = tuple(kept)
        total = sum(x - y for x, y in zip(lengths, kept))
    else:
        raise JaxschedError(f"{fn}: mode must be 'set' or 'pairwise', got {mode!r}")
    return CoprimeSuggestion(original=tuple(lengths), suggested=tuple(best), gcd_before=g0,
                             gcd_after=reduce(math.gcd, best), total_change=int(total),
                             mode=mode)


@dataclasses.dataclass(frozen=True)
class Oscillation:
    """Periodicity of a memory trace (see :func:`detect_oscillation`)."""

    oscillating: bool  # strength >= threshold and relative_amplitude >= min_relative_amplitude
    period: float  # iterations: the best candidate, reported even when not oscillating (nan if none)
    amplitude: float  # peak-to-trough of the phase-averaged cycle (5-95% range if no period)
    relative_amplitude: float  # amplitude / |mean|
    strength: float  # autocorrelation of the detrended trace at the period, in [0, 1]
    mean: float  # mean of the trace after warm-up
    reason: str


def detect_oscillation(memory_trace: Sequence[float], *, warmup: int = 0, min_period: int = 2,
                       max_period: int | None = None, threshold: float = 0.5,
                       min_relative_amplitude: float = 0.02) -> Oscillation:
    """Detect periodic oscillation in a simulated memory trace (one value per iteration).

    Motivated by the limit cycles of arXiv 2606.15555 (PAPERS.md Sec. 3): saturated greedy
    converges to a maximal-eviction cycle of period ``l1``; heterogeneous lengths with
    ``gcd > 1`` oscillate in synchronized modes. Method:

    1. Drop ``warmup`` samples; remove the least-squares line (slow drift is not oscillation).
    2. Autocorrelation ``r(tau) = [sum_t y_t y_{t+tau} / (n - tau)] / [sum_t y_t^2 / n]``
       (overlap-normalized, so periodic signals keep ``r ~ 1`` at their period).
    3. Candidates are local maxima of ``r`` at lags in ``[min_period, max_period]``
       (default ``n // 4``: at least four cycles in view, so a wandering trace's one or two
       slow swings do not count; at most ``n // 2``) after its first zero crossing (so a slowly
       decaying, aperiodic correlation does not count). The period is the smallest candidate
       with ``r >= 0.9 * max r`` (a multiple of the period scores as high as the period),
       refined by a parabola through ``r`` at the neighbouring lags.
    4. ``strength = clip(min(r(period), r(2 period)), 0, 1)`` (the second term only when
       ``2 period <= n/2``; ``r`` interpolated linearly): the fraction of the variance that
       repeats, twice (a chance peak of a slowly wandering trace rarely repeats).
       ``amplitude`` = peak-to-trough of the phase-averaged cycle (noise averages out);
       ``relative_amplitude = amplitude / |mean|``.

    Any per-iteration series works (residents, evictions per iteration, ...). Note that on
    the congestion paper's maximal-eviction cycle the memory *after admission* stays within
    ``l0 + 1`` tokens of ``C`` (evictions trim the cohort, completions are refilled at once):
    the cycle shows in the number of residents and in completions, not in that memory trace.

    ``oscillating`` iff ``strength >= threshold`` (default 0.5: the periodic part carries at
    least as much variance as the noise) and ``relative_amplitude >= min_relative_amplitude``
    (default 2%: tiny ripples do not count). A constant trace is not oscillating. Raises
    :class:`JaxschedError` on non-finite values or fewer than ``max(8, 4 min_period)``
    samples after warm-up.
    """
    fn = "detect_oscillation"
    x = np.asarray(memory_trace, dtype=float).ravel()
    if not np.all(np.isfinite(x)):
        raise JaxschedError(f"{fn}: memory_trace must be finite")
    if not 0 <= int(warmup) < max(x.size, 1):
        raise JaxschedError(f"{fn}: warmup must be in [0, {x.size}), got {warmup!r}")
    if int(min_period) < 2:
        raise JaxschedError(f"{fn}: min_period must be >= 2, got {min_period!r}")
    x = x[int(warmup):]
    n = x.size
    min_period = int(min_period)
    if n < max(8, 4 * min_period):
        raise JaxschedError(f"{fn}: need at least {max(8, 4 * min_period)} samples after "
                            f"warm-up, got {n}")
    mean = float(x.mean())
    t = np.arange(n, dtype=float)
    slope, icpt = np.polyfit(t, x, 1)
    y = x - (slope * t + icpt)

    def rel(a: float) -> float:
        if mean != 0:
            return a / abs(mean)
        return 0.0 if a == 0 else math.inf

    def none(reason: str, amp: float | None = None) -> Oscillation:
        if amp is None:
            amp = float(np.percentile(y, 95) - np.percentile(y, 5))
        return Oscillation(False, math.nan, amp, rel(amp), 0.0, mean, reason)

    scale = max(float(np.abs(x).max()), 1e-300)
    if float(y.std()) <= 1e-9 * scale:
        return none("constant after removing the linear trend", 0.0)
    hi_lag = n // 4 if max_period is None else min(int(max_period), n // 2)
    if hi_lag < min_period:
        raise JaxschedError(f"{fn}: max_period {max_period!r} is below min_period {min_period}")
    f = np.fft.rfft(y, 2 * n)
    ac = np.fft.irfft(f * np.conj(f), 2 * n)[:n]
    r = (ac / (n - np.arange(n))) / (ac[0] / n)
    below = np.nonzero(r[1:] < 0)[0]
    if below.size == 0:
        return none("autocorrelation never crosses zero: no period")
    start = max(min_period, int(below[0]) + 1)
    lags = np.arange(start, min(hi_lag, n - 2) + 1)
    if lags.size == 0:
        return none("first zero crossing beyond max_period: no period")
    peaks = lags[(r[lags] >= r[lags - 1]) & (r[lags] >= r[lags + 1])]
    if peaks.size == 0:
        return none("no autocorrelation peak in [min_period, max_period]")
    best = float(r[peaks].max())
    if best <= 0:
        return none("no positive autocorrelation peak")
    lag = int(peaks[np.nonzero(r[peaks] >= 0.9 * best)[0][0]])
    a, b, c = r[lag - 1], r[lag], r[lag + 1]
    denom = a - 2 * b + c
    period = lag + (0.5 * (a - c) / denom if denom < 0 else 0.0)
    # a real oscillation repeats: also require the correlation two periods apart
    rep = float(np.interp(2 * period, np.arange(n), r)) if 2 * period <= n // 2 else b
    strength = float(np.clip(min(b, rep), 0.0, 1.0))
    bins = max(2, int(round(period)))
    phase = np.minimum((np.mod(t, period) / period * bins).astype(int), bins - 1)
    counts = np.bincount(phase, minlength=bins)
    profile = np.bincount(phase, weights=y, minlength=bins)[counts > 0] / counts[counts > 0]
    amp = float(profile.max() - profile.min())
    ra = rel(amp)
    osc = strength >= threshold and ra >= min_relative_amplitude
    if osc:
        reason = f"period {period:.4g}, strength {strength:.3g} >= {threshold:g}"
    elif strength < threshold:
        reason = f"weak periodicity: strength {strength:.3g} < {threshold:g}"
    else:
        reason = f"relative amplitude {ra:.3g} < {min_relative_amplitude:g}"
    return Oscillation(bool(osc), float(period), amp, ra, strength, mean, reason)
