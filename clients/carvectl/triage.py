"""What ``carvectl`` prints of a carve's triage (carve-triage's scan on arrival): the verdict
column of ``list`` and the hits of ``show``. Member names and rule metadata are the host's
and the rule author's: printed through ``printable`` like every other such text."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from clients.carvectl.render import human_size, printable

VERDICTS = ("clean", "flagged", "incomplete")
KEYS = ("triage", "triage_history")  # left out of show's plain key: value lines


def verdict_cell(carve: Mapping[str, Any]) -> str:
    triage = carve.get("triage") or {}
    verdict = triage.get("verdict")
    if triage.get("status") in ("pending", "running"):
        return f"{verdict}*" if verdict else str(triage["status"])
    return str(verdict or "-")


def _hit(hit: Mapping[str, Any]) -> str:
    if hit.get("kind") == "hashset":
        return f"hash set {hit.get('set')}"
    tags = f" [{', '.join(hit.get('tags') or [])}]" if hit.get("tags") else ""
    meta = "; ".join(f"{k}={v}" for k, v in (hit.get("metadata") or {}).items())
    return f"rule {hit.get('namespace')}:{hit.get('rule')}{tags}" + (f" ({meta})" if meta else "")


def format_triage(carve: Mapping[str, Any]) -> list[str]:
    """The triage lines of ``show`` (none for a carve never scanned)."""
    triage = carve.get("triage")
    if not triage:
        return ["triage: not scanned"]
    lines = [
        f"triage: {verdict_cell(carve)} ({triage.get('status')}), "
        f"{triage.get('hit_count', 0)} hits, {triage.get('skipped_count', 0)} skipped, "
        f"{human_size(triage.get('scanned_bytes'))} scanned",
        f"  rules version: {triage.get('rules_version') or '-'}",
    ]
    sets = triage.get("hashsets") or {}
    if sets:
        lines.append("  hash sets: " + ", ".join(f"{n} ({v})" for n, v in sets.items()))
    for hit in triage.get("hits") or []:
        lines.append(f"  hit  {hit.get('member') or '(archive)'}: {_hit(hit)}")
    for skip in triage.get("skipped") or []:
        detail = f": {skip['detail']}" if skip.get("detail") else ""
        lines.append(
            f"  skipped  {skip.get('member') or '(archive)'}: {skip.get('reason')}{detail}"
        )
    for old in carve.get("triage_history") or []:
        lines.append(
            f"  before: {old.get('verdict')} with rules {str(old.get('rules_version'))[:16]}"
        )
    return [printable(line) for line in lines]
