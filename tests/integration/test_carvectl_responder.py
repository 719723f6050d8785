"""carvectl as a responder uses it, against the real services: id prefixes and ambiguity,
one member extracted through the member endpoint (bytes fetched measured), a human ``show``,
410s said as deleted or failed, ``campaign``, and ``export`` resumed and verified."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from clients.carvectl import EXIT_AMBIGUOUS, EXIT_GONE, EXIT_INTEGRITY, EXIT_NOT_FOUND
from clients.osquery_sim import build_archive, carve
from devstack.vault import POLICY, VaultAdmin
from services.janitor.main import run_sweep
from tests.audit_rows import settled_rows
from tests.integration.test_carvectl import Cli
from tests.integration.test_download import Responder
from tests.stack import Stack
from tests.uploads import Upload, random_bytes

ADMIN = "osquery-file-carve-admin"


@pytest.fixture
async def cli(stack: Stack, vault: VaultAdmin, tmp_path: Path) -> AsyncIterator[Cli]:
    download = await stack.start_download(vault_cache_ttl=0.5)
    async with aiohttp.ClientSession() as http:
        responder = Responder(stack, download.url, vault, vault.token(POLICY), http)
        yield Cli(responder, tmp_path / "home")


async def carve_with(
    cli: Cli, tmp: Path, members: dict[str, bytes], *, carve_id: str = "", request_id: str = ""
) -> str:
    guid = carve_id or str(uuid.uuid4())
    archive = build_archive(members, tmp / guid, carve_guid=guid)
    result = await carve(
        cli.responder.http,
        cli.responder.stack.ingest_url,
        archive,
        block_size=64 * 1024,
        carve_id=guid,
        request_id=request_id or None,
        node_key=uuid.uuid4().hex,
    )
    assert result.ok, result
    await cli.responder.stack.wait_complete(result.carve_id)
    return result.carve_id


async def test_prefixes_ambiguity_and_a_human_show(cli: Cli, tmp_path: Path) -> None:
    one = await carve_with(cli, tmp_path, {"/etc/hostname": b"h1\n"}, carve_id="abc123-" + "1" * 8)
    two = await carve_with(cli, tmp_path, {"/etc/hostname": b"h2\n"}, carve_id="abc124-" + "2" * 8)
    code, out, err = await cli.run("show", "abc123")  # a unique prefix
    assert code == 0, err
    assert f"carve:      {one}  (complete)" in out
    assert "carved:     /etc/hostname" in out and "nk:" in out
    assert "{" not in out and "progress:   1/1 100%" in out
    code, out, err = await cli.run("show", "abc12")  # two carves start so
    assert code == EXIT_AMBIGUOUS
    assert one in err and two in err and "give more of the id" in err
    code, _, err = await cli.run("--json", "files", "abc124")
    assert code == 0, err
    code, _, err = await cli.run("show", "abd")
    assert code == EXIT_NOT_FOUND
    rid = "live-q-twice"
    await carve_with(cli, tmp_path, {"/a": b"a"}, request_id=rid)
    await carve_with(cli, tmp_path, {"/b": b"b"}, request_id=rid)
    code, _, err = await cli.run("get", rid, "-o", str(tmp_path / "x.tar"))
    assert code == EXIT_AMBIGUOUS and err.count(" nk:") == 2


async def test_extract_one_member_fetches_only_its_bytes(cli: Cli, tmp_path: Path) -> None:
    big = random_bytes(3 * 1024 * 1024, seed=4)
    carve_id = await carve_with(
        cli, tmp_path, {"/var/log/big.log": big, "/etc/hostname": b"laptop-17\n"}
    )
    code, out, err = await cli.run(
        "--json", "extract", carve_id[:10], "/etc/hostname", "-d", str(tmp_path / "ev")
    )
    assert code == 0, err
    report = json.loads(out)
    assert (tmp_path / "ev" / "etc" / "hostname").read_bytes() == b"laptop-17\n"
    assert [p.name for p in (tmp_path / "ev").rglob("*") if p.is_file()] == ["hostname"]
    # Measured on the server: what each request of this carve sent.
    rows = await cli.responder.audit(carve_id)
    sent = {r["action"]: r["bytes_sent"] for r in rows if r["outcome"] == "allowed"}
    assert sent.get("archive", 0) == 0 and sent["file"] == 10
    assert report["bytes_fetched"] == 10 and report["archive_size"] > 3 * 1024 * 1024
    print(
        f"extract one member: {sent['file']} bytes fetched of a {report['archive_size']} B archive"
    )
    code, _, err = await cli.run("extract", carve_id, "/etc/shadow", "-d", str(tmp_path / "n"))
    assert code == EXIT_NOT_FOUND and "no member matches /etc/shadow" in err


async def test_gone_carves_say_when_by_whom_and_why(cli: Cli, tmp_path: Path) -> None:
    carve_id = await carve_with(cli, tmp_path, {"/etc/hosts": b"h"})
    admin = cli.responder.vault.token(POLICY, ADMIN)
    url = f"{cli.responder.url}/api/v1/carves/{carve_id}"
    async with cli.responder.http.delete(url, headers={"X-Vault-Token": admin.token}) as resp:
        deleted = await resp.json()
    code, _, err = await cli.run("get", carve_id, "-o", str(tmp_path / "g.tar"))
    assert code == EXIT_GONE
    assert f"deleted at {deleted['deleted_at']} by {deleted['deleted_by']}" in err
    assert "server error" not in err
    stuck = Upload(cli.responder.stack, random_bytes(4 * 4096, seed=2), 4096)
    await stuck.start(cli.responder.http)
    await stuck.send_all(cli.responder.http, [0])
    janitor = await cli.responder.stack.start_janitor(session_idle_timeout=0.3, finalize_grace=0)
    await cli.responder.stack.wait_for(stuck.carve_id, lambda d: d["blocks_received"] == 1)
    await asyncio.sleep(0.5)
    await run_sweep(janitor.app)
    code, _, err = await cli.run("get", stuck.carve_id, "-o", str(tmp_path / "f.tar"))
    assert code == EXIT_GONE and "the carve failed at" in err and "1 of 4 blocks" in err


async def test_campaign_and_an_export_resumed_and_verified(cli: Cli, tmp_path: Path) -> None:
    rid = "live-q-" + uuid.uuid4().hex[:6]
    for n in range(4):
        await carve_with(
            cli, tmp_path, {"/var/log/auth.log": random_bytes(50_000, n)}, request_id=rid
        )
    code, out, err = await cli.run("campaign", rid)
    assert code == 0, err
    assert "carves:     4 on 4 hosts: 4 complete" in out
    assert "/var/log/auth.log (4)" in out and out.count("complete") >= 5

    # Half a download, as an interrupted export leaves it: resumed, then verified.
    url = f"{cli.responder.url}/api/v1/requests/{rid}/export"
    headers = {"X-Vault-Token": cli.responder.token.token}
    async with cli.responder.http.get(url, headers=headers) as resp:
        whole = await resp.read()
        state = {
            "request_id": rid,
            "as_of": resp.headers["X-Carve-Export-As-Of"],
            "etag": resp.headers["ETag"],
            "carves": "4",
        }
    target = tmp_path / "c.zip"
    (tmp_path / "c.zip.part").write_bytes(whole[: len(whole) // 2])
    (tmp_path / "c.zip.part.json").write_text(json.dumps(state))
    db = cli.responder.stack.db
    before = {r["_id"] for r in await settled_rows(db, {"action": "export"})}
    code, out, err = await cli.run("export", rid, "-o", str(target))
    assert code == 0, err
    assert target.read_bytes() == whole and "4 carves" in out
    assert not (tmp_path / "c.zip.part").exists() and not (tmp_path / "c.zip.part.json").exists()
    # The resumed export's own audit row (rows are written just after each answer, and
    # MongoDB's natural order is no order): only the rest was sent.
    rows = [r for r in await settled_rows(db, {"action": "export"}) if r["_id"] not in before]
    assert [r["bytes_sent"] for r in rows] == [len(whole) - len(whole) // 2]

    # A part corrupted on disk is caught (CRC-32) and dropped.
    damaged = bytearray(whole[: len(whole) // 2])
    damaged[2000] ^= 0xFF
    (tmp_path / "d.zip.part").write_bytes(bytes(damaged))
    (tmp_path / "d.zip.part.json").write_text(json.dumps(state))
    code, _, err = await cli.run("export", rid, "-o", str(tmp_path / "d.zip"))
    assert code == EXIT_INTEGRITY and not (tmp_path / "d.zip").exists()
