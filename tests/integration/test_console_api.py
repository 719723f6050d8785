"""The API the console uses, against the real stack: lookups, tickets, login, audit, manifest."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import io
import json
import tarfile
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
import zstandard

from clients import carvectl
from devstack.vault import POLICY, VaultAdmin
from shared.manifest import MAX_ENTRIES
from tests.console import DEVICE, Upload, archive_bytes, console_stack
from tests.integration.test_device_binding import make_cert
from tests.stack import Stack
from tests.uploads import random_bytes

ADMIN = "osquery-file-carve-admin"
MEMBERS = {"/var/log/syslog": random_bytes(20_000, seed=3), "/etc/passwd": b"root:x:0:0\n"}


@dataclass
class Api:
    stack: Stack
    ingest_url: str
    url: str
    vault: VaultAdmin
    http: aiohttp.ClientSession
    tmp: Path
    token: str

    async def call(
        self, method: str, path: str, token: str | None = None, **kw: Any
    ) -> tuple[int, dict[str, str], bytes]:
        headers = {"X-Vault-Token": token or self.token, **kw.pop("headers", {})}
        if method == "POST":
            headers.setdefault("Content-Type", "application/json")  # as the console sends
        if token == "":
            del headers["X-Vault-Token"]
        async with self.http.request(method, self.url + path, headers=headers, **kw) as resp:
            return resp.status, dict(resp.headers), await resp.read()

    async def json(self, method: str, path: str, token: str | None = None, **kw: Any) -> Any:
        status, _, body = await self.call(method, path, token, **kw)

        return status, orjson.loads(body)

    async def carve(
        self, data: bytes, device: tuple[bytes, str, str] = DEVICE, request_id: str = ""
    ) -> Upload:
        upload = Upload(self.ingest_url, data, device)
        upload.request_id = request_id or upload.request_id
        await upload.send_all(self.http)
        await self.stack.wait_complete(upload.carve_id)
        return upload


@pytest.fixture
async def api(stack: Stack, vault: VaultAdmin, tmp_path: Path) -> AsyncIterator[Api]:
    ingest_url, url = await console_stack(stack)
    async with aiohttp.ClientSession() as http:
        yield Api(stack, ingest_url, url, vault, http, tmp_path, vault.token(POLICY).token)


class _Zeros(io.RawIOBase):
    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")
        view[:] = bytes(len(view))
        return len(view)


def zstd_tar(members: dict[str, bytes | int]) -> bytes:
    """A zstd tar; an int member is that many zero bytes, streamed (never held in memory)."""
    out = io.BytesIO()
    with (
        zstandard.ZstdCompressor(level=1).stream_writer(out, closefd=False) as packed,
        tarfile.open(fileobj=packed, mode="w|", format=tarfile.PAX_FORMAT) as tar,
    ):
        for name, content in members.items():
            info = tarfile.TarInfo(name)
            info.size = content if isinstance(content, int) else len(content)
            source = _Zeros() if isinstance(content, int) else io.BytesIO(content)
            tar.addfile(info, io.BufferedReader(source) if isinstance(content, int) else source)
    return out.getvalue()


async def test_find_by_request_id_device_and_prefix(api: Api) -> None:
    other_device = make_cert("db-3.corp.example")
    a = await api.carve(archive_bytes(MEMBERS, api.tmp, compress=False), request_id="live-q-42")
    b = await api.carve(archive_bytes(MEMBERS, api.tmp, compress=True), other_device)

    async def ids(query: str) -> list[str]:
        status, page = await api.json("GET", "/api/v1/carves" + query)
        assert status == 200, page
        return [c["carve_id"] for c in page["carves"]]

    assert await ids("?request_id=live-q-42") == [a.carve_id]
    assert await ids("?device=db-3.corp.example") == [b.carve_id]
    assert await ids(f"?device={DEVICE[1]}") == [a.carve_id]  # the certificate fingerprint
    assert await ids(f"?q={b.carve_id[:6]}") == [b.carve_id]
    assert await ids("?q=zzzz") == []
    assert await ids(f"?request_id=live-q-42&device={other_device[1]}") == []
    status, page = await api.json("GET", f"/api/v1/carves/{a.carve_id}")
    assert page["device"]["common_name"] == "laptop-17.corp.example"
    assert page["manifest"] == {
        "members": 2,
        "truncated": False,
        "error": None,
        "files": 2,
        "paths": ["/var/log/syslog", "/etc/passwd"],  # what was carved, in archive order
    }
    assert await ids("?q=.*") == [] and await ids("?q=a%24") == []  # text, not patterns
    for bad in ("?q=a%0Ab", "?request_id=" + "x" * 300, "?device=a%0Ab"):
        status, body = await api.json("GET", "/api/v1/carves" + bad)
        assert (status, body["code"]) == (400, "invalid_request"), bad


async def test_manifest_of_a_zstd_carve_has_every_sha256(api: Api) -> None:
    upload = await api.carve(archive_bytes(MEMBERS, api.tmp, compress=True))
    status, listing = await api.json("GET", f"/api/v1/carves/{upload.carve_id}/files")
    assert status == 200 and listing["source"] == "manifest"
    got = {m["path"]: m["sha256"] for m in listing["members"] if m["type"] == "file"}
    assert got == {p: hashlib.sha256(c).hexdigest() for p, c in MEMBERS.items()}
    status, headers, body = await api.call(
        "GET", f"/api/v1/carves/{upload.carve_id}/files/etc/passwd"
    )
    assert body == MEMBERS["/etc/passwd"]
    assert headers["X-Carve-Member-SHA256"] == hashlib.sha256(body).hexdigest()


async def test_unreadable_and_oversized_archives_still_complete(api: Api) -> None:
    garbage = await api.carve(random_bytes(5000, seed=9))
    doc = await api.stack.carve_doc(garbage.carve_id)
    assert doc is not None and doc["status"] == "complete" and doc["sha256"] == garbage.sha256
    assert doc["manifest"]["error"].startswith("malformed")
    status, body = await api.json("GET", f"/api/v1/carves/{garbage.carve_id}/files")
    assert (status, body["code"]) == (422, "archive_malformed")  # as the tar listing says
    many: dict[str, bytes | int] = {f"f{i}": b"" for i in range(MAX_ENTRIES + 5)}
    big = await api.carve(zstd_tar(many))
    status, listing = await api.json("GET", f"/api/v1/carves/{big.carve_id}/files?limit=100000")
    assert status == 200
    assert (len(listing["members"]), listing["truncated"]) == (MAX_ENTRIES, True)
    # A zstd bomb: 300 MiB of zeros in a few KB. The manifest stops at its byte budget
    # (256 MiB for so small an archive); the carve completes all the same.
    bomb: dict[str, bytes | int] = {"zeros": 300 * 1024 * 1024, "after": b"x"}
    data = zstd_tar(bomb)
    assert len(data) < 100_000
    carve = await api.carve(data)
    doc = await api.stack.carve_doc(carve.carve_id)
    assert doc is not None and doc["status"] == "complete"
    assert doc["manifest"]["error"].startswith("bytes_budget"), doc["manifest"]
    # The listing then reads the tar itself, within the download service's larger budget.
    status, listing = await api.json("GET", f"/api/v1/carves/{carve.carve_id}/files")
    assert status == 200 and "source" not in listing
    assert [m["path"] for m in listing["members"]] == ["/zeros", "/after"]


async def test_download_tickets_are_single_use_bound_and_ranged(api: Api) -> None:
    upload = await api.carve(archive_bytes(MEMBERS, api.tmp, compress=False))
    other = await api.carve(archive_bytes(MEMBERS, api.tmp, compress=False))
    base = f"/api/v1/carves/{upload.carve_id}"
    status, minted = await api.json("POST", base + "/download-ticket", json={})
    assert status == 200 and minted["url"].startswith(base + "/archive?ticket=")
    status, headers, body = await api.call(
        "GET", minted["url"], token="", headers={"Range": "bytes=100-199"}
    )
    assert (status, body) == (206, upload.data[100:200])
    assert headers["Content-Range"] == f"bytes 100-199/{len(upload.data)}"
    status, _, body = await api.call("GET", minted["url"], token="")
    assert status == 403 and b"already used" in body
    # Another carve's URL, a member it was not minted for, a forged signature: refused.
    _, minted = await api.json("POST", base + "/download-ticket", json={})
    ticket = minted["ticket"]
    for url in (
        f"/api/v1/carves/{other.carve_id}/archive?ticket={ticket}",
        f"{base}/files/etc/passwd?ticket={ticket}",
        f"{base}/archive?ticket={ticket[:-2]}AA",
    ):
        status, _, body = await api.call("GET", url, token="")
        assert status == 403, (url, body)
    _, member = await api.json("POST", base + "/download-ticket", json={"path": "/etc/passwd"})
    status, _headers, body = await api.call("GET", member["url"], token="")
    assert (status, body) == (200, MEMBERS["/etc/passwd"])
    # No token, no ticket: 401; a token without the policy cannot mint one.
    status, _, _ = await api.call("POST", base + "/download-ticket", token="")
    assert status == 401
    status, _, _ = await api.call(
        "POST", base + "/download-ticket", token=api.vault.token("default").token
    )
    assert status == 403
    rows = await api.stack.db["audit"].find({"carve_id": upload.carve_id}).to_list()
    by_action = [(r["action"], r["outcome"], r["display_name"]) for r in rows]
    # Audited as the identity that minted them (a token-store token's display name).
    assert ("archive", "allowed", "token-token") in by_action
    assert ("file", "allowed", "token-token") in by_action


async def test_login_forwarding_rate_limit_logout_and_audit(api: Api) -> None:
    password = uuid.uuid4().hex
    api.vault.client.auth.userpass.create_or_update_user("ada", password, policies=[POLICY])
    status, answer = await api.json(
        "POST", "/api/v1/login", token="", json={"username": "ada", "password": password}
    )
    assert status == 200 and answer["display_name"] == "userpass-ada" and answer["can_read"]
    token = answer["token"]
    status, _page = await api.json("GET", "/api/v1/carves", token=token)
    assert status == 200
    status, _ = await api.json("POST", "/api/v1/logout", token=token)
    assert status == 200
    status, _ = await api.json("GET", "/api/v1/carves", token=token)
    assert status == 401  # revoked in Vault and dropped from the cache at once
    wrong = {"username": "ada", "password": "not-it"}
    codes = [(await api.json("POST", "/api/v1/login", token="", json=wrong))[0] for _ in range(10)]
    # 10 tries in any 60 s per user (and per address): the good login and 9 wrong ones.
    assert codes == [401] * 9 + [429]
    rows = await api.stack.db["audit"].find({"action": "login"}).to_list()
    assert [r["outcome"] for r in rows][:2] == ["allowed", "denied"]
    assert all(r["display_name"] == "userpass-ada" for r in rows)
    assert password not in str(rows) and "not-it" not in str(rows)


async def test_audit_endpoint_is_admin_only_filtered_and_paged(api: Api) -> None:
    upload = await api.carve(archive_bytes(MEMBERS, api.tmp, compress=False))
    for n in range(3):  # three views (the same one again would be one row: test_carve_search)
        await api.call("GET", f"/api/v1/carves/{upload.carve_id}?n={n}")
    status, body = await api.json("GET", "/api/v1/audit")
    assert (status, body["code"]) == (403, "forbidden")
    admin = api.vault.token(POLICY, ADMIN).token
    status, page = await api.json("GET", f"/api/v1/audit?carve_id={upload.carve_id}&limit=2", admin)
    assert status == 200 and len(page["entries"]) == 2 and page["next_cursor"]
    status, rest = await api.json(
        "GET", f"/api/v1/audit?carve_id={upload.carve_id}&cursor={page['next_cursor']}", admin
    )
    assert [e["action"] for e in page["entries"] + rest["entries"]] == ["carve"] * 3
    status, denied = await api.json("GET", "/api/v1/audit?outcome=denied&action=audit", admin)
    assert len(denied["entries"]) == 1 and denied["entries"][0]["status"] == 403
    status, none = await api.json("GET", "/api/v1/audit?since=2999-01-01T00:00:00Z", admin)
    assert none["entries"] == []
    for bad in ("?outcome=maybe", "?since=yesterday", "?cursor=xyz"):
        status, body = await api.json("GET", "/api/v1/audit" + bad, admin)
        assert status == 400, bad


async def test_console_is_served_with_strict_headers(api: Api) -> None:
    async with api.http.get(api.url + "/", allow_redirects=False) as resp:
        assert (resp.status, resp.headers["Location"]) == (302, "/ui/")
    status, headers, body = await api.call("GET", "/ui/", token="")
    assert status == 200 and b'<script type="module" src="app.js">' in body
    csp = headers["Content-Security-Policy"]
    assert "script-src 'self'" in csp and "frame-ancestors 'none'" in csp
    assert "unsafe-inline" not in csp and "require-trusted-types-for 'script'" in csp
    assert headers["X-Content-Type-Options"] == "nosniff"
    assert headers["Referrer-Policy"] == "no-referrer"
    status, headers, _ = await api.call("GET", "/ui/app.js", token="")
    assert status == 200 and headers["Content-Type"].startswith("text/javascript")
    for missing in ("/ui/..%2Fviews.py", "/ui/nothing.js", "/ui/views.py", "/ui/%2e%2e%2fui.py"):
        status, _, _ = await api.call("GET", missing, token="")
        assert status == 404, missing
    status, headers, _ = await api.call("GET", "/api/v1/carves")
    assert "sandbox" in headers["Content-Security-Policy"]
    assert headers["X-Content-Type-Options"] == "nosniff"


# --- carvectl ---------------------------------------------------------------------------


async def run(api: Api, *argv: str) -> tuple[int, str, str]:
    env = {"XDG_CONFIG_HOME": str(api.tmp / "home"), "VAULT_TOKEN": api.token}
    out, err = io.StringIO(), io.StringIO()

    def call() -> int:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            return carvectl.run(["--server", api.url, "--quiet", *argv], env=env)

    code = await asyncio.to_thread(call)
    return code, out.getvalue(), err.getvalue()


async def test_devices_and_request_ids(api: Api, tmp_path: Path) -> None:
    mine = await api.carve(archive_bytes(MEMBERS, api.tmp, compress=True), request_id="q-7")
    other = await api.carve(archive_bytes(MEMBERS, api.tmp, compress=False), make_cert("srv-9"))
    code, out, _ = await run(api, "list")
    assert code == 0
    assert out.splitlines()[0].split()[4] == "HOST"
    shown = {line.split()[0]: line.split()[6] for line in out.splitlines()[1:]}
    assert shown == {mine.carve_id: "laptop-17.corp.example", other.carve_id: "srv-9"}
    code, out, _ = await run(api, "--json", "list", "--device", "srv-9")
    assert [c["carve_id"] for c in json.loads(out)] == [other.carve_id]
    code, out, _ = await run(api, "show", "q-7")  # a request id where a carve id goes
    assert code == 0 and f"carve:      {mine.carve_id}  (complete)" in out
    assert "host:       laptop-17.corp.example" in out
    assert "device:     laptop-17.corp.example (subject CN=laptop-17" in out
    assert f"sha256 {DEVICE[1]}" in out
    target = tmp_path / "by-request.tar.zst"
    code, _, err = await run(api, "get", "q-7", "-o", str(target))
    assert code == 0, err
    assert target.read_bytes() == mine.data
    code, out, _ = await run(api, "files", mine.carve_id)
    for path, content in MEMBERS.items():
        row = next(line for line in out.splitlines() if line.startswith(path))
        assert row.split()[-1] == hashlib.sha256(content).hexdigest()
    await api.carve(archive_bytes(MEMBERS, api.tmp, compress=False), request_id="q-7")
    code, _, err = await run(api, "get", "q-7", "-o", str(tmp_path / "x"))
    assert code == carvectl.EXIT_AMBIGUOUS and "q-7 is the request id of 2 carves" in err
    code, _, err = await run(api, "get", "no-such-request")
    assert code == carvectl.EXIT_NOT_FOUND


async def test_extract_checks_every_file_against_the_manifest(api: Api, tmp_path: Path) -> None:
    carve = await api.carve(archive_bytes(MEMBERS, api.tmp, compress=True))
    code, _, err = await run(api, "extract", carve.carve_id, "-d", str(tmp_path / "good"))
    assert code == 0, err
    assert (tmp_path / "good/etc/passwd").read_bytes() == MEMBERS["/etc/passwd"]
    # The manifest says otherwise (as it would if the archive were swapped after finalize).
    await api.stack.db["manifests"].update_one(
        {"_id": carve.carve_id, "members.path": "/etc/passwd"},
        {"$set": {"members.$.sha256": "0" * 64}},
    )
    code, _, err = await run(api, "extract", carve.carve_id, "-d", str(tmp_path / "bad"))
    assert code == carvectl.EXIT_INTEGRITY
    assert "etc/passwd: SHA-256" in err and "1 file(s) differ from the manifest" in err
