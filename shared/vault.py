"""Vault (or OpenBao) token lookups through hvac, off the event loop.

hvac is synchronous (requests underneath): each call runs in a small thread
pool, each thread with its own ``hvac.Client`` (a requests session is not
meant to be shared across threads). TLS is verified: with the system CAs, or
with ``CARVE_VAULT_CACERT``; nothing turns verification off.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any
from urllib.parse import urlsplit

import hvac
import hvac.exceptions
import requests

from shared.errors import Unauthorized, Unavailable
from shared.settings import VaultSettings

log = logging.getLogger(__name__)


# Vault cannot answer now (unreachable, down, overloaded): not a refusal; a retry may succeed.
VAULT_DOWN: tuple[type[Exception], ...] = (
    requests.RequestException,
    hvac.exceptions.VaultDown,
    hvac.exceptions.InternalServerError,
    hvac.exceptions.BadGateway,
    hvac.exceptions.RateLimitExceeded,
)


def hvac_client(settings: VaultSettings) -> hvac.Client:
    """A new hvac client for ``CARVE_VAULT_ADDR``: TLS verified (system CAs or
    ``CARVE_VAULT_CACERT``), ``CARVE_VAULT_TIMEOUT``, no token."""
    verify: bool | str = settings.vault_cacert or True
    return hvac.Client(
        url=settings.vault_addr.rstrip("/"), verify=verify, timeout=settings.vault_timeout
    )


def require_ready(status: object) -> None:
    """Raise Unavailable unless a health answer says initialized and unsealed (hvac asks with
    raise_exception=False: a sealed Vault answers 503 with a body)."""
    if not isinstance(status, dict) or status.get("sealed") or not status.get("initialized"):
        raise Unavailable("vault", "sealed or not initialized")


class InvalidToken(Unauthorized):
    """Vault does not know the token (never issued, expired or revoked)."""


class LoginRefused(Unauthorized):
    """Vault refused a login (unknown user or wrong password, a refused OIDC role or answer)."""


def is_loopback(host: str | None) -> bool:
    """True for localhost and loopback addresses (where plain http is not on the network)."""
    if not host:
        return False
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class VaultClient:
    """Token lookup-self and health, each call in a worker thread."""

    def __init__(self, settings: VaultSettings) -> None:
        self._settings = settings
        self._pool = ThreadPoolExecutor(settings.vault_concurrency, thread_name_prefix="vault")
        self._local = threading.local()
        parts = urlsplit(settings.vault_addr)
        if parts.scheme != "https" and not is_loopback(parts.hostname):
            log.warning("CARVE_VAULT_ADDR is not https: tokens cross the network in clear")

    def _client(self) -> hvac.Client:
        client = getattr(self._local, "client", None)
        if client is None:
            client = hvac_client(self._settings)
            self._local.client = client
        return client

    @contextlib.contextmanager
    def _vault_errors(self) -> Iterator[None]:
        try:
            yield
        except (hvac.exceptions.Forbidden, hvac.exceptions.Unauthorized) as exc:
            raise InvalidToken("token unknown, expired or revoked") from exc
        except VAULT_DOWN as exc:
            raise Unavailable("vault", exc.__class__.__name__) from exc

    def _lookup_self(self, token: str) -> dict[str, Any]:
        client = self._client()
        client.token = token
        try:
            with self._vault_errors():
                data: dict[str, Any] = client.auth.token.lookup_self()["data"]
        finally:
            client.token = None  # no token lingers in an idle thread
        data.pop("id", None)  # the token itself: never kept past this point
        return data

    def _userpass_login(self, mount: str, username: str, password: str) -> dict[str, Any]:
        # A fresh client: no token of a previous call in it, none left behind.
        client = hvac_client(self._settings)
        try:
            with self._vault_errors():
                answer = client.auth.userpass.login(username, password, mount_point=mount)
        except hvac.exceptions.InvalidRequest as exc:
            raise LoginRefused("invalid username or password") from exc
        except InvalidToken as exc:
            raise LoginRefused("invalid username or password") from exc
        finally:
            client.adapter.close()
        auth: dict[str, Any] = answer["auth"]
        return auth

    def _oidc_auth_url(self, mount: str, role: str, redirect_uri: str, client_nonce: str) -> str:
        client = hvac_client(self._settings)
        try:
            with self._vault_errors():
                answer = client.write(
                    f"auth/{mount}/oidc/auth_url",
                    role=role,
                    redirect_uri=redirect_uri,
                    client_nonce=client_nonce,
                )
        # Unknown role, redirect not allowed (400), or a mount that is not OIDC (403).
        except (hvac.exceptions.InvalidRequest, InvalidToken) as exc:
            raise LoginRefused(f"Vault refused the OIDC login: {exc}") from exc
        finally:
            client.adapter.close()
        url = str(((answer or {}).get("data") or {}).get("auth_url") or "")
        if not url.startswith(("https://", "http://")):
            raise LoginRefused("Vault gave no OIDC authorization URL (check the role)")
        return url

    def _oidc_callback(
        self, mount: str, state: str, code: str, client_nonce: str
    ) -> dict[str, Any]:
        client = hvac_client(self._settings)
        params = {"state": state, "code": code, "client_nonce": client_nonce}
        try:
            with self._vault_errors():
                answer = client.adapter.get(f"/v1/auth/{mount}/oidc/callback", params=params)
        except (hvac.exceptions.InvalidRequest, InvalidToken) as exc:
            raise LoginRefused("the single sign-on was refused") from exc
        finally:
            client.adapter.close()
        auth: dict[str, Any] = answer["auth"]
        return auth

    def _revoke_self(self, token: str) -> None:
        client = self._client()
        client.token = token
        try:
            with self._vault_errors():
                client.auth.token.revoke_self()
        finally:
            client.token = None

    def _health(self) -> None:
        with self._vault_errors():
            status = self._client().sys.read_health_status(method="GET", standby_ok=True)
        require_ready(status)

    async def _run(self, fn: Callable[..., Any], *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self._pool, fn, *args)

    async def lookup_self(self, token: str) -> dict[str, Any]:
        """The token's own data (policies, identity_policies, display_name, entity_id, accessor).

        Raises InvalidToken when Vault refuses the token, Unavailable when Vault
        cannot answer.
        """
        result: dict[str, Any] = await self._run(self._lookup_self, token)
        return result

    async def userpass_login(self, mount: str, username: str, password: str) -> dict[str, Any]:
        """The ``auth`` block of a userpass login (client_token, accessor, policies...).

        Raises LoginRefused for bad credentials, Unavailable when Vault cannot answer.
        """
        result: dict[str, Any] = await self._run(self._userpass_login, mount, username, password)
        return result

    async def oidc_auth_url(
        self, mount: str, role: str, redirect_uri: str, client_nonce: str
    ) -> str:
        """Where to send the browser to sign in with Vault's OIDC method (``auth_url``).
        Vault keeps ``client_nonce`` with the state and wants it again at the callback."""
        result: str = await self._run(self._oidc_auth_url, mount, role, redirect_uri, client_nonce)
        return result

    async def oidc_callback(
        self, mount: str, state: str, code: str, client_nonce: str
    ) -> dict[str, Any]:
        """The ``auth`` block for the provider's answer; LoginRefused if Vault refuses it
        (also when ``client_nonce`` is not the one the sign-in started with)."""
        result: dict[str, Any] = await self._run(
            self._oidc_callback, mount, state, code, client_nonce
        )
        return result

    async def revoke_self(self, token: str) -> None:
        """Revoke ``token`` (InvalidToken when Vault no longer knows it)."""
        await self._run(self._revoke_self, token)

    async def health(self) -> None:
        """Raise Unavailable unless Vault answers, unsealed and active."""
        await self._run(self._health)

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)


@contextlib.asynccontextmanager
async def vault_client(settings: VaultSettings) -> AsyncIterator[VaultClient]:
    client = VaultClient(settings)
    try:
        yield client
    finally:
        client.close()
