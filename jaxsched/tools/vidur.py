"""Iteration times from Vidur's per-operator GPU profiles, and the split ``tau`` fitted to them.

Vidur (Agrawal et al., MLSys 2024; github.com/microsoft/vidur, MIT license) ships measured
times of every operator of a model on a GPU, in milliseconds per call of one layer, under
``data/profiling/compute/<gpu>/<model>/``:

* ``mlp.csv``: the token-wise operators (layer norms, QKV and output projections, rotary
  embedding, the MLP's projections and activation, residual adds) per ``num_tokens`` in the
  batch; the embedding ``emb`` once per iteration;
* ``attention.csv``: ``attn_decode`` per ``(batch_size, kv_cache_size)`` (``batch_size``
  requests decoding one token each against ``kv_cache_size`` cached tokens) and
  ``attn_prefill`` per ``(prefill_chunk_size, kv_cache_size)``, plus the output reshape.

An iteration of ``L`` layers then takes, as Vidur composes it (no CPU overheads here),

    decode of ``b`` requests at context ``k``:  ``emb(b) + L (mlp(b) + attn_decode(b, k))``
    prefill of one chunk of ``c`` tokens:      ``emb(c) + L (mlp(c) + attn_prefill(c, 0))``

(``mlp(n)``: the token-wise operators at ``n`` tokens, interpolated linearly between profiled
token counts). These are samples ``(P, D, seconds)`` of the model's iteration time
``tau = d0 + d1_prefill P + d1_context D`` (:mod:`jaxsched.core.model`): a decode has ``P = 0``,
``D = b k``; a prefill ``P = c``, ``D = 0``. :func:`fit_profile` fits ``d0, d1_prefill,
d1_context >= 0`` by non-negative least squares
(:func:`jaxsched.engine.calibrate.fit_split_tau`) and, for comparison, the single ``d1`` of
``tau = d0 + d1 (P + D)``. ``d2`` (per prefilling request) is not fitted: one prefill per
sample cannot separate it from ``d0``. Prefill rows with cached context (chunked prefill,
``kv_cache_size > 0``) are left out: the model has no term for a chunk's earlier context.
``docs/scripts/fit_vidur_profile.py`` runs this on the CSV files.
"""

from __future__ import annotations

import csv
import dataclasses
import math
from pathlib import Path
from typing import Sequence

import numpy as np

from jaxsched.engine.calibrate import fit_split_tau, fit_tau
from jaxsched.errors import JaxschedError

__all__ = [
    "IterationSample",
    "ProfileFit",
    "read_mlp",
    "read_attention",
    "iteration_samples",
    "fit_profile",
]

_MS = 1e-3


@dataclasses.dataclass(frozen=True)
class IterationSample:
    """One iteration composed from Vidur's operator times."""

    kind: str  # "decode" or "prefill"
    batch: int  # b (decode) or 1 (prefill)
    tokens: int  # c (prefill) or b (decode): tokens through the token-wise operators
    context: int  # k (decode) or 0
    seconds: float

    @property
    def prefill_tokens(self) -> int:  # P
        return self.tokens if self.kind == "prefill" else 0

    @property
    def context_tokens(self) -> int:  # D
        return self.batch * self.context if self.kind == "decode" else 0


@dataclasses.dataclass(frozen=True)
class ProfileFit:
    """``tau = d0 + d1_prefill P + d1_context D`` fitted to the samples (seconds), its error,
    and the single-``d1`` fit on the same samples."""

    d0: float
    d1_prefill: float
    d1_context: float
    rms: float  # seconds
    rel_rms: float  # RMS / mean time
    mean_abs_rel: float  # mean |residual| / time
    single_d0: float
    single_d1: float
    single_rel_rms: float
    single_mean_abs_rel: float
    samples: int

    def predict(self, prefill_tokens, context_tokens):
        return self.d0 + self.d1_prefill * prefill_tokens + self.d1_context * context_tokens


def _rows(path: Path, tp: int) -> list[dict]:
    try:
        with open(path, newline="") as f:
            rows = list(csv.DictReader(f))
    except OSError as err:
        raise JaxschedError(f"{path}: cannot read: {err.strerror or err}") from None
    if not rows or "num_tensor_parallel_workers" not in rows[0]:
        raise JaxschedError(f"{path}: not a Vidur profile (no num_tensor_parallel_workers)")
    return [r for r in rows if int(r["num_tensor_parallel_workers"]) == tp]


def _median(row: dict, op: str) -> float:
    value = row.get(f"time_stats.{op}.median", "")
    return float(value) if value not in ("", None) else 0.0


def read_mlp(path: str | Path, tp: int = 1) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(num_tokens, per-layer ms, embedding ms)`` of ``mlp.csv`` at ``tp`` GPUs, sorted by
    tokens (the per-layer time sums every profiled operator but the embedding; duplicate token
    counts are averaged)."""
    rows = _rows(Path(path), tp)
    ops = sorted({k[len("time_stats."):-len(".median")] for k in rows[0]
                  if k.startswith("time_stats.") and k.endswith(".median")} - {"emb"})
    acc: dict[int, list[tuple[float, float]]] = {}
    for r in rows:
        n = int(r["num_tokens"])
        acc.setdefault(n, []).append((sum(_median(r, op) for op in ops), _median(r, "emb")))
    tokens = np.array(sorted(acc))
    layer = np.array([np.mean([a for a, _ in acc[n]]) for n in tokens])
    emb = np.array([np.mean([e for _, e in acc[n]]) for n in tokens])
    return tokens, layer, emb


def read_attention(path: str | Path, tp: int = 1) -> tuple[list, list]:
    """``(decode, prefill)`` rows of ``attention.csv`` at ``tp`` GPUs: decode as
    ``(batch_size, kv_cache_size, ms)`` with ``ms = attn_decode + reshapes``, prefill as
    ``(prefill_chunk_size, kv_cache_size, ms)`` with ``ms = attn_prefill + reshapes``."""
    decode, prefill = [], []
    for r in _rows(Path(path), tp):
        reshape = _median(r, "attn_input_reshape") + _median(r, "attn_output_reshape")
        if r["is_prefill"].strip().lower() == "true":
            prefill.append((int(r["prefill_chunk_size"]), int(r["kv_cache_size"]),
                            _median(r, "attn_prefill") + reshape))
        else:
            decode.append((int(r["batch_size"]), int(r["kv_cache_size"]),
                           _median(r, "attn_decode") + reshape))
    return decode, prefill


def iteration_samples(mlp, attention, num_layers: int) -> list[IterationSample]:
    """The iterations of the module docstring, one per decode row and per prefill row
    without cached context; ``mlp`` and ``attention`` as :func:`read_mlp` and
    :func:`read_attention` return them."""
    tokens, layer, emb = mlp
    decode, prefill = attention

    def token_wise(n: int) -> tuple[float, float]:
        if not tokens[0] <= n <= tokens[-1]:
            raise JaxschedError(f"mlp profile: {n} tokens outside the profiled "
                                f"{tokens[0]}..{tokens[-1]}")
        return float(np.interp(n, tokens, layer)), float(np.interp(n, tokens, emb))

    out = []
    for b, k, ms in decode:
        lay, e = token_wise(b)
        out.append(IterationSample("decode", b, b, k, _MS * (e + num_layers * (lay + ms))))
    for c, k, ms in prefill:
        if k != 0:
            continue
        lay, e = token_wise(c)
        out.append(IterationSample("prefill", 1, c, 0, _MS * (e + num_layers * (lay + ms))))
    return out


def fit_profile(samples: Sequence[IterationSample]) -> ProfileFit:
    """Non-negative least squares of the split ``tau`` and of the single-``d1`` one."""
    if not any(s.kind == "prefill" for s in samples) or not any(s.kind == "decode"
                                                                  for s in samples):
        raise JaxschedError("the fit needs decode and prefill samples")
    p = np.array([s.prefill_tokens for s in samples], np.float64)
    d = np.array([s.context_tokens for s in samples], np.float64)
    t = np.array([s.seconds for s in samples], np.float64)
    d0, dp, dc, _, rms, rel, mar = fit_split_tau(p, d, t)
    s0, s1, _, _, s_rel, s_mar = fit_tau(p + d, t)
    if not all(math.isfinite(x) for x in (d0, dp, dc)):
        raise JaxschedError("the fit did not converge")
    return ProfileFit(d0, dp, dc, rms, rel, mar, s0, s1, s_rel, s_mar, len(samples))
