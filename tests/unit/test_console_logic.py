"""Pure parts of the console's API: the OpenAPI document, tickets, the login limiter, manifests."""

from __future__ import annotations

import hashlib
import io
import tarfile

import pytest

from services.download import tickets
from services.download.lookups import device_filter, lookup_filters
from services.download.main import create_app
from services.download.openapi import DOCUMENT
from services.download.settings import DownloadSettings
from services.download.tokens import Identity
from shared.errors import InvalidRequest
from shared.manifest import build, manifest_limits
from tests.hostile import raw_reader

WHO = Identity("userpass-ann", "ent-1", "acc-1", frozenset({"p"}))


def test_openapi_document_matches_the_routes() -> None:
    app = create_app(DownloadSettings())
    routes = {
        (r.method.lower(), r.resource.canonical)
        for r in app.router.routes()
        if r.resource is not None
        and r.method != "HEAD"
        and (r.resource.canonical.startswith("/api/") or r.resource.canonical == "/file_request")
    }
    routes = {
        (m, p.replace("{path:.+}", "{path}").replace("{index:[0-9]{1,9}}", "{index}"))
        for m, p in routes
    }
    documented = {(m, p) for p, ops in DOCUMENT["paths"].items() for m in ops}
    assert routes == documented
    assert len(routes) == 30  # with single sign-on's, webhooks, the summary, campaigns, members,
    # triage re-scans


def test_ticket_secrets() -> None:
    assert tickets.app_secret("s" * 32) == tickets.app_secret("s" * 32)  # replicas agree
    assert tickets.app_secret("") != tickets.app_secret("")  # random per process
    with pytest.raises(ValueError, match="32 bytes"):
        tickets.app_secret("short")


def test_lookup_filters_never_pass_patterns() -> None:
    assert lookup_filters({"q": "ab"}) == {
        "$or": [{"_id": {"$regex": "^ab"}}, {"request_id": {"$regex": "^ab"}}]
    }
    found = lookup_filters({"q": " a.*b "})  # stripped, escaped: data, never a pattern
    assert found["$or"][0] == {"_id": {"$regex": "^a\\.\\*b"}}
    assert found["$or"][2]["search"] == {"$all": ["a.*", ".*b"]}
    assert device_filter("AB:" * 31 + "CD") == {"device.fingerprint_sha256": "ab" * 31 + "cd"}
    assert device_filter("host.example") == {"device.common_name": "host.example"}
    for bad in ({"q": "a\x00"}, {"q": " "}, {"device": "x\n"}, {"request_id": "r" * 257}):
        with pytest.raises(InvalidRequest):
            lookup_filters(bad)


def _tar(members: list[tuple[str, bytes]]) -> bytes:
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, content in members:
            info = tarfile.TarInfo(name)
            info.size = len(content)
            tar.addfile(info, io.BytesIO(content))
    return raw.getvalue()


def test_manifest_bounds_duplicates_and_unsafe_names() -> None:
    data = _tar([("a", b"1"), ("../evil", b"2"), ("a", b"3"), ("b/c", b"4")])
    got = build(raw_reader(data), zstd=False, limits=manifest_limits(len(data)))
    paths = [(m["path"], m["unsafe"], m["superseded"]) for m in got["members"]]
    # The first "a" is superseded by the second (the one extraction leaves); ".." is flagged.
    assert paths == [
        ("/a", False, True),
        ("../evil", True, False),
        ("/a", False, False),
        ("/b/c", False, False),
    ]
    assert got["members"][2]["sha256"] == hashlib.sha256(b"3").hexdigest()
    assert got["error"] is None and not got["truncated"]
    few = build(raw_reader(data), zstd=False, limits=manifest_limits(len(data)), max_entries=2)
    assert (few["count"], few["truncated"]) == (2, True)
    cut = build(raw_reader(data[:700]), zstd=False, limits=manifest_limits(700))
    assert cut["error"].startswith("malformed") and cut["count"] == 1


def test_the_sso_nonce_cookie_is_a_host_cookie_under_https() -> None:
    from services.download.oidc import nonce_cookie

    https = DownloadSettings(oidc_redirect_uri="https://carves.example.org/ui/")
    assert nonce_cookie(https) == ("__Host-carve_sso_nonce", "/", True)
    http = DownloadSettings(oidc_redirect_uri="http://127.0.0.1:8083/ui/")
    assert nonce_cookie(http) == ("carve_sso_nonce", "/api/v1/login/oidc", False)
