"""The kinds of carve event: one line each (the routing key on the exchange is the value)."""

from __future__ import annotations

from enum import StrEnum


class EventType(StrEnum):
    STARTED = "carve.started"  # the ingest admitted a new carve
    COMPLETED = "carve.completed"  # every block stored and hashed: downloadable
    FAILED = "carve.failed"  # idle with blocks missing, or corrupt
    EXPIRED = "carve.expired"  # past retention: bytes deleted
    DELETED = "carve.deleted"  # deleted on purpose by an administrator
    TRIAGED = "carve.triaged"  # scanned on arrival (rules and hash sets)
    HOLD_PLACED = "carve.hold.placed"  # a legal hold keeps it from every deletion path
    HOLD_RELEASED = "carve.hold.released"
