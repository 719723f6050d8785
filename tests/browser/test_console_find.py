"""The console finds carves by what and where, in a real Chromium against the real stack:
search by host and path, sorting, relative times, summary counts, the keyboard, a campaign
page and its export, dark mode, empty states, the login wording, the audit filters."""

from __future__ import annotations

import hashlib
import io
import re
import zipfile
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from playwright.async_api import Browser, expect

from devstack.vault import POLICY, VaultAdmin
from tests.browser.test_console import (
    ADMIN,
    Console,
    Tab,
    downloaded,
    log_in,
    open_tab,
    screenshot,
)
from tests.console import Upload, archive_bytes, console_stack
from tests.integration.test_device_binding import make_cert
from tests.stack import Stack
from tests.uploads import random_bytes


@pytest.fixture
async def site(stack: Stack, vault: VaultAdmin, tmp_path: Path) -> AsyncIterator[Console]:
    ingest_url, url = await console_stack(stack)
    async with aiohttp.ClientSession() as http:
        yield Console(stack, ingest_url, url, vault, http, tmp_path)


@pytest.fixture
async def light(browser: Browser, site: Console) -> AsyncIterator[Tab]:
    async with open_tab(browser, site.url, color_scheme="light") as opened:
        yield opened


async def host_carve(
    site: Console, host: str, members: dict[str, bytes], request_id: str = ""
) -> Upload:
    upload = Upload(
        site.ingest_url, archive_bytes(members, site.tmp, compress=False), make_cert(host)
    )
    upload.request_id = request_id or upload.request_id
    await upload.send_all(site.http)
    await site.stack.wait_complete(upload.carve_id)
    return upload


async def shown_ids(tab: Tab) -> list[str]:
    locator = tab.page.locator("#carve-rows tr")
    return [await r.get_attribute("data-carve") or "" for r in await locator.all()]


async def test_search_sort_counts_times_and_keyboard(site: Console, light: Tab) -> None:
    page = light.page
    small = await host_carve(site, "laptop-17.corp.example", {"/var/log/auth.log": b"sshd\n"})
    big = await host_carve(
        site,
        "db-3.corp.example",
        {f"/etc/conf.d/f{i}.conf": random_bytes(9000, i) for i in range(3)},
    )
    mid = await host_carve(site, "web-9.corp.example", {"/srv/www/app.log": random_bytes(5000, 9)})
    stuck = Upload(site.ingest_url, random_bytes(8192, seed=3), make_cert("slow-1.corp"), 1024)
    await stuck.start(site.http)
    await stuck.blocks(site.http, range(2))
    await log_in(page, *site.user(POLICY))

    # Counts at the top; every row on one line: host, what was carved, a short id, a time.
    await expect(page.locator('#counts [data-count="complete"] strong')).to_have_text("3")
    await expect(page.locator('#counts [data-count="receiving"] strong')).to_have_text("1")
    row = page.locator(f'tr[data-carve="{big.carve_id}"]')
    await expect(row.locator(".host")).to_have_text("db-3.corp.example")
    await expect(row.locator(".what")).to_have_text("/etc/conf.d/f0.conf +2 more")
    await expect(row.locator("td.id a")).to_have_text(big.carve_id[:8] + "…")
    await expect(row.locator("td.id a")).to_have_attribute("title", big.carve_id)
    height = await row.evaluate("r => r.getBoundingClientRect().height")
    assert height < 40, height  # one line
    created = row.locator("time")
    await expect(created).to_have_text(re.compile(r"^(just now|\d+ s ago)$"))
    title = await created.get_attribute("title") or ""
    iso = await created.get_attribute("datetime") or ""
    assert iso.endswith("Z") and iso[:19].replace("T", " ") in title and "(local)" in title
    await screenshot(page, "console-carves.png")

    # Search by host, by path (case-insensitive), from the keyboard ("/" focuses the box).
    await page.keyboard.press("/")
    await expect(page.locator("#search")).to_be_focused()
    await page.keyboard.type("laptop-17")
    await page.keyboard.press("Enter")
    await expect(page.locator(f'tr[data-carve="{small.carve_id}"]')).to_be_visible()
    await expect(page.locator("#carve-rows tr")).to_have_count(1)
    await page.fill("#search", "APP.LOG")
    await page.keyboard.press("Enter")
    await expect(page.locator(f'tr[data-carve="{mid.carve_id}"]')).to_be_visible()
    await expect(page.locator("#carve-rows tr")).to_have_count(1)
    await page.fill("#search", "no-such-thing")
    await page.keyboard.press("Enter")
    await expect(page.locator("#empty")).to_contain_text("No carves match")
    await page.click("#clear-link")
    await expect(page.locator("#carve-rows tr")).to_have_count(4)

    # Sorting: by size, then the other way, with the keyboard on the column's button.
    await page.click('button[data-sort="size"]')
    await expect(page.locator('th[aria-sort="ascending"] button')).to_have_attribute(
        "data-sort", "size"
    )
    by_size = [small.carve_id, stuck.carve_id, mid.carve_id, big.carve_id]
    sizes = {u.carve_id: len(u.data) for u in (small, mid, big, stuck)}
    expected = sorted(by_size, key=lambda c: (sizes[c], c))
    await expect(page.locator("#carve-rows tr").first).to_have_attribute("data-carve", expected[0])
    assert await shown_ids(light) == expected
    await page.focus('button[data-sort="size"]')
    await page.keyboard.press("Enter")
    await expect(page.locator('th[aria-sort="descending"] button')).to_have_attribute(
        "data-sort", "size"
    )
    await expect(page.locator("#carve-rows tr").first).to_have_attribute("data-carve", expected[-1])
    await page.click('button[data-sort="host"]')
    await expect(page.locator("#carve-rows tr").first.locator(".host")).to_have_text(
        "db-3.corp.example"
    )
    await light.assert_clean()


async def test_campaign_page_and_its_export(site: Console, light: Tab) -> None:
    page = light.page
    rid = "live-q-campaign-7"
    uploads = [
        await host_carve(
            site, f"{name}.corp.example", {"/var/log/auth.log": random_bytes(7000, n)}, rid
        )
        for n, name in enumerate(("web-1", "db-2", "app-3"))
    ]
    await log_in(page, *site.user(POLICY))
    await page.click(f'tr[data-carve="{uploads[0].carve_id}"] td.id a')
    await page.click("dl.meta a.request")  # from a carve to its campaign
    await expect(page.locator("#request-id")).to_have_text(rid)
    await expect(page.locator("#campaign-counts")).to_have_text("3 carves on 3 hosts: 3 complete")
    await expect(page.locator("#campaign")).to_contain_text("/var/log/auth.log on 3 hosts")
    hosts = [await c.text_content() for c in await page.locator("#campaign-rows td.host").all()]
    assert hosts == ["app-3.corp.example", "db-2.corp.example", "web-1.corp.example"]
    await screenshot(page, "console-campaign.png")
    data = await downloaded(page, "#export")
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        assert zf.testzip() is None
        got = {
            n.rsplit("_", 1)[1].split(".")[0]: hashlib.sha256(zf.read(n)).hexdigest()
            for n in zf.namelist()[:-2]
        }
    assert got == {u.carve_id: u.sha256 for u in uploads}
    await light.assert_clean()


async def test_dark_mode_empty_state_login_words_and_audit_filters(
    browser: Browser, site: Console
) -> None:
    async with open_tab(browser, site.url, color_scheme="dark") as dark:
        page = dark.page
        await page.goto("/ui/")
        await expect(page.locator("#nav")).to_be_hidden()  # no Carves link before signing in
        await expect(page.locator("main p code")).to_have_text("bao login")  # no backticks
        await page.fill("#token-form input[name=token]", "s.not-a-token")
        await page.click("#token-form button[type=submit]")
        await expect(page.locator("#login-result .error h2")).to_have_text(
            "That token is not valid (401): unknown, expired or revoked"
        )
        dark.problems.clear()  # the browser logs the refused request itself: expected here
        await log_in(page, *site.user(POLICY, ADMIN))
        background = await page.evaluate("getComputedStyle(document.body).backgroundColor")
        assert background == "rgb(12, 17, 29)", background  # prefers-color-scheme: dark
        await expect(page.locator("#empty")).to_contain_text("No carves yet")
        await expect(page.locator("#carves")).to_be_hidden()
        await screenshot(page, "console-dark-empty.png")
        await page.click("#nav-audit")
        actions = await page.locator("select[name=action] option").all_text_contents()
        assert {"any", "list", "export", "ticket", "login"} <= set(actions)
        await page.select_option("select[name=action]", "login")
        await page.click("#audit-filters button[type=submit]")
        await expect(page.locator("#audit-rows tr")).to_have_count(1)
        await expect(page.locator('#audit-rows tr[data-action="login"]')).to_have_count(1)
        await page.click("#audit-clear")
        await expect(page.locator("select[name=action]")).to_have_value("")
        await dark.assert_clean()
