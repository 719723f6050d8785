"""``GET /api/v1/audit``: the audit trail, for holders of the admin policy.

Filters (all optional, ANDed): ``carve_id``, ``identity`` (display name or entity id),
``action``, ``outcome``, ``since`` and ``until`` (ISO 8601 with a zone). Newest first;
``next_cursor`` pages on (time, _id), so rows written meanwhile never shift a page.
"""

from __future__ import annotations

import base64
from datetime import datetime
from typing import Any

import orjson
from aiohttp import web
from bson import ObjectId
from bson.errors import InvalidId

from services.download import keys
from services.download.audit import COLLECTION
from services.download.auth import authorize, header_token
from services.download.lookups import MAX_VALUE, int_param, time_param
from shared import keys as shared_keys
from shared.errors import InvalidRequest
from shared.mongo import Document, transient_on_outage
from shared.timefmt import rfc3339

OUTCOMES = ("allowed", "denied", "refused", "error", "aborted")
MAX_PAGE = 1000


def _text(request: web.Request, name: str) -> str | None:
    value = request.query.get(name)
    if value is not None and not 0 < len(value) <= MAX_VALUE:
        raise InvalidRequest(f"{name} must be 1 to {MAX_VALUE} characters")
    return value


def _cursor(row: Document) -> str:
    raw = orjson.dumps([row["time"].isoformat(), str(row["_id"])])
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _after(cursor: str) -> Document:
    try:
        when, oid = orjson.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
        at, row_id = datetime.fromisoformat(when), ObjectId(oid)
    except (ValueError, TypeError, InvalidId) as exc:
        raise InvalidRequest("cursor is not one this service issued") from exc
    return {"$or": [{"time": {"$lt": at}}, {"time": at, "_id": {"$lt": row_id}}]}


def audit_filter(request: web.Request) -> Document:
    parts: list[Document] = []
    if (carve_id := _text(request, "carve_id")) is not None:
        parts.append({"carve_id": carve_id})
    if (who := _text(request, "identity")) is not None:
        parts.append({"$or": [{"display_name": who}, {"entity_id": who}]})
    if (action := _text(request, "action")) is not None:
        parts.append({"action": action})
    if (outcome := request.query.get("outcome")) is not None:
        if outcome not in OUTCOMES:
            raise InvalidRequest(f"outcome must be one of {', '.join(OUTCOMES)}")
        parts.append({"outcome": outcome})
    span: Document = {}
    if (since := time_param(request.query, "since")) is not None:
        span["$gte"] = since
    if (until := time_param(request.query, "until")) is not None:
        span["$lt"] = until
    if span:
        parts.append({"time": span})
    if (cursor := request.query.get("cursor")) is not None:
        parts.append(_after(cursor))
    return {"$and": parts} if parts else {}


def row_view(row: Document) -> dict[str, Any]:
    view = {k: v for k, v in row.items() if k != "_id"}
    view["id"] = str(row["_id"])
    view["time"] = rfc3339(row["time"])
    return view


async def list_audit(request: web.Request) -> web.Response:
    identity = await authorize(request, header_token(request))
    request.app[keys.AUTHORIZER].require_policy(
        identity, request.app[keys.SETTINGS].vault_admin_policy
    )
    limit = int_param(request.query, "limit", 100, MAX_PAGE)
    rows = request.app[shared_keys.MONGO_DB][COLLECTION]
    with transient_on_outage("audit listing"):
        found = rows.find(audit_filter(request)).sort([("time", -1), ("_id", -1)])
        docs = await found.limit(limit + 1).to_list()
    page = docs[:limit]
    body = {
        "entries": [row_view(d) for d in page],
        "next_cursor": _cursor(page[-1]) if len(docs) > limit else None,
    }
    return web.json_response(body, dumps=lambda obj: orjson.dumps(obj).decode())
