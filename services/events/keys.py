"""Typed app keys of ``carve-events``."""

from __future__ import annotations

from aiohttp import web

from services.events.metrics import EventsMetrics
from services.events.sender import Sender
from services.events.settings import EventsServiceSettings

SETTINGS = web.AppKey("settings", EventsServiceSettings)
METRICS = web.AppKey("metrics", EventsMetrics)
SENDERS: web.AppKey[list[Sender]] = web.AppKey("senders")
