"""Triage in the console, in Chromium: the verdict badge and filter of the list, the hits on
the carve page; a hostile member name and hostile rule metadata stay text."""

from __future__ import annotations

from pathlib import Path

from playwright.async_api import expect

from devstack.vault import POLICY
from tests.browser.test_console import ADMIN, HOSTILE, Console, Tab, console, log_in, tab
from tests.triage import MARKER, wait_triaged, write_library

__all__ = ["console", "tab"]  # the fixtures, shared with test_console
HOSTILE_RULE = f"""
rule html_in_metadata : evil {{
    meta:
        note = "{HOSTILE}"
    strings:
        $a = "{MARKER.decode()}"
    condition:
        $a
}}
"""


async def test_a_flagged_carve_shows_its_badge_and_hits_and_hostile_text_stays_text(
    console: Console, tab: Tab, tmp_path: Path
) -> None:
    library = write_library(tmp_path / "lib", rules={"hostile.yar": HOSTILE_RULE})
    await console.stack.start_triage(**library)
    vault_policy = console.vault.client.sys
    vault_policy.create_or_update_policy(
        ADMIN, (Path(__file__).parents[2] / "deploy" / "vault" / f"{ADMIN}.hcl").read_text()
    )
    flagged = await console.carve({f"/tmp/{HOSTILE}": b"x " + MARKER + b" y"})
    clean = await console.carve({"/etc/motd": b"hello\n"})
    for carve_id in (flagged.carve_id, clean.carve_id):
        await wait_triaged(console.stack, carve_id)
    page = tab.page
    await log_in(page, *console.user(POLICY, ADMIN))
    badge = page.locator(f'tr[data-carve="{flagged.carve_id}"] .verdict')
    await expect(badge).to_have_text("flagged")
    await expect(page.locator(f'tr[data-carve="{clean.carve_id}"] .verdict')).to_have_text("clean")
    await page.select_option("#filters select[name=verdict]", "flagged")
    await page.click("#filters button[type=submit]")
    await expect(page.locator("#carve-rows tr")).to_have_count(1)
    assert "verdict=flagged" in page.url
    await page.locator(f'tr[data-carve="{flagged.carve_id}"] a[href^="#/carves/"]').click()
    hit = page.locator("#triage-hits tbody tr").first
    await expect(hit.locator("td.member")).to_have_text(f"/tmp/{HOSTILE}")
    await expect(hit.locator(".hit strong")).to_have_text("hostile:html_in_metadata")
    await expect(hit.locator("ul.meta li")).to_have_text(f"note = {HOSTILE}")
    await expect(page.locator("#triage h2 .verdict")).to_have_text("flagged")
    assert len(await page.locator("#triage-rules").inner_text()) == 64
    assert await page.locator("main img").count() == 0
    await page.click("#triage-rescan")  # an admin asks for a scan with the rules of now
    await expect(page.locator("#triage h2 .verdict")).to_have_text("flagged (rescanning)")
    await tab.assert_clean()
