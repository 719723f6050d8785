"""The carve listing: filters, sort orders, cursor pages, and the summary counts.

``?sort=`` is one of ``SORTS`` (``-`` first for descending; default ``-created``). Every
order ends on ``_id``, so it is total and a page's cursor (the last row's sort value and id,
opaque to clients) resumes exactly after it, whatever was added meanwhile. Each order has
an index ``(field, _id)`` (``shared.mongo.ensure_indexes``). A listing is bounded in time
(``QUERY_SECONDS``): a search too broad to answer in that time is refused, not left running.
"""

from __future__ import annotations

import asyncio
import base64
from datetime import datetime
from typing import Any

import orjson
from aiohttp import web
from pymongo.errors import ExecutionTimeout

from services.download.auth import authorize, header_token
from services.download.carve_views import carve_view
from services.download.lookups import int_param, lookup_filters, time_param
from shared import keys as shared_keys
from shared.carves import Status, carves_of
from shared.errors import InvalidRequest
from shared.holds import CASE_ID
from shared.mongo import Document, transient_on_outage
from shared.triage import VERDICTS

MAX_PAGE = 1000
QUERY_SECONDS = 10.0
SORTS = {"created": "created_at", "size": "carve_size", "status": "status", "host": "host_name"}
# The summary counts at the top of the console: name -> the carves it counts. Triage's
# verdict adds one line here ("flagged": {"verdict": "flagged"}).
COUNTS: dict[str, Document] = {
    "receiving": {"status": Status.RECEIVING.value},
    "complete": {"status": Status.COMPLETE.value},
    "failed": {"status": Status.FAILED.value},
    "flagged": {"status": Status.COMPLETE.value, "triage.verdict": "flagged"},  # carve-triage
}


def _sort(request: web.Request, default: str = "-created") -> tuple[str, str, int]:
    """(name, field, direction) of ``?sort=``."""
    raw = request.query.get("sort", default)
    name = raw.removeprefix("-")
    if name not in SORTS:
        choices = ", ".join(f"{n} or -{n}" for n in SORTS)
        raise InvalidRequest(f"sort must be one of {choices}")
    return name, SORTS[name], -1 if raw.startswith("-") else 1


def _encode(name: str, value: Any, carve_id: str) -> str:
    if isinstance(value, datetime):
        value = {"t": value.isoformat()}
    raw = orjson.dumps([name, value, carve_id])
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _after(cursor: str, name: str, field: str, direction: int) -> Document:
    """The rows after the cursor's row, in this order."""
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        sort_name, value, carve_id = orjson.loads(raw)
        if isinstance(value, dict):
            value = datetime.fromisoformat(value["t"])
        if sort_name != name or not isinstance(carve_id, str):
            raise ValueError("another order's cursor")
    except (ValueError, TypeError, KeyError) as exc:
        raise InvalidRequest("cursor is not one this service issued for this order") from exc
    beyond = "$gt" if direction > 0 else "$lt"
    tie = {field: value, "_id": {beyond: carve_id}}
    if value is None:  # carves without the field (older ones) sort before every value
        return {"$or": [tie, {field: {"$ne": None}}]} if direction > 0 else tie
    later: Document = {field: {beyond: value}}
    if direction < 0:  # descending: the carves without the field come last
        later = {"$or": [later, {field: None}]}
    return {"$or": [tie, later]}


def list_filter(request: web.Request) -> Document:
    query: Document = lookup_filters(request.query)
    if (status := request.query.get("status")) is not None:
        if status not in {s.value for s in Status}:
            raise InvalidRequest(f"status must be one of {', '.join(s.value for s in Status)}")
        query["status"] = status
    if (since := time_param(request.query, "since")) is not None:
        query["created_at"] = {"$gte": since}
    if (verdict := request.query.get("verdict")) is not None:
        if verdict not in VERDICTS:
            raise InvalidRequest(f"verdict must be one of {', '.join(VERDICTS)}")
        query["triage.verdict"] = verdict
    return query | case_filter(request.query)


def case_filter(params: Any) -> Document:
    """``?case=``: carves tagged with that case id or held for it; ``?held=true``: carves a
    legal hold stands on (``shared.holds``)."""
    found: list[Document] = []
    if (case := params.get("case")) is not None:
        if not CASE_ID.fullmatch(case):
            raise InvalidRequest(f"case must match {CASE_ID.pattern}")
        found.append({"$or": [{"cases": case}, {"holds.case": case}]})
    if (held := params.get("held")) is not None:
        if held not in ("true", "false"):
            raise InvalidRequest("held must be true or false")
        found.append({"holds.0": {"$exists": held == "true"}})
    return {"$and": found} if found else {}


async def carve_page(
    request: web.Request, query: Document, default_sort: str = "-created"
) -> tuple[list[dict[str, Any]], str | None]:
    """One page of the carves ``query`` finds, in the order ``?sort=`` asks, and the cursor
    of the next page (None on the last)."""
    limit = int_param(request.query, "limit", 100, MAX_PAGE)
    name, field, direction = _sort(request, default_sort)
    if (cursor := request.query.get("cursor")) is not None:
        after = _after(cursor, name, field, direction)
        query = {"$and": [query, after]} if query else after
    carves = carves_of(request.app[shared_keys.MONGO_DB])
    order = [(field, direction), ("_id", direction)]
    try:
        with transient_on_outage("carve listing"):
            found = carves.find(query, {"search": 0}).sort(order).limit(limit + 1)
            docs = await found.max_time_ms(int(QUERY_SECONDS * 1000)).to_list()
    except ExecutionTimeout as exc:
        raise InvalidRequest(
            f"the search took over {QUERY_SECONDS:g} s: narrow it (a status, a time, more of q)"
        ) from exc
    page = docs[:limit]
    last = page[-1] if page else None
    more = last is not None and len(docs) > limit
    next_cursor = _encode(name, last.get(field), last["_id"]) if last and more else None
    return [carve_view(d) for d in page], next_cursor


async def list_carves(request: web.Request) -> web.Response:
    await authorize(request, header_token(request))
    carves, next_cursor = await carve_page(request, list_filter(request))
    return web.json_response(
        {"carves": carves, "next_cursor": next_cursor},
        dumps=lambda obj: orjson.dumps(obj).decode(),
    )


async def summary(request: web.Request) -> web.Response:
    """``GET /api/v1/summary``: how many carves are receiving, complete, failed, and how many
    complete ones triage flagged."""
    await authorize(request, header_token(request))
    carves = carves_of(request.app[shared_keys.MONGO_DB])
    with transient_on_outage("carve counts"):
        counts = await asyncio.gather(*(carves.count_documents(q) for q in COUNTS.values()))
    return web.json_response({"counts": dict(zip(COUNTS, counts, strict=True))})
