"""The typer application and its sub-apps; command modules register on them."""

from __future__ import annotations

import typer

__all__ = ["app", "bench_app", "build_command"]

_CONTEXT = {"help_option_names": ["-h", "--help"]}

app = typer.Typer(
    name="jaxsched",
    help="Design, tune and ship KV-memory scheduling policies for LLM inference.",
    no_args_is_help=True,
    add_completion=True,
    pretty_exceptions_enable=False,
    context_settings=_CONTEXT,
)
bench_app = typer.Typer(help="Benchmarks that print ratios measured in one run.",
                        no_args_is_help=True, context_settings=_CONTEXT)
app.add_typer(bench_app, name="bench")


def _version(value: bool) -> None:
    if value:
        from jaxsched import __version__

        typer.echo(f"jaxsched {__version__}")
        raise typer.Exit(0)


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                 help="print the version and exit"),
) -> None:
    """Design, tune and ship KV-memory scheduling policies for LLM inference."""


# How an option's value is shown in --help: click's upper-case names, not typer's <type>.
_METAVARS = {"int": "INTEGER", "float": "FLOAT", "str": "TEXT", "path": "PATH", "bool": "BOOLEAN"}
_NAMED_METAVARS = {"--set": "KEY=VALUE", "--out": "PATH", "--plot": "FILE.png",
                   "--storage": "URL|FILE", "--max-memory": "BYTES"}


def _metavar(param) -> str | None:
    if getattr(param, "is_flag", False):
        return ""  # a flag takes no value
    for opt in param.opts:
        if opt in _NAMED_METAVARS:
            return _NAMED_METAVARS[opt]
    try:
        label = param.bare_type()
    except Exception:  # a type typer describes differently (choices, tuples): keep its own
        return None
    if label.startswith("list[") and label.endswith("]"):
        label = label[5:-1]
    return _METAVARS.get(label.lower())


def build_command():
    """The click command behind ``app``, with readable metavars on every option."""
    import typer.main

    command = typer.main.get_command(app)
    todo = [command]
    while todo:
        cmd = todo.pop()
        todo.extend(getattr(cmd, "commands", {}).values())
        for param in cmd.params:
            if getattr(param, "param_type_name", "") == "option" and param.metavar is None:
                param.metavar = _metavar(param)
        cmd.get_help_option = _flag_help_option(cmd.get_help_option)
    return command


def _flag_help_option(make):
    """``-h/--help`` is built per context; show it as the flag it is."""
    def get_help_option(ctx):
        option = make(ctx)
        if option is not None:
            option.metavar = ""
        return option
    return get_help_option
