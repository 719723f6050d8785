"""Janitor metrics, registered on the app's own registry."""

from __future__ import annotations

from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram


@dataclass(frozen=True)
class JanitorMetrics:
    actions: Counter
    bytes_freed: Counter
    sweeps: Counter
    duration: Histogram
    last_success: Gauge

    @classmethod
    def create(cls, registry: CollectorRegistry) -> JanitorMetrics:
        return cls(
            actions=Counter(
                "carve_janitor_actions",
                "Things the janitor did, by action",
                ["action"],
                registry=registry,
            ),
            bytes_freed=Counter(
                "carve_janitor_bytes_freed", "Archive bytes deleted", registry=registry
            ),
            sweeps=Counter(
                "carve_janitor_sweeps",
                "Sweeps by outcome (done, skipped: another janitor holds the lease, error)",
                ["outcome"],
                registry=registry,
            ),
            duration=Histogram(
                "carve_janitor_sweep_seconds",
                "Sweep duration",
                buckets=(0.1, 0.5, 1, 5, 15, 60, 300, 900, 3600),
                registry=registry,
            ),
            last_success=Gauge(
                "carve_janitor_last_success_timestamp",
                "Unix time of the last completed sweep",
                registry=registry,
            ),
        )
