"""The byte layout of a streamed ZIP: stored entries, data descriptors, ZIP64 where needed.

Written here rather than taken from a library because a campaign export needs what none of
the streaming ZIP writers offers together: entries whose bytes are stored as they are (the
carves are tar or zstd already: no CPU spent deflating), whose size is known before their
first byte but whose CRC-32 only after the last (stream-zip buffers such an entry whole, or
deflates it), and a layout computable from names and sizes alone, so an interrupted
download resumes at any offset without reading what came before (``services.download.
export``). The functions return bytes; the caller streams them. Readers open such a ZIP by
its central directory (Python's zipfile, Info-ZIP, 7-Zip, libarchive, Windows); Java's
ZipInputStream, which reads front to back, refuses stored entries with data descriptors.

Each entry: a local header with bit 3 set (CRC and sizes follow the data, in a data
descriptor) and the UTF-8 flag, the stored data, the descriptor. An entry is ZIP64 when its
size may reach 4 GiB (a ZIP64 extra field in its local header; 8-byte sizes in its
descriptor); the central directory uses ZIP64 fields for whatever does not fit 32 bits, and
the archive ends with the ZIP64 end records when the count or the directory's place needs
them.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from datetime import UTC, datetime

ZIP32_MAX = 0xFFFFFFFF
COUNT32_MAX = 0xFFFF
FLAGS = 0x0008 | 0x0800  # data descriptor; names are UTF-8
STORED = 0
VERSION_ZIP64 = 45
VERSION_PLAIN = 20
MADE_BY = (3 << 8) | VERSION_ZIP64  # Unix
FILE_MODE = 0o100644


def dos_time(when: datetime) -> tuple[int, int]:
    """(time, date) in MS-DOS form, UTC (1980 at the earliest, as the format allows)."""
    when = when.astimezone(UTC) if when.tzinfo else when
    year = min(max(when.year, 1980), 2107)
    date = ((year - 1980) << 9) | (when.month << 5) | when.day
    time = (when.hour << 11) | (when.minute << 5) | (when.second // 2)
    return time, date


@dataclass(frozen=True)
class Entry:
    """One member: its name, its size (None: unknown until written) and its time."""

    name: str
    size: int | None
    modified: datetime

    @property
    def zip64(self) -> bool:
        return self.size is None or self.size >= ZIP32_MAX

    @property
    def raw_name(self) -> bytes:
        return self.name.encode()

    def local_header(self) -> bytes:
        time, date = dos_time(self.modified)
        extra = struct.pack("<HHQQ", 0x0001, 16, 0, 0) if self.zip64 else b""
        version = VERSION_ZIP64 if self.zip64 else VERSION_PLAIN
        sizes = ZIP32_MAX if self.zip64 else 0
        name = self.raw_name
        head = struct.pack(
            "<IHHHHHIIIHH",
            0x04034B50,
            version,
            FLAGS,
            STORED,
            time,
            date,
            0,  # CRC-32: in the descriptor
            sizes,
            sizes,
            len(name),
            len(extra),
        )
        return head + name + extra

    def local_header_size(self) -> int:
        return 30 + len(self.raw_name) + (20 if self.zip64 else 0)

    def descriptor(self, crc: int, size: int) -> bytes:
        if self.zip64:
            return struct.pack("<IIQQ", 0x08074B50, crc, size, size)
        return struct.pack("<IIII", 0x08074B50, crc, size, size)

    def descriptor_size(self) -> int:
        return 24 if self.zip64 else 16

    def span(self) -> int:
        """Bytes the whole entry takes (header, data, descriptor); its size must be known."""
        if self.size is None:
            raise ValueError(f"{self.name}: size unknown")
        return self.local_header_size() + self.size + self.descriptor_size()

    def central(self, crc: int, size: int, offset: int) -> bytes:
        """Its central directory record, once its CRC, size and offset are known."""
        time, date = dos_time(self.modified)
        big_size, big_offset = size >= ZIP32_MAX or self.zip64, offset >= ZIP32_MAX
        fields = [size, size] if big_size else []
        fields += [offset] if big_offset else []
        extra = struct.pack(f"<HH{len(fields)}Q", 0x0001, 8 * len(fields), *fields)
        extra = extra if fields else b""
        name = self.raw_name
        head = struct.pack(
            "<IHHHHHHIIIHHHHHII",
            0x02014B50,
            MADE_BY,
            VERSION_ZIP64 if fields else VERSION_PLAIN,
            FLAGS,
            STORED,
            time,
            date,
            crc,
            ZIP32_MAX if big_size else size,
            ZIP32_MAX if big_size else size,
            len(name),
            len(extra),
            0,  # comment
            0,  # disk
            0,  # internal attributes
            FILE_MODE << 16,
            ZIP32_MAX if big_offset else offset,
        )
        return head + name + extra


def end_records(count: int, directory_offset: int, directory_size: int) -> bytes:
    """What ends the archive: the ZIP64 end record and locator when needed, then the end."""
    needs64 = (
        count >= COUNT32_MAX
        or directory_offset >= ZIP32_MAX
        or directory_size >= ZIP32_MAX
        or directory_offset + directory_size >= ZIP32_MAX
    )
    tail = b""
    if needs64:
        end64_offset = directory_offset + directory_size
        tail += struct.pack(
            "<IQHHIIQQQQ",
            0x06064B50,
            44,  # the record's size after this field
            MADE_BY,
            VERSION_ZIP64,
            0,
            0,
            count,
            count,
            directory_size,
            directory_offset,
        )
        tail += struct.pack("<IIQI", 0x07064B50, 0, end64_offset, 1)
    tail += struct.pack(
        "<IHHHHIIH",
        0x06054B50,
        0,
        0,
        min(count, COUNT32_MAX),
        min(count, COUNT32_MAX),
        min(directory_size, ZIP32_MAX),
        min(directory_offset, ZIP32_MAX),
        0,
    )
    return tail
