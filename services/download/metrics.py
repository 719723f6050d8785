"""Download metrics, registered on the app's own registry."""

from __future__ import annotations

from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram


@dataclass(frozen=True)
class DownloadMetrics:
    requests: Counter
    bytes_sent: Counter
    auth_failures: Counter
    vault_latency: Histogram
    active: Gauge
    tar_jobs: Gauge
    tar_refusals: Counter
    tar_abandoned: Counter
    streams: Gauge
    too_slow: Counter
    audit_repeats: Counter
    unavailable: Counter
    carves: Gauge
    receiving_idle: Gauge
    census_age: Gauge

    @classmethod
    def create(cls, registry: CollectorRegistry) -> DownloadMetrics:
        return cls(
            requests=Counter(
                "carve_download_requests",
                "Responder requests by action and outcome",
                ["action", "outcome"],
                registry=registry,
            ),
            bytes_sent=Counter(
                "carve_download_bytes", "Body bytes sent, by action", ["action"], registry=registry
            ),
            auth_failures=Counter(
                "carve_auth_failures",
                "Refused credentials: missing, invalid (401), policy (403), accessor (403)",
                ["reason"],
                registry=registry,
            ),
            vault_latency=Histogram(
                "carve_vault_lookup_seconds",
                "Vault token lookup latency (cache misses only)",
                buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
                registry=registry,
            ),
            active=Gauge(
                "carve_downloads_active", "Responses being streamed now", registry=registry
            ),
            tar_jobs=Gauge(
                "carve_tar_jobs", "Tar listings and member downloads running now", registry=registry
            ),
            tar_refusals=Counter(
                "carve_tar_refusals",
                "Tar requests refused: archive_<reason> (422) or tar_busy_<share> (429)",
                ["reason"],
                registry=registry,
            ),
            tar_abandoned=Counter(
                "carve_tar_abandoned",
                "Tar jobs stopped because their client went away",
                registry=registry,
            ),
            streams=Gauge(
                "carve_download_streams",
                "Archive and member downloads holding a stream slot now",
                registry=registry,
            ),
            too_slow=Counter(
                "carve_download_too_slow",
                "Downloads cut off because their client read below CARVE_DOWNLOAD_MIN_RATE",
                registry=registry,
            ),
            audit_repeats=Counter(
                "carve_audit_repeats",
                "Views asked for again by the same identity within CARVE_AUDIT_REPEAT_WINDOW: "
                "not audited again (a console's auto-refresh)",
                ["action"],
                registry=registry,
            ),
            unavailable=Counter(
                "carve_backend_unavailable",
                "Requests answered 503 because a backend failed (mongodb, vault) or every "
                "stream slot was taken (download)",
                ["backend"],
                registry=registry,
            ),
            carves=Gauge(
                "carve_carves",
                "Carves by status (receiving, complete, failed), counted at most every "
                "CARVE_CENSUS_TTL (carve_census_age_seconds: how long ago)",
                ["status"],
                registry=registry,
            ),
            receiving_idle=Gauge(
                "carve_receiving_idle_seconds",
                "Seconds since the least recently updated receiving carve moved (0: none "
                "receiving), as of the last census (carve_census_age_seconds ago)",
                registry=registry,
            ),
            census_age=Gauge(
                "carve_census_age_seconds",
                "Seconds since carve_carves and carve_receiving_idle_seconds were counted "
                "(reused for CARVE_CENSUS_TTL; grows while MongoDB cannot answer; before any "
                "census: since the first scrape)",
                registry=registry,
            ),
        )
