"""Webhook deliveries: one document per (endpoint, event), written by ``carve-events`` and read
by the download service's admin API (``GET /api/v1/webhooks/deliveries``)."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import TYPE_CHECKING, Any, NotRequired, TypedDict, cast

from shared.timefmt import rfc3339

if TYPE_CHECKING:
    from pymongo.asynchronous.collection import AsyncCollection
    from pymongo.asynchronous.database import AsyncDatabase

COLLECTION = "webhook_deliveries"


class State(StrEnum):
    PENDING = "pending"  # to be sent (now, or at next_attempt after a failure)
    DELIVERED = "delivered"  # the endpoint answered 2xx
    DEAD = "dead"  # still failing when CARVE_WEBHOOK_RETRY_FOR ran out


class DeliveryDoc(TypedDict):
    _id: str  # "<endpoint>:<event id>": one delivery per endpoint and event, however redelivered
    endpoint: str
    event_id: str
    event_type: str
    subject: str  # the carve id
    event_time: datetime
    body: bytes  # the event as published (structured CloudEvent JSON)
    state: str  # a State value
    attempts: int
    created_at: datetime
    next_attempt: datetime
    claim_until: NotRequired[datetime | None]  # a sender holds it until then
    last_status: NotRequired[int | None]  # HTTP status of the last attempt (None: no answer)
    last_error: NotRequired[str | None]  # why the last attempt failed, bounded
    delivered_at: NotRequired[datetime | None]
    dead_at: NotRequired[datetime | None]


def deliveries_of(db: AsyncDatabase[Any]) -> AsyncCollection[DeliveryDoc]:
    """The ``webhook_deliveries`` collection of ``db``, its documents typed."""
    return cast("AsyncCollection[DeliveryDoc]", db[COLLECTION])


def delivery_view(doc: DeliveryDoc) -> dict[str, Any]:
    """What an admin sees of a delivery (never the event body, never the endpoint's URL)."""

    def when(name: str) -> str | None:
        value = doc.get(name)
        return rfc3339(value) if isinstance(value, datetime) else None

    state = doc["state"]
    return {
        "event_id": doc["event_id"],
        "event_type": doc["event_type"],
        "carve_id": doc["subject"],
        "endpoint": doc["endpoint"],
        "state": state,
        "dead": state == State.DEAD,
        "attempts": doc["attempts"],
        "last_status": doc.get("last_status"),
        "last_error": doc.get("last_error"),
        "created_at": when("created_at"),
        "next_attempt": when("next_attempt") if state == State.PENDING else None,
        "delivered_at": when("delivered_at"),
        "dead_at": when("dead_at"),
    }
