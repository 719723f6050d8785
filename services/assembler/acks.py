"""Acknowledging many deliveries with one ``basic.ack`` (``multiple``), never one unwritten.

A delivery is acknowledged only once its blocks are stored. Deliveries whose
writes shared one ``insert_many`` finish together; instead of one ``basic.ack``
each, ``done`` notes them and, once the tasks resumed in this turn of the event
loop have run, one ``basic.ack`` with ``multiple`` covers the longest run of
finished deliveries from the oldest unsettled one: ``multiple`` acknowledges every
earlier tag too, so it may only cover tags that are all finished. A finished
delivery behind one still at work (a carve being finalized, a retry while MongoDB
is away) is acknowledged on its own, so a slow delivery never holds the others'
acks, nor the prefetch they free.

Delivery tags count per channel, from 1 again on a new channel (a reconnect, a
resubscription): the book is kept per channel object, and a closed channel's is
dropped, as the broker requeues whatever it had not acknowledged.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass, field

from aio_pika.abc import AbstractIncomingMessage
from aio_pika.exceptions import AMQPError, ChannelInvalidStateError

log = logging.getLogger(__name__)


@dataclass(eq=False)
class _Book:
    """One channel's deliveries not yet settled, by delivery tag (insertion = tag order)."""

    open: dict[int, AbstractIncomingMessage | None] = field(default_factory=dict)


class Acker:
    """``track`` every delivery as it comes, then ``done`` (ack) or ``forget`` (settled else)."""

    def __init__(self, on_ack: Callable[[int], None] = lambda acks: None) -> None:
        self._books: dict[object, _Book] = {}
        self._scheduled = False
        self._on_ack = on_ack  # called with how many basic.ack frames a flush sent
        self._acking: set[asyncio.Task[None]] = set()

    def track(self, message: AbstractIncomingMessage) -> None:
        if (channel := _channel_of(message)) is not None:
            self._books.setdefault(channel, _Book()).open[_tag(message)] = None

    def forget(self, message: AbstractIncomingMessage) -> None:
        """``message`` was nacked or rejected on its own: it is no longer ours to ack."""
        book = self._books.get(_channel_of(message))
        if book is not None:
            book.open.pop(_tag(message), None)
            self._schedule()  # a finished run behind it may now be acked with one frame

    def done(self, message: AbstractIncomingMessage) -> None:
        """``message``'s blocks are stored: acknowledge it soon, with the others."""
        book = self._books.get(_channel_of(message))
        tag = _tag(message)
        if book is None or tag not in book.open:
            return  # its channel closed meanwhile: the broker requeued it
        book.open[tag] = message
        self._schedule()

    async def drain(self) -> None:
        """Wait for the acks already sent (shutdown)."""
        self._flush()
        if self._acking:
            await asyncio.wait(set(self._acking))

    def _schedule(self) -> None:
        if not self._scheduled:
            self._scheduled = True
            # After the tasks already woken in this turn (a whole insert_many's deliveries).
            asyncio.get_running_loop().call_soon(self._flush)

    def _flush(self) -> None:
        self._scheduled = False
        for channel, book in list(self._books.items()):
            if _closed(channel):
                del self._books[channel]
                continue
            for message, multiple in _acks(book):
                task = asyncio.create_task(_ack(message, multiple))
                self._acking.add(task)
                task.add_done_callback(self._acking.discard)
                self._on_ack(1)


def _acks(book: _Book) -> list[tuple[AbstractIncomingMessage, bool]]:
    """The acks that settle every finished delivery of ``book`` (removed from it)."""
    out: list[tuple[AbstractIncomingMessage, bool]] = []
    prefix: AbstractIncomingMessage | None = None
    for tag, message in list(book.open.items()):
        if message is None:
            break
        prefix = message
        del book.open[tag]
    if prefix is not None:
        out.append((prefix, True))
    for tag, message in list(book.open.items()):
        if message is not None:  # finished behind one still at work: on its own
            out.append((message, False))
            del book.open[tag]
    return out


async def _ack(message: AbstractIncomingMessage, multiple: bool) -> None:
    try:
        await message.ack(multiple=multiple)
    except (AMQPError, ChannelInvalidStateError, ConnectionError) as exc:
        # The channel is gone: the broker requeued every unacknowledged delivery, and
        # storing them again is a no-op.
        log.warning("could not ack (%s); the deliveries will come again", exc)


def _tag(message: AbstractIncomingMessage) -> int:
    tag = message.delivery_tag
    assert tag is not None  # consumed with acks: every delivery has one
    return tag


def _channel_of(message: AbstractIncomingMessage) -> object | None:
    """The delivery's channel; None once it closed (aio-pika raises for a closed one)."""
    try:
        return message.channel
    except ChannelInvalidStateError:
        return None


def _closed(channel: object) -> bool:
    return bool(getattr(channel, "is_closed", False))
