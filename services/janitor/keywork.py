"""The janitor's key commands: ``carve-janitor rewrap`` and ``carve-janitor encrypt``.

rewrap   rotate each carve's Transit key and re-wrap its data key with the latest version
         (``--retire``: then old versions no longer decrypt, so wrapped keys copied before
         are useless). Chunks are untouched: the data key itself does not change.
encrypt  seal the clear chunks of carves stored before encryption was on, in place.

Both are resumable and safe to run twice at once. rewrap keeps its position (the last carve
id done) in the ``locks`` collection and resumes from it until a run finishes; each carve's
new wrapped key replaces the old one only if the old one is still there. encrypt works
chunk by chunk: a chunk's update swaps its clear bytes for sealed ones in one document
write, conditional on the clear bytes still being there, so a crash leaves a carve whose
chunks are each wholly clear or wholly sealed, which every reader handles (the carve is
marked ``sealed: partial`` before its first chunk is sealed). A run finds it again and goes
on; once every chunk is sealed and the plaintext's SHA-256 matches the stored one, the carve
is marked ``sealed: all`` (from then on a clear chunk is an integrity error).
"""

from __future__ import annotations

import hashlib
import logging
import re
from collections import Counter
from datetime import UTC, datetime

from pymongo import UpdateOne
from pymongo.asynchronous.database import AsyncDatabase

from shared.carves import Status, carves_of
from shared.crypto.chunks import OVERHEAD
from shared.crypto.keys import ALL, STORED, KeyRing
from shared.crypto.reader import CarveReader
from shared.crypto.transit import Transit
from shared.errors import CorruptArchive, Unavailable
from shared.mongo import Document, transient_on_outage
from shared.protocol import expected_block_length

log = logging.getLogger(__name__)

LOCKS = "locks"
REWRAP_STATE = "rewrap"
_VERSION = re.compile(r"^vault:v(\d+):")


def _transit(keyring: KeyRing) -> Transit:
    if keyring.transit is None:
        raise Unavailable("vault", "no Vault Transit configured (CARVE_VAULT_ROLE_ID...)")
    return keyring.transit


async def rewrap(
    db: AsyncDatabase[Document], keyring: KeyRing, *, batch: int, retire: bool
) -> dict[str, int]:
    """Rotate and re-wrap every carve's data key (resuming an unfinished run)."""
    transit = _transit(keyring)
    carves, state = carves_of(db), db[LOCKS]
    tally: Counter[str] = Counter()
    with transient_on_outage("rewrap state"):
        saved = await state.find_one({"_id": REWRAP_STATE}) or {}
        if saved.get("done", True):
            saved = {"after": "", "started_at": datetime.now(UTC)}
            await state.replace_one({"_id": REWRAP_STATE}, {**saved, "done": False}, upsert=True)
        else:
            log.info("rewrap: resuming after carve %r", saved.get("after"))
    after: str = saved.get("after", "")
    while True:
        query = {"_id": {"$gt": after}, "encryption.wrapped": {"$exists": True}}
        with transient_on_outage("rewrap page"):
            page = await carves.find(query, {"encryption": 1}).sort("_id", 1).limit(batch).to_list()
        for doc in page:
            sealing = doc["encryption"]
            name, old = str(sealing["key"]), str(sealing["wrapped"])
            await transit.rotate(name)
            new = await transit.rewrap(name, old)
            with transient_on_outage("rewrap write"):
                change = {"encryption.wrapped": new, "encryption.rewrapped_at": datetime.now(UTC)}
                done = await carves.update_one(
                    {"_id": doc["_id"], "encryption.wrapped": old}, {"$set": change}
                )
            tally["rewrapped" if done.modified_count else "changed_meanwhile"] += 1
            if retire and done.modified_count and (match := _VERSION.match(new)):
                await transit.retire(name, int(match.group(1)))
                tally["retired"] += 1
        if not page:
            break
        after = page[-1]["_id"]
        with transient_on_outage("rewrap state"):
            await state.update_one({"_id": REWRAP_STATE}, {"$set": {"after": after}})
    with transient_on_outage("rewrap state"):
        await state.update_one({"_id": REWRAP_STATE}, {"$set": {"done": True}})
    return dict(tally)


def _encrypt_query() -> Document:
    return {
        "status": {"$in": list(STORED)},
        "$or": [{"encryption": None}, {"encryption.sealed": {"$ne": ALL}}],
    }


async def encrypt(
    db: AsyncDatabase[Document], bucket: str, keyring: KeyRing, *, batch_bytes: int, limit: int
) -> dict[str, int]:
    """Seal the clear chunks of up to ``limit`` stored carves (all of them: run again)."""
    _transit(keyring)
    tally: Counter[str] = Counter()
    carves = carves_of(db)
    with transient_on_outage("encrypt listing"):
        ids = [
            d["_id"] for d in await carves.find(_encrypt_query(), {"_id": 1}).limit(limit).to_list()
        ]
    for carve_id in ids:
        try:
            sealed = await _encrypt_one(db, bucket, keyring, carve_id, batch_bytes)
        except CorruptArchive as exc:
            log.error("carve %s not encrypted: %s", carve_id, exc)
            tally["corrupt"] += 1
            continue
        tally["carves_sealed" if sealed is not None else "skipped"] += 1
        tally["chunks_sealed"] += sealed or 0
    return dict(tally)


async def _encrypt_one(
    db: AsyncDatabase[Document], bucket: str, keyring: KeyRing, carve_id: str, batch_bytes: int
) -> int | None:
    """Chunks sealed now; None when the carve is no longer a stored one."""
    cipher = await keyring.for_encrypting(carve_id)
    if cipher is None:
        return None
    carves, chunks = carves_of(db), db[f"{bucket}.chunks"]
    with transient_on_outage("encrypt"):
        doc = await carves.find_one({"_id": carve_id})
    if doc is None or doc["status"] not in STORED:
        return None
    reader = await CarveReader.open(db, bucket, doc, keyring)
    count, size, chunk_size = reader.count, reader.size, reader.chunk_size
    window = max(1, batch_bytes // chunk_size)
    digest, sealed = hashlib.sha256(), 0
    complete = doc["status"] == Status.COMPLETE
    for start in range(0, count, window):
        stop = min(start + window, count)
        query = {"files_id": carve_id, "n": {"$gte": start, "$lt": stop}}
        with transient_on_outage("encrypt read"):
            rows = await chunks.find(query).sort("n", 1).to_list()
        if complete and [r["n"] for r in rows] != list(range(start, stop)):
            raise CorruptArchive(f"chunks missing in {start}..{stop - 1}")
        updates = []
        for row in rows:
            n, stored = row["n"], bytes(row["data"])
            plain = await reader.open_chunk(n, stored)
            digest.update(plain)
            if len(stored) == expected_block_length(n, count, chunk_size, size) + OVERHEAD:
                continue  # sealed already (an earlier run, or an assembler)
            # Swapped only if still the same clear bytes: one document, one atomic write.
            updates.append(UpdateOne({"_id": row["_id"], "data": stored},
                                     {"$set": {"data": cipher.seal(n, plain)}}))  # fmt: skip
        if updates:
            with transient_on_outage("encrypt write"):
                result = await chunks.bulk_write(updates, ordered=False)
            sealed += result.modified_count
    if complete and digest.hexdigest() != doc["sha256"]:
        raise CorruptArchive("the plaintext's SHA-256 differs from the stored one")
    with transient_on_outage("encrypt done"):
        await carves.update_one(
            {"_id": carve_id, "status": {"$in": list(STORED)}},
            {"$set": {"encryption.sealed": ALL}},
        )
    log.info("carve %s sealed: %d chunks now", carve_id, sealed)
    return sealed
