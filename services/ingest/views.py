"""The two osquery endpoints: start a carve, take a block."""

from __future__ import annotations

import logging

from aiohttp import web

from services.ingest import accept, keys
from services.ingest.body import check_declared_length, parse_json_object, parse_model, read_rest
from services.ingest.device import Device, device_of, host_identity, node_key_header
from services.ingest.sessions import Marked, Session, redact
from services.ingest.settings import IngestSettings
from shared.carves import Origin, digest
from shared.errors import Forbidden, InvalidRequest, PayloadTooLarge
from shared.protocol import StartRequest, geometry_error
from shared.proxies import client_address
from shared.queue import Block

log = logging.getLogger(__name__)

START_BODY_LIMIT = 64 * 1024
# Every accepted block gets the same reply: encoded once, not per request.
OK_BODY = b'{"success":true}'


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
    header_key = node_key_header(request)
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
    check_declared_length(request, START_BODY_LIMIT)
    body = await read_rest(request, b"", START_BODY_LIMIT)
    start = parse_model(StartRequest, parse_json_object(body))
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


async def upload_block(request: web.Request) -> web.Response:
    """Budget, read, store, count."""
    app = request.app
    incoming = await accept.peek(request)
    # Memory: the body, its decoded block and the broker's frames stay until the confirm.
    async with app[keys.BUDGET].hold(request.content_length or incoming.limit):
        # The body is a third larger than the block: only the block is kept for the confirm.
        block = await accept.read(request, incoming)
        del incoming
        session_id, duplicates = block.session.session_id, app[keys.DUPLICATES]
        if block.seen or (
            duplicates.reached(session_id)
            and await app[keys.SESSIONS].seen(session_id, block.block_id)
        ):
            fresh = False  # confirmed before: answered without publishing it again
            if not block.seen:
                app[keys.METRICS].unpublished.inc()
        else:
            fresh = await _store(app, block.session, block.block_id, block.data)
            if not fresh:
                duplicates.count(session_id)
    metrics = app[keys.METRICS]
    if not fresh:
        metrics.duplicate.inc()  # every answer to a block already stored, published or not
    else:
        metrics.accepted.inc()
        metrics.block_bytes.inc(len(block.data))
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
