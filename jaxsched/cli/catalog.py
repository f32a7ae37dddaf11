"""``jaxsched policies [NAME]`` and ``jaxsched configs``: what there is to run, and with what.

The policy listing is read from the registry (:mod:`jaxsched.policies`): each parameter's
default, feasible range and meaning come from its :class:`~jaxsched.policies.base.Param`, the
paper from the factory's or its module's docstring. The config listing reads the shipped
``configs/`` (:data:`jaxsched.config.CONFIG_DIR`), which also works by bare name
(``jaxsched simulate flow-control``).

``python -m jaxsched.cli.catalog > docs/config-reference.md`` writes the config reference
(:func:`config_reference`): the library's renderer, given the policy catalog and the tuners'
``[tune]`` schema (the CLI may import ``tuning``; the library may not).
"""

from __future__ import annotations

import inspect
import json
import math
import re
import sys
from typing import Optional

import typer

from jaxsched.cli.app import app

__all__ = ["policies", "configs", "policy_catalog", "config_catalog", "config_reference"]

_CITATION = re.compile(r"\(([^()]*(?:\b(?:19|20)\d\d\b|arXiv \d{4}\.\d+)[^()]*)\)")


def _paper(factory) -> str:
    """The citation in parentheses of the factory's first paragraph, else of its module's
    first line; ``-`` for the baselines that cite none."""
    doc = inspect.getdoc(factory) or ""
    first = doc.split("\n\n", 1)[0]
    module_doc = (inspect.getdoc(sys.modules[factory.__module__]) or "").split("\n", 1)[0]
    for text in (first, module_doc):
        m = _CITATION.search(text)
        if m:
            return " ".join(m.group(1).split())
    m = re.match(r"([A-Z][^,.]*\b(?:19|20)\d\d)\b", first)
    return m.group(1) if m else "-"


def policy_catalog(name: str | None = None) -> list[dict]:
    """One dict per registered policy (or just ``name``): summary, paper, static options with
    defaults, and the tunable parameters with default, range and meaning."""
    from jaxsched.policies import get_policy, list_policies, policy_options
    from jaxsched.policies.registry import _factory

    names = list_policies() if name is None else [name]
    out = []
    for n in names:
        factory = _factory(n)  # an unknown name is one line naming the known ones
        policy = get_policy(n)
        doc = inspect.getdoc(factory) or ""
        params = []
        for pname, spec in policy.params.items():
            params.append({
                "name": pname, "default": spec.default, "low": spec.low, "high": spec.high,
                "integer": spec.integer, "log": spec.log, "per_class": spec.per_class,
                "doc": spec.doc,
            })
        out.append({"name": n, "summary": " ".join(doc.split("\n\n", 1)[0].split()),
                    "paper": _paper(factory), "options": policy_options(n), "params": params,
                    "doc": doc})
    return out


def _say(console, text: str, indent: int = 2) -> None:
    """Plain text wrapped to the terminal with a hanging indent (no markup)."""
    import textwrap

    width = max(console.width, 40)
    pad = " " * indent
    console.print(textwrap.fill(" ".join(text.split()), width, initial_indent=pad,
                                subsequent_indent=pad + "  "), markup=False, highlight=False)


def _default(v) -> str:
    if isinstance(v, float) and math.isfinite(v) and v == int(v) and abs(v) >= 1e6:
        return f"{v:.0e}"
    return str(v)


@app.command()
def policies(
    name: Optional[str] = typer.Argument(None, help="a policy: its parameters and docstring"),
    as_json: bool = typer.Option(False, "--json", help="print exactly one JSON object on stdout"),
):
    """The registered policies with their parameters (default, range), options and paper."""
    from rich.console import Console
    from rich.markup import escape

    from jaxsched.tools.config_reference import param_range

    cat = policy_catalog(name)
    if as_json:
        typer.echo(json.dumps(cat if name is None else cat[0], default=str))
        return
    console = Console()
    for p in cat:
        console.print(f"[bold]{p['name']}[/]  [dim]{escape(p['paper'])}[/]", highlight=False)
        _say(console, p["summary"])
        if p["options"]:
            opts = ", ".join(f"{k}={v!r}" for k, v in p["options"].items())
            _say(console, f"options (static [policy] keys): {opts}")
        for q in p["params"]:
            _say(console, f"{q['name']} = {_default(q['default'])}  {param_range(q)}")
            if name is not None:
                _say(console, q["doc"], indent=6)
        console.print()
        if name is not None:
            console.print(p["doc"], markup=False, highlight=False, soft_wrap=True)
    if name is None:
        _say(console, "jaxsched policies NAME: one policy in full. Set parameters and options "
                      "in a config's [policy] table or with --set policy.KEY=VALUE.", indent=0)


def _description(text: str) -> str:
    """The config's leading comment, first sentence."""
    lines = []
    for line in text.splitlines():
        if not line.startswith("#"):
            break
        lines.append(line.lstrip("#").strip())
    joined = " ".join(lines)
    cut = re.split(r"(?<!Sec\.)(?<!al\.)(?<=[.:])\s", joined, maxsplit=1)[0] if joined else ""
    return cut.rstrip(":")


def config_catalog() -> list[dict]:
    """One dict per shipped config: name, path, policy, workload kind, capacity, description."""
    from jaxsched.config import CONFIG_DIR, load_config, read_text
    from jaxsched.errors import JaxschedError

    out = []
    for path in sorted(CONFIG_DIR.glob("*.toml")):
        entry = {"name": path.stem, "path": str(path),
                 "description": _description(read_text(path))}
        try:
            cfg = load_config(path)
            entry.update(policy=cfg.policy.name, workload=cfg.workload.kind,
                         capacity=cfg.capacity, horizon=cfg.workload.horizon)
        except JaxschedError as err:  # pragma: no cover - the shipped configs are tested
            entry["error"] = str(err)
        out.append(entry)
    return out


@app.command()
def configs(
    as_json: bool = typer.Option(False, "--json", help="print exactly one JSON object on stdout"),
):
    """The configs shipped with jaxsched; run one by name: jaxsched simulate NAME."""
    from rich.console import Console

    from jaxsched.config import CONFIG_DIR

    cat = config_catalog()
    if as_json:
        typer.echo(json.dumps({"folder": str(CONFIG_DIR), "configs": cat}))
        return
    console = Console()
    for c in cat:
        facts = (f"{c.get('policy', '?')}, {c.get('workload', '?')} workload, "
                 f"C = {c.get('capacity', float('nan')):g} tokens, horizon {c.get('horizon', '?')}")
        console.print(f"[bold]{c['name']}[/]", highlight=False)
        _say(console, facts)
        _say(console, c["description"])
    _say(console, f"in {CONFIG_DIR}; run one by name, e.g. jaxsched simulate "
                  f"{cat[0]['name'] if cat else 'NAME'}; every key: docs/config-reference.md",
         indent=0)


def config_reference() -> str:
    """``docs/config-reference.md``: every config key, the ``[tune]`` table and the policies'
    parameters (:func:`jaxsched.tools.config_reference.render`)."""
    from jaxsched.tools.config_reference import TuneSchema, render
    from tuning import settings as T

    tune = TuneSchema(T.TuneSettings, (T.SpaceEntry, T.ConstraintSettings, T.ParetoSettings))
    return render(policy_catalog(), tune)


if __name__ == "__main__":  # python -m jaxsched.cli.catalog > docs/config-reference.md
    print(config_reference(), end="")
