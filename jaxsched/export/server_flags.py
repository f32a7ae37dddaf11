"""A policy file as the nearest flags of an LLM server (vLLM, SGLang).

:func:`server_config` maps a :class:`~jaxsched.export.policy_file.PolicyFile` to the flags and
environment of ``vllm serve`` or SGLang's launcher, with a note for every tuned parameter
the server cannot express; for vLLM also :func:`plugin_command`, the command line that runs
the policy itself through :mod:`jaxsched.integrations.vllm`.
"""

from __future__ import annotations

import dataclasses
import json
import math
from typing import Any

from jaxsched.errors import JaxschedError
from jaxsched.export.policy_file import PolicyFile
from jaxsched.integrations.vllm.plugin import EngineSettings, param_values
from jaxsched.policies import get_policy, make_params
from jaxsched.policies.serving import ServerHints, ServerTarget, Unexpressed, fmt

__all__ = ["SERVERS", "ServerConfig", "PLUGIN_SCHEDULER", "plugin_command", "server_config"]

SERVERS = ("vllm", "sglang")


@dataclasses.dataclass
class ServerConfig:
    """The nearest configuration of an LLM server for a policy file."""

    server: str
    policy: str
    flags: dict[str, Any]
    env: dict[str, str]
    notes: list[str]
    # vLLM only: the command line that runs the policy itself through jaxsched's scheduler
    # (jaxsched.integrations.vllm), or None with the reason in plugin_refusal.
    plugin_command: str | None = None
    plugin_refusal: str | None = None

    @property
    def command(self) -> str:
        env = " ".join(f"{k}={v}" for k, v in self.env.items())
        parts = []
        for k, v in self.flags.items():
            parts.append(k if v is True else f"{k} {v}")
        if self.server == "vllm":
            cmd = "vllm serve MODEL " + " ".join(parts)
        else:
            cmd = "python -m sglang.launch_server --model-path MODEL " + " ".join(parts)
        return (env + " " + cmd).strip()

    def to_json(self) -> dict:
        out = {"server": self.server, "policy": self.policy, "flags": self.flags,
               "env": self.env, "notes": self.notes, "command": self.command}
        if self.server == "vllm":
            out.update(plugin_command=self.plugin_command, plugin_refusal=self.plugin_refusal)
        return out


PLUGIN_SCHEDULER = "jaxsched.integrations.vllm.JaxschedScheduler"
"""vLLM's ``--scheduler-cls`` for jaxsched policies (:mod:`jaxsched.integrations.vllm`)."""


def plugin_command(doc: PolicyFile, policy_path: str = "policy.json",
                   block_size: int | None = None) -> tuple[str | None, str | None]:
    """``(command, None)``: the ``vllm serve`` line that runs the policy file through the
    jaxsched scheduler (its system as vLLM flags, ``--scheduler-cls`` and
    ``--additional-config``), or ``(None, reason)`` when the plugin would refuse it (the
    checks of :func:`jaxsched.integrations.vllm.plugin.load_setup`)."""
    s, pol = doc.system, doc.policy
    bs = int(block_size or s.block_size)
    if bs == 1:
        return None, ("system.block_size = 1 (token memory): vLLM allocates blocks; tune with "
                      "[system] block_size = 16 (GPU) or 32 (CPU) to run the policy itself")
    blocks = int(float(s.capacity) // bs)
    p = dict(pol.params)
    try:
        policy = get_policy(pol.name, **pol.options)
        params = make_params(policy, p, s.num_classes)
    except JaxschedError as err:
        return None, str(err)
    tokens = 2048  # vLLM's default, unless the policy sets its token budget
    if policy.server_flags is not None:
        target = ServerTarget(server="vllm", max_batch=int(s.max_batch), seqs_flag="--max-num-seqs")
        tokens = int(policy.server_flags(target, p).flags.get("--max-num-batched-tokens", tokens))
    engine = EngineSettings(num_blocks=blocks, block_size=bs, max_num_seqs=int(s.max_batch),
                            max_num_batched_tokens=tokens)
    if policy.serve_check is not None:
        why = policy.serve_check("vllm", param_values(policy, params), engine.as_dict())
        if why:
            return None, why
    config = json.dumps({"jaxsched": {"policy": str(policy_path)}})
    # vLLM's block pool keeps one block as its null block: blocks + 1 to hold ``blocks``
    cmd = (f"vllm serve MODEL --block-size {bs} --num-gpu-blocks-override {blocks + 1} "
           f"--max-num-seqs {int(s.max_batch)} --max-num-batched-tokens {tokens} "
           f"--no-enable-prefix-caching --scheduler-cls {PLUGIN_SCHEDULER} "
           f"--additional-config '{config}'")
    return cmd, None


def server_config(doc: PolicyFile, server: str, policy_path: str = "policy.json") -> ServerConfig:
    """The nearest ``server`` (vllm | sglang) flags and environment for a policy file, with a
    note for every tuned parameter (or model setting) the server cannot express. For vLLM
    also the command line that runs the policy itself (:func:`plugin_command`, with
    ``policy_path``); a parameter its flags cannot express is then noted as run by it."""
    if server not in SERVERS:
        raise JaxschedError(f"--to {server!r}: expected one of {', '.join(SERVERS)}")
    vllm = server == "vllm"
    plugin, refusal = plugin_command(doc, policy_path) if vllm else (None, None)
    s, pol = doc.system, doc.policy
    p = dict(pol.params)
    flags: dict[str, Any] = {}
    env: dict[str, str] = {}
    notes: list[str] = []
    seqs_flag = "--max-num-seqs" if vllm else "--max-running-requests"

    # The system the policy was tuned for.
    cap = int(s.capacity)
    if vllm and s.block_size > 1:  # tuned in blocks: the same blocks, floor(C / b) of them
        flags["--block-size"] = int(s.block_size)
        flags["--num-gpu-blocks-override"] = cap // int(s.block_size) + 1
        notes.append(f"capacity C = {cap} KV tokens as {cap // int(s.block_size)} blocks of "
                     f"{s.block_size}, plus vLLM's null block (tuned for "
                     f"{s.hardware or 'the configured system'})")
    elif vllm:
        flags["--block-size"] = 16
        flags["--num-gpu-blocks-override"] = math.ceil(cap / 16) + 1
        notes.append(f"capacity C = {cap} KV tokens as 16-token blocks, plus vLLM's null block "
                     f"(tuned for "
                     f"{s.hardware or 'the configured system'})")
    else:
        flags["--max-total-tokens"] = cap
        notes.append(f"capacity C = {cap} KV tokens (tuned for {s.hardware or 'the configured system'})")
    flags[seqs_flag] = int(s.max_batch)
    flags["--scheduling-policy" if vllm else "--schedule-policy"] = "fcfs"
    if s.restart_on_evict:
        notes.append(f"restart_on_evict: {server} keeps generated tokens on preemption "
                     "(recompute); the papers' restart-from-scratch model cannot be selected")

    def no_counterpart(name: str, what: str):
        val = p.get(name)
        shown = ", ".join(fmt(x) for x in val) if isinstance(val, list) else fmt(val) if val is not None else "?"
        if plugin is not None:
            notes.append(f"{name} = {shown}: {what}; vllm's flags cannot express it, the "
                         f"--scheduler-cls line runs it")
        else:
            notes.append(f"{name} = {shown}: {what}; {server} cannot express it")

    name = pol.name
    try:
        policy = get_policy(pol.name, **pol.options)
    except JaxschedError:
        policy = None
    hints = ServerHints()
    if policy is not None and policy.server_flags is not None:
        target = ServerTarget(server=server, max_batch=int(s.max_batch), seqs_flag=seqs_flag,
                              classes=tuple(doc.workload.config.get("classes") or ()))
        hints = policy.server_flags(target, p)
    flags.update(hints.flags)
    env.update(hints.env)
    for note in hints.notes:
        if isinstance(note, Unexpressed):
            no_counterpart(note.param, note.what)
        else:
            notes.append(note)
    handled = hints.handled
    for k in p:
        if k not in handled:
            spec = policy.params.get(k) if policy is not None else None
            no_counterpart(k, spec.doc.split(";")[0] if spec is not None and spec.doc else f"{name} parameter")
    return ServerConfig(server=server, policy=name, flags=flags, env=env, notes=notes,
                        plugin_command=plugin, plugin_refusal=refusal)
