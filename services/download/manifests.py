"""The manifest the finalizer stored (``shared.manifest``), served instead of reading the tar.

``GET .../files`` of a carve finalized with a manifest answers from it: no tar parsing per
request, and every regular file carries its ``sha256``. An archive the manifest pass found
refused or malformed gets the 422 the tar listing would give (same code, no re-read). Carves
finalized before manifests existed, and manifests cut short by their own (smaller) budget,
are listed from the tar as before, within the download service's budgets. A member download
names the SHA-256 the manifest holds for it in ``X-Carve-Member-SHA256``, for the client.
"""

from __future__ import annotations

from typing import Any

import orjson
from aiohttp import web

from services.download import keys
from services.download.members import ArchiveRefused
from shared import keys as shared_keys
from shared.carves import CarveDoc
from shared.manifest import COLLECTION
from shared.mongo import Document, transient_on_outage
from shared.timefmt import restated

# Manifest passes that stopped for reasons of their own: the tar listing may still succeed.
LIVE_LISTING = frozenset({"bytes_budget", "time_budget", "stopped", "internal"})


async def stored(request: web.Request, carve_id: str) -> Document | None:
    with transient_on_outage("manifest lookup"):
        return await request.app[shared_keys.MONGO_DB][COLLECTION].find_one({"_id": carve_id})


async def manifest_listing(request: web.Request, doc: CarveDoc, limit: int) -> web.Response | None:
    """The listing from the stored manifest, or None when the carve has none."""
    manifest = await stored(request, doc["_id"])
    if manifest is None or manifest.get("reason") in LIVE_LISTING:
        return None
    if manifest.get("error"):
        reason = str(manifest.get("reason") or "malformed")
        refused = ArchiveRefused(reason, f"the archive cannot be read: {manifest['error']}")
        request.app[keys.METRICS].tar_refusals.labels(refused.code).inc()
        raise refused
    members: list[dict[str, Any]] = manifest["members"]
    # Every member, in archive order: its position is its index (as the tar listing says).
    shown = [
        {**m, "mtime": restated(m.get("mtime")), "index": i} for i, m in enumerate(members[:limit])
    ]
    body = {
        "carve_id": doc["_id"],
        "members": shown,
        "truncated": bool(manifest["truncated"]) or len(members) > limit,
        "source": "manifest",
    }
    return web.json_response(body, dumps=lambda obj: orjson.dumps(obj).decode())


async def member_sha256(request: web.Request, doc: CarveDoc, path: str) -> str | None:
    """The SHA-256 the manifest holds for the file a download of ``path`` serves."""
    manifest = await stored(request, doc["_id"])
    if not manifest or manifest.get("truncated") or manifest.get("error"):
        return None  # a later member past the cut may be the one served: no hash to promise
    for member in manifest.get("members", []):
        if member["path"] == path and not member["superseded"] and member["type"] == "file":
            return str(member["sha256"])
    return None


async def member_sha256_at(request: web.Request, doc: CarveDoc, index: int) -> str | None:
    """The SHA-256 the manifest holds for the member at position ``index``."""
    manifest = await stored(request, doc["_id"])
    if not manifest or manifest.get("error"):
        return None
    members = manifest.get("members", [])
    if index < len(members) and members[index]["type"] == "file":
        return str(members[index]["sha256"])
    return None
