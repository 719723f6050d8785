"""Responder endpoints on the tar inside a carve: its listing and one member's bytes.

Each request is a tar job: admitted by TarJobs (a share per carve and per responder), run
in a worker thread within a Budget, stopped as soon as its client has gone.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import re
import threading
from collections.abc import AsyncIterator, Callable
from typing import Any
from urllib.parse import quote

import orjson
from aiohttp import web

from services.download import keys, manifests
from services.download.archive_views import open_reader, start_stream
from services.download.audit import AUDIT
from services.download.auth import authorized_carve, require_complete
from services.download.lookups import int_param
from services.download.members import (
    Abandoned,
    ArchiveRefused,
    ChunkFile,
    TarSource,
    clean_member_path,
    find_member,
    find_member_at,
    list_members,
    stream_member,
)
from services.download.pace import paced, write_piece
from services.download.slots import TarBusy
from shared.carves import CarveDoc, Compression
from shared.errors import NotFound
from shared.tarsafe import Budget, Limits, Member

log = logging.getLogger(__name__)
MAX_MEMBERS = 100_000
# A pax header or GNU long name is read into memory whole: refuse absurd ones.
MAX_HEADER_BYTES = 1024 * 1024
# How often a tar job looks whether its client is still connected.
_WATCH_INTERVAL = 0.1


async def _tar_source(request: web.Request, doc: CarveDoc) -> TarSource:
    settings = request.app[keys.SETTINGS]
    reader = await open_reader(request, doc)
    file = ChunkFile(asyncio.get_running_loop(), reader, batch_bytes=settings.download_batch_bytes)
    limits = Limits(
        max_bytes=settings.tar_max_bytes,
        max_seconds=settings.tar_timeout,
        max_members=settings.tar_max_members,
        max_header_bytes=MAX_HEADER_BYTES,
        zstd_max_window=settings.zstd_max_window,
    )
    zstd = doc.get("compression") == Compression.ZSTD
    return TarSource(file, zstd, Budget(limits, cancel=file.abandoned))


async def _watch_client(request: web.Request, stop: threading.Event) -> None:
    """Tell the worker to stop as soon as the client has gone (aiohttp does not cancel)."""
    while not stop.is_set():
        transport = request.transport
        if transport is None or transport.is_closing():
            stop.set()
            return
        await asyncio.sleep(_WATCH_INTERVAL)


@contextlib.asynccontextmanager
async def _tar_job(request: web.Request, doc: CarveDoc) -> AsyncIterator[TarSource]:
    """A tar worker's share for this request, its budget, and a watch on its client."""
    identity = request[keys.IDENTITY]
    metrics = request.app[keys.METRICS]
    source = await _tar_source(request, doc)  # the time budget covers any wait for a worker
    watcher = asyncio.create_task(_watch_client(request, source.file.abandoned))
    try:
        async with request.app[keys.TAR_JOBS].hold(doc["_id"], identity.share_key):
            if source.file.abandoned.is_set():
                raise Abandoned("the client left while the job waited for a worker")
            yield source
    except TarBusy as exc:
        metrics.tar_refusals.labels(f"tar_busy_{exc.details['limit']}").inc()
        raise
    except ArchiveRefused as exc:
        metrics.tar_refusals.labels(exc.code).inc()
        log.warning("carve %s: archive refused: %s", doc["_id"], exc.message)
        raise
    except Abandoned:
        metrics.tar_abandoned.inc()
        raise
    finally:
        source.file.abandoned.set()  # whatever happened, the worker must not go on
        watcher.cancel()


async def _tar_carve(request: web.Request) -> CarveDoc:
    doc = await authorized_carve(request)  # a token, or a download ticket (member downloads)
    return require_complete(doc)


async def list_files(request: web.Request) -> web.Response:
    doc = await _tar_carve(request)
    limit = int_param(request.query, "limit", 10_000, MAX_MEMBERS)
    if (from_manifest := await manifests.manifest_listing(request, doc, limit)) is not None:
        return from_manifest
    loop = asyncio.get_running_loop()
    async with _tar_job(request, doc) as source:
        members, truncated = await loop.run_in_executor(
            request.app[keys.TAR_POOL], list_members, source, limit
        )
    body = {"carve_id": doc["_id"], "members": members, "truncated": truncated}
    return web.json_response(body, dumps=lambda obj: orjson.dumps(obj).decode())


def _disposition(path: str) -> str:
    name = path.rsplit("/", 1)[-1] or "member"
    ascii_name = re.sub(r"[^A-Za-z0-9._-]", "_", name)
    return f"attachment; filename=\"{ascii_name}\"; filename*=UTF-8''{quote(name, safe='')}"


async def get_file(request: web.Request) -> web.StreamResponse:
    """``GET .../files/{path}``: the last regular file at that path (what extraction leaves)."""
    doc = await _tar_carve(request)
    wanted = clean_member_path(request.match_info["path"])
    sha256 = await manifests.member_sha256(request, doc, wanted)
    found = functools.partial(find_member, wanted=wanted)
    return await _send_member(request, doc, found, sha256, f"no regular file {wanted}")


async def get_member(request: web.Request) -> web.StreamResponse:
    """``GET .../members/{index}``: the member at that position of the archive (the listing's
    ``index``), if it is a regular file, whatever its name."""
    doc = await _tar_carve(request)
    index = int(request.match_info["index"])
    sha256 = await manifests.member_sha256_at(request, doc, index)
    found = functools.partial(find_member_at, index=index)
    return await _send_member(request, doc, found, sha256, f"no regular file at index {index}")


async def _send_member(
    request: web.Request,
    doc: CarveDoc,
    find: Callable[[TarSource], Member | None],
    sha256: str | None,
    missing: str,
) -> web.StreamResponse:
    loop = asyncio.get_running_loop()
    response = web.StreamResponse(headers={"Content-Type": "application/octet-stream"})
    if sha256:
        response.headers["X-Carve-Member-SHA256"] = sha256
    entry = request[AUDIT]
    timeout = request.app[keys.SETTINGS].download_write_timeout

    def on_found(member: dict[str, Any]) -> bool:
        response.headers["Content-Disposition"] = _disposition(member["path"])
        response.content_length = member["size"]
        asyncio.run_coroutine_threadsafe(start_stream(request, response), loop).result(timeout)
        return request.method != "HEAD"  # HEAD: headers only, or the connection desyncs

    async with _tar_job(request, doc) as source:
        with paced(request) as pace:

            def write(piece: bytes) -> None:
                if source.file.abandoned.is_set():
                    raise Abandoned("the request has ended")
                sent = write_piece(request, response, piece, pace)
                asyncio.run_coroutine_threadsafe(sent, loop).result(timeout + 5)
                entry.bytes_sent += len(piece)

            with request.app[keys.STREAMS].hold(request[keys.IDENTITY].share_key):
                found = await loop.run_in_executor(
                    request.app[keys.TAR_POOL], stream_member, source, find, on_found, write
                )
    if not found:
        raise NotFound(f"{missing} in carve {doc['_id']}")
    await response.write_eof()
    return response
