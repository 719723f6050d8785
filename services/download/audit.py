"""Who touched which carve: one ``audit`` document and one log line per request.

Allowed and denied requests alike. Recording never fails the request: when
MongoDB cannot take the row, the log line still carries it (with
``stored: false``) for the log pipeline to keep.
"""

from __future__ import annotations

import ipaddress
import logging
from dataclasses import dataclass, field, fields
from datetime import UTC, datetime

import orjson
from aiohttp import web
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.errors import PyMongoError

from services.download.auth import Identity
from services.download.settings import Network
from shared.mongo import Document

COLLECTION = "audit"
log = logging.getLogger("carve.audit")


@dataclass
class AuditEntry:
    action: str
    client: str
    carve_id: str | None = None
    time: datetime = field(default_factory=lambda: datetime.now(UTC))
    outcome: str = "error"
    status: int = 500
    display_name: str | None = None
    entity_id: str | None = None
    accessor: str | None = None
    bytes_sent: int = 0
    # The error code of a refused request (e.g. archive_sparse, tar_busy), None otherwise.
    code: str | None = None
    # Set once the response's headers went out: an error now can only cut it short.
    response: web.StreamResponse | None = field(default=None, repr=False)

    def start(self, response: web.StreamResponse) -> None:
        self.response = response
        self.status = response.status

    def identify(self, identity: Identity) -> None:
        self.display_name = identity.display_name
        self.entity_id = identity.entity_id
        self.accessor = identity.accessor


AUDIT = web.RequestKey("audit", AuditEntry)


def client_address(request: web.Request, trusted: tuple[Network, ...]) -> str:
    """The peer, or, behind trusted proxies, the first X-Forwarded-For hop that is not one."""
    peer = request.remote or ""
    if not _within(peer, trusted):
        return peer
    hops = [h.strip() for h in request.headers.get("X-Forwarded-For", "").split(",") if h.strip()]
    for hop in reversed(hops):
        if not _within(hop, trusted):
            return hop
    return hops[0] if hops else peer


def _within(address: str, networks: tuple[Network, ...]) -> bool:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    return any(ip in net for net in networks)


def outcome_of(status: int) -> str:
    if status < 400:
        return "allowed"
    if status in (401, 403):
        return "denied"
    if status >= 500:
        return "error"
    return "refused"


async def record(entries: AsyncCollection[Document], entry: AuditEntry) -> None:
    # Not asdict(): it would deep-copy the response object.
    row = {f.name: getattr(entry, f.name) for f in fields(entry) if f.name != "response"}
    stored = True
    try:
        await entries.insert_one(dict(row))
    except (PyMongoError, ValueError, TypeError) as exc:  # also BSON encoding errors
        stored = False
        log.error("audit row not stored (%s)", exc.__class__.__name__)
    row["time"] = entry.time.isoformat()
    row["stored"] = stored
    log.info("%s", orjson.dumps(row).decode())
