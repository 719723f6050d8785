"""Ingest settings: ``CARVE_*`` environment variables."""

from __future__ import annotations

from pydantic import Field

from shared.settings import AmqpSettings, GiB, HttpSettings, MiB, MongoSettings, RedisSettings

# The largest block that fits a GridFS chunk document (16 MiB BSON limit, minus its fields).
MAX_BLOCK_SIZE = 16 * MiB - 16 * 1024


class IngestSettings(HttpSettings, RedisSettings, AmqpSettings, MongoSettings):
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
    # Whole-request budget, kept well under osquery's 16 s hard limit.
    request_timeout: float = Field(12.0, gt=0)
    # Request bodies being processed at once (bytes); more requests wait their turn.
    max_inflight_bytes: int = Field(8 * MiB, ge=1)
    # Per connection, body bytes read ahead before the socket is paused (aiohttp keeps up
    # to twice this): what a request waiting for the budget above holds meanwhile.
    read_buffer_bytes: int = Field(64 * 1024, ge=4096)
    # Redis session lifetime, refreshed by every block.
    session_ttl: int = Field(48 * 3600, ge=60)
