"""Rules and hash sets a triage test writes, and what it waits for."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from tests.stack import Stack

MARKER = b"TRIAGE-TEST-MARKER-7f3a"
RULE = """
rule test_marker : demo test {
    meta:
        author = "<b>tests</b>"
        severity = 3
    strings:
        $a = "TRIAGE-TEST-MARKER-7f3a"
    condition:
        $a
}
"""
KNOWN_BAD = b"#!/bin/sh\n# a known-bad dropper, by its hash\ncurl x | sh\n"


def write_library(
    root: Path, rules: dict[str, str] | None = None, bad: tuple[bytes, ...] = ()
) -> dict[str, str]:
    """A rules directory and a hash-set directory under ``root``: the settings naming them."""
    rules_dir, sets_dir = root / "rules", root / "hashsets"
    rules_dir.mkdir(parents=True, exist_ok=True)
    sets_dir.mkdir(parents=True, exist_ok=True)
    for name, text in (rules if rules is not None else {"test.yar": RULE}).items():
        (rules_dir / name).write_text(text)
    lines = ["# known-bad test set"] + [hashlib.sha256(b).hexdigest() for b in bad]
    (sets_dir / "known-bad.txt").write_text("\n".join(lines) + "\n")
    return {"triage_rules": str(rules_dir), "triage_hashsets": str(sets_dir)}


async def wait_triaged(stack: Stack, carve_id: str, timeout: float = 60.0) -> dict[str, Any]:
    doc = await stack.wait_for(
        carve_id, lambda d: (d.get("triage") or {}).get("status") in ("done", "failed"), timeout
    )
    triage: dict[str, Any] = doc["triage"]
    return triage
