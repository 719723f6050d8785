"""Typed app keys of the assembler."""

from __future__ import annotations

from aiohttp import web

from services.assembler.consumer import BlockConsumer
from services.assembler.metrics import AssemblerMetrics
from services.assembler.settings import AssemblerSettings

SETTINGS = web.AppKey("settings", AssemblerSettings)
METRICS = web.AppKey("metrics", AssemblerMetrics)
CONSUMER = web.AppKey("consumer", BlockConsumer)
