"""``python -m clients.carvectl``: the same as the ``carvectl`` console script."""

import sys

from clients.carvectl.cli import main

sys.exit(main())
