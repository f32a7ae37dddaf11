"""Reproductions of the papers' experiments: tables, PNG plots and a markdown summary.

* ``flow-control``: Dong & Cao's synthetic setting (``configs/flow-control.toml``): the
  flow-control policies against greedy and the baselines of Jaillet et al.
* ``wait-low``, ``wait-high``: the WAIT paper's settings (``configs/wait-*.toml``): WAIT and
  Nested WAIT against the paper's baselines (vLLM's prefill-first v0 scheduler, Sarathi-Serve
  with chunk 512), vLLM v1, SGLang and greedy; bound: the fluid throughput.
* ``congestion``: saturated greedy admission from an empty start (Ao, Dong, Luo &
  Simchi-Levi): one class for output/prompt ratios 1 to 100 against the fixed point ``x*``
  and the limit-cycle prediction, then two classes whose decode lengths share a large common
  divisor against a coprime pair.

``scale`` shrinks horizons and workload counts for quick runs (tests use it).
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Callable

import numpy as np

from jaxsched import api, theory
from jaxsched.config import CONFIG_DIR, Config, config_from_dict, load_config
from jaxsched.errors import JaxschedError
from jaxsched.core.metrics import histogram_floor
from jaxsched.tools.plots import (
    cdf_or_note,
    histogram_cdf,
    line_style,
    log_time_axis,
    mark_warmup,
    no_completion_note,
    pyplot,
    time_unit,
)

__all__ = ["REPRODUCTIONS", "WAIT_LABELS", "Contender", "PolicyRow", "Reproduction", "reproduce"]

TABLE_KEYS = ("completed_per_time", "tokens_per_time", "latency_mean", "latency_p95",
              "evictions", "recomputed_tokens", "utilization")


@dataclasses.dataclass(frozen=True)
class Contender:
    label: str
    settings: dict  # the [policy] table: name plus options and parameters


@dataclasses.dataclass
class PolicyRow:
    label: str
    metrics: dict  # metric -> mean over workloads
    bound_ratio: float  # throughput / theory bound


@dataclasses.dataclass
class Reproduction:
    name: str
    columns: list[str]
    rows: list[list]  # printable rows (label first)
    findings: dict  # named qualitative checks -> value
    files: list[Path]
    policy_rows: list[PolicyRow] = dataclasses.field(default_factory=list)


def _scaled(cfg: Config, scale: float, **overrides) -> Config:
    data = cfg.model_dump(exclude={"source", "resolved"})
    wl = data["workload"]
    wl["horizon"] = max(50, int(wl["horizon"] * scale))
    wl["warmup"] = min(int(wl["warmup"] * scale), wl["horizon"] // 2)
    wl["num_workloads"] = max(2, int(math.ceil(wl["num_workloads"] * min(1.0, scale))))
    for section, values in overrides.items():
        data[section].update(values)
    for key in [k for k, v in data["system"].items() if v is None]:
        del data["system"][key]
    return config_from_dict(data, source=cfg.source, base_dir=CONFIG_DIR)


def _with_policy(cfg: Config, settings: dict) -> Config:
    """The config with another [policy]; the value "max_batch" stands for system.max_batch."""
    data = cfg.model_dump(exclude={"source", "resolved"})
    data["policy"] = {k: (cfg.system.max_batch if v == "max_batch" else v)
                      for k, v in settings.items()}
    for key in [k for k, v in data["system"].items() if v is None]:
        del data["system"][key]
    return config_from_dict(data, source=cfg.source, base_dir=CONFIG_DIR)


# ---------------------------------------------------------------- policy comparisons


def _flow_bound(cfg: Config) -> tuple[float, str]:
    ctx = api.workload_context(cfg)
    w = theory.memory_time(np.array(ctx["prompt_len"]), np.array(ctx["output_len"]))
    share = np.array(ctx["rate"]) / np.sum(ctx["rate"])
    return float(cfg.capacity / np.sum(share * w)), "completed_per_time"


def _wait_bound(cfg: Config) -> tuple[float, str]:
    ctx = api.workload_context(cfg)
    fluid = theory.wait_fluid(ctx["prompt_len"], ctx["output_len"], ctx["rate"],
                              capacity=cfg.capacity, d0=cfg.d0, d1=cfg.d1)
    return float(fluid.token_throughput), "tokens_per_time"


WAIT_LABELS = {
    "wait": "wait",
    "nested_wait": "nested_wait",
    "vllm_v0": "vllm v0 (prefill-first)",
    "vllm_v1": "vllm v1 (chunked prefill)",
    "sarathi": "sarathi (chunk 512)",
}
"""Row labels of the WAIT studies (the tests look rows up by them)."""


def _wait_contenders() -> list[Contender]:
    """WAIT, Nested WAIT (thresholds fitted from the fluid model) and the servers.

    The WAIT paper's baselines (arXiv 2504.11320, experiments) are Vidur's ``vllm`` and
    ``sarathi`` schedulers: vLLM's original prefill-prioritized scheduler (``vllm``,
    ``scheduler = "v0"``, ``max_num_batched_tokens`` 4096 as in vLLM v0 and Vidur) and
    Sarathi-Serve with chunk 512, both with a 1% memory reserve (vLLM's watermark) and
    recompute preemption. vLLM's resident cap is lifted to ``max_batch`` (the paper sweeps it);
    Sarathi's is its chunk, 512: Sarathi-Serve and vLLM require a budget of at least
    ``max_num_seqs`` so every decode fits (Vidur runs every decode and gives prefills what is
    left, which stops admission at about as many residents). The modern vLLM v1 scheduler
    (chunked prefill, budget 2048) is shown for comparison.
    """
    lab = WAIT_LABELS
    return [
        Contender(lab["wait"], {"name": "wait", "batch_limit": "max_batch"}),
        Contender(lab["nested_wait"], {"name": "nested_wait"}),
        Contender(lab["vllm_v0"], {"name": "vllm", "scheduler": "v0", "max_num_seqs": "max_batch",
                                   "max_num_batched_tokens": 4096, "watermark": 0.01}),
        Contender(lab["vllm_v1"], {"name": "vllm", "max_num_seqs": "max_batch"}),
        Contender(lab["sarathi"], {"name": "sarathi", "chunk_size": 512, "max_num_seqs": 512}),
        Contender("sglang", {"name": "sglang"}),
        Contender("greedy", {"name": "greedy"}),
    ]


def _wait_findings(rows: dict[str, PolicyRow]) -> dict:
    """The WAIT paper's claims as numbers: WAIT's and Nested WAIT's share of the fluid bound
    and evictions, and their mean latency relative to the paper's baselines (< 1: faster)."""
    nan = float("nan")
    lab = WAIT_LABELS
    out = {}
    for key in ("wait", "nested_wait"):
        row = rows.get(lab[key])
        out[f"{key}: ratio to bound"] = row.bound_ratio if row else nan
        out[f"{key}: evictions"] = row.metrics["evictions"] if row else nan
        for base in ("vllm_v0", "sarathi"):
            other = rows.get(lab[base])
            out[f"{key}: latency_mean / {lab[base]}"] = (
                row.metrics["latency_mean"] / other.metrics["latency_mean"]
                if row and other else nan)
    for base in ("vllm_v0", "vllm_v1", "sarathi"):
        row = rows.get(lab[base])
        out[f"{lab[base]}: evictions"] = row.metrics["evictions"] if row else nan
    return out


_STUDIES = {
    "flow-control": dict(
        config="flow-control",
        bound=_flow_bound,
        bound_note="requests per slot that memory allows: C / sum_k pi_k w_k",
        contenders=[
            Contender("greedy (LIFO)", {"name": "greedy"}),
            Contender("flow_control_known b=4", {"name": "flow_control_known", "budget": [4, 4, 4]}),
            Contender("flow_control B=12", {"name": "flow_control", "budget": 12.0}),
            Contender("alpha_protection 0.2", {"name": "alpha_protection", "alpha": 0.2}),
            Contender("mc_sf", {"name": "mc_sf"}),
            Contender("mc_benchmark", {"name": "mc_benchmark"}),
        ],
    ),
    **{name: dict(
        config=name,
        bound=_wait_bound,
        bound_note="fluid throughput sum_j lambda_j l'_j (tokens per second)",
        contenders=_wait_contenders(),
        findings=_wait_findings,
    ) for name in ("wait-low", "wait-high")},
}


def _policy_study(name: str, out: Path, scale: float, say: Callable[[str], None],
                  only: tuple[str, ...] = ()) -> Reproduction:
    study = _STUDIES[name]
    base = _scaled(load_config(CONFIG_DIR / f"{study['config']}.toml"), scale)
    bound, bound_key = study["bound"](base)
    rows, prows, traces = [], [], {}
    contenders = [c for c in study["contenders"]
                  if not only or any(c.label.startswith(o) for o in only)]
    if not contenders:
        labels = ", ".join(c.label for c in study["contenders"])
        raise JaxschedError(f"--only {','.join(only)}: no contender of {name} matches; "
                            f"contenders: {labels}")
    for c in contenders:
        say(f"{name}: {c.label}")
        try:
            cfg = _with_policy(base, c.settings)
            res = api.run(cfg, record_trace=True)
        except JaxschedError as err:  # e.g. no feasible thresholds for this setting
            rows.append([f"{c.label}: not run ({err})"] + [float("nan")] * (len(TABLE_KEYS) + 1))
            continue
        m = {k: float(res.summary[k]) for k in TABLE_KEYS}
        ratio = m[bound_key] / bound if bound > 0 else float("nan")
        prows.append(PolicyRow(c.label, m, ratio))
        fitted = {k: np.asarray(v).tolist() for k, v in res.experiment.params.policy.items()
                  if k in ("threshold", "safety_buffer") and k not in c.settings}
        label = c.label + "".join(f", {k} {_short(v)}" for k, v in fitted.items())
        rows.append([label] + [m[k] for k in TABLE_KEYS] + [ratio])
        traces[c.label] = (res.trace.time[0], res.trace.memory[0], res.latency_hist.sum(axis=0))
    plt = pyplot()
    fig, (ax_mem, ax_cdf) = plt.subplots(1, 2, figsize=(13, 4.5))
    lo = float(histogram_floor(base.d0, min(base.d1_prefill, base.d1_context)))
    unit = time_unit(base)
    if traces and base.workload.warmup > 0:
        t0 = next(iter(traces.values()))[0]
        mark_warmup(ax_mem, float(t0[min(base.workload.warmup, len(t0) - 1)]))
    drawn = False
    for i, (label, (t, mem, hist)) in enumerate(traces.items()):
        ax_mem.plot(t, mem, label=label, **line_style(i))
        x, y = histogram_cdf(hist, lo)
        drawn |= cdf_or_note(ax_cdf, x, y, label=label, **line_style(i))
    ax_mem.axhline(base.capacity, color="k", ls="--", lw=1, label=f"capacity C = {base.capacity:g}")
    ax_mem.set(xlabel=f"time ({unit})", ylabel="KV memory (tokens)",
               title=f"{name}: memory over time (workload 0)")
    ax_mem.set_xlim(left=0)
    ax_cdf.set(xlabel=f"latency, arrival to completion ({unit})", ylabel="fraction of requests",
               title="latency CDF (after warm-up)")
    if drawn:
        log_time_axis(ax_cdf)
        ax_cdf.grid(alpha=0.3, which="both")
        ax_cdf.legend(fontsize=7)
    else:
        no_completion_note(ax_cdf)
    ax_mem.legend(fontsize=7, framealpha=0.9)
    fig.tight_layout()
    out.mkdir(parents=True, exist_ok=True)
    png = out / f"{name}.png"
    fig.savefig(png, dpi=110)
    plt.close(fig)
    columns = ["policy"] + list(TABLE_KEYS) + [f"ratio to bound ({bound:.4g})"]
    findings = {"bound": bound, "bound_note": study["bound_note"]}
    if "findings" in study:
        findings.update(study["findings"]({r.label: r for r in prows}))
    return Reproduction(name, columns, rows, findings, [png], prows)


def _short(value) -> str:
    """A fitted parameter for a row label: integers plain, floats to 4 significant digits."""
    if isinstance(value, list):
        return "(" + ", ".join(_short(v) for v in value) + ")"
    return str(int(value)) if float(value).is_integer() else f"{value:.4g}"


# ------------------------------------------------------------------------ congestion


def _saturated_config(capacity, prompt, outputs, horizon, warmup, max_batch) -> Config:
    data = {
        "system": {"capacity": capacity, "d0": 1.0, "d1": 0.0, "max_batch": max_batch,
                   "queue_size": max_batch, "restart_on_evict": True},
        "workload": {"kind": "saturated", "horizon": horizon, "warmup": warmup,
                     "num_workloads": 1, "seed": 0,
                     "classes": [{"prompt_len": prompt, "output_len": o, "weight": 1.0}
                                 for o in outputs]},
        "policy": {"name": "greedy", "eviction": "least_progressed"},
    }
    return config_from_dict(data, source="congestion reproduction")


def _congestion(out: Path, scale: float, say: Callable[[str], None]) -> Reproduction:
    prompt, capacity = 10, 20000
    ratios = [1, 2, 5, 10, 20, 50, 100]
    rows, homo = [], []
    for r in ratios:
        l1 = prompt * r
        horizon = max(int(3000 * scale), 14 * l1)  # at least 7 cycles after the warm-up
        warmup = horizon // 2
        say(f"congestion: output/prompt = {r}")
        pred = theory.congestion_homogeneous(capacity, prompt, l1)
        cfg = _saturated_config(capacity, prompt, [l1], horizon, warmup,
                                max_batch=capacity // (prompt + 1) + 8)
        res = api.run(cfg, record_trace=True)
        thr = float(res.summary["completed_per_time"])
        osc = theory.detect_oscillation(res.trace.num_resident[0], warmup=warmup)
        homo.append((r, thr, pred, osc, res))
        rows.append([f"1 class, o/l = {r}", thr, pred.fixed_point, pred.cycle_throughput,
                     thr / pred.fixed_point, float(res.summary["evictions"]),
                     osc.period, osc.relative_amplitude, osc.oscillating])
    # Two classes, common prompt, prompt-dominated: decode lengths with gcd 20 vs coprime.
    mixes = {"gcd 20: outputs (20, 40)": [20, 40], "coprime: outputs (19, 41)": [19, 41]}
    two = {}
    for label, outs in mixes.items():
        say(f"congestion: {label}")
        p2, c2 = 100, 20000
        horizon = max(600, int(4000 * scale))
        cfg = _saturated_config(c2, p2, outs, horizon, horizon // 2, max_batch=c2 // (p2 + 1) + 8)
        res = api.run(cfg, record_trace=True)
        pred = theory.congestion_heterogeneous(c2, [p2] * 2, outs)
        osc = theory.detect_oscillation(res.trace.num_resident[0], warmup=horizon // 2)
        thr = float(res.summary["completed_per_time"])
        two[label] = (osc, res, thr, pred)
        rows.append([f"2 classes, {label}", thr, pred.fixed_point, float("nan"),
                     thr / pred.fixed_point, float(res.summary["evictions"]),
                     osc.period, osc.relative_amplitude, osc.oscillating])
    plt = pyplot()
    fig, axes = plt.subplots(1, 3, figsize=(16, 4.5))
    rs = [h[0] for h in homo]
    axes[0].plot(rs, [h[1] for h in homo], "o-", label="simulated greedy")
    axes[0].plot(rs, [h[2].fixed_point for h in homo], "k--", label="fixed point x*")
    axes[0].plot(rs, [h[2].cycle_throughput for h in homo], "r:", label="limit cycle M/(l1(l0+l1))")
    axes[0].set(xscale="log", yscale="log", xlabel="output / prompt", ylabel="completions per iteration",
                title="saturated greedy, one class")
    axes[0].legend(fontsize=8)
    for r, _, _, _, res in homo[::3]:
        n = len(res.trace.num_resident[0])
        axes[1].plot(np.arange(n), res.trace.num_resident[0], lw=0.7, label=f"o/l = {r}")
    axes[1].set(xlabel="iteration", ylabel="resident requests", title="residents over time")
    axes[1].legend(fontsize=8)
    for label, (osc, res, _, _) in two.items():
        axes[2].plot(res.trace.num_resident[0], lw=0.7, label=label)
    axes[2].set(xlabel="iteration", ylabel="resident requests", title="two classes: common divisor vs coprime")
    axes[2].legend(fontsize=8)
    fig.tight_layout()
    out.mkdir(parents=True, exist_ok=True)
    png = out / "congestion.png"
    fig.savefig(png, dpi=110)
    plt.close(fig)
    (g_osc, g_res, g_thr, _), (c_osc, c_res, c_thr, _) = two.values()
    big = [h for h in homo if h[0] >= 10]
    findings = {
        "long outputs lose share of x*": min(h[1] / h[2].fixed_point for h in big),
        "long outputs oscillate": all(h[3].oscillating for h in big),
        "gcd mix relative amplitude": g_osc.relative_amplitude,
        "coprime mix relative amplitude": c_osc.relative_amplitude,
        "gcd mix evictions": float(g_res.summary["evictions"]),
        "coprime mix evictions": float(c_res.summary["evictions"]),
        "gcd mix throughput": g_thr,
        "coprime mix throughput": c_thr,
    }
    columns = ["setting", "completed/iter", "x*", "cycle prediction", "ratio to x*",
               "evictions", "period", "rel. amplitude", "oscillating"]
    return Reproduction("congestion", columns, rows, findings, [png])


REPRODUCTIONS = ("flow-control", "wait-low", "wait-high", "congestion")


def _markdown(rep: Reproduction) -> str:
    def cell(v):
        if isinstance(v, float):
            return "-" if not math.isfinite(v) else f"{v:.4g}"
        return str(v)

    lines = [f"# Reproduction: {rep.name}", "", "| " + " | ".join(rep.columns) + " |",
             "|" + "---|" * len(rep.columns)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rep.rows]
    lines += ["", "## Findings", ""]
    lines += [f"- {k}: {cell(v)}" for k, v in rep.findings.items()]
    lines += ["", "## Figures", ""] + [f"![{p.stem}]({p.name})" for p in rep.files]
    return "\n".join(lines) + "\n"


def reproduce(name: str, out: str | Path = "out/reproduce", scale: float = 1.0,
              progress: Callable[[str], None] | None = None,
              only: tuple[str, ...] = ()) -> Reproduction:
    """Run one reproduction; write its PNGs and ``{name}.md`` into ``out``. ``only``: run the
    policy studies' contenders whose labels start with one of these (quick partial runs)."""
    say = progress or (lambda msg: None)
    if name not in REPRODUCTIONS:
        raise JaxschedError(f"unknown reproduction {name!r}; choose from {', '.join(REPRODUCTIONS)}")
    if not scale > 0:
        raise JaxschedError(f"--scale must be positive, got {scale}")
    out = Path(out)
    if only and name == "congestion":
        raise JaxschedError("--only: congestion has no contenders to choose from")
    rep = (_congestion(out, scale, say) if name == "congestion"
           else _policy_study(name, out, scale, say, tuple(only)))
    md = out / f"{name}.md"
    md.write_text(_markdown(rep))
    rep.files.append(md)
    return rep
