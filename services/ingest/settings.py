"""Ingest settings: ``CARVE_*`` environment variables."""

from __future__ import annotations

from pydantic import Field

from shared.quotas import Limits
from shared.settings import (
    AmqpSettings,
    EventsSettings,
    GiB,
    HttpSettings,
    MiB,
    MongoSettings,
    ProxySettings,
    RedisSettings,
)

TiB = 1024 * GiB

# The largest block that fits a GridFS chunk document (16 MiB BSON limit, minus its fields).
MAX_BLOCK_SIZE = 16 * MiB - 16 * 1024


class IngestSettings(
    HttpSettings, RedisSettings, AmqpSettings, MongoSettings, ProxySettings, EventsSettings
):
    http_port: int = Field(8080, ge=0, le=65535)
    # A block is stored as one MongoDB document (GridFS chunk), which must stay under 16 MiB:
    # 16 MiB blocks would be refused by MongoDB (BSON too large) and never complete.
    max_block_size: int = Field(8 * MiB, ge=1, le=MAX_BLOCK_SIZE)
    max_carve_size: int = Field(100 * GiB, ge=1)
    # How long to wait for RabbitMQ's confirm before telling osquery to retry.
    publish_timeout: float = Field(5.0, gt=0)
    # Blocks of concurrent requests share a message, up to this many bytes.
    publish_batch_bytes: int = Field(1 * MiB, ge=1)
    # Messages waiting for their confirm at once: each confirm waits for the broker's fsync.
    publish_concurrency: int = Field(4, ge=1, le=64)
    # Seconds a message waits for more blocks before it goes (unless full first), and only
    # while another message awaits its confirm: it saves CPU per block under load, and a
    # lone host (one block in flight at a time) never waits. 0 turns it off
    # (docs/benchmarks/README.md).
    publish_linger: float = Field(0.002, ge=0, le=5.0)
    # Whole-request budget, kept well under osquery's 16 s hard limit.
    request_timeout: float = Field(12.0, gt=0)
    # Request bodies being processed at once (bytes); more requests wait their turn.
    max_inflight_bytes: int = Field(8 * MiB, ge=1)
    # Per connection, body bytes read ahead before the socket is paused (aiohttp keeps up
    # to twice this): what a request waiting for the budget above holds meanwhile.
    read_buffer_bytes: int = Field(64 * 1024, ge=4096)
    # Redis session lifetime, refreshed by every block.
    session_ttl: int = Field(48 * 3600, ge=60)

    # --- What a host may declare, and hold open (see shared/quotas.py) ---
    # 2^24 blocks: a session's Redis bitmap stays under 2 MiB whatever the host sends
    # (100 GiB at osquery's default 8 KiB blocks is 13.1 M blocks).
    max_block_count: int = Field(2**24, ge=1, le=2**32)
    # osquery's default is 8 KiB; blocks this small only multiply requests.
    min_block_size: int = Field(1024, ge=1)
    max_active_carves_per_host: int = Field(8, ge=1)
    # Re-sent blocks of one session published again (per process) before the others are
    # looked up in Redis first and, if stored, answered without a publish (abuse.py).
    max_duplicates_per_session: int = Field(8, ge=0)
    # Blocks naming an unknown session per verified device certificate (per process, a
    # sliding minute) before that device's unknown sessions are refused unlooked (abuse.py).
    max_unknown_sessions_per_device: int = Field(30, ge=1)
    max_starts_per_host_per_minute: int = Field(30, ge=1)
    max_inflight_bytes_per_host: int = Field(200 * GiB, ge=1)
    # All hosts together: a fleet-wide flood becomes refusals, not an outage.
    max_active_carves: int = Field(10_000, ge=1)
    max_inflight_carve_bytes: int = Field(50 * TiB, ge=1)
    # Redis memory that all admitted upload sessions may reach at most (shared.quotas).
    max_session_memory: int = Field(512 * MiB, ge=1)

    def quota_limits(self) -> Limits:
        return Limits(
            host_active=self.max_active_carves_per_host,
            host_starts_per_minute=self.max_starts_per_host_per_minute,
            host_bytes=self.max_inflight_bytes_per_host,
            global_active=self.max_active_carves,
            global_bytes=self.max_inflight_carve_bytes,
            global_session_bytes=self.max_session_memory,
            lifetime_seconds=self.session_ttl,
        )
