"""One call from settings to a ready :class:`~jaxsched.engine.batching.Engine` (for the CLI
and the policy-export loader)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Mapping

from jaxsched.engine.batching import Engine
from jaxsched.engine.config import TINY, EngineConfig, ModelConfig, load_model_config
from jaxsched.engine.tokenizer import load_tokenizer
from jaxsched.engine.weights import load_weights
from jaxsched.policies.base import Policy

__all__ = ["build_engine", "resolve_model_config"]


def resolve_model_config(model: str | Path | ModelConfig | None,
                         weights: str | Path | None) -> ModelConfig:
    """``model`` (a config, a TOML path or a name in ``configs/models``); when None, the
    ``config.json`` (Hugging Face) or ``model_config.json`` (orbax) next to ``weights``, else
    the tiny default."""
    if isinstance(model, ModelConfig):
        return model
    if model is not None:
        return load_model_config(model)
    if weights is not None:
        folder = Path(weights)
        folder = folder if folder.is_dir() else folder.parent
        if (folder / "model_config.json").is_file():
            return ModelConfig.from_dict(json.loads((folder / "model_config.json").read_text()))
        if (folder / "config.json").is_file():
            return ModelConfig.from_hf(folder / "config.json")
    return TINY


def build_engine(model: str | Path | ModelConfig | None = None,
                 weights: str | Path | None = None, tokenizer: str | Path | None = None, *,
                 engine_cfg: EngineConfig | None = None, policy: Policy | str = "greedy",
                 policy_params: Mapping[str, Any] | None = None,
                 policy_options: Mapping[str, Any] | None = None, seed: int = 0) -> Engine:
    """An engine from a model config, weights (safetensors file/folder, orbax folder, or
    random from ``seed``), a tokenizer (``tokenizer.json``; default: the one next to the
    weights if any, else byte-level) and a policy with its parameters."""
    cfg = resolve_model_config(model, weights)
    if tokenizer is None and weights is not None:
        folder = Path(weights) if Path(weights).is_dir() else Path(weights).parent
        if (folder / "tokenizer.json").is_file():
            tokenizer = folder / "tokenizer.json"
    return Engine(cfg, engine_cfg, load_weights(cfg, weights, seed), policy=policy,
                  policy_params=policy_params, policy_options=policy_options,
                  tokenizer=load_tokenizer(tokenizer), seed=seed)
