"""``carve-triage`` metrics, registered on the app's own registry."""

from __future__ import annotations

from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram


@dataclass(frozen=True)
class TriageMetrics:
    scans: Counter
    scanned_bytes: Counter
    seconds: Histogram
    hits: Counter
    skipped: Counter
    rules: Gauge
    rules_ok: Gauge
    hashes: Gauge
    queue_messages: Gauge

    @classmethod
    def create(cls, registry: CollectorRegistry) -> TriageMetrics:
        return cls(
            scans=Counter(
                "carve_triage_scans", "Carves scanned, by verdict", ["verdict"], registry=registry
            ),
            scanned_bytes=Counter(
                "carve_triage_scanned_bytes", "Member bytes YARA-X scanned", registry=registry
            ),
            seconds=Histogram(
                "carve_triage_scan_seconds",
                "From a scan's claim to its result",
                buckets=(0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800),
                registry=registry,
            ),
            hits=Counter(
                "carve_triage_hits",
                "Hits by kind (yara, hashset) and rule or set name",
                ["kind", "name"],
                registry=registry,
            ),
            skipped=Counter(
                "carve_triage_skipped",
                "Members (or walks) not scanned, by reason",
                ["reason"],
                registry=registry,
            ),
            rules=Gauge("carve_triage_rules", "Rules compiled and in use", registry=registry),
            rules_ok=Gauge(
                "carve_triage_rules_ok",
                "1 when the rules and hash-set directories loaded as they are now; 0 when the "
                "last load failed (the previous rules stay in use, if any)",
                registry=registry,
            ),
            hashes=Gauge(
                "carve_triage_hashset_size",
                "Digests in each hash set",
                ["set"],
                registry=registry,
            ),
            queue_messages=Gauge(
                "carve_triage_queue_messages",
                "carve.completed events waiting in the triage queue, at each scrape",
                registry=registry,
            ),
        )
