"""The config reference (``docs/config-reference.md``), rendered from the pydantic schemas.

Every key of every table, with its type, default, constraint and description, read from the
models of :mod:`jaxsched.config`, and from what the caller hands in: the policies' parameters
(:func:`jaxsched.cli.catalog.policy_catalog`) and the tuners' ``[tune]`` schema (the library
never imports ``tuning``; the CLI, which may, passes its models). Regenerate after changing a
schema::

    python -m jaxsched.cli.catalog > docs/config-reference.md

``tests/test_cli_catalog.py`` fails while the committed file differs from the output.
"""

from __future__ import annotations

import inspect
import math
import types
import typing
from typing import Sequence

from pydantic import BaseModel

from jaxsched import config as C
from jaxsched.workloads.registry import KINDS

__all__ = ["TuneSchema", "param_range", "render"]


class TuneSchema(typing.NamedTuple):
    """The ``[tune]`` table's model and the models of its sub-tables, by the tuners."""

    settings: type[BaseModel]
    parts: Sequence[type[BaseModel]] = ()


def _type(annotation) -> str:
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin is typing.Literal:
        return " \\| ".join(f'`"{a}"`' if isinstance(a, str) else f"`{a}`" for a in args)
    if origin in (typing.Union, getattr(types, "UnionType", None)):
        parts = [_type(a) for a in args if a is not type(None)]
        return " or ".join(parts) + (" (optional)" if type(None) in args else "")
    if origin in (list, tuple):
        return f"list of {_type(args[0])}" if args else "list"
    if origin is dict:
        return f"table of {_type(args[1])}" if len(args) == 2 else "table"
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return f"table ({annotation.__name__})"
    return getattr(annotation, "__name__", str(annotation)).replace("NoneType", "none")


def _constraint(field) -> str:
    out = []
    for m in field.metadata:
        for attr, sym in (("gt", ">"), ("ge", ">="), ("lt", "<"), ("le", "<=")):
            v = getattr(m, attr, None)
            if v is not None:
                out.append(f"{sym} {v}")
    return ", ".join(out)


def _default(field) -> str:
    if field.is_required():
        return "required"
    if field.default_factory is not None:
        value = field.default_factory()
        return "empty" if not value else f"`{value!r}`"
    value = field.default
    if value is None:
        return "unset"
    if isinstance(value, BaseModel):
        return "see below"
    if isinstance(value, bool):
        return f"`{str(value).lower()}`"
    return f"`{value!r}`" if isinstance(value, str) else f"`{value}`"


def _table(model: type[BaseModel], prefix: str) -> list[str]:
    lines = ["| key | type | default | constraint | meaning |", "|---|---|---|---|---|"]
    for name, field in model.model_fields.items():
        if field.exclude:
            continue
        desc = (field.description or "").replace("|", "\\|")
        lines.append(f"| `{prefix}{name}` | {_type(field.annotation)} | {_default(field)} | "
                     f"{_constraint(field)} | {desc} |")
    return lines


def _doc(model) -> str:
    doc = inspect.getdoc(model) or ""
    if doc.startswith(("Usage docs:", "!!!")) or model.__doc__ is None:
        return ""
    return " ".join(doc.split("\n\n", 1)[0].split())


def _bound(x) -> str:
    if x is None:
        return "inf"
    x = float(x)
    if x >= 2**20 and x == 2 ** round(math.log2(x)):
        return f"2^{round(math.log2(x))}"
    return f"{x:.6g}"


def param_range(p: dict) -> str:
    """``[low, high]`` of a policy parameter (a ``policy_catalog`` entry) and its kind."""
    lo = "-inf" if p["low"] is None else _bound(p["low"])
    kind = ", integer" if p["integer"] else ""
    kind += ", per class" if p["per_class"] else ""
    kind += ", log scale" if p["log"] else ""
    return f"[{lo}, {_bound(p['high'])}]{kind}"


def render(policies: Sequence[dict], tune: TuneSchema | None = None) -> str:
    """The whole reference as markdown: the config's tables, ``tune``'s (when given), the
    profiles and ``policies`` (``policy_catalog()`` entries)."""
    parts = [
        "# Config reference",
        "",
        "Generated from the pydantic schemas by `python -m jaxsched.cli.catalog` "
        "(do not edit by hand). A config is a TOML file with the tables below; "
        "`--set section.key=value` overrides any key from the command line, e.g. "
        "`--set workload.classes.0.rate=2`. Unknown keys, wrong types and values out of "
        "range are refused with one line naming the file and the key. Shipped configs: "
        "`jaxsched configs`; a shipped config runs by name (`jaxsched simulate flow-control`).",
        "",
    ]
    sections = [
        ("[system]", C.SystemConfig, "system.",
         "The machine: KV capacity `C` (tokens) and iteration time "
         "`tau = d0 + d1 (P + D) + d2 R`, given directly or by a `profile` (below). Either "
         "`capacity` or `profile` is required; values given beside a profile override it."),
        ("[workload]", C.WorkloadConfig, "workload.",
         "The requests: `kind` picks the arrival process; `horizon` iterations per rollout, "
         "of which the first `warmup` do not count in the metrics."),
        ("[[workload.classes]]", C.ClassConfig, "workload.classes.N.", _doc(C.ClassConfig)),
        *((f"[workload.{key}]", model, f"workload.{key}.", _doc(model))
          for key, model, _ in (k.config_table for k in KINDS.values() if k.config_table)),
        ("[policy]", C.PolicyConfig, "policy.",
         "`name` picks a registered policy; every other key is one of its options or "
         "parameters (listed below and by `jaxsched policies NAME`)."),
    ]
    for title, model, prefix, text in sections:
        parts += [f"## {title}", "", text, "", *_table(model, prefix), ""]
    if tune is not None:
        parts += ["## [tune]", "", _doc(tune.settings) or
                  "Settings of `jaxsched tune` (read by the tuners).", "",
                  *_table(tune.settings, "tune."), ""]
        for model in tune.parts:
            parts += [f"### {model.__name__}", "", _doc(model), "", *_table(model, ""), ""]
    parts += ["## Profiles", "",
              "`system.profile` names a TOML file (relative to the config, or a shipped "
              "`configs/hardware/` name) of one of these two kinds.", ""]
    for model in (C.HardwareProfile, C.SystemProfile):
        parts += [f"### {model.__name__}", "", _doc(model), "", *_table(model, ""), ""]
    parts += ["## Policy parameters", "",
              "Keys of `[policy]` by policy: static options (changing one recompiles) and "
              "tunable parameters (traced: no recompilation between values).", ""]
    for p in policies:
        parts += [f"### `{p['name']}`", "", f"{p['summary']} Paper: {p['paper']}.", ""]
        if p["options"]:
            opts = ", ".join(f"`{k} = {v!r}`" for k, v in p["options"].items())
            parts += [f"Options: {opts}.", ""]
        parts += ["| parameter | default | range | meaning |", "|---|---|---|---|"]
        for q in p["params"]:
            doc = q["doc"].replace("|", "\\|")
            parts.append(f"| `{q['name']}` | `{q['default']}` | {param_range(q)} | {doc} |")
        parts.append("")
    return "\n".join(parts).rstrip() + "\n"
