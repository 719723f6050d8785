"""Console helpers of the API: minting download tickets (see tickets.py)."""

from __future__ import annotations

from datetime import UTC, datetime
from urllib.parse import quote

from aiohttp import web

from services.download import keys, tickets
from services.download.auth import authorized_carve, require_complete
from services.download.bodies import parse_json, read_body
from services.download.members import clean_member_path
from shared.errors import InvalidRequest
from shared.timefmt import rfc3339

_MAX_PATH = 4096


async def _member_path(request: web.Request) -> str | None:
    if not request.can_read_body:
        return None
    body = await read_body(request)
    if not body.strip():
        return None
    fields = parse_json(body)
    if not isinstance(fields, dict):
        raise InvalidRequest("body must be a JSON object")
    path = fields.get("path")
    if path is None:
        return None
    if not isinstance(path, str) or not 0 < len(path) <= _MAX_PATH:
        raise InvalidRequest(f"path must be a string of 1 to {_MAX_PATH} characters")
    return clean_member_path(path)


async def download_ticket(request: web.Request) -> web.Response:
    """``POST /api/v1/carves/{id}/download-ticket`` (body ``{"path": member}``, optional)."""
    doc = require_complete(await authorized_carve(request))
    path = await _member_path(request)
    settings = request.app[keys.SETTINGS]
    ticket, expires = tickets.mint(
        request.app[tickets.SECRET], doc["_id"], path, request[keys.IDENTITY], settings.ticket_ttl
    )
    where = "/files" + quote(path, safe="/") if path else "/archive"
    return web.json_response(
        {
            "ticket": ticket,
            "url": f"/api/v1/carves/{doc['_id']}{where}?ticket={ticket}",
            "path": path,
            "expires_at": rfc3339(datetime.fromtimestamp(expires, UTC)),
        },
        headers={"Cache-Control": "no-store"},
    )
