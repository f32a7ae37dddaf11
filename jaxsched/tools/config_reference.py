"""The config reference (``docs/config-reference.md``), generated from the pydantic schemas.

Every key of every table, with its type, default, constraint and description, read from the
models of :mod:`jaxsched.config` and :mod:`tuning.settings` (the ``[tune]`` table), and the
policies' parameters from the registry. Regenerate after changing a schema::

    python -m jaxsched.tools.config_reference > docs/config-reference.md

``tests/test_cli_catalog.py`` fails while the committed file differs from the output.
"""

from __future__ import annotations

import inspect
import typing

from pydantic import BaseModel

__all__ = ["render", "main"]


def _type(annotation) -> str:
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin is typing.Literal:
        return " \\| ".join(f'`"{a}"`' if isinstance(a, str) else f"`{a}`" for a in args)
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)):
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


def render() -> str:
    """The whole reference as markdown."""
    from jaxsched import config as C
    from jaxsched.cli.catalog import _range, policy_catalog

    parts = [
        "# Config reference",
        "",
        "Generated from the pydantic schemas by `python -m jaxsched.tools.config_reference` "
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
        ("[workload.bursty]", C.BurstyConfig, "workload.bursty.", _doc(C.BurstyConfig)),
        ("[policy]", C.PolicyConfig, "policy.",
         "`name` picks a registered policy; every other key is one of its options or "
         "parameters (listed below and by `jaxsched policies NAME`)."),
    ]
    for title, model, prefix, text in sections:
        parts += [f"## {title}", "", text, "", *_table(model, prefix), ""]
    try:
        from tuning import settings as T
    except ImportError:  # pragma: no cover - the tuning package ships with jaxsched
        T = None
    if T is not None:
        parts += ["## [tune]", "", _doc(T.TuneSettings) or
                  "Settings of `jaxsched tune` (read by the tuners).", "",
                  *_table(T.TuneSettings, "tune."), ""]
        for sub in ("SpaceEntry", "ConstraintSettings", "ParetoSettings"):
            model = getattr(T, sub, None)
            if model is not None:
                parts += [f"### {sub}", "", _doc(model), "", *_table(model, ""), ""]
    parts += ["## Profiles", "",
              "`system.profile` names a TOML file (relative to the config, or a shipped "
              "`configs/hardware/` name) of one of these two kinds.", ""]
    for model in (C.HardwareProfile, C.SystemProfile):
        parts += [f"### {model.__name__}", "", _doc(model), "", *_table(model, ""), ""]
    parts += ["## Policy parameters", "",
              "Keys of `[policy]` by policy: static options (changing one recompiles) and "
              "tunable parameters (traced: no recompilation between values).", ""]
    for p in policy_catalog():
        parts += [f"### `{p['name']}`", "", f"{p['summary']} Paper: {p['paper']}.", ""]
        if p["options"]:
            opts = ", ".join(f"`{k} = {v!r}`" for k, v in p["options"].items())
            parts += [f"Options: {opts}.", ""]
        parts += ["| parameter | default | range | meaning |", "|---|---|---|---|"]
        for q in p["params"]:
            doc = q["doc"].replace("|", "\\|")
            parts.append(f"| `{q['name']}` | `{q['default']}` | {_range(q)} | {doc} |")
        parts.append("")
    return "\n".join(parts).rstrip() + "\n"


def main() -> None:
    print(render(), end="")


if __name__ == "__main__":
    main()
