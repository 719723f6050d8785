"""One 512-byte tar header, parsed by hand: ustar, pax and GNU, as far as osquery needs.

osquery writes pax tars with libarchive: ustar headers, pax extended headers when a name or
size does not fit. Everything else a tar can carry is refused by name (see ``Refused``).
"""

from __future__ import annotations

import math
import re
import struct
from dataclasses import dataclass

from shared.tarsafe.limits import Malformed, Refused

BLOCK = 512
POSIX_MAGIC = b"ustar\x00"
# Type flags of members: regular files (and contiguous files, which are regular files).
FILE_TYPES = {b"0": "file", b"\x00": "file", b"7": "file"}
OTHER_TYPES = {
    b"1": "hardlink",
    b"2": "symlink",
    b"3": "other",  # character device
    b"4": "other",  # block device
    b"5": "dir",
    b"6": "other",  # FIFO
}
# Headers that describe the next member: pax extended, GNU long name, GNU long link name.
EXTENDED_TYPES = (b"x", b"L", b"K")
REFUSED_TYPES = {
    b"S": ("sparse", "GNU sparse member (old GNU format)"),
    b"g": ("global_header", "pax global header"),
}
_SIGNED = struct.Struct("148b8x356b")
_PAX_RECORD = re.compile(rb"([0-9]{1,12}) ")
_PAX_KEYS = (b"path", b"linkpath", b"size", b"mtime", b"uid", b"gid", b"uname", b"gname")


@dataclass(frozen=True)
class Header:
    name: bytes
    mode: int
    uid: int
    gid: int
    size: int
    mtime: int
    typeflag: bytes
    linkname: bytes
    uname: bytes
    gname: bytes


def _text(field: bytes) -> bytes:
    return field.split(b"\x00", 1)[0]


def number(field: bytes) -> int:
    """An octal (or GNU base-256) number field."""
    if field[:1] in (b"\x80", b"\xff"):
        value = int.from_bytes(field[1:], "big")
        return value - (256 ** (len(field) - 1)) if field[:1] == b"\xff" else value
    text = _text(field).strip(b" ")
    try:
        return int(text or b"0", 8)
    except ValueError:
        raise Malformed(f"bad number field {text[:20]!r}") from None


def _checksum_ok(block: bytes) -> bool:
    stored = number(block[148:156])
    unsigned = 256 + sum(block[:148]) + sum(block[156:])
    signed = 256 + sum(_SIGNED.unpack_from(block))
    return stored in (unsigned, signed)


def parse(block: bytes) -> Header:
    """A header block (not all zeros); Malformed when its checksum or numbers are wrong."""
    if not _checksum_ok(block):
        raise Malformed("bad header checksum")
    name = _text(block[0:100])
    prefix = _text(block[345:500])
    if block[257:263] == POSIX_MAGIC and prefix:
        name = prefix + b"/" + name
    header = Header(
        name=name,
        mode=number(block[100:108]),
        uid=number(block[108:116]),
        gid=number(block[116:124]),
        size=number(block[124:136]),
        mtime=number(block[136:148]),
        typeflag=block[156:157],
        linkname=_text(block[157:257]),
        uname=_text(block[265:297]),
        gname=_text(block[297:329]),
    )
    if header.size < 0:
        raise Malformed("negative member size")
    return header


def check_type(typeflag: bytes) -> None:
    """Refuse the member types osquery never writes."""
    if typeflag in REFUSED_TYPES:
        reason, what = REFUSED_TYPES[typeflag]
        raise Refused(reason, f"{what} refused")
    known = (*FILE_TYPES, *OTHER_TYPES, *EXTENDED_TYPES)
    if typeflag not in known:
        raise Refused("unsupported_type", f"member type {typeflag!r} refused")


def pax_records(data: bytes) -> dict[bytes, bytes]:
    """The records of a pax extended header that matter here; sparse keywords are refused."""
    records: dict[bytes, bytes] = {}
    pos = 0
    while pos < len(data) and data[pos] != 0:
        match = _PAX_RECORD.match(data, pos)
        if match is None:
            raise Malformed("bad pax record")
        length = int(match.group(1))
        end = pos + length
        if length < 5 or end > len(data) or data[end - 1 : end] != b"\n":
            raise Malformed("bad pax record length")
        keyword, equals, value = data[match.end() : end - 1].partition(b"=")
        if not keyword or not equals:
            raise Malformed("bad pax record")
        if keyword.startswith(b"GNU.sparse."):
            raise Refused("sparse", "GNU sparse member (pax GNU.sparse.* keywords) refused")
        if keyword in _PAX_KEYS:
            records[keyword] = value
        pos = end
    return records


def pax_number(value: bytes) -> int:
    """A pax size, uid or gid: decimal digits."""
    if not 0 < len(value) <= 20 or not value.isdigit():
        raise Malformed(f"bad pax number {value[:20]!r}")
    return int(value)


def pax_time(value: bytes) -> int:
    """A pax mtime (any decimal number; its fraction dropped)."""
    try:
        seconds = float(value[:64].decode("ascii")) if len(value) <= 64 else math.nan
    except ValueError:
        seconds = math.nan
    if not math.isfinite(seconds):
        raise Malformed(f"bad pax time {value[:20]!r}")
    return int(seconds)
