"""What to do with one block: the assembler's logic, free of any broker.

Write the chunk (a duplicate is a no-op), count it, and when the count says
the carve may be whole, let the finalizer check MongoDB and finish it.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Protocol

from shared.finalize import Outcome, Result
from shared.queue import Block


class ChunkStore(Protocol):
    async def put_chunk(self, carve_id: str, n: int, data: bytes) -> bool: ...
    async def count_received(self, carve_id: str) -> int | None: ...


class CarveFinalizer(Protocol):
    async def maybe_finalize(self, carve_id: str) -> Result: ...


class Handled(StrEnum):
    WRITTEN = "written"
    DUPLICATE = "duplicate"
    FINALIZED = "finalized"


async def handle_block(block: Block, store: ChunkStore, finalizer: CarveFinalizer) -> Handled:
    """Store ``block``; finalize its carve when it may be complete.

    Raises TransientError when MongoDB is unreachable (the message is kept)
    and PoisonMessage when the block can never be stored.
    """
    block.validate()
    written = await store.put_chunk(block.carve_id, block.block_id, block.data)
    if written:
        received = await store.count_received(block.carve_id)
        if received is None or received < block.block_count:
            return Handled.WRITTEN
    # A duplicate means redelivery after a crash, which may have skipped the
    # counter: only an exact count in MongoDB can tell whether the carve is whole.
    result = await finalizer.maybe_finalize(block.carve_id)
    if result.outcome is Outcome.FINALIZED:
        return Handled.FINALIZED
    return Handled.WRITTEN if written else Handled.DUPLICATE
