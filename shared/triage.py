"""A carve's triage (the scan on arrival by ``carve-triage``), as every service sees it.

The carve document's ``triage`` object (``services.triage.store`` writes it)::

    status        pending | running | done | failed
    verdict       clean | flagged | incomplete (once a scan finished)
    rules_version SHA-256 of the rule sources the scan used
    hashsets      {set name: version}
    hits          [{member, kind: yara|hashset, rule | set, namespace, tags, metadata, sha256}]
    hit_count, skipped, skipped_count, scanned_bytes, members, started, finished, error
    requested, requested_by   when (and by whom) a scan was last asked for
    claim, attempts           internal: never shown

A verdict is ``flagged`` when anything matched (even if some bytes were not scanned),
``incomplete`` when nothing matched but some bytes could not be scanned within the budgets
(never ``clean`` then), ``clean`` otherwise.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

from shared.timefmt import rfc3339

STATUSES = ("pending", "running", "done", "failed")
VERDICTS = ("clean", "flagged", "incomplete")
EVENT_HITS = 10  # hits an event carries (all are on the carve)
_PRIVATE = frozenset({"claim", "attempts"})
_TIMES = ("started", "finished", "requested")


def triage_view(triage: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """The public ``triage`` of a carve (None: never scanned)."""
    if not triage:
        return None
    view = {k: v for k, v in triage.items() if k not in _PRIVATE}
    for name in _TIMES:
        if isinstance(view.get(name), datetime):
            view[name] = rfc3339(view[name])
    view.setdefault("verdict", None)
    return view


def history_view(history: Sequence[Mapping[str, Any]] | None) -> list[dict[str, Any]]:
    return [
        {
            **h,
            "finished": rfc3339(h["finished"]) if isinstance(h.get("finished"), datetime) else None,
        }
        for h in history or []
    ]


def event_data(summary: dict[str, Any], result: Mapping[str, Any]) -> dict[str, Any]:
    """``carve.triaged``'s data: the carve's summary and a bounded triage object."""
    hits = [
        {k: h.get(k) for k in ("member", "kind", "rule", "set", "namespace", "tags") if k in h}
        for h in result.get("hits", [])[:EVENT_HITS]
    ]
    return {
        **summary,
        "triage": {
            "verdict": result.get("verdict"),
            "status": result.get("status"),
            "rules_version": result.get("rules_version"),
            "hashsets": result.get("hashsets", {}),
            "hit_count": result.get("hit_count", 0),
            "skipped_count": result.get("skipped_count", 0),
            "scanned_bytes": result.get("scanned_bytes", 0),
            "hits": hits,
        },
    }


def rescan_update(now: datetime, who: str) -> dict[str, Any]:
    """The update that asks for a (re-)scan: pending, and any running scan's claim removed
    (its result is then not written; the carve is scanned again from the start)."""
    return {
        "$set": {
            "triage.status": "pending",
            "triage.requested": now,
            "triage.requested_by": who,
            "triage.attempts": 0,
        },
        "$unset": {"triage.claim": ""},
    }
