"""A tiny random Llama in Hugging Face layout, for tests and examples of the vLLM plugin.

``write_tiny_llama(folder)`` writes ``config.json`` and ``model.safetensors`` (transformers'
``LlamaForCausalLM(...).save_pretrained``) and a ``tokenizer.json`` built with ``tokenizers``:
a byte-level BPE with the 256 byte tokens, no merges, and ``<s>``/``</s>`` specials, so every
text encodes to one token per byte. vLLM's CPU attention needs ``head_dim >= 32``; the default
model has one layer of width 64 (two heads of 32) and loads in a few seconds.

Command line (the same)::

    python -m jaxsched.integrations.vllm.testing DIR
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from tokenizers.pre_tokenizers import ByteLevel

from jaxsched.config import config_from_dict, config_snapshot, workload_fingerprint
from jaxsched.export.policy_file import policy_document, write_policy

__all__ = ["write_tiny_llama", "write_policy_file", "main"]

_SPECIALS = ("<s>", "</s>")


def _tokenizer(folder: Path) -> int:
    """Write ``tokenizer.json`` (and its config); returns the vocabulary size."""
    alphabet = ByteLevel.alphabet()  # the 256 printable stand-ins of the bytes
    vocab = {tok: i for i, tok in enumerate(_SPECIALS)}
    for ch in sorted(alphabet):
        vocab[ch] = len(vocab)
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens(list(_SPECIALS))
    tok.save(str(folder / "tokenizer.json"))
    (folder / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "PreTrainedTokenizerFast", "bos_token": "<s>", "eos_token": "</s>",
        "model_max_length": 1 << 20, "clean_up_tokenization_spaces": False}, indent=1))
    (folder / "special_tokens_map.json").write_text(
        json.dumps({"bos_token": "<s>", "eos_token": "</s>"}))
    return len(vocab)


def write_tiny_llama(folder: str | Path, *, hidden_size: int = 64, num_layers: int = 1,
                     num_heads: int = 2, intermediate_size: int = 128,
                     max_position_embeddings: int = 4096, seed: int = 0) -> Path:
    """Write a random Llama (``head_dim = hidden_size / num_heads``, at least 32) with a
    byte-level tokenizer into ``folder``; returns the folder."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    if hidden_size % num_heads or hidden_size // num_heads < 32:
        raise ValueError(f"head_dim = hidden_size / num_heads must be an integer >= 32 "
                         f"(vLLM's CPU attention), got {hidden_size} / {num_heads}")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    vocab_size = _tokenizer(folder)
    cfg = LlamaConfig(
        vocab_size=vocab_size, hidden_size=hidden_size, intermediate_size=intermediate_size,
        num_hidden_layers=num_layers, num_attention_heads=num_heads,
        num_key_value_heads=num_heads, max_position_embeddings=max_position_embeddings,
        bos_token_id=0, eos_token_id=1, tie_word_embeddings=False, torch_dtype="float32")
    torch.manual_seed(seed)
    model = LlamaForCausalLM(cfg).to(torch.float32)
    model.save_pretrained(str(folder), safe_serialization=True)
    return folder


def write_policy_file(path: str | Path, policy: str, params: dict, *, capacity: int,
                      max_batch: int, queue_size: int = 64, d0: float = 1.0, d1: float = 0.0,
                      options: dict | None = None, workload: dict | None = None,
                      metrics: dict | None = None, block_size: int = 32,
                      extra_system: dict | None = None) -> Path:
    """Write a jaxsched policy file for ``policy`` with ``params`` on a system of ``capacity``
    tokens in blocks of ``block_size`` and ``max_batch`` seats (what the plugin checks against
    vLLM). ``workload`` is the
    ``[workload]`` table the file records (default: a small one-class Poisson stream);
    ``metrics`` the figures it records (default: not measured, null)."""
    workload = workload or {"kind": "poisson", "horizon": 200, "num_workloads": 1, "seed": 0,
                            "classes": [{"prompt_len": 16, "output_len": 16, "rate": 0.1}]}
    system = {"capacity": capacity, "d0": d0, "d1": d1, "max_batch": max_batch,
              "queue_size": queue_size, "restart_on_evict": False, "block_size": block_size,
              **(extra_system or {})}
    cfg = config_from_dict({"system": system, "workload": workload,
                            "policy": {"name": policy, **(options or {})}}, source=str(path))
    doc = policy_document(config_snapshot(cfg), params, metrics or {}, source=str(path),
                          hardware=None, fingerprint=workload_fingerprint(cfg))
    return write_policy(doc, path)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        print("usage: python -m jaxsched.integrations.vllm.testing DIR", file=sys.stderr)
        return 2
    print(write_tiny_llama(argv[0]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
