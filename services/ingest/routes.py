"""URL map of the ingest service."""

from __future__ import annotations

from aiohttp import web

from services.ingest import views

# The original Go server's paths, then Fleet's, so a flagfile written for either works unchanged.
START_PATHS = ("/start_uploads", "/api/v1/osquery/carve/begin")
BLOCK_PATHS = ("/upload_blocks", "/api/v1/osquery/carve/block")


def setup_routes(app: web.Application) -> None:
    for path in START_PATHS:
        app.router.add_post(path, views.start_upload, name=f"start:{path}")
    for path in BLOCK_PATHS:
        app.router.add_post(path, views.upload_block, name=f"block:{path}")
