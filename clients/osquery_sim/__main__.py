"""``python -m clients.osquery_sim``: the same as the ``carve-osquery-sim`` console script."""

import sys

from clients.osquery_sim.cli import main

sys.exit(main())
