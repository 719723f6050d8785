"""carvectl's custody output without a server: show's holds, cases and expiry (host text
escaped), and verify's clear refusals of files that are not records."""

from __future__ import annotations

import contextlib
import io
from pathlib import Path

from clients import carvectl
from clients.carvectl.errors import EXIT_INTEGRITY, EXIT_USAGE
from clients.carvectl.render import format_carve

CARVE = {
    "carve_id": "c1",
    "status": "complete",
    "request_id": "r1",
    "host": "laptop\x1b[31m",  # a hostile host name: escaped, never a terminal sequence
    "carve_size": 10,
    "block_size": 10,
    "block_count": 1,
    "blocks_received": 1,
    "holds": [
        {"case": "IR-1", "reason": "court", "placed_by": "ann", "placed_at": "2026-12-06T10:00:00Z"}
    ],
    "cases": ["IR-1", "IR-2"],
    "expires_at": None,
}


def test_show_prints_holds_cases_and_expiry() -> None:
    text = format_carve(CARVE)
    assert "legal hold: IR-1: court (ann, 2026-12-06T10:00:00Z" in text
    assert "cases:      IR-1, IR-2" in text
    assert "expires:    retention" in text
    assert "\x1b" not in text
    later = format_carve({**CARVE, "holds": [], "expires_at": "2030-01-01T00:00:00Z"})
    assert "legal hold" not in later and "expires:    2030-01-01T00:00:00Z" in later


def _verify(*argv: str) -> tuple[int, str]:
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        code = carvectl.run(["verify", *argv], env={})
    return code, err.getvalue()


def test_verify_refuses_what_is_not_a_record(tmp_path: Path) -> None:
    record, keys = tmp_path / "r.json", tmp_path / "k.json"
    record.write_text("not json")
    keys.write_text('{"keys": []}')
    code, err = _verify(str(record), "--keys", str(keys))
    assert code == EXIT_USAGE and "is not JSON" in err
    record.write_text('{"record": {}, "signature": {}}')
    code, err = _verify(str(record), "--keys", str(keys))
    assert code == EXIT_INTEGRITY and "NOT VERIFIED: not a custody record" in err
    keys.write_text("garbage")
    code, err = _verify(str(record), "--keys", str(keys))
    assert code == EXIT_INTEGRITY and "neither a PEM public key" in err
