"""The streamed ZIP's layout, read back by Python's zipfile (and Info-ZIP's unzip when there):
stored entries with data descriptors, ZIP64 past 4 GiB and past 65,535 entries."""

from __future__ import annotations

import shutil
import subprocess
import zipfile
import zlib
from datetime import UTC, datetime
from pathlib import Path
from typing import BinaryIO

from services.download.zipstream import ZIP32_MAX, Entry, end_records

WHEN = datetime(2026, 11, 27, 10, 0, 2, tzinfo=UTC)


def write_zip(out: BinaryIO, members: list[tuple[Entry, bytes]]) -> None:
    """Write members as the export does: entries, then the central directory."""
    made = []
    for entry, data in members:
        start = out.tell()
        out.write(entry.local_header())
        out.write(data)
        out.write(entry.descriptor(zlib.crc32(data), len(data)))
        made.append((entry, zlib.crc32(data), len(data), start))
    directory = out.tell()
    for entry, crc, size, start in made:
        out.write(entry.central(crc, size, start))
    out.write(end_records(len(made), directory, out.tell() - directory))


def test_entries_read_back_byte_for_byte(tmp_path: Path) -> None:
    members = [
        (Entry("carves/laptop-17_c1.tar", 11, WHEN), b"hello world"),
        (Entry("carves/h\u00e9_c2.tar.zst", 0, WHEN), b""),
        (Entry("manifest.json", None, WHEN), b'{"carves": []}\n'),  # size unknown: ZIP64
    ]
    path = tmp_path / "a.zip"
    with path.open("wb") as out:
        write_zip(out, members)
    with zipfile.ZipFile(path) as zf:
        assert zf.testzip() is None
        infos = zf.infolist()
        assert [i.filename for i in infos] == [e.name for e, _ in members]
        assert [zf.read(i) for i in infos] == [d for _, d in members]
        assert all(i.compress_type == zipfile.ZIP_STORED for i in infos)
        assert infos[0].date_time == (2026, 11, 27, 10, 0, 2)
        assert (infos[0].external_attr >> 16) == 0o100644
    if unzip := shutil.which("unzip"):
        result = subprocess.run([unzip, "-t", str(path)], capture_output=True, check=False)
        assert result.returncode == 0, result.stdout


def test_more_than_65535_entries_use_zip64_end_records(tmp_path: Path) -> None:
    count = 70_000
    path = tmp_path / "many.zip"
    with path.open("wb") as out:
        write_zip(out, [(Entry(f"f{i}", 1, WHEN), bytes([i % 256])) for i in range(count)])
    with zipfile.ZipFile(path) as zf:
        infos = zf.infolist()
        assert len(infos) == count
        assert zf.read(infos[-1]) == bytes([(count - 1) % 256])


def test_a_member_past_4_gib_and_one_beyond_it(tmp_path: Path) -> None:
    """A 5 GiB member (a sparse file: zeros) and a small one whose offset is past 4 GiB."""
    big = 5 * 2**30
    crc_zeros = 0
    piece = bytes(2**24)
    for _ in range(big // len(piece)):
        crc_zeros = zlib.crc32(piece, crc_zeros)
    first, second = Entry("big.tar", big, WHEN), Entry("small.tar", 5, WHEN)
    assert first.zip64 and not second.zip64
    path = tmp_path / "big.zip"
    with path.open("wb") as out:
        out.write(first.local_header())
        out.seek(big, 1)  # a hole: zeros
        out.write(first.descriptor(crc_zeros, big))
        second_at = out.tell()
        assert second_at > ZIP32_MAX
        out.write(second.local_header() + b"12345" + second.descriptor(zlib.crc32(b"12345"), 5))
        directory = out.tell()
        out.write(first.central(crc_zeros, big, 0))
        out.write(second.central(zlib.crc32(b"12345"), 5, second_at))
        out.write(end_records(2, directory, out.tell() - directory))
    assert first.span() == second_at
    with zipfile.ZipFile(path) as zf:
        a, b = zf.infolist()
        assert (a.file_size, a.header_offset) == (big, 0)
        assert (b.file_size, b.header_offset) == (5, second_at)
        assert zf.read(b) == b"12345"  # its CRC checked
        with zf.open(a) as member:
            assert member.read(4096) == bytes(4096)
