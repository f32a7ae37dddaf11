"""``jaxsched bench scale``: simulator throughput against batch size, slots and horizon, on
every backend, the per-device efficiency of sharding, and a memory-bandwidth roofline.

Throughput is in request-slot-iterations per second: ``max_batch x horizon x workloads /
wall`` (every slot of every workload advanced by one iteration counts once, occupied or
not), the wall time of :func:`jaxsched.api.run_experiment` without compilation and without
building the workloads.

Roofline. A step must at least read and write each workload's slot state and touch the
window, the per-request bookkeeping it updates and the histogram bins it adds to:
:func:`step_bytes` counts those bytes from the shapes. With a peak memory bandwidth ``BW``
(bytes/s; a table of GPUs, a measured ``numpy`` copy on CPU, or ``--bandwidth``) the step
cannot run faster than ``bytes / BW``, so throughput <= ``BW x max_batch / bytes``.
XLA's own count (``cost_analysis()["bytes accessed"]`` of one compiled step, every fusion's
inputs and outputs) is reported next to it.

Sharding efficiency: the same batch on 1, 2, 4, ... devices of a backend,
``efficiency(n) = throughput(n) / (n x throughput(1))``. On a CPU-only machine the devices
are forced host devices (``--xla_force_host_platform_device_count``) in a subprocess; they
share the machine's cores, so this shows the mechanics, not a speedup.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

import jax
import numpy as np

from jaxsched import api
from jaxsched.config import Config, load_config
from jaxsched.core import rollout, sim
from jaxsched.core.model import BYTES_PER_REQUEST
from jaxsched.errors import JaxschedError
from jaxsched.tools.plots import pyplot

__all__ = [
    "ScalePoint",
    "ShardPoint",
    "Roofline",
    "ScaleBench",
    "PEAK_BANDWIDTH",
    "peak_bandwidth",
    "step_bytes",
    "xla_step_bytes",
    "run_point",
    "sharding_efficiency",
    "forced_host_efficiency",
    "SWEEPS",
    "bench_scale",
    "plot_scale",
]

PEAK_BANDWIDTH = {  # bytes/s, from the vendors' data sheets (device_kind substring)
    "H200": 4.8e12,
    "H100 PCIe": 2.0e12,
    "H100": 3.35e12,
    "A100-SXM4-80GB": 2.039e12,
    "A100": 1.555e12,
    "L40S": 0.864e12,
    "L4": 0.3e12,
    "V100": 0.9e12,
}


@dataclasses.dataclass
class ScalePoint:
    backend: str
    num_devices: int
    num_workloads: int
    max_batch: int
    horizon: int
    num_requests: int  # N per workload of the full arrays (grows with the horizon)
    wall_seconds: float
    compile_seconds: float
    slot_iterations_per_second: float
    requests_per_second: float
    peak_bytes: int | None  # per device
    peak_source: str
    num_batches: int  # streamed batches
    window: int | None = None  # streamed workloads: requests held per workload, else None


@dataclasses.dataclass
class ShardPoint:
    backend: str
    num_devices: int
    num_workloads: int
    wall_seconds: float
    slot_iterations_per_second: float
    efficiency: float  # throughput / (devices x throughput on one device)


@dataclasses.dataclass
class Roofline:
    backend: str
    device_kind: str
    bandwidth: float  # bytes/s
    bandwidth_source: str
    bytes_per_step: int  # per workload, from the shapes (step_bytes)
    xla_bytes_per_step: float  # per workload, XLA cost analysis of one step
    max_batch: int
    roofline_slot_iterations_per_second: float  # per device: bandwidth x max_batch / bytes


@dataclasses.dataclass
class ScaleBench:
    config_source: str
    policy: str
    points: list[ScalePoint]
    sharding: list[ShardPoint]
    sharding_note: str
    rooflines: list[Roofline]


def _numpy_copy_bandwidth(size: int = 1 << 28) -> float:
    """Bytes/s of a large numpy copy (read + write counted), best of three."""
    a = np.ones(size // 4, np.float32)
    b = np.empty_like(a)
    best = float("inf")
    for _ in range(3):
        t0 = time.perf_counter()
        np.copyto(b, a)
        best = min(best, time.perf_counter() - t0)
    return 2 * a.nbytes / best


def peak_bandwidth(device, override: float | None = None) -> tuple[float, str]:
    """``(bytes/s, source)`` for a device: ``override``, the data-sheet table, or (CPU) a
    measured numpy copy."""
    if override:
        return float(override), "--bandwidth"
    kind = device.device_kind
    for key in sorted(PEAK_BANDWIDTH, key=len, reverse=True):
        if key.lower() in kind.lower():
            return PEAK_BANDWIDTH[key], f"data sheet ({key})"
    return _numpy_copy_bandwidth(), "measured numpy copy (host memory)"


def step_bytes(max_batch: int, queue_size: int) -> int:
    """Bytes one step of one workload must move at least (from the shapes).

    * the slot state, read and written: ``2 x B x 29`` (six int32 fields, arrival float32,
      first_done bool);
    * the window: ``W`` gathered requests x
      :data:`~jaxsched.core.model.BYTES_PER_REQUEST` (a request's workload arrays and its
      bookkeeping) and a search block of ``2W`` taken flags;
    * per-request bookkeeping written at admission and eviction: ``2 x B x 6`` bytes;
    * histogram bins (latency and TTFT, read-modify-write): ``2 x 2 x B x 4``;
    * scalars (state, accumulators): about 100 bytes.
    """
    b, w = max_batch, queue_size
    return 2 * b * 29 + w * BYTES_PER_REQUEST + 2 * w + 2 * b * 6 + 2 * 2 * b * 4 + 100


def xla_step_bytes(exp, keys, workloads, backend_devices) -> float:
    """XLA's ``bytes accessed`` of one compiled step over the batch, per workload."""
    dev = backend_devices[0]
    keys, workloads, params = jax.device_put((keys, workloads, exp.params), dev)
    init = jax.vmap(functools.partial(rollout.init, exp.policy, exp.shape), in_axes=(0, None))
    carry = jax.eval_shape(init, workloads, params)

    def one(key, wl, p, c):
        return sim.step(exp.policy, exp.shape, key, wl, p, c)[0]

    f = jax.jit(jax.vmap(one, in_axes=(0, 0, None, 0)))
    cost = f.lower(keys, workloads, params, carry).compile().cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    return float(cost.get("bytes accessed", float("nan"))) / keys.shape[0]


def _cfg_for(cfg: Config, workloads: int, max_batch: int | None = None,
             horizon: int | None = None) -> Config:
    wl = cfg.workload
    h = horizon or wl.horizon
    wl = wl.model_copy(update={"num_workloads": workloads, "horizon": h,
                               "warmup": min(wl.warmup, h // 4)})
    system = cfg.system
    if max_batch is not None:
        system = system.model_copy(update={"max_batch": max_batch})
    return cfg.model_copy(update={"workload": wl, "system": system})


def run_point(cfg: Config, devices: list, workloads: int, max_batch: int | None = None,
              horizon: int | None = None, repeats: int = 2,
              max_memory: int | None = None, stream: bool | None = False) -> ScalePoint:
    """One measurement: best of ``repeats`` runs (the first compiles); ``stream`` as in
    :func:`jaxsched.api.run_experiment` (the workloads in a sliding request window)."""
    c = _cfg_for(cfg, workloads, max_batch, horizon)
    exp = api.build_experiment(c)
    best = None
    for _ in range(max(1, repeats)):
        res = api.run_experiment(exp, devices=devices, max_memory=max_memory, stream=stream)
        if best is None or res.sim_seconds < best.sim_seconds:
            best = res
    st = best.run_stats
    b, h = exp.shape.max_batch, exp.shape.horizon
    return ScalePoint(
        backend=devices[0].platform, num_devices=len(devices), num_workloads=workloads,
        max_batch=b, horizon=h, num_requests=exp.num_requests,
        wall_seconds=best.sim_seconds, compile_seconds=st.compile_seconds,
        slot_iterations_per_second=b * h * workloads / best.sim_seconds,
        requests_per_second=float(np.sum(best.final_completed)) / best.sim_seconds,
        peak_bytes=st.peak_bytes, peak_source=st.peak_source, num_batches=st.plan.num_batches,
        window=st.plan.window)


def sharding_efficiency(cfg: Config, devices: list, workloads: int, repeats: int = 2,
                        progress: Callable[[str], None] | None = None) -> list[ShardPoint]:
    """The same batch on 1, 2, 4, ... and all of ``devices``."""
    counts = sorted({n for n in (1, 2, 4, 8, 16, 32, 64) if n <= len(devices)} | {len(devices)})
    out = []
    for n in counts:
        if progress:
            progress(f"sharding: {workloads} workloads on {n} {devices[0].platform} device(s)")
        p = run_point(cfg, devices[:n], workloads, repeats=repeats)
        base = out[0].slot_iterations_per_second if out else p.slot_iterations_per_second
        out.append(ShardPoint(p.backend, n, workloads, p.wall_seconds,
                              p.slot_iterations_per_second,
                              p.slot_iterations_per_second / (n * base)))
    return out


def forced_host_efficiency(config_path: str, overrides: list[str], workloads: int,
                           num_devices: int = 4, repeats: int = 2) -> list[ShardPoint]:
    """:func:`sharding_efficiency` on ``num_devices`` forced host CPU devices, in a
    subprocess (the device count is fixed when JAX starts)."""
    env = dict(os.environ, JAX_PLATFORMS="cpu",
               XLA_FLAGS=(os.environ.get("XLA_FLAGS", "") +
                          f" --xla_force_host_platform_device_count={num_devices}").strip())
    args = json.dumps(dict(config=config_path, overrides=overrides, workloads=workloads,
                           repeats=repeats))
    proc = subprocess.run([sys.executable, "-m", "jaxsched.tools.scaling", args], env=env,
                          capture_output=True, text=True)
    if proc.returncode != 0:
        tail = proc.stderr.strip().splitlines()[-1:] or ["(no output)"]
        raise JaxschedError(f"forced-host sharding run failed: {tail[0]}")
    return [ShardPoint(**d) for d in json.loads(proc.stdout.strip().splitlines()[-1])]


def _backends() -> list[str]:
    out = []
    for name in ("gpu", "tpu", "cpu"):
        try:
            if jax.devices(name):
                out.append(name)
        except RuntimeError:
            pass
    return out


SWEEPS = {
    "cpu": dict(workloads=(1, 16, 256, 1024), slots=(32, 128, 512), horizons=(150, 600, 2400),
                fixed_workloads=64, shard_workloads=256),
    "accelerator": dict(workloads=(1, 4, 16, 64, 256, 1024, 4096, 16384),
                        slots=(32, 128, 512, 2048), horizons=(600, 2400, 10000),
                        fixed_workloads=1024, shard_workloads=4096),
}
"""Default sweeps: a few minutes on a 2-core CPU; up to 16384 workloads on an accelerator."""


def bench_scale(cfg: Config, config_path: str, overrides: list[str], workloads=None,
                slots=None, horizons=None, fixed_workloads: int | None = None,
                shard_workloads: int | None = None, forced_devices: int = 4,
                backends: list[str] | None = None, repeats: int = 2,
                max_memory: int | None = None, bandwidth: float | None = None,
                headline: tuple[int, int] | None = None,
                progress: Callable[[str], None] | None = None,
                stream: bool | None = False) -> ScaleBench:
    """Sweep workloads (at the config's slots and horizon), slots and horizons (at
    ``fixed_workloads``) on every backend (defaults: :data:`SWEEPS`); sharding efficiency;
    rooflines; and, with ``headline = (W, H)``, one run of W workloads x H iterations on
    each backend. ``stream``: the sweep points' workloads in a sliding request window
    (:func:`run_point`), so peak memory stays flat along the horizon sweep."""
    say = progress or (lambda msg: None)
    points, shard, rooflines = [], [], []
    note = ""
    for backend in backends or _backends():
        devs = jax.devices(backend)
        d = SWEEPS["cpu" if backend == "cpu" else "accelerator"]
        fixed = fixed_workloads or d["fixed_workloads"]
        shard_w = shard_workloads or d["shard_workloads"]
        sweeps = ([dict(workloads=w) for w in workloads or d["workloads"]]
                  + [dict(workloads=fixed, max_batch=b) for b in slots or d["slots"]]
                  + [dict(workloads=fixed, horizon=h) for h in horizons or d["horizons"]])
        if headline:
            sweeps.append(dict(workloads=headline[0], horizon=headline[1]))
        for kw in sweeps:
            say(f"{backend}: {kw}")
            points.append(run_point(cfg, devs, repeats=repeats, max_memory=max_memory,
                                    stream=stream, **kw))
        say(f"{backend}: roofline")
        exp = api.build_experiment(_cfg_for(cfg, fixed))
        keys, wl = api.build_workloads(exp.config, exp.num_requests, exp.duration)
        bw, source = peak_bandwidth(devs[0], bandwidth)
        nbytes = step_bytes(exp.shape.max_batch, exp.shape.queue_size)
        rooflines.append(Roofline(
            backend=backend, device_kind=devs[0].device_kind, bandwidth=bw,
            bandwidth_source=source, bytes_per_step=nbytes,
            xla_bytes_per_step=xla_step_bytes(exp, keys, wl, devs),
            max_batch=exp.shape.max_batch,
            roofline_slot_iterations_per_second=bw * exp.shape.max_batch / nbytes))
        if len(devs) > 1:
            shard += sharding_efficiency(cfg, devs, shard_w, repeats, say)
    if not any(s.num_devices > 1 for s in shard) and forced_devices > 1:
        say(f"sharding: {forced_devices} forced host devices (subprocess)")
        shard += forced_host_efficiency(config_path, overrides,
                                        shard_workloads or SWEEPS["cpu"]["shard_workloads"],
                                        forced_devices, repeats)
        note = (f"{forced_devices} forced host CPU devices sharing this machine's "
                f"{os.cpu_count()} cores: the mechanics of sharding, not a speedup")
    return ScaleBench(config_source=cfg.source, policy=cfg.policy.name, points=points,
                      sharding=shard, sharding_note=note, rooflines=rooflines)


def plot_scale(result: ScaleBench, out) -> str:
    """Log-log PNG: throughput vs workloads (per backend, with its roofline), vs slots, vs
    horizon; sharding efficiency."""
    plt = pyplot()
    fig, axes = plt.subplots(1, 4, figsize=(19, 4.2))
    for backend in sorted({p.backend for p in result.points}):
        pts = [p for p in result.points if p.backend == backend]
        first = pts[0]
        for ax, key, label in ((axes[0], "num_workloads", "workloads"),
                               (axes[1], "max_batch", "slots (max_batch)"),
                               (axes[2], "horizon", "horizon (iterations)")):
            if key == "num_workloads":
                sel = [p for p in pts if p.max_batch == first.max_batch
                       and p.horizon == first.horizon]
            else:
                others = [k for k in ("max_batch", "horizon") if k != key]
                sel = [p for p in pts if all(getattr(p, o) == getattr(first, o) for o in others)]
                sel = [p for p in sel if p.num_workloads == _fixed_workloads(pts)]
            sel = sorted({getattr(p, key): p for p in sel}.values(), key=lambda p: getattr(p, key))
            x = [getattr(p, key) for p in sel]
            y = [p.slot_iterations_per_second for p in sel]
            ax.loglog(x, y, "o-", label=f"{backend} x{first.num_devices}")
            ax.set_xlabel(label)
        for r in result.rooflines:
            if r.backend == backend:
                axes[0].axhline(r.roofline_slot_iterations_per_second * first.num_devices,
                                ls="--", lw=1, color="gray",
                                label=f"{backend} bandwidth roofline")
    axes[0].set_ylabel("slot-iterations / s")
    axes[0].set_title("throughput vs workloads")
    axes[1].set_title("vs slots")
    axes[2].set_title("vs horizon")
    for ax in axes[:3]:
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=8)
    if result.sharding:
        n = [s.num_devices for s in result.sharding]
        axes[3].plot(n, [s.efficiency for s in result.sharding], "o-")
        axes[3].set_xscale("log", base=2)
        axes[3].set_ylim(0, 1.2)
        axes[3].set_xlabel("devices")
        axes[3].set_ylabel("efficiency (throughput / n x one device)")
        title = "sharding efficiency"
        if result.sharding_note:
            title += "\n(forced host devices, shared cores)"
        axes[3].set_title(title, fontsize=9)
        axes[3].grid(alpha=0.3)
    fig.tight_layout()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return str(out)


def _fixed_workloads(pts: list[ScalePoint]) -> int:
    """The workload count the slot and horizon sweeps were run at (the most common one
    among points off the workload sweep's slots or horizon)."""
    first = pts[0]
    off = [p.num_workloads for p in pts
           if p.max_batch != first.max_batch or p.horizon != first.horizon]
    if not off:
        return first.num_workloads
    return max(set(off), key=off.count)


def _child(arg: str) -> None:
    a = json.loads(arg)
    cfg = load_config(a["config"], a["overrides"])
    pts = sharding_efficiency(cfg, jax.devices("cpu"), a["workloads"], a["repeats"])
    print(json.dumps([dataclasses.asdict(p) for p in pts]))


if __name__ == "__main__":
    _child(sys.argv[1])
    sys.exit(0)
