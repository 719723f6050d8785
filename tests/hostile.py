"""Hostile archives, built small and fast for the tests: sparse maps, zero bombs, odd headers."""

from __future__ import annotations

import io
import tarfile
from collections.abc import Callable
from typing import Any, cast

import zstandard

from shared.protocol import ZSTD_MAGIC

PREFIX = "/tmp/osquery_carve_0f4c2a1e-aaaa-bbbb-cccc-000000000001"
BLOCK = 512


def pax_tar(fill: Callable[[tarfile.TarFile], None]) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tar:
        fill(tar)
    return out.getvalue()


def add(tar: tarfile.TarFile, name: str, data: bytes = b"", **fields: Any) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    for key, value in fields.items():
        setattr(info, key, value)
    tar.addfile(info, io.BytesIO(data) if data else None)


def zstd(data: bytes, level: int = 3) -> bytes:
    return zstandard.ZstdCompressor(level=level).compress(data)


def sparse_10_bomb(entries: int, name: str = f"{PREFIX}/var/lib/huge.img") -> bytes:
    """A pax GNU sparse 1.0 member whose map (in its data) lists ``entries`` regions.

    CPython's tarfile reads the map into a list of tuples: about 100 bytes of memory per
    entry, from 4 bytes of tar that compress to almost nothing.
    """
    sparse_map = f"{entries}\n".encode() + b"0\n0\n" * entries
    sparse_map += bytes(-len(sparse_map) % BLOCK)

    def fill(tar: tarfile.TarFile) -> None:
        add(tar, f"{PREFIX}/etc/hosts", b"127.0.0.1 localhost\n")
        info = tarfile.TarInfo(f"{PREFIX}/GNUSparseFile.0/huge.img")
        info.size = len(sparse_map)
        info.pax_headers = {
            "GNU.sparse.major": "1",
            "GNU.sparse.minor": "0",
            "GNU.sparse.name": name,
            "GNU.sparse.realsize": str(1 << 40),
        }
        tar.addfile(info, io.BytesIO(sparse_map))

    return pax_tar(fill)


def sparse_pax_00() -> bytes:
    def fill(tar: tarfile.TarFile) -> None:
        info = tarfile.TarInfo(f"{PREFIX}/sparse00")
        info.size = 1
        info.pax_headers = {
            "GNU.sparse.size": "1000",
            "GNU.sparse.numblocks": "1",
            "GNU.sparse.offset": "0",
            "GNU.sparse.numbytes": "1",
        }
        tar.addfile(info, io.BytesIO(b"x"))

    return pax_tar(fill)


def sparse_pax_01() -> bytes:
    def fill(tar: tarfile.TarFile) -> None:
        info = tarfile.TarInfo(f"{PREFIX}/sparse01")
        info.size = 1
        info.pax_headers = {"GNU.sparse.size": "1000", "GNU.sparse.map": "0,1"}
        tar.addfile(info, io.BytesIO(b"x"))

    return pax_tar(fill)


def _octal(value: int, width: int) -> bytes:
    return f"{value:0{width - 1}o}".encode() + b"\x00"


def _checksummed(block: bytearray) -> bytes:
    block[148:156] = b" " * 8
    block[148:156] = f"{sum(block):06o}".encode() + b"\x00 "
    return bytes(block)


def old_gnu_sparse(extension_blocks: int) -> bytes:
    """An old GNU 'S' member followed by ``extension_blocks`` blocks of 21 map entries each."""
    head = bytearray(BLOCK)
    head[0:100] = f"{PREFIX}/sparse.img".encode().ljust(100, b"\x00")
    head[100:108] = _octal(0o644, 8)
    head[108:116] = _octal(0, 8)
    head[116:124] = _octal(0, 8)
    head[124:136] = _octal(0, 12)
    head[136:148] = _octal(0, 12)
    head[156:157] = b"S"
    head[257:265] = b"ustar  \x00"
    entry = _octal(1, 12) + _octal(1, 12)
    head[386 : 386 + 4 * 24] = entry * 4
    head[482] = 1 if extension_blocks else 0
    head[483:495] = _octal(1 << 40, 12)
    extension = bytearray(BLOCK)
    extension[0 : 21 * 24] = entry * 21
    extension[504] = 1
    last = bytearray(extension)
    last[504] = 0
    blocks = [bytes(extension)] * max(0, extension_blocks - 1) + [bytes(last)]
    body = b"".join(blocks) if extension_blocks else b""
    return _checksummed(head) + body + bytes(2 * BLOCK)


def zero_bomb_zstd(member_size: int, name: str = f"{PREFIX}/var/zeros.bin") -> bytes:
    """A zstd frame holding a tar with one ``member_size``-byte member of zeros.

    Written as RLE blocks (4 bytes per 128 KiB of zeros; RFC 8878, section 3.1.1.2), which is
    what zstd's own compressor emits for zeros too, without spending 13 s compressing 60 GiB.
    """
    info = tarfile.TarInfo(name)
    info.size = member_size
    header = info.tobuf(tarfile.PAX_FORMAT)
    block_max = 128 * 1024
    frame = bytearray(ZSTD_MAGIC + bytes([0x00, 7 << 3]))  # no size, 128 KiB window

    def block(kind: int, size: int, content: bytes, last: bool = False) -> bytes:
        value = int(last) | (kind << 1) | (size << 3)
        return value.to_bytes(3, "little") + content

    frame += block(0, len(header), header)  # raw block: the tar header
    full, rest = divmod(member_size + 2 * BLOCK, block_max)  # zeros, then the end blocks
    rle = block(1, block_max, b"\x00")
    frame += rle * full
    frame += block(1, rest or block_max, b"\x00", last=True) if rest else b""
    if not rest:
        frame[-4:] = block(1, block_max, b"\x00", last=True)
    return bytes(frame)


def raw_reader(data: bytes) -> io.RawIOBase:
    """``data`` as the raw stream shared.manifest.build wraps in a BufferedReader (which
    reads through readinto, as BytesIO has; typeshed asks for a RawIOBase)."""
    return cast(io.RawIOBase, io.BytesIO(data))
