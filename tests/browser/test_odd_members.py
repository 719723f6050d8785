"""The console downloads a member whose name holds CR or LF, by its position in the archive.

Real Chromium, real stack. Such a name cannot travel in a member URL's path (the route does
not match a line break, and member paths refuse control characters): the console asks for a
ticket by the listing's index instead (services/download/static/carve.js).
"""

from __future__ import annotations

import uuid
from pathlib import Path

import aiohttp
from playwright.async_api import Browser, expect

from devstack.vault import POLICY, VaultAdmin
from tests.console import DEVICE, Upload, console_stack
from tests.integration.test_member_index import CRLF, LF, MEMBERS, odd_archive
from tests.stack import Stack


async def test_the_console_downloads_a_member_named_with_cr_lf(
    browser: Browser, stack: Stack, vault: VaultAdmin
) -> None:
    ingest_url, url = await console_stack(stack)
    name, password = f"u{uuid.uuid4().hex[:8]}", uuid.uuid4().hex
    vault.client.auth.userpass.create_or_update_user(name, password, policies=[POLICY])
    guid = str(uuid.uuid4())
    async with aiohttp.ClientSession() as http:
        upload = Upload(ingest_url, odd_archive(guid, compress=True), DEVICE)
        upload.carve_id = guid
        await upload.send_all(http)
    await stack.wait_complete(guid)
    context = await browser.new_context(accept_downloads=True, base_url=url)
    page = await context.new_page()
    page.set_default_timeout(10_000)
    try:
        await page.goto("/ui/")
        await page.fill("#userpass-form input[name=username]", name)
        await page.fill("#userpass-form input[name=password]", password)
        await page.click("#userpass-form button[type=submit]")
        await expect(page.locator("#carves")).to_be_visible()
        await page.goto(f"/ui/#/carves/{guid}")
        for path, content in ((CRLF, MEMBERS[1][1]), (LF, MEMBERS[3][1])):
            leaf = path.rsplit("/", 1)[1]
            row = page.locator("#manifest tr").filter(has_text=leaf.splitlines()[0])
            await expect(row).to_have_count(1)
            async with page.expect_download() as info:
                async with page.expect_request("**/download-ticket") as asked:
                    await row.locator("button.download-member").click()
            assert (await asked.value).post_data_json == {"index": MEMBERS_INDEX[path]}
            download = await info.value
            assert await download.failure() is None
            assert Path(await download.path()).read_bytes() == content
    finally:
        await context.close()


# Positions in odd_archive: the /etc directory is member 0.
MEMBERS_INDEX = {path: i + 1 for i, (path, _) in enumerate(MEMBERS)}
