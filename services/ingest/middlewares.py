"""Errors to replies, the way osquery reads them.

osquery ignores the status code: a JSON body means "done, do not retry", a
non-JSON body means "transport failure, retry" (5.22+). So bad input gets a
JSON error and backend trouble gets a short text/plain 503, always before
osquery's 16 s deadline.
"""

from __future__ import annotations

import asyncio
import logging
import time

from aiohttp import web
from aiohttp.typedefs import Handler

from services.ingest import keys
from shared.errors import ClientError, Unavailable

log = logging.getLogger(__name__)


def _retry_later(reason: str) -> web.Response:
    return web.Response(
        status=503, text=f"service unavailable: {reason}\n", headers={"Retry-After": "1"}
    )


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
        body = {"success": False, "error": exc.message, "code": exc.code, **exc.details}
        return web.json_response(body, status=exc.status)
    except Unavailable as exc:
        metrics.unavailable.labels(exc.backend).inc()
        log.warning("%s: %s %s, answering 503", endpoint, exc.backend, exc.reason)
        return _retry_later(f"{exc.backend} {exc.reason}")
    except TimeoutError:
        metrics.unavailable.labels("timeout").inc()
        log.warning("%s: request budget exhausted, answering 503", endpoint)
        return _retry_later("timeout")
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        # An unknown path (a flagfile typo, a trailing space): JSON, so osquery gives up at
        # once instead of retrying a request that can never work.
        metrics.rejections.labels(endpoint, "no_route").inc()
        body = {"success": False, "error": f"{exc.reason}: {request.path}", "code": "no_route"}
        return web.json_response(body, status=exc.status)
    except Exception:
        log.exception("%s: unexpected error", endpoint)
        return web.Response(status=500, text="internal error\n")
    finally:
        metrics.latency.labels(endpoint).observe(time.monotonic() - started)
