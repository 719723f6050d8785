"""Re-scans, for admins: ``POST /api/v1/carves/{id}/triage`` and ``POST /api/v1/triage``.

Neither scans anything here: each marks carves' triage ``pending`` on their documents
(``shared.triage.rescan_update``), and ``carve-triage``'s sweep scans them with the rules it
has now. One carve: 202 with its triage as it now stands. Every carve completed since a time
(``{"since": "2026-12-01T00:00:00Z"}``): one bounded update of at most
``CARVE_TRIAGE_RESCAN_MAX`` carves; more is refused (give a later ``since``), so one request
cannot queue the whole history. Both are audited (``triage``, ``triage_since``).
"""

from __future__ import annotations

from datetime import UTC, datetime

import orjson
from aiohttp import web

from services.download import keys
from services.download.auth import (
    authorize,
    checked_carve_id,
    header_token,
    load_carve,
    require_complete,
)
from services.download.bodies import read_json
from services.download.lookups import time_param
from services.download.tokens import Identity
from shared import keys as shared_keys
from shared.carves import Status, carves_of
from shared.errors import Conflict, InvalidRequest
from shared.mongo import transient_on_outage
from shared.timefmt import rfc3339
from shared.triage import rescan_update, triage_view


def _who(identity: Identity) -> str:
    return identity.display_name or identity.entity_id or identity.accessor or "admin"


async def _admin(request: web.Request) -> Identity:
    identity = await authorize(request, header_token(request))
    request.app[keys.AUTHORIZER].require_policy(
        identity, request.app[keys.SETTINGS].vault_admin_policy
    )
    return identity


async def rescan_carve(request: web.Request) -> web.Response:
    identity = await _admin(request)
    doc = require_complete(
        await load_carve(request, checked_carve_id(request.match_info["carve_id"]))
    )
    carves = carves_of(request.app[shared_keys.MONGO_DB])
    with transient_on_outage("triage request"):
        done = await carves.update_one(
            {"_id": doc["_id"], "status": Status.COMPLETE.value},
            rescan_update(datetime.now(UTC), _who(identity)),
        )
    if not done.matched_count:
        raise Conflict(f"carve {doc['_id']} changed state: try again")
    after = await load_carve(request, doc["_id"])
    return web.json_response(
        {"carve_id": doc["_id"], "triage": triage_view(after.get("triage"))},
        status=202,
        dumps=lambda obj: orjson.dumps(obj).decode(),
    )


async def rescan_since(request: web.Request) -> web.Response:
    identity = await _admin(request)
    body = await read_json(request, '{"since": "2026-12-01T00:00:00Z"}')
    if not isinstance(body, dict) or set(body) != {"since"} or not isinstance(body["since"], str):
        raise InvalidRequest('body must be {"since": "<ISO 8601 time with its zone>"}')
    since = time_param(body, "since")
    assert since is not None
    limit = request.app[keys.SETTINGS].triage_rescan_max
    carves = carves_of(request.app[shared_keys.MONGO_DB])
    query = {"status": Status.COMPLETE.value, "completed_at": {"$gte": since}}
    with transient_on_outage("triage request"):
        found = await carves.find(query, {"_id": 1}).limit(limit + 1).to_list()
        if len(found) > limit:
            raise InvalidRequest(
                f"more than {limit} carves completed since {rfc3339(since)}: give a later "
                "since (CARVE_TRIAGE_RESCAN_MAX)",
                limit=limit,
            )
        ids = [d["_id"] for d in found]
        done = await carves.update_many(
            {"_id": {"$in": ids}, "status": Status.COMPLETE.value},
            rescan_update(datetime.now(UTC), _who(identity)),
        )
    return web.json_response(
        {"since": rfc3339(since), "requested": done.modified_count}, status=202
    )
