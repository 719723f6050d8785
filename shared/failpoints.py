"""Failpoints: named places where a test can make a process die, to prove nothing is lost.

``CARVE_FAILPOINTS=events.after_change`` (comma list) makes the process exit at once, with no
cleanup, when it reaches ``failpoint("events.after_change")``: the moment between a carve's
state change in MongoDB and the publish of its event. Unset (always, outside tests), a
failpoint is one set lookup.
"""

from __future__ import annotations

import logging
import os

log = logging.getLogger(__name__)

EXIT_CODE = 86  # so a test can tell a failpoint's exit from a crash
_ARMED = frozenset(filter(None, os.environ.get("CARVE_FAILPOINTS", "").split(",")))


def failpoint(name: str) -> None:
    """Exit the process here, without cleanup, if ``name`` is armed."""
    if name in _ARMED:
        log.critical("failpoint %s: exiting", name)
        logging.shutdown()
        os._exit(EXIT_CODE)
