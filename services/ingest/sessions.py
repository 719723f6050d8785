"""Upload sessions: Redis holds them, MongoDB remembers them.

A session is a Redis hash (the carve's geometry, request_id, hashes of the
node key and of the device certificate that started it) plus a bitmap of
the blocks already confirmed by RabbitMQ. Any ingest replica can serve any
block. The carve document in MongoDB also holds the session id, so a
session lost with Redis (a restart without persistence) is rebuilt on
first use instead of failing the carve; only the duplicate filter restarts
empty, which the idempotent storage makes harmless.

A session's fields never change, so each ingest process keeps the ones it
has seen for a few seconds: a block then costs no read, only its share of one
atomic script that records every block confirmed meanwhile by concurrent
requests and refreshes their expiry (one round trip per batch, not per
block). The cache only saves a read; nothing depends on which replica served
what.
"""

from __future__ import annotations

import enum
import hmac
import logging
import secrets
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from cachetools import TTLCache
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.errors import ConnectionFailure, DuplicateKeyError
from redis.asyncio import Redis
from redis.crc import key_slot

from shared.batching import Coalescer
from shared.carves import (
    CarveDoc,
    Origin,
    Status,
    digest,
    new_carve_doc,
    same_start,
    stored_node_key,
)
from shared.errors import Conflict, InvalidRequest, Unavailable, UnknownSession
from shared.events import EventType, carve_summary, event_entry
from shared.events.outbox import Notifier, announce
from shared.lifecycle import session_keys
from shared.protocol import StartRequest
from shared.redis_client import REDIS_OUTAGE, is_cluster

if TYPE_CHECKING:
    from services.ingest.admission import Admission

log = logging.getLogger(__name__)

# Redis bitmaps hold 2^32 bits; GETBIT/SETBIT refuse offsets past them.
MAX_BIT = 2**32


class NeverIssued(UnknownSession):
    """A session id no carve ever had (not one of an ended carve): a guess, or a forgery.

    Answered exactly as any unknown session; only the ingest's count of guesses per
    device (abuse.py) tells them apart, so that an honest host still sending blocks of a
    carve that ended (osquery 5.21 and older skip a refused block and go on) is never
    counted as guessing."""


def _trigger_owed(
    confirmed: bytes | None, block_count: bytes | None, received: bytes | None
) -> bool:
    """From a session hash's fields: every block is confirmed and the "carve fully received"
    trigger is not recorded yet. A block is then not "seen": marking it again sends the
    trigger (see Marked.COMPLETES)."""
    return received is None and confirmed is not None and confirmed == block_count


def redact(session_id: str) -> str:
    """Enough of a session id to follow it in logs, not enough to use it."""
    return session_id[:6] + "…"


@dataclass(frozen=True, slots=True)
class Session:
    session_id: str
    carve_id: str
    request_id: str
    block_count: int
    block_size: int
    carve_size: int
    node_key_sha256: str
    # The start sent its node key in a header (osquery 5.23+): so must every block.
    node_key_required: bool = False
    # SHA-256 fingerprint of the device certificate that started the carve ("" for none).
    device_sha256: str = ""

    def node_key_matches(self, node_key: str) -> bool:
        """False when the block's node key differs from the start's, or is missing where
        the start's client sends it with every request."""
        if not node_key:
            return not (self.node_key_required and self.node_key_sha256)
        if not self.node_key_sha256:
            return True
        return hmac.compare_digest(self.node_key_sha256, digest(node_key))

    def device_matches(self, fingerprint: str) -> bool:
        """False when the carve was started with a device certificate and this is not it."""
        return not self.device_sha256 or hmac.compare_digest(self.device_sha256, fingerprint)

    @classmethod
    def from_carve(cls, doc: CarveDoc) -> Session:
        return cls(
            session_id=doc["session_id"],
            carve_id=doc["_id"],
            request_id=doc["request_id"],
            block_count=doc["block_count"],
            block_size=doc["block_size"],
            carve_size=doc["carve_size"],
            node_key_sha256=stored_node_key(doc),
            node_key_required=bool(doc.get("node_key_in_header")),
            device_sha256=(doc.get("device") or {}).get("fingerprint_sha256", ""),
        )


_OUTAGES: tuple[type[Exception], ...] = (*REDIS_OUTAGE, ConnectionFailure)


@asynccontextmanager
async def _backend(name: str) -> AsyncIterator[None]:
    try:
        yield
    except _OUTAGES as exc:
        raise Unavailable(name, exc.__class__.__name__) from exc


# Records blocks, their time (the janitor's idle test) and keeps the keys alive, in one round
# trip for every block that concurrent requests confirmed meanwhile: KEYS are (meta, bitmap)
# pairs, ARGV the TTL, the time in ms, then one block id per pair. Returns each bit's old
# value, or -1 when that session is gone (ended by the janitor, or lost with Redis): its
# bitmap is then not recreated on its own. A new bit also counts in the hash's `confirmed`;
# while that equals `block_count` and no trigger is recorded (`received`), a block gets 2:
# every block of the carve is in RabbitMQ, and the caller sends the trigger (Marked.COMPLETES).
_MARK = """
local ttl, now = ARGV[1], ARGV[2]
local result = {}
for i = 1, #KEYS / 2 do
  local meta, bits = KEYS[2 * i - 1], KEYS[2 * i]
  if redis.call('EXISTS', meta) == 0 then
    result[i] = -1
  else
    local old = redis.pcall('SETBIT', bits, ARGV[i + 2], 1)
    if type(old) == 'table' then
      result[i] = -2  -- this block only: the others of the batch go on
    else
      result[i] = old
      local confirmed
      if old == 0 then
        confirmed = redis.call('HINCRBY', meta, 'confirmed', 1)
      else
        confirmed = tonumber(redis.call('HGET', meta, 'confirmed') or '0')
      end
      local fields = redis.call('HMGET', meta, 'block_count', 'received')
      if confirmed == tonumber(fields[1]) and not fields[2] then
        result[i] = 2
      end
      redis.call('HSET', meta, 'last_block_at', now)
      redis.call('EXPIRE', bits, ttl)
      redis.call('EXPIRE', meta, ttl)
    end
  end
end
return result
"""


# Records the trigger, only on a session that still exists (a hash recreated here would lack
# the session's fields and never expire).
_RECEIVED = """
if redis.call('EXISTS', KEYS[1]) == 1 then
  redis.call('HSET', KEYS[1], 'received', ARGV[1])
end
"""


class Marked(enum.Enum):
    """What recording a confirmed block found."""

    FRESH = 0
    DUPLICATE = 1
    # Every block of the carve is now confirmed and no "carve fully received" trigger is
    # recorded yet: the caller publishes it, then calls ``received``. Until then every
    # block of the carve comes back COMPLETES (a re-send after a crash in between sends the
    # trigger again; the trigger is idempotent). A session rebuilt after Redis lost it
    # counts from zero and never gets here: the janitor finishes such a carve.
    COMPLETES = 2


class SessionStore:
    """Sessions and their block bitmaps in Redis, rebuilt from the carves collection if lost."""

    def __init__(
        self,
        redis: Redis,
        carves: AsyncCollection[CarveDoc],
        *,
        prefix: str,
        ttl: int,
        admission: Admission | None = None,
        cache_size: int = 50_000,
        cache_ttl: float = 10.0,
        events: Notifier | None = None,
    ) -> None:
        self._redis = redis
        self._admission = admission
        self._events = events
        self._carves = carves
        self._prefix = prefix
        self._ttl = ttl
        self._cluster = is_cluster(redis)
        self._mark = redis.register_script(_MARK)
        self._received = redis.register_script(_RECEIVED)
        self._marks = Coalescer[tuple[str, int], int](self._mark_many, 256, inline=True)
        # On a Redis Cluster, one per slot (created on first use): a script's keys must share
        # a slot, and a primary that stalls then holds up only the blocks of its own slots.
        self._slot_marks: dict[int, Coalescer[tuple[str, int], int]] = {}
        self._cache: TTLCache[str, Session] = TTLCache(maxsize=cache_size, ttl=cache_ttl)

    def _keys(self, session_id: str) -> tuple[str, str]:
        return session_keys(self._prefix, session_id)

    async def start(self, start: StartRequest, origin: Origin | None = None) -> tuple[str, bool]:
        """Open a session for ``start``; return (session_id, resumed).

        A start repeated with identical fields, node key and device (osquery
        retrying after a lost reply) gets the same session back; any other
        reuse of a carve_id is refused. A new carve must first fit its host's
        share (``Admission``).
        """
        origin = origin or Origin(node_key_sha256=digest(start.node_key))
        async with _backend("mongodb"):
            doc = await self._carves.find_one({"_id": start.carve_id})
        resumed = doc is not None
        if doc is None:
            doc, resumed = await self._create(start, origin)
        if resumed and (doc["status"] != Status.RECEIVING or not same_start(doc, start, origin)):
            raise Conflict(f"carve_id {start.carve_id} is already used (status {doc['status']})")
        session = Session.from_carve(doc)
        if resumed:
            await self._save_while_receiving(session)
        else:
            await self._save(session)
        # Its host's first block then needs no read (nor a device's lookup budget: abuse.py).
        self._cache[session.session_id] = session
        return doc["session_id"], resumed

    async def _create(self, start: StartRequest, origin: Origin) -> tuple[CarveDoc, bool]:
        """Insert a new carve: (its document, resumed), resumed when a concurrent start won."""
        if self._admission is not None:
            async with _backend("redis"):
                await self._admission.admit(
                    origin.host, start.carve_id, start.carve_size, start.block_count
                )
        # 192 random bits, [A-Za-z0-9_-]
        now = datetime.now(UTC)
        doc = new_carve_doc(start, secrets.token_urlsafe(24), now, origin)
        doc["outbox"] = [event_entry(EventType.STARTED, carve_summary(doc), now)]
        try:
            async with _backend("mongodb"):
                try:
                    await self._carves.insert_one(doc)
                    announce(self._events, start.carve_id)
                    return doc, False
                except DuplicateKeyError:  # a concurrent start of the same carve won
                    won = await self._carves.find_one({"_id": start.carve_id}) or doc
        except Unavailable:
            await self._give_back(origin.host, start.carve_id)
            raise
        if not same_start(won, start, origin):  # not ours: refused as a conflict
            await self._give_back(origin.host, start.carve_id)
        return won, True

    async def _give_back(self, host: str, carve_id: str) -> None:
        if self._admission is not None:
            async with _backend("redis"):
                await self._admission.release(host, carve_id)

    async def _save(self, session: Session) -> None:
        meta, _bits = self._keys(session.session_id)
        async with _backend("redis"), self._redis.pipeline(transaction=False) as pipe:
            pipe.hset(
                meta,
                mapping={
                    "carve_id": session.carve_id,
                    "request_id": session.request_id,
                    "block_count": session.block_count,
                    "block_size": session.block_size,
                    "carve_size": session.carve_size,
                    "node_key_sha256": session.node_key_sha256,
                    "node_key_required": int(session.node_key_required),
                    "device_sha256": session.device_sha256,
                },
            )
            pipe.expire(meta, self._ttl)
            await pipe.execute()

    def cached(self, session_id: str) -> Session | None:
        """The session if this process holds it now (no round trip), else None."""
        return self._cache.get(session_id)

    async def get(self, session_id: str, block_hint: int | None = None) -> tuple[Session, bool]:
        """The session, and whether block ``block_hint`` is known to be confirmed already.

        From the cache: no round trip, and "not known" (a duplicate is then
        published again and stored once). Otherwise one round trip for both.
        """
        if (cached := self._cache.get(session_id)) is not None:
            return cached, False
        meta, bits = self._keys(session_id)
        if block_hint is not None and not 0 <= block_hint < MAX_BIT:
            block_hint = None  # no bitmap reaches there (GETBIT would refuse the offset)
        async with _backend("redis"), self._redis.pipeline(transaction=False) as pipe:
            pipe.hgetall(meta)
            pipe.getbit(bits, block_hint if block_hint is not None else 0)
            fields, seen = await pipe.execute()
        if fields:
            session = _parse(session_id, fields)
            self._cache[session_id] = session
            owed = _trigger_owed(
                fields.get(b"confirmed"), fields.get(b"block_count"), fields.get(b"received")
            )
            return session, bool(seen) and block_hint is not None and not owed
        # A complete carve has every block: a re-send (its reply was lost) is a duplicate.
        return await self._recover(session_id)

    async def _recover(self, session_id: str) -> tuple[Session, bool]:
        """The session of a carve still receiving, rebuilt in Redis; or of a complete carve,
        not rebuilt (True: every block of it is stored). UnknownSession otherwise."""
        async with _backend("mongodb"):
            # By its hash: an ended carve keeps only that (older documents the id itself).
            doc = await self._carves.find_one(
                {"$or": [{"session_sha256": digest(session_id)}, {"session_id": session_id}]}
            )
        if doc is None:
            raise NeverIssued("unknown or ended session")  # the same words: no oracle
        if doc["status"] not in (Status.RECEIVING, Status.COMPLETE):
            raise UnknownSession("unknown or ended session")
        session = Session.from_carve({**doc, "session_id": session_id})
        if doc["status"] == Status.COMPLETE:
            return session, True
        await self._save_while_receiving(session)
        log.warning("session %s of carve %s rebuilt from MongoDB", redact(session_id), doc["_id"])
        return session, False

    async def _save_while_receiving(self, session: Session) -> None:
        """Save a session, and take it back if its carve ended meanwhile.

        The janitor ends a carve (status first, then its Redis keys); a save that
        raced with it would bring the session back. Checking after the save closes
        that gap whatever the order.
        """
        await self._save(session)
        async with _backend("mongodb"):
            still = await self._carves.count_documents(
                {"_id": session.carve_id, "status": Status.RECEIVING.value}, limit=1
            )
        if not still:
            async with _backend("redis"):
                await self._redis.delete(*self._keys(session.session_id))
            raise UnknownSession("the carve has ended")

    async def seen(self, session_id: str, block_id: int) -> bool:
        """Whether block ``block_id`` is confirmed already (one round trip); as in get(),
        not while the carve's trigger is owed (marking a block again sends it)."""
        meta, bits = self._keys(session_id)
        async with _backend("redis"), self._redis.pipeline(transaction=False) as pipe:
            pipe.hmget(meta, "confirmed", "block_count", "received")
            pipe.getbit(bits, block_id)
            (confirmed, block_count, received), seen = await pipe.execute()
        return bool(seen) and not _trigger_owed(confirmed, block_count, received)

    async def mark(self, session_id: str, block_id: int) -> Marked:
        """Record block ``block_id`` as confirmed (see Marked).

        A session missing from Redis is rebuilt if its carve still receives
        (Redis lost it), and refused with UnknownSession if the carve ended
        (a complete carve: DUPLICATE, every block of it is stored).
        """
        marks = self._marks_of(session_id)
        old = await marks.submit((session_id, block_id))
        if old == -1:
            self._cache.pop(session_id, None)
            _, complete = await self._recover(session_id)
            if complete:
                return Marked.DUPLICATE
            old = await marks.submit((session_id, block_id))
            if old == -1:  # ended again meanwhile (the janitor): never answer "stored"
                raise UnknownSession("the carve has ended")
        return Marked(old) if old in (0, 1, 2) else Marked.DUPLICATE

    async def received(self, session_id: str) -> None:
        """Record that the carve's "fully received" trigger is in RabbitMQ (see Marked)."""
        meta, _bits = self._keys(session_id)
        async with _backend("redis"):
            await self._received(keys=[meta], args=[int(time.time() * 1000)])

    def _marks_of(self, session_id: str) -> Coalescer[tuple[str, int], int]:
        if not self._cluster:
            return self._marks
        slot = key_slot(self._keys(session_id)[0].encode())
        marks = self._slot_marks.get(slot)
        if marks is None:
            marks = self._slot_marks[slot] = Coalescer(self._mark_many, 256, inline=True)
        return marks

    async def _mark_many(self, blocks: Sequence[tuple[str, int]]) -> list[int | BaseException]:
        """One script call for the blocks of many concurrent requests (see ``_MARK``), all of
        one slot on a Redis Cluster (``_marks_of``)."""
        olds = await self._mark_group(blocks, int(time.time() * 1000))  # ms: the idle test
        return [
            InvalidRequest(f"block_id {block_id} cannot be recorded") if old == -2 else old
            for (_, block_id), old in zip(blocks, olds, strict=True)
        ]

    async def _mark_group(self, blocks: Sequence[tuple[str, int]], now: int) -> list[int]:
        keys = [key for session_id, _ in blocks for key in self._keys(session_id)]
        args = [self._ttl, now, *(block_id for _, block_id in blocks)]
        try:  # _backend("redis"), without a generator's machinery on every block
            return [int(old) for old in await self._mark(keys=keys, args=args)]
        except _OUTAGES as exc:
            raise Unavailable("redis", exc.__class__.__name__) from exc


def _parse(session_id: str, fields: dict[bytes, bytes]) -> Session:
    get = {k.decode(): v.decode() for k, v in fields.items()}
    return Session(
        session_id=session_id,
        carve_id=get["carve_id"],
        request_id=get["request_id"],
        block_count=int(get["block_count"]),
        block_size=int(get["block_size"]),
        carve_size=int(get["carve_size"]),
        node_key_sha256=get.get("node_key_sha256", ""),
        node_key_required=get.get("node_key_required") == "1",
        device_sha256=get.get("device_sha256", ""),
    )
