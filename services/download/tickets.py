"""Download tickets: a browser downloads an archive or a member without a token in its URL.

An authenticated ``POST .../download-ticket`` mints a ticket: 32 random bytes, URL-safe,
that say nothing by themselves. What the ticket stands for lives in MongoDB's
``download_tickets`` under the ticket's SHA-256 (so the database does not hold usable
tickets): the carve and member it is for, its expiry, and the minting Vault token, sealed
with AES-256-GCM under a key derived from the ticket and ``CARVE_TICKET_SECRET`` (neither
the database, nor a leaked ticket, nor both without the secret give the token back).

``GET .../archive?ticket=`` (or ``.../files/M?ticket=``, ``.../members/N?ticket=``) redeems
it: the row is marked used in the same write that finds it (once across all replicas), the
token is unsealed and wiped from the row, and the request then goes on exactly as if it had
carried the token: the same lookup (through the same cache) and the same policy check. A
token revoked since the ticket was minted is refused once its cached lookup expires
(``CARVE_VAULT_CACHE_TTL``, 10 s) or at once when it was revoked by the console's logout.
A leaked ticket is worth at most one download of one carve, for at most ``CARVE_TICKET_TTL``
seconds, and only while its token is still valid.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import secrets
from datetime import UTC, datetime, timedelta

from aiohttp import web
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from pymongo.asynchronous.collection import AsyncCollection

from shared import keys as shared_keys
from shared.errors import Forbidden
from shared.mongo import Document, transient_on_outage

COLLECTION = "download_tickets"
SECRET = web.AppKey("ticket_secret", bytes)
_TICKET = re.compile(r"[A-Za-z0-9_-]{43}")  # secrets.token_urlsafe(32)
# Rows stay (used or not) this long past their expiry, then MongoDB's TTL index drops them.
_KEEP = timedelta(minutes=5)


def app_secret(configured: str) -> bytes:
    """The sealing secret: the configured one, or a random one for this process."""
    if configured:
        if len(configured.encode()) < 32:
            raise ValueError("CARVE_TICKET_SECRET must be at least 32 bytes")
        return hashlib.sha256(b"carve-download-ticket\x00" + configured.encode()).digest()
    return secrets.token_bytes(32)


def target(route: str, member: str | None) -> str:
    """What a ticket is for: ``archive``, ``file:/path`` or ``member:N``."""
    return route if member is None else f"{route}:{member}"


def _row_id(ticket: str) -> str:
    return hashlib.sha256(b"carve-download-ticket-id\x00" + ticket.encode()).hexdigest()


def _key(secret: bytes, ticket: str) -> AESGCM:
    return AESGCM(hmac.new(secret, b"seal\x00" + ticket.encode(), hashlib.sha256).digest())


def _aad(row_id: str, carve_id: str, what: str) -> bytes:
    return f"{row_id}\x00{carve_id}\x00{what}".encode()


async def mint(
    request: web.Request, carve_id: str, what: str, token: str, ttl: float
) -> tuple[str, datetime]:
    """A new ticket for ``what`` of ``carve_id``, standing for ``token``; and its expiry."""
    ticket = secrets.token_urlsafe(32)
    row_id = _row_id(ticket)
    nonce = secrets.token_bytes(12)
    sealed = nonce + _key(request.app[SECRET], ticket).encrypt(
        nonce, token.encode(), _aad(row_id, carve_id, what)
    )
    expires = datetime.now(UTC) + timedelta(seconds=ttl)
    row = {
        "_id": row_id,
        "carve_id": carve_id,
        "target": what,
        "expires_at": expires,
        "until": expires + _KEEP,
        "used": False,
        "sealed": base64.b64encode(sealed).decode(),
    }
    with transient_on_outage("ticket mint"):
        await request.app[shared_keys.MONGO_DB][COLLECTION].insert_one(row)
    return ticket, expires


async def redeem(request: web.Request, carve_id: str, what: str) -> str:
    """The token behind the request's ticket, which is used up now; Forbidden if the ticket is
    not valid for ``what`` of ``carve_id`` (the token itself is checked by the caller)."""
    ticket = request.query["ticket"]
    if not _TICKET.fullmatch(ticket):
        raise Forbidden("the download ticket is malformed")
    row_id = _row_id(ticket)
    tickets = request.app[shared_keys.MONGO_DB][COLLECTION]
    now = datetime.now(UTC)
    wanted = {"_id": row_id, "carve_id": carve_id, "target": what, "used": False}
    with transient_on_outage("ticket use"):
        row = await tickets.find_one_and_update(
            {**wanted, "expires_at": {"$gt": now}},
            {"$set": {"used": True, "used_at": now}, "$unset": {"sealed": ""}},
        )
        if row is None:
            raise await _why_not(tickets, row_id, carve_id, what)
    try:
        sealed = base64.b64decode(row["sealed"])
        token = _key(request.app[SECRET], ticket).decrypt(
            sealed[:12], sealed[12:], _aad(row_id, carve_id, what)
        )
    except (InvalidTag, ValueError, KeyError) as exc:
        # Minted by a replica with another secret (CARVE_TICKET_SECRET unset or different).
        raise Forbidden("the download ticket is not valid here: ask for a new one") from exc
    return token.decode()


async def _why_not(
    tickets: AsyncCollection[Document], row_id: str, carve_id: str, what: str
) -> Forbidden:
    found = await tickets.find_one({"_id": row_id})
    if found is None:
        return Forbidden("the download ticket is unknown: ask for a new one")
    if found["carve_id"] != carve_id or found["target"] != what:
        return Forbidden("the download ticket is for another carve or member")
    if found["used"]:
        return Forbidden("the download ticket was already used: ask for a new one")
    return Forbidden("the download ticket has expired: ask for a new one")
