"""Responder endpoints on carves: the listing, one carve, deleting one."""

from __future__ import annotations

import base64
import logging
from datetime import UTC, datetime
from typing import Any

import orjson
from aiohttp import web

from services.download import keys
from services.download.auth import (
    authorize,
    authorized_carve,
    checked_carve_id,
    header_token,
    load_carve,
)
from services.download.lookups import int_param, lookup_filters, time_param
from shared import keys as shared_keys
from shared.carves import ENDED, CarveDoc, CarveRecord, Status, carves_of
from shared.errors import Conflict, Gone, InvalidRequest
from shared.events import EventType
from shared.events.relay import RELAY
from shared.lifecycle import purge_archive, transition
from shared.mongo import Document, transient_on_outage

log = logging.getLogger(__name__)

MAX_PAGE = 1000


def carve_view(doc: CarveDoc) -> dict[str, Any]:
    """The public description of a carve (CarveRecord has no node_key or session_id)."""
    record = CarveRecord.from_doc(doc)
    view = record.model_dump(mode="json")
    view["progress"] = round(record.blocks_received / record.block_count, 4)
    return view


async def delete_carve(request: web.Request) -> web.Response:
    """Delete a carve's bytes on purpose (admin policy); its document stays as a tombstone."""
    authorizer = request.app[keys.AUTHORIZER]
    identity = await authorize(request, header_token(request))
    authorizer.require_policy(identity, request.app[keys.SETTINGS].vault_admin_policy)
    doc = await load_carve(request, checked_carve_id(request.match_info["carve_id"]))
    if doc["status"] in ENDED:
        raise Gone(f"carve {doc['_id']} was already {doc['status']}", status=doc["status"])
    now = datetime.now(UTC)
    fields = {
        "deleted_at": now,
        "deleted_by": identity.display_name or identity.entity_id or identity.accessor,
        "deleted_from": doc["status"],
    }
    db = request.app[shared_keys.MONGO_DB]
    deleted = await transition(
        db,
        doc,
        Status.DELETED,
        fields,
        now,
        event=EventType.DELETED,
        events=request.app[RELAY],
        unless_finalizing=True,
    )
    if not deleted:
        raise Conflict(f"carve {doc['_id']} is being finalized or changed state: try again")
    settings = request.app[keys.SETTINGS]
    # The ingest's session (if it was still receiving) is removed by the janitor's next sweep.
    chunks, freed = await purge_archive(
        db, settings.mongo_bucket, doc["_id"], batch=1000, carve=doc
    )
    log.warning("carve %s deleted by %s: %d chunks", doc["_id"], identity.display_name, chunks)
    view = carve_view(await load_carve(request, doc["_id"]))
    return web.json_response({**view, "chunks_deleted": chunks, "bytes_freed": freed})


# --- listing -------------------------------------------------------------------------------


def _cursor_encode(doc: CarveDoc) -> str:
    raw = orjson.dumps([doc["created_at"].isoformat(), doc["_id"]])
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _cursor_filter(cursor: str) -> Document:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        created, carve_id = orjson.loads(raw)
        when = datetime.fromisoformat(created)
    except (ValueError, TypeError) as exc:
        raise InvalidRequest("cursor is not one this service issued") from exc
    return {"$or": [{"created_at": {"$lt": when}}, {"created_at": when, "_id": {"$lt": carve_id}}]}


def _list_filter(request: web.Request) -> Document:
    query: Document = lookup_filters(request.query)
    if (status := request.query.get("status")) is not None:
        if status not in {s.value for s in Status}:
            raise InvalidRequest(f"status must be one of {', '.join(s.value for s in Status)}")
        query["status"] = status
    if (since := time_param(request.query, "since")) is not None:
        query["created_at"] = {"$gte": since}
    if (cursor := request.query.get("cursor")) is not None:
        query = {"$and": [query, _cursor_filter(cursor)]} if query else _cursor_filter(cursor)
    return query


async def list_carves(request: web.Request) -> web.Response:
    await authorize(request, header_token(request))
    limit = int_param(request.query, "limit", 100, MAX_PAGE)
    query = _list_filter(request)
    carves = carves_of(request.app[shared_keys.MONGO_DB])
    with transient_on_outage("carve listing"):
        cursor = carves.find(query).sort([("created_at", -1), ("_id", -1)]).limit(limit + 1)
        docs = await cursor.to_list()
    page = docs[:limit]
    next_cursor = _cursor_encode(page[-1]) if len(docs) > limit else None
    return web.json_response(
        {"carves": [carve_view(d) for d in page], "next_cursor": next_cursor},
        dumps=lambda obj: orjson.dumps(obj).decode(),
    )


async def get_carve(request: web.Request) -> web.Response:
    doc = await authorized_carve(request)
    return web.json_response(carve_view(doc))
