"""KeyRing: a carve's data key, for writing (created once per carve) or for reading
(unwrapped by Transit), kept in process memory only, briefly and bounded.

Key layout: one Transit key per carve, ``<CARVE_TRANSIT_KEY>-<carve id>``. Its data key
(256 bits, from ``datakey/plaintext``) encrypts the carve's chunks; the carve document
keeps only the data key as Transit wrapped it (``encryption.wrapped``). Destroying the
Transit key once the carve's bytes are gone (``shred``) makes every copy of the chunks and
of the wrapped key, in any backup, undecryptable.

Calls to Vault per carve: create + datakey once (the first assembler to write a chunk);
decrypt once per other process that touches it within the cache's TTL (another
assembler, a download replica, triage, the janitor); config + delete once (shredding).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

from pymongo.asynchronous.database import AsyncDatabase

from shared.carves import CarveDoc, Status, carves_of
from shared.crypto.chunks import ChunkCipher
from shared.crypto.transit import KeyShredded, Transit
from shared.errors import Unavailable
from shared.mongo import Document, transient_on_outage
from shared.settings import EncryptionSettings

log = logging.getLogger(__name__)

SCHEME = "aes-256-gcm/1"
ALL = "all"  # every chunk of the carve is sealed: a clear one is an integrity error
PARTIAL = "partial"  # some chunks were stored before the key (mixed mode; `encrypt` ends it)
RECEIVING = (Status.RECEIVING.value,)
STORED = (Status.COMPLETE.value, Status.FAILED.value)


def encryption_view(doc: CarveDoc | Document) -> dict[str, Any] | None:
    """How a carve is stored, for responders: never its key name or wrapped key."""
    sealing: dict[str, Any] | None = doc.get("encryption")
    if not sealing:
        return None
    return {
        "scheme": sealing.get("scheme", SCHEME),
        "sealed": sealing.get("sealed", PARTIAL),
        "shredded": bool(sealing.get("shredded_at")),
    }


class KeyRing:
    """Data keys of carves for one process; ``transit`` None when Vault is not configured."""

    def __init__(
        self,
        db: AsyncDatabase[Document],
        bucket: str,
        transit: Transit | None,
        settings: EncryptionSettings,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._carves = carves_of(db)
        self.transit = transit
        self.encrypting = settings.encrypting and transit is not None
        self._ttl = settings.key_cache_ttl
        self._size = settings.key_cache_size
        self._clock = clock
        self._cache: OrderedDict[str, tuple[ChunkCipher, float]] = OrderedDict()
        self._pending: dict[str, asyncio.Future[ChunkCipher | None]] = {}
        self.on_integrity_error: Callable[[], None] | None = None

    # --- the cache ---------------------------------------------------------------------------

    def _cached(self, carve_id: str) -> ChunkCipher | None:
        found = self._cache.get(carve_id)
        if found is None:
            return None
        cipher, until = found
        if self._clock() >= until:
            del self._cache[carve_id]
            return None
        self._cache.move_to_end(carve_id)
        return cipher

    def _keep(self, cipher: ChunkCipher) -> ChunkCipher:
        if self._ttl > 0:
            self._cache[cipher.carve_id] = (cipher, self._clock() + self._ttl)
            self._cache.move_to_end(cipher.carve_id)
            while len(self._cache) > self._size:
                self._cache.popitem(last=False)
        return cipher

    def forget(self, carve_id: str) -> None:
        self._cache.pop(carve_id, None)

    async def _once(
        self, carve_id: str, make: Callable[[], Awaitable[ChunkCipher | None]]
    ) -> ChunkCipher | None:
        """One Vault round trip per carve at a time in this process, however many ask."""
        if (cipher := self._cached(carve_id)) is not None:
            return cipher
        pending = self._pending.get(carve_id)
        if pending is not None:
            return await asyncio.shield(pending)
        future: asyncio.Future[ChunkCipher | None] = asyncio.get_running_loop().create_future()
        self._pending[carve_id] = future
        try:
            cipher = await make()
        except BaseException as exc:
            future.set_exception(exc)
            future.exception()  # retrieved: waiters re-raise it, nobody warns
            raise
        finally:
            self._pending.pop(carve_id, None)
        future.set_result(cipher)
        return self._keep(cipher) if cipher is not None else None

    # --- reading -----------------------------------------------------------------------------

    async def for_reading(self, doc: CarveDoc | Document) -> ChunkCipher | None:
        """The cipher of a carve whose document is ``doc``; None when it has no data key
        (stored in the clear). KeyShredded when its key was destroyed, Unavailable when
        Vault cannot answer."""
        sealing: dict[str, Any] | None = doc.get("encryption")
        if not sealing or not sealing.get("wrapped"):
            if sealing and sealing.get("shredded_at"):
                raise KeyShredded(f"the key of carve {doc['_id']} was destroyed")
            return None
        carve_id: str = doc["_id"]
        return await self._once(carve_id, lambda: self._unwrap(carve_id, sealing))

    async def _unwrap(self, carve_id: str, sealing: dict[str, Any]) -> ChunkCipher:
        transit = self._need_transit()
        key = await transit.unwrap(str(sealing["key"]), str(sealing["wrapped"]))
        return ChunkCipher(carve_id, key)

    def _need_transit(self) -> Transit:
        if self.transit is None:
            raise Unavailable("vault", "an encrypted carve, and no Vault Transit configured")
        return self.transit

    # --- writing -----------------------------------------------------------------------------

    async def for_writing(self, carve_id: str) -> ChunkCipher | None:
        """The cipher to seal a new chunk of ``carve_id`` with, creating the carve's key if
        it has none. None when the carve is not receiving (unknown, complete, ended): its
        late block is dropped, so no key is ever created for a carve that is gone."""
        return await self._once(carve_id, lambda: self._sealing_key(carve_id, RECEIVING))

    async def for_encrypting(self, carve_id: str) -> ChunkCipher | None:
        """The cipher ``carve-janitor encrypt`` seals a stored carve's clear chunks with
        (complete or failed carves; None for any other)."""
        return await self._once(carve_id, lambda: self._sealing_key(carve_id, STORED))

    async def _sealing_key(self, carve_id: str, statuses: tuple[str, ...]) -> ChunkCipher | None:
        wanted = {"_id": carve_id, "status": {"$in": list(statuses)}}
        with transient_on_outage("carve key lookup"):
            doc = await self._carves.find_one(wanted, {"status": 1, "encryption": 1})
        if doc is None:
            return None
        if doc.get("encryption"):
            return await self._unwrap(carve_id, dict(doc["encryption"]))
        transit = self._need_transit()
        name = transit.key_name(carve_id)
        key, wrapped = await transit.new_data_key(name)
        with transient_on_outage("carve key write"):
            # "partial" until the finalizer (or `encrypt`) has seen every chunk sealed: a
            # chunk stored before this key, or by an assembler without encryption during a
            # rolling update, stays clear and readable (mixed mode) instead of failing the
            # carve; from "all" on, a clear chunk is an integrity error.
            sealing = {
                "key": name, "wrapped": wrapped, "scheme": SCHEME,
                "sealed": PARTIAL, "created_at": datetime.now(UTC),
            }  # fmt: skip
            won = await self._carves.update_one(
                {**wanted, "encryption": None}, {"$set": {"encryption": sealing}}
            )
            if won.modified_count:
                return ChunkCipher(carve_id, key)
            # Another process stored its key first: ours is dropped unused, theirs is read.
            doc = await self._carves.find_one(wanted, {"status": 1, "encryption": 1})
        if doc is None or not doc.get("encryption"):
            return None
        return await self._unwrap(carve_id, dict(doc["encryption"]))

    # --- integrity -----------------------------------------------------------------------------

    def integrity_error(self) -> None:
        if self.on_integrity_error is not None:
            self.on_integrity_error()
