"""Assembler metrics, registered on the app's own registry."""

from __future__ import annotations

import time
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from shared.finalize import CarveFinalizer, Outcome, Result


@dataclass(frozen=True)
class AssemblerMetrics:
    blocks: Counter
    block_bytes: Counter
    retries: Counter
    finalized: Counter
    finalize_seconds: Histogram
    in_flight: Gauge
    unavailable: Counter
    lag: Histogram
    queue_messages: Gauge
    acks: Counter

    @classmethod
    def create(cls, registry: CollectorRegistry) -> AssemblerMetrics:
        return cls(
            blocks=Counter(
                "carve_assembler_blocks",
                "Block messages handled, by outcome (written, duplicate, finalized, dead_lettered)",
                ["outcome"],
                registry=registry,
            ),
            block_bytes=Counter(
                "carve_assembler_bytes", "Bytes written as new chunks", registry=registry
            ),
            retries=Counter(
                "carve_assembler_retries",
                "Block handling retried because a backend failed",
                registry=registry,
            ),
            finalized=Counter(
                "carve_finalized", "Carves finalized by outcome", ["outcome"], registry=registry
            ),
            finalize_seconds=Histogram(
                "carve_finalize_seconds",
                "Time to verify, hash and complete a carve",
                buckets=(0.01, 0.05, 0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900),
                registry=registry,
            ),
            in_flight=Gauge(
                "carve_assembler_in_flight", "Block messages being handled", registry=registry
            ),
            unavailable=Counter(
                "carve_backend_unavailable",
                "Block or trigger handling retried because a backend failed, by backend",
                ["backend"],
                registry=registry,
            ),
            lag=Histogram(
                "carve_assembler_lag_seconds",
                "From the ingest's publish of a block message to its first handling here "
                "(whole seconds: the AMQP timestamp)",
                buckets=(1, 2, 5, 10, 30, 60, 120, 300, 600, 1800, 3600),
                registry=registry,
            ),
            queue_messages=Gauge(
                "carve_queue_messages",
                "Messages ready in the block queue, its dead-letter and its delay queue, "
                "at each scrape",
                ["queue"],
                registry=registry,
            ),
            acks=Counter(
                "carve_assembler_acks",
                "basic.ack frames sent (one settles every delivery stored together)",
                registry=registry,
            ),
        )


class TimedFinalizer:
    """Wraps a finalizer to count outcomes and time the finalizations that happen."""

    def __init__(self, inner: CarveFinalizer, metrics: AssemblerMetrics) -> None:
        self._inner = inner
        self._metrics = metrics

    async def maybe_finalize(self, carve_id: str) -> Result:
        started = time.monotonic()
        result = await self._inner.maybe_finalize(carve_id)
        self._metrics.finalized.labels(result.outcome.value).inc()
        if result.outcome is Outcome.FINALIZED:
            self._metrics.finalize_seconds.observe(time.monotonic() - started)
        return result
