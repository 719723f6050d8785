"""MongoDB connection (PyMongo's async API) and the indexes the design relies on."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from typing import Any

from pymongo import ASCENDING, AsyncMongoClient, ReadPreference
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import BulkWriteError, ConnectionFailure, OperationFailure
from pymongo.monitoring import CommandListener
from pymongo.read_concern import ReadConcern

from shared.errors import Unavailable
from shared.settings import MongoSettings

Document = dict[str, Any]


def make_client(
    settings: MongoSettings, *, event_listeners: Sequence[CommandListener] = ()
) -> AsyncMongoClient[Document]:
    """A client that fails fast (a dead MongoDB must not hold a request or a message forever)
    with the replica-set settings the invariants rely on, set here rather than left to the
    URL or the driver's defaults (docs/deployment.md, "MongoDB in production"):

    - every write waits for a majority of the replica set (``w: "majority"``, journaled on
      the members by the server's default): a block is acknowledged to a host only once a
      failover cannot roll its chunk back. ``wtimeout`` (2 x CARVE_MONGO_TIMEOUT) turns a
      majority that cannot be reached into an error (retried as an outage), not a hang;
    - retryable writes and reads: one retry across a primary's election or a dropped
      connection, so a failover costs a pause, not an error;
    - reads from the primary with read concern ``local`` (they see every acknowledged write,
      which the workers' conditional updates need); the download service reads with
      ``responder_reads`` instead.
    """
    ms = int(settings.mongo_timeout * 1000)
    return AsyncMongoClient(
        settings.mongo_url.get_secret_value(),
        tz_aware=True,
        serverSelectionTimeoutMS=ms,
        connectTimeoutMS=ms,
        socketTimeoutMS=max(ms * 6, 30_000),
        appname="osquery-carve-server",
        w="majority",
        wTimeoutMS=2 * ms,
        retryWrites=True,
        retryReads=True,
        readPreference="primary",
        readConcernLevel="local",
        event_listeners=list(event_listeners),
    )


def responder_reads(db: AsyncDatabase[Document]) -> AsyncDatabase[Document]:
    """``db`` as the download service reads it: what responders see was written to a majority
    (read concern ``majority``: a carve shown complete, and its chunks, can never be rolled
    back by a failover), from the primary, or from a secondary while there is none
    (``primaryPreferred``: downloads and listings go on during an election; a carve that
    completed in the last moments may read as still receiving there, never the reverse).
    Chunks never change once written, so a secondary serves the same bytes."""
    return db.with_options(
        read_preference=ReadPreference.PRIMARY_PREFERRED, read_concern=ReadConcern("majority")
    )


async def ensure_indexes(db: AsyncDatabase[Document], bucket: str) -> None:
    """Create the indexes the invariants depend on (idempotent).

    The unique (files_id, n) index is what makes chunk writes idempotent:
    a redelivered or duplicated block is a duplicate-key no-op.
    """
    await db[f"{bucket}.chunks"].create_index(
        [("files_id", ASCENDING), ("n", ASCENDING)], unique=True
    )
    await db[f"{bucket}.files"].create_index([("filename", ASCENDING), ("uploadDate", ASCENDING)])
    await db["carves"].create_index([("session_id", ASCENDING)])
    await db["carves"].create_index([("session_sha256", ASCENDING)])
    await db["carves"].create_index([("device.common_name", ASCENDING), ("created_at", ASCENDING)])
    await db["carves"].create_index([("status", ASCENDING), ("updated_at", ASCENDING)])
    await db["carves"].create_index([("created_at", ASCENDING)])
    await db["audit"].create_index([("carve_id", ASCENDING), ("time", ASCENDING)])
    # The console's lookups (request id, audit by time) and used download tickets (TTL).
    await db["carves"].create_index([("request_id", ASCENDING)])
    await db["audit"].create_index([("time", ASCENDING)])
    # A carve's accesses through campaign exports, for its custody record; carves by case.
    await db["audit"].create_index([("carve_ids", ASCENDING)], sparse=True)
    await db["carves"].create_index([("cases", ASCENDING)], sparse=True)
    await db["carves"].create_index([("holds.case", ASCENDING)], sparse=True)
    # Pending carve events by time (shared.events.outbox), for the relays' sweep.
    await db["carves"].create_index([("outbox.time", ASCENDING)])
    await db["download_tickets"].create_index([("until", ASCENDING)], expireAfterSeconds=0)
    # The carve list's search (trigrams of host and paths: shared.search) and its sort orders.
    await db["carves"].create_index([("search", ASCENDING)])
    for key in ("created_at", "carve_size", "status", "host_name", "request_id"):
        await db["carves"].create_index([(key, ASCENDING), ("_id", ASCENDING)])


# Server errors that are about the document itself: retrying the same write cannot help.
DOCUMENT_ERRORS = frozenset({2, 10334, 17419, 17420})  # BadValue, BSONObjectTooLarge, too large


def is_document_error(code: int | None) -> bool:
    return code in DOCUMENT_ERRORS


@contextlib.contextmanager
def transient_on_outage(what: str) -> Iterator[None]:
    """Turn MongoDB failures into Unavailable, so the work is kept and retried.

    Unreachable, timed out, or an error on the server's side ("internal
    server error", a failover): the block is valid, the store is not, and the
    message must wait in the queue rather than be given up. Only errors about
    the document itself (DOCUMENT_ERRORS, handled by the caller) are final.
    """
    try:
        yield
    except ConnectionFailure as exc:
        reason = f"unavailable during {what}: {exc.__class__.__name__}"
        raise Unavailable("MongoDB", reason) from exc
    except OperationFailure as exc:
        if isinstance(exc, BulkWriteError) or is_document_error(exc.code):
            raise
        raise Unavailable("MongoDB", f"failed during {what}: {exc.code} {exc}") from exc
