"""The outbox: an event is written by the same single-document update as the change it reports.

A carve's pending events live on its own document, in the array ``outbox``. The update that
changes a carve's state (a conditional ``find_one_and_update`` or ``update_one``, or the
insert of a new carve) also pushes the event, so the change and its event are one atomic
write on any MongoDB, with no transaction: either both happened or neither did. The event's
id is drawn then and stored with it, so however often it is published later, it keeps that
id, and because only the one update that wins a transition writes an event, the same
transition never gets two ids.

The relay (``shared.events.relay``) publishes pending events and then pulls them out of the
array. A process that dies in between leaves them there, and any relay's sweep publishes them
later: at least once, never lost.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from datetime import datetime
from typing import Any, Protocol, TypedDict

from shared.events.types import EventType
from shared.failpoints import failpoint

FIELD = "outbox"  # the carve document's array of pending events
CLAIM = "outbox_claim"  # until when a relay's sweep holds the carve's pending events


class OutboxEntry(TypedDict):
    id: str  # the CloudEvent id, fixed when the change is written
    type: str  # an EventType value
    time: datetime  # when the change happened
    data: dict[str, Any]  # the event's public data (``carve_summary`` and what the type adds)


def event_entry(event_type: EventType, data: Mapping[str, Any], now: datetime) -> OutboxEntry:
    """A new pending event, to be written with the change it reports (``push_event``)."""
    return {"id": str(uuid.uuid4()), "type": event_type.value, "time": now, "data": dict(data)}


def push_event(update: Mapping[str, Any], entry: OutboxEntry) -> dict[str, Any]:
    """``update`` (a MongoDB update document) that also appends ``entry`` to the outbox."""
    merged = dict(update)
    merged["$push"] = {**dict(update.get("$push", {})), FIELD: entry}
    return merged


class Notifier(Protocol):
    """Who publishes pending events (``shared.events.relay.Relay``): told after each change."""

    def kick(self, carve_id: str) -> None: ...


def announce(events: Notifier | None, carve_id: str) -> None:
    """After a change with an event is written: the failpoint tests kill a process at, then
    the relay told (an event nobody is told of goes out with the next sweep)."""
    failpoint("events.after_change")
    if events is not None:
        events.kick(carve_id)
