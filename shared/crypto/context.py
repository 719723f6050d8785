"""The KeyRing of a service as an aiohttp cleanup context, with its metrics and readiness."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator

from aiohttp import web
from prometheus_client import Counter

from shared import keys as shared_keys
from shared.crypto.keys import KeyRing
from shared.crypto.transit import Transit
from shared.health import Check
from shared.resources import CleanupCtx
from shared.settings import EncryptionSettings, MongoSettings, VaultSettings

log = logging.getLogger(__name__)

KEYRING = web.AppKey("keyring", KeyRing)


class _Settings(EncryptionSettings, VaultSettings, MongoSettings):
    """What the key ring needs of a service's settings."""


def configured_identity(settings: EncryptionSettings) -> bool:
    """Whether the service has a Vault identity of its own to sign in with for Transit."""
    if settings.vault_auth == "kubernetes":
        return bool(settings.vault_kubernetes_role)
    return bool(settings.vault_role_id)


def configured(settings: EncryptionSettings) -> bool:
    """Whether the service talks to Transit (encrypting, or able to read carves encrypted
    earlier with encryption now off)."""
    return settings.encrypting or configured_identity(settings)


def keyring_ctx(settings: EncryptionSettings | _Settings) -> CleanupCtx:
    """A KeyRing under ``KEYRING`` (after the MongoDB context), with
    ``carve_integrity_errors_total`` and ``carve_transit_calls_total`` on the app's registry."""

    if settings.encrypting and not configured_identity(settings):
        raise ValueError(
            "CARVE_ENCRYPTION=vault-transit needs the service's Vault identity: "
            "CARVE_VAULT_ROLE_ID (AppRole) or CARVE_VAULT_KUBERNETES_ROLE (CARVE_VAULT_AUTH="
            "kubernetes); deploy/vault/README.md"
        )

    async def ctx(app: web.Application) -> AsyncIterator[None]:
        assert isinstance(settings, VaultSettings) and isinstance(settings, MongoSettings)
        registry = app[shared_keys.REGISTRY]
        integrity = Counter(
            "carve_integrity_errors",
            "Stored chunks that failed authentication or were clear in a sealed carve",
            registry=registry,
        )
        calls = Counter(
            "carve_transit_calls", "Vault Transit calls, by operation", ["op"], registry=registry
        )
        transit = Transit(settings, settings) if configured(settings) else None
        if transit is not None:
            transit.on_call = lambda op: calls.labels(op).inc()
        ring = KeyRing(app[shared_keys.MONGO_DB], settings.mongo_bucket, transit, settings)
        ring.on_integrity_error = integrity.inc
        app[KEYRING] = ring
        if settings.encrypting:
            log.info("encryption at rest: Vault Transit, mount %s", settings.transit_mount)
        try:
            yield
        finally:
            if transit is not None:
                transit.close()

    return ctx


async def check_transit(app: web.Application) -> None:
    """Ready only when Vault Transit answers the service (a service that encrypts or decrypts
    needs it): Vault unsealed, the service signed in, its policy allowing a decrypt on the
    mount."""
    transit = app[KEYRING].transit
    if transit is not None:
        await transit.health()


def transit_checks(settings: EncryptionSettings) -> dict[str, Check]:
    """The ``transit`` readiness check (``carve_check_up{check="transit"}``, the alert
    CarveVaultUnavailable) for a service with a KeyRing, when ``CARVE_ENCRYPTION=vault-transit``;
    none otherwise: with encryption off, Vault matters only to carves sealed earlier, whose
    reads answer 503 on their own while it is away."""
    return {"transit": check_transit} if settings.encrypting else {}
