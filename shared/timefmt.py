"""One way to write a time: RFC 3339, UTC, ``Z``, milliseconds only when there are some."""

from __future__ import annotations

from datetime import UTC, datetime


def rfc3339(when: datetime) -> str:
    """``2026-12-06T18:32:19Z`` or ``2026-12-06T18:32:19.376Z`` (MongoDB keeps milliseconds)."""
    when = when.astimezone(UTC) if when.tzinfo else when.replace(tzinfo=UTC)
    text = when.strftime("%Y-%m-%dT%H:%M:%S")
    millis = when.microsecond // 1000
    return f"{text}.{millis:03d}Z" if millis else f"{text}Z"
