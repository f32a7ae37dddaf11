"""``python -m jaxsched`` runs the CLI."""

import sys

from jaxsched.cli import main

sys.exit(main())
