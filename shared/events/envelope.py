"""Events on the wire: CloudEvents 1.0 in structured JSON mode (read and validated with the
``cloudevents`` package, the spec's own SDK).

The message body is the whole event (``application/cloudevents+json``): ``specversion``,
``id`` (fixed in the outbox), ``source`` (``CARVE_EVENTS_SOURCE``), ``type`` (also the
routing key), ``subject`` (the carve id), ``time`` (RFC 3339, UTC, ``Z``),
``datacontenttype`` and ``data``.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

import orjson
from cloudevents.core.exceptions import BaseCloudEventException
from cloudevents.core.formats.json import JSONFormat

from shared.errors import PoisonMessage
from shared.events.outbox import OutboxEntry
from shared.timefmt import rfc3339

CONTENT_TYPE = "application/cloudevents+json"
MAX_EVENT_BYTES = 64 * 1024  # an event is a summary: anything larger is not one of ours


@dataclass(frozen=True)
class CarveEvent:
    """An event as a consumer reads it."""

    id: str
    type: str
    source: str
    subject: str  # the carve id
    time: datetime
    data: dict[str, Any]
    body: bytes  # the structured JSON as published (what a webhook delivers)


def encode_event(entry: OutboxEntry, carve_id: str, source: str) -> bytes:
    """The structured-mode JSON of an outbox entry about ``carve_id`` (``time`` to the
    millisecond, as stored; ``decode_event`` reads it back through the CloudEvents SDK)."""
    return orjson.dumps(
        {
            "specversion": "1.0",
            "id": entry["id"],
            "source": source,
            "type": entry["type"],
            "subject": carve_id,
            "time": rfc3339(entry["time"]),
            "datacontenttype": "application/json",
            "data": entry["data"],
        }
    )


def decode_event(body: bytes) -> CarveEvent:
    """Parse and validate a published event; PoisonMessage for anything that is not one."""
    if len(body) > MAX_EVENT_BYTES:
        raise PoisonMessage(f"event of {len(body)} bytes")
    try:
        event = JSONFormat().read(None, body)
    except (BaseCloudEventException, ValueError, TypeError) as exc:
        raise PoisonMessage(f"not a CloudEvent: {exc.__class__.__name__}") from exc
    attributes = event.get_attributes()
    data = event.get_data()
    subject = attributes.get("subject")
    if not isinstance(data, dict) or not isinstance(subject, str) or not subject:
        raise PoisonMessage("a carve event has a subject and JSON object data")
    when = attributes.get("time")
    if not isinstance(when, datetime):
        raise PoisonMessage("a carve event has a time")
    return CarveEvent(
        id=str(attributes["id"]),
        type=str(attributes["type"]),
        source=str(attributes["source"]),
        subject=subject,
        time=when,
        data=data,
        body=body,
    )
