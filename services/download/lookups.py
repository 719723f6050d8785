"""The query parameters of the listings, and finding carves by what a responder knows.

``int_param`` and ``time_param`` read a bounded integer and a zoned ISO 8601 time (the
carve listing and the audit trail). The carve filters: the request id, the device, a carve
id prefix.

``?request_id=`` is the id osquery's live query printed (exact match), ``?device=`` the
device certificate's subject CN (exact) or its SHA-256 fingerprint (64 hex digits), ``?q=``
what a responder remembers: a carve id or request id prefix, or part of the host or of a
carved path (``shared.search``). Each value is checked before it reaches MongoDB and becomes
an escaped regular expression, never a pattern of the caller's.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import datetime

from shared.errors import InvalidRequest
from shared.mongo import Document
from shared.search import MAX_QUERY, query_filter

_FINGERPRINT = re.compile(r"(?:[0-9a-fA-F]{2}:?){31}[0-9a-fA-F]{2}")
MAX_VALUE = 256
_DIGITS = re.compile(r"[0-9]{1,9}")


def int_param(query: Mapping[str, str], name: str, default: int, high: int) -> int:
    raw = query.get(name)
    if raw is None:
        return default
    if not _DIGITS.fullmatch(raw) or not 1 <= int(raw) <= high:
        raise InvalidRequest(f"{name} must be an integer from 1 to {high}")
    return int(raw)


def time_param(query: Mapping[str, str], name: str) -> datetime | None:
    """An ISO 8601 time with its zone (``Z`` or an offset), or None when not given."""
    raw = query.get(name)
    if raw is None:
        return None
    try:
        when = datetime.fromisoformat(raw.replace("Z", "+00:00"))
    except ValueError as exc:
        raise InvalidRequest(f"{name} must be an ISO 8601 time") from exc
    if when.tzinfo is None:
        raise InvalidRequest(f"{name} must carry a time zone (e.g. 2026-11-27T00:00:00Z)")
    return when


def _text(query: Mapping[str, str], name: str) -> str | None:
    value = query.get(name)
    if value is None:
        return None
    if not 0 < len(value) <= MAX_VALUE or any(ord(c) < 0x20 for c in value):
        raise InvalidRequest(f"{name} must be 1 to {MAX_VALUE} printable characters")
    return value


def device_filter(device: str) -> Document:
    """Carves of a device: by subject CN, or by certificate fingerprint."""
    if _FINGERPRINT.fullmatch(device):
        return {"device.fingerprint_sha256": device.replace(":", "").lower()}
    return {"device.common_name": device}


def lookup_filters(query: Mapping[str, str]) -> Document:
    """The MongoDB filter for ``request_id``, ``device`` and ``q`` (all optional, ANDed)."""
    found: Document = {}
    if (request_id := _text(query, "request_id")) is not None:
        found["request_id"] = request_id
    if (device := _text(query, "device")) is not None:
        found.update(device_filter(device))
    if (q := query.get("q")) is not None:
        q = q.strip()
        if not 0 < len(q) <= MAX_QUERY or any(ord(c) < 0x20 or ord(c) == 0x7F for c in q):
            raise InvalidRequest(f"q must be 1 to {MAX_QUERY} printable characters")
        found.update(query_filter(q))
    return found
