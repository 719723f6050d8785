"""Errors to replies, chosen by what the osquery host must conclude from them.

osquery ignores the status code: a JSON (or empty) body is a success, any
other body a transport failure that 5.22+ retries twice before it ends the
carve ``DATA POST FAILED`` (docs/osquery-protocol.md). So:

- a refused start: JSON without ``session_id``; osquery fails the carve at once;
- a refused block (it can never be stored): text/plain with the reason and a 4xx
  status, so the host stops sending and its ``carves`` table says the carve failed
  (a JSON error would read as "stored": the host would send every remaining block
  for nothing and record SUCCESS);
- an unknown path: text/plain 404, for the same reason (a typo in the block path
  must not look like success);
- backend trouble: a short text/plain 503, always before osquery's 16 s deadline.
"""

from __future__ import annotations

import asyncio
import logging
import time

from aiohttp import web
from aiohttp.typedefs import Handler

from services.ingest import keys
from services.ingest.routes import BLOCK_PATHS
from shared.errors import ClientError, Unavailable

log = logging.getLogger(__name__)


def _retry_later(reason: str) -> web.Response:
    return web.Response(
        status=503, text=f"service unavailable: {reason}\n", headers={"Retry-After": "1"}
    )


def refused_as_text(status: int, code: str, message: str) -> web.Response:
    """A refusal osquery counts as a failed request: never valid JSON (it starts with a
    letter), never rendered (nosniff), one line."""
    text = f"refused: {code}: {message}".replace("\r", " ").replace("\n", " ")
    return web.Response(
        status=status, text=text + "\n", headers={"X-Content-Type-Options": "nosniff"}
    )


def _is_block_endpoint(request: web.Request) -> bool:
    return request.match_info.route.name in BLOCK_PATHS


@web.middleware
async def osquery_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    app = request.app
    metrics = app[keys.METRICS]
    endpoint = request.match_info.route.name or "other"
    started = time.monotonic()
    try:
        async with asyncio.timeout(app[keys.SETTINGS].request_timeout):
            return await handler(request)
    except ClientError as exc:
        metrics.rejections.labels(endpoint, exc.code).inc()
        log.info("%s refused: %s %s", endpoint, exc.code, exc.message)
        if _is_block_endpoint(request):
            return refused_as_text(exc.status, exc.code, exc.message)
        body = {"success": False, "error": exc.message, "code": exc.code, **exc.details}
        return web.json_response(body, status=exc.status)
    except Unavailable as exc:
        metrics.unavailable.labels(exc.backend.lower()).inc()
        log.warning("%s: %s %s, answering 503", endpoint, exc.backend, exc.reason)
        return _retry_later(f"{exc.backend} {exc.reason}")
    except TimeoutError:
        metrics.unavailable.labels("timeout").inc()
        log.warning("%s: request budget exhausted, answering 503", endpoint)
        return _retry_later("timeout")
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        # An unknown path (a flagfile typo, a trailing space): not JSON, so the carve fails
        # on the host whichever of its two paths is wrong (JSON would make every block of a
        # mistyped block path look stored). The path is the host's text: not echoed back.
        metrics.rejections.labels(endpoint, "no_route").inc()
        return refused_as_text(
            exc.status, "no_route", f"{exc.reason}: not an osquery carve endpoint"
        )
    except Exception:
        log.exception("%s: unexpected error", endpoint)
        return web.Response(status=500, text="internal error\n")
    finally:
        metrics.latency_of(endpoint).observe(time.monotonic() - started)
