"""Typed app keys of the ingest service."""

from __future__ import annotations

from aiohttp import web

from services.ingest.budget import ByteBudget
from services.ingest.duplicates import DuplicateBudget
from services.ingest.metrics import IngestMetrics
from services.ingest.publisher import BlockPublisher
from services.ingest.sessions import SessionStore
from services.ingest.settings import IngestSettings
from services.ingest.strangers import UnknownSessions

SETTINGS = web.AppKey("settings", IngestSettings)
SESSIONS = web.AppKey("sessions", SessionStore)
PUBLISHER = web.AppKey("publisher", BlockPublisher)
METRICS = web.AppKey("metrics", IngestMetrics)
BUDGET = web.AppKey("budget", ByteBudget)
DUPLICATES = web.AppKey("duplicates", DuplicateBudget)
UNKNOWN = web.AppKey("unknown_sessions", UnknownSessions)
