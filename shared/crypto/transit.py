"""Vault Transit calls for carve data keys, through hvac in a small thread pool.

The service signs in with its own identity (AppRole, or Kubernetes auth with the pod's
service-account token), never with a responder's token: the policy of that identity
(``deploy/vault/``) grants only the Transit paths the service uses. The token is kept in
memory, renewed by signing in again before it expires or when Vault refuses it.

Errors: Vault unreachable, sealed or refusing us is ``Unavailable`` (the work is kept and
retried: a block stays queued, a download answers 503); a key Vault no longer has is
``KeyShredded``.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

import hvac
import hvac.exceptions

from shared.errors import Gone, Unavailable
from shared.settings import EncryptionSettings, VaultSettings
from shared.vault import VAULT_DOWN, hvac_client, require_ready

log = logging.getLogger(__name__)
T = TypeVar("T")

# Sign in again this long before the token's TTL ends.
_RENEW_MARGIN = 0.2


class KeyShredded(Gone):
    """The carve's Transit key was destroyed (the carve was deleted or expired): its bytes,
    wherever a copy of them lies, can no longer be decrypted."""

    code = "shredded"


class Transit:
    """Create, use, rotate and destroy the per-carve Transit keys."""

    def __init__(self, vault: VaultSettings, settings: EncryptionSettings) -> None:
        self._vault = vault
        self._mount = settings.transit_mount
        self._settings = settings
        self._pool = ThreadPoolExecutor(settings.transit_concurrency, thread_name_prefix="transit")
        self._local = threading.local()
        self._login_lock = threading.Lock()
        self._token: str | None = None
        self._token_until = 0.0
        self.calls: dict[str, int] = {}  # per operation, for the metrics and the benchmark
        self.on_call: Callable[[str], None] | None = None

    # --- signing in ------------------------------------------------------------------------

    def _new_client(self) -> hvac.Client:
        return hvac_client(self._vault)

    def _login(self) -> None:
        settings = self._settings
        client = self._new_client()
        try:
            if settings.vault_auth == "kubernetes":
                jwt = Path(settings.vault_kubernetes_token_file).read_text().strip()
                answer = client.auth.kubernetes.login(
                    settings.vault_kubernetes_role, jwt, use_token=False,
                    mount_point=settings.vault_auth_mount or "kubernetes",
                )  # fmt: skip
            else:
                answer = client.auth.approle.login(
                    settings.vault_role_id, self._secret_id(), use_token=False,
                    mount_point=settings.vault_auth_mount or "approle",
                )  # fmt: skip
        finally:
            client.adapter.close()
        auth: dict[str, Any] = answer["auth"]
        ttl = float(auth.get("lease_duration") or 0)
        self._token = str(auth["client_token"])
        self._token_until = time.monotonic() + ttl * (1 - _RENEW_MARGIN) if ttl else float("inf")
        self._count("login")

    def _secret_id(self) -> str:
        settings = self._settings
        if settings.vault_secret_id_file:
            return Path(settings.vault_secret_id_file).read_text().strip()
        if settings.vault_secret_id is not None:
            return settings.vault_secret_id.get_secret_value()
        return ""  # a role that binds by CIDR only needs none

    def _token_now(self, *, fresh: bool) -> str:
        with self._login_lock:
            if fresh or self._token is None or time.monotonic() >= self._token_until:
                try:
                    self._login()
                except (hvac.exceptions.VaultError, OSError, KeyError) as exc:
                    # Refused (a wrong or expired secret id, an unbound role) or the secret
                    # file unreadable: an operator's fix; the work waits for it, kept.
                    raise Unavailable("vault", f"login refused: {exc.__class__.__name__}") from exc
            assert self._token is not None
            return self._token

    def _client(self) -> hvac.Client:
        client = getattr(self._local, "client", None)
        if client is None:
            client = self._local.client = self._new_client()
        return client

    @contextlib.contextmanager
    def _errors(self, what: str) -> Iterator[None]:
        try:
            yield
        except (
            *VAULT_DOWN,
            hvac.exceptions.Forbidden,
            hvac.exceptions.Unauthorized,
            OSError,
        ) as exc:
            raise Unavailable("vault", f"{what}: {exc.__class__.__name__}") from exc
        except hvac.exceptions.InvalidRequest:
            raise  # the caller tells a destroyed key from another refusal
        except hvac.exceptions.VaultError as exc:
            # No such mount, a policy path missing, an unexpected answer: a configuration
            # an operator fixes. Retry later (a block stays queued), never drop the work.
            raise Unavailable("vault", f"{what}: {exc.__class__.__name__}: {exc}") from exc

    def _call(self, op: str, fn: Callable[[hvac.Client], T]) -> T:
        """``fn`` with a signed-in client; signed in again once if Vault refuses the token."""
        client = self._client()
        with self._errors(op):
            for attempt in range(2):
                client.token = self._token_now(fresh=attempt > 0)
                try:
                    result = fn(client)
                except hvac.exceptions.Forbidden:
                    if attempt:
                        raise
                    continue  # the token may have expired or been revoked: sign in again
                finally:
                    client.token = None
                self._count(op)
                return result
        raise AssertionError("unreachable")

    def _count(self, op: str) -> None:
        self.calls[op] = self.calls.get(op, 0) + 1
        if self.on_call is not None:
            self.on_call(op)

    # --- the operations (each in a worker thread) ------------------------------------------

    def _create(self, name: str) -> None:
        # Creating a key that exists changes nothing: racing assemblers are harmless.
        self._call("create", lambda c: c.secrets.transit.create_key(
            name, key_type="aes256-gcm96", exportable=False, mount_point=self._mount))  # fmt: skip

    def _datakey(self, name: str) -> tuple[bytes, str]:
        # datakey/plaintext: the new key in clear (it stays in memory) and wrapped (it is
        # stored), in one call; datakey/wrapped would need a decrypt call to use it.
        answer = self._call("datakey", lambda c: c.secrets.transit.generate_data_key(
            name, key_type="plaintext", bits=256, mount_point=self._mount))  # fmt: skip
        data = answer["data"]
        return base64.b64decode(data["plaintext"]), str(data["ciphertext"])

    def _decrypt(self, name: str, wrapped: str) -> bytes:
        try:
            answer = self._call("decrypt", lambda c: c.secrets.transit.decrypt_data(
                name, ciphertext=wrapped, mount_point=self._mount))  # fmt: skip
        except hvac.exceptions.InvalidRequest as exc:
            raise _missing_or(exc, name) from exc
        return base64.b64decode(answer["data"]["plaintext"])

    def _rewrap(self, name: str, wrapped: str) -> str:
        try:
            answer = self._call("rewrap", lambda c: c.secrets.transit.rewrap_data(
                name, wrapped, mount_point=self._mount))  # fmt: skip
        except hvac.exceptions.InvalidRequest as exc:
            raise _missing_or(exc, name) from exc
        return str(answer["data"]["ciphertext"])

    def _rotate(self, name: str) -> None:
        try:
            self._call("rotate", lambda c: c.secrets.transit.rotate_key(
                name, mount_point=self._mount))  # fmt: skip
        except hvac.exceptions.InvalidRequest as exc:
            raise _missing_or(exc, name) from exc

    def _retire(self, name: str, version: int) -> None:
        try:
            self._call("config", lambda c: c.secrets.transit.update_key_configuration(
                name, min_decryption_version=version, mount_point=self._mount))  # fmt: skip
        except hvac.exceptions.InvalidRequest as exc:
            raise _missing_or(exc, name) from exc

    def _destroy(self, name: str) -> bool:
        """True when this call destroyed the key, False when it was already gone."""
        try:
            self._call("config", lambda c: c.secrets.transit.update_key_configuration(
                name, deletion_allowed=True, mount_point=self._mount))  # fmt: skip
            self._call("delete", lambda c: c.secrets.transit.delete_key(
                name, mount_point=self._mount))  # fmt: skip
        except hvac.exceptions.InvalidRequest as exc:
            if _is_missing(exc):
                return False
            raise Unavailable("vault", f"key not destroyed: {exc}") from exc
        return True

    def _health(self) -> None:
        with self._errors("health"):
            status = self._client().sys.read_health_status(method="GET", standby_ok=True)
        require_ready(status)
        # Signed in as the service, a decrypt under a key no carve has (carve keys end in a
        # UUID): "key not found" proves the token, the policy and the mount; a missing mount,
        # a refused policy or a refused login is Unavailable. Every role may decrypt.
        probe = f"{self._settings.transit_key}-readiness"
        try:
            self._call("probe", lambda c: c.secrets.transit.decrypt_data(
                probe, ciphertext="vault:v1:AAAA", mount_point=self._mount))  # fmt: skip
        except hvac.exceptions.InvalidRequest:
            pass  # the mount answered, as the service: ready

    async def _run(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._pool, fn, *args)

    # --- the async surface -----------------------------------------------------------------

    def key_name(self, carve_id: str) -> str:
        """The Transit key of one carve."""
        return f"{self._settings.transit_key}-{carve_id}"

    async def new_data_key(self, name: str) -> tuple[bytes, str]:
        """Create the Transit key ``name`` (if needed) and a data key under it: (plaintext,
        wrapped). Two calls; the plaintext must stay in memory."""
        await self._run(self._create, name)
        return await self._run(self._datakey, name)

    async def unwrap(self, name: str, wrapped: str) -> bytes:
        """The plaintext of a wrapped data key; KeyShredded when its key is destroyed."""
        return await self._run(self._decrypt, name, wrapped)

    async def rewrap(self, name: str, wrapped: str) -> str:
        """``wrapped`` re-encrypted under the latest version of its key."""
        return await self._run(self._rewrap, name, wrapped)

    async def rotate(self, name: str) -> None:
        await self._run(self._rotate, name)

    async def retire(self, name: str, version: int) -> None:
        """Versions of the key below ``version`` no longer decrypt: wrapped keys of older
        versions (in backups) become useless."""
        await self._run(self._retire, name, version)

    async def destroy(self, name: str) -> bool:
        """Allow deletion and delete the key (crypto-shredding); False if already gone."""
        return await self._run(self._destroy, name)

    async def health(self) -> None:
        """Unavailable unless Vault is unsealed and answers on the Transit mount as the
        service (signed in, its policy allowing a decrypt there)."""
        await self._run(self._health)

    # --- other Transit operations, signed in as the same identity (custody signing) -------

    def call(self, op: str, fn: Callable[[hvac.Client], T]) -> T:
        """``fn`` with a client signed in as the service, sharing this object's login and
        token (one per process), counted under ``op``. Blocking: run it with ``run``."""
        return self._call(op, fn)

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        """``fn(*args)`` in this object's worker threads."""
        return await self._run(fn, *args)

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)


def _is_missing(exc: Exception) -> bool:
    text = str(exc).lower()
    return "not found" in text or "no existing key" in text


def _missing_or(exc: hvac.exceptions.InvalidRequest, name: str) -> Exception:
    if _is_missing(exc):
        return KeyShredded(f"the key of this carve ({name}) was destroyed")
    return Unavailable("vault", f"transit refused: {exc}")
