"""Download tickets against the real download service, OpenBao and MongoDB: opaque, stored
without anything usable in clear, and worth nothing once the token that minted them is revoked
(services/download/tickets.py)."""

from __future__ import annotations

import asyncio
import base64
import binascii
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import aiohttp
import orjson
import pytest

from devstack.vault import POLICY, Token, VaultAdmin
from tests.audit_rows import settled_rows
from tests.console import DEVICE, Upload, archive_bytes
from tests.stack import Stack

MEMBERS = {"/etc/hosts": b"127.0.0.1 localhost\n", "/var/log/x.log": b"x" * 5000}
CACHE_TTL = 0.5


@dataclass
class Tickets:
    stack: Stack
    url: str
    vault: VaultAdmin
    http: aiohttp.ClientSession
    upload: Upload

    async def mint(self, token: str, path: str | None = None) -> dict[str, Any]:
        body = {} if path is None else {"path": path}
        headers = {"X-Vault-Token": token}
        address = f"{self.url}/api/v1/carves/{self.upload.carve_id}/download-ticket"
        async with self.http.post(address, json=body, headers=headers) as resp:
            assert resp.status == 200, await resp.text()
            minted: dict[str, Any] = await resp.json()
            return minted

    async def get(self, url: str) -> tuple[int, bytes]:
        async with self.http.get(self.url + url) as resp:
            return resp.status, await resp.read()


@pytest.fixture
async def tickets(stack: Stack, vault: VaultAdmin, tmp_path: Any) -> AsyncIterator[Tickets]:
    ingest = await stack.start_ingest(trusted_proxies="127.0.0.1/32")
    download = await stack.start_download(vault_cache_ttl=CACHE_TTL)
    async with aiohttp.ClientSession() as http:
        upload = Upload(ingest.url, archive_bytes(MEMBERS, tmp_path, compress=False), DEVICE)
        await upload.send_all(http)
        await stack.wait_complete(upload.carve_id)
        yield Tickets(stack, download.url, vault, http, upload)


async def test_a_ticket_is_refused_once_its_token_is_revoked(tickets: Tickets) -> None:
    token = tickets.vault.token(POLICY)
    archive = await tickets.mint(token.token)
    member = await tickets.mint(token.token, "/etc/hosts")
    tickets.vault.revoke(token.token)
    await asyncio.sleep(CACHE_TTL + 0.2)  # the cached lookup of the token expires
    for minted in (archive, member):
        status, body = await tickets.get(minted["url"])
        assert status == 401, body
        assert orjson.loads(body)["error"] == "the Vault token is unknown, expired or revoked"
    rows = await settled_rows(
        tickets.stack.db, {"carve_id": tickets.upload.carve_id, "status": 401}
    )
    refused = [(r["action"], r["status"], r["bytes_sent"]) for r in rows]
    assert sorted(refused) == [("archive", 401, 0), ("file", 401, 0)]


async def test_a_ticket_is_refused_at_once_after_the_consoles_logout(tickets: Tickets) -> None:
    name, password = "tix", "pw-" + "x" * 20
    tickets.vault.client.auth.userpass.create_or_update_user(name, password, policies=[POLICY])
    async with tickets.http.post(
        tickets.url + "/api/v1/login", json={"username": name, "password": password}
    ) as resp:
        token = (await resp.json())["token"]
    kept = await tickets.mint(token)
    headers = {"X-Vault-Token": token, "Content-Type": "application/json"}
    async with tickets.http.post(tickets.url + "/api/v1/logout", headers=headers) as resp:
        assert resp.status == 200
    status, _ = await tickets.get(kept["url"])  # no wait for the cache: logout forgets it
    assert status == 401


async def test_a_ticket_of_a_valid_token_still_downloads(tickets: Tickets) -> None:
    token = tickets.vault.token(POLICY)
    other = tickets.vault.token(POLICY)
    minted = await tickets.mint(token.token)
    tickets.vault.revoke(other.token)  # another token's revocation changes nothing here
    await asyncio.sleep(CACHE_TTL + 0.2)
    assert await tickets.get(minted["url"]) == (200, tickets.upload.data)


def _decodings(ticket: str) -> list[bytes]:
    """Whatever a reader could decode from a ticket (base64 of any part of it)."""
    found = [ticket.encode()]
    for part in re.split(r"[.]", ticket):
        try:
            found.append(base64.urlsafe_b64decode(part + "=" * (-len(part) % 4)))
        except (binascii.Error, ValueError):
            pass
    return found


async def _row_for(tickets: Tickets, carve_id: str) -> dict[str, Any]:
    (row,) = await tickets.stack.db["download_tickets"].find({"carve_id": carve_id}).to_list()
    return row


async def test_tickets_are_opaque_and_stored_without_secrets(tickets: Tickets) -> None:
    token: Token = tickets.vault.token(POLICY)
    minted = await tickets.mint(token.token)
    ticket = minted["ticket"]
    assert re.fullmatch(r"[A-Za-z0-9_-]{43}", ticket), ticket
    assert minted["url"].endswith(f"/archive?ticket={ticket}")
    # Nothing about the responder in the ticket: no accessor, entity, name, carve or JSON.
    for decoded in _decodings(ticket):
        for secret in (token.accessor, token.token, "token-", tickets.upload.carve_id, '"a"'):
            assert secret.encode() not in decoded
    # The row holds neither the ticket, nor the token or its accessor, in clear.
    row = await _row_for(tickets, tickets.upload.carve_id)
    text = orjson.dumps(row, default=str).decode()
    for secret in (ticket, token.token, token.accessor):
        assert secret not in text
    assert row["_id"] != ticket and row["target"] == "archive" and row["used"] is False
    # The row's id is not a ticket, a mangled ticket is no ticket.
    for bad in (row["_id"], ticket[:-1] + ("A" if ticket[-1] != "A" else "B"), "x", "é" * 43):
        status, body = await tickets.get(
            f"/api/v1/carves/{tickets.upload.carve_id}/archive?ticket={bad}"
        )
        assert status == 403, body
    assert await tickets.get(minted["url"]) == (200, tickets.upload.data)
    used = await _row_for(tickets, tickets.upload.carve_id)
    assert used["used"] is True and "sealed" not in used  # the sealed token is wiped on use
    status, body = await tickets.get(minted["url"])
    assert status == 403 and b"already used" in body


async def test_a_ticket_needs_the_replicas_secret(tickets: Tickets) -> None:
    token = tickets.vault.token(POLICY)
    secret = "k" * 40
    first = await tickets.stack.start_download(vault_cache_ttl=CACHE_TTL, ticket_secret=secret)
    second = await tickets.stack.start_download(vault_cache_ttl=CACHE_TTL, ticket_secret=secret)
    alone = await tickets.stack.start_download(vault_cache_ttl=CACHE_TTL)  # a random secret
    carve = f"/api/v1/carves/{tickets.upload.carve_id}"
    headers = {"X-Vault-Token": token.token}
    urls = []
    for _ in range(2):
        async with tickets.http.post(
            first.url + carve + "/download-ticket", json={}, headers=headers
        ) as resp:
            urls.append((await resp.json())["url"])
    async with tickets.http.get(second.url + urls[0]) as resp:
        assert (resp.status, await resp.read()) == (200, tickets.upload.data)
    async with tickets.http.get(alone.url + urls[1]) as resp:
        assert resp.status == 403
        assert (await resp.json())["error"] == (
            "the download ticket is not valid here: ask for a new one"
        )


async def test_a_campaign_export_ticket_dies_with_its_token(tickets: Tickets) -> None:
    token = tickets.vault.token(POLICY)
    request_id = tickets.upload.request_id
    headers = {"X-Vault-Token": token.token}
    async with tickets.http.post(
        f"{tickets.url}/api/v1/requests/{request_id}/export-ticket", json={}, headers=headers
    ) as resp:
        assert resp.status == 200, await resp.text()
        minted = await resp.json()
    assert re.fullmatch(r"[A-Za-z0-9_-]{43}", minted["ticket"])
    tickets.vault.revoke(token.token)
    await asyncio.sleep(CACHE_TTL + 0.2)
    status, body = await tickets.get(minted["url"])
    assert status == 401, body
