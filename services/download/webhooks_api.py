"""``GET /api/v1/webhooks/deliveries``: webhook deliveries (``carve-events``), for admins.

Filters (optional, ANDed): ``endpoint``, ``state`` (pending, delivered, dead), ``carve_id``,
``event_id``. Newest first; ``next_cursor`` pages on (created_at, _id). Never the event body
nor the endpoint's URL (``shared.deliveries.delivery_view``).
"""

from __future__ import annotations

import base64
from datetime import datetime

import orjson
from aiohttp import web

from services.download import keys
from services.download.auth import authorize, header_token
from services.download.lookups import MAX_VALUE, int_param
from shared import keys as shared_keys
from shared.deliveries import DeliveryDoc, State, deliveries_of, delivery_view
from shared.errors import InvalidRequest
from shared.mongo import Document, transient_on_outage

MAX_PAGE = 500
_FILTERS = {"endpoint": "endpoint", "carve_id": "subject", "event_id": "event_id"}


def _cursor(doc: DeliveryDoc) -> str:
    raw = orjson.dumps([doc["created_at"].isoformat(), doc["_id"]])
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _after(cursor: str) -> Document:
    try:
        when, key = orjson.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
        at = datetime.fromisoformat(when)
    except (ValueError, TypeError) as exc:
        raise InvalidRequest("cursor is not one this service issued") from exc
    if not isinstance(key, str):
        raise InvalidRequest("cursor is not one this service issued")
    return {"$or": [{"created_at": {"$lt": at}}, {"created_at": at, "_id": {"$lt": key}}]}


def deliveries_filter(request: web.Request) -> Document:
    parts: list[Document] = []
    for name, field in _FILTERS.items():
        if (value := request.query.get(name)) is not None:
            if not 0 < len(value) <= MAX_VALUE:
                raise InvalidRequest(f"{name} must be 1 to {MAX_VALUE} characters")
            parts.append({field: value})
    if (state := request.query.get("state")) is not None:
        if state not in {s.value for s in State}:
            raise InvalidRequest(f"state must be one of {', '.join(s.value for s in State)}")
        parts.append({"state": state})
    if (cursor := request.query.get("cursor")) is not None:
        parts.append(_after(cursor))
    return {"$and": parts} if parts else {}


async def list_deliveries(request: web.Request) -> web.Response:
    identity = await authorize(request, header_token(request))
    request.app[keys.AUTHORIZER].require_policy(
        identity, request.app[keys.SETTINGS].vault_admin_policy
    )
    limit = int_param(request.query, "limit", 100, MAX_PAGE)
    rows = deliveries_of(request.app[shared_keys.MONGO_DB])
    with transient_on_outage("webhook deliveries listing"):
        found = rows.find(deliveries_filter(request), {"body": 0})
        docs = await found.sort([("created_at", -1), ("_id", -1)]).limit(limit + 1).to_list()
    page = docs[:limit]
    body = {
        "deliveries": [delivery_view(d) for d in page],
        "next_cursor": _cursor(page[-1]) if len(docs) > limit else None,
    }
    return web.json_response(body, dumps=lambda obj: orjson.dumps(obj).decode())
