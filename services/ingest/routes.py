"""URL map of the ingest service."""

from __future__ import annotations

from aiohttp import web

from services.ingest import views

# The original Go server's paths, then Fleet's (its current /api/osquery/... and the older
# /api/v1/osquery/... it still accepts), so a flagfile written for any of them works unchanged.
# Route names double as the endpoint label of the metrics.
START_PATHS = {
    "start_uploads": "/start_uploads",
    "fleet_begin": "/api/v1/osquery/carve/begin",
    "fleet_begin_current": "/api/osquery/carve/begin",
}
BLOCK_PATHS = {
    "upload_blocks": "/upload_blocks",
    "fleet_block": "/api/v1/osquery/carve/block",
    "fleet_block_current": "/api/osquery/carve/block",
}


def setup_routes(app: web.Application) -> None:
    for name, path in START_PATHS.items():
        app.router.add_post(path, views.start_upload, name=name)
    for name, path in BLOCK_PATHS.items():
        app.router.add_post(path, views.upload_block, name=name)
