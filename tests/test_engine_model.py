"""The Llama-style model: configs, the layer equations, paged vs plain attention, weights in
the Hugging Face safetensors layout and orbax, tokenizers."""

from __future__ import annotations

import dataclasses
import json

import jax.numpy as jnp
import numpy as np
import pytest

from jaxsched.engine import (
    Engine,
    SamplingParams,
    TINY,
    ModelConfig,
    load_model_config,
    load_orbax,
    load_safetensors,
    load_tokenizer,
    load_weights,
    save_orbax,
    save_safetensors,
)
from jaxsched.engine.cache import BlockPool
from jaxsched.engine.config import EngineConfigError
from jaxsched.engine.model import RMSNorm, forward, init_params, rope
from jaxsched.engine.runner import ModelRunner, SampleArgs
from jaxsched.engine.testing import TEST_ENGINE, tiny_params
from jaxsched.engine.tokenizer import ByteTokenizer, TokenizerError
from jaxsched.engine.weights import WeightsError, to_hf_state_dict
from jaxsched.errors import JaxschedError

T = 24  # one sequence length for every plain forward here (one compilation per config)
TOKENS = np.random.RandomState(0).randint(0, 256, size=(1, T)).astype(np.int32)


def one_line(err: Exception) -> str:
    msg = str(err)
    assert "\n" not in msg and msg
    return msg


# ----------------------------------------------------------------------------- configs


def test_model_configs():
    assert load_model_config("tiny") == TINY
    assert TINY.head_dim == 16 and TINY.group_size == 2 and TINY.num_layers == 2
    big = load_model_config("tinyllama-1.1b")
    assert big.head_dim == 64 and big.group_size == 8
    assert ModelConfig.from_hf(big.to_hf()) == big
    with pytest.raises(EngineConfigError) as err:
        ModelConfig(num_heads=4, num_kv_heads=3)
    assert "num_kv_heads" in one_line(err.value)
    with pytest.raises(EngineConfigError) as err:
        load_model_config("no-such-model")
    assert "tiny" in one_line(err.value)


def test_model_config_toml_refuses_unknown_keys(tmp_path):
    path = tmp_path / "m.toml"
    path.write_text("hidden_size = 32\nnum_heads = 2\nnum_kv_heads = 1\nhiden = 3\n")
    with pytest.raises(EngineConfigError) as err:
        load_model_config(path)
    assert "hiden" in one_line(err.value) and "m.toml" in str(err.value)
    path.write_text("[model]\nhidden_size = 32\nnum_heads = 2\nnum_kv_heads = 1\n")
    assert load_model_config(path).head_dim == 16


def test_engine_config_capacity():
    ec = TEST_ENGINE
    assert ec.capacity == (ec.num_blocks - ec.max_batch) * ec.block_size
    assert ec.prefill_buckets() == [16, 32, 64] and ec.bucket(17) == 32
    assert dataclasses.replace(ec, capacity_tokens=40).capacity == 40
    with pytest.raises(EngineConfigError):
        dataclasses.replace(ec, capacity_tokens=10_000)
    with pytest.raises(EngineConfigError):
        dataclasses.replace(ec, num_blocks=ec.max_batch)


# --------------------------------------------------------------------------- equations


def test_rmsnorm_equation():
    x = np.random.RandomState(1).randn(3, 8).astype(np.float32)
    w = np.linspace(0.5, 2, 8).astype(np.float32)
    got = RMSNorm(1e-5).apply({"params": {"weight": jnp.asarray(w)}}, jnp.asarray(x))
    want = w * x / np.sqrt(np.mean(x * x, -1, keepdims=True) + 1e-5)
    np.testing.assert_allclose(np.asarray(got), want, rtol=1e-5)


def test_rope_scores_depend_on_relative_position():
    rs = np.random.RandomState(2)
    q = jnp.asarray(rs.randn(1, 1, 1, 16), jnp.float32)
    k = jnp.asarray(rs.randn(1, 1, 1, 16), jnp.float32)

    def score(p, pk):
        a = rope(q, jnp.array([[p]]), 10000.0)
        b = rope(k, jnp.array([[pk]]), 10000.0)
        return float(jnp.sum(a * b))

    assert score(5, 2) == pytest.approx(score(13, 10), rel=1e-4)
    assert score(7, 7) == pytest.approx(float(jnp.sum(q * k)), rel=1e-4)
    assert score(5, 2) != pytest.approx(score(5, 4), rel=1e-3)
    # rotate-half layout: position p rotates pair (i, i + D/2) by p * theta_i
    x = jnp.zeros((1, 1, 1, 16)).at[..., 0].set(1.0)
    y = np.asarray(rope(x, jnp.array([[3]]), 10000.0))[0, 0, 0]
    assert y[0] == pytest.approx(np.cos(3.0)) and y[8] == pytest.approx(np.sin(3.0))


def test_gqa_equals_attention_with_repeated_kv_heads():
    """Query head h reads key/value head h // G: the same model with the k/v projections
    repeated to one per query head (plain multi-head attention) gives the same logits."""
    params = tiny_params()
    mha = dataclasses.replace(TINY, num_kv_heads=TINY.num_heads)
    g, d = TINY.group_size, TINY.head_dim
    inner = jax_tree_copy(params["params"])
    for i in range(TINY.num_layers):
        attn = inner[f"layers_{i}"]["self_attn"]
        for name in ("k_proj", "v_proj"):
            kern = np.asarray(attn[name]["kernel"]).reshape(TINY.hidden_size, -1, d)
            attn[name]["kernel"] = jnp.asarray(np.repeat(kern, g, axis=1).reshape(
                TINY.hidden_size, -1))
    a = np.asarray(forward(TINY, params, TOKENS))
    b = np.asarray(forward(mha, {"params": inner}, TOKENS))
    np.testing.assert_allclose(a, b, atol=1e-4)


def jax_tree_copy(tree):
    return {k: jax_tree_copy(v) if isinstance(v, dict) else v for k, v in tree.items()}


# ------------------------------------------------------------------ paged vs plain path


def test_paged_prefill_and_decode_match_plain_forward():
    params = tiny_params()
    dense = np.asarray(forward(TINY, params, TOKENS))[0]
    runner = ModelRunner(TINY, TEST_ENGINE, params)
    pool = BlockPool(TEST_ENGINE.num_blocks, TEST_ENGINE.block_size)
    pool.allocate(3)  # the sequence's blocks are not the first ones and not contiguous
    table = []
    for _ in range(TEST_ENGINE.blocks_per_seq):
        table += pool.allocate(1)
        pool.allocate(1)
    split = 10
    tok, logits = runner.prefill(TOKENS[0, :split].tolist(), 0, table, return_logits=True)
    np.testing.assert_allclose(logits, dense[split - 1], atol=1e-4)
    assert tok == int(np.argmax(dense[split - 1]))
    for p in range(split, T):
        toks, lg = runner.decode([(int(TOKENS[0, p]), p, table, SampleArgs())],
                                 return_logits=True)
        np.testing.assert_allclose(lg[0], dense[p], atol=1e-4)
        assert toks[0] == int(np.argmax(dense[p]))


# ----------------------------------------------------------------------------- weights


def test_safetensors_roundtrip_gives_identical_logits(tmp_path):
    params = tiny_params()
    path = save_safetensors(params, TINY, tmp_path / "ckpt")
    assert path.name == "model.safetensors"
    assert ModelConfig.from_hf(tmp_path / "ckpt") == TINY
    loaded = load_safetensors(tmp_path / "ckpt", TINY)
    a = np.asarray(forward(TINY, params, TOKENS))
    assert np.array_equal(a, np.asarray(forward(TINY, loaded, TOKENS)))
    assert np.array_equal(a, np.asarray(forward(TINY, load_weights(TINY, path), TOKENS)))
    # HF names and (out, in) shapes
    sd = to_hf_state_dict(params, TINY)
    assert sd["model.layers.1.self_attn.k_proj.weight"].shape == (32, 64)
    assert sd["model.layers.0.mlp.down_proj.weight"].shape == (64, 128)
    assert sd["lm_head.weight"].shape == (259, 64)
    # an engine on loaded weights decodes the same tokens
    sp = SamplingParams(max_tokens=5, ignore_eos=True)
    outs = [Engine(engine_cfg=TEST_ENGINE, params=p).generate([[1, 2, 3]], sp)[0].token_ids
            for p in (params, loaded)]
    assert outs[0] == outs[1]


def test_sharded_and_bfloat16_checkpoints(tmp_path):
    from safetensors.numpy import save_file

    params = tiny_params()
    sd = to_hf_state_dict(params, TINY)
    names = sorted(sd)
    half = len(names) // 2
    folder = tmp_path / "sharded"
    folder.mkdir()
    save_file({n: sd[n] for n in names[:half]}, str(folder / "model-00001-of-00002.safetensors"))
    save_file({n: sd[n] for n in names[half:]}, str(folder / "model-00002-of-00002.safetensors"))
    index = {"weight_map": {n: f"model-0000{1 if i < half else 2}-of-00002.safetensors"
                            for i, n in enumerate(names)}}
    (folder / "model.safetensors.index.json").write_text(json.dumps(index))
    loaded = load_safetensors(folder, TINY)
    assert np.array_equal(np.asarray(forward(TINY, params, TOKENS)),
                          np.asarray(forward(TINY, loaded, TOKENS)))
    bf = save_safetensors(params, TINY, tmp_path / "bf16.safetensors", dtype="bfloat16")
    loaded = load_safetensors(bf, TINY)
    emb = loaded["params"]["embed_tokens"]["embedding"]
    assert emb.dtype == jnp.float32
    np.testing.assert_allclose(np.asarray(emb), np.asarray(
        params["params"]["embed_tokens"]["embedding"]), rtol=1e-2)


def test_checkpoint_errors_are_one_line(tmp_path):
    from safetensors.numpy import save_file

    sd = to_hf_state_dict(tiny_params(), TINY)

    def attempt(tensors, match):
        path = tmp_path / "bad.safetensors"
        save_file(tensors, str(path))
        with pytest.raises(WeightsError, match=match) as err:
            load_safetensors(path, TINY)
        one_line(err.value)
        assert isinstance(err.value, JaxschedError)

    attempt({k: v for k, v in sd.items() if k != "model.norm.weight"},
            "missing tensor model.norm.weight")
    attempt(sd | {"model.layers.9.mlp.up_proj.weight": sd["model.norm.weight"]},
            "unexpected tensor model.layers.9.mlp.up_proj.weight")
    attempt(sd | {"model.norm.weight": np.ones(63, np.float32)},
            r"model.norm.weight has shape \(63,\), expected \(64,\)")
    attempt(sd | {"model.norm.weight": np.ones(64, np.int32)},
            "model.norm.weight has dtype I32")
    # old checkpoints carry rotary buffers: ignored
    path = tmp_path / "rot.safetensors"
    save_file(sd | {"model.layers.0.self_attn.rotary_emb.inv_freq": np.ones(8, np.float32)},
              str(path))
    load_safetensors(path, TINY)
    with pytest.raises(WeightsError) as err:
        load_safetensors(tmp_path / "nowhere", TINY)
    one_line(err.value)
    (tmp_path / "junk.safetensors").write_bytes(b"not a checkpoint")
    with pytest.raises(WeightsError) as err:
        load_safetensors(tmp_path / "junk.safetensors", TINY)
    one_line(err.value)


def test_tied_embeddings(tmp_path):
    cfg = dataclasses.replace(TINY, tie_word_embeddings=True)
    params = init_params(cfg, 3)
    assert "lm_head" not in params["params"]
    path = save_safetensors(params, cfg, tmp_path / "tied.safetensors")
    loaded = load_safetensors(path, cfg)
    assert np.array_equal(np.asarray(forward(cfg, params, TOKENS)),
                          np.asarray(forward(cfg, loaded, TOKENS)))


def test_orbax_roundtrip(tmp_path):
    params = tiny_params()
    save_orbax(params, TINY, tmp_path / "orbax")
    loaded, cfg = load_orbax(tmp_path / "orbax")
    assert cfg == TINY
    assert np.array_equal(np.asarray(forward(TINY, params, TOKENS)),
                          np.asarray(forward(TINY, loaded, TOKENS)))
    assert np.array_equal(np.asarray(forward(TINY, load_weights(TINY, tmp_path / "orbax"),
                                             TOKENS)),
                          np.asarray(forward(TINY, params, TOKENS)))
    with pytest.raises(WeightsError, match="hidden_size") as err:
        load_orbax(tmp_path / "orbax", dataclasses.replace(TINY, hidden_size=32))
    one_line(err.value)


def test_random_init_is_seeded():
    a, b, c = init_params(TINY, 0), init_params(TINY, 0), init_params(TINY, 1)
    ea, eb, ec = (np.asarray(p["params"]["layers_0"]["mlp"]["up_proj"]["kernel"])
                  for p in (a, b, c))
    assert np.array_equal(ea, eb) and not np.array_equal(ea, ec)


# -------------------------------------------------------------------------- tokenizers


def test_byte_tokenizer():
    tok = ByteTokenizer()
    text = "héllo, wörld ✓"
    ids = tok.encode(text)
    assert ids[0] == tok.bos_id and all(0 <= i < 256 for i in ids[1:])
    assert tok.decode(ids) == text
    assert tok.decode(ids + [tok.eos_id]) == text
    assert load_tokenizer(None).vocab_size == 259 <= TINY.vocab_size


def _hf_tokenizer_file(tmp_path):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=200, special_tokens=["<unk>", "<s>", "</s>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    corpus = ["the quick brown fox jumps over the lazy dog"] * 20 + ["hello world"] * 20
    tok.train_from_iterator(corpus, trainer)
    path = tmp_path / "tokenizer.json"
    tok.save(str(path))
    return path


def test_hf_tokenizer_built_offline(tmp_path):
    path = _hf_tokenizer_file(tmp_path)
    tok = load_tokenizer(path)
    assert tok.vocab_size <= 259 and tok.eos_id == 2 and tok.bos_id == 1
    ids = tok.encode("hello world, the fox")
    assert tok.decode(ids) == "hello world, the fox"
    assert load_tokenizer(tmp_path).vocab_size == tok.vocab_size  # a folder works too
    engine = Engine(engine_cfg=TEST_ENGINE, params=tiny_params(), tokenizer=tok)
    out = engine.generate(["hello world"], SamplingParams(max_tokens=6, ignore_eos=True))[0]
    assert len(out.token_ids) == 6 and out.text == tok.decode(out.token_ids)
    # build_engine: config.json and tokenizer.json next to the weights are picked up
    from jaxsched.engine import build_engine
    from jaxsched.engine.tokenizer import HFTokenizer

    folder = tmp_path / "ckpt"
    save_safetensors(tiny_params(), TINY, folder)
    (folder / "tokenizer.json").write_text(path.read_text())
    built = build_engine(weights=folder, engine_cfg=TEST_ENGINE, policy="vllm")
    assert built.model_cfg == TINY and isinstance(built.tokenizer, HFTokenizer)
    again = built.generate(["hello world"], SamplingParams(max_tokens=6, ignore_eos=True))[0]
    assert again.token_ids == out.token_ids
    (tmp_path / "bad.json").write_text("{}")
    with pytest.raises(TokenizerError) as err:
        load_tokenizer(tmp_path / "bad.json")
    one_line(err.value)
