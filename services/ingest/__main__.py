"""``carve-ingest``: the osquery-facing upload service."""

from __future__ import annotations

from services.ingest.main import create_app
from services.ingest.settings import IngestSettings
from shared.runner import configure_logging, serve


def main() -> None:
    settings = IngestSettings()
    configure_logging(settings)
    serve(create_app(settings), settings, shutdown_timeout=15.0)


if __name__ == "__main__":
    main()
