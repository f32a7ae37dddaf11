"""Engine configuration: model sizes and the engine's static shapes.

:class:`ModelConfig` describes a Llama-style decoder (the names follow Hugging Face's
``LlamaConfig``); :data:`TINY` is the default, small enough to decode quickly on two CPU
cores. Model configs live in TOML files (``configs/models/*.toml``), one flat table of the
fields below; a bare name such as ``tiny`` is looked up there. A Hugging Face
``config.json`` can be read too (:meth:`ModelConfig.from_hf`).

:class:`EngineConfig` holds the paged cache and batching shapes. Its token capacity is
``C = (num_blocks - max_batch) * block_size`` (see :mod:`jaxsched.engine.batching` for why).
"""

from __future__ import annotations

import dataclasses
import json
import math
import tomllib
from pathlib import Path
from typing import Any, Mapping

from jaxsched.config import CONFIG_DIR
from jaxsched.errors import JaxschedError

__all__ = [
    "ModelConfig",
    "EngineConfig",
    "TINY",
    "MODEL_CONFIG_DIR",
    "load_model_config",
    "EngineConfigError",
    "MEMORY_MODELS",
]

MEMORY_MODELS = ("tokens", "blocks")
"""How the engine's scheduler counts KV memory (``EngineConfig.memory``)."""

MODEL_CONFIG_DIR = CONFIG_DIR / "models"
"""The repository's ``configs/models/`` folder (bare model names are looked up there)."""


class EngineConfigError(JaxschedError, ValueError):
    """A bad model or engine setting; the message names the key."""


_DTYPES = ("float32", "bfloat16", "float16")


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Sizes of a Llama-style decoder (hashable: a static argument of jitted functions).

    ``head_dim`` defaults to ``hidden_size // num_heads``; ``num_heads`` must be a multiple of
    ``num_kv_heads`` (grouped-query attention with ``num_heads / num_kv_heads`` query heads per
    key/value head).
    """

    vocab_size: int = 259  # 256 bytes + BOS, EOS, PAD (the byte tokenizer)
    hidden_size: int = 64
    intermediate_size: int = 128
    num_layers: int = 2
    num_heads: int = 4
    num_kv_heads: int = 2
    head_dim: int = 0  # 0: hidden_size // num_heads
    rope_theta: float = 10000.0
    rms_norm_eps: float = 1e-5
    max_position: int = 2048
    tie_word_embeddings: bool = False
    dtype: str = "float32"  # parameter and activation dtype (float32 on CPU)

    def __post_init__(self):
        for name in ("vocab_size", "hidden_size", "intermediate_size", "num_layers",
                     "num_heads", "num_kv_heads", "max_position"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise EngineConfigError(f"model.{name} must be a positive integer, got {value!r}")
        if self.num_heads % self.num_kv_heads:
            raise EngineConfigError(
                f"model.num_heads ({self.num_heads}) must be a multiple of model.num_kv_heads "
                f"({self.num_kv_heads})")
        if self.head_dim == 0:
            if self.hidden_size % self.num_heads:
                raise EngineConfigError(
                    f"model.hidden_size ({self.hidden_size}) must be a multiple of "
                    f"model.num_heads ({self.num_heads}) when head_dim is not given")
            object.__setattr__(self, "head_dim", self.hidden_size // self.num_heads)
        if not isinstance(self.head_dim, int) or self.head_dim < 2 or self.head_dim % 2:
            raise EngineConfigError(f"model.head_dim must be an even integer >= 2, got "
                                    f"{self.head_dim!r}")
        if not (self.rope_theta > 0 and math.isfinite(self.rope_theta)):
            raise EngineConfigError(f"model.rope_theta must be > 0, got {self.rope_theta!r}")
        if not self.rms_norm_eps > 0:
            raise EngineConfigError(f"model.rms_norm_eps must be > 0, got {self.rms_norm_eps!r}")
        if self.dtype not in _DTYPES:
            raise EngineConfigError(f"model.dtype must be one of {_DTYPES}, got {self.dtype!r}")

    @property
    def group_size(self) -> int:
        """Query heads per key/value head."""
        return self.num_heads // self.num_kv_heads

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: Mapping[str, Any], where: str = "model.") -> "ModelConfig":
        """Build from a flat mapping; unknown keys are refused with one line naming them."""
        fields = {f.name for f in dataclasses.fields(cls)}
        for key in values:
            if key not in fields:
                raise EngineConfigError(
                    f"{where}{key}: unknown model setting; known: {', '.join(sorted(fields))}")
        return cls(**dict(values))

    @classmethod
    def from_hf(cls, source: str | Path | Mapping[str, Any]) -> "ModelConfig":
        """From a Hugging Face ``LlamaConfig`` (a ``config.json`` path, its folder, or a dict).

        Only plain RoPE is supported: a ``rope_scaling`` other than null is refused.
        """
        if isinstance(source, Mapping):
            hf = dict(source)
        else:
            path = Path(source)
            if path.is_dir():
                path = path / "config.json"
            try:
                hf = json.loads(path.read_text())
            except (OSError, json.JSONDecodeError) as err:
                raise EngineConfigError(f"{path}: cannot read Hugging Face config: {err}") from None
        if hf.get("rope_scaling"):
            raise EngineConfigError(
                f"rope_scaling {hf['rope_scaling']!r} is not supported (plain RoPE only)")
        heads = int(hf["num_attention_heads"])
        return cls(
            vocab_size=int(hf["vocab_size"]),
            hidden_size=int(hf["hidden_size"]),
            intermediate_size=int(hf["intermediate_size"]),
            num_layers=int(hf["num_hidden_layers"]),
            num_heads=heads,
            num_kv_heads=int(hf.get("num_key_value_heads") or heads),
            head_dim=int(hf.get("head_dim") or 0),
            rope_theta=float(hf.get("rope_theta", 10000.0)),
            rms_norm_eps=float(hf.get("rms_norm_eps", 1e-6)),
            max_position=int(hf.get("max_position_embeddings", 2048)),
            tie_word_embeddings=bool(hf.get("tie_word_embeddings", False)),
        )

    def to_hf(self) -> dict[str, Any]:
        """The matching Hugging Face ``config.json`` contents."""
        return {
            "architectures": ["LlamaForCausalLM"],
            "model_type": "llama",
            "vocab_size": self.vocab_size,
            "hidden_size": self.hidden_size,
            "intermediate_size": self.intermediate_size,
            "num_hidden_layers": self.num_layers,
            "num_attention_heads": self.num_heads,
            "num_key_value_heads": self.num_kv_heads,
            "head_dim": self.head_dim,
            "rope_theta": self.rope_theta,
            "rms_norm_eps": self.rms_norm_eps,
            "max_position_embeddings": self.max_position,
            "tie_word_embeddings": self.tie_word_embeddings,
            "hidden_act": "silu",
            "rope_scaling": None,
            "torch_dtype": self.dtype,
        }


TINY = ModelConfig()
"""The default model: 2 layers, hidden 64, 4 query heads, 2 key/value heads, vocab 259."""


def load_model_config(source: str | Path) -> ModelConfig:
    """A model config from a TOML file, or a bare name in ``configs/models/`` (``"tiny"``).

    A TOML file holds the :class:`ModelConfig` fields in one flat table (optionally under a
    ``[model]`` table).
    """
    path = Path(source)
    if path.suffix != ".toml" and not path.exists():
        path = MODEL_CONFIG_DIR / f"{source}.toml"
    try:
        data = tomllib.loads(path.read_text())
    except FileNotFoundError:
        known = sorted(p.stem for p in MODEL_CONFIG_DIR.glob("*.toml"))
        raise EngineConfigError(
            f"{source}: no such model config; known names: {', '.join(known) or 'none'}"
        ) from None
    except (OSError, tomllib.TOMLDecodeError) as err:
        raise EngineConfigError(f"{path}: {err}") from None
    if set(data) == {"model"} and isinstance(data["model"], dict):
        data = data["model"]
    try:
        return ModelConfig.from_dict(data, where=f"{path.name}: ")
    except TypeError as err:
        raise EngineConfigError(f"{path.name}: {err}") from None


@dataclasses.dataclass(frozen=True)
class EngineConfig:
    """Static shapes of the engine (changing one recompiles), and its memory model.

    * ``block_size``, ``num_blocks``: the paged KV cache (tokens per block, blocks in the pool).
    * ``max_batch`` (B), ``queue_size`` (W): resident slots and the scheduler's look-ahead
      window, as in :class:`jaxsched.core.model.SimShape`.
    * ``max_seq_len``: the most tokens one request may hold (prompt + output); the width of a
      block table is ``ceil(max_seq_len / block_size)`` blocks.
    * ``min_prefill_bucket``: prefill chunks are padded to a power of two at least this long.
    * ``num_classes``: request classes the policy knows (K).
    * ``memory``: how the scheduler counts memory (:data:`MEMORY_MODELS`). ``"tokens"`` (the
      default, the engine's behaviour before block memory existed): the model's token memory
      (``block_size = 1`` for the policy) with capacity ``(num_blocks - max_batch) *
      block_size``, one block per slot held back for rounding. ``"blocks"``: the model's block
      memory with this ``block_size`` (``jaxsched.core.model``), each resident holding
      ``ceil(m / block_size)`` blocks, and capacity ``num_blocks * block_size``, every block
      of the pool: what the engine allocates is exactly what the policy and the simulator
      count.
    * ``capacity_tokens``: a token capacity below the default (0: the default above), e.g. to
      force evictions without changing the cache's shape; with ``memory = "blocks"`` its
      whole blocks count.
    """

    block_size: int = 16
    num_blocks: int = 72
    max_batch: int = 8
    queue_size: int = 16
    max_seq_len: int = 256
    min_prefill_bucket: int = 16
    num_classes: int = 1
    capacity_tokens: int = 0
    memory: str = "tokens"

    def __post_init__(self):
        if self.memory not in MEMORY_MODELS:
            raise EngineConfigError(f"engine.memory must be one of {', '.join(MEMORY_MODELS)}, "
                                    f"got {self.memory!r}")
        for f in dataclasses.fields(self):
            if f.name == "memory":
                continue
            value = getattr(self, f.name)
            low = 0 if f.name == "capacity_tokens" else 1
            if not isinstance(value, int) or isinstance(value, bool) or value < low:
                raise EngineConfigError(f"engine.{f.name} must be a positive integer, got "
                                        f"{value!r}")
        if self.num_blocks <= self.max_batch and self.memory == "tokens":
            raise EngineConfigError(
                f"engine.num_blocks ({self.num_blocks}) must exceed engine.max_batch "
                f"({self.max_batch}): capacity is (num_blocks - max_batch) * block_size tokens")
        full = self._full_capacity
        if self.capacity_tokens > full:
            raise EngineConfigError(
                f"engine.capacity_tokens ({self.capacity_tokens}) exceeds the {full} tokens "
                f"of memory = {self.memory!r}")
        if 0 < self.capacity_tokens < self.block_size and self.memory == "blocks":
            raise EngineConfigError(
                f"engine.capacity_tokens ({self.capacity_tokens}) holds no whole block of "
                f"{self.block_size} tokens")
        b = self.min_prefill_bucket
        if b & (b - 1):
            raise EngineConfigError(f"engine.min_prefill_bucket must be a power of two, got {b}")

    @property
    def _full_capacity(self) -> int:
        if self.memory == "blocks":
            return self.num_blocks * self.block_size
        return (self.num_blocks - self.max_batch) * self.block_size

    @property
    def capacity(self) -> int:
        """C, the scheduler's token capacity: ``(num_blocks - max_batch) * block_size``
        (``memory = "tokens"``) or ``num_blocks * block_size`` (``"blocks"``), or
        ``capacity_tokens`` when set (never more; with blocks, its whole blocks)."""
        if self.capacity_tokens and self.memory == "blocks":
            return self.capacity_tokens // self.block_size * self.block_size
        return self.capacity_tokens or self._full_capacity

    @property
    def memory_block_size(self) -> int:
        """The block size of the scheduler's memory model: ``block_size`` with
        ``memory = "blocks"``, 1 (tokens) otherwise."""
        return self.block_size if self.memory == "blocks" else 1

    @property
    def blocks_per_seq(self) -> int:
        """Width of a block table."""
        return -(-self.max_seq_len // self.block_size)

    @property
    def max_request_tokens(self) -> int:
        """The most tokens (prompt + output) one request can ever hold: ``min(C, max_seq_len)``."""
        return min(self.capacity, self.max_seq_len)

    def prefill_buckets(self) -> list[int]:
        """The padded prefill lengths: powers of two from ``min_prefill_bucket`` up to the
        first one >= ``max_seq_len``."""
        out = [self.min_prefill_bucket]
        while out[-1] < self.max_seq_len:
            out.append(out[-1] * 2)
        return out

    def bucket(self, n: int) -> int:
        """The prefill bucket of a chunk of ``n`` tokens."""
        b = self.min_prefill_bucket
        while b < n:
            b *= 2
        return b
