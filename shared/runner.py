"""Process entry helpers: logging set-up and serving an app (used only by ``__main__`` modules)."""

from __future__ import annotations

import logging
import sys
from datetime import UTC, datetime

import orjson
import uvloop
from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError

from shared.health import metrics_listener
from shared.settings import HttpSettings
from shared.timefmt import rfc3339


class JsonLines(logging.Formatter):
    """One JSON object per line, for log collectors in containers."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "time": rfc3339(datetime.fromtimestamp(record.created, UTC)),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return orjson.dumps(entry).decode()


class RedactBadRequests(logging.Filter):
    """Drop the parser's own text from aiohttp's "Error handling request" lines.

    When a request line or header is malformed, aiohttp logs the exception,
    whose message quotes the offending header in full: an ``X-Vault-Token``
    or ``Authorization: NodeKey`` with a stray control byte would land in the
    log. Keep the event, lose the bytes.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, HttpProcessingError):
            record.msg = "malformed HTTP request refused (%s, details withheld)"
            record.args = (exc.__class__.__name__,)
            record.exc_info = None
            record.exc_text = None
        return True


def configure_logging(settings: HttpSettings) -> None:
    handler = logging.StreamHandler(sys.stderr)
    if settings.log_json:
        handler.setFormatter(JsonLines())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=settings.log_level, handlers=[handler], force=True)
    # Per-request access lines would dominate at thousands of blocks per second.
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
    logging.getLogger("aiohttp.server").addFilter(RedactBadRequests())


def serve(app: web.Application, settings: HttpSettings, *, shutdown_timeout: float = 30.0) -> None:
    """Run ``app`` until SIGINT/SIGTERM; aiohttp then runs the cleanup contexts in reverse.
    With ``CARVE_METRICS_PORT``, ``/metrics`` is also served on that port."""
    if settings.metrics_port:
        app.cleanup_ctx.append(metrics_listener(settings.http_host, settings.metrics_port))
    web.run_app(
        app,
        # uvloop: libuv's event loop; the per-request socket and task overhead is most
        # of the ingest's CPU on small blocks.
        loop=uvloop.new_event_loop(),
        host=settings.http_host,
        port=settings.http_port,
        access_log=None,
        shutdown_timeout=shutdown_timeout,
        handle_signals=True,
        print=None,
    )
