"""Download settings: ``CARVE_*`` environment variables."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, SecretStr, model_validator

from shared.settings import (
    AmqpSettings,
    EncryptionSettings,
    EventsSettings,
    GiB,
    HttpSettings,
    MiB,
    MongoSettings,
    ProxySettings,
    VaultSettings,
)


class DownloadSettings(
    HttpSettings,
    MongoSettings,
    VaultSettings,
    ProxySettings,
    AmqpSettings,
    EventsSettings,
    EncryptionSettings,
):
    http_port: int = Field(8082, ge=0, le=65535)
    # The Vault policy a responder's token must carry (the original server's name for it).
    vault_policy: str = Field("osquery-file-carve-file-requests", min_length=1)
    # Deleting a carve takes this policy as well: deleting evidence must be rarer than reading it.
    vault_admin_policy: str = Field("osquery-file-carve-admin", min_length=1)
    # How long a token lookup is trusted: a revoked token works at most this much longer.
    vault_cache_ttl: float = Field(10.0, ge=0)
    # Chunks fetched per MongoDB round trip while streaming, at most this many bytes.
    download_batch_bytes: int = Field(1 * MiB, ge=1)
    # Archive and member downloads streaming at once (about 3 MiB each); more get a 503.
    max_streams: int = Field(64, ge=1, le=10_000)
    # Of those, what one responder (Vault entity, or token) may stream at once; more get a
    # 429 stream_busy. Below max_streams, so another responder's download always starts.
    streams_per_responder: int = Field(8, ge=1, le=10_000)
    # A client that takes longer than this to accept one piece of a download is cut off.
    download_write_timeout: float = Field(60.0, gt=0)
    # The slowest a download may go, in bytes a second, judged over each window of
    # download_rate_window seconds; slower: the connection is cut (pace.py). 0: no floor.
    download_min_rate: int = Field(8 * 1024, ge=0)
    download_rate_window: float = Field(30.0, gt=0)
    # Tar listings and member downloads run in threads; at most this many at once.
    tar_concurrency: int = Field(8, ge=1, le=256)
    # Tar jobs (workers) one carve, or one responder, may hold at once; more wait (past 32
    # waiting: 429). Below tar_concurrency, so neither can occupy every worker.
    tar_jobs_per_carve: int = Field(2, ge=1, le=256)
    tar_jobs_per_responder: int = Field(4, ge=1, le=256)
    # Decompressed bytes one pass over a zstd archive may produce (skipped bytes included).
    tar_max_bytes: int = Field(16 * GiB, ge=1 * MiB)
    # Wall time of a listing, or of a member download until its first byte (waits included).
    tar_timeout: float = Field(300.0, gt=0)
    # Members an archive may hold; more: refused (a listing's own limit is ?limit=).
    tar_max_members: int = Field(1_000_000, ge=1)
    # Largest zstd window accepted (osquery's level 1 uses 512 KiB; level 19 8 MiB).
    zstd_max_window: int = Field(8 * MiB, ge=1 * MiB)
    # Carves one re-scan request (POST /api/v1/triage {"since"}) may mark for carve-triage.
    triage_rescan_max: int = Field(10_000, ge=1, le=1_000_000)
    # required: every archive, member or export download must say why (X-Carve-Justification
    # or ?justification=), stored in its audit row; off: recorded when given.
    download_justification: Literal["off", "required"] = "off"
    # Seconds the carve counts of /metrics (carve_carves, carve_receiving_idle_seconds) are
    # reused before a scrape counts again (census.py); 0: each scrape counts.
    census_ttl: float = Field(30.0, ge=0, le=3600)
    # --- custody records (services/download/custody.py) ---
    # The Vault Transit ed25519 key that signs them, and Transit's mount.
    custody_key: str = Field("osquery-carve-custody", pattern=r"^[A-Za-z0-9_.-]{1,128}$")
    custody_mount: str = Field("transit", pattern=r"^[A-Za-z0-9_-][A-Za-z0-9_/-]{0,63}$")
    # Seconds a JSON request body (/file_request, login, single sign-on, tickets) may take to
    # arrive; slower: 408 and the connection closed.
    request_body_timeout: float = Field(10.0, gt=0)
    # --- the console (services/download/tickets.py, login.py) ---
    # The same view (a listing, a carve, a campaign, the counts) asked for again by the same
    # identity within this many seconds is not audited again: a console's auto-refresh does
    # not bury the accesses that matter. 0: every request is audited.
    audit_repeat_window: float = Field(300.0, ge=0, le=86400)
    # Signs browser download tickets. Empty: a random secret per process (one replica only;
    # with several, give them all the same secret, at least 32 bytes).
    ticket_secret: SecretStr = SecretStr("")
    # A download ticket is good for this long, once.
    ticket_ttl: float = Field(60.0, gt=0, le=600)
    # Login attempts per client address (any user name) in any 60 s (login_limits.py).
    login_per_minute: int = Field(10, ge=1, le=10_000)
    # Failed logins of one user name (all addresses) in 60 s that put it under guard: then an
    # address that failed for it waits a minute; addresses that did not still try.
    login_user_failures_per_minute: int = Field(30, ge=1, le=100_000)
    # Failed logins in all (this replica) in 60 s that put every login under guard: then any
    # address that failed waits a minute; addresses that did not still try.
    login_failures_per_minute: int = Field(300, ge=1, le=1_000_000)
    # The Vault auth mount the console's userpass login goes to.
    vault_userpass_mount: str = Field("userpass", pattern=r"^[A-Za-z0-9_-][A-Za-z0-9_/-]{0,63}$")
    # Single sign-on through Vault's OIDC method: the console offers it when a role is set.
    vault_oidc_mount: str = Field("oidc", pattern=r"^[A-Za-z0-9_-][A-Za-z0-9_/-]{0,63}$")
    vault_oidc_role: str = Field("", pattern=r"^([A-Za-z0-9_.-]{1,128})?$")
    # The console's address as responders' browsers see it (ending /ui/); it must be among
    # the role's allowed_redirect_uris.
    oidc_redirect_uri: str = Field("", pattern=r"^(https?://[^\s?#]+/ui/)?$")

    @model_validator(mode="after")
    def _check_shares(self) -> DownloadSettings:
        for name in ("tar_jobs_per_carve", "tar_jobs_per_responder"):
            if self.tar_concurrency > 1 and getattr(self, name) >= self.tar_concurrency:
                raise ValueError(f"{name} must be below tar_concurrency ({self.tar_concurrency})")
        if self.max_streams > 1 and self.streams_per_responder >= self.max_streams:
            raise ValueError(
                f"streams_per_responder must be below max_streams ({self.max_streams})"
            )
        return self
