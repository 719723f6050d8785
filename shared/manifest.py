"""A carve's manifest: every member with its SHA-256, read on the finalizer's hashing pass.

The finalizer streams each chunk once to hash the archive; it also hands each chunk to a
``ManifestPass``, whose worker thread walks the tar (``shared.tarsafe``: decompressing zstd,
refusing what osquery never writes, within a byte and time budget) and hashes each regular
file. Nothing is read twice and at most ``QUEUE_CHUNKS`` chunks wait between the two.

The manifest is bounded: ``MAX_ENTRIES`` members and ``MAX_NAME_BYTES`` of names; past that
it is kept ``truncated``. An archive that cannot be read (malformed, refused, over budget)
keeps the members read so far and the reason in ``error``; the carve completes regardless.
It is stored in the ``manifests`` collection (``_id`` = carve id), apart from the carve
document, so listings never load it; the carve document gets a summary.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import logging
import queue
import threading
from datetime import UTC, datetime
from typing import Any

from shared import tarsafe
from shared.inert import inert
from shared.settings import GiB, MiB
from shared.tarsafe import Budget, Limits, Malformed, Member, Refused, Stopped
from shared.timefmt import rfc3339

COLLECTION = "manifests"
MAX_ENTRIES = 10_000
MAX_NAME_BYTES = 4 * MiB
QUEUE_CHUNKS = 4
# Decompressed bytes a manifest pass may read: 100x the archive (real files rarely compress
# 20x; a bomb of zeros does 30,000x), at least 256 MiB, at most 16 GiB.
RATIO = 100
log = logging.getLogger(__name__)


def manifest_limits(carve_size: int) -> Limits:
    budget = min(16 * GiB, max(256 * MiB, RATIO * carve_size))
    return Limits(max_bytes=budget, max_seconds=900.0, max_members=1_000_000)


def _mtime(member: Member) -> str | None:
    try:
        return rfc3339(datetime.fromtimestamp(member.mtime, UTC))
    except (OverflowError, ValueError, OSError):  # a host can write any number there
        return None


def text_bytes(view: dict[str, Any]) -> int:
    """What an entry holds of the host's text, as stored (escaped bytes grow): its names and
    its link. Budgets count this, so they bound the document, not just the tar headers."""
    return sum(len(str(view.get(key) or "").encode()) for key in ("path", "name", "link"))


def mark_superseded(views: list[dict[str, Any]]) -> None:
    """Of entries with the same path, all but the last (the one extraction leaves)."""
    last = {view["path"]: index for index, view in enumerate(views)}
    for index, view in enumerate(views):
        view["superseded"] = last[view["path"]] != index


def entry(member: Member, sha256: str | None) -> dict[str, Any]:
    """One member as the manifest (and the download API's listing) shows it."""
    name = tarsafe.display_name(member.name)
    reason = tarsafe.unsafe_reason(member.kind, member.name, member.linkname)
    stripped = tarsafe.display_name(tarsafe.stripped_path(member.name))
    return {
        "path": tarsafe.original_path(name) if reason is None else stripped,
        "name": name,
        "type": member.kind,
        "size": member.size,
        "mode": member.mode,
        "mtime": _mtime(member),
        "link": tarsafe.display_name(member.linkname) if member.linkname else None,
        "unsafe": reason is not None,
        "reason": reason,
        "superseded": False,
        "sha256": sha256,
    }


class ChunkPipe(io.RawIOBase):
    """The archive's bytes as a read-only, non-seekable file, fed chunk by chunk (None: end)."""

    def __init__(self, chunks: queue.Queue[bytes | None]) -> None:
        super().__init__()
        self._chunks = chunks
        self._current = memoryview(b"")
        self._ended = False

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        while not self._current and not self._ended:
            data = self._chunks.get()
            if data is None:
                self._ended = True
            else:
                self._current = memoryview(data)
        view = memoryview(buffer).cast("B")
        count = min(len(view), len(self._current))
        view[:count] = self._current[:count]
        self._current = self._current[count:]
        return count


def build(
    raw: io.RawIOBase,
    *,
    zstd: bool,
    limits: Limits,
    cancel: threading.Event | None = None,
    max_entries: int = MAX_ENTRIES,
    max_name_bytes: int = MAX_NAME_BYTES,
) -> dict[str, Any]:
    """Walk the tar in ``raw`` and describe it (synchronous: runs in a worker thread)."""
    members: list[dict[str, Any]] = []
    names = seen = 0
    truncated = False
    error: str | None = None
    reason: str | None = None  # the short code of ``error``, as tarsafe.Refused names it
    try:
        with tarsafe.open_tar(
            io.BufferedReader(raw, tarsafe.PIECE), zstd=zstd, budget=Budget(limits, cancel)
        ) as tar:
            for member in tar:
                seen += 1
                view = entry(member, None)
                names += text_bytes(view)
                if len(members) >= max_entries or names > max_name_bytes:
                    truncated = True
                    break
                if member.kind == "file":
                    hasher = hashlib.sha256()
                    for piece in tar.data():
                        hasher.update(piece)
                    view["sha256"] = hasher.hexdigest()
                members.append(view)
    except Refused as exc:
        reason, error = exc.reason, f"{exc.reason}: {exc.message}"
    except Malformed as exc:
        reason, error = "malformed", f"malformed: {exc}"
    except Stopped:
        reason, error = "stopped", "stopped: the finalizer gave up this pass"
    mark_superseded(members)
    return {
        "members": members,
        "truncated": truncated,
        "error": error,
        "reason": reason,
        "count": len(members),
    }


class ManifestPass:
    """The manifest of one carve, built from the chunks handed to ``feed`` (in order)."""

    def __init__(self, zstd: bool, carve_size: int) -> None:
        self._chunks: queue.Queue[bytes | None] = queue.Queue(QUEUE_CHUNKS)
        self._cancel = threading.Event()
        self.zstd = zstd
        pipe = ChunkPipe(self._chunks)
        self._future = asyncio.get_running_loop().run_in_executor(
            None, self._build, pipe, manifest_limits(carve_size)
        )

    def _build(self, pipe: ChunkPipe, limits: Limits) -> dict[str, Any]:
        try:
            return build(pipe, zstd=self.zstd, limits=limits, cancel=self._cancel)
        except Exception as exc:  # never let a manifest bug fail a finalize
            log.exception("manifest pass failed")
            error = f"internal: {exc!r}"
            return {
                "members": [],
                "truncated": False,
                "error": error,
                "reason": "internal",
                "count": 0,
            }

    async def _put(self, item: bytes | None) -> None:
        while not self._future.done():
            try:
                self._chunks.put_nowait(item)
                return
            except queue.Full:
                # Waits in a thread for room; gives up after a while to see if the walker ended.
                try:
                    await asyncio.to_thread(self._chunks.put, item, True, 0.2)
                    return
                except queue.Full:
                    continue

    async def feed(self, data: bytes) -> None:
        await self._put(data)

    async def finish(self) -> dict[str, Any]:
        """The manifest (after the last chunk was fed)."""
        await self._put(None)
        return await self._future

    def abandon(self) -> None:
        """Stop the walker (the finalize failed): it ends at its next budget check."""
        self._cancel.set()
        while True:
            try:
                self._chunks.put_nowait(None)
                return
            except queue.Full:
                try:
                    self._chunks.get_nowait()
                except queue.Empty:
                    pass


MAX_PATHS = 10  # the first paths a carve's summary (and its events) name


def _file_paths(members: list[dict[str, Any]]) -> list[str]:
    """The distinct regular-file paths of a manifest, in order, inert (what was carved)."""
    seen: dict[str, None] = {}
    for member in members:
        if member.get("type") == "file" and member.get("path"):
            seen.setdefault(inert(member["path"]), None)
    return list(seen)


def first_paths(members: list[dict[str, Any]], limit: int = MAX_PATHS) -> list[str]:
    """The first ``limit`` distinct regular-file paths of a manifest (what was carved), inert."""
    return _file_paths(members)[:limit]


def summary(manifest: dict[str, Any]) -> dict[str, Any]:
    """What the carve document says of its manifest: counts, and what was carved (the first
    paths, and how many files in all)."""
    files = _file_paths(manifest["members"])
    return {
        "members": manifest["count"],
        "truncated": manifest["truncated"],
        "error": manifest["error"],
        "files": len(files),
        "paths": files[:MAX_PATHS],
    }
