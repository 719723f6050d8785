"""The tar inside a carve: list its members, stream one of them.

``shared.tarsafe`` parses the tar (a hostile host wrote it: sparse maps, pax global headers and
other features osquery never writes are refused, every pass is bounded by a Budget) and
``zstandard`` decompresses; both are synchronous, so they run in a worker thread and pull
chunks from MongoDB through the event loop. An uncompressed tar is read with seeks: listing
a 1 GB carve touches only the chunks that hold headers. A zstd tar is read front to back,
with a bounded window.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import posixpath
import threading
from collections.abc import Callable, Coroutine, Iterator
from dataclasses import dataclass
from typing import Any

from shared import manifest, tarsafe
from shared.crypto.reader import CarveReader
from shared.errors import ClientError, InvalidRequest
from shared.tarsafe import Budget, Member, TarReader

_PIECE = 256 * 1024
# Longest a worker waits for the event loop (a MongoDB read); writes have their own timeout.
_LOOP_TIMEOUT = 120.0
# A listing stops (truncated) once its names add up to this much.
MAX_LISTING_NAME_BYTES = 16 * 1024 * 1024


class Abandoned(ConnectionResetError):
    """The request this worker serves has ended (the client left): stop."""


class ArchiveRefused(ClientError):
    """A hostile or unreadable tar: 422, with a code naming the reason."""

    status = 422

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message, reason=reason)
        self.code = f"archive_{reason}"
        self.reason = reason


def original_path(name: str) -> str:
    """The path on the host: the member name without its ``.../osquery_carve_<guid>`` prefix."""
    return tarsafe.original_path(name)


def clean_member_path(path: str) -> str:
    """A requested member path, normalised; InvalidRequest for traversal or control bytes."""
    if "\x00" in path or any(ord(c) < 0x20 for c in path):
        raise InvalidRequest("member path contains control characters")
    parts = [p for p in path.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise InvalidRequest("member path must not contain '..'")
    if not parts:
        raise InvalidRequest("member path is empty")
    return "/" + "/".join(parts)


def member_view(member: Member) -> dict[str, Any]:
    """A member as listed: unsafe ones keep their raw stripped path and say why (the same
    entry as the finalize-time manifest's, without a SHA-256: the tar is not hashed here),
    with its position in the archive (``.../members/{index}`` serves it)."""
    view = manifest.entry(member, None)
    del view["sha256"]
    view["index"] = member.index
    return view


class ChunkFile(io.RawIOBase):
    """A carve's archive as a seekable, read-only file, for code running in a worker thread.

    Reads are served from a small window of chunks fetched (and opened, when sealed)
    through the event loop (``batch_bytes`` per round trip); nothing else is kept.
    """

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        reader: CarveReader,
        *,
        batch_bytes: int,
    ) -> None:
        super().__init__()
        self._loop = loop
        self._reader = reader
        self._chunk_size = reader.chunk_size
        self._size = reader.size
        self._batch = max(1, batch_bytes // reader.chunk_size)
        self._window: list[bytes] = []  # chunks _window_start, _window_start + 1, ...
        self._window_start = 0
        self._pos = 0
        # Set when the request ends (done, failed, client gone): the worker stops reading.
        self.abandoned = threading.Event()

    def readable(self) -> bool:
        return True

    def close(self) -> None:
        """Nothing to release; stays usable for the next pass (a BufferedReader closes it)."""

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self._size}[whence]
        self._pos = max(0, base + offset)
        return self._pos

    def readinto(self, buffer: Any) -> int:
        if self._pos >= self._size:
            return 0
        n, offset = divmod(self._pos, self._chunk_size)
        if not self._window_start <= n < self._window_start + len(self._window):
            self._fetch(n)
        data = self._window[n - self._window_start]
        view = memoryview(buffer).cast("B")
        count = min(len(view), len(data) - offset)  # > 0: every chunk has its exact length
        view[:count] = data[offset : offset + count]
        self._pos += count
        return count

    def _call(self, coro: Coroutine[Any, Any, Any]) -> Any:
        if self.abandoned.is_set():
            coro.close()
            raise Abandoned("the request has ended")
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(_LOOP_TIMEOUT)

    def _fetch(self, n: int) -> None:
        stop = min(n + self._batch, self._reader.count)
        self._window = []  # the old window goes before the new one arrives
        self._window = self._call(self._reader.window(n, stop))
        self._window_start = n


@dataclass(frozen=True)
class TarSource:
    """How to open a carve's archive as a tar, in a worker thread, within ``budget``."""

    file: ChunkFile
    zstd: bool
    budget: Budget

    @contextlib.contextmanager
    def open(self) -> Iterator[TarReader]:
        """A new pass over the archive, from its first byte."""
        self.file.seek(0)
        buffered = io.BufferedReader(self.file, buffer_size=_PIECE)
        with _tar_errors(), tarsafe.open_tar(buffered, zstd=self.zstd, budget=self.budget) as tar:
            yield tar


def list_members(source: TarSource, limit: int) -> tuple[list[dict[str, Any]], bool]:
    """Up to ``limit`` members and whether there were more (runs in a worker thread).

    Of members listed under the same path, all but the last are marked ``superseded``: the
    last is the one extraction leaves and the one a member download serves.
    """
    members: list[dict[str, Any]] = []
    name_bytes = 0
    truncated = False
    with source.open() as tar:
        for member in tar:
            view = member_view(member)
            name_bytes += manifest.text_bytes(view)
            if len(members) == limit or name_bytes > MAX_LISTING_NAME_BYTES:
                truncated = True
                break
            members.append(view)
    manifest.mark_superseded(members)
    return members, truncated


def _matches(member: Member, wanted: str) -> bool:
    if not tarsafe.extractable(member.kind, member.name, member.linkname):
        return False  # extraction refuses it: never served, never hides an earlier member
    name = tarsafe.display_name(member.name)
    return wanted in (original_path(name), _as_path(name))


def find_member(source: TarSource, wanted: str) -> Member | None:
    """The member a download of ``wanted`` serves: the last one at that path (a full pass).

    Extraction writes members in order, so the last one at a path is what it leaves; when that
    one is not a regular file (a link, a directory) nothing is served. The whole archive is
    read, so a refused feature anywhere refuses the download as it refuses the listing.
    """
    found: Member | None = None
    with source.open() as tar:
        for member in tar:
            if _matches(member, wanted):
                found = member
    return found if found is not None and found.kind == "file" else None


def find_member_at(source: TarSource, index: int) -> Member | None:
    """The member at position ``index`` of the archive (0: the first), if it is a regular
    file, whatever its name: the way out for names a path cannot carry (CR, LF, other
    control bytes) and for members a later one at the same path supersedes."""
    with source.open() as tar:
        for member in tar:
            if member.index == index:
                return member if member.kind == "file" else None
    return None


def stream_member(
    source: TarSource,
    find: Callable[[TarSource], Member | None],
    on_found: Callable[[dict[str, Any]], bool],
    write: Callable[[bytes], None],
) -> bool:
    """Find the member (``find``: by path, find_member; by position, find_member_at) and
    pass its bytes to ``write``.

    Runs in a worker thread. ``on_found`` gets the member's description before
    the first byte (to send headers) and says whether the body is wanted (not
    for HEAD). False when no regular file matches.
    """
    member = find(source)
    if member is None:
        return False
    with source.open() as tar:
        if not tar.seek_member(member):
            while (current := tar.next()) is not None and current.index != member.index:
                pass
        if not on_found(member_view(member)):
            return True
        # The bytes are bounded by the member's size (already within the byte budget);
        # a slow client is bounded by the write timeout: the deadline covered the search.
        source.budget.lift_deadline()
        for piece in tar.data(_PIECE):
            write(piece)
    return True


def _as_path(name: str) -> str:
    return "/" + posixpath.normpath(name).lstrip("/")


@contextlib.contextmanager
def _tar_errors() -> Iterator[None]:
    try:
        yield
    except tarsafe.Refused as exc:
        raise ArchiveRefused(exc.reason, exc.message) from exc
    except tarsafe.Malformed as exc:
        raise ArchiveRefused("malformed", f"not a readable tar: {exc}") from exc
    except tarsafe.Stopped as exc:
        raise Abandoned("the request has ended") from exc
