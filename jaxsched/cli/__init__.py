"""Command-line interface: thin commands that parse, call the API and print.

Every command module registers itself on ``app`` (or a sub-app) when imported below. Whatever
goes wrong ends in one line on stderr and a conventional exit code:

* a usage error (unknown command or option, missing or malformed argument): exit 2;
* a user error (:class:`jaxsched.errors.JaxschedError`: a bad config, file or value): exit 2;
* Ctrl-C or SIGTERM, at any point, compilation included: exit 130 or 143
  (:mod:`jaxsched.cli.signals`).
"""

from __future__ import annotations

import importlib
import sys

from jaxsched.cli import signals
from jaxsched.cli.app import app, bench_app, build_command
from jaxsched.errors import JaxschedError

__all__ = ["app", "bench_app", "main", "one_line"]

try:  # typer >= 0.22 bundles its own click and raises that copy's exceptions
    from typer._click import exceptions as _click_exceptions
except ImportError:  # older typer: click itself
    from click import exceptions as _click_exceptions

MAX_MESSAGE = 300  # characters of a message shown; longer ones are cut


def one_line(text: str, limit: int = MAX_MESSAGE) -> str:
    """``text`` on one line (newlines folded), cut to ``limit`` characters."""
    flat = " ".join(str(text).split())
    return flat if len(flat) <= limit else flat[:limit - 1] + "…"


COMMAND_MODULES = ("bench", "catalog", "reproduce", "serve", "simulate", "theory", "tune")
"""The modules of this package that register commands on ``app`` when imported, in the
order of ``jaxsched --help``; a new command module is one entry here (the other modules are
helpers: app, signals, checks, sanity, tables)."""


def _register_commands() -> None:
    """Import every command module (each registers its commands)."""
    for name in COMMAND_MODULES:
        importlib.import_module(f"{__name__}.{name}")


def _usage_line(exc) -> str:
    """One line for a click/typer usage error, naming the command it belongs to."""
    ctx = getattr(exc, "ctx", None)
    where = f"{ctx.command_path}: " if ctx is not None and ctx.command_path else ""
    hint = "" if ctx is None else f" (see {ctx.command_path} --help)"
    return one_line(f"error: {where}{exc.format_message()}{hint}")


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``jaxsched`` script; returns the exit code."""
    with signals.handle_signals() as sig:
        try:
            _register_commands()
            code = _run(argv)
        except KeyboardInterrupt:  # a signal while the command modules import
            signals.exit_now(sig.received[0] if sig.received else 2)
        if sig.received:  # typer turned the interrupt into Exit(130), whichever the signal
            signals.exit_now(sig.received[0])
    return code


def _run(argv: list[str] | None) -> int:
    try:
        code = build_command().main(args=argv, prog_name="jaxsched", standalone_mode=False)
    except JaxschedError as err:
        print(one_line(f"error: {err}", 500), file=sys.stderr)
        return 2
    except signals.Interrupted as exc:
        signals.exit_now(exc.signum)
    except KeyboardInterrupt:
        signals.exit_now(2)  # SIGINT
    except _click_exceptions.NoArgsIsHelpError as exc:  # bare `jaxsched` or `jaxsched bench`
        print(exc.format_message())
        return 0
    except _click_exceptions.UsageError as exc:
        print(_usage_line(exc), file=sys.stderr)
        return 2
    except _click_exceptions.ClickException as exc:
        print(one_line(f"error: {exc.format_message()}"), file=sys.stderr)
        return exc.exit_code
    except BrokenPipeError:  # `jaxsched ... | head`
        return 1
    except EOFError:
        print("error: aborted (end of input)", file=sys.stderr)
        return 1
    return code if isinstance(code, int) else 0
