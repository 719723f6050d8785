"""Errors to JSON replies: one rule per branch of the tree in ``shared.errors``.

An error raised before any byte of the response went out gets its JSON answer; one raised
mid-stream (the headers are out) cuts the response short instead; a client that went away
gets nothing (there is nobody to read it). The audit middleware (``audit.audited``) sits
outside this one and records what was answered.
"""

from __future__ import annotations

import asyncio
import logging

from aiohttp import web
from aiohttp.typedefs import Handler

from services.download import keys
from services.download.archive import RangeNotSatisfiable
from services.download.audit import AUDIT, AuditEntry, client_gone
from shared.crypto.chunks import ChunkIntegrityError
from shared.errors import ClientError, CorruptArchive, Unavailable

log = logging.getLogger(__name__)


def _error(http_status: int, code: str, message: str, /, **details: object) -> web.Response:
    headers = {"Retry-After": "1"} if http_status in (429, 503) else None
    response = web.json_response(
        {"error": message, "code": code, **details}, status=http_status, headers=headers
    )
    if http_status == 408:
        response.force_close()  # Connection: close; the middleware closes it once answered
    return response


def _client_left(
    request: web.Request, entry: AuditEntry | None, exc: BaseException
) -> web.StreamResponse:
    """One log line for a client that went away (its audit line, when audited); nothing is
    sent, there is nobody to read it."""
    if entry is None:
        log.info("%s: client went away (%s)", request.path, exc.__class__.__name__)
        return web.Response(status=499, reason="Client Closed Request")
    entry.outcome = "aborted"
    entry.code = entry.code or "client_gone"  # or too_slow: cut off by services.download.pace
    return entry.response or web.Response(status=499, reason="Client Closed Request")


@web.middleware
async def answer_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """The handler's answer, or the one its error calls for (see the module's docstring)."""
    try:
        return await handler(request)
    except (Exception, asyncio.CancelledError) as exc:
        entry: AuditEntry | None = request.get(AUDIT)
        if isinstance(exc, OSError) and client_gone(request):
            return _client_left(request, entry, exc)
        if isinstance(exc, ClientError) and entry is not None:
            entry.code = exc.code
        if isinstance(exc, ChunkIntegrityError) and entry is not None:
            entry.code = "integrity_error"  # in the audit row, also when cut mid-stream
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
        request.app[keys.METRICS].unavailable.labels(exc.backend.lower()).inc()
        log.warning("%s: answering 503: %s", request.path, exc)
        return _error(503, "unavailable", "a backend is unavailable, retry shortly")
    except ChunkIntegrityError as exc:
        # Altered, moved or swapped chunks: never served. Counted (carve_integrity_errors_total)
        # by the reader; the audit row carries the code.
        log.error("%s: stored chunk failed authentication: %s", request.path, exc)
        return _error(500, "integrity_error", "a stored chunk failed its integrity check")
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
