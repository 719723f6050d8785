"""The tar inside a carve: list its members, stream one of them.

The stdlib ``tarfile`` does the parsing (osquery writes pax tars with
libarchive) and ``zstandard`` the decompression; both are synchronous, so
they run in a worker thread and pull chunks from MongoDB through the event
loop. An uncompressed tar is read with seeks: listing a 1 GB carve touches
only the chunks that hold headers. A zstd tar is read front to back, with a
bounded window.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import posixpath
import re
import tarfile
import threading
from collections.abc import Callable, Coroutine, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import IO, Any, cast

import zstandard
from pymongo.asynchronous.collection import AsyncCollection

from services.download.archive import CorruptArchive, fetch_window
from shared.errors import InvalidRequest
from shared.mongo import Document

# osquery copies carved paths into <tmp>/osquery_carve_<guid>/<original path>.
_CARVE_DIR = re.compile(r"^.*?(?:^|/)osquery_carve_[^/]*(?=/|$)")
_PIECE = 256 * 1024
# Longest a worker waits for the event loop (a MongoDB read); writes have their own timeout.
_LOOP_TIMEOUT = 120.0


class Abandoned(Exception):
    """The request this worker serves has ended: stop."""


def original_path(name: str) -> str:
    """The path on the host: the member name without its ``.../osquery_carve_<guid>`` prefix."""
    stripped = _CARVE_DIR.sub("", name, count=1)
    return "/" + stripped.strip("/") if stripped.strip("/") else "/"


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


def _kind(info: tarfile.TarInfo) -> str:
    if info.isreg():
        return "file"
    if info.isdir():
        return "dir"
    if info.issym() or info.islnk():
        return "symlink" if info.issym() else "hardlink"
    return "other"


def display_name(name: str) -> str:
    """A member name as valid UTF-8: bytes that are not UTF-8 (common on Linux) as ``\\xNN``."""
    return name.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def _mtime(info: tarfile.TarInfo) -> str | None:
    try:
        return datetime.fromtimestamp(info.mtime, UTC).isoformat()
    except (OverflowError, ValueError, OSError):  # a host can write any number there
        return None


def member_view(info: tarfile.TarInfo) -> dict[str, Any]:
    name = display_name(info.name)
    return {
        "path": original_path(name),
        "name": name,
        "type": _kind(info),
        "size": info.size,
        "mode": info.mode,
        "mtime": _mtime(info),
    }


# A pax header or GNU long name is read into memory whole: refuse absurd ones.
MAX_HEADER_BYTES = 1024 * 1024
# A listing stops (truncated) once its names add up to this much.
MAX_LISTING_NAME_BYTES = 16 * 1024 * 1024


class _BoundedTarInfo(tarfile.TarInfo):
    """TarInfo that refuses extended headers bigger than MAX_HEADER_BYTES (memory bombs)."""

    def _check_header_size(self) -> None:
        if self.size > MAX_HEADER_BYTES:
            raise tarfile.HeaderError(f"extended header of {self.size} bytes refused")

    def _proc_gnulong(self, tar: tarfile.TarFile) -> tarfile.TarInfo:
        self._check_header_size()
        return super()._proc_gnulong(tar)  # type: ignore[misc,no-any-return]

    def _proc_pax(self, tar: tarfile.TarFile) -> tarfile.TarInfo:
        self._check_header_size()
        return super()._proc_pax(tar)  # type: ignore[misc,no-any-return]


def _members(tar: tarfile.TarFile) -> Iterator[tarfile.TarInfo]:
    """The members one by one, without TarFile keeping every one it has seen."""
    while (info := tar.next()) is not None:
        cast(Any, tar).members.clear()  # typeshed does not declare TarFile.members
        yield info


class ChunkFile(io.RawIOBase):
    """A carve's archive as a seekable, read-only file, for code running in a worker thread.

    Reads are served from a small window of chunks fetched through the event
    loop (``batch_bytes`` per round trip); nothing else is kept.
    """

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        chunks: AsyncCollection[Document],
        carve_id: str,
        *,
        chunk_size: int,
        size: int,
        batch_bytes: int,
    ) -> None:
        super().__init__()
        self._loop = loop
        self._chunks = chunks
        self._carve_id = carve_id
        self._chunk_size = chunk_size
        self._size = size
        self._batch = max(1, batch_bytes // chunk_size)
        self._window: list[bytes] = []  # chunks _window_start, _window_start + 1, ...
        self._window_start = 0
        self._pos = 0
        # Set when the request ends (done, failed, client gone): the worker stops reading.
        self.abandoned = threading.Event()

    def readable(self) -> bool:
        return True

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
        stop = min(n + self._batch, -(-self._size // self._chunk_size))
        self._window = []  # the old window goes before the new one arrives
        load = fetch_window(self._chunks, self._carve_id, n, stop, self._chunk_size, self._size)
        self._window = self._call(load)
        self._window_start = n


@dataclass(frozen=True)
class TarSource:
    """How to open a carve's archive as a tar, in a worker thread."""

    file: ChunkFile
    zstd: bool
    max_window: int

    def open(self) -> tarfile.TarFile:
        buffered = io.BufferedReader(self.file, buffer_size=_PIECE)
        if self.zstd:
            dctx = zstandard.ZstdDecompressor(max_window_size=self.max_window)
            stream: IO[bytes] = dctx.stream_reader(buffered, read_size=_PIECE)
            return tarfile.open(fileobj=stream, mode="r|", tarinfo=_BoundedTarInfo)
        return tarfile.open(fileobj=buffered, mode="r:", tarinfo=_BoundedTarInfo)


def list_members(source: TarSource, limit: int) -> tuple[list[dict[str, Any]], bool]:
    """Up to ``limit`` members and whether there were more (runs in a worker thread)."""
    members: list[dict[str, Any]] = []
    name_bytes = 0
    with _tar_errors(), source.open() as tar:
        for info in _members(tar):
            name_bytes += len(info.name)
            if len(members) == limit or name_bytes > MAX_LISTING_NAME_BYTES:
                return members, True
            members.append(member_view(info))
    return members, False


def stream_member(
    source: TarSource,
    wanted: str,
    on_found: Callable[[dict[str, Any]], bool],
    write: Callable[[bytes], None],
) -> bool:
    """Find ``wanted`` (original path or raw name) and pass its bytes to ``write``.

    Runs in a worker thread. ``on_found`` gets the member's description before
    the first byte (to send headers) and says whether the body is wanted (not
    for HEAD). False when no regular file matches.
    """
    with _tar_errors(), source.open() as tar:
        for info in _members(tar):
            name = display_name(info.name)
            if not info.isreg() or wanted not in (original_path(name), _as_path(name)):
                continue
            if not on_found(member_view(info)):
                return True
            reader = tar.extractfile(info)
            if reader is None:
                return False
            while piece := reader.read(_PIECE):
                write(piece)
            return True
    return False


def _as_path(name: str) -> str:
    return "/" + posixpath.normpath(name).lstrip("/")


@contextlib.contextmanager
def _tar_errors() -> Iterator[None]:
    try:
        yield
    except (tarfile.TarError, zstandard.ZstdError, EOFError) as exc:
        raise CorruptArchive(f"not a readable tar: {exc}") from exc
