"""``carve-events`` metrics, registered on the app's own registry."""

from __future__ import annotations

from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Histogram


@dataclass(frozen=True)
class EventsMetrics:
    received: Counter
    deliveries: Counter
    latency: Histogram
    dead: Counter

    @classmethod
    def create(cls, registry: CollectorRegistry) -> EventsMetrics:
        return cls(
            received=Counter(
                "carve_webhook_events",
                "Events taken from an endpoint's queue, by endpoint and outcome "
                "(recorded, duplicate, poison)",
                ["endpoint", "outcome"],
                registry=registry,
            ),
            deliveries=Counter(
                "carve_webhook_attempts",
                "Delivery attempts by endpoint and outcome (delivered, failed, gone: 410, "
                "error: no answer)",
                ["endpoint", "outcome"],
                registry=registry,
            ),
            latency=Histogram(
                "carve_webhook_delivery_seconds",
                "From the carve's change to the endpoint's 2xx",
                ["endpoint"],
                buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 3600, 86400),
                registry=registry,
            ),
            dead=Counter(
                "carve_webhook_dead",
                "Deliveries given up after CARVE_WEBHOOK_RETRY_FOR",
                ["endpoint"],
                registry=registry,
            ),
        )
