"""The ``bursty`` workload kind: two-state Markov-modulated Poisson arrivals (MMPP).

A hidden state alternates between *high* and *low* (Exponential sojourns of means
``mean_high``, ``mean_low``, started in its stationary law); in state s class k arrives at
``lambda_k f_s``. Full arrays: :func:`jaxsched.workloads.generators.bursty` (thinning). Stream:
by time change, the unit-rate points ``y_i = sum_{j <= i} E_j`` are mapped through the inverse
of the cumulative intensity ``Lambda f_{s(t)}``, one sojourn at a time (a ``while_loop`` over
the sojourns a block spans); the phase, the time left in the current sojourn and the sojourn
counter are carried. Sojourn j's length comes from ``fold_in(key, j)``, so sojourns do not
depend on block boundaries.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from flax import struct
from pydantic import BaseModel, ConfigDict, Field

from jaxsched.core.model import Workload
from jaxsched.workloads import generators as G
from jaxsched.workloads.kind import ClassMix, config_classes, iid_classes, start_keys
from jaxsched.workloads.poisson import Poisson

__all__ = ["BurstyConfig", "Bursty", "BurstyStream", "BurstyState"]


class BurstyConfig(BaseModel):
    """Two-state Markov-modulated Poisson arrivals: every class's rate is multiplied by
    ``high_factor`` or ``low_factor``; sojourn times are exponential with the given means."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    high_factor: float = Field(default=2.0, gt=0, description="rate multiplier in the high state")
    low_factor: float = Field(default=0.5, ge=0, description="rate multiplier in the low state")
    mean_high: float = Field(default=50.0, gt=0, description="mean sojourn in the high state")
    mean_low: float = Field(default=50.0, gt=0, description="mean sojourn in the low state")


@struct.dataclass
class BurstyStream:
    """Traced parameters of a bursty stream."""

    mix: ClassMix  # classes and their base rates lambda_k
    high_factor: jax.Array  # () float32
    low_factor: jax.Array  # () float32
    mean_high: jax.Array  # () float32, mean high sojourn
    mean_low: jax.Array  # () float32, mean low sojourn


@struct.dataclass
class BurstyState:
    """The hidden state after a block's last arrival."""

    high: jax.Array  # () bool, current phase
    remaining: jax.Array  # () float32, time left in the sojourn
    sojourn: jax.Array  # () int32, index of the current sojourn


@dataclasses.dataclass(frozen=True, eq=False)  # numpy fields: compared by identity
class Bursty(Poisson):
    """Poisson classes whose rates are all multiplied by the hidden state's factor."""

    high_factor: float = 2.0
    low_factor: float = 0.5
    mean_high: float = 50.0
    mean_low: float = 50.0

    name = "bursty"
    config_table = ("bursty", BurstyConfig, "bursty: the two states")

    @classmethod
    def from_config(cls, cfg) -> "Bursty":
        prompt, output, rate, _ = config_classes(cfg)
        b = cfg.workload.bursty or BurstyConfig()
        return cls(prompt, output, rate, b.high_factor, b.low_factor, b.mean_high, b.mean_low)

    @property
    def peak_factor(self) -> float:
        return max(self.high_factor, self.low_factor)

    def peak_rates(self):
        return self.rate * self.peak_factor

    def total_rate(self) -> float:
        return super().total_rate() * self.peak_factor

    def draw(self, key, duration: float, num_requests: int) -> Workload:
        return G.bursty(key, self.prompt_len, self.output_len, self.rate, duration, num_requests,
                        high_factor=self.high_factor, low_factor=self.low_factor,
                        mean_high=self.mean_high, mean_low=self.mean_low)

    def stream_params(self) -> BurstyStream:
        f32 = lambda x: jnp.asarray(x, jnp.float32)  # noqa: E731
        return BurstyStream(mix=super().stream_params(), high_factor=f32(self.high_factor),
                            low_factor=f32(self.low_factor), mean_high=f32(self.mean_high),
                            mean_low=f32(self.mean_low))

    @staticmethod
    def stream_start(key, spec, sp: BurstyStream) -> BurstyState:
        """Stationary phase, ``P(high) = mean_high / (mean_high + mean_low)``, and its residual
        sojourn (memoryless: Exponential with the phase's mean)."""
        k_phase, k_rem, _ = start_keys(key)
        pi_high = sp.mean_high / (sp.mean_high + sp.mean_low)
        high = jax.random.uniform(k_phase) < pi_high
        rem = jax.random.exponential(k_rem, (), jnp.float32) * jnp.where(high, sp.mean_high,
                                                                         sp.mean_low)
        return BurstyState(high=high, remaining=rem, sojourn=jnp.zeros((), jnp.int32))

    @staticmethod
    def stream_block(key, bkey, nb: int, sp: BurstyStream, st: BurstyState, idx, time):
        k_gap, prompt, output, cls = iid_classes(bkey, sp.mix, nb)
        e = jax.random.exponential(k_gap, (nb,), jnp.float32)
        rel, st = _bursty_times(jax.random.fold_in(key, 2), sp, st, jnp.cumsum(e))
        return time + rel, prompt, output, cls, st


def _bursty_times(key, sp: BurstyStream, st: BurstyState, y):
    """Times after the block's start of the unit-rate points ``y`` (ascending) under the
    intensity ``Lambda f_s``, and the state after them; ``key``: the stream's sojourn key."""
    lam = jnp.sum(jnp.maximum(sp.mix.share, 0.0))
    lam_h, lam_l = lam * sp.high_factor, lam * sp.low_factor
    last = y[-1]

    def rate_of(high):
        return jnp.where(high, lam_h, lam_l)

    def assign(t, mass0, time0, high):
        r = rate_of(high)
        safe = jnp.where(r > 0, r, 1.0)
        return jnp.where((y >= mass0) & (r > 0), time0 + (y - mass0) / safe, t)

    def more(c):
        _, mass0, _, high, rem, _ = c
        return mass0 + rem * rate_of(high) <= last

    def next_sojourn(c):
        t, mass0, time0, high, rem, j = c
        t = assign(t, mass0, time0, high)
        mass1 = mass0 + rem * rate_of(high)
        j = j + 1
        high = ~high
        length = jax.random.exponential(jax.random.fold_in(key, j), (), jnp.float32)
        length = length * jnp.where(high, sp.mean_high, sp.mean_low)
        return t, mass1, time0 + rem, high, length, j

    start = (jnp.full(y.shape, jnp.inf, jnp.float32), jnp.zeros((), jnp.float32),
             jnp.zeros((), jnp.float32), st.high, st.remaining, st.sojourn)
    ok = jnp.maximum(lam_h, lam_l) > 0
    t, mass0, time0, high, rem, j = jax.lax.while_loop(
        lambda c: ok & more(c), next_sojourn, start)
    t = assign(t, mass0, time0, high)
    r = jnp.where(rate_of(high) > 0, rate_of(high), 1.0)
    rem = jnp.maximum(rem - (last - mass0) / r, 0.0)
    t = jax.lax.cummax(jnp.where(ok, t, jnp.inf))  # float rounding at sojourn ends
    return t, BurstyState(high=high, remaining=rem, sojourn=j)
