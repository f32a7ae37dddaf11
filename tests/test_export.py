"""Policy configs: export from a tuned study, load, validate by re-simulation, refuse bad
files, map to vLLM / SGLang flags, the shipped JSON Schema."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from jaxsched.export import policy_file as ex
from jaxsched.cli import main
from jaxsched.config import config_snapshot, load_config
from jaxsched.errors import JaxschedError
from jaxsched.export.server_flags import server_config
from jaxsched.testing import small_tuning_config
from tuning.optuna_loop import run_optuna
from tuning.trial_states import best_trials
from tuning.tune_job import prepare
from tuning.export_study import export_from_study

@pytest.fixture(scope="module")
def tuned(tmp_path_factory):
    """A small tuned study in an SQLite file: (storage URL, study name, job, folder)."""
    d = tmp_path_factory.mktemp("export")
    cfg = d / "small.toml"
    cfg.write_text(small_tuning_config('batch = 4\n[[tune.constraints]]\n'
                                       'metric = "evictions_per_request"\nmax = 5.0'))
    url = f"sqlite:///{d / 'tune.db'}"
    job = prepare(load_config(cfg))
    run_optuna(job, trials=8, batch=4, storage=url, study_name="ex")
    return url, "ex", job, d


@pytest.fixture()
def exported(tuned, tmp_path):
    url, study, job, _ = tuned
    path = ex.write_policy(export_from_study(url, study), tmp_path / "policy.json")
    return path, json.loads(path.read_text())


def test_export_load_validate_round_trip(tuned, exported):
    url, study, job, _ = tuned
    path, data = exported
    assert data["schema_version"] == ex.SCHEMA_VERSION and data["kind"] == "jaxsched-policy"
    assert set(data) == {"schema_version", "kind", "jaxsched_version", "created", "policy",
                         "system", "workload", "metrics", "objective", "tuning"}
    import optuna

    st = optuna.load_study(study_name=study, storage=url)
    best = best_trials(st, job.objective.with_baseline(st.user_attrs["baseline_metrics"]))[0]
    assert data["tuning"]["trial"] == best.number and data["tuning"]["sampler"] == "tpe"
    assert data["policy"] == {"name": "flow_control", "options": {},
                              "params": {"budget": best.params["budget"]}}
    assert data["system"] == {"capacity": 600.0, "d0": 1.0, "d1": 0.0, "d1_prefill": 0.0,
                              "d1_context": 0.0, "d2": 0.0, "block_size": 1, "max_batch": 24,
                              "queue_size": 8, "restart_on_evict": False, "num_classes": 2,
                              "hardware": None}
    assert data["workload"]["fingerprint"] == job.workload_fingerprint
    assert data["metrics"]["latency_p95"] == pytest.approx(best.user_attrs["metrics"]["latency_p95"])
    assert data["objective"]["values"]["score"] == pytest.approx(best.values[0])
    assert data["objective"]["feasible"] is True
    assert data["objective"]["constraint_values"] == {"evictions_per_request<=5": pytest.approx(
        best.constraints["evictions_per_request<=5"])}

    # the loader the engine uses: file -> registry policy, parameter pytree, metadata
    policy, params, meta = ex.load_policy(path)
    assert policy.name == "flow_control" and meta.tuning.study == study
    np.testing.assert_allclose(np.asarray(params["budget"]), best.params["budget"], rtol=1e-6)

    report = ex.validate_policy(path)
    assert report.ok and report.simulated
    assert {r[0] for r in report.rows} >= set(ex.REQUIRED_METRICS)
    assert max(r[3] for r in report.rows) <= 1e-6  # the same simulator, the same numbers

    # a specific trial; a failed or missing one is refused
    doc = export_from_study(url, study, trial=0)
    assert doc.tuning.trial == 0 and doc.policy.params["budget"] == pytest.approx(
        job.space.default_point()["budget"])
    with pytest.raises(JaxschedError, match=r"--trial 99: no such trial in study 'ex'"):
        export_from_study(url, study, trial=99)
    with pytest.raises(JaxschedError, match=r"--study 'nope': no such study"):
        export_from_study(url, "nope")


def test_shipped_json_schema_matches_and_accepts_exports(exported):
    shipped = json.loads(ex.SCHEMA_PATH.read_text())
    assert shipped == ex.json_schema(), "regenerate jaxsched/data/policy.schema.json"
    jsonschema = pytest.importorskip("jsonschema")
    jsonschema.Draft202012Validator.check_schema(shipped)
    _, data = exported
    jsonschema.validate(data, shipped)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({**data, "surprise": 1}, shipped)


def test_d2_is_recorded_and_optional(tmp_path, exported):
    # tau = d0 + d1 (P + D) + d2 R: exports record d2; files written before it existed load
    # with d2 = 0 and still validate against the shipped schema.
    _, data = exported
    assert data["system"]["d2"] == 0.0
    older = _edit(data, "system.d2", delete=True)
    path = _write(tmp_path, older, "older.json")
    _, _, doc = ex.load_policy(path)
    assert doc.system.d2 == 0.0
    assert ex.document_config(doc).d2 == 0.0
    jsonschema = pytest.importorskip("jsonschema")
    jsonschema.validate(older, json.loads(ex.SCHEMA_PATH.read_text()))
    _, _, doc = ex.load_policy(_write(tmp_path, _edit(data, "system.d2", 0.25), "d2.json"))
    assert doc.system.d2 == 0.25 and ex.document_config(doc).d2 == 0.25


def test_blocks_and_split_coefficients_are_recorded_and_optional(tmp_path, exported):
    # Files written before block_size, d1_prefill and d1_context existed (only d1) load with
    # blocks of one token and d1 for both coefficients, and validate against the schema.
    _, data = exported
    jsonschema = pytest.importorskip("jsonschema")
    schema = json.loads(ex.SCHEMA_PATH.read_text())
    older = data
    for key in ("system.block_size", "system.d1_prefill", "system.d1_context"):
        older = _edit(older, key, delete=True)
    older = _edit(older, "system.d1", 0.125)
    path = _write(tmp_path, older, "older.json")
    _, _, doc = ex.load_policy(path)
    assert doc.system.block_size == 1 and doc.system.coefficients == (0.125, 0.125)
    cfg = ex.document_config(doc)
    assert (cfg.block_size, cfg.d1_prefill, cfg.d1_context) == (1, 0.125, 0.125)
    jsonschema.validate(older, schema)
    # split coefficients and blocks round-trip (no d1: the theory's single value is absent)
    split = _edit(_edit(_edit(_edit(data, "system.d1", delete=True), "system.d1_prefill", 0.5),
                        "system.d1_context", 0.0625), "system.block_size", 4)
    jsonschema.validate(split, schema)
    _, _, doc = ex.load_policy(_write(tmp_path, split, "split.json"))
    cfg = ex.document_config(doc)
    assert (cfg.block_size, cfg.d1_prefill, cfg.d1_context) == (4, 0.5, 0.0625)
    snap = config_snapshot(cfg)["system"]
    assert "d1" not in snap and snap["block_size"] == 4 and snap["d1_prefill"] == 0.5
    # d1 with a split coefficient that differs is refused in one line
    bad = _write(tmp_path, _edit(split, "system.d1", 0.5), "bad-d1.json")
    with pytest.raises(JaxschedError, match=r"d1_context = 0.0625 differs from d1 = 0.5") as e:
        ex.load_policy(bad)
    assert "\n" not in str(e.value)


def _write(tmp_path, data, name="bad.json") -> Path:
    p = tmp_path / name
    p.write_text(json.dumps(data) if not isinstance(data, str) else data)
    return p


def _edit(data, dotted, value=None, delete=False):
    data = json.loads(json.dumps(data))
    node = data
    parts = dotted.split(".")
    for part in parts[:-1]:
        node = node[part]
    if delete:
        del node[parts[-1]]
    else:
        node[parts[-1]] = value
    return data


@pytest.mark.parametrize("edit,message", [
    (lambda d: _edit(d, "schema_version", 2), "schema_version 2 is not supported: jaxsched "),
    (lambda d: _edit(d, "schema_version", 0), "schema_version 0 is not supported"),
    (lambda d: _edit(d, "schema_version", "1"), "schema_version: expected an integer"),
    (lambda d: _edit(d, "schema_version", delete=True), "schema_version: missing field"),
    (lambda d: _edit(d, "surprise", 1), "bad.json: surprise: unknown field"),
    (lambda d: _edit(d, "policy.priority", 3), "bad.json: policy.priority: unknown field"),
    (lambda d: _edit(d, "metrics.goodput", 3.0), "bad.json: metrics.goodput: unknown field"),
    (lambda d: _edit(d, "metrics.latency_p95", delete=True), "bad.json: metrics.latency_p95: missing field"),
    (lambda d: _edit(d, "system.capacity", -5), "bad.json: system.capacity: Input should be greater than 0"),
    (lambda d: _edit(d, "system.d2", -0.5), "bad.json: system.d2: Input should be greater than or equal to 0"),
    (lambda d: _edit(d, "policy.params.budget", -1.0), "bad.json: policy.params.budget must be >= 0"),
    (lambda d: _edit(d, "policy.params.speed", 1.0), "bad.json: policy.params.speed: unknown parameter"),
    (lambda d: _edit(d, "policy.name", "nope"), "bad.json: policy: unknown policy 'nope'"),
    (lambda d: _edit(d, "policy.options", {"budget_distribution": "zipf"}), "bad.json: policy: policy 'flow_control'"),
    (lambda d: [1, 2], "bad.json: not a jaxsched policy file"),
])
def test_bad_files_are_refused_with_one_line(tmp_path, exported, edit, message):
    _, data = exported
    path = _write(tmp_path, edit(data))
    with pytest.raises(JaxschedError) as err:
        ex.load_policy(path)
    text = str(err.value)
    assert "\n" not in text and message in text, text


def test_invalid_json_and_missing_file(tmp_path):
    with pytest.raises(JaxschedError, match=r"bad.json: invalid JSON: line 1 column"):
        ex.load_policy(_write(tmp_path, "{nope"))
    with pytest.raises(JaxschedError, match=r"missing.json: no such file"):
        ex.load_policy(tmp_path / "missing.json")


def test_validate_catches_edited_workload_and_metrics(tmp_path, exported):
    _, data = exported
    edited = _write(tmp_path, _edit(data, "workload.config.seed", 7), "w.json")
    with pytest.raises(JaxschedError, match="workload.fingerprint: does not match workload.config"):
        ex.validate_policy(edited)
    p95 = data["metrics"]["latency_p95"]
    lying = _write(tmp_path, _edit(data, "metrics.latency_p95", p95 * 1.5), "m.json")
    report = ex.validate_policy(lying)
    assert not report.ok
    assert [r[0] for r in report.rows if not r[4]] == ["latency_p95"]
    assert ex.validate_policy(lying, rtol=0.6).ok


def test_cli_export_validate_and_errors(tuned, tmp_path, capsys):
    url, study, _, _ = tuned
    out = tmp_path / "p.json"
    assert main(["export", "--study", study, "--storage", url, "--out", str(out)]) == 0
    assert f"wrote {out}" in " ".join(capsys.readouterr().out.split())
    assert main(["validate", str(out), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["ok"] and report["policy"] == "flow_control"
    bad = _write(tmp_path, _edit(json.loads(out.read_text()), "schema_version", 9))
    assert main(["validate", str(bad)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {bad}: schema_version 9 is not supported") and err.count("\n") == 1
    assert main(["export", "--study", study, "--storage", url, "--to", "vllm",
                 "--out", str(tmp_path / "v.json")]) == 0
    assert "vllm serve MODEL" in capsys.readouterr().out
    v = json.loads((tmp_path / "v.json").read_text())
    assert v["server"] == "vllm" and v["command"].startswith("vllm serve MODEL ")
    assert main(["export", "--policy", str(out), "--to", "sglang", "--json"]) == 0
    s = json.loads(capsys.readouterr().out)
    assert s["flags"]["--max-total-tokens"] == 600
    assert main(["export", "--policy", str(out), "--to", "tgi"]) == 2
    assert "--to 'tgi': expected one of vllm, sglang" in capsys.readouterr().err


def test_pareto_study_needs_a_trial_number(tmp_path):
    cfg = tmp_path / "p.toml"
    cfg.write_text(small_tuning_config('batch = 4\nobjective = "pareto"'))
    url = f"sqlite:///{tmp_path / 'p.db'}"
    out = run_optuna(prepare(load_config(cfg)), trials=8, batch=4, storage=url,
                         study_name="par")
    if len(out.best) > 1:
        with pytest.raises(JaxschedError, match=r"is multi-objective: choose one of its "
                                                r"Pareto-optimal trials with --trial N"):
            export_from_study(url, "par")
    n = out.best[-1].number
    doc = export_from_study(url, "par", trial=n)
    assert doc.objective.kind == "pareto"
    assert set(doc.objective.values) == {"completed_per_time", "latency_p95"}


def _doc(name, params, options=None, **system):
    snapshot = {
        "system": {"capacity": 16492.0, "d0": 1.0, "d1": 0.0, "max_batch": 1024,
                   "queue_size": 64, "restart_on_evict": True, **system},
        "workload": {"kind": "poisson", "horizon": 100, "warmup": 10, "num_workloads": 2,
                     "seed": 0, "classes": [{"prompt_len": 10, "output_len": 20, "rate": 5.0},
                                            {"prompt_len": 10, "output_len": 60, "rate": 5.0}]},
        "policy": {"name": name, **(options or {})},
    }
    metrics = {k: 1.0 for k in ex.REQUIRED_METRICS}
    return ex.policy_document(snapshot, params, metrics, source="t.toml", hardware=None,
                              fingerprint="sha256:" + "0" * 64)


def test_vllm_flags_keep_the_tuned_block_size():
    # tuned with blocks of 32 tokens: vLLM gets the same blocks, floor(16492 / 32) = 515, and
    # its null block
    v = server_config(_doc("vllm", {"max_num_seqs": 96}, block_size=32), "vllm")
    assert v.flags["--block-size"] == 32 and v.flags["--num-gpu-blocks-override"] == 516


def test_server_flags_and_notes():
    v = server_config(_doc("vllm", {"max_num_seqs": 96, "max_num_batched_tokens": 4096,
                                       "watermark": 0.05}), "vllm")
    assert v.flags["--max-num-seqs"] == 96 and v.flags["--max-num-batched-tokens"] == 4096
    assert v.flags["--enable-chunked-prefill"] is True
    assert v.flags["--num-gpu-blocks-override"] == 1032 and v.flags["--block-size"] == 16
    assert v.flags["--watermark"] == "0.05"  # vLLM v1's --watermark (0.32)
    # token memory: jaxsched's vLLM scheduler cannot run the policy itself
    assert v.plugin_command is None and v.plugin_refusal.startswith("system.block_size = 1")
    # tuned in 16-token blocks: the plugin line runs it, with the same budget and blocks
    vb = server_config(_doc("vllm", {"max_num_seqs": 96, "max_num_batched_tokens": 4096},
                               block_size=16), "vllm", "tuned.json")
    assert vb.plugin_refusal is None
    assert "--scheduler-cls jaxsched.integrations.vllm.JaxschedScheduler" in vb.plugin_command
    assert "--max-num-batched-tokens 4096" in vb.plugin_command
    assert "--block-size 16 --num-gpu-blocks-override 1031 --max-num-seqs 1024" in vb.plugin_command
    assert """--additional-config '{"jaxsched": {"policy": "tuned.json"}}'""" in vb.plugin_command
    v0 = server_config(_doc("vllm", {}, {"scheduler": "v0"}, block_size=16), "vllm")
    assert v0.plugin_command is None and v0.plugin_refusal.startswith("scheduler='v0'")
    fb = server_config(_doc("flow_control", {"budget": 2.5}, block_size=16), "vllm")
    assert fb.plugin_command is not None
    assert any(n.startswith("budget = 2.5:") and "the --scheduler-cls line runs it" in n
               for n in fb.notes)
    assert any(n.startswith("restart_on_evict") for n in v.notes)
    assert "--max-num-seqs 96" in v.command and "--enable-chunked-prefill " in v.command + " "

    s = server_config(_doc("sglang", {"new_token_ratio_init": 0.5, "new_token_ratio_min": 0.1,
                                         "new_token_ratio_decay_steps": 300.0,
                                         "max_new_tokens": 2048, "retract_steps": 10}), "sglang")
    assert s.env == {"SGLANG_INIT_NEW_TOKEN_RATIO": "0.5", "SGLANG_MIN_NEW_TOKEN_RATIO_FACTOR": "0.2",
                     "SGLANG_NEW_TOKEN_RATIO_DECAY_STEPS": "300",
                     "SGLANG_CLIP_MAX_NEW_TOKENS_ESTIMATION": "2048",
                     "SGLANG_RETRACT_DECODE_STEPS": "10"}
    assert s.flags["--max-total-tokens"] == 16492 and s.flags["--schedule-conservativeness"] == 1.0
    assert s.command.startswith("SGLANG_INIT_NEW_TOKEN_RATIO=0.5 ")
    s2v = server_config(_doc("sglang", {"new_token_ratio_init": 0.5}), "vllm")
    assert any(n.startswith("new_token_ratio_init = 0.5:") for n in s2v.notes)

    f = server_config(_doc("flow_control_known", {"budget": [4.0, 2.0]}), "vllm")
    assert f.flags["--max-num-seqs"] == 4 * 20 + 2 * 60  # budget x output length
    assert any(n.startswith("budget = 4, 2: admissions per iteration") and
               "vllm cannot express it" in n for n in f.notes)
    # a policy the mapping does not know: every tuned parameter gets a note
    a = server_config(_doc("alpha_protection", {"alpha": 0.3}), "sglang")
    assert any(n.startswith("alpha = 0.3:") and "sglang cannot express it" in n for n in a.notes)
    with pytest.raises(JaxschedError, match="--to 'trt'"):
        server_config(_doc("greedy", {"max_num_seqs": 8}), "trt")
