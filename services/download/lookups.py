"""Finding carves by what a responder knows: the request id, the device, a carve id prefix.

``?request_id=`` is the id osquery's live query printed (exact match), ``?device=`` the
device certificate's subject CN (exact) or its SHA-256 fingerprint (64 hex digits), ``?q=``
a prefix of the carve id. Each value is checked before it reaches MongoDB: a prefix becomes
an anchored, escaped regular expression, never a pattern of the caller's.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from shared.errors import InvalidRequest
from shared.mongo import Document

_PREFIX = re.compile(r"[A-Za-z0-9_-]{1,128}")
_FINGERPRINT = re.compile(r"(?:[0-9a-fA-F]{2}:?){31}[0-9a-fA-F]{2}")
MAX_VALUE = 256


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
    if (prefix := query.get("q")) is not None:
        if not _PREFIX.fullmatch(prefix):
            raise InvalidRequest("q must be 1 to 128 characters of [A-Za-z0-9_-]")
        found["_id"] = {"$regex": "^" + re.escape(prefix)}
    return found
