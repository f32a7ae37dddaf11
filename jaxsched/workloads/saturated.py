"""The ``saturated`` workload kind: an infinite backlog, every request at time 0.

Classes are i.i.d., ``P(class = k) = weight_k / sum_j weight_j``, in the full arrays
(:func:`jaxsched.workloads.generators.saturated`, N from
:func:`~jaxsched.workloads.generators.saturated_num_requests` so that the backlog lasts the
horizon) and in the stream (``total`` requests, the rest padding). Completions per iteration
are at most ``C / min_k w_k`` (Little's law, ``w_k`` the memory-time
:func:`jaxsched.core.model.memory_time`): the bound on arrivals into the running system.
"""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp
import numpy as np

from jaxsched.core.model import Workload, memory_time
from jaxsched.workloads import generators as G
from jaxsched.workloads.kind import ClassMix, WorkloadKind, class_mix, config_classes, iid_classes

__all__ = ["Saturated"]


@dataclasses.dataclass(frozen=True, eq=False)  # numpy fields: compared by identity
class Saturated(WorkloadKind):
    """A backlog of class-``weight`` mixed requests, sized for ``horizon`` iterations of a
    system of ``capacity`` tokens."""

    prompt_len: np.ndarray  # (K,) int32
    output_len: np.ndarray  # (K,) int32
    weight: np.ndarray  # (K,) float32, class shares
    capacity: float  # C, tokens
    horizon: int  # H, iterations

    name = "saturated"
    backlog = True

    @classmethod
    def from_config(cls, cfg) -> "Saturated":
        prompt, output, _, weight = config_classes(cfg)
        return cls(prompt, output, weight, cfg.capacity, cfg.workload.horizon)

    def num_requests(self, duration: float) -> int:
        return G.saturated_num_requests(self.prompt_len, self.output_len, self.capacity,
                                        self.horizon)

    def draw(self, key, duration: float, num_requests: int) -> Workload:
        return G.saturated(key, self.prompt_len, self.output_len, self.weight, num_requests)

    def arrivals_per_iteration(self, tau: float) -> float:
        return self.capacity / float(np.min(memory_time(self.prompt_len, self.output_len)))

    def stream_params(self) -> ClassMix:
        return class_mix(self.prompt_len, self.output_len, self.weight)

    @staticmethod
    def stream_block(key, bkey, nb: int, sp: ClassMix, st, idx, time):
        _, prompt, output, cls = iid_classes(bkey, sp, nb)
        return jnp.zeros((nb,), jnp.float32), prompt, output, cls, st
