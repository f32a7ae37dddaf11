"""Model weights: random init, safetensors in the Hugging Face Llama layout, orbax.

Hugging Face layout (torch ``Linear`` weights are ``(out, in)``; flax ``Dense`` kernels are
``(in, out)``, so projections are transposed; embeddings and norms are copied)::

    model.embed_tokens.weight                      (V, H)        embed_tokens/embedding
    model.layers.{i}.self_attn.q_proj.weight       (N_q D, H)    layers_{i}/self_attn/q_proj/kernel
    model.layers.{i}.self_attn.k_proj.weight       (N_kv D, H)   .../k_proj/kernel
    model.layers.{i}.self_attn.v_proj.weight       (N_kv D, H)   .../v_proj/kernel
    model.layers.{i}.self_attn.o_proj.weight       (H, N_q D)    .../o_proj/kernel
    model.layers.{i}.mlp.gate_proj.weight          (I, H)        layers_{i}/mlp/gate_proj/kernel
    model.layers.{i}.mlp.up_proj.weight            (I, H)        .../up_proj/kernel
    model.layers.{i}.mlp.down_proj.weight          (H, I)        .../down_proj/kernel
    model.layers.{i}.input_layernorm.weight        (H,)          layers_{i}/input_layernorm/weight
    model.layers.{i}.post_attention_layernorm.weight (H,)        .../post_attention_layernorm/weight
    model.norm.weight                              (H,)          norm/weight
    lm_head.weight                                 (V, H)        lm_head/kernel (absent when tied)

RoPE uses the rotate-half convention of Hugging Face Llama, so q/k weights load unpermuted.
Loading checks every name (missing and unexpected ones; ``rotary_emb.inv_freq`` buffers of
old checkpoints are ignored, and so is ``lm_head.weight`` with tied embeddings), every shape
and every dtype (F32, F16 or BF16; cast to the model's dtype), each failure a one-line
:class:`WeightsError`. A checkpoint is a ``.safetensors`` file, or a folder with
``model.safetensors``, a ``model.safetensors.index.json`` (sharded) or ``*.safetensors``
shards.

Orbax: :func:`save_orbax` writes the parameter pytree and the model config to a folder;
:func:`load_orbax` restores them and checks the config.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from safetensors import SafetensorError, safe_open
from safetensors.numpy import save_file

from jaxsched.engine.config import ModelConfig
from jaxsched.engine.model import init_params
from jaxsched.errors import JaxschedError

__all__ = [
    "WeightsError",
    "hf_layout",
    "to_hf_state_dict",
    "from_hf_state_dict",
    "save_safetensors",
    "load_safetensors",
    "save_orbax",
    "load_orbax",
    "load_weights",
    "init_params",
]

_FLOAT_DTYPES = {"F32": np.float32, "F16": np.float16, "BF16": "bfloat16"}
_IGNORED_SUFFIXES = ("rotary_emb.inv_freq",)


class WeightsError(JaxschedError, ValueError):
    """A checkpoint that does not match the model config."""


def hf_layout(cfg: ModelConfig) -> dict[str, tuple[tuple[str, ...], tuple[int, ...], bool]]:
    """Hugging Face name -> (flax parameter path, HF shape, transposed)."""
    h, d, i = cfg.hidden_size, cfg.head_dim, cfg.intermediate_size
    out = {"model.embed_tokens.weight": (("embed_tokens", "embedding"), (cfg.vocab_size, h),
                                         False)}
    for layer in range(cfg.num_layers):
        pre, fl = f"model.layers.{layer}.", f"layers_{layer}"
        proj = {
            "self_attn.q_proj": (cfg.num_heads * d, h),
            "self_attn.k_proj": (cfg.num_kv_heads * d, h),
            "self_attn.v_proj": (cfg.num_kv_heads * d, h),
            "self_attn.o_proj": (h, cfg.num_heads * d),
            "mlp.gate_proj": (i, h),
            "mlp.up_proj": (i, h),
            "mlp.down_proj": (h, i),
        }
        for name, shape in proj.items():
            out[pre + name + ".weight"] = ((fl, *name.split("."), "kernel"), shape, True)
        for name in ("input_layernorm", "post_attention_layernorm"):
            out[pre + name + ".weight"] = ((fl, name, "weight"), (h,), False)
    out["model.norm.weight"] = (("norm", "weight"), (h,), False)
    if not cfg.tie_word_embeddings:
        out["lm_head.weight"] = (("lm_head", "kernel"), (cfg.vocab_size, h), True)
    return out


def _get(tree, path):
    for key in path:
        tree = tree[key]
    return tree


def _set(tree, path, value):
    for key in path[:-1]:
        tree = tree.setdefault(key, {})
    tree[path[-1]] = value


def to_hf_state_dict(params, cfg: ModelConfig, dtype=None) -> dict[str, np.ndarray]:
    """The parameters as Hugging Face named arrays (``dtype``: e.g. ``"bfloat16"``)."""
    inner = params["params"] if "params" in params else params
    out = {}
    for name, (path, _, transposed) in hf_layout(cfg).items():
        arr = np.asarray(_get(inner, path))
        if transposed:
            arr = arr.T
        if dtype is not None:
            arr = np.asarray(jnp.asarray(arr).astype(dtype))
        out[name] = np.ascontiguousarray(arr)
    return out


def _dtype_name(arr) -> str:
    return {"float32": "F32", "float16": "F16", "bfloat16": "BF16"}.get(str(arr.dtype),
                                                                        str(arr.dtype))


def from_hf_state_dict(tensors: dict[str, Any], cfg: ModelConfig, where: str = "") -> dict:
    """Check names, shapes and dtypes of Hugging Face named arrays and build the flax
    parameters (``{"params": ...}``). ``tensors`` values: arrays, or ``(dtype_name, shape,
    loader)`` triples read lazily from safetensors."""
    layout = hf_layout(cfg)
    ignored = [n for n in tensors if n.endswith(_IGNORED_SUFFIXES)
               or (cfg.tie_word_embeddings and n == "lm_head.weight")]
    unexpected = sorted(set(tensors) - set(layout) - set(ignored))
    if unexpected:
        more = f" (and {len(unexpected) - 3} more)" if len(unexpected) > 3 else ""
        raise WeightsError(f"{where}unexpected tensor {', '.join(unexpected[:3])}{more} for a "
                           f"{cfg.num_layers}-layer Llama config")
    missing = [n for n in layout if n not in tensors]
    if missing:
        more = f" (and {len(missing) - 3} more)" if len(missing) > 3 else ""
        raise WeightsError(f"{where}missing tensor {', '.join(missing[:3])}{more}")
    target = jnp.dtype(cfg.dtype)
    inner: dict = {}
    for name, (path, shape, transposed) in layout.items():
        item = tensors[name]
        if isinstance(item, tuple):
            dtype_name, got_shape, loader = item
        else:
            arr = np.asarray(item)
            dtype_name, got_shape, loader = _dtype_name(arr), arr.shape, (lambda a=arr: a)
        if tuple(got_shape) != shape:
            raise WeightsError(f"{where}{name} has shape {tuple(got_shape)}, expected {shape}")
        if dtype_name not in _FLOAT_DTYPES:
            raise WeightsError(f"{where}{name} has dtype {dtype_name}, expected one of "
                               f"{', '.join(_FLOAT_DTYPES)}")
        arr = jnp.asarray(loader()).astype(target)
        _set(inner, path, arr.T if transposed else arr)
    return {"params": inner}


def _checkpoint_files(path: Path) -> list[Path]:
    if path.is_file():
        return [path]
    if not path.is_dir():
        raise WeightsError(f"{path}: no such checkpoint file or folder")
    single = path / "model.safetensors"
    if single.is_file():
        return [single]
    index = path / "model.safetensors.index.json"
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
        except (json.JSONDecodeError, KeyError, TypeError) as err:
            raise WeightsError(f"{index}: not a safetensors index ({err})") from None
        files = []
        for fname in dict.fromkeys(weight_map.values()):
            shard = path / fname
            if not shard.is_file():
                raise WeightsError(f"{index}: shard {fname} is missing")
            files.append(shard)
        return files
    files = sorted(path.glob("*.safetensors"))
    if not files:
        raise WeightsError(f"{path}: no .safetensors files")
    return files


def load_safetensors(path: str | Path, cfg: ModelConfig) -> dict:
    """Flax parameters from a Hugging Face Llama safetensors checkpoint (file or folder)."""
    tensors: dict[str, Any] = {}
    for file in _checkpoint_files(Path(path)):
        try:
            handle = safe_open(str(file), framework="numpy")
        except (SafetensorError, OSError) as err:
            raise WeightsError(f"{file}: not a safetensors file ({err})") from None
        with handle as f:
            for name in f.keys():
                if name in tensors:
                    raise WeightsError(f"{file}: tensor {name} appears in two shards")
                sl = f.get_slice(name)
                tensors[name] = (sl.get_dtype(), tuple(sl.get_shape()),
                                 lambda file=file, name=name: _read(file, name))
    return from_hf_state_dict(tensors, cfg, where=f"{path}: ")


def _read(file: Path, name: str) -> np.ndarray:
    with safe_open(str(file), framework="numpy") as f:
        return f.get_tensor(name)


def save_safetensors(params, cfg: ModelConfig, path: str | Path, dtype=None) -> Path:
    """Write a Hugging Face layout checkpoint. ``path``: a ``.safetensors`` file, or a folder
    (then ``model.safetensors`` and ``config.json`` are written in it). Returns the file."""
    path = Path(path)
    if path.suffix != ".safetensors":
        path.mkdir(parents=True, exist_ok=True)
        (path / "config.json").write_text(json.dumps(cfg.to_hf(), indent=2))
        path = path / "model.safetensors"
    save_file(to_hf_state_dict(params, cfg, dtype), str(path), metadata={"format": "pt"})
    return path


def save_orbax(params, cfg: ModelConfig, path: str | Path) -> Path:
    """Save the parameter pytree (orbax) and ``model_config.json`` to the folder ``path``."""
    path = Path(path).absolute()
    path.mkdir(parents=True, exist_ok=True)
    ckptr = ocp.StandardCheckpointer()
    ckptr.save(path / "params", params, force=True)
    ckptr.wait_until_finished()
    (path / "model_config.json").write_text(json.dumps(cfg.to_dict(), indent=2))
    return path


def load_orbax(path: str | Path, cfg: ModelConfig | None = None) -> tuple[dict, ModelConfig]:
    """Restore ``(params, config)`` saved by :func:`save_orbax`; with ``cfg`` given, the saved
    config must equal it."""
    path = Path(path).absolute()
    try:
        saved = ModelConfig.from_dict(json.loads((path / "model_config.json").read_text()))
    except (OSError, json.JSONDecodeError) as err:
        raise WeightsError(f"{path}: not an orbax engine checkpoint ({err})") from None
    if cfg is not None and saved != cfg:
        diff = [k for k, v in cfg.to_dict().items() if saved.to_dict()[k] != v]
        raise WeightsError(f"{path}: saved model config differs in {', '.join(diff)}")
    abstract = jax.eval_shape(lambda: init_params(saved, 0))
    params = ocp.StandardCheckpointer().restore(path / "params", abstract)
    return params, saved


def load_weights(cfg: ModelConfig, source: str | Path | None = None, seed: int = 0) -> dict:
    """Parameters from ``source`` (safetensors file/folder, or an orbax folder written by
    :func:`save_orbax`), or random from ``seed`` when ``source`` is None."""
    if source is None:
        return init_params(cfg, seed)
    p = Path(source)
    if p.is_dir() and (p / "model_config.json").is_file():
        return load_orbax(p, cfg)[0]
    return load_safetensors(p, cfg)
