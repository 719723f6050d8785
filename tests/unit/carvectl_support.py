"""What carvectl's unit tests share: the carve's guid and prefix, a token, hand-built tars."""

from __future__ import annotations

import io
import tarfile
from collections.abc import Callable
from pathlib import Path

GUID = "3f1c0a52-9a4e-4c61-8d1b-2f7e0c9b1a11"
PREFIX = f"/tmp/osquery_carve_{GUID}"
TOKEN = "s.unit-test-token-do-not-print"


def add_member(
    tar: tarfile.TarFile,
    name: str,
    data: bytes = b"",
    *,
    kind: bytes = tarfile.REGTYPE,
    linkname: str = "",
    mode: int = 0o644,
) -> None:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = linkname
    info.mode = mode
    info.size = len(data) if kind == tarfile.REGTYPE else 0
    if "\x00" in name:
        info.pax_headers = {"path": name}  # only a pax record can carry a NUL into a name
    tar.addfile(info, io.BytesIO(data) if kind == tarfile.REGTYPE else None)


def write_tar(path: Path, fill: Callable[[tarfile.TarFile], None]) -> Path:
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as tar:
        fill(tar)
    return path


def files_under(root: Path) -> dict[str, bytes]:
    return {
        p.relative_to(root).as_posix(): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file() and not p.is_symlink()
    }
