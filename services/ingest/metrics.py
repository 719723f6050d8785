"""Ingest metrics, registered on the app's own registry."""

from __future__ import annotations

from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, Counter, Histogram


@dataclass(frozen=True)
class IngestMetrics:
    starts: Counter
    blocks: Counter
    rejections: Counter
    block_bytes: Counter
    unavailable: Counter
    latency: Histogram
    batch_blocks: Histogram
    lingered: Counter
    unpublished: Counter
    unlooked: Counter
    # Children of the per-block series, bound once: labels() on every block costs a lock,
    # a validation and a dict lookup each time.
    accepted: Counter = field(init=False)
    duplicate: Counter = field(init=False)
    _latency_of: dict[str, Histogram] = field(init=False, default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "accepted", self.blocks.labels("accepted"))
        object.__setattr__(self, "duplicate", self.blocks.labels("duplicate"))

    def latency_of(self, endpoint: str) -> Histogram:
        """``latency`` of ``endpoint`` (a route's name: a handful, never the host's text)."""
        child = self._latency_of.get(endpoint)
        if child is None:
            child = self._latency_of[endpoint] = self.latency.labels(endpoint)
        return child

    @classmethod
    def create(cls, registry: CollectorRegistry) -> IngestMetrics:
        return cls(
            starts=Counter(
                "carve_starts", "Carve start requests by outcome", ["outcome"], registry=registry
            ),
            blocks=Counter(
                "carve_blocks", "Block requests by outcome", ["outcome"], registry=registry
            ),
            rejections=Counter(
                "carve_rejections",
                "Requests refused as bad input, by reason",
                ["endpoint", "reason"],
                registry=registry,
            ),
            block_bytes=Counter(
                "carve_block_bytes", "Decoded bytes of accepted blocks", registry=registry
            ),
            unavailable=Counter(
                "carve_backend_unavailable",
                "Requests answered 503 because a backend failed",
                ["backend"],
                registry=registry,
            ),
            latency=Histogram(
                "carve_request_seconds",
                "Request latency by endpoint",
                ["endpoint"],
                buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
                registry=registry,
            ),
            batch_blocks=Histogram(
                "carve_publish_batch_blocks",
                "Blocks per published message (concurrent requests share messages)",
                buckets=(1, 2, 4, 8, 16, 32, 64),
                registry=registry,
            ),
            unpublished=Counter(
                "carve_duplicates_unpublished",
                "Re-sent blocks answered from the session's bitmap without a publish, once the"
                " session was past CARVE_MAX_DUPLICATES_PER_SESSION (a host re-sending blocks)",
                registry=registry,
            ),
            unlooked=Counter(
                "carve_unknown_sessions_unlooked",
                "Blocks refused as naming an unknown session without a lookup: their device"
                " was past CARVE_MAX_UNKNOWN_SESSIONS_PER_DEVICE (a host guessing session ids)",
                registry=registry,
            ),
            lingered=Counter(
                "carve_publish_lingered",
                "Messages that waited CARVE_PUBLISH_LINGER for more blocks (only while another"
                " message awaited its confirm)",
                registry=registry,
            ),
        )
