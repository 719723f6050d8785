"""Single sign-on in a real Chromium: the console, the real OpenBao's OIDC method, and the
test's identity provider, redirect after redirect, with nothing left in the address."""

from __future__ import annotations

from playwright.async_api import Browser, expect

from devstack.vault import POLICY, VaultAdmin
from tests.sso import ROLE, sso
from tests.stack import Stack


async def test_a_responder_signs_in_with_sso_and_sees_the_carves(
    browser: Browser, stack: Stack, vault: VaultAdmin
) -> None:
    async with sso(vault, "ann@example.org", POLICY) as idp:
        download = await stack.start_download(
            port=idp.port, vault_oidc_role=ROLE, oidc_redirect_uri=idp.redirect_uri
        )
        context = await browser.new_context(base_url=download.url)
        problems: list[str] = []
        try:
            page = await context.new_page()
            page.set_default_timeout(10_000)
            page.on("pageerror", lambda exc: problems.append(str(exc)))
            await page.goto("/ui/")
            await page.click("#sso-button")
            # Through the provider and back: signed in, the carves page shown.
            await expect(page.locator("#filters")).to_be_visible()  # the list, or "no carves yet"
            assert "code=" not in page.url and "state=" not in page.url
            assert page.url.endswith("/ui/#/carves")
            await expect(page.locator("#who")).to_contain_text("oidc-")
            token = await page.evaluate("sessionStorage.getItem('carve-console-token')")
            assert token and token not in page.url
            assert len(idp.provider.authorized) == 1
            # Coming back with a code that was used already: a clear message, no session.
            query = idp.provider.authorized[0]
            await page.evaluate("sessionStorage.clear()")
            await page.goto(f"/ui/?code=used-or-forged&state={query['state']}")
            await expect(page.locator("[role=alert]")).to_contain_text("Single sign-on failed")
            await expect(page.locator("#userpass-form")).to_be_visible()
            assert problems == []
        finally:
            await context.close()


async def test_the_sso_button_is_hidden_when_sso_is_off(browser: Browser, stack: Stack) -> None:
    download = await stack.start_download()
    context = await browser.new_context(base_url=download.url)
    try:
        page = await context.new_page()
        await page.goto("/ui/")
        await expect(page.locator("#userpass-form")).to_be_visible()
        await expect(page.locator("#sso")).to_be_hidden()
    finally:
        await context.close()
