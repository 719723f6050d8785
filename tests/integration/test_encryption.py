"""Encryption at rest against real OpenBao (Transit, AppRole), RabbitMQ and the MongoDB
stand-in: what is stored is sealed, what is served is byte-exact, what was moved fails."""

from __future__ import annotations

import asyncio
import hashlib
import io
import uuid
import zipfile
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import aiohttp
import hvac.exceptions
import orjson
import pytest
from multidict import CIMultiDict

from clients.osquery_sim import build_archive, carve
from devstack.services import scrape
from devstack.vault import POLICY, VaultAdmin
from services.janitor.main import run_sweep
from shared.crypto.chunks import OVERHEAD
from tests.stack import Stack
from tests.triage import MARKER, wait_triaged, write_library
from tests.uploads import Upload, random_bytes

PLANTED = b"PLAINTEXT-MARKER-a6c1e0-" * 8
MEMBERS = {
    "/etc/hosts": b"127.0.0.1 localhost\n",
    "/var/log/secret.log": random_bytes(30_000, 3) + PLANTED + random_bytes(20_000, 4),
    "/tmp/payload.bin": random_bytes(9_000, 5) + MARKER + PLANTED,
}


class Client:
    def __init__(self, stack: Stack, url: str, token: str, http: aiohttp.ClientSession) -> None:
        self.stack, self.url, self.token, self.http = stack, url, token, http

    async def get(self, path: str, **headers: str) -> tuple[int, CIMultiDict[str], bytes]:
        async with self.http.get(
            self.url + path, headers={"X-Vault-Token": self.token, **headers}
        ) as resp:
            return resp.status, resp.headers.copy(), await resp.read()


@pytest.fixture
async def client(sealed_stack: Stack, vault: VaultAdmin) -> AsyncIterator[Client]:
    download = await sealed_stack.start_download()
    async with aiohttp.ClientSession() as http:
        yield Client(sealed_stack, download.url, vault.token(POLICY).token, http)


async def upload(
    stack: Stack, tmp_path: Path, *, compress: bool = False, block_size: int = 8192
) -> tuple[str, bytes]:
    guid = str(uuid.uuid4())
    archive = build_archive(MEMBERS, tmp_path / guid, carve_guid=guid, compress=compress)
    async with aiohttp.ClientSession() as http:
        result = await carve(http, stack.ingest_url, archive, block_size=block_size)
    assert result.ok, result
    await stack.wait_complete(result.carve_id)
    return result.carve_id, archive.read_bytes()


async def stored_chunks(stack: Stack, carve_id: str) -> list[dict[str, Any]]:
    return await stack.db["archives.chunks"].find({"files_id": carve_id}).sort("n", 1).to_list()


async def test_no_stored_chunk_holds_the_plaintext_and_every_read_is_byte_exact(
    client: Client, tmp_path: Path
) -> None:
    stack = client.stack
    carve_id, data = await upload(stack, tmp_path)
    assert PLANTED in data
    doc = await stack.carve_doc(carve_id)
    assert doc is not None
    sealing = doc["encryption"]
    assert sealing["key"] == f"osquery-carves-{carve_id}"
    assert sealing["wrapped"].startswith("vault:v1:")
    assert sealing["sealed"] == "all"
    # The digest and the ETag are those of the plaintext.
    assert doc["sha256"] == hashlib.sha256(data).hexdigest()
    chunks = await stored_chunks(stack, carve_id)
    assert len(chunks) == -(-len(data) // 8192)
    stored = b"".join(bytes(c["data"]) for c in chunks)
    assert PLANTED[:24] not in stored and data[:512] not in stored
    for c in chunks:
        want = min(8192, len(data) - 8192 * c["n"])
        assert len(c["data"]) == want + OVERHEAD and c["data"][0] == 1
    # Nothing else in the database holds it either (the manifest keeps names and digests).
    for name in await stack.db.list_collection_names():
        async for row in stack.db[name].find({}):
            assert PLANTED[:24] not in repr(row).encode()
    # Whole archive, a range across chunks, a suffix range, members.
    status, _, raw = await client.get(f"/api/v1/carves/{carve_id}")
    assert orjson.loads(raw)["encryption"] == {
        "scheme": "aes-256-gcm/1", "sealed": "all", "shredded": False,
    }  # fmt: skip
    assert b"vault:v" not in raw and sealing["key"].encode() not in raw
    status, headers, body = await client.get(f"/api/v1/carves/{carve_id}/archive")
    assert (status, body) == (200, data)
    assert headers["ETag"] == f'"{doc["sha256"]}"'
    status, _, body = await client.get(
        f"/api/v1/carves/{carve_id}/archive", Range="bytes=8000-20000"
    )
    assert (status, body) == (206, data[8000:20001])
    status, _, body = await client.get(f"/api/v1/carves/{carve_id}/archive", Range="bytes=-100")
    assert (status, body) == (206, data[-100:])
    for path, content in MEMBERS.items():
        status, _, body = await client.get(f"/api/v1/carves/{carve_id}/files{path}")
        assert (status, body) == (200, content), path


async def test_zstd_carve_members_are_byte_exact(client: Client, tmp_path: Path) -> None:
    carve_id, data = await upload(client.stack, tmp_path, compress=True, block_size=4096)
    status, _, body = await client.get(f"/api/v1/carves/{carve_id}/archive")
    assert (status, body) == (200, data)
    for path, content in MEMBERS.items():
        status, _, body = await client.get(f"/api/v1/carves/{carve_id}/files{path}")
        assert (status, body) == (200, content), path


async def _audit_codes(stack: Stack, carve_id: str) -> list[tuple[str, int, str | None]]:
    await asyncio.sleep(0.3)
    rows = await stack.db["audit"].find({"carve_id": carve_id}).to_list()
    return [(r["action"], r["status"], r.get("code")) for r in rows]


async def test_chunks_swapped_between_positions_fail_authentication(
    client: Client, tmp_path: Path
) -> None:
    stack = client.stack
    carve_id, data = await upload(stack, tmp_path)
    chunks = await stored_chunks(stack, carve_id)
    first, second = chunks[1], chunks[2]
    coll = stack.db["archives.chunks"]
    await coll.update_one({"_id": first["_id"]}, {"$set": {"data": second["data"]}})
    await coll.update_one({"_id": second["_id"]}, {"$set": {"data": first["data"]}})
    status, _, body = await client.get(
        f"/api/v1/carves/{carve_id}/archive", Range="bytes=8192-16383"
    )
    assert status == 500
    assert b'"integrity_error"' in body
    assert data[8192:8300] not in body
    # The whole archive: the first window holds the bad chunk, so the answer is a 500 too.
    status, _, body = await client.get(f"/api/v1/carves/{carve_id}/archive")
    assert status == 500 and b'"integrity_error"' in body
    # With one chunk per window the first chunk goes out, then the response stops short:
    # never the swapped bytes.
    narrow = await stack.start_download(download_batch_bytes=8192)
    async with client.http.get(
        f"{narrow.url}/api/v1/carves/{carve_id}/archive",
        headers={"X-Vault-Token": client.token},
    ) as resp:
        assert resp.status == 200
        got = b""
        with pytest.raises(aiohttp.ClientPayloadError):
            async for piece in resp.content.iter_any():
                got += piece
    assert got == data[:8192]
    codes = await _audit_codes(stack, carve_id)
    assert ("archive", 500, "integrity_error") in codes
    assert sum(1 for c in codes if c[2] == "integrity_error") == 3
    assert (await scrape(client.url))["carve_integrity_errors_total"] == 2
    assert (await scrape(narrow.url))["carve_integrity_errors_total"] == 1


async def test_a_chunk_moved_to_another_carve_fails_authentication(
    client: Client, tmp_path: Path
) -> None:
    stack = client.stack
    one, _ = await upload(stack, tmp_path)
    other, _ = await upload(stack, tmp_path)
    coll = stack.db["archives.chunks"]
    theirs = await coll.find_one({"files_id": other, "n": 0})
    assert theirs is not None
    await coll.update_one({"files_id": one, "n": 0}, {"$set": {"data": theirs["data"]}})
    status, _, body = await client.get(f"/api/v1/carves/{one}/files/etc/hosts")
    assert status == 500 and b'"integrity_error"' in body
    # A clear chunk put in the place of a sealed one is refused as well.
    await coll.update_one({"files_id": other, "n": 0}, {"$set": {"data": b"\0" * 8192}})
    status, _, body = await client.get(f"/api/v1/carves/{other}/archive", Range="bytes=0-10")
    assert status == 500 and b'"integrity_error"' in body
    assert ("file", 500, "integrity_error") in await _audit_codes(stack, one)


async def test_triage_reads_sealed_carves(sealed_stack: Stack, tmp_path: Path) -> None:
    library = write_library(tmp_path / "lib")
    await sealed_stack.start_triage(**library)
    carve_id, _ = await upload(sealed_stack, tmp_path)
    triage = await wait_triaged(sealed_stack, carve_id)
    assert (triage["status"], triage["verdict"]) == ("done", "flagged")
    assert {h["member"] for h in triage["hits"]} == {"/tmp/payload.bin"}


# --- crypto-shredding ---------------------------------------------------------------------

BACKED_UP = ("carves", "archives.files", "archives.chunks")


async def backup(stack: Stack) -> dict[str, list[dict[str, Any]]]:
    """What a MongoDB backup holds of the carves: their documents and their GridFS files."""
    return {name: await stack.db[name].find({}).to_list() for name in BACKED_UP}


async def restore(stack: Stack, copy: dict[str, list[dict[str, Any]]]) -> None:
    for name, rows in copy.items():
        await stack.db[name].delete_many({})
        if rows:
            await stack.db[name].insert_many(rows)


async def test_a_backup_taken_before_expiry_cannot_be_decrypted_after_it(
    sealed_stack: Stack, vault: VaultAdmin, tmp_path: Path
) -> None:
    stack = sealed_stack
    expiring, _ = await upload(stack, tmp_path)
    deleted, _ = await upload(stack, tmp_path)
    kept, kept_data = await upload(stack, tmp_path)
    old = (await stack.carve_doc(expiring) or {})["completed_at"] - timedelta(days=40)
    await stack.db["carves"].update_one({"_id": expiring}, {"$set": {"completed_at": old}})
    copy = await backup(stack)
    wrapped = {c["_id"]: c["encryption"]["wrapped"] for c in copy["carves"]}
    # An administrator deletes one carve; the janitor expires another and shreds both keys.
    admin = vault.token(POLICY, "osquery-file-carve-admin").token
    download = await stack.start_download()
    async with aiohttp.ClientSession() as http:
        async with http.delete(
            f"{download.url}/api/v1/carves/{deleted}", headers={"X-Vault-Token": admin}
        ) as resp:
            assert resp.status == 200, await resp.text()
    janitor = await stack.start_janitor()
    report = await run_sweep(janitor.app)
    assert report.actions["expired"] == 1
    assert report.actions["keys_shredded"] == 2
    for carve_id in (expiring, deleted):
        doc = await stack.carve_doc(carve_id)
        assert doc is not None and doc["encryption"]["shredded_at"]
        assert "wrapped" not in doc["encryption"]
        assert await stack.chunk_count(carve_id) == 0
    assert await stack.chunk_count(kept) > 0
    # Vault itself (root) can no longer unwrap the keys the backup holds, only the kept one.
    transit = vault.client.secrets.transit
    for carve_id in (expiring, deleted):
        with pytest.raises(hvac.exceptions.InvalidRequest, match="not found"):
            transit.decrypt_data(f"osquery-carves-{carve_id}", ciphertext=wrapped[carve_id])
    transit.decrypt_data(f"osquery-carves-{kept}", ciphertext=wrapped[kept])
    # The backup restored: chunks and wrapped keys are back, yet nothing reads them.
    await restore(stack, copy)
    assert (await stack.carve_doc(expiring) or {})["status"] == "complete"
    fresh = await stack.start_download()  # no data key cached in its memory
    reader = vault.token(POLICY).token
    async with aiohttp.ClientSession() as http:
        for carve_id in (expiring, deleted):
            async with http.get(
                f"{fresh.url}/api/v1/carves/{carve_id}/archive", headers={"X-Vault-Token": reader}
            ) as resp:
                assert resp.status == 410
                assert (await resp.json())["code"] == "shredded"
        async with http.get(
            f"{fresh.url}/api/v1/carves/{kept}/archive", headers={"X-Vault-Token": reader}
        ) as resp:
            assert (resp.status, await resp.read()) == (200, kept_data)


async def test_a_campaign_export_of_sealed_carves_is_byte_exact(client: Client) -> None:
    stack = client.stack
    rid = f"campaign-{uuid.uuid4().hex[:8]}"
    uploads = [Upload(stack, random_bytes(30_000 + k, 50 + k), 4096) for k in range(2)]
    async with aiohttp.ClientSession() as http:
        for up in uploads:
            up.request_id = rid
            await up.start(http)
            await up.send_all(http, range(up.count))
    for up in uploads:
        await stack.wait_complete(up.carve_id)
    status, _, body = await client.get(f"/api/v1/requests/{rid}/export")
    assert status == 200
    with zipfile.ZipFile(io.BytesIO(body)) as archive:
        names = [n for n in archive.namelist() if n.startswith("carves/")]
        got = {name.rsplit("_", 1)[-1]: archive.read(name) for name in names}
    assert got == {f"{up.carve_id}.tar": up.data for up in uploads}
