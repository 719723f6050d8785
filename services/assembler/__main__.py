"""``carve-assembler``: writes queued blocks into GridFS and finalizes carves."""

from __future__ import annotations

from services.assembler.main import create_app
from services.assembler.settings import AssemblerSettings
from shared import malloc
from shared.runner import configure_logging, serve


def main() -> None:
    settings = AssemblerSettings()
    configure_logging(settings)
    malloc.tune()  # chunk-sized buffers reuse the heap instead of faulting in fresh pages
    # aiohttp's shutdown timeout must cover the consumer's drain.
    serve(create_app(settings), settings, shutdown_timeout=settings.drain_timeout + 5)


if __name__ == "__main__":
    main()
