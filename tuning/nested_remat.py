"""Reverse mode over a long relaxed rollout in memory that does not grow with the horizon:
two-level checkpointing of the scan, with compact carries at the segment boundaries.

Reverse mode needs, for every iteration, the residuals of the step (``r`` bytes, about 27
per slot). With the scan cut into leaf segments of ``S`` iterations under
:func:`jax.checkpoint` (one level, as :func:`jaxsched.core.rollout.advance` does with
``remat``), the backward pass keeps one carry per segment and one segment's residuals:

    M_1 = (H / S) c + S r.

The carry ``c`` is not small: it holds the per-request state (``taken``, ``kept``,
``first_done``: 6 bytes per request), and the number of requests ``N`` of a saturated or
Poisson workload grows with the horizon, so ``c`` grows with ``H`` too and ``M_1`` grows like
``H`` even at the best ``S`` (``2 sqrt(H c r)`` with ``c ~ H``). Two changes make the memory a
chunk's, whatever the horizon:

* **two levels** (Griewank and Walther's nested checkpointing): the ``q = H / S`` leaf
  segments are grouped ``m = ceil(sqrt(q))`` at a time; the outer scan keeps one carry per
  group, the backward pass of a group keeps one per leaf of that group, and one leaf's
  residuals are live at a time:

      M_2 = (q / m + m) c + S r  ~  2 sqrt(H / S) c + S r,

  for one more forward pass of compute than one level (each leaf runs three times forward:
  the forward pass, the group's recomputation, the leaf's recomputation);
* **compact boundary carries** (:class:`CarryCodec`): what the scans keep at the boundaries
  is the carry encoded losslessly: boolean arrays as bits (``jnp.packbits``), and integer
  fields with a bound known on the host (``kept < output length``) in the narrowest unsigned
  type that holds the bound (one byte for outputs under 256 tokens). The per-request bytes of
  a kept carry go from 6 to 1.25; decoding gives the same carry bit for bit.

With ``S`` a fixed chunk (about :data:`DEFAULT_LEAF` iterations, :func:`balanced_plan`),
``S r`` is fixed and the carries' term ``2 sqrt(H / S) c`` is the only one that grows; on the
README's seed-001 mix (Gradient search) it is the smaller one at 1000 and 3000 iterations. The
values and gradients are those of the plain scan (the recomputation is the same program;
``tests/test_nested_remat.py`` checks them, with a plan that leaves a partial group and a
tail, and against finite differences).
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Callable, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from jaxsched.core import rollout as R
from jaxsched.core.model import SimShape, Workload
from jaxsched.core.sim import RolloutResult, SimParams
from jaxsched.policies.base import Policy

__all__ = [
    "DEFAULT_LEAF",
    "SegmentPlan",
    "plan_segments",
    "balanced_plan",
    "CarryCodec",
    "carry_codec",
    "nested_advance",
    "make_relaxed_rollout",
    "compiled_relaxed_simulator",
]

DEFAULT_LEAF = 128
"""Iterations per leaf segment when ``[tune.gradient] remat`` is not set: one leaf's
residuals (``S r``: 3.5 MB per rollout at 1024 slots) are the fixed part of the memory."""


@dataclasses.dataclass(frozen=True)
class SegmentPlan:
    """``H = outer * inner * leaf + rest * leaf + tail`` iterations: ``outer`` groups of
    ``inner`` leaf segments, then ``rest`` leaf segments, then a shorter one of ``tail``."""

    leaf: int
    inner: int
    outer: int
    rest: int
    tail: int

    @property
    def horizon(self) -> int:
        return (self.outer * self.inner + self.rest) * self.leaf + self.tail


def plan_segments(horizon: int, leaf: int) -> SegmentPlan:
    """Leaf segments of exactly ``leaf`` iterations grouped ``ceil(sqrt(q))`` at a time (see
    module), the leaves and iterations left over after them."""
    leaf = max(1, min(int(leaf), int(horizon)))
    q, tail = divmod(int(horizon), leaf)
    inner = max(1, math.ceil(math.sqrt(q)))
    outer = q // inner
    return SegmentPlan(leaf=leaf, inner=inner, outer=outer, rest=q - outer * inner, tail=tail)


def _divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


def balanced_plan(horizon: int, leaf: int) -> SegmentPlan:
    """A plan with leaves of about ``leaf`` iterations and nothing left over: the divisor of
    ``horizon`` in ``[leaf / 2, 2 leaf]`` nearest ``leaf``, its ``q`` leaves in groups of the
    divisor of ``q`` nearest ``sqrt(q)`` from above. Left-over leaves or iterations would be
    separate computations whose residual buffers XLA keeps beside the groups' (measured: a
    tail of 104 iterations beside leaves of 128 raised the step's memory by 40%). A horizon
    without such a divisor gets :func:`plan_segments`."""
    horizon, leaf = int(horizon), max(1, min(int(leaf), int(horizon)))
    near = [d for d in _divisors(horizon) if leaf / 2 <= d <= 2 * leaf]
    if not near:
        return plan_segments(horizon, leaf)
    size = min(near, key=lambda d: (abs(d - leaf), d))
    q = horizon // size
    inner = min(d for d in _divisors(q) if d * d >= q)
    return SegmentPlan(leaf=size, inner=inner, outer=q // inner, rest=0, tail=0)


def _unsigned_for(bound: int):
    for dtype in (jnp.uint8, jnp.uint16, jnp.uint32):
        if bound <= np.iinfo(dtype).max:
            return dtype
    return None


@dataclasses.dataclass(frozen=True)
class CarryCodec:
    """Lossless encoding of a carry's leaves for the boundaries: per leaf (in
    ``jax.tree.leaves`` order) ``("bits", n)``, ``("narrow", dtype)`` or ``None`` (kept as is);
    ``dtypes``: the leaves' own dtypes, restored on decoding."""

    treedef: object
    codes: tuple
    dtypes: tuple

    def encode(self, carry):
        leaves = jax.tree.leaves(carry)
        out = []
        for x, code in zip(leaves, self.codes):
            if code is None:
                out.append(x)
            elif code[0] == "bits":
                out.append(jnp.packbits(x, axis=-1))
            else:
                out.append(x.astype(code[1]))
        return out

    def decode(self, encoded):
        leaves = []
        for x, code, dtype in zip(encoded, self.codes, self.dtypes):
            if code is None:
                leaves.append(x)
            elif code[0] == "bits":
                leaves.append(jnp.unpackbits(x, axis=-1, count=code[1]).astype(bool))
            else:
                leaves.append(x.astype(dtype))
        return jax.tree.unflatten(self.treedef, leaves)


def carry_codec(carry, bounds: Mapping[str, int] | None = None, min_size: int = 64) -> CarryCodec:
    """The codec of ``carry`` (arrays or shape structs): boolean leaves of at least
    ``min_size`` elements as bits; integer leaves whose field name (the last attribute of the
    leaf's path) is in ``bounds``, holding values in ``[0, bound]``, narrowed."""
    bounds = dict(bounds or {})
    paths, treedef = jax.tree_util.tree_flatten_with_path(carry)
    codes, dtypes = [], []
    for path, x in paths:
        dtype = jnp.dtype(x.dtype)
        name = getattr(path[-1], "name", None) if path else None
        code = None
        if dtype == jnp.bool_ and x.ndim >= 1 and x.size >= min_size:
            code = ("bits", int(x.shape[-1]))
        elif name in bounds and jnp.issubdtype(dtype, jnp.integer):
            narrow = _unsigned_for(int(bounds[name]))
            if narrow is not None and jnp.dtype(narrow).itemsize < dtype.itemsize:
                code = ("narrow", narrow)
        codes.append(code)
        dtypes.append(dtype)
    return CarryCodec(treedef, tuple(codes), tuple(dtypes))


def nested_advance(run: Callable, carry, plan: SegmentPlan, codec: CarryCodec):
    """``run(carry, n) -> carry`` (``n`` iterations, a plain scan) applied ``plan.horizon``
    times in the two-level checkpointed layout of ``plan``; the boundaries keep
    ``codec.encode(carry)``. The same values and gradients as ``run(carry, plan.horizon)``."""

    def leaf(encoded, n):
        return codec.encode(run(codec.decode(encoded), n))

    leaf_step = jax.checkpoint(lambda e, _: (leaf(e, plan.leaf), None))

    def group(e, _):
        return jax.lax.scan(leaf_step, e, None, length=plan.inner)[0], None

    e = codec.encode(carry)
    if plan.outer:
        e = jax.lax.scan(jax.checkpoint(group), e, None, length=plan.outer)[0]
    if plan.rest:
        e = jax.lax.scan(leaf_step, e, None, length=plan.rest)[0]
    if plan.tail:
        e = jax.checkpoint(lambda x: leaf(x, plan.tail))(e)
    return codec.decode(e)


def make_relaxed_rollout(policy: Policy, shape: SimShape, plan: SegmentPlan | None,
                         bounds: tuple[tuple[str, int], ...] = ()):
    """``rollout(key, workload, params) -> RolloutResult`` (no trace) for gradients: the scan
    of :func:`jaxsched.core.rollout.advance` in :func:`nested_advance`'s layout ``plan``
    (None: the plain scan), boundary carries encoded with ``bounds`` (:func:`carry_codec`)."""
    if shape.record_trace:
        raise ValueError("make_relaxed_rollout: a gradient rollout records no trace")
    if plan is not None and plan.horizon != shape.horizon:
        raise ValueError(f"make_relaxed_rollout: the plan covers {plan.horizon} iterations, "
                         f"the shape {shape.horizon}")

    def rollout(key, workload: Workload, params: SimParams) -> RolloutResult:
        carry = R.init(policy, shape, workload, params)

        def run(c, n):
            return R.advance(policy, shape, key, workload, params, c, n)[0]

        if plan is not None:
            carry = nested_advance(run, carry, plan, carry_codec(carry, dict(bounds)))
        else:
            carry = run(carry, shape.horizon)
        return R.finalize(params, R.collect(carry), False)

    return rollout


@functools.lru_cache(maxsize=16)
def compiled_relaxed_simulator(policy: Policy, shape: SimShape, plan: SegmentPlan | None,
                               bounds: tuple[tuple[str, int], ...] = ()):
    """``fn(keys (W,), workloads (W, N), params (P, ...)) -> RolloutResult`` leading (P, W):
    :func:`make_relaxed_rollout` vmapped over workloads, then parameter sets, jitted."""
    per_workload = jax.vmap(make_relaxed_rollout(policy, shape, plan, bounds),
                            in_axes=(0, 0, None))
    return jax.jit(jax.vmap(per_workload, in_axes=(None, None, 0)))
