"""One endpoint's sender: due deliveries out, a few at a time, each attempt bounded.

Each endpoint has its own sender, HTTP connection pool and workers, so a slow or dead
endpoint holds only its own: never another endpoint, the carve pipeline or a host's reply.
An attempt: the body (the CloudEvent, or the chat message), signed; TLS verified (a private
CA with ``CARVE_WEBHOOK_CACERT``); connect and read timeouts; redirects not followed; at most
``CARVE_WEBHOOK_MAX_RESPONSE_BYTES`` of the answer read. A 2xx ends the delivery; anything
else is retried with exponential backoff and jitter until ``CARVE_WEBHOOK_RETRY_FOR`` after
the delivery was recorded, then it is dead. A 410 Gone is retried like any failure, and
logged and counted apart: nothing is disabled behind the operator's back.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import ssl
from datetime import UTC, datetime, timedelta

import aiohttp
from pymongo.errors import PyMongoError

from services.events.endpoints import Endpoint, Format
from services.events.messages import signed_headers, slack_body
from services.events.metrics import EventsMetrics
from services.events.settings import EventsServiceSettings
from services.events.store import Deliveries, backoff
from shared.deliveries import DeliveryDoc
from shared.errors import PoisonMessage
from shared.events.envelope import decode_event
from shared.tasks import cancel_and_wait

log = logging.getLogger(__name__)

_IDLE_POLL = 1.0  # seconds between looks for deliveries another replica recorded, or retries


def tls_context(cacert: str | None) -> ssl.SSLContext:
    """Verification always on; ``cacert`` adds a private CA's bundle."""
    return ssl.create_default_context(cafile=cacert)


class Sender:
    def __init__(
        self,
        endpoint: Endpoint,
        deliveries: Deliveries,
        settings: EventsServiceSettings,
        metrics: EventsMetrics,
        tls: ssl.SSLContext,
    ) -> None:
        self.endpoint = endpoint
        self._deliveries = deliveries
        self._settings = settings
        self._metrics = metrics
        self._tls = tls
        self._wake = asyncio.Event()
        self._rng = random.Random()
        self._http: aiohttp.ClientSession | None = None
        self._workers: list[asyncio.Task[None]] = []
        self._stopping = False

    def wake(self) -> None:
        self._wake.set()

    def start(self) -> None:
        connector = aiohttp.TCPConnector(ssl=self._tls, limit=self._settings.webhook_concurrency)
        self._http = aiohttp.ClientSession(
            connector=connector,
            timeout=aiohttp.ClientTimeout(
                total=self._settings.webhook_connect_timeout
                + 2 * self._settings.webhook_read_timeout,
                sock_connect=self._settings.webhook_connect_timeout,
                sock_read=self._settings.webhook_read_timeout,
            ),
            trust_env=False,  # no proxy from the environment, no .netrc credentials
        )
        self._workers = [
            asyncio.create_task(self._work(), name=f"webhook-{self.endpoint.name}-{i}")
            for i in range(self._settings.webhook_concurrency)
        ]

    async def stop(self, timeout: float) -> None:
        """Stop taking deliveries; give those under way ``timeout`` seconds, then cancel them
        (their claims lapse and they are sent again later, same webhook-id)."""
        self._stopping = True
        self._wake.set()
        if self._workers:
            _, pending = await asyncio.wait(self._workers, timeout=timeout)
            await cancel_and_wait(*pending)
        if self._http is not None:
            await self._http.close()

    async def _work(self) -> None:
        while not self._stopping:
            try:
                doc = await self._deliveries.claim(self.endpoint.name)
            except PyMongoError as exc:
                log.warning("webhook %s: MongoDB unavailable (%s)", self.endpoint.name, exc)
                await asyncio.sleep(_IDLE_POLL)
                continue
            if doc is None:
                if self._stopping:
                    return
                self._wake.clear()
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(_IDLE_POLL):
                        await self._wake.wait()
                continue
            await self._attempt(doc)

    async def _attempt(self, doc: DeliveryDoc) -> None:
        name = self.endpoint.name
        try:
            body = self._body(doc)
        except PoisonMessage as exc:  # recorded from a valid event: cannot happen, never loop
            await self._deliveries.failed(doc, None, f"unreadable event: {exc}", None)
            return
        headers = signed_headers(
            self.endpoint.secret.get_secret_value(), doc["event_id"], body, datetime.now(UTC)
        )
        status: int | None = None
        error = ""
        assert self._http is not None
        try:
            async with self._http.post(
                self.endpoint.url.get_secret_value(),
                data=body,
                headers=headers,
                allow_redirects=False,
            ) as resp:
                status = resp.status
                await resp.content.read(self._settings.webhook_max_response_bytes)
        except (aiohttp.ClientError, TimeoutError) as exc:
            error = f"no answer: {exc.__class__.__name__}"
        if status is not None and 200 <= status < 300:
            await self._deliveries.delivered(doc, status)
            self._metrics.deliveries.labels(name, "delivered").inc()
            latency = (datetime.now(UTC) - doc["event_time"]).total_seconds()
            self._metrics.latency.labels(name).observe(max(0.0, latency))
            return
        if status is not None:
            error = f"HTTP {status}"
        outcome = "gone" if status == 410 else ("failed" if status is not None else "error")
        self._metrics.deliveries.labels(name, outcome).inc()
        if status == 410:
            log.warning(
                "webhook %s answered 410 Gone for event %s: still retried; remove the endpoint "
                "from the configuration if it is gone for good",
                name,
                doc["event_id"],
            )
        await self._deliveries.failed(doc, status, error, self._retry_at(doc))

    def _retry_at(self, doc: DeliveryDoc) -> datetime | None:
        now = datetime.now(UTC)
        deadline = doc["created_at"] + timedelta(seconds=self._settings.webhook_retry_for)
        if now >= deadline:
            self._metrics.dead.labels(self.endpoint.name).inc()
            log.error(
                "webhook %s: event %s dead after %d attempts",
                self.endpoint.name,
                doc["event_id"],
                doc["attempts"] + 1,
            )
            return None
        delay = backoff(
            doc["attempts"] + 1,
            self._settings.webhook_backoff,
            self._settings.webhook_backoff_max,
            self._rng,
        )
        return min(now + timedelta(seconds=delay), deadline)

    def _body(self, doc: DeliveryDoc) -> bytes:
        body = bytes(doc["body"])
        if self.endpoint.format is Format.SLACK:
            return slack_body(decode_event(body), self._settings.console_url)
        return body
