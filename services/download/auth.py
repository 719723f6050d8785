"""Who is asking, and for which carve: the authorization every responder endpoint starts with.

A request carries a Vault token (``X-Vault-Token`` or ``Authorization: Bearer``), checked
by the Authorizer (``services.download.tokens``) for the download policy; a browser
download carries a ticket instead (``services.download.tickets``), which stands for the token
that minted it, checked the same way. Either way the identity
goes into the request (``keys.IDENTITY``) and its audit entry.
"""

from __future__ import annotations

from aiohttp import web

from services.download import keys, tickets
from services.download.audit import AUDIT
from services.download.members import clean_member_path
from services.download.tokens import Identity
from shared import keys as shared_keys
from shared.carves import ENDED, CarveDoc, Status, blocks_received, carves_of
from shared.errors import Failed, Gone, InvalidRequest, NotComplete, NotFound
from shared.mongo import transient_on_outage
from shared.protocol import CARVE_ID
from shared.timefmt import rfc3339_or_none

# Routes that take a download ticket (services/download/tickets.py) instead of a token.
TICKET_ROUTES = frozenset({"archive", "file", "member"})


def header_token(request: web.Request) -> str | None:
    if token := request.headers.get("X-Vault-Token"):
        return token.strip()
    scheme, _, value = request.headers.get("Authorization", "").partition(" ")
    return value.strip() if scheme.lower() == "bearer" else None


def _identify(request: web.Request, identity: Identity) -> None:
    if (entry := request.get(AUDIT)) is not None:
        entry.identify(identity)
    request[keys.IDENTITY] = identity


async def authorize(request: web.Request, token: str | None) -> Identity:
    authorizer = request.app[keys.AUTHORIZER]
    identity = await authorizer.authenticate(token)
    _identify(request, identity)
    authorizer.require_policy(identity)
    return identity


def checked_carve_id(raw: str) -> str:
    if not CARVE_ID.fullmatch(raw):
        raise InvalidRequest("carve_id must match [A-Za-z0-9][A-Za-z0-9_-]{0,127}")
    return raw


async def load_carve(request: web.Request, carve_id: str) -> CarveDoc:
    with transient_on_outage("carve lookup"):
        doc = await carves_of(request.app[shared_keys.MONGO_DB]).find_one({"_id": carve_id})
    if doc is None:
        raise NotFound(f"no carve {carve_id}")
    return doc


async def authorized_carve(request: web.Request) -> CarveDoc:
    """The carve the route names, once the request's token (or ticket) allows it."""
    route = request.match_info.route.name
    if "ticket" in request.query and route in TICKET_ROUTES:
        # A browser download: the ticket minted by an authorized POST stands for its token,
        # which is then checked as if the request carried it (revoked: refused).
        carve_id = checked_carve_id(request.match_info["carve_id"])
        token = await tickets.redeem(request, carve_id, ticket_target(request))
        await authorize(request, token)
        return await load_carve(request, carve_id)
    await authorize(request, header_token(request))
    return await load_carve(request, checked_carve_id(request.match_info["carve_id"]))


def ticket_target(request: web.Request) -> str:
    """What a ticket for this request's route must be for (services/download/tickets.py)."""
    route = str(request.match_info.route.name)
    if route == "member":
        return tickets.target(route, str(int(request.match_info["index"])))
    path = request.match_info.get("path")
    return tickets.target(route, path and clean_member_path(path))


def require_complete(doc: CarveDoc) -> CarveDoc:
    """``doc`` if its carve is complete. Gone (410) when it never will be: its bytes deleted
    (``gone``: when, and by whom for a deletion) or the carve failed (``failed``: why);
    NotComplete (409) while it is still receiving."""
    if doc["status"] in ENDED:
        when = doc.get("expired_at") or doc.get("deleted_at")
        raise Gone(
            f"carve {doc['_id']} was {doc['status']}: its bytes are deleted",
            status=doc["status"],
            at=rfc3339_or_none(when),
            by=doc.get("deleted_by"),
        )
    if doc["status"] == Status.FAILED:
        reason = doc.get("failure_reason") or "no reason recorded"
        raise Failed(
            f"carve {doc['_id']} failed: {reason}",
            status=doc["status"],
            reason=reason,
            at=rfc3339_or_none(doc.get("failed_at")),
            blocks_received=blocks_received(doc),
            block_count=doc["block_count"],
        )
    if doc["status"] != Status.COMPLETE:
        raise NotComplete(
            f"carve {doc['_id']} is not complete",
            status=doc["status"],
            blocks_received=blocks_received(doc),
            block_count=doc["block_count"],
        )
    return doc
