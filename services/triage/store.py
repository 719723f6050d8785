"""Triage state on the carve document: who scans a carve, and its result.

``triage.status`` is ``pending`` (asked for: an event, an admin's re-scan), ``running``
(claimed by one replica: ``triage.claim`` holds its random token and lease), ``done`` or
``failed``. A scan is claimed by one conditional update, renewed while it runs, and its
result is written by an update conditioned on the same token, with the ``carve.triaged``
event in that same update (``shared.events.outbox``). So:

- two replicas never both write a result for one claim: the second claim needs the first's
  lease lapsed, and the first's write then finds its token gone;
- a replica that dies mid-scan leaves ``running`` with a lease that lapses: the sweep
  claims it again (at most ``MAX_ATTEMPTS`` times, then ``failed``);
- a re-scan asked for while a scan runs removes the claim: the running scan's renewal
  fails, it stops, and the carve is scanned again from the start.

The previous result's summary goes to ``triage_history`` (the last ``HISTORY``).
"""

from __future__ import annotations

import secrets
from datetime import datetime, timedelta
from typing import Any

from pymongo import ASCENDING, ReturnDocument
from pymongo.asynchronous.database import AsyncDatabase

from shared.carves import CarveDoc, Status, carves_of
from shared.events import EventType, carve_summary, event_entry, push_event
from shared.mongo import Document, transient_on_outage
from shared.triage import event_data

MAX_ATTEMPTS = 3
HISTORY = 5
SWEEP_BATCH = 32


def _claimable(now: datetime) -> Document:
    return {
        "status": Status.COMPLETE.value,
        "$or": [
            {"triage": {"$exists": False}},
            {"triage.status": "pending"},
            {
                "triage.status": "running",
                "triage.claim.until": {"$lt": now},
                "triage.attempts": {"$lt": MAX_ATTEMPTS},
            },
        ],
    }


async def ensure_indexes(db: AsyncDatabase[Document]) -> None:
    await db["carves"].create_index([("triage.status", ASCENDING), ("triage.requested", ASCENDING)])
    await db["carves"].create_index([("triage.verdict", ASCENDING), ("created_at", ASCENDING)])


class TriageStore:
    def __init__(self, db: AsyncDatabase[Document], owner: str, lease: float) -> None:
        self._carves = carves_of(db)
        self._owner = owner
        self._lease = timedelta(seconds=lease)

    async def claim(
        self, carve_id: str, rules_version: str, now: datetime, *, new_only: bool = False
    ) -> tuple[CarveDoc, str] | None:
        """Claim ``carve_id``'s scan: (the carve, the claim's token), or None when it is not
        to be scanned now (done, another replica's, not complete). ``new_only``: only a carve
        never triaged (a ``carve.completed`` event seen again must not scan twice)."""
        query: Document = {"_id": carve_id, **_claimable(now)}
        if new_only:
            query = {"_id": carve_id, "status": Status.COMPLETE.value, "triage": {"$exists": False}}
        token = secrets.token_urlsafe(16)
        claim = {
            "token": token,
            "owner": self._owner,
            "until": now + self._lease,
            "rules_version": rules_version,
        }
        update = {
            "$set": {"triage.status": "running", "triage.claim": claim, "triage.started": now},
            "$inc": {"triage.attempts": 1},
        }
        with transient_on_outage("triage claim"):
            doc = await self._carves.find_one_and_update(
                query, update, return_document=ReturnDocument.AFTER
            )
        return None if doc is None else (doc, token)

    async def renew(self, carve_id: str, token: str, now: datetime) -> bool:
        """Extend the claim; False when it was taken away (a re-scan was asked for)."""
        with transient_on_outage("triage lease"):
            done = await self._carves.update_one(
                {"_id": carve_id, "triage.claim.token": token},
                {"$set": {"triage.claim.until": now + self._lease}},
            )
        return done.matched_count == 1

    async def release(self, carve_id: str, token: str) -> None:
        """Give the claim up (the scan could not run: MongoDB away): pending again."""
        with transient_on_outage("triage release"):
            await self._carves.update_one(
                {"_id": carve_id, "triage.claim.token": token},
                {"$set": {"triage.status": "pending"}, "$unset": {"triage.claim": ""}},
            )

    async def write(
        self, doc: CarveDoc, token: str, result: dict[str, Any], now: datetime
    ) -> CarveDoc | None:
        """Store ``result`` as the carve's triage, with its ``carve.triaged`` event, if the
        claim is still ours; the carve as written, or None (the claim was lost)."""
        previous = doc.get("triage") or {}
        # Who asked for this scan stays with its result.
        asked: dict[str, Any] = {
            k: previous[k] for k in ("requested", "requested_by") if k in previous
        }
        result = {**result, **asked}
        update: Document = {"$set": {"triage": result}}
        if previous.get("verdict"):
            update["$push"] = {
                "triage_history": {
                    "$each": [
                        {
                            "rules_version": previous.get("rules_version"),
                            "verdict": previous.get("verdict"),
                            "hit_count": previous.get("hit_count", 0),
                            "finished": previous.get("finished"),
                        }
                    ],
                    "$slice": -HISTORY,
                }
            }
        after: CarveDoc = {**doc, "triage": result}
        entry = event_entry(EventType.TRIAGED, event_data(carve_summary(after), result), now)
        with transient_on_outage("triage result"):
            written = await self._carves.find_one_and_update(
                {"_id": doc["_id"], "triage.claim.token": token},
                push_event(update, entry),
                return_document=ReturnDocument.AFTER,
            )
        return written

    async def give_up(self, now: datetime) -> list[str]:
        """Carves whose scan died ``MAX_ATTEMPTS`` times: ``failed`` (no verdict of clean)."""
        query = {
            "status": Status.COMPLETE.value,
            "triage.status": "running",
            "triage.claim.until": {"$lt": now},
            "triage.attempts": {"$gte": MAX_ATTEMPTS},
        }
        ids: list[str] = []
        with transient_on_outage("triage give up"):
            for doc in await self._carves.find(query, {"_id": 1}).limit(SWEEP_BATCH).to_list():
                done = await self._carves.update_one(
                    {"_id": doc["_id"], **query},
                    {
                        "$set": {
                            "triage.status": "failed",
                            "triage.verdict": "incomplete",
                            "triage.error": f"the scan was interrupted {MAX_ATTEMPTS} times",
                            "triage.finished": now,
                        },
                        "$unset": {"triage.claim": ""},
                    },
                )
                if done.modified_count:
                    ids.append(doc["_id"])
        return ids

    async def waiting(self, now: datetime, limit: int) -> list[str]:
        """Carves whose scan is pending or was interrupted, oldest request first."""
        with transient_on_outage("triage sweep"):
            found = self._carves.find(_claimable(now) | {"triage": {"$exists": True}}, {"_id": 1})
            docs = await found.sort("triage.requested", ASCENDING).limit(limit).to_list()
        return [d["_id"] for d in docs]
