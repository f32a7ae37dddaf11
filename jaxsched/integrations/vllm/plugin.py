"""What the vLLM plugin runs: the policy file, read and checked against the engine.

The plugin is configured through vLLM's own ``additional_config`` (``--additional-config``
on ``vllm serve``, ``additional_config=`` in ``LLM(...)``)::

    {"jaxsched": {"policy": "policy.json", "seed": 0}}

or, when that has no ``jaxsched`` entry, through the environment variable ``JAXSCHED_POLICY``
(the path of the policy file). Every check here raises :class:`PluginError` with one line
naming the file and key; the scheduler raises it at engine startup, before any request.

Checks (the engine's settings as :class:`EngineSettings`):

* the file is a valid jaxsched policy file naming a registered policy with valid parameters
  (:func:`jaxsched.export.policy_file.load_policy`);
* its system matches the engine: ``system.block_size`` is vLLM's block size (a file tuned in
  token memory, block size 1, is refused) and ``system.capacity`` is the KV cache in blocks,
  ``floor(capacity / block_size) = num_blocks``, the blocks vLLM can allocate: its
  ``num_gpu_blocks`` less the null block its block pool keeps (so ``--num-gpu-blocks-override
  num_blocks + 1``; the policy then sees block memory with ``C = num_blocks x block_size``,
  as the simulator counts it); ``system.max_batch`` equals ``max_num_seqs`` (the policy's
  seats);
* the policy's own ``serve_check`` (a hook of the :class:`~jaxsched.policies.base.Policy`
  bundle) accepts the parameter values for this engine (e.g. ``vllm`` and ``sarathi`` plan
  under a token budget that must be vLLM's ``max_num_batched_tokens``);
* vLLM runs in a mode the plugin can apply decisions in: FCFS queue, no prefix caching, no
  asynchronous scheduling, no speculative decoding, no KV connector.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from jaxsched.errors import JaxschedError
from jaxsched.export.policy_file import load_policy

__all__ = ["ENV_VAR", "PluginError", "EngineSettings", "PluginSetup", "plugin_options",
           "load_setup"]

ENV_VAR = "JAXSCHED_POLICY"
"""Environment variable with the policy file's path (used when additional_config has none)."""


class PluginError(JaxschedError, ValueError):
    """A policy, parameter or engine setting the vLLM plugin cannot honour (one line)."""


@dataclasses.dataclass(frozen=True)
class EngineSettings:
    """The vLLM settings a policy decision depends on."""

    num_blocks: int  # KV blocks requests can hold: vLLM's num_gpu_blocks less its null block
    block_size: int
    max_num_seqs: int
    max_num_batched_tokens: int
    watermark: float = 0.0
    chunked_prefill: bool = True
    prefix_caching: bool = False
    async_scheduling: bool = False
    speculative: bool = False
    kv_connector: bool = False
    scheduling_policy: str = "fcfs"

    @property
    def capacity(self) -> int:
        """KV capacity in tokens, ``num_blocks x block_size`` (usable blocks)."""
        return self.num_blocks * self.block_size

    def as_dict(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "capacity": self.capacity}


@dataclasses.dataclass(frozen=True)
class PluginSetup:
    """A checked policy for one engine: what :class:`~jaxsched.policies.decide.PolicyScheduler`
    needs."""

    path: Path
    policy: Any  # jaxsched.policies.base.Policy
    params: Any  # its parameter pytree
    doc: Any  # jaxsched.export.policy_file.PolicyFile
    queue_size: int
    num_classes: int
    seed: int


def plugin_options(additional_config: Mapping[str, Any] | None,
                   environ: Mapping[str, str] | None = None) -> dict[str, Any]:
    """The plugin's options: ``additional_config["jaxsched"]``, else ``JAXSCHED_POLICY``."""
    environ = os.environ if environ is None else environ
    extra = dict(additional_config or {})
    if "jaxsched" in extra:
        opts = extra["jaxsched"]
        if not isinstance(opts, Mapping):
            raise PluginError(f"additional_config.jaxsched: expected an object like "
                              f'{{"policy": "policy.json"}}, got {opts!r}')
        unknown = sorted(set(opts) - {"policy", "seed"})
        if unknown:
            raise PluginError(f"additional_config.jaxsched.{unknown[0]}: unknown key "
                              f"(expected policy, seed)")
        if not isinstance(opts.get("policy"), str) or not opts["policy"]:
            raise PluginError("additional_config.jaxsched.policy: missing; give the path of a "
                              "jaxsched policy file")
        seed = opts.get("seed", 0)
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise PluginError(f"additional_config.jaxsched.seed: expected an integer, got {seed!r}")
        return {"policy": opts["policy"], "seed": seed}
    if environ.get(ENV_VAR):
        return {"policy": environ[ENV_VAR], "seed": 0}
    raise PluginError(f"jaxsched scheduler: no policy file; pass --additional-config "
                      f"'{{\"jaxsched\": {{\"policy\": \"policy.json\"}}}}' or set {ENV_VAR}")


def _check_engine_mode(engine: EngineSettings) -> None:
    bad = [(engine.prefix_caching, "prefix caching is on (start vLLM with "
                                   "--no-enable-prefix-caching)"),
           (engine.async_scheduling, "asynchronous scheduling is on (start vLLM with "
                                     "--no-async-scheduling)"),
           (engine.speculative, "speculative decoding is configured"),
           (engine.kv_connector, "a KV connector is configured"),
           (engine.scheduling_policy != "fcfs",
            f"scheduling policy {engine.scheduling_policy!r} (the plugin needs fcfs)")]
    for flag, why in bad:
        if flag:
            raise PluginError(f"jaxsched scheduler: {why}; the plugin orders the queue itself")


def check_system(path: Path, doc, engine: EngineSettings) -> None:
    """Refuse a policy file whose system does not describe this engine."""
    s = doc.system
    block_size = int(getattr(s, "block_size", 1) or 1)
    if block_size != engine.block_size:
        memory = "token memory" if block_size == 1 else f"{block_size}-token blocks"
        raise PluginError(f"{path}: system.block_size = {block_size} ({memory}) but vLLM "
                          f"allocates {engine.block_size}-token blocks (tune with [system] "
                          f"block_size = {engine.block_size}, or start vLLM with --block-size "
                          f"{block_size})")
    blocks = int(float(s.capacity) // engine.block_size)
    if blocks != engine.num_blocks:
        raise PluginError(f"{path}: system.capacity = {s.capacity:g} tokens is {blocks} blocks of "
                          f"{engine.block_size} but vLLM's KV cache has {engine.num_blocks} "
                          f"besides its null block (start vLLM with --num-gpu-blocks-override "
                          f"{blocks + 1})")
    if int(s.max_batch) != engine.max_num_seqs:
        raise PluginError(f"{path}: system.max_batch = {s.max_batch} but vLLM's max_num_seqs is "
                          f"{engine.max_num_seqs} (start vLLM with --max-num-seqs {s.max_batch})")


def param_values(policy, params) -> dict[str, Any]:
    """A parameter pytree as plain numbers (lists for per-class ones)."""
    out = {}
    for name in policy.params:
        v = np.asarray(params[name])
        out[name] = v.tolist() if v.ndim else float(v)
    return out


def load_setup(options: Mapping[str, Any], engine: EngineSettings) -> PluginSetup:
    """Read the policy file named by ``options`` and check it against ``engine``."""
    _check_engine_mode(engine)
    path = Path(options["policy"])
    if not path.is_file():
        raise PluginError(f"{path}: policy file not found (additional_config.jaxsched.policy "
                          f"or {ENV_VAR})")
    try:
        policy, params, doc = load_policy(path)
    except PluginError:
        raise
    except JaxschedError as err:
        raise PluginError(str(err)) from None
    check_system(path, doc, engine)
    if policy.serve_check is not None:
        why = policy.serve_check("vllm", param_values(policy, params), engine.as_dict())
        if why:
            raise PluginError(f"{path}: policy {policy.name!r} cannot run in vLLM: {why}")
    return PluginSetup(path=path, policy=policy, params=params, doc=doc,
                       queue_size=int(doc.system.queue_size),
                       num_classes=int(doc.system.num_classes), seed=int(options["seed"]))
