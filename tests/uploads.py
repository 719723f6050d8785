"""A carve sent by hand, block by block, for tests that need to control every request."""

from __future__ import annotations

import hashlib
import random
import time
import uuid

import aiohttp

from clients.osquery_sim import block_body, start_body
from tests.stack import Stack


class Upload:
    """A carve sent block by block, so a test can stop in the middle and go on later."""

    def __init__(self, stack: Stack, data: bytes, block_size: int, *, node_key: str = "") -> None:
        self.stack = stack
        self.node_key = node_key
        self.data = data
        self.block_size = block_size
        self.count = -(-len(data) // block_size)
        self.carve_id = str(uuid.uuid4())
        self.request_id = str(uuid.uuid4())
        self.session_id = ""
        self.sha256 = hashlib.sha256(data).hexdigest()

    async def start(self, http: aiohttp.ClientSession) -> None:
        body = start_body(
            block_count=self.count,
            block_size=self.block_size,
            carve_size=len(self.data),
            carve_id=self.carve_id,
            request_id=self.request_id,
            node_key=self.node_key,
        )
        async with http.post(self.stack.ingest_url + "/start_uploads", data=body) as resp:
            self.session_id = (await resp.json())["session_id"]

    async def send(
        self, http: aiohttp.ClientSession, i: int, url: str | None = None
    ) -> tuple[int, str, bytes, float]:
        """Block ``i`` to ``url`` (default: the stack's ingest): status, type, body, seconds."""
        chunk = self.data[i * self.block_size : (i + 1) * self.block_size]
        body = block_body(i, self.session_id, self.request_id, chunk)
        started = time.monotonic()
        async with http.post((url or self.stack.ingest_url) + "/upload_blocks", data=body) as resp:
            raw = await resp.read()
            return resp.status, resp.content_type, raw, time.monotonic() - started

    async def send_all(
        self, http: aiohttp.ClientSession, ids: range | list[int], url: str | None = None
    ) -> None:
        for i in ids:
            status, _, raw, _ = await self.send(http, i, url)
            assert status == 200, raw


def random_bytes(size: int, seed: int) -> bytes:
    return random.Random(seed).randbytes(size)
