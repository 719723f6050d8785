"""What to do with one block: the assembler's logic, free of any broker.

Write the chunk (a duplicate is a no-op) and note it for the tracker. The
last block of a carve usually arrives last (osquery sends in order), so it
asks the finalizer right away; any other order is caught by the tracker,
which checks a carve again once its chunks stop arriving. Both are shortcuts
held in one process's memory: what makes completion crash-safe is the
ingest's durable "carve fully received" trigger (``handle_received``).
"""

from __future__ import annotations

from enum import StrEnum
from typing import Protocol

from shared.finalize import CarveFinalizer, Outcome
from shared.queue import Block


class ChunkStore(Protocol):
    async def put_chunk(self, carve_id: str, n: int, data: bytes) -> bool: ...


class WriteLog(Protocol):
    def note(self, carve_id: str, *, new_chunk: bool) -> None: ...


class Handled(StrEnum):
    WRITTEN = "written"
    DUPLICATE = "duplicate"
    FINALIZED = "finalized"


async def handle_block(
    block: Block, store: ChunkStore, finalizer: CarveFinalizer, tracker: WriteLog
) -> Handled:
    """Store ``block``; finalize its carve when it is the last one and all are there.

    Raises Unavailable when MongoDB is unreachable (the message is kept)
    and PoisonMessage when the block can never be stored.
    """
    block.validate()
    written = await store.put_chunk(block.carve_id, block.block_id, block.data)
    # A duplicate is a redelivery, perhaps after a crash that came before a
    # finalization: note it too, so the carve is looked at again.
    tracker.note(block.carve_id, new_chunk=written)
    if block.block_id == block.block_count - 1:
        result = await finalizer.maybe_finalize(block.carve_id)
        if result.outcome is Outcome.FINALIZED:
            return Handled.FINALIZED
    return Handled.WRITTEN if written else Handled.DUPLICATE


async def handle_received(carve_id: str, finalizer: CarveFinalizer) -> bool:
    """A "carve fully received" trigger: True when the carve needs nothing more (finalized
    now or before, or failed as corrupt); False to look again later (chunks still in
    flight, or another finalizer at work). Unavailable when MongoDB is away."""
    result = await finalizer.maybe_finalize(carve_id)
    return result.outcome not in (Outcome.NOT_READY, Outcome.BUSY)
