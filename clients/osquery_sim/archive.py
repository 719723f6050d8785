"""The archive an osquery host uploads (docs/osquery-protocol.md, "What the host sends").

A POSIX pax tar whose members are named ``/tmp/osquery_carve_<guid>/<original absolute
path>`` (mode 0644, mtime 0, as libarchive writes them for osquery), optionally compressed as a
whole with zstd level 1; written as a stream, so a 1 GB carve never sits in memory.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import random
import tarfile
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import zstandard

logger = logging.getLogger("clients.osquery_sim")

CARVE_DIR_PREFIX = "/tmp/osquery_carve_"
# Synthetic content and streaming copies work in 1 MiB pieces: large enough to be fast, small
# enough that a 1 GB carve never sits in memory.
PIECE_SIZE = 1 << 20
ZSTD_LEVEL = 1
# libarchive entries built by osquery carry only a path, a size, a type and perm 0644.
MEMBER_MODE = 0o644
MEMBER_MTIME = 0


def carve_member_name(carve_guid: str, original_path: str) -> str:
    """The tar member name osquery (5.5+) gives to ``original_path`` in carve ``carve_guid``."""
    if not original_path.startswith("/"):
        raise ValueError(f"carved paths must be absolute, got {original_path!r}")
    return f"{CARVE_DIR_PREFIX}{carve_guid}{original_path}"


def synthetic_pieces(size: int, seed: int = 0) -> Iterator[bytes]:
    """Deterministic pseudo-random content of ``size`` bytes, in pieces of at most 1 MiB."""
    if size < 0:
        raise ValueError("size must be >= 0")
    rng = random.Random(seed)
    left = size
    while left > 0:
        piece = rng.randbytes(min(PIECE_SIZE, left))
        left -= len(piece)
        yield piece


class _PiecesReader(io.RawIOBase):
    """A read-only stream over an iterator of byte pieces (so tarfile can stream it)."""

    def __init__(self, pieces: Iterator[bytes]) -> None:
        super().__init__()
        self._pieces = pieces
        self._current = b""
        self._offset = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        if self._offset >= len(self._current):
            self._current = next(self._pieces, b"")
            self._offset = 0
            if not self._current:
                return 0
        view = memoryview(buffer).cast("B")
        count = min(len(view), len(self._current) - self._offset)
        view[:count] = self._current[self._offset : self._offset + count]
        self._offset += count
        return count


def _member_info(name: str, size: int) -> tarfile.TarInfo:
    # Built by hand: tarfile.gettarinfo strips the leading "/" osquery keeps in member names.
    info = tarfile.TarInfo(name)
    info.type = tarfile.REGTYPE
    info.size = size
    info.mode = MEMBER_MODE
    info.mtime = MEMBER_MTIME
    return info


def _add_member(tar: tarfile.TarFile, name: str, content: bytes | Path) -> None:
    if isinstance(content, bytes | bytearray | memoryview):
        data = bytes(content)
        tar.addfile(_member_info(name, len(data)), io.BytesIO(data))
        return
    with Path(content).open("rb") as fh:
        tar.addfile(_member_info(name, os.fstat(fh.fileno()).st_size), fh)


@contextmanager
def _archive_writer(path: Path, compress: bool) -> Iterator[tarfile.TarFile]:
    with path.open("wb") as raw:
        if not compress:
            with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
                yield tar
            return
        # Compress while the tar is written, so neither the tar nor the .zst is ever held in
        # memory and no uncompressed copy is left on disk.
        compressor = zstandard.ZstdCompressor(level=ZSTD_LEVEL)
        with (
            compressor.stream_writer(raw, closefd=False) as zwriter,
            tarfile.open(fileobj=zwriter, mode="w|", format=tarfile.PAX_FORMAT) as tar,
        ):
            yield tar


def _write_archive(
    dest: Path, carve_guid: str, compress: bool, fill: Callable[[tarfile.TarFile], None]
) -> Path:
    dest.mkdir(parents=True, exist_ok=True)
    suffix = ".tar.zst" if compress else ".tar"
    path = dest / f"carve_{carve_guid}{suffix}"
    with _archive_writer(path, compress) as tar:
        fill(tar)
    logger.debug("wrote archive %s (%d bytes)", path, path.stat().st_size)
    return path


def build_archive(
    members: Mapping[str, bytes | Path],
    dest: Path,
    *,
    carve_guid: str,
    compress: bool = False,
) -> Path:
    """Write the archive osquery would upload for ``members`` and return its path.

    Keys are the original absolute paths on the host, values the content (bytes) or a file to
    stream it from. The result is ``dest/carve_<guid>.tar`` or, compressed, ``.tar.zst``.
    """

    def fill(tar: tarfile.TarFile) -> None:
        for original, content in members.items():
            _add_member(tar, carve_member_name(carve_guid, original), content)

    return _write_archive(dest, carve_guid, compress, fill)


def build_synthetic_archive(
    size: int,
    dest: Path,
    *,
    carve_guid: str,
    compress: bool = False,
    seed: int = 0,
    path: str = "/var/log/evidence.bin",
) -> Path:
    """An archive holding one member of ``size`` pseudo-random bytes (same seed, same bytes)."""
    name = carve_member_name(carve_guid, path)

    def fill(tar: tarfile.TarFile) -> None:
        stream = io.BufferedReader(_PiecesReader(synthetic_pieces(size, seed)), PIECE_SIZE)
        with stream:
            tar.addfile(_member_info(name, size), stream)

    return _write_archive(dest, carve_guid, compress, fill)


def sha256_file(path: Path) -> str:
    """Hex SHA-256 of a file, read in pieces."""
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for piece in iter(lambda: fh.read(PIECE_SIZE), b""):
            digest.update(piece)
    return digest.hexdigest()
