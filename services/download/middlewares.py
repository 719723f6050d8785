"""Errors to JSON replies, and the audit record of every request that names a carve."""

from __future__ import annotations

import asyncio
import logging

from aiohttp import web
from aiohttp.typedefs import Handler

from services.download import keys
from services.download.archive import RangeNotSatisfiable
from services.download.audit import (
    AUDIT,
    COLLECTION,
    AuditEntry,
    outcome_of,
    record,
)
from shared import keys as shared_keys
from shared.errors import ClientError, CorruptArchive, Unavailable
from shared.protocol import CARVE_ID
from shared.proxies import client_address

log = logging.getLogger(__name__)

# Route names whose requests are audited: every responder request (a listing shows carves too).
AUDITED = frozenset({"list", "carve", "archive", "files", "file", "file_request", "delete"})
# The console's additions (services/download/console_api.py, audit_api.py, login.py).
AUDITED |= {"ticket", "audit", "login", "logout", "login_sso", "login_sso_callback"}


def _error(http_status: int, code: str, message: str, /, **details: object) -> web.Response:
    headers = {"Retry-After": "1"} if http_status in (429, 503) else None
    response = web.json_response(
        {"error": message, "code": code, **details}, status=http_status, headers=headers
    )
    if http_status == 408:
        response.force_close()  # Connection: close; the middleware closes it once answered
    return response


def client_gone(request: web.Request) -> bool:
    transport = request.transport
    return transport is None or transport.is_closing()


def _client_left(
    request: web.Request, entry: AuditEntry | None, exc: BaseException
) -> web.StreamResponse:
    """One log line for a client that went away (its audit line, when audited); nothing is
    sent, there is nobody to read it."""
    if entry is None:
        log.info("%s: client went away (%s)", request.path, exc.__class__.__name__)
        return web.Response(status=499, reason="Client Closed Request")
    entry.outcome = "aborted"
    entry.code = "client_gone"
    return entry.response or web.Response(status=499, reason="Client Closed Request")


async def _answer(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except (Exception, asyncio.CancelledError) as exc:
        entry: AuditEntry | None = request.get(AUDIT)
        if isinstance(exc, OSError) and client_gone(request):
            return _client_left(request, entry, exc)
        if isinstance(exc, ClientError) and entry is not None:
            entry.code = exc.code
        if entry is None or entry.response is None or isinstance(exc, asyncio.CancelledError):
            return _error_answer(request, exc)
        # The headers are out: another answer would land inside the body. Cut it short:
        # the client sees a short body (Content-Length unmet), never a wrong one.
        log.error("%s: failed mid-stream, connection closed: %r", request.path, exc)
        entry.outcome = "aborted"
        if request.transport is not None:
            request.transport.close()
        return entry.response


def _error_answer(request: web.Request, exc: BaseException) -> web.StreamResponse:
    """The JSON answer for an error raised before any byte of the response was sent: one
    rule per branch of the tree in shared.errors."""
    try:
        raise exc
    except ClientError as exc:
        if isinstance(exc, RangeNotSatisfiable):  # the size goes in Content-Range, not the body
            response = _error(exc.status, exc.code, exc.message)
            response.headers["Content-Range"] = f"bytes */{exc.details.get('size', 0)}"
            return response
        return _error(exc.status, exc.code, exc.message, **exc.details)
    except Unavailable as exc:
        log.warning("%s: answering 503: %s", request.path, exc)
        return _error(503, "unavailable", "a backend is unavailable, retry shortly")
    except CorruptArchive as exc:
        log.error("%s: stored archive is damaged: %s", request.path, exc)
        return _error(500, "corrupt_archive", "the stored archive is damaged")
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        return _error(exc.status, exc.reason.lower().replace(" ", "_"), exc.reason)
    except (OSError, asyncio.CancelledError):
        raise  # the client went away: nothing to answer
    except Exception:
        log.exception("%s: unexpected error", request.path)
        return _error(500, "internal_error", "internal error")


@web.middleware
async def responder_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    route = request.match_info.route.name
    if route not in AUDITED:
        return await _answer(request, handler)
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
        response = await _answer(request, handler)
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
        # Shielded: a shutdown that cancels this request still gets its audit row written.
        await asyncio.shield(record(request.app[shared_keys.MONGO_DB][COLLECTION], entry))
