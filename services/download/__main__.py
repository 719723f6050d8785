"""``carve-download``: the responder-facing download service."""

from __future__ import annotations

from services.download.main import create_app
from services.download.settings import DownloadSettings
from shared import malloc
from shared.runner import configure_logging, serve


def main() -> None:
    settings = DownloadSettings()
    configure_logging(settings)
    malloc.tune()  # chunk-sized buffers reuse the heap instead of faulting in fresh pages
    # Long downloads get this long to finish on SIGTERM before they are cut. aiohttp may wait
    # up to twice this (a graceful wait, then one after cancelling): 2 x 20 s fits in the
    # 45 s Kubernetes grace period, audit rows included.
    serve(create_app(settings), settings, shutdown_timeout=20.0)


if __name__ == "__main__":
    main()
