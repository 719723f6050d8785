"""Custody in the console, in Chromium: where downloads must be justified, the console asks in
a small dialog and the reason reaches the audit row; an admin places and releases a legal hold,
tags cases and sets an expiry on the carve page; hostile text stays text."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from playwright.async_api import expect

from devstack.vault import VaultAdmin
from shared.custody import load_keys, verify
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
    role = vault.custody_role()  # the default key: sign records as the test's own AppRole
    download = await stack.start_download(
        vault_cache_ttl=0.5,
        download_justification="required",
        vault_role_id=role["vault_role_id"],
        vault_secret_id=role["vault_secret_id"],
    )
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
    other = await console.carve({"/etc/issue": b"other\n"})
    # The list marks held carves, and its Case filter finds them.
    await expect(page.locator(f'tr[data-carve="{carve.carve_id}"] .badge.held')).to_be_visible()
    await expect(page.locator(f'tr[data-carve="{other.carve_id}"]')).to_be_visible()
    assert await page.locator(f'tr[data-carve="{other.carve_id}"] .badge.held').count() == 0
    await page.fill("#filters input[name=case]", "IR-1")
    await page.click("#filters button[type=submit]")
    await expect(page.locator("#carve-rows tr")).to_have_count(1)
    assert "case=IR-1" in page.url
    await page.goto(f"/ui/#/carves/{carve.carve_id}")
    await expect(page.locator('#holds li[data-case="IR-1"]')).to_contain_text("IR-1: court")
    assert await page.locator("#hold-form").count() == 0
    assert await page.locator(".release-hold").count() == 0
    assert await page.locator("#expiry-form").count() == 0
    await tab.assert_clean()


async def test_the_signed_custody_record_is_saved_as_issued(console: Console, tab: Tab) -> None:
    carve = await console.carve({"/etc/motd": b"hello\n"})
    page = tab.page
    await log_in(page, *console.user(POLICY))
    await page.goto(f"/ui/#/carves/{carve.carve_id}")
    async with page.expect_download() as info:
        await page.click("#custody-record")
    download = await info.value
    assert download.suggested_filename == f"custody_{carve.carve_id}.json"
    saved = Path(await download.path()).read_bytes()
    reader = console.vault.token(POLICY).token
    async with console.http.get(
        f"{console.url}/api/v1/custody/keys", headers={"X-Vault-Token": reader}
    ) as resp:
        keys = load_keys(await resp.text())
    record = verify(json.loads(saved), keys)  # the bytes as issued: the signature holds
    assert record["carve"]["carve_id"] == carve.carve_id
    assert record["archive"]["sha256"] == carve.sha256
    doc = await console.stack.carve_doc(carve.carve_id)
    assert doc is not None and doc["device"]  # the console's hosts send a device certificate
    assert record["carve"]["device"] == {
        k: doc["device"][k] for k in ("fingerprint_sha256", "subject_dn", "common_name", "serial")
    }
    await tab.assert_clean()
