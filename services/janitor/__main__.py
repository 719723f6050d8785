"""``carve-janitor``: expiry, idle carves, unfinished finalizations, orphans.

carve-janitor              sweep every CARVE_JANITOR_INTERVAL, serving /healthz and /metrics
carve-janitor --once       one sweep, then exit (a Kubernetes CronJob)
carve-janitor --dry-run    one sweep that changes nothing; prints what it would do
carve-janitor rewrap [--retire]
                           rotate every carve's Transit key and re-wrap its data key with the
                           latest version (resumable; --retire: old versions stop decrypting)
carve-janitor encrypt      seal the clear chunks of carves stored before encryption (resumable)
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

import orjson
import uvloop
from aiohttp import web

from services.janitor import keywork
from services.janitor.main import create_app, run_sweep
from services.janitor.settings import JanitorSettings
from shared import keys as shared_keys
from shared.crypto.context import KEYRING
from shared.errors import Unavailable
from shared.runner import configure_logging, serve


async def key_command(settings: JanitorSettings, command: str, *, retire: bool) -> int:
    """``rewrap`` or ``encrypt``, with the janitor's connections; prints what it did."""
    app = create_app(settings, loop=False)
    runner = web.AppRunner(app)
    await runner.setup()
    try:
        db, keyring = app[shared_keys.MONGO_DB], app[KEYRING]
        if command == "rewrap":
            done = await keywork.rewrap(db, keyring, batch=settings.janitor_batch, retire=retire)
        else:
            done = {}
            while True:  # a page of carves at a time until none is left
                page = await keywork.encrypt(
                    db, settings.mongo_bucket, keyring,
                    batch_bytes=4 * 1024 * 1024, limit=settings.janitor_batch,
                )  # fmt: skip
                for what, k in page.items():
                    done[what] = done.get(what, 0) + k
                if not page.get("carves_sealed"):
                    break
    except Unavailable as exc:
        sys.stderr.write(f"carve-janitor {command}: stopped, run it again to resume: {exc}\n")
        return 1
    finally:
        await runner.cleanup()
    sys.stdout.write(orjson.dumps({command: done}).decode() + "\n")
    return 0


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
    parser = argparse.ArgumentParser(
        prog="carve-janitor",
        description=__doc__.split("\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__,
    )
    parser.add_argument("--once", action="store_true", help="one sweep, then exit")
    parser.add_argument(
        "--dry-run", action="store_true", help="one sweep that changes nothing (implies --once)"
    )
    parser.add_argument(
        "command", nargs="?", choices=["rewrap", "encrypt"], help="a key command (see above)"
    )
    parser.add_argument(
        "--retire", action="store_true", help="rewrap: old key versions stop decrypting"
    )
    args = parser.parse_args(argv)
    settings = JanitorSettings()
    configure_logging(settings)
    if args.command:
        return uvloop.run(key_command(settings, args.command, retire=args.retire))
    if args.once or args.dry_run:
        return uvloop.run(sweep_once(settings, dry_run=args.dry_run))
    serve(create_app(settings), settings, shutdown_timeout=30.0)
    return 0


if __name__ == "__main__":
    sys.exit(main())
