"""Responder endpoints on a carve's archive: whole or one byte range, by token or ticket,
and the original server's ``POST /file_request``."""

from __future__ import annotations

import contextlib
import hmac
from collections.abc import AsyncGenerator, AsyncIterator

from aiohttp import web

from services.download import keys
from services.download.archive import ByteRange, parse_range, stream_chunks
from services.download.audit import AUDIT
from services.download.auth import (
    authorize,
    authorized_carve,
    checked_carve_id,
    load_carve,
    require_complete,
)
from services.download.bodies import read_json
from services.download.pace import paced, write_piece
from shared import keys as shared_keys
from shared.carves import CarveDoc, Compression
from shared.crypto.context import KEYRING
from shared.crypto.reader import CarveReader
from shared.errors import Forbidden, InvalidRequest


def _archive_headers(doc: CarveDoc) -> dict[str, str]:
    zstd = doc.get("compression") == Compression.ZSTD
    sha256 = doc["sha256"] or ""  # set on every complete carve
    return {
        "Content-Type": "application/zstd" if zstd else "application/x-tar",
        "Content-Disposition": f'attachment; filename="{doc["filename"]}"',
        "ETag": f'"{sha256}"',
        "X-Carve-SHA256": sha256,
        "Accept-Ranges": "bytes",
    }


def _matches(header: str | None, etag: str) -> bool:
    if header is None:
        return False
    tags = [t.strip().removeprefix("W/") for t in header.split(",")]
    return "*" in tags or etag in tags


async def open_reader(request: web.Request, doc: CarveDoc) -> CarveReader:
    """The carve's chunk reader (its data key unwrapped: Vault away is a 503 here, before
    any header went out; a destroyed key is 410 ``shredded``)."""
    settings = request.app[keys.SETTINGS]
    db = request.app[shared_keys.MONGO_DB]
    return await CarveReader.open(db, settings.mongo_bucket, doc, request.app[KEYRING])


def _chunks(
    request: web.Request, reader: CarveReader, byte_range: ByteRange
) -> AsyncGenerator[memoryview, None]:
    settings = request.app[keys.SETTINGS]
    return stream_chunks(reader, byte_range=byte_range, batch_bytes=settings.download_batch_bytes)


async def send_archive(request: web.Request, doc: CarveDoc) -> web.StreamResponse:
    """The archive of a complete carve, whole or one range, streamed chunk by chunk."""
    require_complete(doc)
    size: int = doc["carve_size"]
    headers = _archive_headers(doc)
    conditional = request.method in ("GET", "HEAD")  # If-None-Match means 412 on a POST
    if conditional and _matches(request.headers.get("If-None-Match"), headers["ETag"]):
        return web.Response(status=304, headers={"ETag": headers["ETag"]})
    byte_range = None
    if_range = request.headers.get("If-Range")
    if if_range is None or if_range.strip() == headers["ETag"]:
        byte_range = parse_range(request.headers.get("Range"), size)
    response = web.StreamResponse(status=200 if byte_range is None else 206, headers=headers)
    byte_range = byte_range or ByteRange(0, size - 1)
    if response.status == 206:
        response.headers["Content-Range"] = byte_range.content_range(size)
    response.content_length = byte_range.length
    if request.method == "HEAD":
        await start_stream(request, response)
        return response
    reader = await open_reader(request, doc)
    async with contextlib.aclosing(_chunks(request, reader, byte_range)) as pieces:
        # The first piece is fetched before the headers go out: MongoDB down is still a 503 here.
        first = await anext(pieces)
        await start_stream(request, response)
        # An error from here on cuts the response short (errors.answer_errors).
        await _write_all(request, response, first, pieces)
    await response.write_eof()
    return response


async def _write_all(
    request: web.Request,
    response: web.StreamResponse,
    first: memoryview,
    rest: AsyncIterator[memoryview],
) -> None:
    entry = request[AUDIT]
    with paced(request) as pace:
        await write_piece(request, response, first, pace)
        entry.bytes_sent += len(first)
        async for piece in rest:
            # Waits while the client is slower than MongoDB; a client below the floor is cut.
            await write_piece(request, response, piece, pace)
            entry.bytes_sent += len(piece)


async def get_archive(request: web.Request) -> web.StreamResponse:
    doc = await authorized_carve(request)
    with request.app[keys.STREAMS].hold(request[keys.IDENTITY].share_key):
        return await send_archive(request, doc)


async def file_request(request: web.Request) -> web.StreamResponse:
    """The original server's endpoint: token and carve id in a JSON body."""
    fields = await read_json(request)
    if not isinstance(fields, dict) or not isinstance(fields.get("file_carve_guid"), str):
        raise InvalidRequest("file_carve_guid (string) is required")
    request[AUDIT].carve_id = fields["file_carve_guid"][:256]
    token, accessor = fields.get("token"), fields.get("token_accessor")
    if not isinstance(token, str) or not isinstance(accessor, str | None):
        raise InvalidRequest("token must be a string (and token_accessor, when given)")
    identity = await authorize(request, token)
    if accessor and not hmac.compare_digest(accessor, identity.accessor):
        request.app[keys.METRICS].auth_failures.labels("accessor").inc()
        raise Forbidden("token_accessor is not the accessor of this token")
    doc = await load_carve(request, checked_carve_id(fields["file_carve_guid"]))
    with request.app[keys.STREAMS].hold(identity.share_key):
        return await send_archive(request, doc)


async def start_stream(request: web.Request, response: web.StreamResponse) -> None:
    await response.prepare(request)
    request[AUDIT].start(response)
