"""``python -m retino_core``: the command line (retino_core/cli)."""

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
