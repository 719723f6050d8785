"""Responder endpoints on one carve: its description, deleting it (the listing: listing.py)."""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import Any

from aiohttp import web

from services.download import keys
from services.download.auth import (
    authorize,
    authorized_carve,
    checked_carve_id,
    header_token,
    load_carve,
)
from shared import keys as shared_keys
from shared.carves import ENDED, CarveDoc, CarveRecord, Status
from shared.crypto.keys import encryption_view
from shared.errors import Conflict, Gone, Held
from shared.events import EventType
from shared.events.relay import RELAY
from shared.holds import held, hold_cases, hold_view
from shared.lifecycle import purge_archive, transition
from shared.timefmt import rfc3339_or_none
from shared.triage import history_view, triage_view

log = logging.getLogger(__name__)

MAX_PAGE = 1000


def carve_view(doc: CarveDoc) -> dict[str, Any]:
    """The public description of a carve (CarveRecord has no node_key or session_id)."""
    record = CarveRecord.from_doc(doc)
    view = record.model_dump(mode="json")
    view["progress"] = round(record.blocks_received / record.block_count, 4)
    view["triage"] = triage_view(doc.get("triage"))
    view["holds"] = [hold_view(h) for h in doc.get("holds") or []]
    view["cases"] = list(doc.get("cases") or [])
    view["expires_at"] = rfc3339_or_none(doc.get("expires_at"))
    view["encryption"] = encryption_view(doc)
    if doc.get("triage_history"):
        view["triage_history"] = history_view(doc.get("triage_history"))
    return view


async def delete_carve(request: web.Request) -> web.Response:
    """Delete a carve's bytes on purpose (admin policy); its document stays as a tombstone."""
    authorizer = request.app[keys.AUTHORIZER]
    identity = await authorize(request, header_token(request))
    authorizer.require_policy(identity, request.app[keys.SETTINGS].vault_admin_policy)
    doc = await load_carve(request, checked_carve_id(request.match_info["carve_id"]))
    if doc["status"] in ENDED:
        raise Gone(f"carve {doc['_id']} was already {doc['status']}", status=doc["status"])
    _not_held(doc)
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
        unless_held=True,
    )
    if not deleted:
        _not_held(await load_carve(request, doc["_id"]))  # a hold placed meanwhile won
        raise Conflict(f"carve {doc['_id']} is being finalized or changed state: try again")
    settings = request.app[keys.SETTINGS]
    # The ingest's session (if it was still receiving) is removed by the janitor's next sweep.
    chunks, freed = await purge_archive(
        db, settings.mongo_bucket, doc["_id"], batch=1000, carve=doc
    )
    log.warning("carve %s deleted by %s: %d chunks", doc["_id"], identity.display_name, chunks)
    view = carve_view(await load_carve(request, doc["_id"]))
    return web.json_response({**view, "chunks_deleted": chunks, "bytes_freed": freed})


def _not_held(doc: CarveDoc) -> None:
    if held(doc):
        cases = hold_cases(doc)
        raise Held(
            f"carve {doc['_id']} is under legal hold ({', '.join(cases)}): release it first",
            holds=cases,
        )


async def get_carve(request: web.Request) -> web.Response:
    doc = await authorized_carve(request)
    return web.json_response(carve_view(doc))
