"""The ``poisson`` workload kind: independent Poisson arrivals per class.

Full arrays: :func:`jaxsched.workloads.generators.poisson` (class k a Poisson process of rate
``lambda_k``, N from :func:`~jaxsched.workloads.generators.poisson_num_requests`). Stream: the
merged process, one Poisson process of rate ``Lambda = sum_k max(lambda_k, 0)`` with i.i.d.
classes, ``P(class = k) = lambda_k / Lambda``: ``a_i = a_{i-1} + E_i / Lambda``,
``E_i ~ Exp(1)``, ``a_{-1}`` the last arrival of the previous block (0 at the start).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from jaxsched.core.model import Workload
from jaxsched.workloads import generators as G
from jaxsched.workloads.kind import ClassMix, WorkloadKind, class_mix, config_classes, iid_classes

__all__ = ["Poisson"]


@dataclasses.dataclass(frozen=True, eq=False)  # numpy fields: compared by identity
class Poisson(WorkloadKind):
    """Class k: prompt ``prompt_len[k]``, output ``output_len[k]``, arrivals at ``rate[k]``."""

    prompt_len: np.ndarray  # (K,) int32
    output_len: np.ndarray  # (K,) int32
    rate: np.ndarray  # (K,) float32, arrivals per unit time

    name = "poisson"
    uses_rates = True

    @classmethod
    def check_config(cls, wl) -> None:
        super().check_config(wl)
        if sum(c.rate for c in wl.classes) <= 0:
            raise ValueError(f"kind = '{wl.kind}' needs a positive rate in some class")

    @classmethod
    def from_config(cls, cfg) -> "Poisson":
        prompt, output, rate, _ = config_classes(cfg)
        return cls(prompt, output, rate)

    def peak_rates(self) -> np.ndarray:
        """(K,) the highest arrival rate of each class (float32)."""
        return self.rate

    def total_rate(self) -> float:
        """Arrivals per unit time at the peak, ``sum_k max(lambda_k, 0)``."""
        return float(np.sum(np.maximum(self.rate, 0.0)))

    def num_requests(self, duration: float) -> int:
        return G.poisson_num_requests(self.peak_rates(), duration)

    def draw(self, key, duration: float, num_requests: int) -> Workload:
        return G.poisson(key, self.prompt_len, self.output_len, self.rate, duration, num_requests)

    def arrivals_per_iteration(self, tau: float) -> float:
        return self.total_rate() * tau

    def stream_params(self) -> ClassMix:
        return class_mix(self.prompt_len, self.output_len, self.rate)

    @staticmethod
    def stream_block(key, bkey, nb: int, sp: ClassMix, st, idx, time):
        k_gap, prompt, output, cls = iid_classes(bkey, sp, nb)
        e = jax.random.exponential(k_gap, (nb,), jnp.float32)
        total = jnp.sum(jnp.maximum(sp.share, 0.0))
        rel = jnp.where(total > 0, jnp.cumsum(e / jnp.where(total > 0, total, 1.0)), jnp.inf)
        return time + rel, prompt, output, cls, st
