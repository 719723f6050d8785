"""Vault's OIDC method on the session's real OpenBao, against this test's identity provider."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass

from aiohttp import web

from devstack.ports import HOST, free_port
from devstack.vault import VaultAdmin
from tests.oidc_provider import OidcProvider

ROLE = "responder-sso"


@dataclass
class Sso:
    provider: OidcProvider
    redirect_uri: str  # the console's /ui/ on the download service's port
    port: int  # that port, for Stack.start_download(port=...)


@contextlib.asynccontextmanager
async def sso(vault: VaultAdmin, subject: str, *policies: str) -> AsyncIterator[Sso]:
    """An identity provider on a free port, and Vault's oidc method pointed at it with a role
    granting ``policies`` and redirecting to the console of a download service yet to start."""
    provider = OidcProvider("carve-console", "console-secret", subject)
    idp_port, console_port = free_port(), free_port()
    provider.issuer = f"http://{HOST}:{idp_port}"
    runner = web.AppRunner(provider.app(), access_log=None)
    await runner.setup()
    await web.TCPSite(runner, HOST, idp_port).start()
    redirect = f"http://{HOST}:{console_port}/ui/"

    def configure() -> None:  # Vault fetches the discovery document: not on the event loop
        client = vault.client
        if "oidc/" not in client.sys.list_auth_methods()["data"]:
            client.sys.enable_auth_method("oidc")
        client.write("auth/oidc/config", oidc_discovery_url=provider.issuer,
                     oidc_client_id=provider.client_id,
                     oidc_client_secret=provider.client_secret)  # fmt: skip
        client.write(f"auth/oidc/role/{ROLE}", role_type="oidc", user_claim="sub",
                     allowed_redirect_uris=[redirect], token_policies=list(policies),
                     token_ttl="10m")  # fmt: skip

    try:
        await asyncio.to_thread(configure)
        yield Sso(provider, redirect, console_port)
    finally:
        await runner.cleanup()
