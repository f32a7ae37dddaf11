"""What a policy means to an LLM server: the types of the ``Policy.server_flags`` hook.

:func:`jaxsched.export.server_flags.server_config` sets what every policy shares (the KV capacity,
the seats, first-come-first-served order) and then asks the policy for the rest::

    hints = policy.server_flags(target, values)   # ServerTarget, {param: number or list}

A policy's hook (defined in its own module) returns :class:`ServerHints`: the flags and
environment variables that express its parameters on ``target.server`` (``"vllm"`` or
``"sglang"``), its notes in order, and which parameters it accounted for. A parameter the
server cannot express is an :class:`Unexpressed` note (the caller words it, naming the
vLLM plugin's command line when there is one); a parameter no hook handles gets such a note
with the first clause of its ``Param.doc``. A policy without the hook maps to the shared
flags only.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping, Sequence

__all__ = ["ServerTarget", "ServerHints", "Unexpressed", "fmt", "cap_seats"]


@dataclasses.dataclass(frozen=True)
class ServerTarget:
    """The server a policy file is translated for."""

    server: str  # "vllm" or "sglang"
    max_batch: int  # system.max_batch: the seats the policy was tuned with
    seqs_flag: str  # the server's flag for the number of running requests
    classes: Sequence[Mapping[str, Any]] = ()  # the workload's classes (prompt_len, output_len, rate, weight)

    @property
    def vllm(self) -> bool:
        return self.server == "vllm"


@dataclasses.dataclass(frozen=True)
class Unexpressed:
    """A parameter the server's flags cannot express, and what it does."""

    param: str
    what: str


@dataclasses.dataclass
class ServerHints:
    """A policy's translation: flags and environment to set, notes (in order), and the
    parameters accounted for (``handled``; the others get a generic :class:`Unexpressed`)."""

    flags: dict[str, Any] = dataclasses.field(default_factory=dict)
    env: dict[str, str] = dataclasses.field(default_factory=dict)
    notes: list[str | Unexpressed] = dataclasses.field(default_factory=list)
    handled: set[str] = dataclasses.field(default_factory=set)


def fmt(v: float) -> str:
    """A number as a flag or environment value (shortest form: ``4``, ``0.25``)."""
    return f"{v:g}"


def cap_seats(hints: ServerHints, target: ServerTarget, values: Mapping[str, Any],
              name: str) -> None:
    """A seat limit ``values[name]`` (vLLM's ``max_num_seqs``, WAIT's ``batch_limit``) as the
    server's running-request flag, when it is tighter than ``max_batch``."""
    if name not in values:
        return
    if values[name] < target.max_batch:
        hints.flags[target.seqs_flag] = int(values[name])
    hints.handled.add(name)
