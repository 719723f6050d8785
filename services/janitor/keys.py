"""Typed app keys of the janitor."""

from __future__ import annotations

from aiohttp import web

from services.janitor.metrics import JanitorMetrics
from services.janitor.settings import JanitorSettings
from services.janitor.sweep import Janitor

SETTINGS = web.AppKey("settings", JanitorSettings)
METRICS = web.AppKey("metrics", JanitorMetrics)
JANITOR = web.AppKey("janitor", Janitor)
# Monotonic time of the last successful sweep (a one-item list: updated in place).
LAST_SUCCESS: web.AppKey[list[float]] = web.AppKey("last_success")
