"""``python -m parity``: the ``parity`` command line."""

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
