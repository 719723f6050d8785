"""The JSON request bodies of the download service (/file_request, login, single sign-on,
download tickets): each read within a size (the app's client_max_size) and a time budget
(CARVE_REQUEST_BODY_TIMEOUT), so a client that trickles its body holds a connection for
seconds, not for ever, then parsed with one wording for every refusal.

Every POST must say ``Content-Type: application/json`` (``json_posts``), with a body or
without: a browser sends that type across origins only after a CORS preflight, which this
service never grants, so a page on another site cannot make a responder's browser post to
the API (an HTML form can only send form or text types). Without it, a form post from any
web page could spend the responder's own login attempts and lock them out.
"""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
from aiohttp import web
from aiohttp.typedefs import Handler

from services.download import keys
from shared.errors import ClientError, InvalidRequest

JSON = "application/json"


class RequestTimeout(ClientError):
    status = 408
    code = "request_timeout"


class UnsupportedMediaType(ClientError):
    status = 415
    code = "unsupported_media_type"


@web.middleware
async def json_posts(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Refuses (415) a POST to a route of the API that does not say it sends JSON."""
    routed = request.match_info.http_exception is None
    if routed and request.method == "POST" and request.content_type != JSON:
        raise UnsupportedMediaType(f"send Content-Type: {JSON} (POST bodies are JSON)")
    return await handler(request)


async def read_body(request: web.Request) -> bytes:
    """The whole body, however the client split it; refused when too large or too slow."""
    timeout = request.app[keys.SETTINGS].request_body_timeout
    try:
        async with asyncio.timeout(timeout):
            return await request.read()
    except web.HTTPRequestEntityTooLarge as exc:
        raise InvalidRequest("body too large") from exc
    except TimeoutError as exc:
        raise RequestTimeout(f"the request body did not arrive within {timeout} s") from exc


def parse_json(body: bytes, shape: str = "") -> Any:
    """``body`` decoded; ``shape`` (e.g. '{"code": ..., "state": ...}') completes the refusal."""
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise InvalidRequest(
            f"body must be JSON: {shape}" if shape else "body must be JSON"
        ) from exc


async def read_json(request: web.Request, shape: str = "") -> Any:
    return parse_json(await read_body(request), shape)
