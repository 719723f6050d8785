"""One responder cannot take every download slot (services/download/slots.py, pace.py).

Real ingest, assembler, MongoDB stand-in, OpenBao and download service. A hog opens more
archive downloads than there are slots, with one token, on sockets with a tiny receive
buffer that read the headers and then nothing. Another responder's download must start at
once, and the hog's stalled streams must be cut off once they fall below the minimum rate.
"""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import aiohttp
import hvac
import pytest

from devstack.ports import HOST
from devstack.vault import POLICY, Token, VaultAdmin
from tests.stack import Stack
from tests.uploads import Upload, random_bytes

MiB = 1024 * 1024
# Larger than what the kernel and aiohttp buffer for a client that does not read (~5 MiB).
CARVE = random_bytes(16 * MiB, seed=26)


class Hog:
    """A download that reads its answer's first bytes, then nothing, holding its socket."""

    def __init__(self, port: int, path: str, token: str, rcvbuf: int = 4096) -> None:
        self.port, self.path, self.token = port, path, token
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if rcvbuf:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        self.sock.setblocking(False)

    async def open(self) -> int:
        """The status of the answer."""
        loop = asyncio.get_running_loop()
        await loop.sock_connect(self.sock, (HOST, self.port))
        request = f"GET {self.path} HTTP/1.1\r\nHost: x\r\nX-Vault-Token: {self.token}\r\n\r\n"
        await loop.sock_sendall(self.sock, request.encode())
        head = await asyncio.wait_for(loop.sock_recv(self.sock, 512), 10)
        return int(head.split(b" ", 2)[1])

    def close(self) -> None:
        self.sock.close()


@dataclass
class Shares:
    stack: Stack
    url: str
    port: int
    vault: VaultAdmin
    carve_id: str

    @property
    def archive(self) -> str:
        return f"/api/v1/carves/{self.carve_id}/archive"

    async def aborted(self, accessor: str) -> list[dict[str, Any]]:
        rows = await self.stack.db["audit"].find({"accessor": accessor}).to_list()
        return [r for r in rows if r["action"] == "archive" and r["outcome"] == "aborted"]


@pytest.fixture
async def shares(stack: Stack, vault: VaultAdmin) -> AsyncIterator[Shares]:
    async with aiohttp.ClientSession() as http:
        upload = Upload(stack, CARVE, MiB // 2)
        await upload.start(http)
        await upload.send_all(http, range(upload.count))
    await stack.wait_complete(upload.carve_id)
    download = await stack.start_download(
        max_streams=4,
        streams_per_responder=2,
        download_min_rate=64 * 1024,
        download_rate_window=1.0,
    )
    port = int(download.url.rsplit(":", 1)[1])
    yield Shares(stack, download.url, port, vault, upload.carve_id)


async def test_another_responder_downloads_while_one_hogs_every_slot(shares: Shares) -> None:
    hog: Token = shares.vault.token(POLICY)
    hogs = [Hog(shares.port, shares.archive, hog.token) for _ in range(4)]
    try:
        started = time.monotonic()
        statuses = [await h.open() for h in hogs]
        # Two streams are the hog's share; its other two are refused, not queued.
        assert statuses == [200, 200, 429, 429]
        other = shares.vault.token(POLICY)
        async with aiohttp.ClientSession() as http:
            asked = time.monotonic()
            async with http.get(
                shares.url + shares.archive, headers={"X-Vault-Token": other.token}
            ) as resp:
                assert resp.status == 200  # on the old code: 503, every slot the hog's
                assert await resp.read() == CARVE
        assert time.monotonic() - asked < 10
        # The hog's stalled streams are cut once a window passes short of the floor, long
        # before CARVE_DOWNLOAD_WRITE_TIMEOUT (60 s here); the audit says why.
        deadline = time.monotonic() + 20
        while len(cut := await shares.aborted(hog.accessor)) < 2 and time.monotonic() < deadline:
            await asyncio.sleep(0.2)
        assert [r["code"] for r in cut] == ["too_slow", "too_slow"], cut
        assert all(0 < r["bytes_sent"] < len(CARVE) for r in cut)
        assert time.monotonic() - started < 20
        # Its slots are free again: the hog's next download is served.
        async with aiohttp.ClientSession() as http:
            async with http.get(
                shares.url + shares.archive, headers={"X-Vault-Token": hog.token}
            ) as resp:
                assert resp.status == 200 and await resp.read() == CARVE
    finally:
        for h in hogs:
            h.close()


async def test_an_entity_shares_its_slots_across_its_tokens(shares: Shares) -> None:
    """Logging in twice gives two tokens of one Vault entity: one share between them."""
    name, password = "hogger", "pw-" + "y" * 20
    shares.vault.client.auth.userpass.create_or_update_user(name, password, policies=[POLICY])
    login = hvac.Client(url=shares.vault.url).auth.userpass.login
    tokens = [login(name, password)["auth"]["client_token"] for _ in range(3)]
    hogs = [Hog(shares.port, shares.archive, t) for t in tokens]
    try:
        assert [await h.open() for h in hogs] == [200, 200, 429]
    finally:
        for h in hogs:
            h.close()


async def _trickle(hog: Hog, every: float, size: int) -> tuple[int, float]:
    """Read ``size`` bytes every ``every`` seconds until the server cuts the connection or
    the whole archive came: the bytes read and when it ended."""
    loop = asyncio.get_running_loop()
    read, started = 0, time.monotonic()
    while read < len(CARVE):
        try:
            piece = await loop.sock_recv(hog.sock, size)
        except ConnectionResetError:
            return read, time.monotonic() - started
        if not piece:
            return read, time.monotonic() - started
        read += len(piece)
        await asyncio.sleep(every)
    return read, time.monotonic() - started


async def test_a_client_below_the_floor_is_cut_one_above_it_is_not(shares: Shares) -> None:
    """32 KiB/s against a floor of 64 KiB/s: cut (and reset, not left to drain) within a few
    windows; a piece of 256 KiB still fits the 60 s write timeout, so only the floor does it."""
    token = shares.vault.token(POLICY)
    slow = Hog(shares.port, shares.archive, token.token)
    fast = Hog(shares.port, shares.archive, token.token, rcvbuf=0)  # the kernel's default
    try:
        assert [await slow.open(), await fast.open()] == [200, 200]
        (slow_read, slow_cut), (fast_read, _) = await asyncio.wait_for(
            asyncio.gather(_trickle(slow, 0.5, 16 * 1024), _trickle(fast, 0.01, 256 * 1024)),
            30,
        )
        assert slow_read < len(CARVE) // 4 and slow_cut < 15, (slow_read, slow_cut)
        assert fast_read >= len(CARVE) - 512  # all of it, but for the head read by open()
    finally:
        slow.close()
        fast.close()
    (cut,) = await shares.aborted(token.accessor)
    assert cut["code"] == "too_slow"
