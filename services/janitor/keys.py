"""Typed app keys of the janitor."""

from __future__ import annotations

from dataclasses import dataclass

from aiohttp import web

from services.janitor.metrics import JanitorMetrics
from services.janitor.settings import JanitorSettings
from services.janitor.sweep import Janitor

SETTINGS = web.AppKey("settings", JanitorSettings)
METRICS = web.AppKey("metrics", JanitorMetrics)
JANITOR = web.AppKey("janitor", Janitor)


@dataclass
class SweepHealth:
    """When the last sweep succeeded (monotonic seconds): what /readyz judges."""

    last_success: float


HEALTH = web.AppKey("sweep_health", SweepHealth)
