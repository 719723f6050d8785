"""``carve-janitor``: expiry, idle carves, unfinished finalizations, orphans.

carve-janitor              sweep every CARVE_JANITOR_INTERVAL, serving /healthz and /metrics
carve-janitor --once       one sweep, then exit (a Kubernetes CronJob)
carve-janitor --dry-run    one sweep that changes nothing; prints what it would do
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

import orjson
import uvloop
from aiohttp import web

from services.janitor.main import create_app, run_sweep
from services.janitor.settings import JanitorSettings
from shared.errors import Unavailable
from shared.runner import configure_logging, serve


async def sweep_once(settings: JanitorSettings, *, dry_run: bool) -> int:
    app = create_app(settings, loop=False)
    runner = web.AppRunner(app)
    await runner.setup()  # runs the cleanup contexts' setup: connections, no listening socket
    try:
        report = await run_sweep(app, dry_run=dry_run)
    except Unavailable:
        return 1
    finally:
        await runner.cleanup()
    sys.stdout.write(orjson.dumps(report.as_dict()).decode() + "\n")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="carve-janitor", description=__doc__.split("\n")[0])
    parser.add_argument("--once", action="store_true", help="one sweep, then exit")
    parser.add_argument(
        "--dry-run", action="store_true", help="one sweep that changes nothing (implies --once)"
    )
    args = parser.parse_args(argv)
    settings = JanitorSettings()
    configure_logging(settings)
    if args.once or args.dry_run:
        return uvloop.run(sweep_once(settings, dry_run=args.dry_run))
    serve(create_app(settings), settings, shutdown_timeout=30.0)
    return 0


if __name__ == "__main__":
    sys.exit(main())
