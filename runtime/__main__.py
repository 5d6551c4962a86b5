"""``python -m runtime``: the conveyor command line."""

import sys

from runtime.cli import main

sys.exit(main())
