"""Responder endpoints: carves, their archives, the members of their tars."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hmac
import logging
import re
from collections.abc import AsyncGenerator, AsyncIterator
from datetime import UTC, datetime
from typing import Any

import orjson
from aiohttp import web

from services.download import keys, tickets
from services.download.archive import ByteRange, parse_range, stream_chunks
from services.download.audit import AUDIT
from services.download.auth import Identity
from services.download.lookups import lookup_filters
from services.download.members import clean_member_path
from shared import keys as shared_keys
from shared.carves import (
    COLLECTION,
    ENDED,
    CarveRecord,
    Compression,
    Status,
    blocks_received,
)
from shared.errors import (
    ClientError,
    Conflict,
    Forbidden,
    Gone,
    InvalidRequest,
    NotComplete,
    NotFound,
)
from shared.lifecycle import purge_archive, transition
from shared.mongo import Document, transient_on_outage
from shared.protocol import CARVE_ID

log = logging.getLogger(__name__)

_DIGITS = re.compile(r"[0-9]{1,9}")
MAX_PAGE = 1000
# Routes that take a download ticket (services/download/tickets.py) instead of a token.
TICKET_ROUTES = frozenset({"archive", "file"})


def carve_view(doc: Document) -> dict[str, Any]:
    """The public description of a carve (CarveRecord has no node_key or session_id)."""
    record = CarveRecord.from_doc(doc)
    view = record.model_dump(mode="json")
    view["progress"] = round(record.blocks_received / record.block_count, 4)
    return view


# --- authorization -----------------------------------------------------------------------


def _header_token(request: web.Request) -> str | None:
    if token := request.headers.get("X-Vault-Token"):
        return token.strip()
    scheme, _, value = request.headers.get("Authorization", "").partition(" ")
    return value.strip() if scheme.lower() == "bearer" else None


async def authorize(request: web.Request, token: str | None) -> Identity:
    authorizer = request.app[keys.AUTHORIZER]
    identity = await authorizer.authenticate(token)
    if (entry := request.get(AUDIT)) is not None:
        entry.identify(identity)
    request[keys.IDENTITY] = identity
    authorizer.require_policy(identity)
    return identity


def _carve_id(raw: str) -> str:
    if not CARVE_ID.fullmatch(raw):
        raise InvalidRequest("carve_id must match [A-Za-z0-9][A-Za-z0-9_-]{0,127}")
    return raw


async def _load(request: web.Request, carve_id: str) -> Document:
    with transient_on_outage("carve lookup"):
        doc = await request.app[shared_keys.MONGO_DB][COLLECTION].find_one({"_id": carve_id})
    if doc is None:
        raise NotFound(f"no carve {carve_id}")
    return doc


async def _authorized_carve(request: web.Request) -> Document:
    if "ticket" in request.query and request.match_info.route.name in TICKET_ROUTES:
        # A browser download: the ticket minted by an authorized POST stands for the token.
        carve_id = _carve_id(request.match_info["carve_id"])
        path = request.match_info.get("path")
        identity = await tickets.redeem(request, carve_id, path and clean_member_path(path))
        if (entry := request.get(AUDIT)) is not None:
            entry.identify(identity)
        request[keys.IDENTITY] = identity
        return await _load(request, carve_id)
    await authorize(request, _header_token(request))
    return await _load(request, _carve_id(request.match_info["carve_id"]))


def _complete(doc: Document) -> Document:
    if doc["status"] in ENDED:
        when = doc.get("expired_at") or doc.get("deleted_at")
        raise Gone(
            f"carve {doc['_id']} was {doc['status']}: its bytes are deleted",
            status=doc["status"],
            at=when.isoformat() if when else None,
        )
    if doc["status"] != Status.COMPLETE:
        raise NotComplete(
            f"carve {doc['_id']} is not complete",
            status=doc["status"],
            blocks_received=blocks_received(doc),
            block_count=doc["block_count"],
        )
    return doc


async def delete_carve(request: web.Request) -> web.Response:
    """Delete a carve's bytes on purpose (admin policy); its document stays as a tombstone."""
    authorizer = request.app[keys.AUTHORIZER]
    identity = await authorize(request, _header_token(request))
    authorizer.require_policy(identity, request.app[keys.SETTINGS].vault_admin_policy)
    doc = await _load(request, _carve_id(request.match_info["carve_id"]))
    if doc["status"] in ENDED:
        raise Gone(f"carve {doc['_id']} was already {doc['status']}", status=doc["status"])
    now = datetime.now(UTC)
    fields = {
        "deleted_at": now,
        "deleted_by": identity.display_name or identity.entity_id or identity.accessor,
        "deleted_from": doc["status"],
    }
    db = request.app[shared_keys.MONGO_DB]
    status = Status(doc["status"])
    if not await transition(
        db, doc["_id"], status, Status.DELETED, fields, now, unless_finalizing=True
    ):
        raise Conflict(f"carve {doc['_id']} is being finalized or changed state: try again")
    settings = request.app[keys.SETTINGS]
    # The ingest's session (if it was still receiving) is removed by the janitor's next sweep.
    chunks, freed = await purge_archive(
        db, settings.mongo_bucket, doc["_id"], batch=1000, carve=doc
    )
    log.warning("carve %s deleted by %s: %d chunks", doc["_id"], identity.display_name, chunks)
    view = carve_view(await _load(request, doc["_id"]))
    return web.json_response({**view, "chunks_deleted": chunks, "bytes_freed": freed})


# --- listing -------------------------------------------------------------------------------


def _cursor_encode(doc: Document) -> str:
    raw = orjson.dumps([doc["created_at"].isoformat(), doc["_id"]])
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _cursor_filter(cursor: str) -> Document:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        created, carve_id = orjson.loads(raw)
        when = datetime.fromisoformat(created)
    except (ValueError, TypeError) as exc:
        raise InvalidRequest("cursor is not one this service issued") from exc
    return {"$or": [{"created_at": {"$lt": when}}, {"created_at": when, "_id": {"$lt": carve_id}}]}


def _int_param(request: web.Request, name: str, default: int, high: int) -> int:
    raw = request.query.get(name)
    if raw is None:
        return default
    if not _DIGITS.fullmatch(raw) or not 1 <= int(raw) <= high:
        raise InvalidRequest(f"{name} must be an integer from 1 to {high}")
    return int(raw)


def _list_filter(request: web.Request) -> Document:
    query: Document = lookup_filters(request.query)
    if (status := request.query.get("status")) is not None:
        if status not in {s.value for s in Status}:
            raise InvalidRequest(f"status must be one of {', '.join(s.value for s in Status)}")
        query["status"] = status
    if (since := request.query.get("since")) is not None:
        try:
            when = datetime.fromisoformat(since.replace("Z", "+00:00"))
        except ValueError as exc:
            raise InvalidRequest("since must be an ISO 8601 time") from exc
        if when.tzinfo is None:
            raise InvalidRequest("since must carry a time zone (e.g. 2026-11-27T00:00:00Z)")
        query["created_at"] = {"$gte": when}
    if (cursor := request.query.get("cursor")) is not None:
        query = {"$and": [query, _cursor_filter(cursor)]} if query else _cursor_filter(cursor)
    return query


async def list_carves(request: web.Request) -> web.Response:
    await authorize(request, _header_token(request))
    limit = _int_param(request, "limit", 100, MAX_PAGE)
    query = _list_filter(request)
    carves = request.app[shared_keys.MONGO_DB][COLLECTION]
    with transient_on_outage("carve listing"):
        cursor = carves.find(query).sort([("created_at", -1), ("_id", -1)]).limit(limit + 1)
        docs = await cursor.to_list()
    page = docs[:limit]
    next_cursor = _cursor_encode(page[-1]) if len(docs) > limit else None
    return web.json_response(
        {"carves": [carve_view(d) for d in page], "next_cursor": next_cursor},
        dumps=lambda obj: orjson.dumps(obj).decode(),
    )


async def get_carve(request: web.Request) -> web.Response:
    doc = await _authorized_carve(request)
    return web.json_response(carve_view(doc))


# --- the archive ---------------------------------------------------------------------------


def _archive_headers(doc: Document) -> dict[str, str]:
    zstd = doc.get("compression") == Compression.ZSTD
    return {
        "Content-Type": "application/zstd" if zstd else "application/x-tar",
        "Content-Disposition": f'attachment; filename="{doc["filename"]}"',
        "ETag": f'"{doc["sha256"]}"',
        "X-Carve-SHA256": doc["sha256"],
        "Accept-Ranges": "bytes",
    }


def _matches(header: str | None, etag: str) -> bool:
    if header is None:
        return False
    tags = [t.strip().removeprefix("W/") for t in header.split(",")]
    return "*" in tags or etag in tags


def _chunks(
    request: web.Request, doc: Document, byte_range: ByteRange
) -> AsyncGenerator[memoryview, None]:
    settings = request.app[keys.SETTINGS]
    return stream_chunks(
        request.app[shared_keys.MONGO_DB][f"{settings.mongo_bucket}.chunks"],
        doc["_id"],
        chunk_size=doc["block_size"],
        carve_size=doc["carve_size"],
        byte_range=byte_range,
        batch_bytes=settings.download_batch_bytes,
    )


async def send_archive(request: web.Request, doc: Document) -> web.StreamResponse:
    """The archive of a complete carve, whole or one range, streamed chunk by chunk."""
    _complete(doc)
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
        await _start(request, response)
        return response
    async with contextlib.aclosing(_chunks(request, doc, byte_range)) as pieces:
        # The first piece is fetched before the headers go out: MongoDB down is still a 503 here.
        first = await anext(pieces)
        await _start(request, response)
        # An error from here on cuts the response short (responder_errors).
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
    timeout = request.app[keys.SETTINGS].download_write_timeout
    await _write(response, first, timeout)
    entry.bytes_sent += len(first)
    async for piece in rest:
        # Waits while the client is slower than MongoDB; a client that stops reading is cut.
        await _write(response, piece, timeout)
        entry.bytes_sent += len(piece)


async def _write(response: web.StreamResponse, piece: bytes | memoryview, timeout: float) -> None:
    # asyncio.timeout, not wait_for: no extra task per piece (measured: wait_for cost 10 %).
    async with asyncio.timeout(timeout):
        await response.write(piece)


async def get_archive(request: web.Request) -> web.StreamResponse:
    doc = await _authorized_carve(request)
    with request.app[keys.STREAMS].hold():
        return await send_archive(request, doc)


class RequestTimeout(ClientError):
    status = 408
    code = "request_timeout"


async def file_request(request: web.Request) -> web.StreamResponse:
    """The original server's endpoint: token and carve id in a JSON body."""
    timeout = request.app[keys.SETTINGS].file_request_timeout
    try:
        async with asyncio.timeout(timeout):
            body = await request.read()  # the whole body, however it was split (client_max_size)
    except web.HTTPRequestEntityTooLarge as exc:
        raise InvalidRequest("body too large") from exc
    except TimeoutError as exc:
        raise RequestTimeout(f"the request body did not arrive within {timeout} s") from exc
    try:
        fields = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise InvalidRequest("body must be JSON") from exc
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
    doc = await _load(request, _carve_id(fields["file_carve_guid"]))
    with request.app[keys.STREAMS].hold():
        return await send_archive(request, doc)


async def _start(request: web.Request, response: web.StreamResponse) -> None:
    await response.prepare(request)
    request[AUDIT].start(response)
