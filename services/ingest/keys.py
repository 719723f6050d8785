"""Typed app keys of the ingest service."""

from __future__ import annotations

from aiohttp import web

from services.ingest.abuse import Tally
from services.ingest.budget import ByteBudget
from services.ingest.metrics import IngestMetrics
from services.ingest.publisher import BlockPublisher
from services.ingest.sessions import SessionStore
from services.ingest.settings import IngestSettings

SETTINGS = web.AppKey("settings", IngestSettings)
SESSIONS = web.AppKey("sessions", SessionStore)
PUBLISHER = web.AppKey("publisher", BlockPublisher)
METRICS = web.AppKey("metrics", IngestMetrics)
BUDGET = web.AppKey("budget", ByteBudget)
# Re-sent blocks per session, blocks naming unknown sessions per device (abuse.py).
DUPLICATES = web.AppKey("duplicates", Tally)
UNKNOWN = web.AppKey("unknown_sessions", Tally)
