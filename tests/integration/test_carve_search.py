"""Carves by what and where: the display host, the carved paths, ``q=`` search, sort orders,
the summary counts, one time format, and a failed carve's archive: against the real stack."""

from __future__ import annotations

import asyncio
import hashlib
import re
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from clients.osquery_sim import build_archive, carve
from devstack.vault import POLICY, VaultAdmin
from services.janitor.main import run_sweep
from shared.search import MAX_GRAMS
from tests.console import Upload, archive_bytes, console_stack
from tests.integration.test_console_api import ADMIN, Api
from tests.integration.test_device_binding import make_cert
from tests.stack import Stack
from tests.uploads import random_bytes

RFC3339_Z = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{3})?Z$")
HOSTILE = '/tmp/<img src=x onerror="alert(1)">.log'


@pytest.fixture
async def api(stack: Stack, vault: VaultAdmin, tmp_path: Path) -> AsyncIterator[Api]:
    ingest_url, url = await console_stack(stack)
    async with aiohttp.ClientSession() as http:
        yield Api(stack, ingest_url, url, vault, http, tmp_path, vault.token(POLICY).token)


async def ids(api: Api, query: str) -> list[str]:
    status, page = await api.json("GET", "/api/v1/carves" + query)
    assert status == 200, page
    return [c["carve_id"] for c in page["carves"]]


async def node_key_carve(api: Api, members: dict[str, bytes], node_key: str) -> str:
    """A carve from a host without a certificate (node key only), as osquery sends it."""
    guid = str(uuid.uuid4())
    archive = build_archive(members, api.tmp / guid, carve_guid=guid)
    result = await carve(api.http, api.ingest_url, archive, node_key=node_key, block_size=4096)
    assert result.ok, result
    await api.stack.wait_complete(result.carve_id)
    return result.carve_id


async def test_host_and_paths_are_shown_and_searched(api: Api) -> None:
    laptop = await api.carve(
        archive_bytes({"/var/log/auth.log": b"sshd\n"}, api.tmp, compress=False),
        request_id="live-q-auth",
    )
    many = {f"/etc/conf.d/file-{i:02d}.conf": b"x" for i in range(10)}
    server = await api.carve(
        archive_bytes({HOSTILE: b"<script>", **many}, api.tmp, compress=True),
        make_cert("db-3.corp.example"),
    )
    bare = await node_key_carve(api, {"/home/ann/notes.txt": b"n"}, node_key="secret-node-key")

    status, one = await api.json("GET", f"/api/v1/carves/{laptop.carve_id}")
    assert (one["host"], one["paths"], one["path_count"]) == (
        "laptop-17.corp.example",
        ["/var/log/auth.log"],
        1,
    )
    assert one["manifest"]["files"] == 1
    status, other = await api.json("GET", f"/api/v1/carves/{server.carve_id}")
    assert other["host"] == "db-3.corp.example"
    assert other["path_count"] == 11 and len(other["paths"]) == 10  # the first 10, "+1 more"
    assert other["paths"][:2] == [HOSTILE, "/etc/conf.d/file-00.conf"]  # as text, unchanged
    status, nk = await api.json("GET", f"/api/v1/carves/{bare}")
    fingerprint = hashlib.sha256(b"secret-node-key").hexdigest()[:8]
    assert nk["host"] == "nk:" + fingerprint  # the node key's SHA-256, never the key
    assert "secret-node-key" not in str(nk) and "search" not in nk

    assert await ids(api, "?q=laptop-17") == [laptop.carve_id]
    assert await ids(api, "?q=AUTH.LOG") == [laptop.carve_id]  # case-insensitive
    assert await ids(api, "?q=file-08") == [server.carve_id]
    assert await ids(api, "?q=file-09") == []  # past the first 10 paths: the manifest has it
    assert await ids(api, "?q=corp.example") == [server.carve_id, laptop.carve_id]
    assert await ids(api, "?q=nk:" + fingerprint[:4]) == [bare]
    assert await ids(api, "?q=notes") == [bare]
    assert await ids(api, "?q=live-q") == [laptop.carve_id]  # a request id prefix
    assert await ids(api, f"?q={server.carve_id[:5]}") == [server.carve_id]  # an id prefix
    short = laptop.carve_id[:2]  # under 3 characters: id and request id prefixes only
    every = (await api.json("GET", "/api/v1/carves"))[1]["carves"]
    starting = {c["carve_id"] for c in every if short in (c["carve_id"][:2], c["request_id"][:2])}
    assert set(await ids(api, f"?q={short}")) == starting and laptop.carve_id in starting
    # Hostile names stay data: the same text back, no pattern of the caller's runs.
    assert await ids(api, "?q=" + "%3Cimg%20src") == [server.carve_id]
    assert await ids(api, "?q=.*") == []
    assert await ids(api, "?q=%5E%5B") == []  # ^[ : a broken pattern if it were one
    assert await ids(api, "?q=auth.log&status=failed") == []
    for bad in ("?q=", "?q=a%0Ab", "?q=" + "x" * 129, "?sort=name", "?sort=--size"):
        status, body = await api.json("GET", "/api/v1/carves" + bad)
        assert (status, body["code"]) == (400, "invalid_request"), bad


async def test_search_terms_are_bounded() -> None:
    from shared.search import search_terms

    long_paths = ["/" + "".join(chr(0x4E00 + i + 300 * n) for i in range(256)) for n in range(9)]
    assert len(search_terms("h" * 300, long_paths)) == MAX_GRAMS


async def test_sort_orders_page_through_every_carve_once(api: Api) -> None:
    sizes = [3000, 9000, 1000, 6000, 12000]
    hosts = ["c.example", "a.example", "e.example", "b.example", "d.example"]
    carves = []
    for size, host in zip(sizes, hosts, strict=True):
        data = archive_bytes({"/f": random_bytes(size, seed=size)}, api.tmp, compress=False)
        carves.append(await api.carve(data, make_cert(host)))
    by_id = {u.carve_id: u for u in carves}

    async def pages(sort: str) -> list[str]:
        seen: list[str] = []
        cursor = ""
        while True:
            status, page = await api.json(
                "GET",
                f"/api/v1/carves?sort={sort}&limit=2" + (f"&cursor={cursor}" if cursor else ""),
            )
            assert status == 200, page
            seen += [c["carve_id"] for c in page["carves"]]
            if not (cursor := page["next_cursor"]):
                return seen

    newest_first = [u.carve_id for u in reversed(carves)]
    assert await pages("-created") == newest_first
    assert await ids(api, "") == newest_first  # the default order
    assert await pages("created") == newest_first[::-1]
    by_size = sorted(by_id, key=lambda c: (len(by_id[c].data), c))  # tar pads: ties by id
    assert await pages("size") == by_size
    assert await pages("-size") == by_size[::-1]
    by_host = sorted(by_id, key=lambda c: hosts[carves.index(by_id[c])])
    assert await pages("host") == by_host
    assert await pages("-host") == by_host[::-1]
    status, page = await api.json("GET", "/api/v1/carves?sort=size&limit=2")
    status, body = await api.json("GET", f"/api/v1/carves?sort=host&cursor={page['next_cursor']}")
    assert (status, body["code"]) == (400, "invalid_request")  # another order's cursor


async def test_summary_counts_and_one_time_format(api: Api) -> None:
    done = await api.carve(archive_bytes({"/etc/hosts": b"127.0.0.1\n"}, api.tmp, compress=False))
    partial = Upload(api.ingest_url, random_bytes(8 * 1024, seed=5), done.device, 1024)
    await partial.start(api.http)
    await partial.blocks(api.http, range(3))
    stuck = Upload(api.ingest_url, random_bytes(4 * 1024, seed=6), done.device, 1024)
    await stuck.start(api.http)
    await stuck.blocks(api.http, range(1))
    await api.stack.wait_for(stuck.carve_id, lambda d: d["blocks_received"] == 1)
    await asyncio.sleep(0.6)
    await partial.blocks(api.http, range(3, 4))  # still arriving: not idle
    janitor = await api.stack.start_janitor(session_idle_timeout=0.5, finalize_grace=0)
    report = await run_sweep(janitor.app)
    assert report.actions["failed"] == 1

    status, summary = await api.json("GET", "/api/v1/summary")
    assert (status, summary["counts"]) == (
        200, {"receiving": 1, "complete": 1, "failed": 1, "flagged": 0}
    )  # fmt: skip

    # A failed carve's archive will never come: 410 "failed" with why, not 409.
    for path in ("/archive", "/files", "/files/etc/hosts"):
        status, body = await api.json("GET", f"/api/v1/carves/{stuck.carve_id}{path}")
        assert (status, body["code"], body["status"]) == (410, "failed", "failed"), path
        assert body["reason"].startswith("idle") and "1 of 4 blocks" in body["reason"]
        assert body["error"] == f"carve {stuck.carve_id} failed: {body['reason']}"
        assert RFC3339_Z.match(body["at"])
    status, body = await api.json("GET", f"/api/v1/carves/{partial.carve_id}/archive")
    assert (status, body["code"]) == (409, "not_complete")  # still receiving: wait

    # Deleted: 410 "gone" with when and by whom.
    status, listing = await api.json("GET", f"/api/v1/carves/{done.carve_id}/files")
    assert RFC3339_Z.match(listing["members"][0]["mtime"])
    status, ticket = await api.json("POST", f"/api/v1/carves/{done.carve_id}/download-ticket")
    assert RFC3339_Z.match(ticket["expires_at"])
    admin = api.vault.token("osquery-file-carve-file-requests", ADMIN)
    status, deleted = await api.json("DELETE", f"/api/v1/carves/{done.carve_id}", admin.token)
    assert status == 200 and deleted["deleted_by"]
    status, gone = await api.json("GET", f"/api/v1/carves/{done.carve_id}/archive")
    assert (status, gone["code"], gone["status"]) == (410, "gone", "deleted")
    assert (gone["by"], gone["at"]) == (deleted["deleted_by"], deleted["deleted_at"])
    assert RFC3339_Z.match(gone["at"])

    # Every time the API writes is RFC 3339, UTC, Z.
    status, page = await api.json("GET", "/api/v1/carves")
    times: list[Any] = []
    for c in page["carves"]:
        times += [c[k] for k in ("created_at", "updated_at", "completed_at", "failed_at")]
        times += [c["deleted_at"]]
    status, rows = await api.json("GET", "/api/v1/audit?limit=5", admin.token)
    times += [row["time"] for row in rows["entries"]]
    for when in filter(None, times):
        assert RFC3339_Z.match(when), when
    assert len([t for t in times if t]) >= 12


async def test_a_view_refreshed_is_audited_once_per_window(api: Api) -> None:
    upload = await api.carve(archive_bytes({"/etc/hosts": b"h"}, api.tmp, compress=False))
    other = api.vault.token(POLICY).token

    async def rows(action: str) -> list[dict[str, Any]]:
        await asyncio.sleep(0.2)  # written right after each answer
        return await api.stack.db["audit"].find({"action": action}).to_list()

    for _ in range(5):  # a console's auto-refresh
        assert (await api.call("GET", "/api/v1/carves?limit=50"))[0] == 200
        assert (await api.call("GET", f"/api/v1/carves/{upload.carve_id}"))[0] == 200
        assert (await api.call("GET", "/api/v1/summary"))[0] == 200
    assert len(await rows("list")) == 1
    assert len(await rows("carve")) == 1
    assert len(await rows("summary")) == 1
    await api.call("GET", "/api/v1/carves?limit=50&q=hosts")  # a person asks something new
    await api.call("GET", "/api/v1/carves?limit=50", other)  # someone else looks
    await api.call("GET", "/api/v1/carves?limit=50", "bogus-token")  # refused: always audited
    await api.call("GET", "/api/v1/carves?limit=50", "bogus-token")
    listed = await rows("list")
    assert [r["outcome"] for r in listed] == ["allowed"] * 3 + ["denied"] * 2
    await api.call("GET", f"/api/v1/carves/{upload.carve_id}/archive")  # bytes: every time
    await api.call("GET", f"/api/v1/carves/{upload.carve_id}/archive")
    assert len(await rows("archive")) == 2
    _, _, metrics = await api.call("GET", "/metrics")
    assert b'carve_audit_repeats_total{action="list"} 4.0' in metrics

    # Past the window, the same view is audited again; a window of 0 audits every request.
    quick = await api.stack.start_download(audit_repeat_window=0.3)
    every = await api.stack.start_download(audit_repeat_window=0)
    before = len(await rows("summary"))
    for url in (quick.url, quick.url, every.url, every.url):
        async with api.http.get(url + "/api/v1/summary", headers={"X-Vault-Token": other}):
            pass
    await asyncio.sleep(0.4)
    async with api.http.get(quick.url + "/api/v1/summary", headers={"X-Vault-Token": other}):
        pass
    assert len(await rows("summary")) == before + 1 + 2 + 1
