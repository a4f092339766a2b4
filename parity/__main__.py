"""``python -m parity``: the ``parity`` command line."""

import sys

from .cli import main

sys.exit(main())
