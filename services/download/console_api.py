"""Console helpers of the API: minting download tickets (see tickets.py)."""

from __future__ import annotations

from urllib.parse import quote

from aiohttp import web

from services.download import keys, tickets
from services.download.auth import authorized_carve, header_token, require_complete
from services.download.bodies import parse_json, read_body
from services.download.members import clean_member_path
from shared.errors import InvalidRequest
from shared.timefmt import rfc3339

_MAX_PATH = 4096
_MAX_INDEX = 999_999_999  # what the .../members/{index} route takes (nine digits)


async def _fields(request: web.Request) -> dict[str, object]:
    if not request.can_read_body:
        return {}
    body = await read_body(request)
    if not body.strip():
        return {}
    fields = parse_json(body)
    if not isinstance(fields, dict):
        raise InvalidRequest("body must be a JSON object")
    return fields


def _member(fields: dict[str, object]) -> tuple[str, str | None, str]:
    """The ticket's target, the member path (or None) and the URL after the carve's."""
    path, index = fields.get("path"), fields.get("index")
    if path is not None and index is not None:
        raise InvalidRequest("give path or index, not both")
    if index is not None:
        if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index <= _MAX_INDEX:
            raise InvalidRequest(f"index must be an integer from 0 to {_MAX_INDEX}")
        return tickets.target("member", str(index)), None, f"/members/{index}"
    if path is None:
        return tickets.target("archive", None), None, "/archive"
    if not isinstance(path, str) or not 0 < len(path) <= _MAX_PATH:
        raise InvalidRequest(f"path must be a string of 1 to {_MAX_PATH} characters")
    clean = clean_member_path(path)
    return tickets.target("file", clean), clean, "/files" + quote(clean, safe="/")


async def download_ticket(request: web.Request) -> web.Response:
    """``POST /api/v1/carves/{id}/download-ticket``; body (optional) ``{"path": member}`` or
    ``{"index": n}`` (the listing's index: for names a path cannot carry)."""
    doc = require_complete(await authorized_carve(request))
    what, path, where = _member(await _fields(request))
    token = header_token(request)
    assert token is not None  # authorized_carve refused a request without one
    ticket, expires = await tickets.mint(
        request, doc["_id"], what, token, request.app[keys.SETTINGS].ticket_ttl
    )
    return web.json_response(
        {
            "ticket": ticket,
            "url": f"/api/v1/carves/{doc['_id']}{where}?ticket={ticket}",
            "path": path,
            "expires_at": rfc3339(expires),
        },
        headers={"Cache-Control": "no-store"},
    )
