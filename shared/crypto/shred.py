"""Crypto-shredding: destroy the Transit key of every carve whose bytes are gone.

A deleted or expired carve's chunks are purged from MongoDB, but a backup taken before still
holds them and the wrapped data key beside them. Destroying the carve's Transit key in
Vault (allow deletion, delete) makes both useless everywhere at once: nothing can unwrap
the data key any more. Done by the janitor, the only service whose Vault policy may delete
keys, for each ended carve that still names a live key: the chunks first (a purge that was
interrupted is finished here), then the key, then the document notes it
(``encryption.shredded_at``; the wrapped key is dropped from it). Each step is safe to repeat:
a key already gone counts as destroyed.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime

from pymongo.asynchronous.database import AsyncDatabase

from shared.carves import ENDED, carves_of
from shared.crypto.keys import KeyRing
from shared.lifecycle import purge_archive
from shared.mongo import Document, transient_on_outage

log = logging.getLogger(__name__)


def shred_query() -> Document:
    """Ended carves whose Transit key has not been destroyed yet."""
    return {
        "status": {"$in": [s.value for s in ENDED]},
        "encryption.key": {"$exists": True},
        "encryption.shredded_at": {"$exists": False},
    }


async def shred_ended(
    db: AsyncDatabase[Document], bucket: str, keyring: KeyRing, *, batch: int, dry_run: bool
) -> int:
    """Shred up to ``batch`` ended carves' keys; how many (would be) shredded."""
    carves = carves_of(db)
    with transient_on_outage("janitor: shredding"):
        if dry_run:
            return await carves.count_documents(shred_query(), limit=batch)
        page = await carves.find(shred_query(), {"encryption": 1}).limit(batch).to_list()
    transit = keyring.transit
    if page and transit is None:
        log.warning("%d ended carves keep their Transit key: no Vault configured", len(page))
        return 0
    done = 0
    for doc in page:
        assert transit is not None
        carve_id, name = doc["_id"], str(doc["encryption"]["key"])
        await purge_archive(db, bucket, carve_id, batch=batch, carve=None)
        destroyed = await transit.destroy(name)
        keyring.forget(carve_id)
        with transient_on_outage("janitor: shredding"):
            await carves.update_one(
                {"_id": carve_id},
                {
                    "$set": {"encryption.shredded_at": datetime.now(UTC)},
                    "$unset": {"encryption.wrapped": ""},
                },
            )
        log.info("carve %s: key %s %s", carve_id, name, "destroyed" if destroyed else "was gone")
        done += 1
    return done
