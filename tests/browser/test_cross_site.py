"""A page on another site cannot make a responder's browser use the console's API.

Real Chromium, real download service and OpenBao. The other site's page holds an HTML form
that posts to the console's login with ``enctype="text/plain"``: the body Chromium sends is
valid JSON (a form can shape it so), and each post would spend the responder's own login
attempts (the browser's address is the responder's). The API refuses every POST that does
not say ``Content-Type: application/json``, which a cross-site page can send only after a
CORS preflight the service never grants.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator
from html import escape

import pytest
from aiohttp import web
from playwright.async_api import Browser, expect

from devstack.ports import free_port
from devstack.vault import POLICY, VaultAdmin
from tests.audit_rows import settled_rows
from tests.console import console_stack
from tests.stack import Stack

FORM = """<!doctype html>
<title>cat pictures</title>
<form id="f" method="POST" action="{action}" enctype="text/plain">
  <input type="hidden" name="{name}" value="{value}">
</form>
"""


@pytest.fixture
async def other_site() -> AsyncIterator[tuple[str, dict[str, str]]]:
    """A web server on another site (``localhost``, not the console's ``127.0.0.1``), whose
    pages are set per test in the returned dict (path -> HTML)."""
    pages: dict[str, str] = {}

    async def page(request: web.Request) -> web.Response:
        return web.Response(text=pages[request.path], content_type="text/html")

    app = web.Application()
    app.router.add_get("/{name}", page)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        yield f"http://localhost:{port}", pages
    finally:
        await runner.cleanup()


async def test_a_form_on_another_site_cannot_spend_a_responders_logins(
    browser: Browser, stack: Stack, vault: VaultAdmin, other_site: tuple[str, dict[str, str]]
) -> None:
    _, url = await console_stack(stack)
    name, password = f"u{uuid.uuid4().hex[:8]}", uuid.uuid4().hex
    vault.client.auth.userpass.create_or_update_user(name, password, policies=[POLICY])
    site, pages = other_site
    # text/plain form encoding sends NAME=VALUE: the '=' lands inside the password string.
    pages["/cats"] = FORM.format(
        action=escape(f"{url}/api/v1/login"),
        name=escape(f'{{"username":"{name}","password":"'),
        value=escape('wrong"}'),
    )
    context = await browser.new_context()
    page = await context.new_page()
    page.set_default_timeout(10_000)
    try:
        statuses, sent = [], []
        for _ in range(12):  # more than the 10 attempts an address gets in a minute
            await page.goto(f"{site}/cats")
            async with page.expect_response(f"{url}/api/v1/login") as answer:
                await page.evaluate("document.getElementById('f').submit()")
            response = await answer.value
            await page.wait_for_url(f"{url}/api/v1/login")
            statuses.append(response.status)
            sent.append(response.request.post_data or "")
        # What Chromium sent is a login the service would parse; it is refused unread.
        assert json.loads(sent[0]) == {"username": name, "password": "=wrong"}
        assert {response.request.headers["content-type"]} == {"text/plain"}
        assert statuses == [415] * 12
        # The responder then signs in to the console from the same browser, at once.
        await page.goto(url + "/ui/")
        await page.fill("#userpass-form input[name=username]", name)
        await page.fill("#userpass-form input[name=password]", password)
        await page.click("#userpass-form button[type=submit]")
        # Signed in: the list's filters (the table itself hides while there are no carves).
        await expect(page.locator("#filters")).to_be_visible()
    finally:
        await context.close()
    rows = await settled_rows(stack.db, {"action": "login"})
    assert sorted(r["status"] for r in rows) == [200] + [415] * 12
