"""Carve metadata: the ``carves`` collection, read by every service.

One document per carve, ``_id`` = the carve_id osquery chose (the id a
responder knows). GridFS uses the same value as ``files_id``, so a carve's
chunks are found without a lookup. ``node_key`` and ``session_id`` are
private: the public model below has no field for them, so no API built on it
can return them.
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Any

from pydantic import BaseModel, ConfigDict

from shared.mongo import Document
from shared.protocol import StartRequest

COLLECTION = "carves"


class Status(StrEnum):
    """A carve's state; see the README's "Carve lifecycle" for the transitions."""

    RECEIVING = "receiving"  # blocks arriving
    COMPLETE = "complete"  # every block stored, hashed: downloadable
    FAILED = "failed"  # idle with blocks missing, or corrupt: partial chunks kept for a while
    EXPIRED = "expired"  # past retention: bytes deleted, this document kept as a tombstone
    DELETED = "deleted"  # deleted on purpose by an administrator: tombstone as well


# States whose bytes are gone for good.
ENDED = frozenset({Status.EXPIRED, Status.DELETED})


class Compression(StrEnum):
    NONE = "none"
    ZSTD = "zstd"


class CarveRecord(BaseModel):
    """What may be shown about a carve (no node_key, no session_id)."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    carve_id: str
    request_id: str
    status: Status
    block_count: int
    block_size: int
    carve_size: int
    blocks_received: int = 0
    compression: Compression | None = None
    sha256: str | None = None
    filename: str | None = None
    created_at: datetime
    updated_at: datetime
    completed_at: datetime | None = None
    failure_reason: str | None = None
    failed_at: datetime | None = None
    expired_at: datetime | None = None
    deleted_at: datetime | None = None
    deleted_by: str | None = None

    @classmethod
    def from_doc(cls, doc: Document) -> CarveRecord:
        return cls.model_validate({**doc, "blocks_received": blocks_received(doc)})


def blocks_received(doc: Document) -> int:
    """Blocks stored so far: the assemblers' running count, or the finalizer's exact count.

    The running count is written once a second by each assembler and can fall
    short after a crash; the finalizer counts chunks exactly when it looks.
    Whichever is higher is right (neither ever counts a chunk twice).
    """
    counted = max(int(doc.get("blocks_received") or 0), int(doc.get("chunks_counted") or 0))
    return min(counted, int(doc["block_count"]))


def new_carve_doc(start: StartRequest, session_id: str, now: datetime) -> Document:
    """The document written when osquery starts a carve."""
    return {
        "_id": start.carve_id,
        "carve_id": start.carve_id,
        "session_id": session_id,
        "request_id": start.request_id,
        "node_key": start.node_key,
        "block_count": start.block_count,
        "block_size": start.block_size,
        "carve_size": start.carve_size,
        "blocks_received": 0,
        "status": Status.RECEIVING.value,
        "compression": None,
        "sha256": None,
        "filename": None,
        "created_at": now,
        "updated_at": now,
        "completed_at": None,
    }


def same_start(doc: Document, start: StartRequest) -> bool:
    """True when ``start`` repeats the request that created ``doc`` (a retried start)."""
    fields: dict[str, Any] = start.model_dump()
    return all(doc.get(name) == value for name, value in fields.items())


def archive_filename(carve_id: str, compression: Compression) -> str:
    suffix = ".tar.zst" if compression is Compression.ZSTD else ".tar"
    return f"carve_{carve_id}{suffix}"
