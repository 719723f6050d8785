"""Custody in the console, in Chromium: where downloads must be justified, the console asks in
a small dialog and the reason reaches the audit row; an admin places and releases a legal hold,
tags cases and sets an expiry on the carve page; hostile text stays text."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from playwright.async_api import expect

from devstack.vault import VaultAdmin
from tests.audit_rows import settled_rows
from tests.browser.test_console import (
    ADMIN,
    HOSTILE,
    Console,
    Tab,
    log_in,
    tab,
)
from tests.stack import Stack

__all__ = ["tab"]  # the fixture, shared with test_console
POLICY = "osquery-file-carve-file-requests"


@pytest.fixture
async def console(stack: Stack, vault: VaultAdmin, tmp_path: Path) -> AsyncIterator[Console]:
    """A console whose service requires a justification for every download."""
    ingest = await stack.start_ingest(trusted_proxies="127.0.0.1/32")
    download = await stack.start_download(vault_cache_ttl=0.5, download_justification="required")
    vault.client.sys.create_or_update_policy(
        ADMIN, (Path(__file__).parents[2] / "deploy" / "vault" / f"{ADMIN}.hcl").read_text()
    )
    async with aiohttp.ClientSession() as http:
        yield Console(stack, ingest.url, download.url, vault, http, tmp_path)


async def test_the_console_asks_why_before_a_download(console: Console, tab: Tab) -> None:
    carve = await console.carve({"/etc/motd": b"evidence\n" * 10}, compress=False)
    page = tab.page
    await log_in(page, *console.user(POLICY))
    await page.goto(f"/ui/#/carves/{carve.carve_id}")
    await page.click("#download-archive")
    dialog = page.locator("#justification-dialog")
    await expect(dialog).to_be_visible()
    await page.click("#justification-cancel")  # cancelled: nothing is downloaded
    await expect(dialog).to_have_count(0)
    await page.click("#download-archive")
    await page.fill("#justification", "line one\u202e")  # a format character: refused here
    await page.click("#justification-ok")
    await expect(page.locator("#justification-problem")).to_contain_text("without control")
    await page.fill("#justification", "IR-2026-0042: malware analysis")
    async with page.expect_download() as info:
        await page.click("#justification-ok")
    download = await info.value
    assert await download.failure() is None
    assert Path(await download.path()).read_bytes() == carve.data
    rows = await settled_rows(console.stack.db, {"carve_id": carve.carve_id, "action": "archive"})
    assert [(r["outcome"], r.get("justification")) for r in rows] == [
        ("allowed", "IR-2026-0042: malware analysis")
    ]
    await tab.assert_clean()


async def test_an_admin_holds_tags_and_releases_a_carve(console: Console, tab: Tab) -> None:
    carve = await console.carve({"/etc/motd": b"hello\n"})
    page = tab.page
    await log_in(page, *console.user(POLICY, ADMIN))
    await page.goto(f"/ui/#/carves/{carve.carve_id}")
    await expect(page.locator("#holds-none")).to_be_visible()
    await page.fill("#hold-case", "IR-2026-0042")
    await page.fill("#hold-reason", HOSTILE)
    await page.click("#place-hold")
    hold = page.locator('#holds li[data-case="IR-2026-0042"]')
    await expect(hold).to_contain_text(f"IR-2026-0042: {HOSTILE}")
    assert await page.locator("main img").count() == 0
    await page.fill("#case-add", "IR-7")
    await page.click("#case-form button[type=submit]")
    await expect(page.locator('#cases li[data-case="IR-7"]')).to_be_visible()
    await page.fill("#expiry-input", "2031-05-01T12:00")
    await page.click("#expiry-form button[type=submit]")
    await expect(page.locator("#expiry time")).to_have_attribute("datetime", "2031-05-01T12:00:00Z")
    doc = await console.stack.carve_doc(carve.carve_id)
    assert doc is not None
    assert [h["case"] for h in doc["holds"]] == ["IR-2026-0042"] and doc["cases"] == ["IR-7"]
    await hold.locator(".release-hold").click()
    await expect(page.locator("#holds-none")).to_be_visible()
    await page.locator('#cases li[data-case="IR-7"] .remove-case').click()
    await expect(page.locator("#cases")).to_have_count(0)
    doc = await console.stack.carve_doc(carve.carve_id)
    assert doc is not None and doc["holds"] == [] and doc["cases"] == []
    await tab.assert_clean()


async def test_a_responder_sees_holds_but_cannot_place_them(console: Console, tab: Tab) -> None:
    carve = await console.carve({"/etc/motd": b"hello\n"})
    admin = console.vault.token(POLICY, ADMIN).token
    async with console.http.put(
        f"{console.url}/api/v1/carves/{carve.carve_id}/hold",
        json={"case": "IR-1", "reason": "court"},
        headers={"X-Vault-Token": admin},
    ) as resp:
        assert resp.status == 201
    page = tab.page
    await log_in(page, *console.user(POLICY))
    await page.goto(f"/ui/#/carves/{carve.carve_id}")
    await expect(page.locator('#holds li[data-case="IR-1"]')).to_contain_text("IR-1: court")
    assert await page.locator("#hold-form").count() == 0
    assert await page.locator(".release-hold").count() == 0
    assert await page.locator("#expiry-form").count() == 0
    await tab.assert_clean()
