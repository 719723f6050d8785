"""What the console tests share: a host that uploads through a trusted proxy, the download app."""

from __future__ import annotations

import hashlib
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote

import aiohttp
import orjson

from clients.osquery_sim import block_body, build_archive, judge_reply, start_body
from tests.integration.test_device_binding import make_cert
from tests.stack import Stack


def cert_headers(pem: bytes) -> dict[str, str]:
    return {"ssl-client-verify": "SUCCESS", "ssl-client-cert": quote(pem.decode(), safe="")}


@dataclass
class Upload:
    """One carve as a host sends it, block by block, with its device certificate."""

    ingest_url: str
    data: bytes
    device: tuple[bytes, str, str]
    block_size: int = 1024
    carve_id: str = field(default_factory=lambda: uuid.uuid4().hex)
    request_id: str = field(default_factory=lambda: str(uuid.uuid4()))
    session_id: str = ""

    @property
    def block_count(self) -> int:
        return -(-len(self.data) // self.block_size)

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.data).hexdigest()

    async def _post(self, http: aiohttp.ClientSession, path: str, body: bytes) -> bytes:
        headers = cert_headers(self.device[0])
        async with http.post(self.ingest_url + path, data=body, headers=headers) as resp:
            raw = await resp.read()
            assert judge_reply(resp.status, raw).ok, (resp.status, raw)
            return raw

    async def start(self, http: aiohttp.ClientSession) -> None:
        body = start_body(
            block_count=self.block_count,
            block_size=self.block_size,
            carve_size=len(self.data),
            carve_id=self.carve_id,
            request_id=self.request_id,
            node_key="nk-" + self.carve_id[:8],
        )
        raw = await self._post(http, "/start_uploads", body)

        self.session_id = orjson.loads(raw)["session_id"]

    async def blocks(self, http: aiohttp.ClientSession, ids: range) -> None:
        for i in ids:
            piece = self.data[i * self.block_size : (i + 1) * self.block_size]
            await self._post(
                http, "/upload_blocks", block_body(i, self.session_id, self.request_id, piece)
            )

    async def send_all(self, http: aiohttp.ClientSession) -> None:
        await self.start(http)
        await self.blocks(http, range(self.block_count))


def archive_bytes(
    members: dict[str, bytes], tmp: Path, *, compress: bool, guid: str | None = None
) -> bytes:
    guid = guid or str(uuid.uuid4())
    return build_archive(members, tmp / guid, carve_guid=guid, compress=compress).read_bytes()


DEVICE = make_cert("laptop-17.corp.example")


async def console_stack(stack: Stack) -> tuple[str, str]:
    """An ingest that believes the test's proxy headers, and a download service: their URLs."""
    ingest = await stack.start_ingest(trusted_proxies="127.0.0.1/32")
    download = await stack.start_download(vault_cache_ttl=0.5)
    return ingest.url, download.url
