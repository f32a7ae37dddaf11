"""Exact inclusive prefix sums of short vectors, faster on CPU than ``jnp.cumsum``.

``jnp.cumsum`` lowers to a ``reduce-window`` that XLA:CPU runs as a scalar loop (about 7 ns
per element for 256 slots x 256 workloads). The step's prefix sums are over at most a few
hundred slots or window positions, so two exact rewrites of only elementwise work pay:

* :func:`count_through` (a mask's running count): the mask packed 32 to a ``uint32`` word,
  ``count_i = sum_{w < i // 32} popcount(word_w) + popcount(word_{i // 32} & low_{i % 32})``
  with ``low_j = 2^{j+1} - 1``; about 9x ``jnp.cumsum`` at 256 slots.
* :func:`prefix_sum` (integers): Hillis-Steele doubling, ``x <- x + shift(x, 2^j)`` for
  ``j = 0 .. ceil(log2 n) - 1``; about 1.7x ``jnp.cumsum`` at 256 slots.

Both equal ``jnp.cumsum`` bit for bit (integer addition is associative).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["count_through", "prefix_sum"]

_WORD = 32
_LANE = np.arange(_WORD, dtype=np.uint32)
_LOW = np.array([(1 << (j + 1)) - 1 for j in range(_WORD)], dtype=np.uint64).astype(np.uint32)


def count_through(mask: jax.Array) -> jax.Array:
    """``jnp.cumsum(mask)`` of a 1-D bool array, as int32: ``count_i = #{j <= i: mask_j}``."""
    n = mask.shape[0]
    words_needed = -(-n // _WORD)
    bits = jnp.pad(mask, (0, words_needed * _WORD - n)).reshape(words_needed, _WORD)
    words = jnp.sum(bits.astype(jnp.uint32) << _LANE, axis=1, dtype=jnp.uint32)
    per_word = jax.lax.population_count(words).astype(jnp.int32)
    before = prefix_sum(per_word) - per_word
    within = jax.lax.population_count(words[:, None] & _LOW[None, :]).astype(jnp.int32)
    return (within + before[:, None]).reshape(-1)[:n]


def prefix_sum(x: jax.Array) -> jax.Array:
    """``jnp.cumsum(x)`` of a 1-D integer array (same dtype), by Hillis-Steele doubling; of
    a bool mask, :func:`count_through`; other dtypes go to ``jnp.cumsum`` (a float sum's
    rounding depends on its order)."""
    if x.ndim != 1:
        return jnp.cumsum(x)
    if x.dtype == jnp.bool_:
        return count_through(x)
    if not jnp.issubdtype(x.dtype, jnp.integer):
        return jnp.cumsum(x)
    n, shift = x.shape[0], 1
    while shift < n:
        x = x + jnp.pad(x[:-shift], (shift, 0))
        shift *= 2
    return x
