"""Sharding the batch across devices and hosts: a 2-d mesh (param sets x workloads).

The simulator's batch has a workload axis W (and, with ``batched_params``, a parameter-set
axis P in front of it). Rollouts never talk to each other, so the batch is split across a
:class:`jax.sharding.Mesh` of shape ``(dp, dw)`` with axes ``("params", "workloads")``: every
device runs ``jit(vmap(...))`` over its own ``(P / dp, W / dw)`` block (``shard_map``), and
nothing crosses devices until the per-workload metrics come back to the host. Per-workload
results are therefore bit-identical to a one-device run; aggregates are computed on the host
from the gathered per-workload values, so they are identical too.

W is padded to a multiple of ``dw`` with *dummy workloads* (no valid request: nothing ever
arrives) and P to a multiple of ``dp`` by repeating the last parameter set; padded entries are
dropped before any metric is reduced.

Multi-host: :func:`initialize_distributed` calls :func:`jax.distributed.initialize` when a
coordinator is given (flags, or ``JAX_COORDINATOR_ADDRESS`` with ``JAX_NUM_PROCESSES`` and
``JAX_PROCESS_ID``, or ``JAXSCHED_DISTRIBUTED=1`` for JAX's cluster auto-detection on SLURM,
Open MPI, TPU pods). Then :func:`jax.devices` lists every host's devices, every process builds
the same batch from the same seed, feeds its own shards (:func:`put`), and gathers the results
from all hosts (:func:`to_host`).
"""

from __future__ import annotations

import os
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding

from jaxsched.errors import JaxschedError
from jaxsched.model import Workload

__all__ = [
    "PARAM_AXIS",
    "WORKLOAD_AXIS",
    "initialize_distributed",
    "select_devices",
    "mesh_split",
    "make_mesh",
    "round_up",
    "dummy_workloads",
    "pad_workloads",
    "pad_params",
    "key_data",
    "put",
    "to_host",
]

PARAM_AXIS = "params"
WORKLOAD_AXIS = "workloads"

_initialized = False


def initialize_distributed(coordinator: str | None = None, num_processes: int | None = None,
                           process_id: int | None = None) -> bool:
    """Join a multi-host run if one is configured; returns whether :mod:`jax.distributed` is on.

    Arguments win over the environment (``JAX_COORDINATOR_ADDRESS``, ``JAX_NUM_PROCESSES``,
    ``JAX_PROCESS_ID``); ``JAXSCHED_DISTRIBUTED=1`` alone asks JAX to detect the cluster.
    Must run before the first JAX computation of the process; a second call is a no-op.
    """
    global _initialized
    if _initialized:
        return True
    env = os.environ
    coordinator = coordinator or env.get("JAX_COORDINATOR_ADDRESS")
    if num_processes is None and env.get("JAX_NUM_PROCESSES"):
        num_processes = int(env["JAX_NUM_PROCESSES"])
    if process_id is None and env.get("JAX_PROCESS_ID"):
        process_id = int(env["JAX_PROCESS_ID"])
    auto = env.get("JAXSCHED_DISTRIBUTED", "") not in ("", "0")
    if coordinator is None and not auto:
        return False
    if coordinator is not None and (num_processes is None or process_id is None):
        raise JaxschedError(
            f"distributed run with coordinator {coordinator!r}: give --num-processes and "
            "--process-id (or JAX_NUM_PROCESSES and JAX_PROCESS_ID)")
    try:
        jax.distributed.initialize(coordinator_address=coordinator,
                                   num_processes=num_processes, process_id=process_id)
    except (RuntimeError, ValueError) as err:
        raise JaxschedError(f"jax.distributed.initialize failed: {str(err).splitlines()[0]}") \
            from None
    _initialized = True
    return True


def select_devices(num: int | None = None, backend: str | None = None) -> list:
    """The first ``num`` devices (all of them, on every host, when ``None``)."""
    devices = jax.devices(backend)
    if num is None:
        return list(devices)
    if num < 1:
        raise JaxschedError(f"--devices {num}: must be >= 1")
    if num > len(devices):
        raise JaxschedError(f"--devices {num}: only {len(devices)} {devices[0].platform} "
                            f"device(s) available")
    if num % jax.process_count():
        raise JaxschedError(f"--devices {num}: must be a multiple of the "
                            f"{jax.process_count()} processes")
    if jax.process_count() > 1:  # take the same number from every host
        per = num // jax.process_count()
        out = []
        for p in range(jax.process_count()):
            out += [d for d in devices if d.process_index == p][:per]
        return out
    return list(devices[:num])


def round_up(n: int, m: int) -> int:
    """The smallest multiple of ``m`` that is ``>= n``."""
    return -(-int(n) // int(m)) * int(m)


def mesh_split(num_devices: int, num_params: int | None, num_workloads: int) -> tuple[int, int]:
    """``(dp, dw)`` with ``dp * dw = num_devices``: how many devices split the param-set and
    workload axes. Minimizes the padded batch ``round_up(P, dp) * round_up(W, dw)``; ties go
    to more workload shards. ``num_params=None`` (one shared param set): ``(1, num_devices)``.
    """
    if num_params is None:
        return 1, num_devices
    best = None
    for dp in range(1, num_devices + 1):
        if num_devices % dp:
            continue
        dw = num_devices // dp
        cost = round_up(num_params, dp) * round_up(num_workloads, dw)
        if best is None or cost < best[0]:
            best = (cost, dp, dw)
    return best[1], best[2]


def make_mesh(devices: Sequence, dp: int, dw: int) -> Mesh:
    """A ``(dp, dw)`` mesh with axes ``(PARAM_AXIS, WORKLOAD_AXIS)``."""
    if dp * dw != len(devices):
        raise ValueError(f"mesh {dp} x {dw} needs {dp * dw} devices, got {len(devices)}")
    return Mesh(np.asarray(devices, dtype=object).reshape(dp, dw), (PARAM_AXIS, WORKLOAD_AXIS))


def dummy_workloads(count: int, num_requests: int) -> Workload:
    """``count`` workloads of ``num_requests`` padding entries (nothing ever arrives), numpy."""
    shape = (count, num_requests)
    return Workload(arrival=np.full(shape, np.inf, np.float32),
                    prompt=np.ones(shape, np.int32), output=np.ones(shape, np.int32),
                    cls=np.zeros(shape, np.int32), valid=np.zeros(shape, bool))


def pad_workloads(workloads: Workload, keys: np.ndarray, total: int) -> tuple[Workload, np.ndarray]:
    """Append dummy workloads (and zero keys) up to ``total`` along the leading axis (numpy)."""
    w = keys.shape[0]
    wl = jax.tree.map(np.asarray, workloads)
    if total == w:
        return wl, keys
    dummy = dummy_workloads(total - w, wl.arrival.shape[-1])
    wl = jax.tree.map(lambda a, b: np.concatenate([a, b]), wl, dummy)
    keys = np.concatenate([keys, np.zeros((total - w,) + keys.shape[1:], keys.dtype)])
    return wl, keys


def pad_params(params: Any, total: int) -> Any:
    """Repeat the last parameter set along the leading axis up to ``total`` (numpy)."""
    def pad(x):
        x = np.asarray(x)
        extra = total - x.shape[0]
        return x if extra == 0 else np.concatenate([x, np.repeat(x[-1:], extra, axis=0)])

    return jax.tree.map(pad, params)


def key_data(keys) -> tuple[np.ndarray, Any]:
    """``(raw uint32 key data (W, ...), impl or None)``: typed keys unwrapped for sharding."""
    keys = jnp.asarray(keys) if not isinstance(keys, jax.Array) else keys
    if jnp.issubdtype(keys.dtype, jax.dtypes.prng_key):
        return np.asarray(jax.random.key_data(keys)), jax.random.key_impl(keys)
    return np.asarray(keys), None


def put(x: Any, sharding: NamedSharding) -> Any:
    """A global array (pytree) with this sharding from host data every process holds whole."""
    if jax.process_count() == 1:
        return jax.device_put(x, sharding)

    def one(a):
        a = np.asarray(a)
        return jax.make_array_from_callback(a.shape, sharding, lambda idx: a[idx])

    return jax.tree.map(one, x)


def to_host(x: Any) -> Any:
    """Numpy copy of a (pytree of) global array(s), gathered from every host if needed."""
    def one(a):
        if a is None:
            return None
        if isinstance(a, jax.Array) and not a.is_fully_addressable:
            from jax.experimental import multihost_utils

            return np.asarray(multihost_utils.process_allgather(a, tiled=True))
        return np.asarray(a)

    return jax.tree.map(one, x)

