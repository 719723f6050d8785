"""Assembler settings: ``CARVE_*`` environment variables."""

from __future__ import annotations

from pydantic import Field

from shared.settings import (
    AmqpSettings,
    EncryptionSettings,
    EventsSettings,
    HttpSettings,
    MiB,
    MongoSettings,
    VaultSettings,
)


class AssemblerSettings(
    HttpSettings, AmqpSettings, MongoSettings, EventsSettings, VaultSettings, EncryptionSettings
):
    http_port: int = Field(8081, ge=0, le=65535)
    # Most messages in flight per process, and about how many bytes of them: the count
    # follows the size of recent messages (8 for 1 MiB messages, 1 for 8 MiB blocks).
    prefetch: int = Field(64, ge=1, le=1000)
    prefetch_bytes: int = Field(8 * MiB, ge=1)
    # Most chunks, and most bytes, written in one insert_many.
    write_batch: int = Field(64, ge=1, le=1000)
    write_batch_bytes: int = Field(4 * MiB, ge=1)
    # Seconds a chunk write waits for more chunks before it goes (unless the batch fills
    # first). One host sends one block per message: without it each message is one
    # insert_many and one ack. It delays the acks and completion, never a host's reply.
    write_linger: float = Field(0.05, ge=0, le=1.0)
    # On SIGTERM, how long in-flight blocks may take before they are cancelled (and redelivered).
    drain_timeout: float = Field(20.0, ge=0)
    # A finalizer that stops renewing its lease for this long is presumed dead (it renews
    # every third of it): the longest a crash during a finalization delays the carve.
    finalize_lease: float = Field(6.0, gt=0)
    # How often progress counters are written, and how long a carve's chunks must stop
    # arriving before this process checks again whether the carve is whole.
    progress_interval: float = Field(1.0, gt=0)
    finalize_idle: float = Field(2.0, ge=0)
    # Longest pause between retries of a block while MongoDB is unreachable.
    retry_max_delay: float = Field(10.0, gt=0)
