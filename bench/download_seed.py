"""The download benchmark's carve, seeded into MongoDB the way the assembler leaves it, and the
raw read ceiling of the same SecantusDB."""

from __future__ import annotations

import asyncio
import hashlib
import tarfile
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bson.binary import Binary
from pymongo.asynchronous.database import AsyncDatabase

from bench.procstats import backend_cpu
from bench.render import MB, MiB
from clients.osquery_sim import (
    build_synthetic_archive,
    carve_member_name,
)
from devstack.backends import Backends
from shared.carves import CarveDoc, Compression, Status, archive_filename, carves_of, new_carve_doc
from shared.finalize import files_doc
from shared.mongo import Document, ensure_indexes
from shared.protocol import StartRequest

BLOCK_SIZE = 1 * MiB
INSERT_BATCH = 16  # chunks per insert_many
CEILING_CHUNKS = 256  # chunks read raw for the read ceiling (256 MiB at most)
MEMBER_PATH = "/var/log/evidence.bin"
BUCKET = "archives"
READ_PIECE = 1 * MiB


@dataclass(frozen=True)
class Carve:
    carve_id: str
    block_size: int
    block_count: int
    archive_size: int
    archive_sha256: str
    member_path: str
    member_size: int
    member_sha256: str


def member_digest(archive: Path, name: str) -> tuple[int, str]:
    """Size and SHA-256 of one member, read back from the tar with the stdlib tarfile."""
    digest, size = hashlib.sha256(), 0
    with tarfile.open(archive, "r:") as tar:
        reader = tar.extractfile(tar.getmember(name))
        if reader is None:
            raise RuntimeError(f"{name} is not a regular file in {archive}")
        with reader:
            while piece := reader.read(READ_PIECE):
                digest.update(piece)
                size += len(piece)
    return size, digest.hexdigest()


async def insert_chunks(
    db: AsyncDatabase[Document], carve_id: str, archive: Path, block_size: int
) -> tuple[int, int, str]:
    """The archive as GridFS chunks, INSERT_BATCH per insert_many: (size, chunks, sha256)."""
    chunks = db[f"{BUCKET}.chunks"]
    digest, size, n = hashlib.sha256(), 0, 0
    with archive.open("rb") as fh:
        while True:
            docs: list[Document] = []
            while len(docs) < INSERT_BATCH and (data := fh.read(block_size)):
                digest.update(data)
                docs.append({"files_id": carve_id, "n": n, "data": Binary(data)})
                n, size = n + 1, size + len(data)
            if not docs:
                return size, n, digest.hexdigest()
            await chunks.insert_many(docs)


def carve_documents(carve: Carve, now: datetime) -> tuple[CarveDoc, Document]:
    """The ``carves`` document and the GridFS files document of a finalized carve."""
    filename = archive_filename(carve.carve_id, Compression.NONE)
    start = StartRequest(
        block_count=carve.block_count,
        block_size=carve.block_size,
        carve_size=carve.archive_size,
        carve_id=carve.carve_id,
        request_id=f"bench-{carve.carve_id[:8]}",
        node_key=uuid.uuid4().hex,
    )
    carve_doc = new_carve_doc(start, uuid.uuid4().hex, now)
    carve_doc.update(
        {
            "blocks_received": carve.block_count,
            "status": Status.COMPLETE.value,
            "compression": Compression.NONE.value,
            "sha256": carve.archive_sha256,
            "filename": filename,
            "completed_at": now,
        }
    )
    sha = carve.archive_sha256
    files = files_doc(
        carve_doc, filename=filename, sha256=sha, compression=Compression.NONE, now=now
    )
    return carve_doc, files


async def seed(
    db: AsyncDatabase[Document], size: int, workdir: Path, backends: Backends
) -> tuple[Carve, dict[str, Any]]:
    """Build the tar, store it as a complete carve; the carve and how long each step took."""
    carve_id = str(uuid.uuid4())
    member_name = carve_member_name(carve_id, MEMBER_PATH)
    started = time.perf_counter()
    archive = await asyncio.to_thread(
        build_synthetic_archive, size, workdir, carve_guid=carve_id, path=MEMBER_PATH
    )
    built = time.perf_counter()
    member_size, member_sha = await asyncio.to_thread(member_digest, archive, member_name)
    hashed = time.perf_counter()
    await ensure_indexes(db, BUCKET)
    cpu_before = backend_cpu(backends)
    archive_size, count, sha = await insert_chunks(db, carve_id, archive, BLOCK_SIZE)
    carve = Carve(
        carve_id, BLOCK_SIZE, count, archive_size, sha, MEMBER_PATH, member_size, member_sha
    )
    carve_doc, files_doc = carve_documents(carve, datetime.now(UTC))
    await db[f"{BUCKET}.files"].insert_one(files_doc)
    await carves_of(db).insert_one(carve_doc)
    inserted = time.perf_counter()
    cpu_after = backend_cpu(backends)
    archive.unlink()
    stats = {
        "build_archive_s": round(built - started, 2),
        "hash_member_s": round(hashed - built, 2),
        "insert_s": round(inserted - hashed, 2),
        "insert_mb_per_s": round(archive_size / MB / (inserted - hashed), 2),
        "insert_batch_chunks": INSERT_BATCH,
        "secantus_cpu_s": round(cpu_after["secantus"] - cpu_before["secantus"], 2),
    }
    return carve, stats


async def read_ceiling(db: AsyncDatabase[Document], carve: Carve) -> dict[str, Any]:
    """Raw chunk reads through PyMongo: one cursor, one chunk per batch (as the service asks)."""
    last = min(carve.block_count, CEILING_CHUNKS) - 1
    query = {"files_id": carve.carve_id, "n": {"$gte": 0, "$lte": last}}
    started, size = time.perf_counter(), 0
    cursor = db[f"{BUCKET}.chunks"].find(query, {"_id": 0}).sort("n", 1).batch_size(1)
    async for doc in cursor:
        size += len(doc["data"])
    seconds = time.perf_counter() - started
    return {
        "chunks": last + 1,
        "bytes": size,
        "seconds": round(seconds, 2),
        "mb_per_s": round(size / MB / seconds, 2),
    }
