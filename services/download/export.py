"""A campaign's export: one ZIP of every complete carve of a request id, streamed.

The ZIP holds ``carves/<host>_<carve id>.tar[.zst]`` for each complete carve (stored as the
host sent it), then ``manifest.json`` and ``manifest.csv`` (``export_manifest``): host,
device, carve id, the SHA-256 of each archive and of each member. Constant memory, no
temporary files: carves are read in pages of ``PAGE`` documents by id, each archive chunk
by chunk (``services.download.archive``); the central directory is written from a second
pass over the same documents, so nothing grows with the campaign but two counters.

The set is fixed by ``as_of``: the carves of the request id complete at that time. The
layout depends only on their names and sizes (``zipstream``), so the same ``as_of`` gives
the same bytes and an interrupted download resumes at any ``offset`` without reading what
came before, once each carve's CRC-32 is known: it is computed while the archive streams
(and its SHA-256 checked: a mismatch ends the stream) and kept on the carve document as
``crc32``. The ETag names the set; a resume with ``If-Match`` of another set gets 412.
"""

from __future__ import annotations

import contextlib
import hashlib
import re
import zlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from pymongo.asynchronous.database import AsyncDatabase

from services.download.archive import ByteRange, stream_chunks
from services.download.zipstream import Entry, end_records
from shared.carves import Status, carves_of
from shared.crypto.keys import KeyRing
from shared.crypto.reader import CarveReader
from shared.errors import CorruptArchive
from shared.mongo import Document, transient_on_outage
from shared.search import display_host

PAGE = 500
MAX_SEEN = 100_000  # carve ids an audit row lists (3.4 MB at most)
_UNSAFE = re.compile(r"[^A-Za-z0-9.-]")
PROJECTION = {
    "_id": 1,
    "carve_size": 1,
    "block_size": 1,
    "sha256": 1,
    "crc32": 1,
    "completed_at": 1,
    "filename": 1,
    "host_name": 1,
    "device": 1,
    "node_key_sha256": 1,
    "created_at": 1,
    "encryption": 1,
}


@dataclass(frozen=True)
class Carve:
    """One carve of the export, as its document says."""

    doc: Document

    @property
    def carve_id(self) -> str:
        return str(self.doc["_id"])

    @property
    def host(self) -> str | None:
        return display_host(self.doc)

    @property
    def name(self) -> str:
        """Its path in the ZIP: the host made safe for any file system, and the carve id."""
        host = _UNSAFE.sub("_", self.host or "unknown")[:64].lstrip(".") or "unknown"
        suffix = ".tar.zst" if str(self.doc.get("filename", "")).endswith(".zst") else ".tar"
        return f"carves/{host}_{self.carve_id}{suffix}"

    @property
    def entry(self) -> Entry:
        return Entry(self.name, int(self.doc["carve_size"]), self.doc["completed_at"])


@dataclass
class Export:
    """What one export request streams: the set (request id, as_of) and where to start."""

    db: AsyncDatabase[Document]
    bucket: str
    request_id: str
    as_of: datetime
    batch_bytes: int
    keys: KeyRing | None = None
    seen: list[str] | None = None  # the carve ids streamed, for the audit row (MAX_SEEN)

    def query(self) -> Document:
        return {
            "request_id": self.request_id,
            "status": Status.COMPLETE.value,
            "completed_at": {"$lte": self.as_of},
        }

    async def carves(self) -> AsyncIterator[Carve]:
        """The set, in carve id order, a page at a time (no cursor held while streaming)."""
        collection = carves_of(self.db)
        last = ""
        while True:
            query = {**self.query(), "_id": {"$gt": last}}
            with transient_on_outage("export listing"):
                found = collection.find(query, PROJECTION).sort("_id", 1).limit(PAGE)
                docs = await found.to_list()
            for doc in docs:
                yield Carve(dict(doc))
            if len(docs) < PAGE:
                return
            last = docs[-1]["_id"]

    async def etag(self) -> tuple[str, int]:
        """The set's tag (ids, sizes, SHA-256s and the names they get) and its size."""
        digest = hashlib.sha256(f"{self.request_id}\n{self.as_of.isoformat()}\n".encode())
        count = 0
        async for carve in self.carves():
            line = f"{carve.carve_id} {carve.doc['carve_size']} {carve.doc['sha256']} {carve.name}"
            digest.update(line.encode() + b"\n")
            count += 1
        return f'"x{digest.hexdigest()[:40]}"', count

    async def _chunks(self, carve: Carve, start: int) -> AsyncIterator[memoryview]:
        size = int(carve.doc["carve_size"])
        reader = await CarveReader.open(self.db, self.bucket, carve.doc, self.keys)
        pieces = stream_chunks(
            reader, byte_range=ByteRange(start, size - 1), batch_bytes=self.batch_bytes
        )
        async with contextlib.aclosing(pieces):
            async for piece in pieces:
                yield piece

    async def _crc(self, carve: Carve) -> int:
        """The archive's CRC-32: kept on its document, or read once and kept."""
        if (known := carve.doc.get("crc32")) is not None:
            return int(known)
        crc = 0
        async for piece in self._chunks(carve, 0):
            crc = zlib.crc32(piece, crc)
        await self._keep_crc(carve, crc)
        return crc

    async def _keep_crc(self, carve: Carve, crc: int) -> None:
        with transient_on_outage("export crc"):
            await carves_of(self.db).update_one(
                {"_id": carve.carve_id, "sha256": carve.doc["sha256"]}, {"$set": {"crc32": crc}}
            )

    async def _archive(self, carve: Carve, skip: int) -> AsyncIterator[bytes | memoryview]:
        """One carve's entry from byte ``skip`` on (skipped bytes are never read, once the
        CRC is known), its SHA-256 checked when it streams whole."""
        entry = carve.entry
        header = entry.local_header()
        if skip < len(header):
            yield header[skip:]
        size = int(carve.doc["carve_size"])
        data_skip = min(max(skip - len(header), 0), size)
        if data_skip == 0 and size:
            crc, sha = 0, hashlib.sha256()
            async for piece in self._chunks(carve, 0):
                crc = zlib.crc32(piece, crc)
                sha.update(piece)
                yield piece
            if sha.hexdigest() != carve.doc["sha256"]:
                raise CorruptArchive(f"carve {carve.carve_id}: SHA-256 differs from the stored one")
            if carve.doc.get("crc32") is None:
                await self._keep_crc(carve, crc)
        else:
            crc = await self._crc(carve) if size else 0
            if data_skip < size:
                async for piece in self._chunks(carve, data_skip):
                    yield piece
        descriptor = entry.descriptor(crc, size)
        yield descriptor[max(skip - len(header) - size, 0) :]

    async def stream(
        self, offset: int, generated: list[tuple[Entry, AsyncIterator[bytes]]]
    ) -> AsyncIterator[bytes | memoryview]:
        """The ZIP from byte ``offset``: the carves, the ``generated`` entries (made whole
        each time: their bytes are known only once written), the central directory."""
        out = Cut(offset)
        listed = hashlib.sha256()
        async for carve in self.carves():
            span = carve.entry.span()
            if out.position + span > offset:
                async for piece in self._archive(carve, max(offset - out.position, 0)):
                    yield piece
            out.position += span
            listed.update(carve.carve_id.encode() + b"\n")
            if self.seen is not None and len(self.seen) < MAX_SEEN:
                self.seen.append(carve.carve_id)
        made: list[tuple[Entry, int, int, int]] = []  # entry, crc, size, offset
        for entry, pieces in generated:
            async for piece in self._generated(out, entry, pieces, made):
                yield piece
        async for piece in self._directory(out, made, listed.digest()):
            yield piece

    async def _generated(
        self,
        out: Cut,
        entry: Entry,
        pieces: AsyncIterator[bytes],
        made: list[tuple[Entry, int, int, int]],
    ) -> AsyncIterator[bytes]:
        start, crc, size = out.position, 0, 0
        if (head := out.cut(entry.local_header())) is not None:
            yield head
        async for piece in pieces:
            crc, size = zlib.crc32(piece, crc), size + len(piece)
            if (part := out.cut(piece)) is not None:
                yield part
        if (tail := out.cut(entry.descriptor(crc, size))) is not None:
            yield tail
        made.append((entry, crc, size, start))

    async def _directory(
        self, out: Cut, made: list[tuple[Entry, int, int, int]], listed: bytes
    ) -> AsyncIterator[bytes]:
        """The central directory, from a second pass over the same carves."""
        directory_offset, count, place, again = out.position, 0, 0, hashlib.sha256()
        async for carve in self.carves():
            entry = carve.entry
            record = entry.central(await self._crc(carve), entry.size or 0, place)
            place += entry.span()
            again.update(carve.carve_id.encode() + b"\n")
            count += 1
            if (part := out.cut(record)) is not None:
                yield part
        if again.digest() != listed:
            raise CorruptArchive("the campaign's carves changed during the export: start again")
        for entry, crc, size, start in made:
            count += 1
            if (part := out.cut(entry.central(crc, size, start))) is not None:
                yield part
        tail = end_records(count, directory_offset, out.position - directory_offset)
        if (part := out.cut(tail)) is not None:
            yield part


class Cut:
    """Where the stream is, and what of each next piece lies past the resume offset."""

    def __init__(self, offset: int) -> None:
        self.offset = offset
        self.position = 0

    def cut(self, piece: bytes) -> bytes | None:
        start = self.position
        self.position += len(piece)
        if self.position <= self.offset:
            return None
        return piece[max(self.offset - start, 0) :]


def carve_row(carve: Carve) -> dict[str, Any]:
    """What the manifests say of a carve (members added by the caller)."""
    device = carve.doc.get("device") or {}
    return {
        "carve_id": carve.carve_id,
        "host": carve.host,
        "device": device.get("common_name"),
        "device_fingerprint": device.get("fingerprint_sha256"),
        "file": carve.name,
        "size": carve.doc["carve_size"],
        "sha256": carve.doc["sha256"],
    }
