"""``carve-download``: the responder-facing download service."""

from __future__ import annotations

from services.download.main import create_app
from services.download.settings import DownloadSettings
from shared.runner import configure_logging, serve


def main() -> None:
    settings = DownloadSettings()
    configure_logging(settings)
    # Long downloads get this long to finish on SIGTERM before they are cut.
    serve(create_app(settings), settings, shutdown_timeout=30.0)


if __name__ == "__main__":
    main()
