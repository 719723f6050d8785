"""Simulate osquery's file-carve upload client, as a library and as a load-generating CLI.

It reproduces what osquery 5.21 to 5.23 put on the wire (docs/osquery-protocol.md):

* the archive: a POSIX pax tar whose members are named
  ``/tmp/osquery_carve_<guid>/<original absolute path>`` (mode 0644, mtime 0, as libarchive
  writes them for osquery), optionally compressed as a whole with zstd level 1;
* one start request, compact JSON with osquery's key order, that must be answered with a JSON
  object holding a non-empty string ``session_id``;
* the blocks, strictly one after another, base64 inside JSON;
* how osquery judges a reply: the HTTP status is never looked at, an empty or JSON body is a
  success, a non-JSON body, a dropped connection or the 16 s request limit is a transport failure;
* 5.21 and older skip a failed block and still end ``SUCCESS``; 5.22+ make three attempts per
  request (sleeping 1 s then 4 s) and end ``DATA POST FAILED``; 5.23 adds
  ``Authorization: NodeKey <key>`` to every request;
* a start that fails (no reply, or a reply without a non-empty string ``session_id``) ends the
  carve ``DATA POST FAILED`` too: osquery's ``carves`` table has no status of its own for it;
* the HTTP client silently re-sends once after a socket error, so a server can see a block twice.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import io
import json
import logging
import math
import os
import random
import re
import secrets
import shutil
import ssl
import sys
import tarfile
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from ssl import SSLContext
from typing import IO, Any

import aiohttp
import orjson
import pybase64
import uvloop
import zstandard

logger = logging.getLogger(__name__)

CARVE_DIR_PREFIX = "/tmp/osquery_carve_"

# The values osquery writes in its carves table's status column.
STATUS_SUCCESS = "SUCCESS"
STATUS_DATA_POST_FAILED = "DATA POST FAILED"
STATUS_PENDING = "PENDING"

DEFAULT_VERSION: tuple[int, int, int] = (5, 23, 0)
RETRIES_SINCE: tuple[int, int, int] = (5, 22, 0)
NODE_KEY_HEADER_SINCE: tuple[int, int, int] = (5, 23, 0)

# Synthetic content and streaming copies work in 1 MiB pieces: large enough to be fast, small
# enough that a 1 GB carve never sits in memory.
PIECE_SIZE = 1 << 20
ZSTD_LEVEL = 1
# libarchive entries built by osquery carry only a path, a size, a type and perm 0644.
MEMBER_MODE = 0o644
MEMBER_MTIME = 0

# aiohttp adds Accept-Encoding on its own; osquery never does, and a compressed reply would be
# something osquery cannot receive.
_SKIP_AUTO_HEADERS = ("Accept-Encoding",)


# --------------------------------------------------------------------------------------------
# Archives
# --------------------------------------------------------------------------------------------


def carve_member_name(carve_guid: str, original_path: str) -> str:
    """The tar member name osquery (5.5+) gives to ``original_path`` in carve ``carve_guid``."""
    if not original_path.startswith("/"):
        raise ValueError(f"carved paths must be absolute, got {original_path!r}")
    return f"{CARVE_DIR_PREFIX}{carve_guid}{original_path}"


def synthetic_pieces(size: int, seed: int = 0) -> Iterator[bytes]:
    """Deterministic pseudo-random content of ``size`` bytes, in pieces of at most 1 MiB."""
    if size < 0:
        raise ValueError("size must be >= 0")
    rng = random.Random(seed)
    left = size
    while left > 0:
        piece = rng.randbytes(min(PIECE_SIZE, left))
        left -= len(piece)
        yield piece


class _PiecesReader(io.RawIOBase):
    """A read-only stream over an iterator of byte pieces (so tarfile can stream it)."""

    def __init__(self, pieces: Iterator[bytes]) -> None:
        super().__init__()
        self._pieces = pieces
        self._current = b""
        self._offset = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        if self._offset >= len(self._current):
            self._current = next(self._pieces, b"")
            self._offset = 0
            if not self._current:
                return 0
        view = memoryview(buffer).cast("B")
        count = min(len(view), len(self._current) - self._offset)
        view[:count] = self._current[self._offset : self._offset + count]
        self._offset += count
        return count


def _member_info(name: str, size: int) -> tarfile.TarInfo:
    # Built by hand: tarfile.gettarinfo strips the leading "/" osquery keeps in member names.
    info = tarfile.TarInfo(name)
    info.type = tarfile.REGTYPE
    info.size = size
    info.mode = MEMBER_MODE
    info.mtime = MEMBER_MTIME
    return info


def _add_member(tar: tarfile.TarFile, name: str, content: bytes | Path) -> None:
    if isinstance(content, bytes | bytearray | memoryview):
        data = bytes(content)
        tar.addfile(_member_info(name, len(data)), io.BytesIO(data))
        return
    with Path(content).open("rb") as fh:
        tar.addfile(_member_info(name, os.fstat(fh.fileno()).st_size), fh)


@contextmanager
def _archive_writer(path: Path, compress: bool) -> Iterator[tarfile.TarFile]:
    with path.open("wb") as raw:
        if not compress:
            with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
                yield tar
            return
        # Compress while the tar is written, so neither the tar nor the .zst is ever held in
        # memory and no uncompressed copy is left on disk.
        compressor = zstandard.ZstdCompressor(level=ZSTD_LEVEL)
        with (
            compressor.stream_writer(raw, closefd=False) as zwriter,
            tarfile.open(fileobj=zwriter, mode="w|", format=tarfile.PAX_FORMAT) as tar,
        ):
            yield tar


def _write_archive(
    dest: Path, carve_guid: str, compress: bool, fill: Callable[[tarfile.TarFile], None]
) -> Path:
    dest.mkdir(parents=True, exist_ok=True)
    suffix = ".tar.zst" if compress else ".tar"
    path = dest / f"carve_{carve_guid}{suffix}"
    with _archive_writer(path, compress) as tar:
        fill(tar)
    logger.debug("wrote archive %s (%d bytes)", path, path.stat().st_size)
    return path


def build_archive(
    members: Mapping[str, bytes | Path],
    dest: Path,
    *,
    carve_guid: str,
    compress: bool = False,
) -> Path:
    """Write the archive osquery would upload for ``members`` and return its path.

    Keys are the original absolute paths on the host, values the content (bytes) or a file to
    stream it from. The result is ``dest/carve_<guid>.tar`` or, compressed, ``.tar.zst``.
    """

    def fill(tar: tarfile.TarFile) -> None:
        for original, content in members.items():
            _add_member(tar, carve_member_name(carve_guid, original), content)

    return _write_archive(dest, carve_guid, compress, fill)


def build_synthetic_archive(
    size: int,
    dest: Path,
    *,
    carve_guid: str,
    compress: bool = False,
    seed: int = 0,
    path: str = "/var/log/evidence.bin",
) -> Path:
    """An archive holding one member of ``size`` pseudo-random bytes (same seed, same bytes)."""
    name = carve_member_name(carve_guid, path)

    def fill(tar: tarfile.TarFile) -> None:
        stream = io.BufferedReader(_PiecesReader(synthetic_pieces(size, seed)), PIECE_SIZE)
        with stream:
            tar.addfile(_member_info(name, size), stream)

    return _write_archive(dest, carve_guid, compress, fill)


def sha256_file(path: Path) -> str:
    """Hex SHA-256 of a file, read in pieces."""
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for piece in iter(lambda: fh.read(PIECE_SIZE), b""):
            digest.update(piece)
    return digest.hexdigest()


# --------------------------------------------------------------------------------------------
# Upload
# --------------------------------------------------------------------------------------------


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


@dataclass
class _Reply:
    ok: bool
    payload: Any = None
    http_status: int | None = None
    error: str = ""
    socket_error: bool = False


def _first_wins(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    # RapidJSON's FindMember returns the first of duplicate keys; a dict keeps the last.
    return dict(reversed(pairs))


def judge_reply(http_status: int | None, body: bytes) -> _Reply:
    """Judge a reply the way osquery does (JSONSerializer::deserialize, RapidJSON's defaults).

    The status is ignored. An empty body is a success. Otherwise the body is parsed as a C
    string (it ends at the first NUL byte), with RapidJSON's default flags: any JSON value at
    the root, nothing but whitespace after it, no NaN/Infinity, no comments or trailing
    commas, numbers that fit a double, and no check of the UTF-8 inside strings. Whatever
    parses is a success, whatever does not (a whitespace-only body too) a failure.
    """
    if not body:
        return _Reply(ok=True, payload=None, http_status=http_status)
    text = body.split(b"\0", 1)[0].decode("utf-8", errors="replace")
    try:
        # orjson refuses what RapidJSON refuses with these flags (NaN, Infinity, overflow).
        orjson.loads(text)
    except orjson.JSONDecodeError:
        return _Reply(ok=False, http_status=http_status, error=f"HTTP {http_status}, non-JSON")
    return _Reply(
        ok=True, payload=json.loads(text, object_pairs_hook=_first_wins), http_status=http_status
    )


def version_string(version: tuple[int, int, int]) -> str:
    return ".".join(str(part) for part in version)


def request_headers(version: tuple[int, int, int], node_key: str) -> dict[str, str]:
    """The headers osquery ``version`` sends on every carve request (Host/Content-Length aside)."""
    headers = {
        "Content-Type": "application/json",
        "Accept": "application/json",
        "User-Agent": f"osquery/{version_string(version)}",
    }
    if version >= NODE_KEY_HEADER_SINCE:
        headers["Authorization"] = f"NodeKey {node_key}"
    return headers


def _dumps(obj: Mapping[str, Any]) -> bytes:
    # Compact, keys in the given order, UTF-8 as is (no \\u escapes for non-ASCII): as RapidJSON.
    return orjson.dumps(obj)


def start_body(
    *,
    block_count: int,
    block_size: int,
    carve_size: int,
    carve_id: str,
    request_id: str,
    node_key: str,
) -> bytes:
    """The exact start request body (osquery's key order, compact)."""
    return _dumps(
        {
            "block_count": block_count,
            "block_size": block_size,
            "carve_size": carve_size,
            "carve_id": carve_id,
            "request_id": request_id,
            "node_key": node_key,
        }
    )


def block_body(block_id: int, session_id: str, request_id: str, data: bytes) -> bytes:
    """The exact block request body; the base64 is spliced in as bytes to avoid str copies."""
    head = _dumps({"block_id": block_id, "session_id": session_id, "request_id": request_id})
    return head[:-1] + b',"data":"' + pybase64.b64encode(data) + b'"}'


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

    async def post(self, url: str, body: bytes, latencies: list[float] | None) -> _Reply:
        reply = await self._send(url, body, latencies)
        for delay in self._sleeps:
            if reply.ok:
                break
            logger.info("request to %s failed (%s), retrying in %.2fs", url, reply.error, delay)
            await asyncio.sleep(delay)
            reply = await self._send(url, body, latencies)
        return reply

    async def _send(self, url: str, body: bytes, latencies: list[float] | None) -> _Reply:
        reply = await self._send_once(url, body, latencies)
        if reply.socket_error and self._resend:
            # osquery's HTTP client reconnects and re-sends once by itself, within one attempt.
            logger.debug("socket error on %s (%s), re-sending once", url, reply.error)
            reply = await self._send_once(url, body, latencies)
        return reply

    async def _send_once(self, url: str, body: bytes, latencies: list[float] | None) -> _Reply:
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
            return _Reply(ok=False, error="timeout")
        except aiohttp.ClientSSLError as exc:
            return _Reply(ok=False, error=f"TLS: {exc}")
        except aiohttp.ClientConnectionError as exc:
            return _Reply(ok=False, error=f"{type(exc).__name__}: {exc}", socket_error=True)
        except aiohttp.ClientError as exc:
            return _Reply(ok=False, error=f"{type(exc).__name__}: {exc}")
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


# --------------------------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------------------------

_SIZE_UNITS = {
    "": 1,
    "b": 1,
    "kb": 10**3,
    "mb": 10**6,
    "gb": 10**9,
    "tb": 10**12,
    "kib": 2**10,
    "mib": 2**20,
    "gib": 2**30,
    "tib": 2**40,
}
_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*$")


def parse_size(text: str) -> int:
    """``"5MB"`` -> 5_000_000, ``"8KiB"`` -> 8192, ``"1024"`` -> 1024."""
    match = _SIZE_RE.match(text)
    unit = match.group(2).lower() if match else ""
    if match is None or unit not in _SIZE_UNITS:
        raise ValueError(f"bad size {text!r} (use e.g. 1024, 8KiB, 5MB, 1GiB)")
    return int(float(match.group(1)) * _SIZE_UNITS[unit])


def parse_version(text: str) -> tuple[int, int, int]:
    parts = [int(part) for part in text.strip().split(".")]
    if not 1 <= len(parts) <= 3:
        raise ValueError(f"bad version {text!r}")
    parts += [0] * (3 - len(parts))
    return parts[0], parts[1], parts[2]


def _size_arg(text: str) -> int:
    try:
        return parse_size(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc


def _version_arg(text: str) -> tuple[int, int, int]:
    try:
        return parse_version(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="carve-osquery-sim",
        description="Simulate osquery hosts uploading file carves (load generator).",
    )
    parser.add_argument("--url", required=True, help="server base URL, e.g. http://127.0.0.1:8080")
    parser.add_argument("--hosts", type=int, default=1, help="simulated hosts (default 1)")
    source = parser.add_mutually_exclusive_group()
    source.add_argument(
        "--size", type=_size_arg, help="synthetic carve per host (e.g. 5MB; default 1MiB)"
    )
    source.add_argument("--file", nargs="+", type=Path, help="real files every host carves")
    parser.add_argument("--seed", type=int, default=0, help="host i uses seed+i (synthetic)")
    parser.add_argument("--block-size", type=_size_arg, default=8192, help="default 8KiB")
    parser.add_argument("--compress", action="store_true", help="zstd level 1, as osquery")
    parser.add_argument(
        "--version",
        type=_version_arg,
        default=DEFAULT_VERSION,
        help="osquery version to behave like: 5.21 skips, 5.22 retries, 5.23 adds NodeKey",
    )
    parser.add_argument("--start-endpoint", default="/start_uploads")
    parser.add_argument("--continue-endpoint", default="/upload_blocks")
    parser.add_argument("--node-key", default="")
    parser.add_argument("--timeout", type=float, default=16.0, help="seconds per request")
    parser.add_argument("--cacert", help="CA bundle to verify the server")
    parser.add_argument("--cert", help="client certificate (mTLS)")
    parser.add_argument("--key", help="client private key (mTLS)")
    parser.add_argument("--json", action="store_true", help="print one JSON document")
    parser.add_argument("-v", "--verbose", action="count", default=0)
    return parser


def _prepare_archives(args: argparse.Namespace, workdir: Path, carve_ids: list[str]) -> list[Path]:
    compress = bool(args.compress)
    if args.file:
        files = [Path(p).resolve() for p in args.file]
        members: dict[str, bytes | Path] = {str(p): p for p in files}
        return [
            build_archive(members, workdir / str(n), carve_guid=cid, compress=compress)
            for n, cid in enumerate(carve_ids)
        ]
    size = int(args.size) if args.size is not None else PIECE_SIZE
    seed = int(args.seed)
    return [
        build_synthetic_archive(size, workdir, carve_guid=cid, compress=compress, seed=seed + n)
        for n, cid in enumerate(carve_ids)
    ]


def percentile(values: Sequence[float], fraction: float) -> float:
    """Nearest-rank percentile; 0.0 for no values."""
    if not values:
        return 0.0
    ordered = sorted(values)
    # The epsilon keeps float noise (0.29 * 100 = 28.999...) from moving the rank.
    rank = math.ceil(fraction * len(ordered) - 1e-9)
    return ordered[min(max(rank, 1), len(ordered)) - 1]


def summarize(results: Sequence[CarveResult], seconds: float) -> dict[str, Any]:
    """Totals and block latency percentiles for a batch of carves."""
    latencies = [value for result in results for value in result.latencies]
    total_bytes = sum(result.size for result in results)
    blocks = len(latencies)
    elapsed = max(seconds, 1e-9)
    return {
        "hosts": len(results),
        "ok_hosts": sum(1 for result in results if result.ok),
        "total_bytes": total_bytes,
        "seconds": round(seconds, 3),
        "mb_per_s": round(total_bytes / 1e6 / elapsed, 3),
        "blocks": blocks,
        "blocks_per_s": round(blocks / elapsed, 1),
        "p50_ms": round(percentile(latencies, 0.50) * 1000, 3),
        "p99_ms": round(percentile(latencies, 0.99) * 1000, 3),
    }


def _report(results: Sequence[CarveResult], summary: dict[str, Any], as_json: bool) -> None:
    if as_json:
        document = {"results": [r.summary_dict() for r in results], "summary": summary}
        print(json.dumps(document, indent=2))
        return
    for r in results:
        print(
            f"{r.carve_id} {r.status} size={r.size} sha256={r.sha256} "
            f"failed_blocks={len(r.failed_blocks)} error_replies={len(r.error_replies)} "
            f"requests={r.requests}"
        )
    print(
        f"hosts={summary['hosts']} ok={summary['ok_hosts']} bytes={summary['total_bytes']} "
        f"seconds={summary['seconds']} MB/s={summary['mb_per_s']} "
        f"blocks/s={summary['blocks_per_s']} p50_ms={summary['p50_ms']} "
        f"p99_ms={summary['p99_ms']}"
    )


def _run(args: argparse.Namespace, workdir: Path) -> tuple[list[CarveResult], float]:
    carve_ids = [str(uuid.uuid4()) for _ in range(int(args.hosts))]
    archives = _prepare_archives(args, workdir, carve_ids)
    ssl_context = None
    if args.cacert or args.cert or args.key:
        ssl_context = client_ssl_context(args.cacert, args.cert, args.key)
    started = time.perf_counter()
    # uvloop, as in the services: the simulator shares the cores with what it measures.
    results = uvloop.run(
        carve_many(
            str(args.url).rstrip("/"),
            archives,
            carve_ids=carve_ids,
            block_size=int(args.block_size),
            start_endpoint=str(args.start_endpoint),
            continue_endpoint=str(args.continue_endpoint),
            node_key=str(args.node_key),
            version=args.version,
            timeout=float(args.timeout),
            ssl=ssl_context,
        )
    )
    return results, time.perf_counter() - started


def main(argv: Sequence[str] | None = None) -> int:
    """Console entry point ``carve-osquery-sim``; exit 0 only if every carve is clean."""
    parser = _build_parser()
    args = parser.parse_args(argv)
    if args.hosts < 1:
        parser.error("--hosts must be >= 1")
    if args.block_size < 1:
        parser.error("--block-size must be >= 1")
    level = {0: logging.WARNING, 1: logging.INFO}.get(int(args.verbose), logging.DEBUG)
    logging.basicConfig(level=level, stream=sys.stderr, format="%(levelname)s %(message)s")
    workdir = Path(tempfile.mkdtemp(prefix="carve-osquery-sim-"))
    try:
        results, seconds = _run(args, workdir)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    _report(results, summarize(results, seconds), bool(args.json))
    return 0 if all(result.ok for result in results) else 1


if __name__ == "__main__":
    sys.exit(main())
