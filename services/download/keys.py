"""Typed app keys of the download service."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

from aiohttp import web

from services.download.metrics import DownloadMetrics
from services.download.settings import DownloadSettings
from services.download.slots import StreamSlots, TarJobs
from services.download.tokens import Authorizer, Identity
from shared.vault import VaultClient

SETTINGS = web.AppKey("settings", DownloadSettings)
METRICS = web.AppKey("metrics", DownloadMetrics)
VAULT = web.AppKey("vault", VaultClient)
AUTHORIZER = web.AppKey("authorizer", Authorizer)
TAR_POOL = web.AppKey("tar_pool", ThreadPoolExecutor)
STREAMS = web.AppKey("streams", StreamSlots)
TAR_JOBS = web.AppKey("tar_jobs", TarJobs)
# The identity a request was authorized as (set by auth.authorize, or by a download ticket).
IDENTITY = web.RequestKey("identity", Identity)
