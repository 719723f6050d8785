"""Single sign-on for the console: the download service forwards Vault's OIDC method.

Real OpenBao is the OIDC client (it holds the client secret, checks the ID token); the
identity provider is tests/oidc_provider.py, speaking the authorization-code flow.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qs, urlparse

import aiohttp
from yarl import URL

from devstack.vault import POLICY, VaultAdmin
from tests.sso import ROLE, sso
from tests.stack import Stack


def browser_session() -> aiohttp.ClientSession:
    """A client that keeps cookies as a browser does (also for 127.0.0.1)."""
    return aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True))


async def call(
    http: aiohttp.ClientSession, method: str, url: str, body: Any = None, token: str = ""
) -> tuple[int, Any]:
    headers = {"X-Vault-Token": token} if token else {}
    if method == "POST":
        headers["Content-Type"] = "application/json"  # also without a body, as the console
    async with http.request(method, url, json=body, headers=headers) as resp:
        return resp.status, await resp.json()


async def provider_redirect(http: aiohttp.ClientSession, auth_url: str) -> dict[str, str]:
    """What the browser does at the provider: signed in already, sent back with a code."""
    async with http.get(auth_url, allow_redirects=False) as resp:
        assert resp.status == 302, await resp.text()
        back = urlparse(resp.headers["Location"])
    return {k: v[0] for k, v in parse_qs(back.query).items()} | {"to": back.path}


async def test_sso_signs_a_responder_in_with_the_roles_policies(
    stack: Stack, vault: VaultAdmin
) -> None:
    async with sso(vault, "ann@example.org", POLICY) as idp:
        download = await stack.start_download(
            port=idp.port, vault_oidc_role=ROLE, oidc_redirect_uri=idp.redirect_uri
        )
        async with browser_session() as http:
            assert await call(http, "GET", download.url + "/api/v1/login/oidc") == (
                200,
                {"enabled": True},
            )
            status, started = await call(http, "POST", download.url + "/api/v1/login/oidc")
            assert status == 200
            # Vault's own authorization URL at the provider, for the console's redirect URI.
            auth_url = urlparse(started["auth_url"])
            assert f"{auth_url.scheme}://{auth_url.netloc}" == idp.provider.issuer
            query = {k: v[0] for k, v in parse_qs(auth_url.query).items()}
            assert query["redirect_uri"] == idp.redirect_uri
            assert query["client_id"] == "carve-console" and query["nonce"]
            back = await provider_redirect(http, started["auth_url"])
            assert back["to"] == "/ui/" and back["state"] == query["state"]

            status, login = await call(
                http,
                "POST",
                download.url + "/api/v1/login/oidc/callback",
                {"code": back["code"], "state": back["state"]},
            )
            assert status == 200, login
            assert login["can_read"] is True and login["is_admin"] is False
            assert login["display_name"].startswith("oidc-")
            status, listing = await call(
                http, "GET", download.url + "/api/v1/carves", token=login["token"]
            )
            assert status == 200 and listing["carves"] == []

            # The code is single use: replaying it (a stolen URL) is refused.
            status, replay = await call(
                http,
                "POST",
                download.url + "/api/v1/login/oidc/callback",
                {"code": back["code"], "state": back["state"]},
            )
            assert (status, replay["code"]) == (401, "unauthorized")
    audit = stack.db["audit"]
    actions = [d["action"] async for d in audit.find({}, {"action": 1}).sort("time", 1)]
    assert actions.count("login_sso") == 1 and actions.count("login_sso_callback") == 2


async def test_a_forged_state_or_code_gets_no_token(stack: Stack, vault: VaultAdmin) -> None:
    async with sso(vault, "ann@example.org", POLICY) as idp:
        download = await stack.start_download(
            port=idp.port, vault_oidc_role=ROLE, oidc_redirect_uri=idp.redirect_uri
        )
        callback = download.url + "/api/v1/login/oidc/callback"
        async with browser_session() as http:
            status, started = await call(http, "POST", download.url + "/api/v1/login/oidc")
            back = await provider_redirect(http, started["auth_url"])
            for body in ({"code": back["code"], "state": "forged-state"},
                         {"code": "forged-code", "state": back["state"]}):  # fmt: skip
                status, reply = await call(http, "POST", callback, body)
                assert (status, reply["code"]) == (401, "unauthorized"), reply
                assert "token" not in reply
            status, reply = await call(http, "POST", callback, {"code": "<script>", "state": "s"})
            assert (status, reply["code"]) == (400, "invalid_request")


async def test_a_code_from_someone_elses_sign_in_signs_nobody_in(
    stack: Stack, vault: VaultAdmin
) -> None:
    """Login CSRF: the attacker signs in at the provider with their own account, stops
    before the callback, and sends the responder the console link with that code and
    state. The responder's browser lacks the nonce cookie of that sign-in: no token."""
    async with sso(vault, "mallory@example.org", POLICY) as idp:
        download = await stack.start_download(
            port=idp.port, vault_oidc_role=ROLE, oidc_redirect_uri=idp.redirect_uri
        )
        callback = download.url + "/api/v1/login/oidc/callback"
        async with browser_session() as attacker, browser_session() as responder:
            status, started = await call(attacker, "POST", download.url + "/api/v1/login/oidc")
            assert status == 200
            nonce = attacker.cookie_jar.filter_cookies(URL(download.url + "/api/v1/login/oidc"))
            assert len(nonce["carve_sso_nonce"].value) == 43
            back = await provider_redirect(attacker, started["auth_url"])
            body = {"code": back["code"], "state": back["state"]}
            # The responder's browser: no cookie at all, then a sign-in of its own started.
            status, reply = await call(responder, "POST", callback, body)
            assert (status, reply["code"]) == (401, "unauthorized") and "token" not in reply
            assert (await call(responder, "POST", download.url + "/api/v1/login/oidc"))[0] == 200
            status, reply = await call(responder, "POST", callback, body)
            assert (status, reply["code"]) == (401, "unauthorized") and "token" not in reply
    audit = stack.db["audit"]
    refused = [d async for d in audit.find({"action": "login_sso_callback"})]
    assert [d["outcome"] for d in refused] == ["denied", "denied"], refused


async def test_without_a_role_sso_is_off(stack: Stack) -> None:
    download = await stack.start_download()
    async with browser_session() as http:
        assert await call(http, "GET", download.url + "/api/v1/login/oidc") == (
            200,
            {"enabled": False},
        )
        status, reply = await call(http, "POST", download.url + "/api/v1/login/oidc")
        assert (status, reply["code"]) == (404, "not_found")


async def test_a_mount_that_is_not_oidc_is_a_clear_refusal(stack: Stack, vault: VaultAdmin) -> None:
    """Vault answers 403 for a mount it does not have: a misconfiguration, said as such
    (and logged), not "token unknown" for a request that carries no token."""
    async with sso(vault, "ann@example.org", POLICY) as idp:
        download = await stack.start_download(
            port=idp.port,
            vault_oidc_role=ROLE,
            oidc_redirect_uri=idp.redirect_uri,
            vault_oidc_mount="no-such-mount",
        )
        async with browser_session() as http:
            status, reply = await call(http, "POST", download.url + "/api/v1/login/oidc")
    assert (status, reply["code"]) == (401, "unauthorized")
    assert reply["error"] == "single sign-on is refused by Vault (check its OIDC role)"
