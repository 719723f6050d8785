"""A scan's findings and the carve's manifest made into the carve's ``triage`` result."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from services.triage.hashsets import HashSet, matches
from services.triage.library import Loaded
from services.triage.worker import MAX_HITS, Findings
from shared.inert import inert


def _digests(manifest: dict[str, Any] | None, found: Findings) -> list[tuple[str, str]]:
    """(member path, sha256 hex) of every file member whose digest is known: the manifest's
    (the finalizer hashed every member it listed), then those the scan hashed past it."""
    known: list[tuple[str, str]] = []
    for member in (manifest or {}).get("members", []):
        if member.get("type") == "file" and member.get("sha256"):
            known.append((inert(member["path"], 1024), member["sha256"]))
    known.extend((path, sha) for _, path, sha in found.hashed)
    return known


def hashset_hits(sets: Sequence[HashSet], known: list[tuple[str, str]]) -> list[dict[str, Any]]:
    if not sets or not known:
        return []
    names = matches(sets, [bytes.fromhex(sha) for _, sha in known])
    return [
        {"member": path, "kind": "hashset", "set": name, "sha256": sha}
        for (path, sha), found in zip(known, names, strict=True)
        for name in found
    ]


def verdict_of(hit_count: int, incomplete: bool) -> str:
    if hit_count:
        return "flagged"
    return "incomplete" if incomplete else "clean"


def build_result(
    found: Findings,
    manifest: dict[str, Any] | None,
    loaded: Loaded,
    started: datetime,
    finished: datetime,
) -> dict[str, Any]:
    """The ``triage`` object of a finished scan (``shared.triage`` describes it)."""
    known = _digests(manifest, found)
    digest_of = dict(known)
    listed = [dict(hit, sha256=digest_of.get(hit["member"])) for hit in found.hits]
    by_set = hashset_hits(loaded.hashsets, known)
    skipped = list(found.skipped)
    skipped_count = found.skipped_count
    if found.stopped and not any(s["reason"] == found.stopped for s in skipped):
        skipped.append({"member": None, "reason": found.stopped, "detail": found.stopped_detail})
        skipped_count += 1
    hit_count = found.hit_count + len(by_set)
    return {
        "status": "done",
        "verdict": verdict_of(hit_count, bool(skipped_count or found.stopped)),
        "rules_version": loaded.rules.version,
        "rules": loaded.rules.count,
        "hashsets": {h.name: h.version[:16] for h in loaded.hashsets},
        "hits": (listed + by_set)[:MAX_HITS],
        "hit_count": hit_count,
        "skipped": skipped,
        "skipped_count": skipped_count,
        "members": found.members,
        "scanned_bytes": found.scanned_bytes,
        "stopped": found.stopped,
        "started": started,
        "finished": finished,
    }


def failed_result(
    loaded: Loaded, error: str, started: datetime, finished: datetime
) -> dict[str, Any]:
    """The archive could not be read at all (corrupt chunks): no verdict of clean."""
    return {
        "status": "failed",
        "verdict": "incomplete",
        "rules_version": loaded.rules.version,
        "rules": loaded.rules.count,
        "hashsets": {h.name: h.version[:16] for h in loaded.hashsets},
        "hits": [],
        "hit_count": 0,
        "skipped": [{"member": None, "reason": "unreadable", "detail": inert(error, 512)}],
        "skipped_count": 1,
        "members": 0,
        "scanned_bytes": 0,
        "error": inert(error, 512),
        "started": started,
        "finished": finished,
    }
