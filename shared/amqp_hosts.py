"""One robust AMQP connection over several RabbitMQ nodes (``CARVE_AMQP_URL=url1,url2,url3``).

aio-pika's robust connection reconnects to the one URL it was given. A cluster node that
dies would then keep a service waiting for that node alone, while two others serve the same
quorum queues. ``MultiHostConnection`` moves to the next URL on every connection attempt
(the first attempt, and each attempt after a loss), round-robin, so a service reaches any
node that is up. Channels, queues and consumers are restored on the new node by aio-pika
as usual; quorum queues live on every node, so nothing else changes.

What a lost node costs: messages published but not yet confirmed are not confirmed, so the
ingest answers the host with a text 503 (osquery 5.22+ sends the block again; 5.21 and older
skip it, and the carve ends failed for the missing block rather than complete);
nothing acknowledged to a host depends on the node that died, because RabbitMQ confirms a
quorum-queue publish only once a majority of its replicas hold it.
"""

from __future__ import annotations

from typing import Any

import aiormq.abc
from aio_pika import RobustConnection
from aio_pika.abc import AbstractRobustConnection
from aio_pika.exceptions import CONNECTION_EXCEPTIONS
from yarl import URL

# Seconds between a loss and the next attempt (aio-pika's default is 5): with other nodes
# up, waiting long only makes hosts see errors for longer.
RECONNECT_INTERVAL = 1.0


def split_urls(value: str) -> list[str]:
    """The comma-separated URLs of ``CARVE_AMQP_URL``, blanks dropped; ValueError if none."""
    urls = [part.strip() for part in value.split(",") if part.strip()]
    if not urls:
        raise ValueError("CARVE_AMQP_URL names no broker")
    for url in urls:
        if URL(url).scheme not in ("amqp", "amqps"):
            raise ValueError("every CARVE_AMQP_URL entry must be an amqp:// or amqps:// URL")
    return urls


class MultiHostConnection(RobustConnection):
    """A robust connection that tries the next of its URLs on each connection attempt.

    aio-pika's reconnect loop clears ``transport`` right before each attempt and then
    connects to ``self.url``; the setter below picks the next URL at that moment. That is
    the one hook aio-pika offers into its loop (its attempt method is name-mangled); a
    test against a real three-node cluster pins it (tests/integration/test_ha_rabbit.py).
    """

    def __init__(self, urls: list[str], start: int = 0, **kwargs: Any) -> None:
        self._urls = [URL(url) for url in urls]
        self._next = start % len(self._urls)
        super().__init__(self._urls[self._next], **kwargs)

    @property  # type: ignore[override]
    def transport(self) -> aiormq.abc.AbstractConnection | Any:
        return self.__dict__.get("_transport")

    @transport.setter
    def transport(self, value: Any) -> None:
        if value is None and "_urls" in self.__dict__ and "url" in self.__dict__:
            self.url = self._urls[self._next]
            self._next = (self._next + 1) % len(self._urls)
        self.__dict__["_transport"] = value

    @property
    def urls(self) -> list[URL]:
        return list(self._urls)


async def connect_any(
    value: str, *, timeout: float, client_properties: dict[str, Any]
) -> AbstractRobustConnection:
    """A robust connection to the first of the comma-separated URLs that answers.

    Raises the last error when none does (like ``aio_pika.connect_robust``, which fails fast
    on its first attempt); once connected, it reconnects for ever, to whichever node is up.
    """
    urls = split_urls(value)
    last: BaseException | None = None
    for start in range(len(urls)):
        connection = MultiHostConnection(
            urls,
            start,
            client_properties=client_properties,
            reconnect_interval=RECONNECT_INTERVAL,
        )
        try:
            await connection.connect(timeout=timeout)
        except (TimeoutError, *CONNECTION_EXCEPTIONS) as exc:
            last = exc
            await connection.close()
            continue
        except BaseException:
            # Cancelled mid-connect (a shutdown, a caller's timeout): close it, or its
            # reconnect task lives on. That task treats a cancel that comes while it connects
            # as a failed attempt and tries again, unless close() was called: an event loop
            # shutting down (asyncio.run, pytest-asyncio) then waits for it for ever.
            await connection.close()
            raise
        return connection
    assert last is not None
    raise last
