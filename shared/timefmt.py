"""One way to write a time: RFC 3339 in UTC with ``Z`` (the API, the audit log, the console).

Seconds, plus milliseconds when the time has them (MongoDB keeps milliseconds): never
``+00:00``, never microseconds. A naive datetime is UTC (how PyMongo returns them).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated

from pydantic import PlainSerializer


def rfc3339(when: datetime) -> str:
    """``2026-11-27T10:00:00Z``, or ``2026-11-27T10:00:00.911Z`` with milliseconds."""
    when = when.replace(tzinfo=UTC) if when.tzinfo is None else when.astimezone(UTC)
    text = when.replace(microsecond=0, tzinfo=None).isoformat()
    millis = when.microsecond // 1000
    return f"{text}.{millis:03d}Z" if millis else f"{text}Z"


def rfc3339_or_none(when: datetime | None) -> str | None:
    return None if when is None else rfc3339(when)


def restated(text: str | None) -> str | None:
    """A time stored as ISO 8601 text (manifests written before this module), as rfc3339()."""
    if not text:
        return text
    try:
        return rfc3339(datetime.fromisoformat(text))
    except ValueError:
        return text


# A datetime field of a pydantic model that is written as rfc3339() in JSON.
UtcTime = Annotated[datetime, PlainSerializer(rfc3339, return_type=str, when_used="json")]
