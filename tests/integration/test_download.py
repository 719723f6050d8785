"""The responder API against real OpenBao, real uploads and real GridFS, checked byte for byte."""

from __future__ import annotations

import asyncio
import hashlib
import io
import logging
import tarfile
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
import yarl
from multidict import CIMultiDict

from clients.osquery_sim import build_archive, carve, carve_member_name
from devstack import ROOT
from devstack.backends import Backends
from devstack.servers import BaoServer
from devstack.services import scrape
from devstack.vault import POLICY, Token, VaultAdmin
from tests.stack import Stack
from tests.uploads import Upload, random_bytes

AUTH_LOG = random_bytes(40_000, seed=7)
MEMBERS = {
    "/var/log/auth.log": AUTH_LOG,
    "/etc/hosts": b"127.0.0.1 localhost\n",
    "/home/ann/notes with space.txt": b"evidence\n" * 100,
}


@dataclass
class Carved:
    carve_id: str
    data: bytes
    sha256: str
    guid: str


@dataclass
class Responder:
    stack: Stack
    url: str
    vault: VaultAdmin
    token: Token
    http: aiohttp.ClientSession

    def headers(self, token: str | None = None) -> dict[str, str]:
        return {"X-Vault-Token": token or self.token.token}

    async def get(
        self, path: str, token: str | None = None, **headers: str
    ) -> tuple[int, CIMultiDict[str], bytes]:
        async with self.http.get(
            self.url + path, headers={**self.headers(token), **headers}
        ) as resp:
            return resp.status, resp.headers.copy(), await resp.read()

    async def json(self, path: str, token: str | None = None) -> tuple[int, Any]:
        status, _, body = await self.get(path, token)
        return status, orjson.loads(body)

    async def upload(
        self, tmp_path: Path, *, compress: bool = False, block_size: int = 4096
    ) -> Carved:
        guid = str(uuid.uuid4())
        archive = build_archive(MEMBERS, tmp_path / guid, carve_guid=guid, compress=compress)
        result = await carve(self.http, self.stack.ingest_url, archive, block_size=block_size)
        assert result.ok, result
        await self.stack.wait_complete(result.carve_id)
        data = archive.read_bytes()
        return Carved(result.carve_id, data, hashlib.sha256(data).hexdigest(), guid)

    async def audit(self, carve_id: str) -> list[dict[str, Any]]:
        # Audit rows are written right after the response: give the last one a moment.
        await asyncio.sleep(0.2)
        return await self.stack.db["audit"].find({"carve_id": carve_id}).to_list()


@pytest.fixture
async def responder(stack: Stack, vault: VaultAdmin) -> AsyncIterator[Responder]:
    download = await stack.start_download(vault_cache_ttl=0.5)
    async with aiohttp.ClientSession() as http:
        yield Responder(stack, download.url, vault, vault.token(POLICY), http)


@pytest.fixture
async def carved(responder: Responder, tmp_path: Path) -> Carved:
    return await responder.upload(tmp_path)


# --- authentication and authorization -----------------------------------------------------


async def test_token_with_policy_sees_carve_without_private_fields(
    responder: Responder, carved: Carved
) -> None:
    status, page = await responder.json("/api/v1/carves")
    assert status == 200
    assert [c["carve_id"] for c in page["carves"]] == [carved.carve_id]
    status, one = await responder.json(f"/api/v1/carves/{carved.carve_id}")
    assert status == 200
    assert one == page["carves"][0]
    assert one["status"] == "complete"
    assert one["sha256"] == carved.sha256
    assert one["progress"] == 1.0
    assert one["carve_size"] == len(carved.data)
    assert one["compression"] == "none"
    assert one["filename"] == f"carve_{carved.carve_id}.tar"
    assert "node_key" not in one and "session_id" not in one


async def test_bearer_header_is_accepted(responder: Responder, carved: Carved) -> None:
    async with responder.http.get(
        f"{responder.url}/api/v1/carves/{carved.carve_id}",
        headers={"Authorization": f"Bearer {responder.token.token}"},
    ) as resp:
        assert resp.status == 200
        assert (await resp.json())["carve_id"] == carved.carve_id


async def test_policy_through_identity_group(responder: Responder, carved: Carved) -> None:
    user = responder.vault.user_in_group("grace", "s3cret-pw", "responders", POLICY)
    status, _, body = await responder.get(f"/api/v1/carves/{carved.carve_id}/archive", user.token)
    assert status == 200
    assert body == carved.data
    rows = await responder.audit(carved.carve_id)
    assert [(r["display_name"], r["outcome"]) for r in rows] == [("userpass-grace", "allowed")]


async def test_token_without_policy_is_forbidden_and_audited(
    responder: Responder, carved: Carved
) -> None:
    other = responder.vault.token("default")
    status, body = await responder.json(f"/api/v1/carves/{carved.carve_id}", other.token)
    assert status == 403
    assert body["code"] == "forbidden"
    assert POLICY in body["error"]
    status, _, raw = await responder.get(f"/api/v1/carves/{carved.carve_id}/archive", other.token)
    assert status == 403
    assert carved.data[:100] not in raw
    rows = await responder.audit(carved.carve_id)
    assert {(r["action"], r["outcome"], r["status"]) for r in rows} == {
        ("carve", "denied", 403),
        ("archive", "denied", 403),
    }
    assert {r["accessor"] for r in rows} == {other.accessor}
    assert all(r["bytes_sent"] == 0 for r in rows)


@pytest.mark.parametrize("token", [None, "", "s.bogus-token-never-issued"])
async def test_missing_or_bogus_token_is_unauthorized(
    responder: Responder, carved: Carved, token: str | None
) -> None:
    headers = {} if token is None else {"X-Vault-Token": token}
    async with responder.http.get(
        f"{responder.url}/api/v1/carves/{carved.carve_id}/archive", headers=headers
    ) as resp:
        assert resp.status == 401
        body = await resp.json()
    assert body["code"] == "unauthorized"
    rows = await responder.audit(carved.carve_id)
    assert [(r["outcome"], r["status"], r["display_name"]) for r in rows] == [("denied", 401, None)]


async def test_revoked_token_refused_once_cache_expires(
    responder: Responder, carved: Carved
) -> None:
    mine = responder.vault.token(POLICY)
    path = f"/api/v1/carves/{carved.carve_id}"
    assert (await responder.get(path, mine.token))[0] == 200
    responder.vault.revoke(mine.token)
    # The fixture's cache TTL is 0.5 s: the revocation shows within it.
    await asyncio.sleep(0.7)
    assert (await responder.get(path, mine.token))[0] == 401
    assert (await responder.get(path))[0] == 200  # others unaffected


async def test_expired_token_is_unauthorized(responder: Responder, carved: Carved) -> None:
    short = responder.vault.token(POLICY, ttl="2s")
    path = f"/api/v1/carves/{carved.carve_id}"
    assert (await responder.get(path, short.token))[0] == 200
    await asyncio.sleep(2.8)
    status, _, body = await responder.get(path, short.token)
    assert status == 401, body


async def test_vault_down_is_503_and_not_ready(stack: Stack, tmp_path: Path) -> None:
    bao = BaoServer(tmp_path / "own-openbao")
    bao.start()
    try:
        token = VaultAdmin.provisioned(bao).token(POLICY)
        download = await stack.start_download(vault_addr=bao.url, vault_cache_ttl=0)
        async with aiohttp.ClientSession(headers={"X-Vault-Token": token.token}) as http:
            async with http.get(download.url + "/api/v1/carves") as resp:
                assert resp.status == 200
            bao.stop()
            async with http.get(download.url + "/api/v1/carves") as resp:
                assert resp.status == 503
                assert (await resp.json())["code"] == "unavailable"
            async with http.get(download.url + "/readyz") as resp:
                assert resp.status == 503
                assert (await resp.json())["checks"]["vault"].startswith("error")
            metrics = await scrape(download.url)
            assert metrics['carve_download_requests_total{action="list",outcome="error"}'] >= 1
    finally:
        bao.stop()


# --- the archive ----------------------------------------------------------------------------


async def test_archive_whole_with_headers(responder: Responder, carved: Carved) -> None:
    status, headers, body = await responder.get(f"/api/v1/carves/{carved.carve_id}/archive")
    assert status == 200
    assert body == carved.data
    assert headers["Content-Length"] == str(len(carved.data))
    assert headers["ETag"] == f'"{carved.sha256}"'
    assert headers["Accept-Ranges"] == "bytes"
    assert headers["Content-Type"] == "application/x-tar"
    assert headers["Content-Disposition"] == (f'attachment; filename="carve_{carved.carve_id}.tar"')
    rows = await responder.audit(carved.carve_id)
    assert [(r["action"], r["bytes_sent"]) for r in rows] == [("archive", len(carved.data))]
    metrics = await scrape(responder.url)
    assert metrics['carve_download_bytes_total{action="archive"}'] == len(carved.data)


async def test_head_sends_headers_only(responder: Responder, carved: Carved) -> None:
    async with responder.http.head(
        f"{responder.url}/api/v1/carves/{carved.carve_id}/archive", headers=responder.headers()
    ) as resp:
        assert resp.status == 200
        assert resp.headers["Content-Length"] == str(len(carved.data))
        assert resp.headers["ETag"] == f'"{carved.sha256}"'
        assert await resp.read() == b""


@pytest.mark.parametrize(
    ("header", "start", "end"),
    [
        ("bytes=0-99", 0, 99),  # first bytes
        ("bytes=4000-8300", 4000, 8300),  # across two chunk boundaries (4 KiB blocks)
        ("bytes=4096-4096", 4096, 4096),  # one byte, first of a chunk
        ("bytes=-500", -500, None),  # suffix
        ("bytes=10000-", 10000, None),  # open ended
        ("bytes=100-999999999", 100, None),  # end past the size: clamped
    ],
)
async def test_range_requests(
    responder: Responder, carved: Carved, header: str, start: int, end: int | None
) -> None:
    size = len(carved.data)
    status, headers, body = await responder.get(
        f"/api/v1/carves/{carved.carve_id}/archive", Range=header
    )
    want = carved.data[start:] if end is None else carved.data[start : end + 1]
    first = start % size
    assert status == 206
    assert body == want
    assert headers["Content-Range"] == f"bytes {first}-{first + len(want) - 1}/{size}"
    assert headers["Content-Length"] == str(len(want))


async def test_range_past_the_end_is_416(responder: Responder, carved: Carved) -> None:
    size = len(carved.data)
    status, headers, body = await responder.get(
        f"/api/v1/carves/{carved.carve_id}/archive", Range=f"bytes={size}-"
    )
    assert status == 416
    assert headers["Content-Range"] == f"bytes */{size}"
    assert b"range_not_satisfiable" in body


@pytest.mark.parametrize("header", ["bytes=0-1,5-9", "items=0-5", "bytes=9-2", "bytes=x-y"])
async def test_unusable_range_gives_whole_file(
    responder: Responder, carved: Carved, header: str
) -> None:
    status, _, body = await responder.get(f"/api/v1/carves/{carved.carve_id}/archive", Range=header)
    assert status == 200
    assert body == carved.data


async def test_if_none_match_and_if_range(responder: Responder, carved: Carved) -> None:
    path = f"/api/v1/carves/{carved.carve_id}/archive"
    etag = f'"{carved.sha256}"'
    status, headers, body = await responder.get(path, **{"If-None-Match": etag})
    assert (status, body, headers["ETag"]) == (304, b"", etag)
    status, _, body = await responder.get(path, **{"If-None-Match": '"other"'})
    assert (status, body) == (200, carved.data)
    status, _, body = await responder.get(path, Range="bytes=10-19", **{"If-Range": etag})
    assert (status, body) == (206, carved.data[10:20])
    status, _, body = await responder.get(path, Range="bytes=10-19", **{"If-Range": '"stale"'})
    assert (status, body) == (200, carved.data)


async def test_incomplete_carve_is_409_with_progress(responder: Responder) -> None:
    upload = Upload(responder.stack, random_bytes(5 * 4096, seed=3), 4096)
    await upload.start(responder.http)
    await upload.send_all(responder.http, [0, 2])
    await responder.stack.wait_for(upload.carve_id, lambda d: d["blocks_received"] == 2)
    status, body = await responder.json(f"/api/v1/carves/{upload.carve_id}/archive")
    assert status == 409
    assert body["code"] == "not_complete"
    assert (body["status"], body["blocks_received"], body["block_count"]) == ("receiving", 2, 5)
    status, body = await responder.json(f"/api/v1/carves/{upload.carve_id}")
    assert (status, body["progress"]) == (200, 0.4)
    status, body = await responder.json(f"/api/v1/carves/{upload.carve_id}/files")
    assert (status, body["code"]) == (409, "not_complete")


async def test_unknown_carve_is_404(responder: Responder) -> None:
    status, body = await responder.json("/api/v1/carves/no-such-carve/archive")
    assert (status, body["code"]) == (404, "not_found")


@pytest.mark.parametrize(
    "path",
    [
        "/api/v1/carves/..%2F..%2Fetc/archive",
        "/api/v1/carves/%2e%2e/archive",
        "/api/v1/carves/abc%00def/archive",
        "/api/v1/carves/.hidden",
        "/api/v1/carves/" + "a" * 129,
    ],
)
async def test_bad_carve_ids_are_refused(responder: Responder, carved: Carved, path: str) -> None:
    async with responder.http.get(
        yarl_url(responder.url + path), headers=responder.headers()
    ) as resp:
        assert resp.status in (400, 404)
        assert resp.content_type == "application/json"
        body = await resp.read()
    assert carved.data[:512] not in body


def yarl_url(raw: str) -> yarl.URL:
    return yarl.URL(raw, encoded=True)  # sent as written: no client-side normalisation


# --- tar members ----------------------------------------------------------------------------


@pytest.mark.parametrize("compress", [False, True])
async def test_members_listed_and_downloaded(
    responder: Responder, tmp_path: Path, compress: bool
) -> None:
    carved = await responder.upload(tmp_path, compress=compress, block_size=8192)
    status, listing = await responder.json(f"/api/v1/carves/{carved.carve_id}/files")
    assert status == 200
    assert listing["truncated"] is False
    by_path = {m["path"]: m for m in listing["members"]}
    assert set(by_path) == set(MEMBERS)
    for path, content in MEMBERS.items():
        member = by_path[path]
        assert member["size"] == len(content)
        assert member["type"] == "file"
        assert member["name"] == carve_member_name(carved.guid, path)
    status, body = await responder.json(f"/api/v1/carves/{carved.carve_id}")
    assert body["compression"] == ("zstd" if compress else "none")
    for path, content in MEMBERS.items():
        url = f"/api/v1/carves/{carved.carve_id}/files{path.replace(' ', '%20')}"
        status, headers, got = await responder.get(url)
        assert status == 200, got
        assert got == content
        assert headers["Content-Length"] == str(len(content))
    # The raw member name works too.
    raw = carve_member_name(carved.guid, "/etc/hosts")
    status, _, got = await responder.get(f"/api/v1/carves/{carved.carve_id}/files{raw}")
    assert (status, got) == (200, MEMBERS["/etc/hosts"])


async def test_member_listing_limit(responder: Responder, carved: Carved) -> None:
    status, listing = await responder.json(f"/api/v1/carves/{carved.carve_id}/files?limit=2")
    assert status == 200
    assert len(listing["members"]) == 2
    assert listing["truncated"] is True


@pytest.mark.parametrize(
    ("member", "statuses"),
    [
        ("/../../../etc/passwd", (400, 404)),
        ("/%2e%2e/%2e%2e/etc/passwd", (400,)),
        ("/var/log/..%2F..%2Fetc/hosts", (400,)),
        ("/var/log/auth.log%00.txt", (400,)),
        ("/var/log/missing.log", (404,)),
        ("/var/log", (404,)),
    ],
)
async def test_bad_member_paths_are_refused(
    responder: Responder, carved: Carved, member: str, statuses: tuple[int, ...]
) -> None:
    url = yarl_url(f"{responder.url}/api/v1/carves/{carved.carve_id}/files{member}")
    async with responder.http.get(url, headers=responder.headers()) as resp:
        assert resp.status in statuses, await resp.text()
        assert resp.content_type == "application/json"
        assert AUTH_LOG[:64] not in await resp.read()


# --- the original server's endpoint -------------------------------------------------------


async def test_file_request_streams_archive(responder: Responder, carved: Carved) -> None:
    body = {
        "file_carve_guid": carved.carve_id,
        "token": responder.token.token,
        "token_accessor": responder.token.accessor,
    }
    async with responder.http.post(responder.url + "/file_request", json=body) as resp:
        assert resp.status == 200
        assert await resp.read() == carved.data
    del body["token_accessor"]
    async with responder.http.post(responder.url + "/file_request", json=body) as resp:
        assert resp.status == 200
        assert await resp.read() == carved.data


async def test_file_request_with_wrong_accessor_is_forbidden(
    responder: Responder, carved: Carved
) -> None:
    someone_else = responder.vault.token(POLICY)
    body = {
        "file_carve_guid": carved.carve_id,
        "token": responder.token.token,
        "token_accessor": someone_else.accessor,
    }
    async with responder.http.post(responder.url + "/file_request", json=body) as resp:
        assert resp.status == 403
        assert (await resp.json())["code"] == "forbidden"
    rows = await responder.audit(carved.carve_id)
    assert [(r["action"], r["outcome"], r["bytes_sent"]) for r in rows] == [
        ("file_request", "denied", 0)
    ]


@pytest.mark.parametrize(
    "raw",
    [b"not json", b"[]", b'{"token": "x"}', b'{"file_carve_guid": 5, "token": "x"}'],
)
async def test_file_request_bad_body_is_400(responder: Responder, raw: bytes) -> None:
    headers = {"Content-Type": "application/json"}
    async with responder.http.post(
        responder.url + "/file_request", data=raw, headers=headers
    ) as resp:
        assert resp.status == 400
        assert (await resp.json())["code"] == "invalid_request"


# --- listing ----------------------------------------------------------------------------------


async def test_listing_filters_and_pages(responder: Responder, tmp_path: Path) -> None:
    done = [await responder.upload(tmp_path / str(i)) for i in range(3)]
    pending = Upload(responder.stack, random_bytes(3 * 4096, seed=9), 4096)
    await pending.start(responder.http)
    status, page1 = await responder.json("/api/v1/carves?limit=2")
    assert status == 200
    assert len(page1["carves"]) == 2 and page1["next_cursor"]
    status, page2 = await responder.json(f"/api/v1/carves?limit=2&cursor={page1['next_cursor']}")
    assert len(page2["carves"]) == 2 and page2["next_cursor"] is None
    seen = [c["carve_id"] for c in page1["carves"] + page2["carves"]]
    assert seen == [pending.carve_id] + [c.carve_id for c in reversed(done)]  # newest first
    status, complete = await responder.json("/api/v1/carves?status=complete")
    assert {c["carve_id"] for c in complete["carves"]} == {c.carve_id for c in done}
    status, receiving = await responder.json("/api/v1/carves?status=receiving")
    assert [c["carve_id"] for c in receiving["carves"]] == [pending.carve_id]
    since = page1["carves"][0]["created_at"]
    status, recent = await responder.json(f"/api/v1/carves?since={since.replace('+', '%2B')}")
    assert [c["carve_id"] for c in recent["carves"]] == [pending.carve_id]


@pytest.mark.parametrize(
    "query", ["status=bogus", "limit=0", "limit=1001", "limit=x", "since=yesterday", "cursor=%%%"]
)
async def test_listing_bad_parameters_are_400(responder: Responder, query: str) -> None:
    status, body = await responder.json(f"/api/v1/carves?{query}")
    assert (status, body["code"]) == (400, "invalid_request")


# --- faults and secrets --------------------------------------------------------------------


async def test_mongodb_down_is_503_then_recovers(
    responder: Responder, carved: Carved, backends: Backends
) -> None:
    path = f"/api/v1/carves/{carved.carve_id}/archive"
    backends.mongo.stop()
    try:
        status, headers, body = await responder.get(path)
        assert status == 503, body
        assert headers["Retry-After"] == "1"
        assert orjson.loads(body)["code"] == "unavailable"
    finally:
        backends.mongo.start()
    status, _, body = await responder.get(path)
    assert (status, body) == (200, carved.data)


async def test_tokens_never_logged_or_stored(
    responder: Responder, carved: Carved, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    no_policy = responder.vault.token("default")
    bogus = "s.never-issued-" + uuid.uuid4().hex
    for token in (responder.token.token, no_policy.token, bogus):
        await responder.get(f"/api/v1/carves/{carved.carve_id}/archive", token)
        await responder.get("/api/v1/carves", token)
    body = {"file_carve_guid": carved.carve_id, "token": responder.token.token}
    async with responder.http.post(responder.url + "/file_request", json=body) as resp:
        assert resp.status == 200
    rows = await responder.audit(carved.carve_id)
    assert len(rows) == 4
    stored = repr(rows)
    for token in (responder.token.token, no_policy.token, bogus):
        assert token not in caplog.text
        assert token not in stored
    assert "carve.audit" in caplog.text  # audit lines were captured: the check means something


async def test_damaged_archive_is_refused_or_cut_short_never_wrong(
    responder: Responder, carved: Carved
) -> None:
    await responder.stack.db["archives.chunks"].delete_one({"files_id": carved.carve_id, "n": 3})
    path = f"/api/v1/carves/{carved.carve_id}/archive"
    # The gap is in the first window of chunks fetched: refused before any byte.
    status, _, body = await responder.get(path)
    assert (status, orjson.loads(body)["code"]) == (500, "corrupt_archive")
    # Bytes before the gap are still served; a range that needs the gap never starts.
    status, _, body = await responder.get(path, Range="bytes=0-99")
    assert (status, body) == (206, carved.data[:100])
    status, _, body = await responder.get(path, Range="bytes=12288-12387")
    assert (status, orjson.loads(body)["code"]) == (500, "corrupt_archive")
    # With windows of two chunks the gap shows mid-stream: the response is cut short.
    small = await responder.stack.start_download(download_batch_bytes=8192)
    async with responder.http.get(small.url + path, headers=responder.headers()) as resp:
        assert resp.status == 200
        with pytest.raises(aiohttp.ClientPayloadError):
            await resp.read()
    rows = await responder.audit(carved.carve_id)
    assert sorted(r["outcome"] for r in rows) == ["aborted", "allowed", "error", "error"]
    aborted = next(r for r in rows if r["outcome"] == "aborted")
    assert aborted["bytes_sent"] == 2 * 4096


# --- deleting on purpose ----------------------------------------------------------------------

ADMIN = "osquery-file-carve-admin"


async def test_delete_needs_the_admin_policy_and_keeps_a_tombstone(
    responder: Responder, carved: Carved
) -> None:
    url = f"{responder.url}/api/v1/carves/{carved.carve_id}"
    responder.vault.client.sys.create_or_update_policy(
        ADMIN, (ROOT / "deploy" / "vault" / f"{ADMIN}.hcl").read_text()
    )
    for token in (responder.token, responder.vault.token(ADMIN)):  # read only; admin only
        async with responder.http.delete(url, headers=responder.headers(token.token)) as resp:
            assert resp.status == 403
    blocks = -(-len(carved.data) // 4096)
    assert await responder.stack.chunk_count(carved.carve_id) == blocks
    admin = responder.vault.token(POLICY, ADMIN)
    async with responder.http.delete(url, headers=responder.headers(admin.token)) as resp:
        assert resp.status == 200
        body = await resp.json()
    assert (body["status"], body["chunks_deleted"], body["bytes_freed"]) == (
        "deleted",
        blocks,
        len(carved.data),
    )
    assert body["deleted_by"] == "token-token"  # Vault's display_name of a token-store token
    assert body["sha256"] == carved.sha256  # the tombstone keeps the evidence's fingerprint
    assert await responder.stack.chunk_count(carved.carve_id) == 0
    status, archive = await responder.json(f"/api/v1/carves/{carved.carve_id}/archive")
    assert (status, archive["code"], archive["status"]) == (410, "gone", "deleted")
    async with responder.http.delete(url, headers=responder.headers(admin.token)) as resp:
        assert resp.status == 410
    rows = await responder.audit(carved.carve_id)
    deletes = [(r["outcome"], r["status"]) for r in rows if r["action"] == "delete"]
    assert deletes == [("denied", 403), ("denied", 403), ("allowed", 200), ("refused", 410)]


# --- hostile archives and odd requests -------------------------------------------------------


async def upload_tar(responder: Responder, tmp_path: Path, fill: Any) -> str:
    """Carve a tar built by ``fill(tar, guid)`` and return its carve id."""
    guid = str(uuid.uuid4())
    path = tmp_path / f"{guid}.tar"
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as tar:
        fill(tar, guid)
    result = await carve(responder.http, responder.stack.ingest_url, path, block_size=64 * 1024)
    assert result.ok, result
    await responder.stack.wait_complete(result.carve_id)
    return result.carve_id


def add(tar: tarfile.TarFile, name: str, data: bytes, **fields: Any) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    for key, value in fields.items():
        setattr(info, key, value)
    tar.addfile(info, io.BytesIO(data))


async def test_head_on_every_route_sends_no_body(responder: Responder, carved: Carved) -> None:
    # One connection for everything: a body after a HEAD would be read as the next answer.
    connector = aiohttp.TCPConnector(limit=1)
    base = f"{responder.url}/api/v1/carves/{carved.carve_id}"
    async with aiohttp.ClientSession(connector=connector, headers=responder.headers()) as http:
        for path in ("", "/archive", "/files", "/files/var/log/auth.log"):
            async with http.head(base + path) as resp:
                assert resp.status == 200, path
            async with http.get(base) as resp:
                assert (await resp.json())["carve_id"] == carved.carve_id, path
        async with http.head(base + "/files/var/log/auth.log") as resp:
            assert resp.headers["Content-Length"] == str(len(AUTH_LOG))


async def test_odd_member_names_and_times_are_listed(responder: Responder, tmp_path: Path) -> None:
    def fill(tar: tarfile.TarFile, guid: str) -> None:
        add(tar, f"/tmp/osquery_carve_{guid}/var/\udcffodd.log", b"latin-1 name\n")
        add(tar, f"/tmp/osquery_carve_{guid}/var/far.log", b"far future\n", mtime=1e20)

    carve_id = await upload_tar(responder, tmp_path, fill)
    status, listing = await responder.json(f"/api/v1/carves/{carve_id}/files")
    assert status == 200, listing
    by_path = {m["path"]: m for m in listing["members"]}
    assert set(by_path) == {"/var/\\xffodd.log", "/var/far.log"}
    assert by_path["/var/far.log"]["mtime"] is None
    status, _, body = await responder.get(f"/api/v1/carves/{carve_id}/files/var/%5Cxffodd.log")
    assert (status, body) == (200, b"latin-1 name\n")


async def test_oversized_tar_headers_are_refused(responder: Responder, tmp_path: Path) -> None:
    def fill(tar: tarfile.TarFile, guid: str) -> None:
        info = tarfile.TarInfo(f"/tmp/osquery_carve_{guid}/bomb")
        info.pax_headers = {"comment": "x" * (2 * 1024 * 1024)}  # read whole by tarfile
        tar.addfile(info, io.BytesIO(b""))

    carve_id = await upload_tar(responder, tmp_path, fill)
    status, body = await responder.json(f"/api/v1/carves/{carve_id}/files")
    assert (status, body["code"]) == (422, "archive_header_too_large")


async def test_many_members_and_a_missing_path(responder: Responder, tmp_path: Path) -> None:
    def fill(tar: tarfile.TarFile, guid: str) -> None:
        for i in range(3000):
            add(tar, f"/tmp/osquery_carve_{guid}/d/{i}", b"")

    carve_id = await upload_tar(responder, tmp_path, fill)
    status, listing = await responder.json(f"/api/v1/carves/{carve_id}/files?limit=2500")
    assert (status, len(listing["members"]), listing["truncated"]) == (200, 2500, True)
    status, body = await responder.json(f"/api/v1/carves/{carve_id}/files/d/missing")
    assert (status, body["code"]) == (404, "not_found")


@pytest.mark.parametrize("token", ["s.has space", "s.\x7fdel", "x" * 2000])
async def test_malformed_tokens_are_refused_without_asking_vault(
    responder: Responder, carved: Carved, token: str
) -> None:
    before = await scrape(responder.url)
    body = {"file_carve_guid": carved.carve_id, "token": token}
    async with responder.http.post(responder.url + "/file_request", json=body) as resp:
        assert resp.status == 401
    after = await scrape(responder.url)
    lookups = "carve_vault_lookup_seconds_count"
    assert after[lookups] == before[lookups]


async def test_file_request_body_split_across_packets(responder: Responder, carved: Carved) -> None:
    body = orjson.dumps({"file_carve_guid": carved.carve_id, "token": responder.token.token})
    host, port = responder.url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    head = (
        f"POST /file_request HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    )
    writer.write(head.encode() + body[:20])
    await writer.drain()
    await asyncio.sleep(0.2)
    writer.write(body[20:])
    await writer.drain()
    raw = await reader.read()
    writer.close()
    status_line, _, rest = raw.partition(b"\r\n")
    assert status_line == b"HTTP/1.1 200 OK"
    assert rest.endswith(carved.data)


async def test_malformed_header_does_not_log_the_token(stack: Stack, vault: VaultAdmin) -> None:
    """aiohttp logs a malformed request with its header text; the service redacts it."""
    download = await stack.spawn("download")
    token = vault.token(POLICY).token
    reader, writer = await asyncio.open_connection("127.0.0.1", download.port)
    writer.write(
        f"GET /api/v1/carves HTTP/1.1\r\nHost: x\r\nX-Vault-Token: {token}\x01\r\n\r\n".encode()
    )
    await writer.drain()
    assert (await reader.read()).split(b" ", 2)[1] == b"400"
    writer.close()
    await asyncio.sleep(0.3)
    log = download.log_path.read_text()
    assert "malformed HTTP request refused" in log
    assert token not in log
