"""The download benchmark's clients: each streams one download, hashes it and checks it."""

from __future__ import annotations

import asyncio
import hashlib
import time
from dataclasses import dataclass

import aiohttp

from bench.download_seed import Carve
from bench.render import MB

# A download that receives nothing for this long fails (a queued member download waits for a
# tar thread without receiving anything, so this is generous).
SOCK_READ_TIMEOUT = 600.0


@dataclass(frozen=True)
class Expected:
    path: str
    size: int
    sha256: str
    header_sha256: str | None  # X-Carve-SHA256 (archive only)

    @classmethod
    def of(cls, target: str, carve: Carve) -> Expected:
        base = f"/api/v1/carves/{carve.carve_id}"
        if target == "archive":
            return cls(
                f"{base}/archive", carve.archive_size, carve.archive_sha256, carve.archive_sha256
            )
        return cls(f"{base}/files{carve.member_path}", carve.member_size, carve.member_sha256, None)


@dataclass
class Download:
    index: int
    status: int | None = None
    content_length: int | None = None
    header_sha256: str | None = None
    bytes: int = 0
    sha256: str = ""
    headers_s: float = 0.0
    elapsed_s: float = 0.0
    error: str | None = None

    @property
    def mb_per_s(self) -> float:
        return self.bytes / MB / self.elapsed_s if self.elapsed_s > 0 else 0.0

    def check(self, expected: Expected) -> str | None:
        """What is wrong with this download, or None."""
        if self.error is not None:
            return self.error
        problems = []
        if self.status != 200:
            problems.append(f"HTTP {self.status}")
        if self.content_length != expected.size:
            problems.append(f"Content-Length {self.content_length} != {expected.size}")
        if self.bytes != expected.size:
            problems.append(f"{self.bytes} bytes received, {expected.size} expected")
        elif self.sha256 != expected.sha256:
            problems.append("SHA-256 mismatch")
        if expected.header_sha256 and self.header_sha256 != expected.header_sha256:
            problems.append(f"X-Carve-SHA256 {self.header_sha256}")
        return "; ".join(problems) or None


async def _receive(resp: aiohttp.ClientResponse, result: Download) -> None:
    result.status = resp.status
    result.content_length = resp.content_length
    result.header_sha256 = resp.headers.get("X-Carve-SHA256")
    if resp.status != 200:
        result.error = f"HTTP {resp.status}: {(await resp.read())[:300]!r}"
        return
    digest = hashlib.sha256()
    async for piece in resp.content.iter_any():
        digest.update(piece)
        result.bytes += len(piece)
    result.sha256 = digest.hexdigest()


async def fetch(
    http: aiohttp.ClientSession, url: str, token: str, expected: Expected, index: int
) -> Download:
    """One download, streamed and hashed, never raising: problems end up in ``error``."""
    result = Download(index)
    started = time.perf_counter()
    try:
        async with http.get(url + expected.path, headers={"X-Vault-Token": token}) as resp:
            result.headers_s = time.perf_counter() - started
            await _receive(resp, result)
    except (aiohttp.ClientError, TimeoutError, OSError) as exc:
        result.error = f"{type(exc).__name__}: {exc}"
    result.elapsed_s = time.perf_counter() - started
    result.error = result.check(expected)
    return result


async def download_all(url: str, token: str, expected: Expected, clients: int) -> list[Download]:
    timeout = aiohttp.ClientTimeout(total=None, sock_connect=30, sock_read=SOCK_READ_TIMEOUT)
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(
        timeout=timeout, connector=connector, auto_decompress=False
    ) as http:
        return list(
            await asyncio.gather(*(fetch(http, url, token, expected, i) for i in range(clients)))
        )
