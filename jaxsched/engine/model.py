"""A Llama-style decoder in flax linen, reading and writing a paged KV cache.

With ``x`` a token's hidden state (width ``H``), each of the ``L`` layers computes::

    h   = x + Attn(RMSNorm_1(x))
    out = h + MLP(RMSNorm_2(h))

and the model ends with ``logits = W_lm RMSNorm_f(x_L)`` (``W_lm = E`` with tied embeddings).

* **RMSNorm.** ``RMSNorm(x) = w * x / sqrt(mean(x^2) + eps)`` (no mean subtraction, no bias),
  computed in float32.
* **RoPE** (rotary position embedding, the "rotate half" layout of Hugging Face Llama). For a
  head vector ``q`` of even width ``D`` at position ``p``, with
  ``theta_i = base^(-2i/D)`` for ``i < D/2``, ``c = cos(p theta)`` and ``s = sin(p theta)``
  repeated twice to width ``D``::

      RoPE(q, p) = q * c + rotate_half(q) * s,   rotate_half([q1, q2]) = [-q2, q1]

  so ``<RoPE(q, p), RoPE(k, p')>`` depends on ``p - p'`` only.
* **Grouped-query attention.** ``N_q`` query heads share ``N_kv`` key/value heads
  (``G = N_q / N_kv`` query heads per group): query head ``h`` reads key/value head
  ``h // G``. For a query at position ``p``::

      a_h = softmax_j( <q_h, k_{h//G, j}> / sqrt(D) + mask_j ) . v_{h//G, j},
      mask_j = 0 if j <= p else -inf     (causal over the sequence's own positions)

  Scores and softmax are float32.
* **SwiGLU MLP.** ``MLP(x) = W_down (silu(W_gate x) * (W_up x))`` with
  ``silu(z) = z * sigmoid(z)``.

Paged attention. With a :class:`KVCache` and :class:`PagedMeta`, the keys and values of the
new tokens are scattered into the cache at their slots (``slot = table[p // bs] * bs + p % bs``,
padding tokens are dropped), then each sequence's keys/values are gathered through its block
table into logical order (positions ``0 .. nb*bs - 1``) and masked causally by position. The
gathered width is always the full table, so the same request computes the same numbers
whatever other requests share its batch and whichever physical blocks it holds (exact masking:
masked weights are exactly 0). Without a cache the model is a plain causal decoder over the
given tokens (used by tests and weight checks).

Parameter names mirror the Hugging Face layout (``embed_tokens``, ``layers_{i}/self_attn/
q_proj``, ``mlp/gate_proj``, ``input_layernorm``, ``norm``, ``lm_head``), so
:mod:`jaxsched.engine.weights` maps them one to one.
"""

from __future__ import annotations

import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from jaxsched.engine.config import ModelConfig

__all__ = [
    "KVCache",
    "PagedMeta",
    "RMSNorm",
    "rope",
    "Attention",
    "MLP",
    "DecoderLayer",
    "Llama",
    "init_params",
    "init_cache",
    "forward",
]


@struct.dataclass
class KVCache:
    """Paged KV memory: per layer a key and a value array of shape
    ``(num_blocks * block_size, N_kv, D)`` (block ``b`` holds slots ``[b*bs, (b+1)*bs)``)."""

    k: tuple  # L arrays
    v: tuple  # L arrays

    @property
    def num_slots(self) -> int:
        return self.k[0].shape[0]


@struct.dataclass
class PagedMeta:
    """Where each new token goes and what each sequence reads."""

    slots: jax.Array  # (B, T) int32 flat cache slot of each new token; num_slots = dropped
    block_tables: jax.Array  # (B, nb) int32 physical block of each logical block
    block_size: int = struct.field(pytree_node=False, default=16)


def _dtype(cfg: ModelConfig):
    return jnp.dtype(cfg.dtype)


class RMSNorm(nn.Module):
    """``w * x / sqrt(mean(x^2) + eps)`` over the last axis, in float32."""

    eps: float = 1e-5
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x):
        w = self.param("weight", nn.initializers.ones, (x.shape[-1],), self.dtype)
        xf = x.astype(jnp.float32)
        y = xf * jax.lax.rsqrt(jnp.mean(xf * xf, axis=-1, keepdims=True) + self.eps)
        return (y * w.astype(jnp.float32)).astype(self.dtype)


def rope(x: jax.Array, positions: jax.Array, theta: float) -> jax.Array:
    """Rotary embedding, rotate-half layout: ``x (B, T, heads, D)``, ``positions (B, T)``."""
    d = x.shape[-1]
    inv_freq = 1.0 / (theta ** (jnp.arange(0, d, 2, dtype=jnp.float32) / d))  # (D/2,)
    angles = positions.astype(jnp.float32)[..., None] * inv_freq  # (B, T, D/2)
    angles = jnp.concatenate([angles, angles], axis=-1)[:, :, None, :]  # (B, T, 1, D)
    cos, sin = jnp.cos(angles), jnp.sin(angles)
    xf = x.astype(jnp.float32)
    half = d // 2
    rotated = jnp.concatenate([-xf[..., half:], xf[..., :half]], axis=-1)
    return (xf * cos + rotated * sin).astype(x.dtype)


def _dense(features: int, name: str, cfg: ModelConfig) -> nn.Dense:
    return nn.Dense(features, use_bias=False, dtype=_dtype(cfg), param_dtype=_dtype(cfg),
                    name=name)


class Attention(nn.Module):
    """Grouped-query self-attention with RoPE, over a paged cache or the given tokens."""

    cfg: ModelConfig

    @nn.compact
    def __call__(self, x, positions, kv=None, meta: PagedMeta | None = None):
        cfg = self.cfg
        b, t, _ = x.shape
        nq, nkv, d, g = cfg.num_heads, cfg.num_kv_heads, cfg.head_dim, cfg.group_size
        q = _dense(nq * d, "q_proj", cfg)(x).reshape(b, t, nq, d)
        k = _dense(nkv * d, "k_proj", cfg)(x).reshape(b, t, nkv, d)
        v = _dense(nkv * d, "v_proj", cfg)(x).reshape(b, t, nkv, d)
        q = rope(q, positions, cfg.rope_theta)
        k = rope(k, positions, cfg.rope_theta)

        if kv is None:  # plain causal attention over the given tokens
            keys, values, key_pos = k, v, positions  # (B, S=T, ...)
            new_kv = None
        else:
            kc, vc = kv
            flat = meta.slots.reshape(-1)
            kc = kc.at[flat].set(k.reshape(-1, nkv, d).astype(kc.dtype), mode="drop")
            vc = vc.at[flat].set(v.reshape(-1, nkv, d).astype(vc.dtype), mode="drop")
            bs = meta.block_size
            nb = meta.block_tables.shape[1]
            idx = (meta.block_tables[:, :, None] * bs + jnp.arange(bs)).reshape(b, nb * bs)
            keys, values = kc[idx], vc[idx]  # (B, S, N_kv, D) in logical order
            key_pos = jnp.broadcast_to(jnp.arange(nb * bs, dtype=jnp.int32), (b, nb * bs))
            new_kv = (kc, vc)

        mask = key_pos[:, None, :] <= positions[:, :, None]  # (B, T, S)
        qg = q.reshape(b, t, nkv, g, d).astype(jnp.float32)
        scores = jnp.einsum("btkgd,bskd->bkgts", qg, keys.astype(jnp.float32))
        scores = scores * (1.0 / jnp.sqrt(jnp.float32(d)))
        scores = jnp.where(mask[:, None, None], scores, -jnp.inf)
        weights = jax.nn.softmax(scores, axis=-1)
        out = jnp.einsum("bkgts,bskd->btkgd", weights, values.astype(jnp.float32))
        out = out.reshape(b, t, nq * d).astype(_dtype(cfg))
        return _dense(cfg.hidden_size, "o_proj", cfg)(out), new_kv


class MLP(nn.Module):
    """SwiGLU: ``W_down(silu(W_gate x) * W_up x)``."""

    cfg: ModelConfig

    @nn.compact
    def __call__(self, x):
        cfg = self.cfg
        gate = _dense(cfg.intermediate_size, "gate_proj", cfg)(x)
        up = _dense(cfg.intermediate_size, "up_proj", cfg)(x)
        return _dense(cfg.hidden_size, "down_proj", cfg)(nn.silu(gate) * up)


class DecoderLayer(nn.Module):
    """Pre-norm residual block: attention then SwiGLU."""

    cfg: ModelConfig

    @nn.compact
    def __call__(self, x, positions, kv=None, meta=None):
        cfg = self.cfg
        h, new_kv = Attention(cfg, name="self_attn")(
            RMSNorm(cfg.rms_norm_eps, _dtype(cfg), name="input_layernorm")(x), positions, kv, meta)
        x = x + h
        x = x + MLP(cfg, name="mlp")(
            RMSNorm(cfg.rms_norm_eps, _dtype(cfg), name="post_attention_layernorm")(x))
        return x, new_kv


class Llama(nn.Module):
    """The decoder. ``__call__(tokens (B, T), positions (B, T), cache, meta, last_index)``
    returns ``(logits, cache)``: logits ``(B, T, V)``, or ``(B, V)`` at ``last_index (B,)``
    when given (the head runs only there); the updated cache (``None`` without one)."""

    cfg: ModelConfig

    @nn.compact
    def __call__(self, tokens, positions, cache: KVCache | None = None,
                 meta: PagedMeta | None = None, last_index=None):
        cfg = self.cfg
        embed = nn.Embed(cfg.vocab_size, cfg.hidden_size, dtype=_dtype(cfg),
                         param_dtype=_dtype(cfg), embedding_init=nn.initializers.normal(1.0),
                         name="embed_tokens")
        x = embed(tokens)
        ks, vs = [], []
        for i in range(cfg.num_layers):  # layers, not tokens
            kv = None if cache is None else (cache.k[i], cache.v[i])
            x, new_kv = DecoderLayer(cfg, name=f"layers_{i}")(x, positions, kv, meta)
            if new_kv is not None:
                ks.append(new_kv[0])
                vs.append(new_kv[1])
        x = RMSNorm(cfg.rms_norm_eps, _dtype(cfg), name="norm")(x)
        if last_index is not None:
            x = x[jnp.arange(x.shape[0]), last_index]
        if cfg.tie_word_embeddings:
            logits = embed.attend(x)
        else:
            logits = _dense(cfg.vocab_size, "lm_head", cfg)(x)
        new_cache = None if cache is None else KVCache(k=tuple(ks), v=tuple(vs))
        return logits.astype(jnp.float32), new_cache


def init_params(cfg: ModelConfig, seed: int = 0) -> dict:
    """Random parameters from ``seed`` (``{"params": ...}``, flax layout).

    Drawn with NumPy (``default_rng(seed)``; nothing to compile): projection kernels
    ``N(0, 1 / fan_in)``, embeddings ``N(0, 1)``, norm weights 1.
    """
    tokens = jnp.zeros((1, 1), jnp.int32)
    shapes = jax.eval_shape(Llama(cfg).init, jax.random.key(0), tokens, tokens)
    rng = np.random.default_rng(seed)
    dtype = _dtype(cfg)

    def draw(path, leaf):
        name = path[-1].key
        if name == "weight":  # RMSNorm
            arr = np.ones(leaf.shape, np.float32)
        elif name == "embedding":
            arr = rng.standard_normal(leaf.shape, np.float32)
        else:  # Dense kernel (in, out)
            arr = rng.standard_normal(leaf.shape, np.float32) / np.sqrt(leaf.shape[0])
        return jnp.asarray(arr, dtype)

    return jax.tree_util.tree_map_with_path(draw, shapes)


def init_cache(cfg: ModelConfig, num_blocks: int, block_size: int) -> KVCache:
    """An all-zero paged cache of ``num_blocks`` blocks."""
    shape = (num_blocks * block_size, cfg.num_kv_heads, cfg.head_dim)
    zeros = lambda: jnp.zeros(shape, _dtype(cfg))  # noqa: E731
    return KVCache(k=tuple(zeros() for _ in range(cfg.num_layers)),
                   v=tuple(zeros() for _ in range(cfg.num_layers)))


@functools.partial(jax.jit, static_argnums=0)
def forward(cfg: ModelConfig, params, tokens) -> jax.Array:
    """Plain causal forward over ``tokens (B, T)`` at positions ``0..T-1``: logits (B, T, V)."""
    tokens = jnp.asarray(tokens, jnp.int32)
    positions = jnp.broadcast_to(jnp.arange(tokens.shape[1], dtype=jnp.int32), tokens.shape)
    logits, _ = Llama(cfg).apply(params, tokens, positions)
    return logits
