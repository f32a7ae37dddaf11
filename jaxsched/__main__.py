"""``python -m jaxsched`` and the ``jaxsched`` console script.

Signals are handled before anything heavy is imported (:func:`jaxsched.errors.exit_on_signals`);
the CLI then installs its full handlers around the command.
"""

import sys

from jaxsched.errors import exit_on_signals

__all__ = ["main"]


def main() -> int:
    exit_on_signals()
    from jaxsched.cli import main as cli_main  # typer and rich: after the handlers

    return cli_main()


if __name__ == "__main__":
    sys.exit(main())
