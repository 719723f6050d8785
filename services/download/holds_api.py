"""Legal holds, expiry and case tags of one carve (``shared.holds``).

- ``PUT /api/v1/carves/{id}/hold`` ``{"case", "reason"}`` (admin policy): places the case's
  hold (again for the same case: nothing changes, 200 all the same).
- ``DELETE /api/v1/carves/{id}/hold/{case}`` (admin policy): releases that case's hold; the
  carve is free once the last one is gone.
- ``PUT /api/v1/carves/{id}/expiry`` ``{"expires_at": time | null}`` (admin policy): when its
  bytes go (null: the service's retention again).
- ``PATCH /api/v1/carves/{id}/cases`` ``{"add": [...], "remove": [...]}`` (read policy): the
  case ids the carve is tagged with.

Each answers the carve as it now is (``carve_views.carve_view``) and is audited.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, TypeVar

from aiohttp import web
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StringConstraints
from pydantic import ValidationError as PydanticError
from pymongo import ReturnDocument

from services.download import keys
from services.download.auth import authorize, checked_carve_id, header_token, load_carve
from services.download.bodies import JSON, UnsupportedMediaType, read_json
from services.download.carve_views import carve_view
from services.download.tokens import Identity
from shared import keys as shared_keys
from shared.carves import ENDED, CarveDoc, HoldDoc, carves_of
from shared.errors import Conflict, Gone, InvalidRequest, NotFound
from shared.events.relay import RELAY
from shared.holds import (
    CASE_ID,
    LIVE,
    MAX_CASES,
    MAX_HOLDS,
    MAX_REASON,
    hold_cases,
    place_hold,
    release_hold,
)
from shared.inert import inert
from shared.mongo import transient_on_outage
from shared.text import check_plain

log = logging.getLogger(__name__)

MAX_EXPIRY = timedelta(days=3660)  # ten years: later than that is a typo
CaseId = Annotated[str, StringConstraints(pattern=f"^{CASE_ID.pattern}$", max_length=64)]
PlainText = Annotated[str, AfterValidator(check_plain)]
M = TypeVar("M", bound=BaseModel)


class HoldRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    case: CaseId
    reason: Annotated[PlainText, Field(min_length=1, max_length=MAX_REASON)]


class ExpiryRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    expires_at: datetime | None


class CasesRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    add: list[CaseId] = Field(default_factory=list, max_length=MAX_CASES)
    remove: list[CaseId] = Field(default_factory=list, max_length=MAX_CASES)


def who(identity: Identity) -> str:
    """How an identity is named in holds and records."""
    return identity.display_name or identity.entity_id or identity.accessor or "unknown"


async def _body(request: web.Request, model: type[M], shape: str) -> M:
    if request.content_type != JSON:
        raise UnsupportedMediaType(f"send Content-Type: {JSON} with {shape}")
    try:
        return model.model_validate(await read_json(request, shape))
    except PydanticError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or 'body'}: {e['msg']}"
            for e in exc.errors(include_url=False, include_input=False)
        )
        raise InvalidRequest(f"{shape}: {problems}") from exc


async def _carve(request: web.Request, *, admin: bool) -> tuple[Identity, CarveDoc]:
    identity = await authorize(request, header_token(request))
    if admin:
        request.app[keys.AUTHORIZER].require_policy(
            identity, request.app[keys.SETTINGS].vault_admin_policy
        )
    doc = await load_carve(request, checked_carve_id(request.match_info["carve_id"]))
    return identity, doc


def _live(doc: CarveDoc) -> CarveDoc:
    if doc["status"] in ENDED:
        raise Gone(
            f"carve {doc['_id']} was {doc['status']}: its bytes are gone", status=doc["status"]
        )
    return doc


async def put_hold(request: web.Request) -> web.Response:
    identity, doc = await _carve(request, admin=True)
    body = await _body(request, HoldRequest, '{"case": ..., "reason": ...}')
    hold: HoldDoc = {
        "case": body.case,
        "reason": body.reason,
        "placed_by": who(identity),
        "placed_at": datetime.now(UTC),
    }
    changed = await place_hold(
        request.app[shared_keys.MONGO_DB], _live(doc), hold, request.app[RELAY]
    )
    if changed is None:
        doc = _live(await load_carve(request, doc["_id"]))
        if body.case not in hold_cases(doc):
            raise Conflict(f"carve {doc['_id']} already has {MAX_HOLDS} holds: release one first")
        return web.json_response(carve_view(doc))  # that case holds it already
    log.warning("carve %s held for case %s by %s", doc["_id"], body.case, inert(hold["placed_by"]))
    return web.json_response(carve_view(changed), status=201)


async def delete_hold(request: web.Request) -> web.Response:
    identity, doc = await _carve(request, admin=True)
    case = request.match_info["case"]
    if not CASE_ID.fullmatch(case):
        raise InvalidRequest(f"case must match {CASE_ID.pattern}")
    db = request.app[shared_keys.MONGO_DB]
    changed = await release_hold(
        db, doc, case, who(identity), datetime.now(UTC), request.app[RELAY]
    )
    if changed is None:
        raise NotFound(f"carve {doc['_id']} has no hold for case {case}", holds=hold_cases(doc))
    log.warning("carve %s: hold of case %s released by %s", doc["_id"], case, inert(who(identity)))
    return web.json_response(carve_view(changed))


async def put_expiry(request: web.Request) -> web.Response:
    identity, doc = await _carve(request, admin=True)
    body = await _body(request, ExpiryRequest, '{"expires_at": "2027-01-31T00:00:00Z" or null}')
    now = datetime.now(UTC)
    when = body.expires_at
    if when is not None:
        if when.tzinfo is None:
            raise InvalidRequest("expires_at must name its time zone (e.g. 2027-01-31T00:00:00Z)")
        when = when.astimezone(UTC)
        if not now < when <= now + MAX_EXPIRY:
            raise InvalidRequest("expires_at must be in the future, at most ten years ahead")
    update: dict[str, Any] = {"$set": {"expires_at": when, "updated_at": now}}
    changed = await _update(request, {"_id": _live(doc)["_id"], **LIVE}, update)
    log.warning("carve %s: expiry set to %s by %s", doc["_id"], when, inert(who(identity)))
    return web.json_response(carve_view(changed))


async def patch_cases(request: web.Request) -> web.Response:
    _, doc = await _carve(request, admin=False)
    body = await _body(request, CasesRequest, '{"add": [case ids], "remove": [case ids]}')
    if set(body.add) & set(body.remove):
        raise InvalidRequest("a case id cannot be both added and removed")
    now = datetime.now(UTC)
    kept = [c for c in doc.get("cases") or [] if c not in body.remove]
    added = [c for c in dict.fromkeys(body.add) if c not in kept]
    if len(kept) + len(added) > MAX_CASES:
        raise InvalidRequest(f"a carve carries at most {MAX_CASES} case ids")
    # Applied only to the list read above: a concurrent change makes this one retry.
    query = {"_id": doc["_id"], "cases": doc.get("cases")}
    update: dict[str, Any] = {"$set": {"cases": kept + added, "updated_at": now}}
    changed = await _update(request, query, update)
    return web.json_response(carve_view(changed))


async def _update(request: web.Request, query: dict[str, Any], update: dict[str, Any]) -> CarveDoc:
    carves = carves_of(request.app[shared_keys.MONGO_DB])
    with transient_on_outage("carve update"):
        changed = await carves.find_one_and_update(
            query, update, return_document=ReturnDocument.AFTER
        )
    if changed is None:
        raise Conflict(f"carve {query['_id']} changed meanwhile: try again")
    return changed
