"""``python -m runtime``: the conveyor command line."""

import sys

from runtime.cli import main

if __name__ == "__main__":  # worker processes import this module too; they must not run it
    sys.exit(main())
