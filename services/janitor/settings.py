"""Janitor settings: ``CARVE_*`` environment variables (durations in seconds)."""

from __future__ import annotations

from pydantic import Field

from shared.settings import (
    AmqpSettings,
    EncryptionSettings,
    EventsSettings,
    HttpSettings,
    MongoSettings,
    RedisSettings,
    VaultSettings,
)

HOUR = 3600.0
DAY = 24 * HOUR


class JanitorSettings(
    HttpSettings,
    RedisSettings,
    MongoSettings,
    AmqpSettings,
    EventsSettings,
    VaultSettings,
    EncryptionSettings,
):
    http_port: int = Field(8083, ge=0, le=65535)
    # A receiving carve with no block for this long, and blocks missing, has failed
    # (osquery 5.21 and older skip blocks that fail; hosts die mid-carve).
    session_idle_timeout: float = Field(1 * HOUR, gt=0)
    # A failed carve's partial chunks stay this long, so responders can see what arrived.
    failed_retention: float = Field(1 * DAY, ge=0)
    # A complete carve's archive is deleted this long after completion (metadata kept).
    retention: float = Field(30 * DAY, gt=0)
    # Receiving carves untouched this long are checked for "all chunks there, never finalized".
    finalize_grace: float = Field(60.0, ge=0)
    # Same meaning as the assembler's: a finalizer silent this long is presumed dead.
    finalize_lease: float = Field(6.0, gt=0)
    # Seconds between sweeps when not run with --once.
    janitor_interval: float = Field(300.0, gt=0)
    # Chunks per delete, carves per page, Redis keys per SCAN step: every step is bounded.
    janitor_batch: int = Field(1000, ge=1, le=100_000)
    # One sweep at a time across janitors; a janitor silent this long is presumed dead.
    janitor_lease: float = Field(600.0, gt=0)
