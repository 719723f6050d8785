"""Who touched which carve: one ``audit`` document and one log line per request.

Allowed and denied requests alike, by the ``audited`` middleware (outside the errors
middleware, ``services.download.errors``: it records the answer that one chose).
Recording never fails the request: when MongoDB cannot take the row, the log line still
carries it (with ``stored: false``) for the log pipeline to keep.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from dataclasses import dataclass, field, fields
from datetime import UTC, datetime

import orjson
from aiohttp import web
from aiohttp.typedefs import Handler
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.errors import PyMongoError

from services.download import keys
from services.download.tokens import Identity
from shared import keys as shared_keys
from shared.mongo import Document
from shared.protocol import CARVE_ID
from shared.proxies import client_address
from shared.timefmt import rfc3339

COLLECTION = "audit"
log = logging.getLogger("carve.audit")

# Route names whose requests are audited: every responder request (a listing shows carves too).
AUDITED = frozenset(
    {"list", "summary", "carve", "archive", "files", "file", "member", "file_request", "delete"}
)
# The console's additions (services/download/console_api.py, audit_api.py, login.py).
AUDITED |= {"ticket", "audit", "login", "logout", "login_sso", "login_sso_callback"}
AUDITED |= {"webhooks"}  # webhooks_api.py
AUDITED |= {"campaign", "export", "export_ticket"}  # a request id's carves, their ZIP
AUDITED |= {"triage", "triage_since"}  # triage_api.py
AUDITED |= {"hold", "release", "expiry", "cases"}  # holds_api.py
AUDITED |= {"custody", "custody_keys"}  # custody.py
# Views that show metadata only, which a console refreshes on its own: audited the first time
# an identity asks for one, and again once the window has passed (``Repeats``).
REPEATABLE = frozenset({"list", "summary", "carve", "campaign"})
REPEAT_KEYS = 4096
OPTIONAL = ("request_id", "carve_ids", "justification")  # fields a row has only when they are set


class Repeats:
    """Which views each identity saw lately: a bounded map (identity, view) -> when audited.

    Per process: with several replicas behind a balancer, a poll may be audited once per
    replica per window. Only allowed requests count; a refusal is always audited.
    """

    def __init__(self, window: float) -> None:
        self.window = window
        self._seen: OrderedDict[tuple[str, str, str], float] = OrderedDict()

    def again(self, entry: AuditEntry, view: str) -> bool:
        """True when ``entry`` repeats a view audited within the window (then skip it)."""
        if self.window <= 0 or entry.action not in REPEATABLE or entry.outcome != "allowed":
            return False
        who = entry.entity_id or entry.accessor or entry.display_name or ""
        key, now = (who, entry.action, view), time.monotonic()
        last = self._seen.get(key)
        if last is not None and now - last < self.window:
            return True
        self._seen[key] = now
        self._seen.move_to_end(key)
        while len(self._seen) > REPEAT_KEYS:
            self._seen.popitem(last=False)
        return False


REPEATS = web.AppKey("audit_repeats", Repeats)


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
    # A campaign's request id, and the carves an export held (only on those rows).
    request_id: str | None = None
    carve_ids: list[str] | None = None
    # Why the responder downloads (services/download/justification.py), when they said.
    justification: str | None = None
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
    for name in OPTIONAL:
        if row[name] is None:
            del row[name]
    stored = True
    try:
        await entries.insert_one(dict(row))
    except (PyMongoError, ValueError, TypeError) as exc:  # also BSON encoding errors
        stored = False
        log.error("audit row not stored (%s)", exc.__class__.__name__)
    row["time"] = rfc3339(entry.time)
    row["stored"] = stored
    log.info("%s", orjson.dumps(row).decode())


def client_gone(request: web.Request) -> bool:
    """True once the client's connection is closed or closing."""
    transport = request.transport
    return transport is None or transport.is_closing()


@web.middleware
async def audited(request: web.Request, handler: Handler) -> web.StreamResponse:
    """The audit row of a request to an AUDITED route, written once its answer is sent."""
    route = request.match_info.route.name
    if route not in AUDITED:
        return await handler(request)
    settings = request.app[keys.SETTINGS]
    raw_id = request.match_info.get("carve_id")
    entry = AuditEntry(
        action=route,
        client=client_address(request, settings.proxy_networks),
        # An id that cannot be a carve's is refused with 400; keep only a short prefix of it.
        carve_id=raw_id if raw_id is None or CARVE_ID.fullmatch(raw_id) else raw_id[:64],
    )
    request[AUDIT] = entry
    metrics = request.app[keys.METRICS]
    metrics.active.inc()
    try:
        response = await handler(request)
        entry.status = response.status
        if entry.outcome != "aborted":
            entry.outcome = outcome_of(response.status)
        if not response.prepared and not client_gone(request):
            # Send it now, so the audit write below does not delay the answer.
            await response.prepare(request)
            await response.write_eof()
        if response.status == 408 and request.transport is not None:
            request.transport.close()  # the body never came: nothing more to read from it
        return response
    except (OSError, asyncio.CancelledError):
        entry.outcome = "aborted"  # the client went away, or the server is shutting down
        raise
    finally:
        metrics.active.dec()
        metrics.requests.labels(route, entry.outcome).inc()
        metrics.bytes_sent.labels(route).inc(entry.bytes_sent)
        if request.app[REPEATS].again(entry, request.path_qs):
            metrics.audit_repeats.labels(route).inc()
        else:
            # Shielded: a shutdown that cancels this request still gets its audit row written.
            await asyncio.shield(record(request.app[shared_keys.MONGO_DB][COLLECTION], entry))
