"""One time format everywhere: rfc3339(), the carve record, and the OpenAPI document agree."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta, timezone

from services.download.carve_views import carve_view
from services.download.openapi import CARVE_SCHEMA, DOCUMENT
from shared.timefmt import restated, rfc3339


def test_rfc3339_is_utc_with_z_and_milliseconds_only_when_present() -> None:
    assert rfc3339(datetime(2026, 11, 27, 10, 0, tzinfo=UTC)) == "2026-11-27T10:00:00Z"
    assert (
        rfc3339(datetime(2026, 11, 27, 10, 0, 44, 911000, tzinfo=UTC)) == "2026-11-27T10:00:44.911Z"
    )
    assert rfc3339(datetime(2026, 11, 27, 10, 0, 44, 999, tzinfo=UTC)) == "2026-11-27T10:00:44Z"
    paris = timezone(timedelta(hours=1))
    assert rfc3339(datetime(2026, 11, 27, 11, 0, tzinfo=paris)) == "2026-11-27T10:00:00Z"
    assert rfc3339(datetime(2026, 11, 27, 10, 0)) == "2026-11-27T10:00:00Z"  # naive: UTC
    assert rfc3339(datetime(1, 1, 1, tzinfo=UTC)) == "0001-01-01T00:00:00Z"  # a hostile mtime
    assert restated("2026-11-27T10:00:00+00:00") == "2026-11-27T10:00:00Z"
    assert restated("not a time") == "not a time" and restated(None) is None


def test_the_carve_record_and_the_openapi_document_agree() -> None:
    when = datetime(2026, 11, 27, 10, 0, 44, 911000, tzinfo=UTC)
    doc = {
        "_id": "c1", "carve_id": "c1", "request_id": "r1", "status": "complete",
        "block_count": 2, "block_size": 1024, "carve_size": 2000, "blocks_received": 2,
        "compression": "none", "sha256": "ab" * 32, "filename": "carve_c1.tar",
        "created_at": when, "updated_at": when, "completed_at": when, "host_name": "h1",
        "manifest": {"members": 1, "truncated": False, "error": None, "files": 1, "paths": ["/x"]},
    }  # fmt: skip
    view = carve_view(doc)  # type: ignore[arg-type]
    pattern = re.compile(DOCUMENT["components"]["schemas"]["Time"]["pattern"])
    times = [view[k] for k in ("created_at", "updated_at", "completed_at")]
    assert times == ["2026-11-27T10:00:44.911Z"] * 3
    assert all(pattern.match(t) for t in times)
    assert set(view) <= set(CARVE_SCHEMA["properties"]), set(view) - set(CARVE_SCHEMA["properties"])
    assert (view["host"], view["paths"], view["path_count"]) == ("h1", ["/x"], 1)
