"""Jitted prefill and decode over the paged cache, with sampling.

One jitted function, :func:`model_step`, runs ``T`` new tokens of ``B`` sequences through the
model, writes their keys and values into the cache (donated, updated in place) and samples
one token per sequence from the logits at ``last_index``. It is called with two families of
static shapes only:

* **prefill**: ``B = 1``, ``T`` = the chunk length rounded up to a power of two
  (``EngineConfig.prefill_buckets()``), one call per prefilling request;
* **decode**: ``B = max_batch``, ``T = 1``, one call per iteration for all decoding requests
  (free rows are padding).

So at most ``len(prefill_buckets) + 1`` compilations per (model, engine) configuration;
:func:`compile_counts` counts traces (each one a compilation).

Sampling (per row, inside the jitted function): temperature ``t = 0`` is greedy
(``argmax``); otherwise ``softmax(logits / t)`` restricted to the top-p nucleus (the most
probable tokens whose cumulative probability before them is ``< top_p``) sampled by Gumbel-max,
``argmax(logits / t + g)`` over the nucleus with ``g_v = -log(-log u_v)`` and ``u_v`` a
counter-based hash of ``(seed, n, v)``, ``n`` the number of tokens the request generated
before. A request's tokens therefore depend only on its own seed and logits, never on its
batch. When every row of a call is greedy the nucleus computation (a sort over the vocabulary
per row) is skipped by a ``lax.cond``: the tokens are the same ``argmax``, the call cheaper.
"""

from __future__ import annotations

import collections
import functools
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jaxsched.engine.cache import pad_table, token_slots
from jaxsched.engine.config import EngineConfig, EngineConfigError, ModelConfig
from jaxsched.engine.model import KVCache, Llama, PagedMeta, init_cache

__all__ = ["model_step", "sample", "compile_counts", "ModelRunner", "SampleArgs"]

_TRACES: collections.Counter = collections.Counter()


def compile_counts() -> dict[str, int]:
    """Traces (= compilations) of :func:`model_step` so far, keyed
    ``"{prefill|decode}/B=../T=../nb=../slots=.."`` (batch, tokens, block-table width, cache
    slots)."""
    return dict(_TRACES)


def _hash_uniform(seed, counter, n: int) -> jax.Array:
    """``n`` uniforms in (0, 1) from a counter-based hash of ``(seed, counter, index)``
    (two rounds of the murmur3 32-bit finalizer); cheap to compile, unlike threefry."""

    def fmix(x):
        x = x ^ (x >> 16)
        x = x * jnp.uint32(0x85EBCA6B)
        x = x ^ (x >> 13)
        x = x * jnp.uint32(0xC2B2AE35)
        return x ^ (x >> 16)

    idx = jnp.arange(n, dtype=jnp.uint32)
    x = fmix(seed.astype(jnp.uint32) ^ jnp.uint32(0x9E3779B9))
    x = fmix(x ^ counter.astype(jnp.uint32) * jnp.uint32(0x27D4EB2F))
    x = fmix(x ^ idx * jnp.uint32(0x165667B1))
    return ((x >> 8).astype(jnp.float32) + 0.5) * jnp.float32(2.0 ** -24)


def sample(logits, temperature, top_p, seed, counter):
    """One token per row of ``logits (B, V)``; see the module docstring."""

    def row(lg, t, p, s, n):
        greedy = jnp.argmax(lg).astype(jnp.int32)
        scaled = lg / jnp.maximum(t, 1e-6)
        probs = jax.nn.softmax(scaled)
        sorted_p = jnp.sort(probs)[::-1]
        before = jnp.cumsum(sorted_p) - sorted_p
        kept = jnp.where(before < p, sorted_p, jnp.inf)
        threshold = jnp.min(kept)  # the smallest probability inside the nucleus
        masked = jnp.where(probs >= threshold, scaled, -jnp.inf)
        gumbel = -jnp.log(-jnp.log(_hash_uniform(s, n, lg.shape[-1])))
        drawn = jnp.argmax(masked + gumbel).astype(jnp.int32)  # Gumbel-max sampling
        return jnp.where(t > 0, drawn, greedy)

    def drawn(_):
        return jax.vmap(row)(logits, temperature, top_p, seed, counter)

    def greedy(_):  # every row greedy: skip the nucleus sort (same tokens, less work)
        return jnp.argmax(logits, axis=-1).astype(jnp.int32)

    return jax.lax.cond(jnp.any(temperature > 0), drawn, greedy, None)


@functools.partial(jax.jit, static_argnames=("cfg", "block_size"), donate_argnames=("cache",))
def model_step(params, cache: KVCache, tokens, positions, slots, block_tables, last_index,
               temperature, top_p, seed, counter, *, cfg: ModelConfig, block_size: int):
    """Run ``tokens (B, T)`` at ``positions``; write their KV at ``slots``; sample at
    ``last_index``. Returns ``(next_tokens (B,) int32, logits (B, V) float32, cache)``."""
    b, t = tokens.shape
    kind = "prefill" if b == 1 and t > 1 else "decode"
    _TRACES[f"{kind}/B={b}/T={t}/nb={block_tables.shape[1]}/slots={cache.num_slots}"] += 1
    meta = PagedMeta(slots=slots, block_tables=block_tables, block_size=block_size)
    logits, cache = Llama(cfg).apply(params, tokens, positions, cache, meta, last_index)
    return sample(logits, temperature, top_p, seed, counter), logits, cache


class SampleArgs(tuple):
    """``(temperature, top_p, seed, counter)`` of one request's next token."""

    __slots__ = ()

    def __new__(cls, temperature: float = 0.0, top_p: float = 1.0, seed: int = 0,
                counter: int = 0):
        return super().__new__(cls, (float(temperature), float(top_p), int(seed), int(counter)))


class ModelRunner:
    """Owns the parameters and the device cache; runs prefill chunks and decode batches.

    ``prefill`` and ``decode`` take host-side block tables (lists of block ids) and return
    host-side token ids; the cache never leaves the device.
    """

    def __init__(self, model_cfg: ModelConfig, engine_cfg: EngineConfig, params):
        if engine_cfg.max_seq_len > model_cfg.max_position:
            raise EngineConfigError(
                f"engine.max_seq_len ({engine_cfg.max_seq_len}) exceeds the model's "
                f"max_position ({model_cfg.max_position})")
        self.model_cfg = model_cfg
        self.engine_cfg = engine_cfg
        self.params = params
        self.cache = init_cache(model_cfg, engine_cfg.num_blocks, engine_cfg.block_size)
        self.num_slots = engine_cfg.num_blocks * engine_cfg.block_size

    def _call(self, tokens, positions, slots, tables, last, samples: Sequence[SampleArgs]):
        temp, top_p, seed, counter = (np.asarray(c) for c in zip(*samples))
        next_tok, logits, self.cache = model_step(
            self.params, self.cache,
            jnp.asarray(tokens, jnp.int32), jnp.asarray(positions, jnp.int32),
            jnp.asarray(slots, jnp.int32), jnp.asarray(tables, jnp.int32),
            jnp.asarray(last, jnp.int32),
            jnp.asarray(temp, jnp.float32), jnp.asarray(top_p, jnp.float32),
            jnp.asarray(seed.astype(np.uint32)), jnp.asarray(counter, jnp.int32),
            cfg=self.model_cfg, block_size=self.engine_cfg.block_size)
        return next_tok, logits

    def probe(self) -> None:
        """The speed probe: one decode call whose rows are all padding, waited for.

        Same shapes and work as every decode call (the decode cost does not depend on the rows'
        contents), and it changes nothing: padding rows write to the spare slot past the
        cache. Timed beside an iteration's calls, it measures how fast the machine runs *now*
        (see :class:`jaxsched.engine.calibrate.MeasuredCalls`). It is :meth:`decode` of no
        rows (which waits for its tokens)."""
        self.decode([])

    def prefill(self, token_ids: Sequence[int], start: int, table: list[int],
                sample_args: SampleArgs = SampleArgs(), return_logits: bool = False):
        """Process ``token_ids`` at positions ``start ..`` of the sequence with block table
        ``table`` (it must already cover them); return the token sampled after the last one
        (and its logits when asked)."""
        ec = self.engine_cfg
        n = len(token_ids)
        width = ec.bucket(n)
        tokens = np.zeros((1, width), np.int32)
        tokens[0, :n] = token_ids
        positions = np.zeros((1, width), np.int32)
        positions[0, :n] = np.arange(start, start + n)
        slots = token_slots(table, start, n, width, ec.block_size, self.num_slots)[None]
        tables = pad_table(table, ec.blocks_per_seq)[None]
        next_tok, logits = self._call(tokens, positions, slots, tables, [n - 1], [sample_args])
        tok = int(np.asarray(next_tok)[0])
        return (tok, np.asarray(logits)[0]) if return_logits else tok

    def decode(self, rows: Sequence[tuple[int, int, list[int], SampleArgs]],
               return_logits: bool = False):
        """One decode step for up to ``max_batch`` sequences, each ``(token, position, table,
        sample_args)``: write the token's KV at ``position`` and sample the next token."""
        ec = self.engine_cfg
        b = ec.max_batch
        if len(rows) > b:
            raise ValueError(f"decode batch of {len(rows)} exceeds max_batch {b}")
        tokens = np.zeros((b, 1), np.int32)
        positions = np.zeros((b, 1), np.int32)
        slots = np.full((b, 1), self.num_slots, np.int32)
        tables = np.zeros((b, ec.blocks_per_seq), np.int32)
        samples = [SampleArgs()] * b
        for i, (tok, pos, table, args) in enumerate(rows):
            tokens[i, 0] = tok
            positions[i, 0] = pos
            slots[i] = token_slots(table, pos, 1, 1, ec.block_size, self.num_slots)
            tables[i] = pad_table(table, ec.blocks_per_seq)
            samples[i] = args
        next_tok, logits = self._call(tokens, positions, slots, tables, np.zeros(b, np.int32),
                                      samples)
        toks = [int(x) for x in np.asarray(next_tok)[: len(rows)]]
        return (toks, np.asarray(logits)[: len(rows)]) if return_logits else toks
