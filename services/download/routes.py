"""URL map of the download service. Route names are the audit actions and metric labels."""

from __future__ import annotations

from aiohttp import web

from services.download import (
    archive_views,
    audit_api,
    campaigns,
    carve_views,
    console_api,
    custody,
    holds_api,
    listing,
    openapi,
    tar_views,
    triage_api,
    webhooks_api,
)
from services.download.login import setup_login
from services.download.oidc import setup_oidc
from services.download.ui import setup_ui

CARVE = "/api/v1/carves/{carve_id}"


def setup_routes(app: web.Application) -> None:
    app.router.add_get("/api/v1/carves", listing.list_carves, name="list")
    app.router.add_get("/api/v1/summary", listing.summary, name="summary")
    app.router.add_get(CARVE, carve_views.get_carve, name="carve")
    app.router.add_delete(CARVE, carve_views.delete_carve, name="delete")
    app.router.add_get(CARVE + "/archive", archive_views.get_archive, name="archive")  # and HEAD
    app.router.add_get(CARVE + "/files", tar_views.list_files, name="files")
    app.router.add_get(CARVE + "/files/{path:.+}", tar_views.get_file, name="file")
    # By position: for members whose name a path cannot carry (CR, LF) or a later one hides.
    app.router.add_get(CARVE + "/members/{index:[0-9]{1,9}}", tar_views.get_member, name="member")
    app.router.add_put(CARVE + "/hold", holds_api.put_hold, name="hold")
    app.router.add_delete(CARVE + "/hold/{case}", holds_api.delete_hold, name="release")
    app.router.add_put(CARVE + "/expiry", holds_api.put_expiry, name="expiry")
    app.router.add_patch(CARVE + "/cases", holds_api.patch_cases, name="cases")
    app.router.add_get(CARVE + "/custody", custody.get_custody, name="custody")
    app.router.add_get("/api/v1/custody/keys", custody.get_keys, name="custody_keys")
    app.router.add_post(CARVE + "/download-ticket", console_api.download_ticket, name="ticket")
    app.router.add_post(CARVE + "/triage", triage_api.rescan_carve, name="triage")
    app.router.add_post("/api/v1/triage", triage_api.rescan_since, name="triage_since")
    app.router.add_get("/api/v1/audit", audit_api.list_audit, name="audit")
    app.router.add_get("/api/v1/webhooks/deliveries", webhooks_api.list_deliveries, name="webhooks")
    campaign = "/api/v1/requests/{request_id:[^/]+}"
    app.router.add_get(campaign, campaigns.get_campaign, name="campaign")
    app.router.add_get(campaign + "/export", campaigns.export_campaign, name="export")
    app.router.add_post(campaign + "/export-ticket", campaigns.export_ticket, name="export_ticket")
    app.router.add_get("/api/v1/openapi.json", openapi.openapi, name="openapi")
    setup_login(app)  # login, logout, whoami
    setup_oidc(app)  # single sign-on through Vault's OIDC method
    # The original server's endpoint (and curl command).
    app.router.add_post("/file_request", archive_views.file_request, name="file_request")
    setup_ui(app)  # /ui/ (and / redirects there)
