"""The download app factory."""

from __future__ import annotations

from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor

from aiohttp import web

from services.download import audit, custody, keys, tickets
from services.download.audit import audited
from services.download.bodies import json_posts
from services.download.census import add_census
from services.download.errors import answer_errors
from services.download.justification import justified
from services.download.login_limits import LIMITER, LoginLimiter
from services.download.metrics import DownloadMetrics
from services.download.routes import setup_routes
from services.download.settings import DownloadSettings
from services.download.slots import StreamSlots, TarJobs
from services.download.tokens import Authorizer
from shared import keys as shared_keys
from shared.crypto.context import keyring_ctx, transit_checks
from shared.events.relay import events_ctx
from shared.health import add_health_routes, check_mongo, service_app
from shared.mongo import responder_reads
from shared.resources import mongo_ctx
from shared.vault import vault_client


async def _vault_ctx(app: web.Application) -> AsyncIterator[None]:
    settings = app[keys.SETTINGS]
    async with vault_client(settings) as vault:
        app[keys.VAULT] = vault
        app[keys.AUTHORIZER] = Authorizer(
            vault,
            settings.vault_policy,
            cache_ttl=settings.vault_cache_ttl,
            metrics=app[keys.METRICS],
        )
        yield


async def _tar_pool_ctx(app: web.Application) -> AsyncIterator[None]:
    pool = ThreadPoolExecutor(app[keys.SETTINGS].tar_concurrency, thread_name_prefix="tar")
    app[keys.TAR_POOL] = pool
    try:
        yield
    finally:
        pool.shutdown(wait=False, cancel_futures=True)


async def check_vault(app: web.Application) -> None:
    await app[keys.VAULT].health()


def create_app(settings: DownloadSettings) -> web.Application:
    # The audit middleware outside: it records the answer the errors middleware chose.
    middlewares = [audited, answer_errors, json_posts, justified]
    app = service_app("carve-download", middlewares=middlewares, client_max_size=64 * 1024)
    app[keys.SETTINGS] = settings
    app[keys.METRICS] = DownloadMetrics.create(app[shared_keys.REGISTRY])
    app[keys.STREAMS] = StreamSlots(
        settings.max_streams, settings.streams_per_responder, app[keys.METRICS].streams
    )
    app[keys.TAR_JOBS] = TarJobs(
        settings.tar_concurrency,
        settings.tar_jobs_per_carve,
        settings.tar_jobs_per_responder,
        app[keys.METRICS].tar_jobs,
    )
    app[tickets.SECRET] = tickets.app_secret(settings.ticket_secret.get_secret_value())
    app[LIMITER] = LoginLimiter(
        settings.login_per_minute,
        settings.login_user_failures_per_minute,
        settings.login_failures_per_minute,
    )
    app[audit.REPEATS] = audit.Repeats(settings.audit_repeat_window)
    app.cleanup_ctx.extend(
        [
            mongo_ctx(settings, responder_reads),
            events_ctx(settings, settings),
            _vault_ctx,
            keyring_ctx(settings),
            _tar_pool_ctx,
            custody.signer_ctx,
        ]
    )
    setup_routes(app)
    add_health_routes(
        app, {"mongodb": check_mongo, "vault": check_vault, **transit_checks(settings)}
    )
    add_census(app, app[keys.METRICS], settings.census_ttl)
    return app
