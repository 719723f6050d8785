"""What an event says about its carve: the public summary, bounded.

Built from the carve document as the state change wrote it (``carve_summary``), never from
private fields: no node key, session id, token or block data can reach an event, because
none of them is read here. Everything a host controls (member names, the request id is
pattern-checked already, certificate names) is cut to a fixed length and has its control
characters escaped, so an event stays small and inert wherever it is shown.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from shared.carves import CarveDoc, blocks_received
from shared.inert import inert
from shared.manifest import MAX_PATHS
from shared.search import display_host
from shared.timefmt import rfc3339

_TIMES = ("created_at", "completed_at", "failed_at", "expired_at", "deleted_at")


def carve_summary(doc: CarveDoc) -> dict[str, Any]:
    """An event's ``data``: the carve as ``doc`` describes it (``doc`` holds the change)."""
    device = doc.get("device") or None
    manifest = doc.get("manifest")
    data: dict[str, Any] = {
        "carve_id": doc["_id"],
        "request_id": inert(doc["request_id"]),
        "status": doc["status"],
        "host": inert(display_host(doc) or "unknown", 128),
        "device": (
            {
                "common_name": inert(device.get("common_name", ""), 128),
                "fingerprint_sha256": inert(device.get("fingerprint_sha256", ""), 64),
            }
            if device
            else None
        ),
        "carve_size": doc["carve_size"],
        "block_count": doc["block_count"],
        "block_size": doc["block_size"],
        "blocks_received": blocks_received(doc),
        "compression": doc.get("compression"),
        "sha256": doc.get("sha256"),
        "manifest": (
            {
                "members": int(manifest.get("members", 0)),
                "truncated": bool(manifest.get("truncated")),
                "paths": [inert(p) for p in manifest.get("paths") or []][:MAX_PATHS],
            }
            if manifest
            else None
        ),
        "failure_reason": inert(doc["failure_reason"], 512) if doc.get("failure_reason") else None,
        "deleted_by": inert(doc["deleted_by"], 128) if doc.get("deleted_by") else None,
    }
    for name in _TIMES:
        when = doc.get(name)
        data[name] = rfc3339(when) if isinstance(when, datetime) else None
    return data
