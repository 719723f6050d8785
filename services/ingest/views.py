"""The two osquery endpoints: start a carve, take a block."""

from __future__ import annotations

import logging

from aiohttp import web
from pydantic import ValidationError

from services.ingest import keys
from services.ingest.body import (
    PEEK_BYTES,
    check_declared_length,
    parse_json_object,
    peek_block_id,
    read_prefix,
    read_rest,
)
from services.ingest.sessions import Session, redact
from shared.errors import Forbidden, InvalidRequest, PayloadTooLarge
from shared.protocol import (
    BlockRequest,
    StartRequest,
    decode_block_data,
    expected_block_length,
    geometry_error,
    max_block_body,
    peek_session_id,
)
from shared.queue import Block

log = logging.getLogger(__name__)

START_BODY_LIMIT = 64 * 1024
OK = {"success": True}


def _validation_message(exc: ValidationError) -> str:
    first = exc.errors()[0]
    where = ".".join(str(p) for p in first["loc"]) or "body"
    return f"{where}: {first['msg']}"


def _node_key_header(request: web.Request) -> str:
    scheme, _, value = request.headers.get("Authorization", "").partition(" ")
    return value.strip() if scheme == "NodeKey" else ""


async def start_upload(request: web.Request) -> web.Response:
    settings = request.app[keys.SETTINGS]
    check_declared_length(request, START_BODY_LIMIT)
    body = await read_rest(request, b"", START_BODY_LIMIT)
    try:
        start = StartRequest.model_validate(parse_json_object(body))
    except ValidationError as exc:
        raise InvalidRequest(_validation_message(exc)) from exc
    if start.block_size > settings.max_block_size:
        raise PayloadTooLarge(
            f"block_size {start.block_size} exceeds the maximum of {settings.max_block_size}"
        )
    if start.carve_size > settings.max_carve_size:
        raise PayloadTooLarge(
            f"carve_size {start.carve_size} exceeds the maximum of {settings.max_carve_size}"
        )
    if problem := geometry_error(start.block_count, start.block_size, start.carve_size):
        raise InvalidRequest(problem)
    header_key = _node_key_header(request)
    if header_key and start.node_key and header_key != start.node_key:
        raise Forbidden("Authorization node key differs from the body's node_key")
    session_id, resumed = await request.app[keys.SESSIONS].start(start)
    request.app[keys.METRICS].starts.labels("resumed" if resumed else "created").inc()
    log.info(
        "carve %s %s: %d bytes in %d blocks of %d, session %s",
        start.carve_id,
        "resumed" if resumed else "started",
        start.carve_size,
        start.block_count,
        start.block_size,
        redact(session_id),
    )
    return web.json_response({"session_id": session_id, "success": True})


async def _read_block_request(request: web.Request) -> tuple[BlockRequest, Session, bool]:
    """Parse a block body, reading no more than the session's block size allows."""
    settings = request.app[keys.SETTINGS]
    sessions = request.app[keys.SESSIONS]
    global_limit = max_block_body(settings.max_block_size)
    check_declared_length(request, global_limit)
    prefix = await read_prefix(request, PEEK_BYTES)
    session: Session | None = None
    seen = False
    hint = peek_block_id(prefix)
    if (peeked := peek_session_id(prefix)) is not None:
        session, seen = await sessions.get(peeked, hint)
    limit = max_block_body(session.block_size) if session else global_limit
    body = await read_rest(request, prefix, limit)
    try:
        block = BlockRequest.model_validate(parse_json_object(body))
    except ValidationError as exc:
        raise InvalidRequest(_validation_message(exc)) from exc
    if session is None or session.session_id != block.session_id:
        session, seen = await sessions.get(block.session_id, block.block_id)
    elif hint != block.block_id:
        seen = await sessions.seen(session.session_id, block.block_id)
    return block, session, seen


def _check_block(request: web.Request, block: BlockRequest, session: Session) -> bytes:
    """The decoded payload, once the block is known to belong where it claims."""
    if block.request_id != session.request_id:
        raise InvalidRequest("request_id does not match the session")
    if not session.node_key_matches(_node_key_header(request)):
        raise Forbidden("node key does not match the one that started the carve")
    if block.block_id >= session.block_count:
        raise InvalidRequest(f"block_id {block.block_id} out of range [0, {session.block_count})")
    try:
        data = decode_block_data(block.data)
    except ValueError as exc:
        raise InvalidRequest(str(exc)) from exc
    want = expected_block_length(
        block.block_id, session.block_count, session.block_size, session.carve_size
    )
    if len(data) != want:
        raise InvalidRequest(f"block {block.block_id} decodes to {len(data)} bytes, want {want}")
    return data


async def upload_block(request: web.Request) -> web.Response:
    app = request.app
    metrics = app[keys.METRICS]
    request_block, session, seen = await _read_block_request(request)
    data = _check_block(request, request_block, session)
    block_id = request_block.block_id
    # The base64 text is a third larger than the block: do not hold it while the broker confirms.
    del request_block
    if seen:
        metrics.blocks.labels("duplicate").inc()
        return web.json_response(OK)
    await app[keys.PUBLISHER].publish(
        Block(
            carve_id=session.carve_id,
            block_id=block_id,
            block_count=session.block_count,
            block_size=session.block_size,
            carve_size=session.carve_size,
            data=data,
        )
    )
    fresh = await app[keys.SESSIONS].mark(session.session_id, block_id)
    metrics.blocks.labels("accepted" if fresh else "duplicate").inc()
    if fresh:
        metrics.block_bytes.inc(len(data))
    return web.json_response(OK)
