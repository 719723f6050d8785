"""MongoDB connection (PyMongo's async API) and the indexes the design relies on."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

from pymongo import ASCENDING, AsyncMongoClient
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import BulkWriteError, ConnectionFailure, OperationFailure

from shared.errors import Unavailable
from shared.settings import MongoSettings

Document = dict[str, Any]


def make_client(settings: MongoSettings) -> AsyncMongoClient[Document]:
    """A client that fails fast: a dead MongoDB must not hold a request or a message forever."""
    ms = int(settings.mongo_timeout * 1000)
    return AsyncMongoClient(
        settings.mongo_url.get_secret_value(),
        tz_aware=True,
        serverSelectionTimeoutMS=ms,
        connectTimeoutMS=ms,
        socketTimeoutMS=max(ms * 6, 30_000),
        appname="osquery-carve-server",
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
    # A carve's accesses through campaign exports, for its custody record.
    await db["audit"].create_index([("carve_ids", ASCENDING)], sparse=True)
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
