"""Walk a tar (or zstd-compressed tar) stream member by member, within a Budget.

Pure and synchronous: the download service runs it in a worker thread over GridFS chunks,
``carvectl`` over a local file. The stdlib ``tarfile`` is not used to parse headers: it reads
a GNU sparse map whole into a list (a 7.5 KB zstd carve took 2 GB), follows pax global
headers and GNU extensions osquery never writes, and treats a bad header after the first as
the end of the archive. This reader knows only what osquery writes and refuses the rest
before reading more than one header of it.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import IO, Any

import zstandard

from shared.protocol import ZSTD_MAGIC
from shared.tarsafe import headers
from shared.tarsafe.headers import BLOCK, Header
from shared.tarsafe.limits import Budget, Malformed, Refused

PIECE = 256 * 1024
# Extended headers (pax, GNU long names) in a row before a member's own header.
_MAX_CHAIN = 4


@dataclass(frozen=True)
class Member:
    """One member; names are decoded as UTF-8 with surrogate escapes, as ``tarfile`` does."""

    index: int  # 0 for the first member
    name: str
    kind: str  # "file", "dir", "symlink", "hardlink", "other"
    size: int  # bytes of data (0 for anything but a file)
    mode: int
    mtime: int
    linkname: str
    uid: int
    gid: int
    uname: str
    gname: str
    data_offset: int  # where its data starts in the (decompressed) tar stream


def _decode(raw: bytes) -> str:
    return raw.decode("utf-8", "surrogateescape")


class _Stream:
    """The tar byte stream: counted against the byte budget, checked at every read."""

    def __init__(self, raw: IO[bytes], zstd: bool, budget: Budget) -> None:
        self.budget = budget
        self.offset = 0
        self._counted = zstd
        self._seekable = not zstd and raw.seekable()
        self._base = raw.tell() if self._seekable else 0
        if zstd:
            _check_window(raw, budget.limits.zstd_max_window)
            dctx = zstandard.ZstdDecompressor(max_window_size=budget.limits.zstd_max_window)
            reader = dctx.stream_reader(
                raw, read_size=PIECE, read_across_frames=True, closefd=False
            )
            self._file: IO[bytes] = reader
        else:
            self._file = raw

    def _allow(self, count: int) -> None:
        self.budget.check()
        limit = self.budget.limits.max_bytes
        if self._counted and self.offset + count > limit:
            raise Refused("bytes_budget", f"the archive decompresses to more than {limit} bytes")

    def read(self, count: int) -> bytes:
        """Up to ``count`` bytes; fewer only at the end of the stream."""
        self._allow(count)
        parts: list[bytes] = []
        got = 0
        while got < count:
            self.budget.check()
            part = self._zstd_call(self._file.read, min(count - got, PIECE))
            if not part:
                break
            parts.append(part)
            got += len(part)
        self.offset += got
        return b"".join(parts)

    def skip(self, count: int) -> None:
        if count <= 0:
            return
        self._allow(count)
        if self._seekable:
            self._file.seek(self._base + self.offset + count)
            self.offset += count
            return
        while count > 0:
            piece = self.read(min(count, PIECE))
            if not piece:
                raise Malformed("archive ends inside a member")
            count -= len(piece)

    def seek_to(self, offset: int) -> bool:
        """Jump to ``offset`` of the tar stream if the stream can seek (uncompressed)."""
        if not self._seekable:
            return False
        self._file.seek(self._base + offset)
        self.offset = offset
        return True

    @staticmethod
    def _zstd_call(call: Any, *args: Any) -> bytes:
        try:
            return call(*args)  # type: ignore[no-any-return]
        except zstandard.ZstdError as exc:
            if "memory" in str(exc) or "window" in str(exc).lower():
                raise Refused("zstd_window", f"zstd stream refused: {exc}") from exc
            raise Malformed(f"bad zstd stream: {exc}") from exc

    def close(self) -> None:
        if self._counted:
            self._file.close()


def _check_window(raw: IO[bytes], max_window: int) -> None:
    """Refuse a first frame whose window is larger than allowed, before decoding anything."""
    if not raw.seekable():
        return
    start = raw.tell()
    head = raw.read(18)
    raw.seek(start)
    if head[:4] != ZSTD_MAGIC:
        raise Malformed("not a zstd stream")
    try:
        window = zstandard.get_frame_parameters(head).window_size
    except zstandard.ZstdError as exc:
        raise Malformed(f"bad zstd frame header: {exc}") from exc
    if window > max_window:
        raise Refused("zstd_window", f"zstd window of {window} bytes refused (> {max_window})")


class TarReader:
    """The members of one pass over an archive; ``data()`` streams the current member's bytes."""

    def __init__(self, raw: IO[bytes], *, zstd: bool, budget: Budget) -> None:
        self.budget = budget
        self._stream = _Stream(raw, zstd, budget)
        self._left = 0  # data (and padding) of the current member not yet read
        self._data_left = 0
        self._count = 0

    def __enter__(self) -> TarReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self._stream.close()

    def __iter__(self) -> Iterator[Member]:
        while (member := self.next()) is not None:
            yield member

    def next(self) -> Member | None:
        """The next member, or None at the end of the archive."""
        self._stream.skip(self._left)
        self._left = self._data_left = 0
        records: dict[bytes, bytes] = {}
        for _ in range(_MAX_CHAIN + 1):
            block = self._stream.read(BLOCK)
            if len(block) < BLOCK:
                # osquery (libarchive) always ends a tar with zero blocks: a stream that
                # stops before them is truncated (a short zstd stream is not an error there).
                raise Malformed("archive ends without its end-of-archive block")
            if block == bytes(BLOCK):
                return None
            header = headers.parse(block)
            headers.check_type(header.typeflag)
            if header.typeflag not in headers.EXTENDED_TYPES:
                return self._member(header, records)
            self._extended(header, records)
        raise Refused("header_too_large", f"more than {_MAX_CHAIN} extended headers in a row")

    def _extended(self, header: Header, records: dict[bytes, bytes]) -> None:
        limit = self.budget.limits.max_header_bytes
        if header.size > limit:
            raise Refused(
                "header_too_large", f"extended header of {header.size} bytes refused (> {limit})"
            )
        data = self._stream.read(header.size)
        if len(data) < header.size:
            raise Malformed("archive ends inside an extended header")
        self._stream.skip(-header.size % BLOCK)
        if header.typeflag == b"x":
            records.update(headers.pax_records(data))
        else:  # GNU long name / long link name: NUL-terminated
            key = b"path" if header.typeflag == b"L" else b"linkpath"
            records[key] = data.split(b"\x00", 1)[0]

    def _member(self, header: Header, records: dict[bytes, bytes]) -> Member:
        self._count += 1
        if self._count > self.budget.limits.max_members:
            limit = self.budget.limits.max_members
            raise Refused("too_many_members", f"more than {limit} members")
        size = headers.pax_number(records[b"size"]) if b"size" in records else header.size
        name = records.get(b"path", header.name)
        kind = headers.FILE_TYPES.get(header.typeflag) or headers.OTHER_TYPES[header.typeflag]
        if kind == "file" and header.typeflag == b"\x00" and name.endswith(b"/"):
            kind = "dir"  # old tars write a directory as a file named with a slash
        if kind != "file" and size:
            raise Refused("nonfile_data", f"a {kind} member declares {size} bytes of data")
        if kind == "dir":
            name = name.rstrip(b"/") or name
        self._data_left = size
        self._left = size + (-size % BLOCK)
        return Member(
            index=self._count - 1,
            name=_decode(name),
            kind=kind,
            size=size,
            mode=header.mode & 0o7777,
            mtime=_mtime(records, header),
            linkname=_decode(records.get(b"linkpath", header.linkname)),
            uid=headers.pax_number(records[b"uid"]) if b"uid" in records else header.uid,
            gid=headers.pax_number(records[b"gid"]) if b"gid" in records else header.gid,
            uname=_decode(records.get(b"uname", header.uname)),
            gname=_decode(records.get(b"gname", header.gname)),
            data_offset=self._stream.offset,
        )

    def data(self, piece: int = PIECE) -> Iterator[bytes]:
        """The rest of the current member's bytes, in pieces of at most ``piece``."""
        while self._data_left > 0:
            chunk = self._stream.read(min(piece, self._data_left))
            if not chunk:
                raise Malformed("archive ends inside a member")
            self._data_left -= len(chunk)
            self._left -= len(chunk)
            yield chunk

    def seek_member(self, member: Member) -> bool:
        """Make ``member`` (seen in an earlier pass) current, by seeking; False if not seekable."""
        if not self._stream.seek_to(member.data_offset):
            return False
        self._data_left = member.size
        self._left = member.size + (-member.size % BLOCK)
        return True


def _mtime(records: dict[bytes, bytes], header: Header) -> int:
    if b"mtime" in records:
        return headers.pax_time(records[b"mtime"])
    return header.mtime


def open_tar(raw: IO[bytes], *, zstd: bool, budget: Budget) -> TarReader:
    """A reader over ``raw`` (a zstd-compressed tar when ``zstd``)."""
    return TarReader(raw, zstd=zstd, budget=budget)


def is_zstd(raw: IO[bytes]) -> bool:
    """Whether a seekable file starts with the zstd magic number (position unchanged)."""
    start = raw.tell()
    magic = raw.read(len(ZSTD_MAGIC))
    raw.seek(start)
    return magic == ZSTD_MAGIC
