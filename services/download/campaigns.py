"""Campaigns: every carve of one request id (one live query carving a path on many hosts).

``GET /api/v1/requests/{request_id}``: the campaign (its most carved paths, how many hosts,
counts and bytes by status, progress, first and last activity) and a page of its carves
(``listing.carve_page``, by host unless ``?sort=`` says otherwise).
``GET /api/v1/requests/{request_id}/export``: one ZIP of its complete carves and their
manifests (``export``), audited as one ``export`` row listing the carves it held.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote

from aiohttp import web

from services.download import keys, tickets
from services.download.archive_views import start_stream
from services.download.audit import AUDIT
from services.download.auth import authorize, header_token
from services.download.export import Export
from services.download.export_manifest import manifest_csv, manifest_json
from services.download.listing import carve_page
from services.download.lookups import MAX_VALUE, time_param
from services.download.pace import paced, write_piece
from services.download.zipstream import Entry
from shared import keys as shared_keys
from shared.crypto.context import KEYRING
from shared.errors import ClientError, InvalidRequest, NotFound
from shared.mongo import Document, transient_on_outage
from shared.timefmt import rfc3339, rfc3339_or_none

TOP_PATHS = 8
_OFFSET = re.compile(r"[0-9]{1,19}")
_SAFE = re.compile(r"[^A-Za-z0-9._-]")


class PreconditionFailed(ClientError):
    status = 412
    code = "precondition_failed"


def checked_request_id(raw: str) -> str:
    if not 0 < len(raw) <= MAX_VALUE or any(ord(c) < 0x20 or ord(c) == 0x7F for c in raw):
        raise InvalidRequest(f"request_id must be 1 to {MAX_VALUE} printable characters")
    return raw


async def campaign_summary(request: web.Request, request_id: str) -> dict[str, Any]:
    carves = request.app[shared_keys.MONGO_DB]["carves"]  # aggregates: not CarveDocs
    match: Document = {"$match": {"request_id": request_id}}
    by_status = [
        match,
        {
            "$group": {
                "_id": "$status",
                "carves": {"$sum": 1},
                "bytes": {"$sum": "$carve_size"},
                "received": {"$sum": "$blocks_received"},
                "blocks": {"$sum": "$block_count"},
                "first": {"$min": "$created_at"},
                "last": {"$max": "$updated_at"},
            }
        },
    ]
    hosts = [match, {"$group": {"_id": "$host_name"}}, {"$count": "hosts"}]
    paths = [
        match,
        {"$unwind": "$manifest.paths"},
        {"$group": {"_id": "$manifest.paths", "carves": {"$sum": 1}}},
        {"$sort": {"carves": -1, "_id": 1}},
        {"$limit": TOP_PATHS},
    ]
    with transient_on_outage("campaign"):
        groups = await (await carves.aggregate(by_status)).to_list()
        host_count = await (await carves.aggregate(hosts)).to_list()
        top = await (await carves.aggregate(paths)).to_list()
    if not groups:
        raise NotFound(f"no carve has request id {request_id}")
    received = sum(int(g["received"]) for g in groups)
    blocks = sum(int(g["blocks"]) for g in groups)
    return {
        "request_id": request_id,
        "carve_count": sum(int(g["carves"]) for g in groups),
        "host_count": host_count[0]["hosts"] if host_count else 0,
        "counts": {str(g["_id"]): int(g["carves"]) for g in groups},
        "bytes": {str(g["_id"]): int(g["bytes"]) for g in groups},
        "progress": round(received / blocks, 4) if blocks else 0.0,
        "first_activity": rfc3339_or_none(min(g["first"] for g in groups)),
        "last_activity": rfc3339_or_none(max(g["last"] for g in groups)),
        "paths": [{"path": t["_id"], "carves": int(t["carves"])} for t in top],
    }


async def get_campaign(request: web.Request) -> web.Response:
    await authorize(request, header_token(request))
    request_id = checked_request_id(request.match_info["request_id"])
    campaign = await campaign_summary(request, request_id)
    carves, next_cursor = await carve_page(request, {"request_id": request_id}, "host")
    return web.json_response({**campaign, "carves": carves, "next_cursor": next_cursor})


def _offset(request: web.Request) -> int:
    raw = request.query.get("offset", "0")
    if not _OFFSET.fullmatch(raw):
        raise InvalidRequest("offset must be a byte count")
    return int(raw)


def _ticket_subject(request_id: str) -> str:
    """What an export ticket is for: never a carve id (those have no colon)."""
    return "request:" + request_id


async def export_ticket(request: web.Request) -> web.Response:
    """``POST .../export-ticket``: a single-use ticket for a browser to fetch the export."""
    token = header_token(request)
    await authorize(request, token)
    assert token is not None  # authorize refused a request without one
    request_id = checked_request_id(request.match_info["request_id"])
    request[AUDIT].request_id = request_id
    ticket, expires = await tickets.mint(
        request,
        _ticket_subject(request_id),
        tickets.target("export", None),
        token,
        request.app[keys.SETTINGS].ticket_ttl,
    )
    url = f"/api/v1/requests/{quote(request_id, safe='')}/export?ticket={ticket}"
    body = {"ticket": ticket, "url": url, "expires_at": rfc3339(expires)}
    return web.json_response(body, headers={"Cache-Control": "no-store"})


async def _export_identity(request: web.Request, request_id: str) -> None:
    if "ticket" not in request.query:
        await authorize(request, header_token(request))
        return
    # The ticket stands for the token that minted it, checked as if the request carried it.
    token = await tickets.redeem(
        request, _ticket_subject(request_id), tickets.target("export", None)
    )
    await authorize(request, token)


async def export_campaign(request: web.Request) -> web.StreamResponse:
    request_id = checked_request_id(request.match_info["request_id"])
    await _export_identity(request, request_id)
    entry = request[AUDIT]
    entry.request_id = request_id
    now = datetime.now(UTC)
    as_of = time_param(request.query, "as_of") or now.replace(
        microsecond=now.microsecond // 1000 * 1000
    )
    offset = _offset(request)
    settings = request.app[keys.SETTINGS]
    export = Export(
        request.app[shared_keys.MONGO_DB],
        settings.mongo_bucket,
        request_id,
        as_of,
        settings.download_batch_bytes,
        keys=request.app[KEYRING],
        seen=[],
    )
    etag, count = await export.etag()
    if count == 0:
        raise NotFound(f"no complete carve has request id {request_id} (as of {rfc3339(as_of)})")
    if (wanted := request.headers.get("If-Match")) is not None and wanted.strip() != etag:
        raise PreconditionFailed("the campaign's complete carves changed: export it again")
    name = _SAFE.sub("_", request_id)[:64]
    headers = {
        "Content-Type": "application/zip",
        "Content-Disposition": f'attachment; filename="campaign_{name}.zip"',
        "ETag": etag,
        "Cache-Control": "no-store",
        "X-Carve-Export-As-Of": rfc3339(as_of),
        "X-Carve-Export-Offset": str(offset),
        "X-Carve-Export-Carves": str(count),
    }
    generated = [
        (Entry("manifest.json", None, as_of), manifest_json(export)),
        (Entry("manifest.csv", None, as_of), manifest_csv(export)),
    ]
    with request.app[keys.STREAMS].hold(request[keys.IDENTITY].share_key):
        response = web.StreamResponse(headers=headers)
        await start_stream(request, response)
        try:
            with paced(request) as pace:
                async for piece in export.stream(offset, generated):
                    await write_piece(request, response, piece, pace)
                    entry.bytes_sent += len(piece)
        finally:
            entry.carve_ids = export.seen
        await response.write_eof()
    return response
