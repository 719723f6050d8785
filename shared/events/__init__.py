"""Carve events: every change of a carve's state, as a CloudEvent on a RabbitMQ topic exchange.

- ``types``: the event types (one line each; the routing key is the type);
- ``outbox``: an event is written in the same update as the change it reports;
- ``summary``: what an event says of its carve (public, bounded, inert);
- ``envelope``: CloudEvents 1.0 structured JSON, written and read;
- ``relay``: publishes pending events with confirms, and those a dead process left behind.

To emit an event with a change::

    entry = event_entry(EventType.COMPLETED, carve_summary(after), now)
    await carves.update_one(query, push_event(update, entry))
    failpoint("events.after_change")
    app[RELAY].kick(carve_id)
"""

from shared.events.outbox import OutboxEntry, event_entry, push_event
from shared.events.summary import carve_summary
from shared.events.types import EventType

__all__ = ["EventType", "OutboxEntry", "carve_summary", "event_entry", "push_event"]
