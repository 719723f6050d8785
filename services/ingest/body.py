"""Reading request bodies with a limit known before the payload arrives, and parsing them.

Nothing here knows what a block is (``services.ingest.accept`` does): a limit
checked on the declared Content-Length before anything is read, a body read
in one growing buffer that stops at its limit, and the JSON object and
request model made of it, every refusal an ``InvalidRequest`` or
``PayloadTooLarge``.
"""

from __future__ import annotations

from typing import TypeVar

import orjson
from aiohttp import web
from pydantic import BaseModel, ValidationError

from shared.errors import InvalidRequest, PayloadTooLarge

Model = TypeVar("Model", bound=BaseModel)


def check_declared_length(request: web.Request, limit: int) -> None:
    """Refuse a body whose Content-Length is over ``limit``, before reading any of it."""
    length = request.content_length
    if length is not None and length > limit:
        raise PayloadTooLarge(f"body of {length} bytes exceeds the limit of {limit} bytes")


async def read_prefix(request: web.Request, size: int) -> bytes:
    """Up to ``size`` bytes from the start of the body (fewer only at its end)."""
    parts: list[bytes] = []
    have = 0
    while have < size:
        part = await request.content.read(size - have)
        if not part:
            break
        parts.append(part)
        have += len(part)
    return b"".join(parts)


async def read_rest(request: web.Request, prefix: bytes, limit: int) -> bytearray:
    """The whole body, given its first bytes; PayloadTooLarge as soon as it passes ``limit``.

    The caller has checked the declared length against ``limit`` already. One growing
    buffer rather than a list of parts joined at the end: a block body then costs about
    its own size in memory, not twice that.
    """
    body = bytearray(prefix)
    while part := await request.content.readany():
        if len(body) + len(part) > limit:
            raise PayloadTooLarge(f"body exceeds the limit of {limit} bytes")
        body += part
    return body


def parse_json_object(body: bytes | bytearray) -> dict[str, object]:
    try:
        value = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise InvalidRequest(f"body is not JSON: {exc}") from exc
    if not isinstance(value, dict):
        raise InvalidRequest("body must be a JSON object")
    return value


def parse_model(model: type[Model], fields: dict[str, object]) -> Model:
    """``fields`` as a request model; InvalidRequest naming the first field refused."""
    try:
        return model.model_validate(fields)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "body"
        raise InvalidRequest(f"{where}: {first['msg']}") from exc
