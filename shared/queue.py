"""The block queue: its topology and the message format between ingest and assembler.

One durable quorum queue carries decoded blocks. A message the assembler can
never process is rejected without requeue and lands, through a dead-letter
exchange, in ``<queue>.dead`` for an operator to look at.

A message body is the block's raw bytes (never base64); its headers say where
the bytes go, so the assembler needs no lookup per block.
"""

from __future__ import annotations

from dataclasses import dataclass

import aio_pika
from aio_pika.abc import AbstractChannel, AbstractMessage, AbstractQueue

from shared.errors import PoisonMessage
from shared.protocol import expected_block_length

DEAD_SUFFIX = ".dead"
DLX_SUFFIX = ".dlx"


async def declare_topology(channel: AbstractChannel, queue: str) -> AbstractQueue:
    """Declare the block queue, its dead-letter exchange and queue (idempotent)."""
    dlx = await channel.declare_exchange(
        queue + DLX_SUFFIX, aio_pika.ExchangeType.FANOUT, durable=True
    )
    dead = await channel.declare_queue(
        queue + DEAD_SUFFIX, durable=True, arguments={"x-queue-type": "quorum"}
    )
    await dead.bind(dlx)
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


def encode(block: Block) -> AbstractMessage:
    """A persistent message carrying ``block``."""
    return aio_pika.Message(
        block.data,
        headers={
            "carve_id": block.carve_id,
            "block_id": block.block_id,
            "block_count": block.block_count,
            "block_size": block.block_size,
            "carve_size": block.carve_size,
        },
        delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
        content_type="application/octet-stream",
        message_id=f"{block.carve_id}:{block.block_id}",
    )


def decode(body: bytes, headers: dict[str, object]) -> Block:
    """Parse a delivered message; raise PoisonMessage for anything malformed."""
    carve_id = headers.get("carve_id")
    if not isinstance(carve_id, str) or not carve_id:
        raise PoisonMessage("missing carve_id header")
    ints: dict[str, int] = {}
    for name in ("block_id", "block_count", "block_size", "carve_size"):
        value = headers.get(name)
        if not isinstance(value, int) or isinstance(value, bool):
            raise PoisonMessage(f"missing or non-integer {name} header")
        ints[name] = value
    block = Block(carve_id=carve_id, data=body, **ints)
    block.validate()
    return block
