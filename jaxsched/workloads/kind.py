"""What a workload kind is: the interface every kind implements, and the pieces kinds share.

A kind (one module each: :mod:`.poisson`, :mod:`.saturated`, :mod:`.bursty`, :mod:`.replay`;
the table of names is :mod:`.registry`) is a frozen dataclass of its own typed parameters,
built from a config's ``[workload]`` table (:meth:`WorkloadKind.from_config`). It knows

* ``num_requests(duration)``: the static N of its full request arrays on ``[0, duration)``;
* ``draw(key, duration, N)``: those arrays, one replica (a :class:`~jaxsched.core.model.Workload`
  of shape (N,), the conventions of :mod:`.generators`);
* ``arrivals_per_iteration(tau)``: a bound on its arrivals per iteration of length ``tau``
  (sizes a streamed run's window);
* ``stream_params()``, ``stream_start`` and ``stream_block``: the same law generated block by
  block on the device (:mod:`jaxsched.running.stream` holds the window and calls them).

The API (:mod:`jaxsched.api`) and the stream call these and never branch on the kind's name.
"""

from __future__ import annotations

import abc
from typing import Any, ClassVar

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from jaxsched.core.model import Workload
from jaxsched.errors import JaxschedError

__all__ = [
    "WorkloadKind",
    "ClassMix",
    "class_mix",
    "config_classes",
    "start_keys",
    "iid_classes",
]


class WorkloadKind(abc.ABC):
    """A workload kind: its parameters (the dataclass fields) and what it draws from them."""

    name: ClassVar[str]  # the config's workload.kind
    backlog: ClassVar[bool] = False  # every request has arrived at time 0 (saturated)
    uses_rates: ClassVar[bool] = False  # the classes' rates are its arrival rates
    class_lengths: ClassVar[bool] = True  # request lengths are the classes' (else its own)
    # its own sub-table of [workload], if it has settings beyond the shared keys:
    # (key, pydantic model, description); jaxsched.config adds it as workload.<key>
    config_table: ClassVar[tuple[str, type, str] | None] = None

    @classmethod
    def check_config(cls, wl) -> None:
        """Refuse a ``[workload]`` table (``jaxsched.config.WorkloadConfig``) this kind cannot
        run: a one-line ``ValueError`` (the config names the file). Default: classes needed."""
        if not wl.classes:
            raise ValueError(f"at least one [[workload.classes]] is required for kind = '{wl.kind}'")

    @classmethod
    @abc.abstractmethod
    def from_config(cls, cfg) -> "WorkloadKind":
        """The kind with its parameters from a validated ``jaxsched.config.Config``."""

    @abc.abstractmethod
    def num_requests(self, duration: float) -> int:
        """Static N: enough requests for ``[0, duration)`` (except with negligible probability)."""

    @abc.abstractmethod
    def draw(self, key, duration: float, num_requests: int) -> Workload:
        """One replica's full request arrays, (N,) (jit- and vmap-able over ``key``)."""

    @abc.abstractmethod
    def arrivals_per_iteration(self, tau: float) -> float:
        """A bound on the requests arriving during one iteration of length ``tau``."""

    @abc.abstractmethod
    def stream_params(self) -> Any:
        """The traced pytree its stream blocks are drawn from (shared by every workload)."""

    @staticmethod
    def stream_start(key, spec, sp) -> Any:
        """The kind's carried stream state before block 0 (default: none)."""
        return ()

    @staticmethod
    @abc.abstractmethod
    def stream_block(key, bkey, nb: int, sp, st, idx, time):
        """Block ``idx // nb`` of the stream: ``(arrival, prompt, output, cls, state)``, each
        (nb,) but the state; ``key``: the stream's key, ``bkey``: the block's, ``idx`` (nb,)
        the stream indices, ``time`` the last arrival before the block. Padding is applied
        by the caller."""


@struct.dataclass
class ClassMix:
    """Classes drawn i.i.d. in proportion to ``share`` (traced)."""

    prompt_len: jax.Array  # (K,) int32, l_k
    output_len: jax.Array  # (K,) int32, o_k
    share: jax.Array  # (K,) float32, rate or weight of each class (<= 0: never drawn)


def class_mix(prompt_len, output_len, share) -> ClassMix:
    """A :class:`ClassMix`, one entry per class (a one-line error otherwise)."""
    prompt_len = jnp.asarray(prompt_len, jnp.int32).reshape(-1)
    output_len = jnp.asarray(output_len, jnp.int32).reshape(-1)
    share = jnp.asarray(share, jnp.float32).reshape(-1)
    if not prompt_len.shape == output_len.shape == share.shape or prompt_len.shape[0] < 1:
        raise JaxschedError(f"stream: prompt_len {prompt_len.shape}, output_len "
                            f"{output_len.shape}, rate {share.shape}: give one per class")
    return ClassMix(prompt_len=prompt_len, output_len=output_len, share=share)


def config_classes(cfg):
    """``(prompt (K,) int32, output (K,) int32, rate (K,) float32, weight (K,) float32)`` of a
    config's ``[[workload.classes]]``."""
    cl = cfg.workload.classes
    return (
        np.array([c.prompt_len for c in cl], np.int32),
        np.array([c.output_len for c in cl], np.int32),
        np.array([c.rate for c in cl], np.float32),
        np.array([c.weight for c in cl], np.float32),
    )


def start_keys(key):
    """The three keys of a stream's start (phase, residual sojourn, trace offset): every kind
    draws its start from its own one, so the kinds' streams stay those of one shared layout."""
    return jax.random.split(jax.random.fold_in(key, 0), 3)


def iid_classes(bkey, mix: ClassMix, n: int):
    """``(gap key, prompt, output, cls)`` of a block of ``n`` requests (block key ``bkey``)
    whose classes are i.i.d. with ``P(class = k) = share_k / sum_j share_j`` (shares clipped
    at 0); the gap key is the block's other key, for its arrival times."""
    k_gap, k_cls = jax.random.split(bkey)
    logits = jnp.log(jnp.maximum(mix.share, 0.0))  # share 0 -> -inf: never drawn
    cls = jax.random.categorical(k_cls, logits, shape=(n,)).astype(jnp.int32)
    return k_gap, mix.prompt_len[cls], mix.output_len[cls], cls
