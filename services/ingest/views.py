"""The two osquery endpoints: start a carve, take a block."""

from __future__ import annotations

import logging
from dataclasses import dataclass

from aiohttp import web
from pydantic import ValidationError

from services.ingest import keys
from services.ingest.body import (
    PEEK_BYTES,
    check_declared_length,
    parse_json_object,
    peek_block_id,
    peek_session_id,
    read_prefix,
    read_rest,
    split_block_body,
)
from services.ingest.device import Device, device_of, host_identity
from services.ingest.sessions import Marked, Session, redact
from services.ingest.settings import IngestSettings
from shared.carves import Origin, digest
from shared.errors import Forbidden, InvalidRequest, PayloadTooLarge
from shared.protocol import (
    BlockRequest,
    StartRequest,
    decode_block_data,
    expected_block_length,
    geometry_error,
    max_block_body,
)
from shared.proxies import client_address
from shared.queue import Block

log = logging.getLogger(__name__)

START_BODY_LIMIT = 64 * 1024
# Every accepted block gets the same reply: encoded once, not per request.
OK_BODY = b'{"success":true}'


def _validation_message(exc: ValidationError) -> str:
    first = exc.errors()[0]
    where = ".".join(str(p) for p in first["loc"]) or "body"
    return f"{where}: {first['msg']}"


def _node_key_header(request: web.Request) -> str:
    scheme, _, value = request.headers.get("Authorization", "").partition(" ")
    return value.strip() if scheme == "NodeKey" else ""


def _check_geometry(start: StartRequest, settings: IngestSettings) -> None:
    """Refuse what no real client declares, or what this deployment does not take."""
    if start.block_size > settings.max_block_size:
        raise PayloadTooLarge(
            f"block_size {start.block_size} exceeds the maximum of {settings.max_block_size}"
        )
    if start.block_size < settings.min_block_size:
        raise InvalidRequest(
            f"block_size {start.block_size} is below the minimum of {settings.min_block_size}"
        )
    if start.block_count > settings.max_block_count:
        raise InvalidRequest(
            f"block_count {start.block_count} exceeds the maximum of {settings.max_block_count}"
        )
    if start.carve_size > settings.max_carve_size:
        raise PayloadTooLarge(
            f"carve_size {start.carve_size} exceeds the maximum of {settings.max_carve_size}"
        )
    if problem := geometry_error(start.block_count, start.block_size, start.carve_size):
        raise InvalidRequest(problem)


def _origin(request: web.Request, start: StartRequest, device: Device | None) -> Origin:
    """The node key (from the body, else the header) and the device that started a carve."""
    header_key = _node_key_header(request)
    if header_key and start.node_key and header_key != start.node_key:
        raise Forbidden("Authorization node key differs from the body's node_key")
    node_key_sha256 = digest(start.node_key or header_key)
    trusted = request.app[keys.SETTINGS].proxy_networks
    return Origin(
        node_key_sha256=node_key_sha256,
        node_key_in_header=bool(header_key),
        device=device.to_doc() if device else None,
        host=host_identity(device, node_key_sha256, client_address(request, trusted)),
    )


async def start_upload(request: web.Request) -> web.Response:
    settings = request.app[keys.SETTINGS]
    body = await read_rest(request, b"", START_BODY_LIMIT)
    try:
        start = StartRequest.model_validate(parse_json_object(body))
    except ValidationError as exc:
        raise InvalidRequest(_validation_message(exc)) from exc
    _check_geometry(start, settings)
    device = device_of(request, settings.proxy_networks)
    origin = _origin(request, start, device)
    session_id, resumed = await request.app[keys.SESSIONS].start(start, origin)
    request.app[keys.METRICS].starts.labels("resumed" if resumed else "created").inc()
    log.info(
        "carve %s %s: %d bytes in %d blocks of %d, session %s, device %s",
        start.carve_id,
        "resumed" if resumed else "started",
        start.carve_size,
        start.block_count,
        start.block_size,
        redact(session_id),
        device.common_name if device else "-",
    )
    return web.json_response({"session_id": session_id, "success": True})


@dataclass
class _Peeked:
    """What the first bytes of a block body told: its session (if found) and the body limit."""

    prefix: bytes
    session: Session | None
    seen: bool
    block_id: int | None  # read from the first bytes (the full parse confirms it)
    limit: int


async def _peek(request: web.Request) -> _Peeked:
    settings = request.app[keys.SETTINGS]
    global_limit = max_block_body(settings.max_block_size)
    check_declared_length(request, global_limit)
    prefix = await read_prefix(request, PEEK_BYTES)
    block_id = peek_block_id(prefix)
    if (peeked := peek_session_id(prefix)) is None:
        return _Peeked(prefix, None, False, block_id, global_limit)
    session, seen = await request.app[keys.SESSIONS].get(peeked, block_id)
    return _Peeked(prefix, session, seen, block_id, max_block_body(session.block_size))


@dataclass
class _Received:
    """A parsed block request; its payload already decoded when the parser could."""

    block: BlockRequest
    decoded: bytes | None  # None: the payload is still block.data, base64
    session: Session
    seen: bool

    def payload(self) -> bytes:
        if self.decoded is not None:
            return self.decoded
        try:
            return decode_block_data(self.block.data)
        except ValueError as exc:
            raise InvalidRequest(str(exc)) from exc


async def _read_block_request(request: web.Request, peeked: _Peeked) -> _Received:
    """Parse a block body, reading no more than the session's block size allows."""
    sessions = request.app[keys.SESSIONS]
    body = await read_rest(request, peeked.prefix, peeked.limit)
    fields, decoded = split_block_body(body)
    try:
        block = BlockRequest.model_validate(fields)
    except ValidationError as exc:
        raise InvalidRequest(_validation_message(exc)) from exc
    session, seen = peeked.session, peeked.seen
    if session is None or session.session_id != block.session_id:
        session, seen = await sessions.get(block.session_id, block.block_id)
        seen = seen and block.block_id < session.block_count
    elif peeked.block_id != block.block_id and block.block_id < session.block_count:
        # (Out of range: refused by _check_block; Redis would refuse the bit offset.)
        seen = await sessions.seen(session.session_id, block.block_id)
    return _Received(block, decoded, session, seen)


def _check_block(request: web.Request, received: _Received) -> bytes:
    """The decoded payload, once the block is known to belong where it claims."""
    block, session = received.block, received.session
    if block.request_id != session.request_id:
        raise InvalidRequest("request_id does not match the session")
    if not session.node_key_matches(_node_key_header(request)):
        raise Forbidden("node key missing or not the one that started the carve")
    if session.device_sha256:
        device = device_of(request, request.app[keys.SETTINGS].proxy_networks)
        if not session.device_matches(device.fingerprint_sha256 if device else ""):
            raise Forbidden("block sent with another device certificate than the carve's start")
    if block.block_id >= session.block_count:
        raise InvalidRequest(f"block_id {block.block_id} out of range [0, {session.block_count})")
    data = received.payload()
    want = expected_block_length(
        block.block_id, session.block_count, session.block_size, session.carve_size
    )
    if len(data) != want:
        raise InvalidRequest(f"block {block.block_id} decodes to {len(data)} bytes, want {want}")
    return data


async def upload_block(request: web.Request) -> web.Response:
    app = request.app
    peeked = await _peek(request)
    # Memory: the body, its decoded block and the broker's frames stay until the confirm.
    async with app[keys.BUDGET].hold(request.content_length or peeked.limit):
        received = await _read_block_request(request, peeked)
        del peeked
        data = _check_block(request, received)
        session, block_id, seen = received.session, received.block.block_id, received.seen
        # The body is a third larger than the block: let it go before the broker's confirm.
        del received
        fresh = False if seen else await _store(app, session, block_id, data)
    metrics = app[keys.METRICS]
    if not fresh:
        metrics.blocks.labels("duplicate").inc()
    else:
        metrics.blocks.labels("accepted").inc()
        metrics.block_bytes.inc(len(data))
    return web.Response(body=OK_BODY, content_type="application/json")


async def _store(app: web.Application, session: Session, block_id: int, data: bytes) -> bool:
    """Publish, and once confirmed record the block; False if it was a duplicate.

    The block that completes the carve's set also publishes the durable "carve fully
    received" trigger before the host gets its reply, so no crash can lose it: an
    assembler finalizes the carve from it, whatever happened to the others' memory.
    """
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
    sessions = app[keys.SESSIONS]
    marked = await sessions.mark(session.session_id, block_id)
    if marked is Marked.COMPLETES:
        await app[keys.PUBLISHER].publish_received(session.carve_id)
        await sessions.received(session.session_id)
    return marked is not Marked.DUPLICATE
