"""Command-line interface: thin commands that parse, call the API and print.

Every command module registers itself on ``app`` (or a sub-app) when imported below. User
errors (:class:`jaxsched.errors.JaxschedError`) end as one line on stderr and exit code 2.
"""

from __future__ import annotations

import sys

from jaxsched.cli.app import app, bench_app
from jaxsched.errors import JaxschedError

__all__ = ["app", "bench_app", "main"]


def _register_commands() -> None:
    """Import every command module of this package (each registers its commands)."""
    import importlib
    import pkgutil

    for mod in pkgutil.iter_modules(__path__):
        if mod.name not in ("app", "tables"):
            importlib.import_module(f"{__name__}.{mod.name}")


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``jaxsched`` script."""
    _register_commands()
    try:
        app(args=argv, standalone_mode=False)
    except JaxschedError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
    except SystemExit as exc:  # typer's own exits (--help)
        return int(exc.code or 0)
    except Exception as exc:  # click usage errors
        import click

        if isinstance(exc, click.exceptions.ClickException):
            exc.show()
            return exc.exit_code
        if isinstance(exc, click.exceptions.Abort):
            print("error: aborted", file=sys.stderr)
            return 1
        raise
    return 0
