"""``carve-triage`` settings: ``CARVE_*`` environment variables."""

from __future__ import annotations

from pydantic import Field

from shared.settings import (
    AmqpSettings,
    EncryptionSettings,
    EventsSettings,
    GiB,
    HttpSettings,
    MiB,
    MongoSettings,
    VaultSettings,
)


class TriageSettings(
    HttpSettings, AmqpSettings, MongoSettings, EventsSettings, VaultSettings, EncryptionSettings
):
    http_port: int = Field(8085, ge=0, le=65535)
    # A directory of YARA-X rule files (*.yar, *.yara), compiled at start and on reload.
    triage_rules: str = "/etc/carve-triage/rules"
    # A directory of hash sets: one file per set (its name is the set's), one SHA-256 a line.
    triage_hashsets: str = "/etc/carve-triage/hashsets"
    # Scans at once, each in its own worker process (one core each while it runs).
    triage_workers: int = Field(2, ge=1, le=64)
    # Bytes of one member YARA-X scans (held in the worker's memory while it does); the rest
    # of a bigger member is hashed, not scanned, and reported as skipped.
    triage_max_member_bytes: int = Field(256 * MiB, ge=1, le=4 * GiB)
    # Decompressed bytes one scan may read, and its wall time: past either it stops and the
    # verdict is incomplete (never clean).
    triage_max_carve_bytes: int = Field(16 * GiB, ge=1)
    triage_max_seconds: float = Field(600.0, gt=0)
    # YARA-X's own timeout for one member's scan (a rule that runs away).
    triage_scan_timeout: float = Field(60.0, gt=0)
    # A claim on a carve's scan (renewed while it runs): a replica that dies mid-scan leaves
    # it to be redone once its claim lapses.
    triage_lease: float = Field(60.0, gt=0)
    # How often pending scans (re-scans, interrupted scans) are looked for in MongoDB.
    triage_sweep_interval: float = Field(10.0, gt=0)
    # The queue bound to the events exchange (carve.completed).
    triage_queue: str = "carve.triage"
    # How often the rules and hash-set directories are checked for changes (0: only SIGHUP).
    triage_reload_interval: float = Field(30.0, ge=0)
