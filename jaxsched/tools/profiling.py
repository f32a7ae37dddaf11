"""Profiling the step function, and before/after comparisons measured in one process.

``python -m jaxsched.tools.profiling [--config FILE] [--workloads 256] [--horizon 200] [--repeats 5]``
prints

* where a chunk's time goes: a :func:`jax.profiler.trace` of one compiled chunk call
  (``lax.scan`` of :func:`jaxsched.core.sim.step` over the horizon), its XLA ops grouped by kind
  (while loops, prefix sums, scatters, gathers, sorts, other fusions), and a census of the
  compiled program (sorts, host transfers and callbacks inside the loop);
* A/B ratios, both variants compiled and timed alternately in the same process:
  the window search's block (``2 queue_size`` positions, now, against the former
  ``queue_size + 2 max_batch``; the "before" is :mod:`jaxsched.core.sim` with that one line
  changed back), and donating the chunk's carry or not (:mod:`jaxsched.running.chunked`).
"""

from __future__ import annotations

import argparse
import collections
import gzip
import importlib.util
import json
import re
import sys
import tempfile
import time
from pathlib import Path

import jax
import numpy as np

from jaxsched import api
from jaxsched.running import chunked
from jaxsched.core import metrics, sim
from jaxsched.core import rollout as R
from jaxsched.running import sharding as S
from jaxsched.config import DEFAULT_CONFIG, load_config
from jaxsched.errors import JaxschedError

__all__ = ["load_case", "profile_chunk", "hlo_census", "sim_variant", "sim_from_file", "ab_step",
           "ab_search_block", "ab_donation", "main"]

_BEFORE_SEARCH_BLOCK = ("    block = 2 * w  #",
                        "    block = shape.queue_size + 2 * shape.max_batch  #")


def load_case(workloads: int = 256, horizon: int = 200, overrides: tuple[str, ...] = (),
              config=DEFAULT_CONFIG):
    """``(experiment, keys (W,), workloads (W, N))`` for ``config`` (the embedded default)."""
    cfg = load_config(config, [f"workload.num_workloads={workloads}",
                               f"workload.horizon={horizon}",
                               f"workload.warmup={min(100, horizon // 4)}", *overrides])
    exp = api.build_experiment(cfg)
    keys, wl = api.build_workloads(cfg, exp.num_requests, exp.duration)
    return exp, keys, wl


def _chunk_call(exp, keys, wl, donate: bool = True):
    mesh = S.make_mesh(jax.devices()[:1], 1, 1)
    kd, impl = S.key_data(keys)
    init, adv, _ = chunked.chunk_functions(exp.policy, exp.shape, mesh, False,
                                           (exp.shape.horizon,), str(impl), donate)
    return kd, init, adv[exp.shape.horizon]


def _category(name: str) -> str:
    if name.startswith("while"):
        return "while loops (window search, searchsorted)"
    for key, label in (("reduce-window", "prefix sums (reduce-window)"), ("scatter", "scatters"),
                       ("gather", "gathers"), ("sort", "sorts")):
        if key in name:
            return label
    return "other fusions (per-slot elementwise work)"


def profile_chunk(exp, keys, wl) -> tuple[dict[str, float], list[tuple[str, float]]]:
    """``({category: ms}, [(op, ms)] top 15)`` from a profiler trace of one chunk call.

    Nested ops of a while loop are counted in the loop and on their own, so the shares
    overlap; they rank, they do not add up.
    """
    kd, init, adv = _chunk_call(exp, keys, wl)
    jax.block_until_ready(adv(kd, wl, exp.params, init(kd, wl, exp.params)))  # compile, warm
    carry = init(kd, wl, exp.params)
    with tempfile.TemporaryDirectory() as tmp:
        with jax.profiler.trace(tmp, create_perfetto_trace=True):
            jax.block_until_ready(adv(kd, wl, exp.params, carry))
        path = next(Path(tmp).rglob("*.trace.json.gz"))
        data = json.load(gzip.open(path))
    events = data["traceEvents"] if isinstance(data, dict) else data
    per_op = collections.Counter()
    for e in events:
        name = e.get("name", "")
        if e.get("ph") == "X" and not name.startswith(("$", "Thunk")) and "dur" in e:
            per_op[name] += e["dur"] / 1e3
    cats = collections.Counter()
    for name, ms in per_op.items():
        cats[_category(name)] += ms
    return dict(cats.most_common()), per_op.most_common(15)


def hlo_census(exp, keys, wl) -> dict[str, int]:
    """Counts of telling ops in the compiled chunk (sorts, host transfers, callbacks)."""
    kd, init, adv = _chunk_call(exp, keys, wl)
    carry = jax.eval_shape(init, kd, wl, exp.params)
    text = adv.lower(kd, wl, exp.params, carry).compile().as_text()
    count = collections.Counter(re.findall(
        r"\s(sort|custom-call|infeed|outfeed|send|recv|while|scatter|reduce-window)\(", text))
    return {"sort": count["sort"], "custom-call (host callbacks)": count["custom-call"],
            "infeed/outfeed/send/recv (host transfers)": sum(
                count[k] for k in ("infeed", "outfeed", "send", "recv")),
            "while": count["while"], "scatter": count["scatter"],
            "reduce-window": count["reduce-window"]}


def sim_variant(replacements: tuple[tuple[str, str], ...], name: str = "jaxsched._sim_variant"):
    """A fresh copy of :mod:`jaxsched.core.sim` with source lines replaced (for A/B runs)."""
    source = Path(sim.__file__).read_text()
    for old, new in replacements:
        if source.count(old) != 1:
            raise RuntimeError(f"jaxsched/core/sim.py no longer contains {old!r} exactly once")
        source = source.replace(old, new)
    spec = importlib.util.spec_from_loader(name, loader=None)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    exec(compile(source, f"<{name}>", "exec"), module.__dict__)  # noqa: S102
    return module


def _alternate(fns: dict, args, repeats: int) -> dict[str, float]:
    best = {k: float("inf") for k in fns}
    for _ in range(repeats):
        for k, f in fns.items():
            t0 = time.perf_counter()
            jax.block_until_ready(f(*args))
            best[k] = min(best[k], time.perf_counter() - t0)
    return best


def _variant_rollout(mod, exp):
    """The rollout's final counters (:func:`jaxsched.core.rollout.collect`) with ``mod.step``."""
    def rollout(key, workload, params):
        def body(c, _):
            return mod.step(exp.policy, exp.shape, key, workload, params, c)

        carry = R.init(exp.policy, exp.shape, workload, params)
        carry, _ = jax.lax.scan(body, carry, None, length=exp.shape.horizon)
        return R.collect(carry)

    return rollout


def ab_search_block(exp, keys, wl, repeats: int = 5) -> dict:
    """Best-of-``repeats`` seconds of the whole rollout, window search block ``W + 2B``
    (before) vs ``2W`` (after), alternating; asserts identical results."""
    before = sim_variant((_BEFORE_SEARCH_BLOCK,))
    fns = {}
    for label, mod in (("before", before), ("after", sim)):
        f = jax.jit(jax.vmap(_variant_rollout(mod, exp), in_axes=(0, 0, None)))
        fns[label] = f.lower(keys, wl, exp.params).compile()
    a, b = (jax.block_until_ready(fns[k](keys, wl, exp.params)) for k in ("before", "after"))
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
    best = _alternate(fns, (keys, wl, exp.params), repeats)
    return dict(best, ratio=best["before"] / best["after"])


def sim_from_file(path, name: str = "jaxsched._sim_before"):
    """A module built from another version of ``jaxsched/core/sim.py`` (e.g. ``git show
    main:jaxsched/core/sim.py > before.py``), for an A/B run of its :func:`step` against this one."""
    spec = importlib.util.spec_from_loader(name, loader=None)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    exec(compile(Path(path).read_text(), str(path), "exec"), module.__dict__)  # noqa: S102
    return module


def _scan_steps(mod, exp):
    """``rollout(key, workload, params) -> final carry``: ``lax.scan`` of ``mod.step``."""
    def rollout(key, workload, params):
        carry = (sim.initial_state(exp.shape, workload), exp.policy.init(params.policy, exp.shape),
                 metrics.init_accumulators(exp.shape.relax != "hard"))

        def body(c, _):
            return mod.step(exp.policy, exp.shape, key, workload, params, c)

        return jax.lax.scan(body, carry, None, length=exp.shape.horizon)[0]

    return rollout


def ab_step(exp, keys, wl, before, repeats: int = 5) -> dict:
    """Best-of-``repeats`` seconds of the whole rollout with ``before.step`` vs this
    :func:`jaxsched.core.sim.step`, compiled and timed alternately in this process; asserts that
    the two final carries agree (:func:`assert_same_carry`)."""
    fns = {}
    for label, mod in (("before", before), ("after", sim)):
        f = jax.jit(jax.vmap(_scan_steps(mod, exp), in_axes=(0, 0, None)))
        fns[label] = f.lower(keys, wl, exp.params).compile()
    a, b = (jax.block_until_ready(fns[k](keys, wl, exp.params)) for k in ("before", "after"))
    assert_same_carry(a, b)
    best = _alternate(fns, (keys, wl, exp.params), repeats)
    slot_iterations = exp.shape.max_batch * exp.shape.horizon * keys.shape[0]
    return dict(best, ratio=best["before"] / best["after"],
                rate_before=slot_iterations / best["before"],
                rate_after=slot_iterations / best["after"])


def assert_same_carry(a, b, rtol: float = 1e-6) -> None:
    """Two final ``(state, pstate, accumulators)`` carries of a batch describe one trajectory.

    Where the residents sit in the slots is the step's own business (free slots may lie
    between residents, and a step may compact at other times), so the slots are compared as
    each workload's residents in slot order; every other integer and boolean leaf exactly,
    float leaves to ``rtol`` (a sum's rounding follows the order of its terms, i.e. the
    slots').
    """
    (sa, pa, acc_a), (sb, pb, acc_b) = a, b
    keep_a, keep_b = np.asarray(sa.slots.req) >= 0, np.asarray(sb.slots.req) >= 0
    for x, y in zip(jax.tree.leaves(sa.slots), jax.tree.leaves(sb.slots), strict=True):
        x, y = np.asarray(x), np.asarray(y)
        for w in range(x.shape[0]):
            _assert_leaf(x[w][keep_a[w]], y[w][keep_b[w]], rtol)
    rest_a = (sa.replace(slots=None), pa, acc_a)
    rest_b = (sb.replace(slots=None), pb, acc_b)
    for x, y in zip(jax.tree.leaves(rest_a), jax.tree.leaves(rest_b), strict=True):
        _assert_leaf(np.asarray(x), np.asarray(y), rtol)


def _assert_leaf(x, y, rtol):
    if x.dtype.kind == "f":
        np.testing.assert_allclose(x, y, rtol=rtol)
    else:
        np.testing.assert_array_equal(x, y)


def ab_donation(exp, keys, wl, repeats: int = 5) -> dict:
    """The chunk call with and without donating its carry: best seconds (alternating) and
    XLA's buffer assignment per device (``memory_analysis``)."""
    out = {}
    fns, peaks = {}, {}
    for label, donate in (("before", False), ("after", True)):
        kd, init, adv = _chunk_call(exp, keys, wl, donate)
        carry = jax.eval_shape(init, kd, wl, exp.params)
        compiled = adv.lower(kd, wl, exp.params, carry).compile()
        ma = compiled.memory_analysis()
        peaks[label] = (ma.argument_size_in_bytes + ma.output_size_in_bytes
                        + ma.temp_size_in_bytes - ma.alias_size_in_bytes)
        fns[label] = (lambda c, i: lambda: c(kd, wl, exp.params, i(kd, wl, exp.params)))(
            compiled, init)
    best = {k: float("inf") for k in fns}
    for _ in range(repeats):
        for k, f in fns.items():
            t0 = time.perf_counter()
            jax.block_until_ready(f())
            best[k] = min(best[k], time.perf_counter() - t0)
    out.update(best, ratio=best["before"] / best["after"], bytes_before=peaks["before"],
               bytes_after=peaks["after"])
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m jaxsched.tools.profiling", description=__doc__)
    parser.add_argument("--workloads", type=int, default=256)
    parser.add_argument("--horizon", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--config", default=DEFAULT_CONFIG,
                        help="config file (default: the embedded default)")
    parser.add_argument("--set", action="append", default=[], help="config override")
    parser.add_argument("--before", metavar="FILE", help="another version of jaxsched/core/sim.py "
                        "to time against this one (e.g. git show main:jaxsched/core/sim.py)")
    parser.add_argument("--ab-only", action="store_true", help="skip the profile and census")
    args = parser.parse_args(argv)
    try:
        exp, keys, wl = load_case(args.workloads, args.horizon, tuple(args.set), args.config)
    except JaxschedError as err:  # a missing or bad --config file, a bad --set
        print(f"python -m jaxsched.tools.profiling: {err}", file=sys.stderr)
        return 2
    print(f"{args.workloads} workloads x {args.horizon} iterations, max_batch "
          f"{exp.shape.max_batch}, queue_size {exp.shape.queue_size}, N {exp.num_requests}, "
          f"policy {exp.policy.name}, {jax.devices()[0].device_kind}")
    if args.before:
        r = ab_step(exp, keys, wl, sim_from_file(args.before), args.repeats)
        print(f"A/B step {args.before} -> this: {r['before']:.3f} s -> {r['after']:.3f} s, "
              f"{r['ratio']:.2f}x; {r['rate_before']:.3g} -> {r['rate_after']:.3g} "
              "slot-iterations/s (the same final trajectories and accumulators)")
        if args.ab_only:
            return 0
    cats, top = profile_chunk(exp, keys, wl)
    total = sum(ms for c, ms in cats.items() if not c.startswith("while"))
    print("\nprofile of one chunk call (ms; while loops include their nested ops):")
    for c, ms in cats.items():
        share = "" if c.startswith("while") else f" {100 * ms / total:5.1f}%"
        print(f"  {c:45s} {ms:9.1f}{share}")
    print("top ops:")
    for name, ms in top:
        print(f"  {name:45s} {ms:9.1f}")
    print("\ncompiled chunk:", hlo_census(exp, keys, wl))
    r = ab_search_block(exp, keys, wl, args.repeats)
    print(f"\nA/B window search block W + 2B -> 2W: {r['before']:.3f} s -> {r['after']:.3f} s, "
          f"{r['ratio']:.2f}x (identical results)")
    r = ab_donation(exp, keys, wl, args.repeats)
    print(f"A/B donated chunk carry: {r['before']:.3f} s -> {r['after']:.3f} s, {r['ratio']:.2f}x;"
          f" XLA buffers {chunked.format_bytes(r['bytes_before'])} -> "
          f"{chunked.format_bytes(r['bytes_after'])}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
