"""``carve-events``: delivers carve events to the operator's webhook endpoints, signed."""

from __future__ import annotations

from services.events.main import create_app
from services.events.settings import EventsServiceSettings
from shared.runner import configure_logging, serve


def main() -> None:
    settings = EventsServiceSettings()
    configure_logging(settings)
    serve(create_app(settings), settings, shutdown_timeout=settings.webhook_read_timeout + 5)


if __name__ == "__main__":
    main()
