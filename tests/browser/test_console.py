"""The responder console in a real Chromium, against the real stack (ingest, assembler,
download service, OpenBao, MongoDB), driven by Playwright. Every byte checked is the host's."""

from __future__ import annotations

import base64
import contextlib
import hashlib
import os
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml
from playwright.async_api import Browser, BrowserContext, Page, expect

from devstack.vault import POLICY, VaultAdmin
from tests.console import DEVICE, Upload, archive_bytes, console_stack
from tests.stack import Stack
from tests.uploads import random_bytes
from tests.webhook_receiver import receiving

ADMIN = "osquery-file-carve-admin"
HOSTILE = "<img src=x onerror=alert(1)>"
MEMBERS = {
    "/var/log/auth.log": random_bytes(30_000, seed=11),
    "/etc/hosts": b"127.0.0.1 localhost\n",
    "/home/ann/notes.txt": b"evidence\n" * 50,
}
# Records what the page must never do: open a dialog, log an error, violate its CSP.
WATCH = """
window.__csp = [];
document.addEventListener("securitypolicyviolation",
  (e) => window.__csp.push(e.violatedDirective + " " + e.blockedURI));
"""


@dataclass
class Console:
    stack: Stack
    ingest_url: str
    url: str
    vault: VaultAdmin
    http: aiohttp.ClientSession
    tmp: Path

    def user(self, *policies: str) -> tuple[str, str]:
        name, password = f"u{uuid.uuid4().hex[:8]}", uuid.uuid4().hex
        self.vault.client.auth.userpass.create_or_update_user(
            name, password, policies=list(policies)
        )
        return name, password

    async def carve(
        self, members: dict[str, bytes], *, compress: bool = True, request_id: str | None = None
    ) -> Upload:
        upload = Upload(
            self.ingest_url, archive_bytes(members, self.tmp, compress=compress), DEVICE
        )
        if request_id:
            upload.request_id = request_id
        await upload.send_all(self.http)
        await self.stack.wait_complete(upload.carve_id)
        return upload


@dataclass
class Tab:
    context: BrowserContext
    page: Page
    problems: list[str] = field(default_factory=list)

    async def assert_clean(self) -> None:
        assert self.problems == []
        assert await self.page.evaluate("window.__csp") == []


@pytest.fixture
async def console(stack: Stack, vault: VaultAdmin, tmp_path: Path) -> AsyncIterator[Console]:
    ingest_url, url = await console_stack(stack)
    async with aiohttp.ClientSession() as http:
        yield Console(stack, ingest_url, url, vault, http, tmp_path)


@pytest.fixture
async def tab(browser: Browser, console: Console) -> AsyncIterator[Tab]:
    async with open_tab(browser, console.url) as opened:
        yield opened


@contextlib.asynccontextmanager
async def open_tab(browser: Browser, url: str, **options: Any) -> AsyncIterator[Tab]:
    """A fresh context (``options``: e.g. color_scheme) and page that records every problem."""
    context = await browser.new_context(accept_downloads=True, base_url=url, **options)
    await context.add_init_script(WATCH)
    page = await context.new_page()
    page.set_default_timeout(10_000)
    opened = Tab(context, page)

    async def on_dialog(dialog: object) -> None:
        opened.problems.append(f"dialog: {dialog.message}")  # type: ignore[attr-defined]
        await dialog.dismiss()  # type: ignore[attr-defined]

    page.on("dialog", on_dialog)
    page.on("pageerror", lambda exc: opened.problems.append(f"page error: {exc}"))
    page.on(
        "console",
        lambda msg: opened.problems.append(f"console: {msg.text}") if msg.type == "error" else None,
    )
    try:
        yield opened
    finally:
        await context.close()


async def log_in(page: Page, username: str, password: str) -> None:
    await page.goto("/")  # redirects to /ui/
    await page.fill("#userpass-form input[name=username]", username)
    await page.fill("#userpass-form input[name=password]", password)
    await page.click("#userpass-form button[type=submit]")
    await expect(page.locator("#filters")).to_be_visible()  # the list (or its empty state)


async def screenshot(page: Page, name: str) -> None:
    """With CONSOLE_SCREENSHOTS=DIR, the page as a PNG there (docs/ keeps those it shows)."""
    if folder := os.environ.get("CONSOLE_SCREENSHOTS"):
        await page.screenshot(path=str(Path(folder) / name), full_page=True)


async def downloaded(page: Page, selector: str) -> bytes:
    async with page.expect_download() as info:
        await page.click(selector)
    download = await info.value
    assert await download.failure() is None
    return Path(await download.path()).read_bytes()


async def test_responder_watches_a_carve_arrive_and_downloads_it(
    console: Console, tab: Tab
) -> None:
    page = tab.page
    name, password = console.user(POLICY)
    other = await console.carve({"/etc/motd": b"hello\n"})
    await log_in(page, name, password)
    assert await page.evaluate("sessionStorage.length") == 1
    assert await page.evaluate("localStorage.length + document.cookie.length") == 0
    upload = Upload(console.ingest_url, archive_bytes(MEMBERS, console.tmp, compress=True), DEVICE)
    await upload.start(console.http)
    half = upload.block_count // 2
    await upload.blocks(console.http, range(half))
    row = page.locator(f'tr[data-carve="{upload.carve_id}"]')
    await expect(row.locator("[data-status]")).to_have_text("receiving")
    shown = float(await row.locator("progress").get_attribute("value") or "nan")
    assert 0 < shown < 1
    await upload.blocks(console.http, range(half, upload.block_count))
    # No reload: the list follows the carve until it is complete.
    await expect(row.locator("[data-status]")).to_have_text("complete", timeout=15_000)
    await expect(row.locator("progress")).to_have_attribute("value", "1")
    await expect(row.locator(".host")).to_have_text("laptop-17.corp.example")
    await expect(page.locator(f'tr[data-carve="{other.carve_id}"]')).to_be_visible()
    await screenshot(page, "console-carves.png")

    await page.fill("input[name=request_id]", upload.request_id)
    await page.click("#filters button[type=submit]")
    await expect(page.locator("#carve-rows tr")).to_have_count(1)
    await expect(page.locator("#carve-rows tr")).to_have_attribute("data-carve", upload.carve_id)

    await row.locator("td.id a").click()
    await expect(page.locator("#carve-id")).to_have_text(upload.carve_id)
    await expect(page.locator("#archive-sha256")).to_have_text(upload.sha256)
    for path, content in MEMBERS.items():
        sha = page.locator(f'#manifest tr[data-path="{path}"] code.sha256')
        await expect(sha).to_have_text(hashlib.sha256(content).hexdigest())
    await screenshot(page, "console-carve.png")
    assert await downloaded(page, "#download-archive") == upload.data
    member = '#manifest tr[data-path="/var/log/auth.log"] button.download-member'
    assert await downloaded(page, member) == MEMBERS["/var/log/auth.log"]
    await expect(page.locator("#delete")).to_have_count(0)  # not an admin
    await tab.assert_clean()


async def test_a_token_without_the_policy_sees_a_clear_403(console: Console, tab: Tab) -> None:
    page = tab.page
    token = console.vault.token("default")
    await page.goto("/ui/")
    await page.fill("#token-form input[name=token]", token.token)
    await page.click("#token-form button[type=submit]")
    error = page.locator("#error")
    await expect(error).to_have_attribute("data-status", "403")
    await expect(error).to_contain_text("Forbidden (403)")
    await expect(error).to_contain_text(POLICY)
    # A wrong password is a clear 401 on the login form, not a blank page.
    await page.click("#logout")
    await page.fill("#userpass-form input[name=username]", "nobody")
    await page.fill("#userpass-form input[name=password]", "wrong")
    await page.click("#userpass-form button[type=submit]")
    await expect(page.locator("#login-result .error")).to_contain_text(
        "Wrong username or password (401)"
    )
    await expect(page.locator("#nav")).to_be_hidden()  # nothing to navigate to yet


async def test_an_admin_deletes_a_carve_and_the_audit_page_shows_it(
    console: Console, tab: Tab
) -> None:
    page = tab.page
    carve = await console.carve(MEMBERS, compress=False)
    await log_in(page, *console.user(POLICY, ADMIN))
    await page.goto(f"/ui/#/carves/{carve.carve_id}")
    await page.click("#delete")
    await page.click("#confirm-delete")
    await expect(page.locator("#why")).to_contain_text("This carve was deleted")
    await expect(page.locator("#download-archive")).to_have_count(0)
    doc = await console.stack.carve_doc(carve.carve_id)
    assert doc is not None and doc["status"] == "deleted"
    assert await console.stack.chunk_count(carve.carve_id) == 0
    await page.click("#nav-audit")
    deleted = page.locator(f'#audit-rows tr[data-action="delete"][data-carve="{carve.carve_id}"]')
    await expect(deleted).to_have_count(1)
    await expect(deleted.locator("td").nth(2)).to_have_text("allowed")
    await tab.assert_clean()


async def test_hostile_names_are_shown_as_text_and_run_nothing(console: Console, tab: Tab) -> None:
    page = tab.page
    members = {f"/tmp/{HOSTILE}": b"boom\n", "/tmp/ok.txt": b"fine\n"}
    carve = await console.carve(members, request_id=HOSTILE.replace("1", "2"))
    await log_in(page, *console.user(POLICY))
    row = page.locator(f'tr[data-carve="{carve.carve_id}"]')
    await expect(row.locator("a.request")).to_have_text(HOSTILE.replace("1", "2"))
    await row.locator("td.id a").click()
    cell = page.locator(f'#manifest tr[data-path="/tmp/{HOSTILE}"] td').first
    await expect(cell).to_have_text(HOSTILE)
    await expect(page.locator("#manifest tr[data-path='/tmp/ok.txt']")).to_be_visible()
    assert await page.locator("main img").count() == 0
    await tab.assert_clean()


async def test_the_carve_page_follows_a_receiving_carve_to_its_files(
    console: Console, tab: Tab
) -> None:
    page = tab.page
    await log_in(page, *console.user(POLICY))
    upload = Upload(console.ingest_url, archive_bytes(MEMBERS, console.tmp, compress=False), DEVICE)
    await upload.start(console.http)
    await upload.blocks(console.http, range(3))
    await page.goto(f"/ui/#/carves/{upload.carve_id}")
    await expect(page.locator("#why")).to_contain_text("Blocks are still arriving")
    await expect(page.locator("dl.meta")).to_contain_text(f"3 of {upload.block_count} blocks")
    await expect(page.locator("#download-archive")).to_have_count(0)
    await upload.blocks(console.http, range(3, upload.block_count))
    await expect(page.locator("#download-archive")).to_be_visible(timeout=15_000)
    sha = page.locator('#manifest tr[data-path="/etc/hosts"] code.sha256')
    await expect(sha).to_have_text(hashlib.sha256(MEMBERS["/etc/hosts"]).hexdigest())
    await expect(page.locator("#why")).to_have_count(0)
    await tab.assert_clean()


async def test_an_admin_sees_webhook_deliveries(console: Console, tab: Tab) -> None:
    page = tab.page
    secret = "whsec_" + base64.b64encode(b"k" * 32).decode()
    async with receiving() as rx:
        rx.script = {"/down": [503]}
        config = console.tmp / "webhooks.yaml"
        config.write_text(
            yaml.safe_dump(
                [
                    {"name": name, "url": f"{rx.url}/{name}", "secret": secret,
                     "events": ["carve.completed"]}
                    for name in ("siem", "down")
                ]
            )
        )  # fmt: skip
        await console.stack.start_events(webhooks_file=str(config), webhook_backoff=60)
        carve = await console.carve({"/etc/motd": b"hello\n"})
        await rx.wait("/siem", 1)
        await rx.wait("/down", 1)
    await log_in(page, *console.user(POLICY))
    await expect(page.locator("#nav-webhooks")).to_be_hidden()  # not an admin
    await page.click("#logout")
    await log_in(page, *console.user(POLICY, ADMIN))
    await page.click("#nav-webhooks")
    rows = page.locator("#webhook-rows tr")
    await expect(rows).to_have_count(2)
    down = page.locator('#webhook-rows tr[data-endpoint="down"]')
    await expect(down.locator("td").nth(4)).to_have_text("pending")
    await expect(down.locator("td").nth(6)).to_have_text("503")
    siem = page.locator('#webhook-rows tr[data-endpoint="siem"]')
    await expect(siem.locator("td").nth(4)).to_have_text("delivered")
    await expect(siem.locator("td").nth(2)).to_contain_text(carve.carve_id[:8])
    await page.select_option("#webhook-filters select[name=state]", "delivered")
    await page.click("#webhook-filters button[type=submit]")
    await expect(rows).to_have_count(1)
    await tab.assert_clean()
