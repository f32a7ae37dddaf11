"""A conditional that stays a branch under ``vmap``: skip a phase the whole batch can skip.

``jax.vmap`` of ``lax.cond`` with a batched predicate becomes a ``select``: both branches run
for every member, every iteration. Some phases of the step are rare for each workload
(eviction runs only when memory overflows; compaction only when an admission finds no room
at the end of the slots), so paying for them every iteration costs the batch most of its time
(measured: without the eviction phase the tight-loop setting's step was 1.46x faster, though
that phase is needed in only 46% of its iterations per workload).

:func:`cond_any` is ``lax.cond`` unbatched; under ``vmap`` (at every level: nested maps
keep it a branch) it runs ``true_fn`` on *every* member when *any* member's predicate holds,
and ``false_fn`` otherwise. That is exact when ``true_fn`` is harmless where the predicate is
false, i.e. its result means the same there as ``false_fn``'s: an eviction phase that evicts
nothing without an overflow, or a compaction (the slots' order is kept; only free slots
move). Built on :func:`jax.custom_batching.custom_vmap`, so it is for the hard path: it has
no derivative rule (the relaxed modes call their phases directly).
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
from jax.custom_batching import custom_vmap

__all__ = ["cond_any"]


def cond_any(pred: jax.Array, true_fn: Callable, false_fn: Callable, *operands):
    """``true_fn(*operands) if pred else false_fn(*operands)``; under ``vmap``, ``true_fn``
    on the whole batch iff ``any(pred)``. Both functions return the same pytree type; every
    value they use is an operand (no closed-over tracer)."""

    @custom_vmap
    def branch(pred, *operands):
        return jax.lax.cond(pred, true_fn, false_fn, *operands)

    @branch.def_vmap
    def batched(axis_size, in_batched, pred, *operands):
        pred_batched, *operands_batched = in_batched
        axes = tuple(jax.tree.map(lambda b: 0 if b else None, ob) for ob in operands_batched)
        taken = jnp.any(pred) if pred_batched else pred
        out = cond_any(taken, jax.vmap(true_fn, in_axes=axes, axis_size=axis_size),
                       jax.vmap(false_fn, in_axes=axes, axis_size=axis_size), *operands)
        return out, jax.tree.map(lambda _: True, out)

    return branch(pred, *operands)
