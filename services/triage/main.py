"""The ``carve-triage`` app factory: rules, workers, the queue consumer and the sweep inside
the aiohttp lifecycle; the HTTP side serves /healthz, /readyz and /metrics."""

from __future__ import annotations

import asyncio
import functools
import logging
import signal
import socket
import uuid
from collections.abc import AsyncIterator

from aiohttp import web

from services.triage import keys
from services.triage.consumer import CompletedConsumer
from services.triage.library import Library, Loaded
from services.triage.metrics import TriageMetrics
from services.triage.pool import ScanPool
from services.triage.scan import Triage
from services.triage.settings import TriageSettings
from services.triage.store import TriageStore, ensure_indexes
from services.triage.sweep import Sweep
from shared import keys as shared_keys
from shared.crypto.context import KEYRING, keyring_ctx, transit_checks
from shared.events.relay import RELAY, events_ctx
from shared.health import NotReady, add_health_routes, check_amqp, check_mongo, service_app
from shared.metrics import add_scrape_hook
from shared.queue_depth import ready_messages
from shared.resources import amqp_ctx, mongo_ctx
from shared.tasks import cancel_and_wait

log = logging.getLogger(__name__)


async def check_rules(app: web.Application) -> None:
    library = app[keys.LIBRARY]
    if library.error is not None:
        raise NotReady(library.error)
    if library.current is None:
        raise NotReady("rules not loaded yet")


async def _triage_ctx(app: web.Application) -> AsyncIterator[None]:
    settings = app[keys.SETTINGS]
    db = app[shared_keys.MONGO_DB]
    library = app[keys.LIBRARY]
    await library.reload()  # a bad rules file: logged, /readyz fails, scans wait for a fix
    await ensure_indexes(db)
    owner = f"{socket.gethostname()}/{uuid.uuid4().hex[:8]}"
    store = TriageStore(db, owner, settings.triage_lease)
    pool = ScanPool(settings.triage_workers)
    triage = Triage(db, settings, library, pool, store, app[keys.METRICS], app[RELAY], app[KEYRING])
    sweep = Sweep(triage, store, settings.triage_workers)
    consumer = CompletedConsumer(
        app[shared_keys.AMQP],
        settings.events_exchange,
        settings.triage_queue,
        triage,
        prefetch=settings.triage_workers,
    )
    app[keys.POOL], app[keys.TRIAGE], app[keys.SWEEP] = pool, triage, sweep
    if library.current is not None:
        await pool.warm(library.current.rules)

    async def warm(loaded: Loaded) -> None:
        await pool.warm(loaded.rules)

    library.listeners.append(warm)
    tasks = [
        asyncio.create_task(library.watch(settings.triage_reload_interval), name="triage-reload"),
        asyncio.create_task(sweep.run(settings.triage_sweep_interval), name="triage-sweep"),
    ]
    try:
        await consumer.start()
        yield
    finally:
        await consumer.stop()
        await sweep.stop()
        await cancel_and_wait(*tasks)
        await pool.close()


async def reload_on_sighup(app: web.Application) -> None:
    """SIGHUP reloads the rules and hash sets. Installed by the process's entry point only
    (``__main__``): an app inside another program (the tests) leaves its signals alone."""
    asyncio.get_running_loop().add_signal_handler(signal.SIGHUP, app[keys.LIBRARY].kick)


def create_app(settings: TriageSettings) -> web.Application:
    app = service_app("carve-triage")
    app[keys.SETTINGS] = settings
    app[keys.METRICS] = TriageMetrics.create(app[shared_keys.REGISTRY])
    app[keys.LIBRARY] = Library(settings.triage_rules, settings.triage_hashsets, app[keys.METRICS])
    app.cleanup_ctx.extend(
        [
            mongo_ctx(settings),
            amqp_ctx(settings),
            events_ctx(settings, settings),
            keyring_ctx(settings),
            _triage_ctx,
        ]
    )
    checks = {"rabbitmq": check_amqp, "mongodb": check_mongo, "rules": check_rules}
    add_health_routes(app, {**checks, **transit_checks(settings)})
    add_scrape_hook(app, functools.partial(_count_queue, app))
    return app


async def _count_queue(app: web.Application) -> None:
    queue = app[keys.SETTINGS].triage_queue
    depths = await ready_messages(app[shared_keys.AMQP], [queue])
    app[keys.METRICS].queue_messages.set(depths[queue])
