"""Deliveries in MongoDB: recorded once per endpoint and event, claimed by one sender at a time.

A delivery is recorded when its event arrives from the endpoint's queue (then the message is
acknowledged: from here on MongoDB holds it), so retries over a day never sit unacknowledged
in RabbitMQ, and an admin can see every delivery. A sender claims a due delivery for a while
(``claim_until``): a process killed mid-delivery leaves a claim that lapses, and the delivery
is sent again, with the same ``webhook-id``.
"""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta

from pymongo import ASCENDING, ReturnDocument
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import DuplicateKeyError

from shared.deliveries import DeliveryDoc, State, deliveries_of
from shared.events.envelope import CarveEvent
from shared.mongo import Document


async def ensure_indexes(db: AsyncDatabase[Document]) -> None:
    deliveries = deliveries_of(db)
    await deliveries.create_index(
        [("endpoint", ASCENDING), ("state", ASCENDING), ("next_attempt", ASCENDING)]
    )
    await deliveries.create_index([("created_at", ASCENDING)])


def backoff(attempts: int, base: float, cap: float, rng: random.Random) -> float:
    """Seconds before attempt ``attempts + 1``: exponential, capped, with jitter (half to all)."""
    delay = min(cap, base * 2 ** min(attempts - 1, 40))
    return float(delay * rng.uniform(0.5, 1.0))


class Deliveries:
    def __init__(self, db: AsyncDatabase[Document], *, claim_seconds: float) -> None:
        self._col = deliveries_of(db)
        self._claim = timedelta(seconds=claim_seconds)

    async def record(self, endpoint: str, event: CarveEvent) -> bool:
        """Record a delivery of ``event`` to ``endpoint``; False if it was already recorded."""
        now = datetime.now(UTC)
        try:
            await self._col.insert_one(
                {
                    "_id": f"{endpoint}:{event.id}",
                    "endpoint": endpoint,
                    "event_id": event.id,
                    "event_type": event.type,
                    "subject": event.subject,
                    "event_time": event.time,
                    "body": event.body,
                    "state": State.PENDING.value,
                    "attempts": 0,
                    "created_at": now,
                    "next_attempt": now,
                    "claim_until": None,
                }
            )
        except DuplicateKeyError:
            return False
        return True

    async def claim(self, endpoint: str) -> DeliveryDoc | None:
        """The endpoint's next due delivery, now held by the caller for a while, or None."""
        now = datetime.now(UTC)
        return await self._col.find_one_and_update(
            {
                "endpoint": endpoint,
                "state": State.PENDING.value,
                "next_attempt": {"$lte": now},
                "claim_until": {"$not": {"$gt": now}},
            },
            {"$set": {"claim_until": now + self._claim}},
            sort=[("next_attempt", ASCENDING)],
            return_document=ReturnDocument.AFTER,
        )

    async def delivered(self, doc: DeliveryDoc, status: int) -> None:
        now = datetime.now(UTC)
        await self._col.update_one(
            {"_id": doc["_id"]},
            {
                "$set": {
                    "state": State.DELIVERED.value,
                    "last_status": status,
                    "last_error": None,
                    "delivered_at": now,
                    "claim_until": None,
                },
                "$inc": {"attempts": 1},
            },
        )

    async def failed(
        self, doc: DeliveryDoc, status: int | None, error: str, retry_at: datetime | None
    ) -> None:
        """An attempt failed: retry at ``retry_at``, or (None) the delivery is dead."""
        fields: Document = {"last_status": status, "last_error": error[:300], "claim_until": None}
        if retry_at is None:
            fields |= {"state": State.DEAD.value, "dead_at": datetime.now(UTC)}
        else:
            fields["next_attempt"] = retry_at
        await self._col.update_one({"_id": doc["_id"]}, {"$set": fields, "$inc": {"attempts": 1}})

    async def next_due(self, endpoint: str) -> datetime | None:
        """When the endpoint's earliest pending delivery is due (for the sender's sleep)."""
        doc = await self._col.find_one(
            {"endpoint": endpoint, "state": State.PENDING.value},
            {"next_attempt": 1},
            sort=[("next_attempt", ASCENDING)],
        )
        return doc["next_attempt"] if doc else None
