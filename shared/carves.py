"""Carve metadata: the ``carves`` collection, read by every service.

One document per carve, ``_id`` = the carve_id osquery chose (the id a
responder knows). GridFS uses the same value as ``files_id``, so a carve's
chunks are found without a lookup. The node key is kept only as a SHA-256,
the session id in clear only while the carve receives (and as a SHA-256
after); both are private: the public model below has no field for them, so
no API built on it can return them.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import TYPE_CHECKING, Any, NotRequired, TypedDict, cast

from pydantic import BaseModel, ConfigDict

from shared.protocol import StartRequest
from shared.search import display_host, search_terms
from shared.timefmt import UtcTime

if TYPE_CHECKING:  # carvectl imports Status from here: no pymongo at run time for it
    from pymongo.asynchronous.collection import AsyncCollection
    from pymongo.asynchronous.database import AsyncDatabase

    from shared.events.outbox import OutboxEntry

COLLECTION = "carves"


class Status(StrEnum):
    """A carve's state; see docs/operations.md, "Carve lifecycle", for the transitions."""

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


class LeaseDoc(TypedDict):
    """A finalizer's hold on a carve (``shared.finalize``): who, and until when."""

    owner: str
    until: datetime


class HoldDoc(TypedDict):
    """One legal hold on a carve (``shared.holds``), as stored in its ``holds``."""

    case: str
    reason: str
    placed_by: str
    placed_at: datetime


class CarveDoc(TypedDict):
    """A document of the ``carves`` collection, as stored (``new_carve_doc`` writes one).

    Read through ``carves_of(db)``, so that mypy checks every ``doc["..."]``. A read with
    a projection holds only the fields it names: read only those. ``NotRequired`` fields
    come later in a carve's life, or are missing from documents older than they are.
    """

    _id: str  # the carve_id osquery chose; GridFS's files_id of its chunks
    carve_id: str
    request_id: str
    session_id: NotRequired[str]  # in clear only while receiving
    session_sha256: str
    node_key_sha256: NotRequired[str]  # older documents: node_key, in clear
    node_key: NotRequired[str]
    node_key_in_header: NotRequired[bool]
    device: NotRequired[dict[str, str] | None]  # DeviceRecord's fields
    host: NotRequired[str]  # the identity its share is counted under
    host_name: NotRequired[str | None]  # the display host (shared.search.display_host)
    search: NotRequired[list[str]]  # trigrams of the host and carved paths (shared.search)
    block_count: int
    block_size: int
    carve_size: int
    blocks_received: int  # the assemblers' running count
    chunks_counted: NotRequired[int]  # the finalizer's or the janitor's exact count
    status: str  # a Status value
    compression: str | None  # a Compression value, once complete
    sha256: str | None
    crc32: NotRequired[int]  # the archive's CRC-32, once an export computed it (ZIP entries)
    filename: str | None
    created_at: datetime
    updated_at: datetime
    completed_at: datetime | None
    finalize_lease: NotRequired[LeaseDoc]
    manifest: NotRequired[dict[str, Any]]  # ManifestSummary's fields
    failure_reason: NotRequired[str]
    failed_at: NotRequired[datetime]
    expired_at: NotRequired[datetime]
    expired_from: NotRequired[str]
    deleted_at: NotRequired[datetime]
    deleted_by: NotRequired[str]
    deleted_from: NotRequired[str]
    outbox: NotRequired[list[OutboxEntry]]  # pending events (shared.events.outbox)
    outbox_claim: NotRequired[datetime]  # a relay's sweep holds them until then
    triage: NotRequired[dict[str, Any]]  # the scan on arrival (shared.triage, carve-triage)
    triage_history: NotRequired[list[dict[str, Any]]]  # earlier verdicts, the last few
    holds: NotRequired[list[HoldDoc]]  # legal holds: no path deletes its bytes (shared.holds)
    cases: NotRequired[list[str]]  # case ids responders tagged it with
    hold_log: NotRequired[list[dict[str, Any]]]  # holds placed and released (shared.holds)
    expires_at: NotRequired[datetime | None]  # an administrator's expiry, else the retention's
    # The carve's data key as Vault Transit wrapped it, and its Transit key (shared.crypto).
    encryption: NotRequired[dict[str, Any]]


def carves_of(db: AsyncDatabase[Any]) -> AsyncCollection[CarveDoc]:
    """The ``carves`` collection of ``db``, its documents typed as CarveDoc."""
    return cast("AsyncCollection[CarveDoc]", db[COLLECTION])


class DeviceRecord(BaseModel):
    """The device certificate that started a carve, as the TLS proxy verified it."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    common_name: str
    subject_dn: str
    serial: str
    fingerprint_sha256: str


class ManifestSummary(BaseModel):
    """What the finalizer found in the archive (the manifest itself: ``shared.manifest``)."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    members: int
    truncated: bool
    error: str | None = None
    files: int | None = None  # regular files (None: finalized before this was counted)
    paths: list[str] = []  # the first regular files' paths: what was carved (bounded)


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
    created_at: UtcTime
    updated_at: UtcTime
    completed_at: UtcTime | None = None
    failure_reason: str | None = None
    failed_at: UtcTime | None = None
    expired_at: UtcTime | None = None
    deleted_at: UtcTime | None = None
    deleted_by: str | None = None
    device: DeviceRecord | None = None
    manifest: ManifestSummary | None = None
    host: str | None = None  # the display host: device CN, else a node key fingerprint
    paths: list[str] = []  # what was carved: the first paths of its manifest
    path_count: int | None = None  # how many files it holds (None: not known yet)

    @classmethod
    def from_doc(cls, doc: CarveDoc) -> CarveRecord:
        summary = doc.get("manifest") or {}
        return cls.model_validate(
            {
                **doc,
                "blocks_received": blocks_received(doc),
                "host": display_host(doc),  # not the private ``host`` (a share's key)
                "paths": summary.get("paths") or [],
                "path_count": summary.get("files"),
            }
        )


def blocks_received(doc: CarveDoc) -> int:
    """Blocks stored so far: the assemblers' running count, or the finalizer's exact count.

    The running count is written once a second by each assembler and can fall
    short after a crash; the finalizer counts chunks exactly when it looks.
    Whichever is higher is right (neither ever counts a chunk twice).
    """
    counted = max(int(doc.get("blocks_received") or 0), int(doc.get("chunks_counted") or 0))
    return min(counted, int(doc["block_count"]))


def digest(secret: str) -> str:
    """SHA-256 of a node key or session id, as stored; "" for none."""
    return hashlib.sha256(secret.encode()).hexdigest() if secret else ""


@dataclass(frozen=True)
class Origin:
    """Who started a carve: what binds its blocks to the same host."""

    node_key_sha256: str = ""
    # The start carried the node key in an Authorization header (osquery 5.23+, which sends
    # it with every block too): a block without one is then refused.
    node_key_in_header: bool = False
    device: dict[str, str] | None = None  # DeviceRecord fields
    host: str = ""  # the identity its share is counted under (services/ingest/device.py)

    @property
    def device_sha256(self) -> str:
        return self.device["fingerprint_sha256"] if self.device else ""


def new_carve_doc(
    start: StartRequest, session_id: str, now: datetime, origin: Origin | None = None
) -> CarveDoc:
    """The document written when osquery starts a carve."""
    origin = origin or Origin(node_key_sha256=digest(start.node_key))
    host_name = display_host({"device": origin.device, "node_key_sha256": origin.node_key_sha256})
    return {
        "_id": start.carve_id,
        "carve_id": start.carve_id,
        "session_id": session_id,
        "session_sha256": digest(session_id),
        "request_id": start.request_id,
        "node_key_sha256": origin.node_key_sha256,
        "node_key_in_header": origin.node_key_in_header,
        "device": origin.device,
        "host": origin.host,
        "host_name": host_name,
        "search": search_terms(host_name, []),
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


_GEOMETRY = ("carve_id", "request_id", "block_count", "block_size", "carve_size")


def same_start(doc: CarveDoc, start: StartRequest, origin: Origin | None = None) -> bool:
    """True when ``start`` repeats the request that created ``doc`` (a retried start):
    the same fields, the same node key and the same device certificate."""
    origin = origin or Origin(node_key_sha256=digest(start.node_key))
    fields: dict[str, Any] = start.model_dump(include=set(_GEOMETRY))
    if not all(doc.get(name) == value for name, value in fields.items()):
        return False
    stored_device = (doc.get("device") or {}).get("fingerprint_sha256", "")
    return stored_node_key(doc) == origin.node_key_sha256 and stored_device == origin.device_sha256


def stored_node_key(doc: CarveDoc) -> str:
    """The SHA-256 of the node key that started a carve (older documents kept it in clear)."""
    return str(doc.get("node_key_sha256") or digest(doc.get("node_key") or ""))


def archive_filename(carve_id: str, compression: Compression) -> str:
    suffix = ".tar.zst" if compression is Compression.ZSTD else ".tar"
    return f"carve_{carve_id}{suffix}"
