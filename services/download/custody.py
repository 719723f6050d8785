"""Signed custody records: ``GET /api/v1/carves/{id}/custody`` and ``GET /api/v1/custody/keys``.

A record attests, at its issue time, what the service knows of one carve: who sent it (the
host and its device certificate), what it is (the archive's SHA-256 and size, the
manifest's own digest and member count) and what happened to it (started, completed,
triaged, holds placed and released, expiry or deletion, and every access the audit trail
holds: who, when, what, with which justification and outcome). It is signed by Vault
Transit's ed25519 key ``CARVE_CUSTODY_KEY`` (format and checking: ``shared.custody``), so
anyone holding the public key can check it offline (``carvectl verify``).

Accesses are the audit rows of the carve (and the campaign exports that held it), oldest
first, at most ``MAX_ACCESSES`` (the record then says ``truncated``; ``total`` counts them
all). Metadata views repeated within ``CARVE_AUDIT_REPEAT_WINDOW`` are one row in the audit,
so they are one access here; every download is its own.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

from aiohttp import web

from services.download import keys
from services.download.audit import COLLECTION as AUDIT_ROWS
from services.download.auth import authorize, authorized_carve, header_token
from services.download.custody_signer import TransitSigner
from services.download.holds_api import who
from shared import keys as shared_keys
from shared.carves import CarveDoc
from shared.crypto.context import KEYRING
from shared.custody import ALGORITHM, FORMAT, canonical, manifest_sha256, public_key_pem
from shared.holds import hold_view
from shared.manifest import COLLECTION as MANIFESTS
from shared.mongo import Document, transient_on_outage
from shared.search import display_host
from shared.timefmt import rfc3339

SIGNER = web.AppKey("custody_signer", TransitSigner)
MAX_ACCESSES = 10_000
_ACCESS_FIELDS = ("action", "outcome", "status", "code", "justification", "client", "bytes_sent")


async def signer_ctx(app: web.Application) -> AsyncIterator[None]:
    """The custody signer (after the key ring's context): it signs through the key ring's
    Transit, so the service signs in to Vault once, and the key ring closes it."""
    app[SIGNER] = TransitSigner(app[KEYRING].transit, app[keys.SETTINGS])
    yield


def _identity(doc: CarveDoc) -> dict[str, Any]:
    device = doc.get("device") or None
    return {
        "carve_id": doc["_id"],
        "request_id": doc["request_id"],
        "status": doc["status"],
        "host": display_host(doc),
        "device": (
            {
                name: device.get(name)
                for name in ("fingerprint_sha256", "subject_dn", "common_name", "serial")
            }
            if device
            else None
        ),
        "block_count": doc["block_count"],
        "block_size": doc["block_size"],
    }


def _lifecycle(doc: CarveDoc) -> list[tuple[datetime, dict[str, Any]]]:
    """The carve's own milestones (its document), each with the time it sorts by."""
    events: list[tuple[datetime, dict[str, Any]]] = [(doc["created_at"], {"event": "started"})]
    if completed := doc.get("completed_at"):
        events.append((completed, {"event": "completed", "sha256": doc.get("sha256")}))
    if failed := doc.get("failed_at"):
        events.append((failed, {"event": "failed", "reason": doc.get("failure_reason")}))
    triage = doc.get("triage") or {}
    for scan in [*(doc.get("triage_history") or []), triage]:
        if isinstance(finished := scan.get("finished"), datetime):
            verdict = {"verdict": scan.get("verdict"), "rules_version": scan.get("rules_version")}
            events.append((finished, {"event": "triaged", **verdict}))
    for entry in doc.get("hold_log") or []:
        events.append((entry["at"], {k: v for k, v in entry.items() if k != "at"}))
    if expired := doc.get("expired_at"):
        events.append((expired, {"event": "expired"}))
    if deleted := doc.get("deleted_at"):
        events.append((deleted, {"event": "deleted", "by": doc.get("deleted_by")}))
    return events


async def _accesses(
    request: web.Request, carve_id: str
) -> tuple[list[tuple[datetime, dict[str, Any]]], int]:
    rows = request.app[shared_keys.MONGO_DB][AUDIT_ROWS]
    query: Document = {"$or": [{"carve_id": carve_id}, {"carve_ids": carve_id}]}
    with transient_on_outage("custody: audit"):
        found = rows.find(query).sort([("time", 1), ("_id", 1)]).limit(MAX_ACCESSES)
        listed = [row async for row in found]
        total = len(listed)
        if total == MAX_ACCESSES:
            total = await rows.count_documents(query)
    accesses = []
    for row in listed:
        entry = {"event": "access", "who": row.get("display_name"), "entity": row.get("entity_id")}
        entry |= {name: row.get(name) for name in _ACCESS_FIELDS}
        accesses.append((row["time"], entry))
    return accesses, total


async def _manifest(request: web.Request, carve_id: str) -> dict[str, Any] | None:
    with transient_on_outage("custody: manifest"):
        stored = await request.app[shared_keys.MONGO_DB][MANIFESTS].find_one({"_id": carve_id})
    if stored is None:
        return None
    members = list(stored.get("members") or [])
    truncated = bool(stored.get("truncated"))
    return {
        "sha256": manifest_sha256(carve_id, members, truncated),
        "members": len(members),
        "truncated": truncated,
        "error": stored.get("error"),
        "canonical_form": "RFC 8785 JSON of {carve_id, members, truncated}",
    }


async def build_record(
    request: web.Request, doc: CarveDoc, version: int, now: datetime
) -> dict[str, Any]:
    """The record of ``doc`` as of ``now``, to be signed by ``version`` of the custody key."""
    accesses, total = await _accesses(request, doc["_id"])
    timeline = sorted([*_lifecycle(doc), *accesses], key=lambda item: item[0])
    return {
        "format": FORMAT,
        "issued_at": rfc3339(now),
        "issued_to": who(request[keys.IDENTITY]),
        "issuer": request.app[keys.SETTINGS].events_source,
        "signed_with": {"key": request.app[SIGNER].key, "version": version, "algorithm": ALGORITHM},
        "carve": _identity(doc),
        "archive": {
            "sha256": doc.get("sha256"),
            "size": doc["carve_size"],
            "compression": doc.get("compression"),
            "filename": doc.get("filename"),
        },
        "manifest": await _manifest(request, doc["_id"]),
        "holds": [hold_view(h) for h in doc.get("holds") or []],
        "cases": list(doc.get("cases") or []),
        "expires_at": doc.get("expires_at"),
        "timeline": [{"time": when, **entry} for when, entry in timeline],
        "accesses": {"listed": len(accesses), "total": total, "truncated": total > len(accesses)},
    }


async def get_custody(request: web.Request) -> web.Response:
    doc = await authorized_carve(request)
    signer = request.app[SIGNER]
    latest, _ = await signer.public_keys()
    record = await build_record(request, doc, latest, datetime.now(UTC))
    signed = canonical(record)
    signature = await signer.sign(signed, latest)
    body = (
        b'{"record":'
        + signed
        + b',"signature":'
        + canonical({"algorithm": ALGORITHM, "value": signature})
        + b"}"
    )
    return web.Response(
        body=body,
        content_type="application/json",
        headers={
            "Content-Disposition": f'attachment; filename="custody_{doc["_id"]}.json"',
            "Cache-Control": "no-store",
        },
    )


async def get_keys(request: web.Request) -> web.Response:
    await authorize(request, header_token(request))
    signer = request.app[SIGNER]
    latest, found = await signer.public_keys()
    return web.json_response(
        {
            "key": signer.key,
            "algorithm": ALGORITHM,
            "latest_version": latest,
            "keys": [
                {
                    "version": k.version,
                    "created": k.created,
                    "public_key_pem": public_key_pem(k.public_key),
                }
                for k in found
            ],
        }
    )
