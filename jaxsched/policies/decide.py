"""The model's steps 2-4 around a policy, as one function for every server that runs policies.

:func:`decide` is what an iteration of :func:`jaxsched.core.sim.step` decides, on a
:class:`~jaxsched.policies.base.SchedView` built by a server from its own state:

2. **Admission.** ``policy.admit`` picks window positions; :func:`~jaxsched.policies.base.seat_admissions`
   keeps them in queue order while they fit the free slots; admitted requests become the
   newest residents (``cached = 0``, their kept tokens ``g``).
3. **Plan.** ``policy.plan`` says who runs and each prefill chunk cap;
   :func:`~jaxsched.policies.base.plan_execution` clips the chunks and gives each resident's
   memory ``need = cached + chunk + token``.
4. **Memory.** With ``excess = sum need - C``, ``policy.evict`` chooses victims and
   :func:`~jaxsched.policies.base.evict_to_fit` adds newest-first ones until memory fits.

The jaxsched engine (:mod:`jaxsched.engine.batching`) and the vLLM plugin
(:mod:`jaxsched.integrations.vllm`) both call it through :class:`PolicyScheduler`, so a policy
means the same thing in the simulator and in either server.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jaxsched.core.model import SimShape
from jaxsched.policies.base import (
    Policy,
    QueueView,
    SchedView,
    SlotView,
    evict_to_fit,
    plan_execution,
    seat_admissions,
)
from jaxsched.policies.registry import make_params

__all__ = ["Decision", "decide", "host_views", "PolicyScheduler"]


@jax.tree_util.register_dataclass
@dataclasses.dataclass
class Decision:
    """Output of :func:`decide` (steps 2-4 of the model)."""

    admit: jax.Array  # (W,) bool, window positions admitted (after clipping to free slots)
    slots: SlotView  # (B,) residents after admission (admitted ones appended, is_new set)
    run: jax.Array  # (B,) bool
    chunk: jax.Array  # (B,) int32 prefill tokens (0 for evicted or non-running)
    token: jax.Array  # (B,) bool generates a token
    evict: jax.Array  # (B,) bool
    need: jax.Array  # (B,) int32 memory in this iteration
    excess: jax.Array  # () float32 M_k - C before eviction


def decide(policy: Policy, key, params, pstate, view: SchedView):
    """Steps 2-4 of :mod:`jaxsched.core.model` on ``view`` (whose slots have ``is_new`` false and
    ``excess`` 0), with the rules of :func:`jaxsched.core.sim.step`. Returns
    ``(Decision, pstate)``."""
    q, slots = view.queue, view.slots
    b = slots.valid.shape[0]
    w = q.valid.shape[0]
    k_admit, k_plan, k_evict = jax.random.split(key, 3)

    admit, pstate = policy.admit(k_admit, params, pstate, view)
    admit = getattr(admit, "admit", admit)  # a policy may return its mask with margins
    admit, pos = seat_admissions(admit, q.valid, slots.valid)
    put = lambda dst, src: dst.at[pos].set(src, mode="drop")  # noqa: E731
    slots = SlotView(
        valid=put(slots.valid, jnp.ones((w,), bool)),
        prompt=put(slots.prompt, q.prompt),
        output=put(slots.output, q.output),
        generated=put(slots.generated, q.kept),
        cached=put(slots.cached, jnp.zeros_like(q.kept)),
        cls=put(slots.cls, q.cls),
        arrival=put(slots.arrival, q.arrival),
        is_new=put(jnp.zeros((b,), bool), jnp.ones((w,), bool)),
    )
    valid = slots.valid
    view = view.replace(slots=slots)

    plan = policy.plan(k_plan, params, pstate, view)
    run, chunk, token, need, _ = plan_execution(plan.run, plan.chunk, valid, slots.prompt,
                                                slots.generated, slots.cached, view.block_size)

    excess = jnp.sum(need).astype(jnp.float32) - view.capacity
    evict, pstate = policy.evict(k_evict, params, pstate, view.replace(excess=excess), need)
    evict = evict_to_fit(evict, need, valid, excess)
    survive = valid & ~evict
    return Decision(admit=admit, slots=slots, run=run & survive,
                    chunk=jnp.where(survive, chunk, 0), token=token & survive, evict=evict,
                    need=jnp.where(survive, need, 0), excess=excess), pstate


def host_views(window: Sequence, residents: Sequence, w: int, b: int, *,
               prompt: Callable, output: Callable, generated: Callable, cached: Callable,
               cls: Callable, arrival: Callable) -> tuple[QueueView, SlotView]:
    """A server's ``(QueueView, SlotView)`` from its request lists: ``window`` (at most ``w``
    waiting requests, in queue order) and ``residents`` (at most ``b``), zero-padded. Each
    keyword reads one field from a request; ``generated`` also gives a waiting request's
    kept tokens. No resident is new: the server asks before this iteration's admissions."""
    def arr(items, fn, n, dtype):
        out = np.zeros(n, dtype)
        out[: len(items)] = [fn(r) for r in items]
        return out

    def common(items, n):
        return dict(valid=np.arange(n) < len(items), prompt=arr(items, prompt, n, np.int32),
                    output=arr(items, output, n, np.int32), cls=arr(items, cls, n, np.int32),
                    arrival=arr(items, arrival, n, np.float32))

    queue = QueueView(**common(window, w), kept=arr(window, generated, w, np.int32))
    slots = SlotView(**common(residents, b), generated=arr(residents, generated, b, np.int32),
                     cached=arr(residents, cached, b, np.int32), is_new=np.zeros(b, bool))
    return queue, slots


@functools.lru_cache(maxsize=32)
def _compiled_decide(policy: Policy):
    return jax.jit(functools.partial(decide, policy))


class PolicyScheduler:
    """A :class:`Policy` with its parameters and state, deciding a server's iterations.

    ``shape``: the server's ``max_batch`` (B), ``queue_size`` (W) and ``num_classes``;
    ``capacity``: C in tokens; ``block_size``: tokens per KV block of the memory the policy
    sees (1: token memory; see :class:`~jaxsched.policies.base.SchedView`).

    ``params``: user values or a parameter dict (validated by
    :func:`~jaxsched.policies.make_params`; defaults for the rest). ``policy.fit_defaults``
    is not called (it needs workload statistics): pass fitted values explicitly. WAIT-family
    thresholds are checked against the shape (the policy's ``check_shape`` hook).
    """

    def __init__(self, policy: Policy, params: Mapping[str, Any] | None, shape: SimShape,
                 capacity: float, seed: int = 0, block_size: int = 1):
        self.policy = policy
        self.shape = SimShape(max_batch=shape.max_batch, queue_size=shape.queue_size,
                              horizon=1, num_classes=shape.num_classes)
        self.params = make_params(policy, params, shape.num_classes)
        if policy.check_shape is not None:  # the policy's own refusal of impossible values
            policy.check_shape(self.params, self.shape, "policy.")
        self.pstate = policy.init(self.params, self.shape)
        self.capacity = float(capacity)
        self.block_size = int(block_size)
        self._key = jax.random.key(seed)
        self._decide = _compiled_decide(policy)

    def decide(self, iteration: int, now: float, num_waiting: int, queue: QueueView,
               slots: SlotView) -> Decision:
        view = SchedView(
            time=jnp.float32(now), iteration=jnp.int32(iteration),
            capacity=jnp.float32(self.capacity), num_waiting=jnp.int32(num_waiting),
            queue=queue, slots=slots, excess=jnp.zeros((), jnp.float32),
            block_size=jnp.int32(self.block_size))
        key = jax.random.fold_in(self._key, iteration)
        decision, self.pstate = self._decide(key, self.params, self.pstate, view)
        return jax.tree.map(np.asarray, decision)
