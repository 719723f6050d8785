"""Signing custody records with a Vault Transit ed25519 key, as the download service itself.

The service signs with its own Vault identity, never a responder's token: a token given in
``CARVE_VAULT_SERVICE_TOKEN`` (for example a periodic token an agent renews), or an AppRole
login with ``CARVE_VAULT_ROLE_ID`` and ``CARVE_VAULT_SECRET_ID`` (the token it gets is kept
in memory and renewed by logging in again before it lapses or once Vault refuses it). The
policy it needs (``deploy/vault/osquery-carve-custody.hcl``): ``update`` on
``transit/sign/<key>`` and ``read`` on ``transit/keys/<key>``. The private key never leaves
Vault; a rotated key keeps its old versions, whose public keys still check old records.

hvac is synchronous: each call runs in a small thread pool of its own, each thread with its
own client.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import hvac
import hvac.exceptions
import requests

from services.download.settings import DownloadSettings
from shared.errors import Unavailable


class NotConfigured(Unavailable):
    """No Vault identity for the service is configured: nothing can be signed."""


@dataclass(frozen=True)
class PublicKey:
    version: int
    public_key: str  # base64 of the raw 32-byte ed25519 key, as Vault gives it
    created: str


class TransitSigner:
    """Signs bytes with ``transit/sign/<key>`` and reads the key's public versions."""

    def __init__(self, settings: DownloadSettings) -> None:
        self.key = settings.custody_key
        self._mount = settings.custody_mount
        self._addr = settings.vault_addr.rstrip("/")
        self._verify: bool | str = settings.vault_cacert or True
        self._timeout = settings.vault_timeout
        self._static = settings.vault_service_token.get_secret_value()
        self._role_id = settings.vault_role_id
        self._secret_id = settings.vault_secret_id.get_secret_value()
        self._pool = ThreadPoolExecutor(2, thread_name_prefix="custody")
        self._local = threading.local()
        self._lock = threading.Lock()
        self._token = ""
        self._token_until = 0.0

    @property
    def configured(self) -> bool:
        return bool(self._static or (self._role_id and self._secret_id))

    def _client(self) -> hvac.Client:
        client = getattr(self._local, "client", None)
        if client is None:
            client = hvac.Client(url=self._addr, verify=self._verify, timeout=self._timeout)
            self._local.client = client
        client.token = self._service_token()
        return client

    def _service_token(self, *, fresh: bool = False) -> str:
        if self._static:
            return self._static
        if not self.configured:
            raise NotConfigured("vault", "no service identity for custody signing")
        with self._lock:
            if fresh or not self._token or time.monotonic() >= self._token_until:
                login = hvac.Client(url=self._addr, verify=self._verify, timeout=self._timeout)
                try:
                    with _vault_errors():
                        auth = login.auth.approle.login(self._role_id, self._secret_id)["auth"]
                finally:
                    login.adapter.close()
                self._token = auth["client_token"]
                ttl = float(auth.get("lease_duration") or 0) or 3600.0
                self._token_until = time.monotonic() + ttl * 0.8
            return self._token

    def _call(self, fn: Callable[[hvac.Client], Any]) -> Any:
        try:
            with _vault_errors():
                return fn(self._client())
        except hvac.exceptions.Forbidden as exc:
            if self._static:
                raise Unavailable("vault", "the service token may not use the key") from exc
            self._service_token(fresh=True)  # the AppRole token lapsed: log in again, once
            with _vault_errors():
                return fn(self._client())

    def _sign(self, data: bytes, version: int) -> str:
        answer = self._call(
            lambda c: c.secrets.transit.sign_data(
                self.key,
                hash_input=base64.b64encode(data).decode(),
                key_version=version,
                mount_point=self._mount,
            )
        )
        signature = str(answer["data"]["signature"])  # vault:v<N>:<base64>
        prefix = f"vault:v{version}:"
        if not signature.startswith(prefix):
            raise Unavailable("vault", "Transit signed with another key version")
        return signature.removeprefix(prefix)

    def _keys(self) -> tuple[int, list[PublicKey]]:
        answer = self._call(lambda c: c.secrets.transit.read_key(self.key, mount_point=self._mount))
        data = answer["data"]
        if data.get("type") != "ed25519":
            raise Unavailable("vault", f"the custody key {self.key} is not an ed25519 key")
        keys = [
            PublicKey(int(v), str(k["public_key"]), str(k.get("creation_time") or ""))
            for v, k in data["keys"].items()
            if k.get("public_key")
        ]
        return int(data["latest_version"]), sorted(keys, key=lambda k: k.version)

    async def _run(self, fn: Callable[..., Any], *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self._pool, fn, *args)

    async def sign(self, data: bytes, version: int) -> str:
        """The base64 ed25519 signature of ``data`` by version ``version`` of the key."""
        result: str = await self._run(self._sign, data, version)
        return result

    async def public_keys(self) -> tuple[int, list[PublicKey]]:
        """The key's latest version, and the public key of every version Vault keeps."""
        result: tuple[int, list[PublicKey]] = await self._run(self._keys)
        return result

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)


@contextlib.contextmanager
def _vault_errors() -> Iterator[None]:
    try:
        yield
    except hvac.exceptions.InvalidPath as exc:
        raise Unavailable("vault", "the custody key does not exist in Transit") from exc
    except (
        requests.RequestException,
        hvac.exceptions.VaultDown,
        hvac.exceptions.InternalServerError,
        hvac.exceptions.BadGateway,
        hvac.exceptions.RateLimitExceeded,
        hvac.exceptions.Unauthorized,
        hvac.exceptions.InvalidRequest,
    ) as exc:
        raise Unavailable("vault", exc.__class__.__name__) from exc
