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
from all hosts (:func:`to_host`), so every process ends with the whole result. The processes
agree on the memory budget (:func:`min_over_processes`) and refuse, in one line, a launch
whose processes hold different runs (:func:`check_same_on_all_processes`). On CPU the
processes talk through JAX's CPU collectives (gloo): tested with 2 processes x 2 forced host
devices on one machine (``tests/test_multiprocess.py``).
"""

from __future__ import annotations

import contextlib
import ctypes
import hashlib
import os
import sys
from typing import Any, Iterator, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding

from jaxsched.errors import JaxschedError
from jaxsched.core.model import Workload

__all__ = [
    "PARAM_AXIS",
    "WORKLOAD_AXIS",
    "check_distributed_args",
    "initialize_distributed",
    "is_main_process",
    "min_over_processes",
    "check_same_on_all_processes",
    "native_stdout_to_stderr",
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


def _env_int(name: str) -> int | None:
    text = os.environ.get(name, "")
    if text == "":
        return None
    try:
        return int(text)
    except ValueError:
        raise JaxschedError(f"{name}={text!r}: expected an integer") from None


def check_distributed_args(coordinator: str | None, num_processes: int | None,
                           process_id: int | None, auto: bool = False) -> None:
    """Refuse an inconsistent multi-host launch in one line, before JAX is touched.

    ``coordinator`` must be ``HOST:PORT``; with it, ``num_processes >= 1`` and
    ``0 <= process_id < num_processes`` are required. Without a coordinator (and without
    ``auto`` cluster detection) the process count and id mean nothing and are refused.
    """
    if coordinator is None:
        if not auto and (num_processes is not None or process_id is not None):
            raise JaxschedError("--num-processes/--process-id need --coordinator HOST:PORT "
                                "(or JAX_COORDINATOR_ADDRESS)")
    else:
        host, sep, port = coordinator.rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise JaxschedError(f"--coordinator {coordinator!r}: expected HOST:PORT, "
                                "e.g. 10.0.0.1:1234")
        if num_processes is None or process_id is None:
            raise JaxschedError(
                f"distributed run with coordinator {coordinator!r}: give --num-processes and "
                "--process-id (or JAX_NUM_PROCESSES and JAX_PROCESS_ID)")
    if num_processes is not None and num_processes < 1:
        raise JaxschedError(f"--num-processes {num_processes}: must be >= 1")
    if process_id is not None and process_id < 0:
        raise JaxschedError(f"--process-id {process_id}: must be >= 0")
    if num_processes is not None and process_id is not None and process_id >= num_processes:
        raise JaxschedError(f"--process-id {process_id}: must be below --num-processes "
                            f"{num_processes}")


def initialize_distributed(coordinator: str | None = None, num_processes: int | None = None,
                           process_id: int | None = None) -> bool:
    """Join a multi-host run if one is configured; returns whether :mod:`jax.distributed` is on.

    Arguments win over the environment (``JAX_COORDINATOR_ADDRESS``, ``JAX_NUM_PROCESSES``,
    ``JAX_PROCESS_ID``); ``JAXSCHED_DISTRIBUTED=1`` alone asks JAX to detect the cluster.
    Bad values are refused by :func:`check_distributed_args`. On CPU the processes' devices
    talk through JAX's CPU collectives (``jax_cpu_collectives_implementation``, gloo by
    default). Must run before the first JAX computation of the process; a second call is a
    no-op.
    """
    global _initialized
    if _initialized:
        return True
    env = os.environ
    coordinator = coordinator or env.get("JAX_COORDINATOR_ADDRESS") or None
    if num_processes is None:
        num_processes = _env_int("JAX_NUM_PROCESSES")
    if process_id is None:
        process_id = _env_int("JAX_PROCESS_ID")
    auto = env.get("JAXSCHED_DISTRIBUTED", "") not in ("", "0")
    check_distributed_args(coordinator, num_processes, process_id, auto)
    if coordinator is None and not auto:
        return False
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
            return np.asarray(multihost_utils.process_allgather(a, tiled=True))
        return np.asarray(a)

    return jax.tree.map(one, x)


def is_main_process() -> bool:
    """Whether this process writes output files: process 0 of a multi-host run (or the only one)."""
    return jax.process_index() == 0


def _allgather_bytes(data: bytes) -> list[bytes]:
    """Every process's ``data`` (all of the same length), in process order."""
    rows = multihost_utils.process_allgather(np.frombuffer(data, np.uint8))
    return [bytes(np.asarray(r, np.uint8)) for r in np.asarray(rows).reshape(-1, len(data))]


def min_over_processes(value: int) -> int:
    """The smallest of every process's ``value`` (itself on one process): per-host measurements
    such as a memory budget must agree, or the processes would plan different batches."""
    if jax.process_count() == 1:
        return int(value)
    return min(int(np.frombuffer(b, np.int64)[0])
               for b in _allgather_bytes(np.int64(value).tobytes()))


def _fingerprint(tree: Any) -> bytes:
    h = hashlib.sha256()
    for leaf in jax.tree.leaves(tree):
        if hasattr(leaf, "shape") and hasattr(leaf, "dtype"):
            a = np.asarray(leaf)
            h.update(f"{a.dtype}{a.shape}".encode())
            h.update(np.ascontiguousarray(a).tobytes())
        else:
            h.update(repr(leaf).encode())
    return h.digest()


def check_same_on_all_processes(tree: Any, what: str) -> None:
    """Refuse, in one line on every process, a multi-host run whose processes hold different
    ``tree`` (arrays compared by value, anything else by ``repr``): each process feeds its
    shards from its own copy of the batch, so a process launched with another config or seed
    would silently change the result. A no-op on one process."""
    if jax.process_count() == 1:
        return
    digests = _allgather_bytes(_fingerprint(tree))
    differ = [i for i, d in enumerate(digests) if d != digests[0]]
    if differ:
        raise JaxschedError(f"processes {differ} disagree with process 0 on {what}: launch "
                            "every process with the same config, flags and seed")


def _flush_native_stdout() -> None:
    try:
        ctypes.CDLL(None).fflush(None)
    except (OSError, AttributeError):  # no C library to flush (not a POSIX libc)
        pass


@contextlib.contextmanager
def native_stdout_to_stderr(enabled: bool = True) -> Iterator[None]:
    """Send file descriptor 1 to stderr while the block runs (when ``enabled``).

    JAX's CPU collectives (gloo) print connection messages on the process's stdout; inside
    this block they land on stderr, so a multi-process ``simulate --json`` still prints
    exactly one JSON object on stdout.
    """
    if not enabled:
        yield
        return
    sys.stdout.flush()
    _flush_native_stdout()
    saved = os.dup(1)
    os.dup2(2, 1)
    try:
        yield
    finally:
        sys.stdout.flush()
        _flush_native_stdout()
        os.dup2(saved, 1)
        os.close(saved)
