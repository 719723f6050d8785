"""One simulated osquery host uploading a carve, and many at once (docs/osquery-protocol.md).

The start, then the blocks strictly one after another; 5.21 and older skip a failed block and
still end ``SUCCESS``, 5.22+ make three attempts per request (1 s, then 4 s apart) and end
``DATA POST FAILED``; the HTTP client re-sends once by itself after a socket error.
"""

from __future__ import annotations

import asyncio
import io
import logging
import secrets
import ssl
import time
import uuid
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from ssl import SSLContext
from typing import IO, Any

import aiohttp

from clients.osquery_sim.archive import sha256_file
from clients.osquery_sim.wire import (
    DEFAULT_VERSION,
    RETRIES_SINCE,
    Reply,
    block_body,
    judge_reply,
    request_headers,
    start_body,
)
from shared.protocol import STATUS_DATA_POST_FAILED, STATUS_PENDING, STATUS_SUCCESS

logger = logging.getLogger("clients.osquery_sim")

# aiohttp adds Accept-Encoding on its own; osquery never does, and a compressed reply would be
# something osquery cannot receive.
_SKIP_AUTO_HEADERS = ("Accept-Encoding",)


@dataclass
class CarveResult:
    """What one simulated host ends up with, as its ``carves`` row would show it, plus stats."""

    carve_id: str
    request_id: str
    session_id: str | None
    status: str
    sha256: str
    size: int
    block_size: int
    block_count: int
    failed_blocks: list[int] = field(default_factory=list)
    requests: int = 0
    latencies: list[float] = field(default_factory=list)
    error_replies: list[int] = field(default_factory=list)
    elapsed: float = 0.0

    @property
    def start_failed(self) -> bool:
        """The start got no session: the carve failed before any block was sent."""
        return self.status == STATUS_DATA_POST_FAILED and self.session_id is None

    @property
    def ok(self) -> bool:
        """True when every block went through and no reply reported an error."""
        return self.status == STATUS_SUCCESS and not self.failed_blocks and not self.error_replies

    def summary_dict(self) -> dict[str, Any]:
        """The result without the per-block latencies (which can be 100k+ floats)."""
        data = asdict(self)
        del data["latencies"]
        return data


class _Uploader:
    """One host's HTTP side: headers, per-request time limit and osquery's retry rules."""

    def __init__(
        self,
        session: aiohttp.ClientSession,
        *,
        version: tuple[int, int, int],
        node_key: str,
        timeout: float,
        retry_sleeps: tuple[float, ...],
        ssl_context: SSLContext | None,
        resend_on_disconnect: bool,
    ) -> None:
        self._session = session
        self._headers = request_headers(version, node_key)
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._sleeps = retry_sleeps if version >= RETRIES_SINCE else ()
        self._ssl: SSLContext | bool = ssl_context if ssl_context is not None else True
        self._resend = resend_on_disconnect
        self.requests = 0

    @property
    def gives_up(self) -> bool:
        """5.22+ abort the carve on a failed request; older clients skip the block."""
        return bool(self._sleeps)

    async def post(self, url: str, body: bytes, latencies: list[float] | None) -> Reply:
        reply = await self._send(url, body, latencies)
        for delay in self._sleeps:
            if reply.ok:
                break
            logger.info("request to %s failed (%s), retrying in %.2fs", url, reply.error, delay)
            await asyncio.sleep(delay)
            reply = await self._send(url, body, latencies)
        return reply

    async def _send(self, url: str, body: bytes, latencies: list[float] | None) -> Reply:
        reply = await self._send_once(url, body, latencies)
        if reply.socket_error and self._resend:
            # osquery's HTTP client reconnects and re-sends once by itself, within one attempt.
            logger.debug("socket error on %s (%s), re-sending once", url, reply.error)
            reply = await self._send_once(url, body, latencies)
        return reply

    async def _send_once(self, url: str, body: bytes, latencies: list[float] | None) -> Reply:
        self.requests += 1
        started = time.perf_counter()
        try:
            async with self._session.post(
                url,
                # A sized file object, not bytes: aiohttp warns on raw bodies over 1 MB and
                # still sends Content-Length for it, as osquery does.
                data=io.BytesIO(body),
                headers=self._headers,
                timeout=self._timeout,
                ssl=self._ssl,
                skip_auto_headers=_SKIP_AUTO_HEADERS,
            ) as response:
                raw = await response.read()
                http_status = response.status
        except TimeoutError:
            return Reply(ok=False, error="timeout")
        except aiohttp.ClientSSLError as exc:
            return Reply(ok=False, error=f"TLS: {exc}")
        except aiohttp.ClientConnectionError as exc:
            return Reply(ok=False, error=f"{type(exc).__name__}: {exc}", socket_error=True)
        except aiohttp.ClientError as exc:
            return Reply(ok=False, error=f"{type(exc).__name__}: {exc}")
        if latencies is not None:
            latencies.append(time.perf_counter() - started)
        return judge_reply(http_status, raw)


def _block_plan(block_order: Sequence[int] | None, block_count: int) -> list[int]:
    if block_order is None:
        return list(range(block_count))
    plan = [int(block_id) for block_id in block_order]
    bad = [block_id for block_id in plan if not 0 <= block_id < block_count]
    if bad:
        raise ValueError(f"block_order has ids outside 0..{block_count - 1}: {bad[:5]}")
    return plan


def _read_block(fh: IO[bytes], block_id: int, block_size: int) -> bytes:
    fh.seek(block_id * block_size)
    return fh.read(block_size)


async def _start(uploader: _Uploader, url: str, result: CarveResult, node_key: str) -> str | None:
    body = start_body(
        block_count=result.block_count,
        block_size=result.block_size,
        carve_size=result.size,
        carve_id=result.carve_id,
        request_id=result.request_id,
        node_key=node_key,
    )
    reply = await uploader.post(url, body, None)
    if not reply.ok:
        logger.warning("carve %s: start request failed: %s", result.carve_id, reply.error)
        return None
    payload = reply.payload
    session_id = payload.get("session_id") if isinstance(payload, dict) else None
    if not isinstance(session_id, str) or not session_id:
        logger.warning("carve %s: no usable session_id in %r", result.carve_id, payload)
        return None
    return session_id


async def _send_blocks(
    uploader: _Uploader,
    url: str,
    archive: Path,
    plan: Sequence[int],
    session_id: str,
    result: CarveResult,
) -> str:
    with archive.open("rb") as fh:
        for block_id in plan:
            data = _read_block(fh, block_id, result.block_size)
            body = block_body(block_id, session_id, result.request_id, data)
            reply = await uploader.post(url, body, result.latencies)
            if reply.ok:
                if isinstance(reply.payload, dict) and "error" in reply.payload:
                    # osquery takes a JSON error as success and moves on; kept for tests.
                    result.error_replies.append(block_id)
                continue
            result.failed_blocks.append(block_id)
            if uploader.gives_up:
                logger.warning(
                    "carve %s: block %d failed: %s", result.carve_id, block_id, reply.error
                )
                return STATUS_DATA_POST_FAILED
            logger.info("carve %s: block %d skipped: %s", result.carve_id, block_id, reply.error)
    return STATUS_SUCCESS


async def carve(
    session: aiohttp.ClientSession,
    base_url: str,
    archive: Path,
    *,
    block_size: int = 8192,
    start_endpoint: str = "/start_uploads",
    continue_endpoint: str = "/upload_blocks",
    node_key: str = "",
    carve_id: str | None = None,
    request_id: str | None = None,
    version: tuple[int, int, int] = DEFAULT_VERSION,
    timeout: float = 16.0,
    block_order: Sequence[int] | None = None,
    retry_sleeps: tuple[float, ...] = (1.0, 4.0),
    ssl: SSLContext | None = None,
    resend_on_disconnect: bool = True,
) -> CarveResult:
    """Upload ``archive`` the way one osquery host does and report how it ended.

    ``block_order`` is a test hook: block ids to send, in that order (repeats and gaps allowed).
    On 5.22+ a request gets ``1 + len(retry_sleeps)`` attempts. ``resend_on_disconnect`` models
    osquery's silent re-send after a socket error (it does not count as an attempt).
    """
    if block_size <= 0:
        raise ValueError("block_size must be > 0")
    size = archive.stat().st_size
    block_count = -(-size // block_size)
    result = CarveResult(
        carve_id=carve_id or str(uuid.uuid4()),
        request_id=request_id or str(uuid.uuid4()),
        session_id=None,
        status=STATUS_PENDING,
        # The host hashes before uploading; in a thread, as 1 GB would stall every other host.
        sha256=await asyncio.to_thread(sha256_file, archive),
        size=size,
        block_size=block_size,
        block_count=block_count,
    )
    plan = _block_plan(block_order, block_count)
    uploader = _Uploader(
        session,
        version=version,
        node_key=node_key,
        timeout=timeout,
        retry_sleeps=retry_sleeps,
        ssl_context=ssl,
        resend_on_disconnect=resend_on_disconnect,
    )
    started = time.perf_counter()
    try:
        session_id = await _start(uploader, base_url + start_endpoint, result, node_key)
        result.session_id = session_id
        if session_id is None:
            result.status = STATUS_DATA_POST_FAILED
        else:
            result.status = await _send_blocks(
                uploader, base_url + continue_endpoint, archive, plan, session_id, result
            )
    finally:
        result.requests = uploader.requests
        result.elapsed = time.perf_counter() - started
    logger.info(
        "carve %s: %s, %d bytes, %d blocks, %d requests",
        result.carve_id,
        result.status,
        size,
        block_count,
        result.requests,
    )
    return result


async def carve_many(
    base_url: str,
    archives: Sequence[Path],
    *,
    concurrency: int | None = None,
    carve_ids: Sequence[str] | None = None,
    **carve_kwargs: Any,
) -> list[CarveResult]:
    """Many hosts carving at once, each its own archive, over one client session.

    Each host has its own node key, as enrolled hosts do (the server counts each
    host's share by it), unless ``node_key`` names one for all of them.
    ``carve_ids`` (one per archive) lets the carve id match the guid inside each archive.
    ``concurrency`` caps how many hosts upload at the same time (default: all).
    """
    if carve_ids is not None and len(carve_ids) != len(archives):
        raise ValueError("carve_ids must have one id per archive")
    ids: list[str | None] = list(carve_ids) if carve_ids is not None else [None] * len(archives)
    gate = asyncio.Semaphore(concurrency) if concurrency else None
    # limit=0: every host gets its own connection, as each osquery host has its own socket.
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def host(archive: Path, carve_id: str | None) -> CarveResult:
            kwargs = dict(carve_kwargs)
            kwargs["node_key"] = carve_kwargs.get("node_key") or secrets.token_hex(16)
            if gate is None:
                return await carve(session, base_url, archive, carve_id=carve_id, **kwargs)
            async with gate:
                return await carve(session, base_url, archive, carve_id=carve_id, **kwargs)

        return list(await asyncio.gather(*(host(a, i) for a, i in zip(archives, ids, strict=True))))


def client_ssl_context(
    cafile: str | None, certfile: str | None, keyfile: str | None
) -> ssl.SSLContext:
    """A verifying TLS client context (server CA, optional client certificate for mTLS)."""
    if keyfile and not certfile:
        raise ValueError("a client key needs a client certificate")
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=cafile)
    # osquery refuses anything older than TLS 1.2.
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    if certfile:
        context.load_cert_chain(certfile, keyfile)
    return context
