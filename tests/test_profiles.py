"""The shipped hardware profile and the rules for the iteration-time coefficients.

* The A100 / Llama-2-7B profile loads, and its d0, d1_prefill, d1_context give iteration times
  within the fit's error of iterations composed from Vidur's per-operator measurements
  (numbers copied below with their source); the old single-d1 profile is 10x or more off on
  the large decode batches.
* ``d1`` means both coefficients; a table that gives ``d1`` and a split coefficient that
  differs is refused in one line; a config's keys override its profile's; an old profile with
  only ``d1`` keeps working; the theory's single ``d1`` is refused when the two differ.
* Vidur's CSV columns are read by ``jaxsched.tools.vidur`` and the fit recovers known coefficients.
"""

from __future__ import annotations

import pytest

from jaxsched.config import CONFIG_DIR, config_from_dict, load_config, load_profile
from jaxsched.errors import JaxschedError

PROFILE = "a100-80gb-llama2-7b"
LAYERS = 32

# Vidur (github.com/microsoft/vidur, MIT), commit 7d47513363ec447a741ac5e47241580b47724fbf,
# data/profiling/compute/a100/meta-llama/Llama-2-7b-hf/, tensor parallel 1, medians in ms:
# mlp.csv, per layer, the sum of every operator but the embedding, and the embedding, at
# num_tokens = b; attention.csv, per layer, attn_decode + attn_output_reshape at
# (batch_size b, kv_cache_size k).
VIDUR_DECODE = [
    # (b, k, mlp per layer, embedding, attention per layer)
    (64, 736, 0.303, 0.006, 0.435 + 0.002),
    (128, 3072, 0.3825, 0.009, 3.22 + 0.004),
    (8, 3136, 0.283, 0.008, 0.318 + 0.002),
]
FIT_MAX_DECODE_ERROR = 0.142  # the fit's largest decode error (the profile's header)


def _vidur_seconds(mlp, emb, attn):
    return 1e-3 * (emb + LAYERS * (mlp + attn))


def test_shipped_a100_profile_follows_vidur_decode_iterations():
    prof = load_profile(PROFILE, CONFIG_DIR)
    assert prof.capacity == 136490
    d1p, d1c = prof.coefficients
    assert d1p / d1c > 100  # a prefill token costs two orders of magnitude more
    for b, k, mlp, emb, attn in VIDUR_DECODE:
        vidur = _vidur_seconds(mlp, emb, attn)
        fitted = prof.d0 + d1c * b * k
        assert abs(fitted - vidur) / vidur <= FIT_MAX_DECODE_ERROR, (b, k, fitted, vidur)
    # The previous single-d1 values (d0 = 27.6 ms, d1 = 11.5 us for both kinds of token)
    # made the large decode batches 20-40x too slow.
    for b, k, mlp, emb, attn in VIDUR_DECODE[:2]:
        old = 0.0276 + 1.15e-5 * b * k
        assert old / _vidur_seconds(mlp, emb, attn) > 20


def test_a_config_with_the_profile_gets_split_coefficients_and_can_override_them():
    base = {"workload": {"kind": "saturated", "horizon": 10,
                         "classes": [{"prompt_len": 8, "output_len": 8}]}}
    prof = load_profile(PROFILE, CONFIG_DIR)
    cfg = config_from_dict({**base, "system": {"profile": PROFILE}})
    assert (cfg.d0, cfg.d1_prefill, cfg.d1_context) == (prof.d0, *prof.coefficients)
    with pytest.raises(JaxschedError, match=r"system\.d1: the theory uses one d1"):
        cfg.d1
    cfg = config_from_dict({**base, "system": {"profile": PROFILE, "d1": 3.5e-7}})
    assert cfg.d1_prefill == cfg.d1_context == cfg.d1 == 3.5e-7  # d1 sets both
    cfg = config_from_dict({**base, "system": {"profile": PROFILE, "d1_context": 1e-6}})
    assert (cfg.d1_prefill, cfg.d1_context) == (prof.coefficients[0], 1e-6)
    # one table: d1 with an equal split key is fine, with a different one refused in one line
    cfg = config_from_dict({**base, "system": {"capacity": 100, "d1": 0.5, "d1_prefill": 0.5}})
    assert cfg.d1 == 0.5
    with pytest.raises(JaxschedError) as err:
        config_from_dict({**base, "system": {"capacity": 100, "d1": 0.5, "d1_context": 0.25}},
                         source="c.toml")
    assert str(err.value) == ("c.toml: system: d1_context = 0.25 differs from d1 = 0.5: give "
                              "d1 (both coefficients) or d1_prefill and d1_context, not both")


def test_old_single_d1_profile_and_block_size_resolution(tmp_path):
    (tmp_path / "old.toml").write_text(
        '[system]\nname = "old"\nmodel = "m"\ndevice = "cpu"\ncapacity = 1000\nd0 = 0.002\n'
        'd1 = 3e-6\nblock_size = 16\n')
    data = {"system": {"profile": "old.toml"},
            "workload": {"kind": "saturated", "horizon": 10,
                         "classes": [{"prompt_len": 8, "output_len": 8}]}}
    cfg = config_from_dict(data, base_dir=tmp_path)
    assert cfg.d1_prefill == cfg.d1_context == cfg.d1 == 3e-6
    assert cfg.block_size == 16  # the profile's, unless the config sets one
    data["system"]["block_size"] = 4
    assert config_from_dict(data, base_dir=tmp_path).block_size == 4
    (tmp_path / "bad.toml").write_text(
        '[system]\nname = "b"\nmodel = "m"\ndevice = "cpu"\ncapacity = 1000\nd0 = 0.002\n')
    data["system"]["profile"] = "bad.toml"
    with pytest.raises(JaxschedError, match=r"d1 \(or both d1_prefill and d1_context\) is "
                                            r"required"):
        config_from_dict(data, base_dir=tmp_path)


def test_requests_that_never_fit_in_whole_blocks_are_refused():
    data = {"system": {"capacity": 18, "block_size": 8},
            "workload": {"kind": "saturated", "horizon": 10,
                         "classes": [{"prompt_len": 8, "output_len": 9}]}}
    # 17 tokens take 3 blocks of 8 = 24 > C_b = 16 (18 holds two whole blocks)
    with pytest.raises(JaxschedError, match=r"prompt \+ output = 17 exceeds system.capacity = "
                                            r"18 tokens \(16 in whole blocks of 8\)"):
        config_from_dict(data, source="c.toml")
    data["system"]["block_size"] = 1
    assert config_from_dict(data).block_size == 1


def test_wait_reproductions_keep_the_papers_single_d1():
    for name, d1 in (("wait-high", 3.5e-7), ("wait-low", 1.15e-5)):
        cfg = load_config(name)
        assert (cfg.d0, cfg.d1) == (0.0276, d1)


def test_vidur_reader_and_fit_recover_known_coefficients(tmp_path):
    from jaxsched.tools import vidur

    # Synthetic Vidur-format files, per layer: the token-wise operators take 0.3 ms up to 64
    # tokens and 0.3 + 0.002 n at the prefill sizes, attention decode 1e-5 ms per cached token
    # of the batch, attention prefill 0.0003 ms per token.
    mlp = tmp_path / "mlp.csv"
    layer = {1: 0.3, 64: 0.3, 512: 0.3 + 0.002 * 512, 1024: 0.3 + 0.002 * 1024}
    mlp.write_text("time_stats.emb.median,time_stats.mlp_up_proj.median,num_tokens,"
                   "num_tensor_parallel_workers\n"
                   + "".join(f"0.0,{t},{n},1\n" for n, t in layer.items())
                   + "0.0,9.9,64,2\n")  # another tensor-parallel degree: ignored
    attn = tmp_path / "attention.csv"
    rows = ["time_stats.attn_decode.median,time_stats.attn_prefill.median,"
            "num_tensor_parallel_workers,batch_size,prefill_chunk_size,kv_cache_size,is_prefill"]
    rows += [f"{1e-5 * b * k},,1,{b},0,{k},False" for b in (1, 64) for k in (32, 1024)]
    rows += [f",{3e-4 * c},1,1,{c},0,True" for c in (512, 1024)]
    rows += [",5.0,1,1,512,256,True"]  # cached context: not a sample
    attn.write_text("\n".join(rows) + "\n")
    samples = vidur.iteration_samples(vidur.read_mlp(mlp), vidur.read_attention(attn), 32)
    assert len(samples) == 6
    fit = vidur.fit_profile(samples)
    # decode: 32 (0.3 + 1e-5 b k) ms; prefill: 32 (0.3 + 0.0023 c) ms, exactly linear
    assert fit.d0 == pytest.approx(32 * 0.3e-3, rel=1e-6)
    assert fit.d1_prefill == pytest.approx(32 * 2.3e-6, rel=1e-6)
    assert fit.d1_context == pytest.approx(32e-8, rel=1e-6)
    assert fit.rel_rms < 1e-6 and fit.single_rel_rms > 0.1
    bad = tmp_path / "bad.csv"
    bad.write_text("a,b\n1,2\n")
    with pytest.raises(JaxschedError, match="not a Vidur profile"):
        vidur.read_mlp(bad)


def test_wait_threshold_fit_refuses_split_coefficients():
    # The theory's formulas take one d1; with d1_prefill != d1_context the fit refuses.
    from jaxsched.policies import get_policy

    info = {"capacity": 136490.0, "d0": 0.0276, "d1": None, "d1_prefill": 6.27e-5,
            "d1_context": 2.76e-7, "prompt_len": [20] * 3, "output_len": [100, 200, 300],
            "rate": [42.1, 28.1, 14.0], "weight": [1.0] * 3, "params": {}}
    for name in ("wait", "nested_wait"):
        with pytest.raises(JaxschedError, match=r"use the theory's single d1, but d1_prefill "
                                                r"= 6.27e-05 and d1_context = 2.76e-07 differ"):
            get_policy(name).fit_defaults(info)
    fitted = get_policy("wait").fit_defaults({**info, "d1": 3.5e-7})
    assert len(fitted["threshold"]) == 3
