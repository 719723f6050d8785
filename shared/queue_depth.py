"""Ready messages in RabbitMQ queues, for the metrics (``carve_queue_messages`` and the like).

Passive declarations on a channel of their own: a queue that does not exist closes only that
channel, never a consumer's. Run at each scrape (a scrape hook, ``shared.metrics``).
"""

from __future__ import annotations

from collections.abc import Sequence

from aio_pika.abc import AbstractConnection


async def ready_messages(connection: AbstractConnection, queues: Sequence[str]) -> dict[str, int]:
    """``{queue: messages ready}`` (unacknowledged deliveries are not counted)."""
    channel = await connection.channel()
    try:
        depths = {}
        for name in queues:
            declared = await channel.declare_queue(name, passive=True)
            depths[name] = declared.declaration_result.message_count or 0
        return depths
    finally:
        if not channel.is_closed:
            await channel.close()
