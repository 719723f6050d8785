"""Legal holds, case tags and per-carve expiry: what keeps a carve's bytes, and for how long.

A carve document may carry:

- ``holds``: the legal holds standing on it, one per case (``HoldDoc``). While the array has
  an element, no path deletes the carve's bytes: every deleting transition puts ``FREE`` in
  the same MongoDB filter that performs it, so a hold placed a moment before a janitor's or
  an administrator's delete wins, and a delete that won first leaves nothing to hold (the
  hold's own filter refuses carves whose bytes are gone). No read-then-write anywhere.
- ``cases``: case ids responders tagged it with (search and context; they hold nothing).
- ``expires_at``: when its bytes go, set by an administrator; without it the janitor's
  ``CARVE_RETENTION`` (``CARVE_FAILED_RETENTION``) after completion (failure) applies.

Placing and releasing a hold write their event (``carve.hold.placed``/``released``) in the
same update (``shared.events.outbox``).
"""

from __future__ import annotations

import re
from datetime import datetime
from typing import Any, cast

from pymongo import ReturnDocument
from pymongo.asynchronous.database import AsyncDatabase

from shared.carves import ENDED, CarveDoc, HoldDoc, carves_of
from shared.events import EventType, carve_summary, event_entry, push_event
from shared.events.outbox import Notifier, announce
from shared.mongo import Document, transient_on_outage
from shared.timefmt import rfc3339

MAX_HOLDS = 16  # holds (cases) on one carve at once
MAX_CASES = 32  # case tags on one carve
MAX_REASON = 1000  # characters of a hold's reason
LOG = "hold_log"  # every hold placed and released, for custody records (the last MAX_LOG)
MAX_LOG = 256
# A case id: what ticketing systems use (IR-2026-0042, INC0012345, case:4711.b).
CASE_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,63}")

# No hold stands: in the filter of every update that deletes a carve's bytes.
FREE: Document = {"holds.0": {"$exists": False}}
# The carve's bytes are still there (a hold on a tombstone would protect nothing).
LIVE: Document = {"status": {"$nin": sorted(s.value for s in ENDED)}}


def held(doc: CarveDoc | Document) -> bool:
    """True while a hold stands on the carve ``doc`` describes."""
    return bool(doc.get("holds"))


def hold_cases(doc: CarveDoc | Document) -> list[str]:
    return [str(h.get("case")) for h in doc.get("holds") or []]


def hold_view(hold: HoldDoc) -> dict[str, Any]:
    """A hold as the API shows it."""
    return {
        "case": hold["case"],
        "reason": hold["reason"],
        "placed_by": hold["placed_by"],
        "placed_at": rfc3339(hold["placed_at"]),
    }


def _event(kind: EventType, doc: CarveDoc, hold: HoldDoc, now: datetime) -> Any:
    data = carve_summary(doc)
    data["hold"] = {"case": hold["case"], "by": hold["placed_by"]}
    data["holds"] = hold_cases(doc)
    return event_entry(kind, data, now)


async def place_hold(
    db: AsyncDatabase[Document], doc: CarveDoc, hold: HoldDoc, events: Notifier | None
) -> CarveDoc | None:
    """Add ``hold`` to the carve ``doc`` describes, with its event, in one update; the carve
    as it is now, or None when nothing changed (the case already holds it, its bytes are
    gone, or ``MAX_HOLDS`` stand: the caller reads the carve again to tell which)."""
    carve_id = doc["_id"]
    after = cast(CarveDoc, {**doc, "holds": [*(doc.get("holds") or []), hold]})
    entry = _event(EventType.HOLD_PLACED, after, hold, hold["placed_at"])
    query: Document = {
        "_id": carve_id,
        **LIVE,
        "holds.case": {"$ne": hold["case"]},
        f"holds.{MAX_HOLDS - 1}": {"$exists": False},
    }
    log_entry: dict[str, Any] = {"event": "hold.placed", "case": hold["case"]}
    log_entry |= {"by": hold["placed_by"]}
    log_entry |= {"reason": hold["reason"], "at": hold["placed_at"]}
    update = push_event(
        {
            "$push": {"holds": hold, LOG: {"$each": [log_entry], "$slice": -MAX_LOG}},
            "$set": {"updated_at": hold["placed_at"]},
        },
        entry,
    )
    with transient_on_outage("hold placement"):
        changed = await carves_of(db).find_one_and_update(
            query, update, return_document=ReturnDocument.AFTER
        )
    if changed is not None:
        announce(events, carve_id)
    return changed


async def release_hold(
    db: AsyncDatabase[Document],
    doc: CarveDoc,
    case: str,
    by: str,
    now: datetime,
    events: Notifier | None,
) -> CarveDoc | None:
    """Remove the hold of ``case`` from the carve, with its event, in one update; the carve as
    it is now, or None when no such hold stood."""
    carve_id = doc["_id"]
    standing = [h for h in doc.get("holds") or [] if h.get("case") == case]
    if not standing:
        return None
    rest = [h for h in doc.get("holds") or [] if h.get("case") != case]
    released: HoldDoc = {**standing[0], "placed_by": by}
    entry = _event(EventType.HOLD_RELEASED, cast(CarveDoc, {**doc, "holds": rest}), released, now)
    log_entry: dict[str, Any] = {"event": "hold.released", "case": case, "by": by, "at": now}
    update = push_event(
        {
            "$pull": {"holds": {"case": case}},
            "$push": {LOG: {"$each": [log_entry], "$slice": -MAX_LOG}},
            "$set": {"updated_at": now},
        },
        entry,
    )
    with transient_on_outage("hold release"):
        changed = await carves_of(db).find_one_and_update(
            {"_id": carve_id, "holds.case": case}, update, return_document=ReturnDocument.AFTER
        )
    if changed is not None:
        announce(events, carve_id)
    return changed
