"""Campaigns (every carve of one request id) and their streamed ZIP export, against the real
stack: the summary, the per-host page, the ZIP read back by zipfile and checked against every
SHA-256, resuming at any offset, the audit row, and memory while 200 carves stream."""

from __future__ import annotations

import asyncio
import hashlib
import io
import uuid
import zipfile
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
from multidict import CIMultiDict

from bench.procstats import RssSampler, proc_kb
from clients.osquery_sim import build_archive, carve_many
from devstack.vault import POLICY, VaultAdmin
from tests.console import Upload, archive_bytes, console_stack
from tests.integration.test_console_api import Api
from tests.integration.test_device_binding import make_cert
from tests.stack import Stack
from tests.uploads import random_bytes

FORMULA = "/tmp/=cmd|' /C calc'!A0"


@pytest.fixture
async def api(stack: Stack, vault: VaultAdmin, tmp_path: Path) -> AsyncIterator[Api]:
    ingest_url, url = await console_stack(stack)
    async with aiohttp.ClientSession() as http:
        yield Api(stack, ingest_url, url, vault, http, tmp_path, vault.token(POLICY).token)


async def export_bytes(api: Api, path: str, **headers: str) -> tuple[int, CIMultiDict[str], bytes]:
    status, got_headers, body = await api.call("GET", path, headers=headers)
    return status, CIMultiDict(got_headers), body


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


async def test_campaign_summary_page_and_export(api: Api) -> None:
    rid = "live-q-" + uuid.uuid4().hex[:6]
    uploads = []
    for n, (host, compress) in enumerate([("web-1", False), ("db-2", True), ("=2+5", False)]):
        members = {"/var/log/auth.log": random_bytes(9000 + n, seed=n), FORMULA: b"x"}
        data = archive_bytes(members, api.tmp, compress=compress)
        uploads.append(await api.carve(data, make_cert(f"{host}.corp.example"), request_id=rid))
    receiving = Upload(api.ingest_url, random_bytes(4096, seed=9), make_cert("slow-4.corp"), 1024)
    receiving.request_id = rid
    await receiving.start(api.http)
    await receiving.blocks(api.http, range(2))
    await api.stack.wait_for(receiving.carve_id, lambda d: d["blocks_received"] == 2)
    other = await api.carve(archive_bytes({"/etc/hosts": b"h"}, api.tmp, compress=False))

    status, campaign = await api.json("GET", f"/api/v1/requests/{rid}")
    assert status == 200, campaign
    assert (campaign["request_id"], campaign["carve_count"], campaign["host_count"]) == (rid, 4, 4)
    assert campaign["counts"] == {"complete": 3, "receiving": 1}
    assert campaign["bytes"]["complete"] == sum(len(u.data) for u in uploads)
    assert campaign["paths"][:2] == [
        {"path": FORMULA, "carves": 3},
        {"path": "/var/log/auth.log", "carves": 3},
    ]
    assert 0 < campaign["progress"] < 1
    assert campaign["first_activity"].endswith("Z") and campaign["last_activity"].endswith("Z")
    hosts = [c["host"] for c in campaign["carves"]]
    assert hosts == sorted(hosts) and other.carve_id not in {
        c["carve_id"] for c in campaign["carves"]
    }
    status, body = await api.json("GET", "/api/v1/requests/no-such-request")
    assert (status, body["code"]) == (404, "not_found")
    status, body = await api.json("GET", "/api/v1/requests/a%01b")
    assert (status, body["code"]) == (400, "invalid_request")

    status, headers, whole = await export_bytes(api, f"/api/v1/requests/{rid}/export")
    assert status == 200, whole[:200]
    assert headers["Content-Type"] == "application/zip"
    assert headers["X-Carve-Export-Carves"] == "3"
    with zipfile.ZipFile(io.BytesIO(whole)) as zf:
        assert zf.testzip() is None
        names = zf.namelist()
        assert names[-2:] == ["manifest.json", "manifest.csv"]
        by_id = {u.carve_id: u for u in uploads}
        for name in names[:-2]:
            carve_id = name.rsplit("_", 1)[1].split(".")[0]
            assert sha(zf.read(name)) == by_id[carve_id].sha256, name  # every archive's SHA-256
        assert sorted(n.split("/")[1].rsplit("_", 1)[0] for n in names[:-2]) == [
            "_2_5.corp.example",  # a host name made safe for any file system
            "db-2.corp.example",
            "web-1.corp.example",
        ]
        manifest = orjson.loads(zf.read("manifest.json"))
        csv_text = zf.read("manifest.csv").decode()
    assert manifest["request_id"] == rid and len(manifest["carves"]) == 3
    for row in manifest["carves"]:
        assert row["sha256"] == by_id[row["carve_id"]].sha256
        members = {m["path"]: m["sha256"] for m in row["members"]}
        status, listing = await api.json("GET", f"/api/v1/carves/{row['carve_id']}/files")
        assert members == {m["path"]: m["sha256"] for m in listing["members"]}
        assert row["members_complete"] is True
    assert "\r\n'=2+5.corp.example,'=2+5.corp.example," in csv_text  # no formula runs
    assert "\r\n=2" not in csv_text and f",{FORMULA}," in csv_text
    assert csv_text.count("\r\n") == 1 + 3 * 2

    # Resume anywhere: the same set (as_of, If-Match) gives the same bytes from the offset.
    as_of, etag = headers["X-Carve-Export-As-Of"], headers["ETag"]
    for offset in (1, 29, 31, 5000, len(whole) // 2, len(whole) - 400, len(whole) - 1):
        status, _, tail = await export_bytes(
            api,
            f"/api/v1/requests/{rid}/export?as_of={as_of}&offset={offset}",
            **{"If-Match": etag},
        )
        assert status == 200 and tail == whole[offset:], offset
    status, _, body = await export_bytes(
        api, f"/api/v1/requests/{rid}/export?as_of={as_of}&offset=9", **{"If-Match": '"other"'}
    )
    assert status == 412 and orjson.loads(body)["code"] == "precondition_failed"
    rows = await api.stack.db["audit"].find({"action": "export", "outcome": "allowed"}).to_list()
    assert rows[0]["request_id"] == rid and rows[0]["carve_ids"] == sorted(by_id)
    assert rows[0]["bytes_sent"] == len(whole)
    other_rows = await api.stack.db["audit"].find({"action": "list"}).to_list()
    assert all("carve_ids" not in r and "request_id" not in r for r in other_rows)


async def test_export_of_200_carves_is_verified_with_bounded_memory(
    stack: Stack, vault: VaultAdmin, tmp_path: Path
) -> None:
    """200 hosts, 192 KiB each (37.5 MiB in all), exported by a download process whose RSS
    is sampled every 50 ms; every archive read back and checked against its SHA-256."""
    rid = "campaign-200"
    archives = []
    for n in range(200):
        guid = str(uuid.uuid4())
        members = {"/var/log/syslog": random_bytes(192 * 1024 - 3072, seed=n)}
        archives.append(build_archive(members, tmp_path / guid, carve_guid=guid))
    results = await carve_many(
        stack.ingest_url, archives, concurrency=25, request_id=rid, block_size=64 * 1024
    )
    assert all(r.ok for r in results)
    for r in results:
        await stack.wait_complete(r.carve_id)
    expected = {r.carve_id: sha(a.read_bytes()) for r, a in zip(results, archives, strict=True)}
    total = sum(a.stat().st_size for a in archives)
    download = await stack.spawn("download")
    token = vault.token(POLICY).token
    target = tmp_path / "campaign.zip"
    async with aiohttp.ClientSession() as http:
        await asyncio.sleep(1.0)  # settled after start-up
        baseline = proc_kb(f"/proc/{download.proc.pid}/status", "VmRSS")
        async with RssSampler({"download": download.proc.pid}) as rss:
            url = f"{download.url}/api/v1/requests/{rid}/export"
            async with http.get(url, headers={"X-Vault-Token": token}) as resp:
                assert resp.status == 200
                with target.open("wb") as out:
                    async for piece in resp.content.iter_chunked(256 * 1024):
                        out.write(piece)
    growth_mib = (rss.max_kb["download"] - baseline) / 1024
    size = target.stat().st_size
    print(
        f"export: {size / 2**20:.1f} MiB, download RSS {baseline / 1024:.0f} MiB + {growth_mib:.1f}"
    )
    assert size > total
    assert growth_mib < 24, f"RSS grew {growth_mib:.1f} MiB for a {total / 2**20:.0f} MiB export"
    with zipfile.ZipFile(target) as zf:
        assert zf.testzip() is None
        found: dict[str, str] = {}
        for name in zf.namelist()[:-2]:
            found[name.rsplit("_", 1)[1].split(".")[0]] = sha(zf.read(name))
        manifest: dict[str, Any] = orjson.loads(zf.read("manifest.json"))
    assert found == expected  # all 200, each byte for byte
    assert {c["carve_id"]: c["sha256"] for c in manifest["carves"]} == expected
    doc = await stack.carve_doc(results[0].carve_id)
    assert doc is not None and isinstance(doc["crc32"], int)  # kept: a resume reads no more
