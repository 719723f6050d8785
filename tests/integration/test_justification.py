"""CARVE_DOWNLOAD_JUSTIFICATION=required: every archive, member and export download says why,
and the reason lands in its audit row; without one it is refused with a clear 400."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

import aiohttp
import orjson
import pytest

from clients.osquery_sim import build_archive, carve
from devstack.vault import POLICY, VaultAdmin
from tests.audit_rows import settled_rows
from tests.stack import Stack

MEMBERS = {"/etc/hosts": b"127.0.0.1 localhost\n", "/var/log/x.log": b"x" * 5000}


@dataclass
class Client:
    stack: Stack
    url: str
    token: str
    http: aiohttp.ClientSession
    carve_id: str
    request_id: str
    data: bytes

    async def get(self, path: str, **headers: str) -> tuple[int, bytes]:
        async with self.http.get(
            self.url + path, headers={"X-Vault-Token": self.token, **headers}
        ) as resp:
            return resp.status, await resp.read()


@pytest.fixture
async def client(stack: Stack, vault: VaultAdmin, tmp_path: Path) -> AsyncIterator[Client]:
    download = await stack.start_download(download_justification="required")
    guid = str(uuid.uuid4())
    archive = build_archive(MEMBERS, tmp_path / guid, carve_guid=guid)
    async with aiohttp.ClientSession() as http:
        result = await carve(http, stack.ingest_url, archive, block_size=4096)
        assert result.ok, result
        doc = await stack.wait_complete(result.carve_id)
        yield Client(
            stack,
            download.url,
            vault.token(POLICY).token,
            http,
            result.carve_id,
            doc["request_id"],
            archive.read_bytes(),
        )


async def test_downloads_without_a_justification_are_refused_clearly(client: Client) -> None:
    carve_path = f"/api/v1/carves/{client.carve_id}"
    for path in (
        carve_path + "/archive",
        carve_path + "/files/etc/hosts",
        carve_path + "/members/0",
        f"/api/v1/requests/{client.request_id}/export",
    ):
        status, body = await client.get(path)
        assert status == 400, path
        answer = orjson.loads(body)
        assert answer["code"] == "justification_required"
        assert "X-Carve-Justification" in answer["error"] and "?justification=" in answer["error"]
    # Metadata needs none: the carve, its listing, a HEAD of the archive.
    assert (await client.get(carve_path))[0] == 200
    assert (await client.get(carve_path + "/files"))[0] == 200
    async with client.http.head(
        client.url + carve_path + "/archive", headers={"X-Vault-Token": client.token}
    ) as resp:
        assert resp.status == 200
    rows = await settled_rows(client.stack.db, {"carve_id": client.carve_id, "action": "archive"})
    refused = [r for r in rows if r["status"] == 400]
    assert [(r["outcome"], r["code"]) for r in refused] == [("refused", "justification_required")]


async def test_a_justification_is_stored_in_the_audit_row(client: Client) -> None:
    carve_path = f"/api/v1/carves/{client.carve_id}"
    why = "IR-2026-0042: triage of the phishing host"
    status, body = await client.get(carve_path + "/archive", **{"X-Carve-Justification": why})
    assert (status, body) == (200, client.data)
    # Text a header cannot carry goes in the query field, UTF-8.
    umlaut = "Prüfung für Fall 7"
    status, body = await client.get(carve_path + "/members/0?justification=" + quote(umlaut))
    assert (status, body) == (200, b"127.0.0.1 localhost\n")
    status, _ = await client.get(
        f"/api/v1/requests/{client.request_id}/export", **{"X-Carve-Justification": "export 7"}
    )
    assert status == 200
    # A browser's ticket download carries it in its URL.
    async with client.http.post(
        client.url + carve_path + "/download-ticket",
        json={"index": 1},
        headers={"X-Vault-Token": client.token},
    ) as resp:
        ticket = await resp.json()
    async with client.http.get(client.url + ticket["url"] + "&justification=console") as resp:
        assert resp.status == 200
        assert await resp.read() == MEMBERS["/var/log/x.log"]
    rows = await settled_rows(client.stack.db, {"carve_id": client.carve_id})
    said = {(r["action"], r.get("justification")) for r in rows if r["outcome"] == "allowed"}
    assert {("archive", why), ("member", umlaut), ("member", "console")} <= said
    exports = await settled_rows(client.stack.db, {"action": "export"})
    assert [r.get("justification") for r in exports] == ["export 7"]
    assert exports[0]["carve_ids"] == [client.carve_id]


@pytest.mark.parametrize(
    "bad",
    ["", "   ", "a\tb", "line\nbreak", "\u202eevil", "zero\u200bwidth", "x" * 501],
)
async def test_bad_justifications_are_refused(client: Client, bad: str) -> None:
    status, body = await client.get(
        f"/api/v1/carves/{client.carve_id}/archive?justification=" + quote(bad)
    )
    answer = orjson.loads(body)
    assert (status, answer["code"]) == (400, "invalid_request"), bad
    assert "justification" in answer["error"]
