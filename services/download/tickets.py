"""Download tickets: a browser downloads an archive or a member without a token in its URL.

An authenticated ``POST .../download-ticket`` mints a ticket: an HMAC-SHA256-signed
statement "identity X may fetch carve C (member M) once before T". ``GET .../archive?ticket=``
(or ``.../files/M?ticket=``) redeems it: signature, expiry, carve and member are checked, then
its nonce is written to MongoDB's ``download_tickets`` collection under a unique ``_id``, so a
ticket is used once across all replicas. The request is audited as the identity that minted
it. The ticket carries no Vault token: a leaked ticket is worth one download of one carve for
at most ``CARVE_TICKET_TTL`` seconds.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
from aiohttp import web
from pymongo.errors import DuplicateKeyError

from services.download.tokens import Identity
from shared import keys as shared_keys
from shared.errors import Forbidden
from shared.mongo import transient_on_outage

COLLECTION = "download_tickets"
SECRET = web.AppKey("ticket_secret", bytes)
_MAX_TICKET = 4096
_MAX_PATH = 4096


@dataclass(frozen=True)
class Ticket:
    carve_id: str
    path: str | None
    expires: float
    nonce: str
    identity: Identity


def app_secret(configured: str) -> bytes:
    """The signing key: the configured secret, or a random one for this process."""
    if configured:
        if len(configured.encode()) < 32:
            raise ValueError("CARVE_TICKET_SECRET must be at least 32 bytes")
        return hashlib.sha256(b"carve-download-ticket\x00" + configured.encode()).digest()
    return secrets.token_bytes(32)


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def mint(
    secret: bytes, carve_id: str, path: str | None, identity: Identity, ttl: float
) -> tuple[str, float]:
    """A signed ticket and its expiry (Unix time)."""
    expires = round(time.time() + ttl, 3)
    payload = {
        "c": carve_id,
        "p": path,
        "e": expires,
        "n": secrets.token_hex(16),
        "d": identity.display_name,
        "i": identity.entity_id,
        "a": identity.accessor,
    }
    body = _b64(orjson.dumps(payload))
    mac = hmac.new(secret, body.encode(), hashlib.sha256).digest()
    return f"{body}.{_b64(mac)}", expires


def verify(secret: bytes, ticket: str, now: float | None = None) -> Ticket:
    """The ticket's contents if its signature holds and it has not expired; Forbidden if not."""
    if len(ticket) > _MAX_TICKET or ticket.count(".") != 1:
        raise Forbidden("the download ticket is malformed")
    body, _, mac = ticket.partition(".")
    expected = hmac.new(secret, body.encode(), hashlib.sha256).digest()
    try:
        good = hmac.compare_digest(_unb64(mac), expected)
        payload: dict[str, Any] = orjson.loads(_unb64(body)) if good else {}
    except (ValueError, orjson.JSONDecodeError) as exc:
        raise Forbidden("the download ticket is malformed") from exc
    if not good:
        raise Forbidden("the download ticket's signature is not valid")
    if float(payload["e"]) < (time.time() if now is None else now):
        raise Forbidden("the download ticket has expired: ask for a new one")
    identity = Identity(
        display_name=str(payload["d"]),
        entity_id=str(payload["i"]),
        accessor=str(payload["a"]),
        policies=frozenset(),
    )
    return Ticket(str(payload["c"]), payload["p"], float(payload["e"]), str(payload["n"]), identity)


async def redeem(request: web.Request, carve_id: str, path: str | None) -> Identity:
    """The minting identity of the request's ticket, used up now; Forbidden if not valid here."""
    ticket = verify(request.app[SECRET], request.query["ticket"])
    if ticket.carve_id != carve_id or ticket.path != path:
        raise Forbidden("the download ticket is for another carve or member")
    row = {
        "_id": ticket.nonce,
        "carve_id": carve_id,
        "until": datetime.fromtimestamp(ticket.expires, UTC) + timedelta(minutes=5),
    }
    with transient_on_outage("ticket use"):
        try:
            await request.app[shared_keys.MONGO_DB][COLLECTION].insert_one(row)
        except DuplicateKeyError as exc:
            raise Forbidden("the download ticket was already used: ask for a new one") from exc
    return ticket.identity
