"""Greedy admission, the vLLM-like baseline.

Each iteration, admit waiting requests first-come-first-served while the memory they need
(``l + g + 1``: prompt, kept tokens, the first new token) fits in what the residents leave
free after their own growth (``C - sum_i (l_i + s_i + 1)``), optionally capped at
``max_num_seqs`` residents; the first request that does not fit blocks the rest. On overflow,
evict in the chosen order (default newest-admitted first, vLLM's recompute preemption and the
LIFO rule of the flow-control and WAIT papers). Nothing is reserved for future growth: this
is the greedy admission whose eviction-free fixed point Ao, Dong, Luo & Simchi-Levi show to
be unstable.
"""

from __future__ import annotations

import jax.numpy as jnp

from jaxsched.core.prefix import count_through, prefix_sum
from jaxsched.policies.base import (
    check_eviction,
    Param,
    Policy,
    ordered_eviction,
    fcfs_prefix,
    full_need,
    view_memory,
    no_state,
    quiet_while_growing,
    run_all,
)
from jaxsched.policies.serving import ServerHints, cap_seats

__all__ = ["greedy"]


def greedy_server_flags(target, values) -> ServerHints:
    """``max_num_seqs`` is the server's running-request cap."""
    hints = ServerHints()
    cap_seats(hints, target, values, "max_num_seqs")
    return hints


def greedy(eviction: str = "newest") -> Policy:
    """Greedy FCFS admission with one-step feasibility; ``eviction`` in ``EVICTION_ORDERS``."""
    check_eviction(eviction)

    def admit(key, params, pstate, view):
        del key
        q, s = view.queue, view.slots
        free = view.capacity - jnp.sum(full_need(s, view.block_size))
        need = view_memory(view, jnp.where(q.valid, q.prompt + q.kept + 1, 0))
        seats = params["max_num_seqs"] - jnp.sum(s.valid)
        ok = (prefix_sum(need) <= free) & (count_through(q.valid) <= seats)
        return fcfs_prefix(ok, q.valid), pstate

    return Policy(
        name="greedy",
        params={
            "max_num_seqs": Param(
                default=1e9, low=1, integer=True,
                doc="cap on resident requests (vLLM max_num_seqs); default unlimited",
            ),
        },
        init=no_state,
        admit=admit,
        plan=run_all,
        evict=ordered_eviction(eviction),
        server_flags=greedy_server_flags,
        quiet_bound=quiet_while_growing(admit, run_all),
    )
