"""Typed app keys of ``carve-triage``."""

from __future__ import annotations

from aiohttp import web

from services.triage.library import Library
from services.triage.metrics import TriageMetrics
from services.triage.pool import ScanPool
from services.triage.scan import Triage
from services.triage.settings import TriageSettings
from services.triage.sweep import Sweep

SETTINGS = web.AppKey("settings", TriageSettings)
METRICS = web.AppKey("metrics", TriageMetrics)
LIBRARY = web.AppKey("library", Library)
POOL = web.AppKey("pool", ScanPool)
TRIAGE = web.AppKey("triage", Triage)
SWEEP = web.AppKey("sweep", Sweep)
