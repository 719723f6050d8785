"""The block queue: its topology and the message format between ingest and assembler.

One durable quorum queue carries decoded blocks. A message the assembler can
never process is rejected without requeue and lands, through a dead-letter
exchange, in ``<queue>.dead`` for an operator to look at.

A message carries one or more blocks (raw bytes, never base64), each with
the geometry of its carve, so the assembler needs no lookup per block.
Several blocks per message matter for small blocks: on a 2-core machine
RabbitMQ confirms about 3,000 persistent 8 KiB messages a second, and every
message costs the ingest and the assembler a fixed amount of work.

Body layout (``format`` header ``carve-blocks/1``), records back to back::

    u16 len(carve_id) | u64 block_id | u64 block_count | u32 block_size
    | u64 carve_size | u32 len(data) | carve_id (UTF-8) | data

The same queue carries the trigger ``carve-received/1`` (body: the carve_id in
UTF-8, header ``attempt``): the ingest publishes it once every block of a carve
is confirmed, so the carve gets finalized whatever process dies (the janitor
stays the safety net). An assembler that finds chunks still in flight puts it
in ``<queue>.retry``, whose message TTL dead-letters it back into the queue
``RETRY_DELAY_MS`` later: the delay lives in the broker, not in a process.
"""

from __future__ import annotations

import struct
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

import aio_pika
from aio_pika.abc import AbstractChannel, AbstractMessage, AbstractQueue
from aiormq import spec

from shared.errors import PoisonMessage
from shared.protocol import expected_block_length

DEAD_SUFFIX = ".dead"
DLX_SUFFIX = ".dlx"
RETRY_SUFFIX = ".retry"
RETRY_DELAY_MS = 1000


async def declare_topology(channel: AbstractChannel, queue: str) -> AbstractQueue:
    """Declare the block queue, its dead-letter exchange and queue (idempotent)."""
    dlx = await channel.declare_exchange(
        queue + DLX_SUFFIX, aio_pika.ExchangeType.FANOUT, durable=True
    )
    dead = await channel.declare_queue(
        queue + DEAD_SUFFIX, durable=True, arguments={"x-queue-type": "quorum"}
    )
    await dead.bind(dlx)
    await channel.declare_queue(
        queue + RETRY_SUFFIX,
        durable=True,
        arguments={
            "x-queue-type": "quorum",
            "x-message-ttl": RETRY_DELAY_MS,
            # Expired messages go back to the main queue, through the default exchange;
            # at-least-once: a trigger is never dropped on the way.
            "x-dead-letter-exchange": "",
            "x-dead-letter-routing-key": queue,
            "x-dead-letter-strategy": "at-least-once",
            "x-overflow": "reject-publish",
        },
    )
    return await channel.declare_queue(
        queue,
        durable=True,
        arguments={"x-queue-type": "quorum", "x-dead-letter-exchange": dlx.name},
    )


@dataclass(frozen=True, slots=True)
class Block:
    """One block of one carve, as the assembler receives it."""

    carve_id: str
    block_id: int
    block_count: int
    block_size: int
    carve_size: int
    data: bytes

    def validate(self) -> None:
        """Raise PoisonMessage unless the block fits its carve's geometry."""
        if not 0 <= self.block_id < self.block_count:
            raise PoisonMessage(f"block_id {self.block_id} outside [0, {self.block_count})")
        want = expected_block_length(
            self.block_id, self.block_count, self.block_size, self.carve_size
        )
        if len(self.data) != want:
            raise PoisonMessage(f"block {self.block_id} has {len(self.data)} bytes, want {want}")


FORMAT = "carve-blocks/1"
_RECORD = struct.Struct("<HQQIQI")


def encode(blocks: Sequence[Block]) -> AbstractMessage:
    """One persistent message carrying ``blocks``, stamped with the time it is published
    (AMQP's timestamp, whole seconds: the assembler's lag metric)."""
    return aio_pika.Message(
        encode_body(blocks),
        headers={"format": FORMAT, "count": len(blocks)},
        delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
        content_type="application/octet-stream",
        timestamp=time.time(),
    )


def encode_body(blocks: Sequence[Block]) -> bytes:
    """The body of ``encode(blocks)``."""
    parts: list[bytes] = []
    for b in blocks:
        carve_id = b.carve_id.encode()
        parts.append(
            _RECORD.pack(
                len(carve_id), b.block_id, b.block_count, b.block_size, b.carve_size, len(b.data)
            )
        )
        parts.append(carve_id)
        parts.append(b.data)
    return b"".join(parts)


def blocks_properties(count: int, now: float | None = None) -> spec.Basic.Properties:
    """The AMQP properties of ``encode()``'s message of ``count`` blocks, built without an
    aio_pika.Message (the ingest publishes each of a lone host's blocks on its own: the
    Message, its locked attributes and their conversion cost more than the record itself).
    The same fields, so the same bytes on the wire (tests/unit/test_queue_properties.py)."""
    return spec.Basic.Properties(
        content_type="application/octet-stream",
        delivery_mode=aio_pika.DeliveryMode.PERSISTENT.value,
        headers={"format": FORMAT, "count": count},
        priority=0,  # what aio_pika.Message sends when none is given
        timestamp=datetime.fromtimestamp(time.time() if now is None else now, UTC),
    )


def decode(body: bytes, headers: Mapping[str, object]) -> list[Block]:
    """Parse a delivered message; PoisonMessage for anything malformed, in any block."""
    if headers.get("format") != FORMAT:
        raise PoisonMessage(f"unknown message format {headers.get('format')!r}")
    view = memoryview(body)
    blocks: list[Block] = []
    offset = 0
    try:
        while offset < len(view):
            id_len, block_id, count, size, carve_size, data_len = _RECORD.unpack_from(view, offset)
            offset += _RECORD.size
            carve_id = bytes(view[offset : offset + id_len]).decode()
            offset += id_len
            data = bytes(view[offset : offset + data_len])
            offset += data_len
            if not carve_id or len(data) != data_len:
                raise PoisonMessage("truncated record")
            blocks.append(Block(carve_id, block_id, count, size, carve_size, data))
    except (struct.error, UnicodeDecodeError) as exc:
        raise PoisonMessage(f"malformed record: {exc}") from exc
    if not blocks or headers.get("count") != len(blocks):
        raise PoisonMessage(f"{len(blocks)} blocks where the header says {headers.get('count')}")
    for block in blocks:
        block.validate()
    return blocks


RECEIVED_FORMAT = "carve-received/1"


def is_received(headers: Mapping[str, object]) -> bool:
    """True for a "carve fully received" trigger (not a message of blocks)."""
    return headers.get("format") == RECEIVED_FORMAT


def encode_received(carve_id: str, attempt: int = 0) -> AbstractMessage:
    """The persistent trigger: every block of ``carve_id`` is in the queue."""
    return aio_pika.Message(
        carve_id.encode(),
        headers={"format": RECEIVED_FORMAT, "attempt": attempt},
        delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
        content_type="text/plain",
    )


def decode_received(body: bytes, headers: Mapping[str, object]) -> tuple[str, int]:
    """(carve_id, attempt) of a trigger; PoisonMessage if malformed."""
    attempt = headers.get("attempt", 0)
    try:
        carve_id = body.decode()
    except UnicodeDecodeError as exc:
        raise PoisonMessage("trigger: carve_id is not UTF-8") from exc
    if not carve_id or len(carve_id) > 256 or not isinstance(attempt, int) or attempt < 0:
        raise PoisonMessage("trigger: malformed")
    return carve_id, attempt
