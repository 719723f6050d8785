"""The JSON request bodies of the download service (/file_request, login, single sign-on,
download tickets): each read within a size (the app's client_max_size) and a time budget
(CARVE_REQUEST_BODY_TIMEOUT), so a client that trickles its body holds a connection for
seconds, not for ever, then parsed with one wording for every refusal."""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
from aiohttp import web

from services.download import keys
from shared.errors import ClientError, InvalidRequest


class RequestTimeout(ClientError):
    status = 408
    code = "request_timeout"


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
