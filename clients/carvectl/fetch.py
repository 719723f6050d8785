"""A verified, resumable download of a carve's archive into ``FILE.part``.

``FILE.part`` is resumed with ``Range``/``If-Range`` when it exists; the bytes are hashed as
they arrive (a resumed prefix is re-hashed first) and compared with every SHA-256 the server
and the responder declared. Also the parsing of the answer's headers.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import os
import re
import stat
import sys
import urllib.parse
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import IO, Any

import requests
from tqdm import tqdm  # type: ignore[import-untyped]

from clients.carvectl.api import Api, error_from_response, network_reason
from clients.carvectl.errors import EXIT_INTEGRITY, CliError
from clients.carvectl.render import note, one_line, printable, warn

CHUNK_SIZE = 1 << 20
# osquery's carves.sha256 when it did not hash the file.
NOT_HASHED = "-1"
SHA256_RE = re.compile(r"[0-9a-f]{64}")
MAX_FILENAME = 200


def normalize_sha256(value: object) -> str | None:
    """Lowercase hex from a carve record, a header or an ETag (``W/"..."``); None if absent."""
    if not isinstance(value, str):
        return None
    text = value.strip()
    if text.startswith("W/"):
        text = text[2:]
    text = text.strip('"').strip().lower()
    return text or None


def safe_basename(name: str | None) -> str | None:
    """A file name that stays in the current directory, or None if nothing usable is left.

    Only the last path component survives (either separator), control characters are dropped,
    and leading dots go, so neither ``..`` nor a hidden file can come out of it.
    """
    if not name:
        return None
    base = name.replace("\\", "/").rsplit("/", 1)[-1]
    base = "".join(ch for ch in base if ch.isprintable()).strip().lstrip(".").strip()
    return base[:MAX_FILENAME] or None


_DISPOSITION_PARAM = re.compile(r';\s*(filename\*?)\s*=\s*("(?:[^"\\]|\\.)*"|[^;]*)', re.IGNORECASE)


def content_disposition_filename(value: str | None) -> str | None:
    """The safe base name from a ``Content-Disposition`` header (RFC 6266), or None.

    ``filename*`` (RFC 8187, percent-encoded with a charset) wins over ``filename``.
    """
    if not value:
        return None
    params: dict[str, str] = {}
    for key, raw in _DISPOSITION_PARAM.findall(value):
        text = raw.strip()
        if text.startswith('"') and text.endswith('"') and len(text) >= 2:
            text = re.sub(r"\\(.)", r"\1", text[1:-1])
        params.setdefault(key.lower(), text)
    extended = params.get("filename*")
    if extended and extended.count("'") >= 2:
        charset, _lang, encoded = extended.split("'", 2)
        try:
            decoded = urllib.parse.unquote(encoded, encoding=charset or "utf-8", errors="strict")
        except (LookupError, UnicodeDecodeError):
            decoded = ""
        if safe := safe_basename(decoded):
            return safe
    return safe_basename(params.get("filename"))


def parse_content_range(value: str | None) -> tuple[int | None, int | None, int | None]:
    """``bytes a-b/n`` -> (a, b, n); ``bytes */n`` -> (None, None, n); unknown parts None."""
    match = re.fullmatch(r"\s*bytes\s+(?:(\d+)-(\d+)|\*)/(\d+|\*)\s*", value or "")
    if not match:
        return None, None, None
    start, end, total = match.groups()

    def number(text: str | None) -> int | None:
        return int(text) if text and text != "*" else None

    return number(start), number(end), number(total)


def check_sha256(
    actual: str, declared: Mapping[str, object], expected: str | None
) -> tuple[list[str], list[str]]:
    """Compare ``actual`` with every declared hash and the expected one.

    Returns (mismatches, warnings). ``declared`` maps a source (carve record, header, ETag) to
    what it said; absent values are skipped. ``-1`` is osquery's "not hashed" and only warns.
    """
    mismatches: list[str] = []
    warnings: list[str] = []
    compared = 0
    sources = dict(declared)
    if expected is not None:
        sources["--expect-sha256"] = expected
    for source, raw in sources.items():
        value = normalize_sha256(raw)
        if value is None:
            continue
        if value == NOT_HASHED:
            warnings.append(f"{source} is -1 (osquery did not hash the file): not compared")
        elif not SHA256_RE.fullmatch(value):
            warnings.append(f"{source} is not a SHA-256 ({one_line(value, 80)}): not compared")
        else:
            compared += 1
            if value != actual:
                mismatches.append(f"{source} says {value}")
    if not compared:
        warnings.append("no SHA-256 to compare with: the download is not verified")
    return mismatches, warnings


@dataclasses.dataclass(frozen=True)
class Fetched:
    sha256: str
    size: int
    resumed_from: int
    disposition_name: str | None


@dataclasses.dataclass(frozen=True)
class _Answer:
    response: requests.Response
    offset: int  # bytes of the .part file kept
    total: int | None  # archive size, when the server said
    body: bool  # whether the response body is archive bytes


def _range_headers(offset: int, sha256: str | None) -> dict[str, str]:
    if not offset or not sha256:
        return {}
    # If-Range: the server sends the rest only if the archive is still the one whose start we
    # hold; otherwise it answers 200 with the whole file and the .part is started over.
    return {"Range": f"bytes={offset}-", "If-Range": f'"{sha256}"'}


def _classify(response: requests.Response, offset: int) -> _Answer | None:
    """How to use the archive answer; None when the .part must be dropped and fetched again."""
    status = response.status_code
    if status == 206:
        start, _end, total = parse_content_range(response.headers.get("Content-Range"))
        if start != offset:
            raise CliError(f"the server sent bytes from {start}, asked for {offset}")
        return _Answer(response, offset, total, body=True)
    if status == 200:
        length = response.headers.get("Content-Length", "")
        total = int(length) if length.isdigit() else None
        return _Answer(response, 0, total, body=True)
    if status == 416 and offset:
        _start, _end, total = parse_content_range(response.headers.get("Content-Range"))
        if total == offset:
            # The previous run got every byte but stopped before renaming: verify what is there.
            return _Answer(response, offset, total, body=False)
        return None
    raise error_from_response(response)


def _chunks(response: requests.Response, resumable: bool) -> Iterator[bytes]:
    try:
        yield from response.iter_content(chunk_size=CHUNK_SIZE)
    except requests.RequestException as exc:
        hint = "; run the same command again to resume" if resumable else ""
        raise CliError(f"download interrupted: {network_reason(exc)}{hint}") from exc


def _hash_prefix(fh: IO[bytes], length: int, hasher: Any) -> None:
    left = length
    while left > 0:
        piece = fh.read(min(CHUNK_SIZE, left))
        if not piece:
            raise CliError("the partial download shrank while resuming it: run the command again")
        hasher.update(piece)
        left -= len(piece)


def _open_part(part: Path, offset: int, hasher: Any) -> IO[bytes]:
    # O_NOFOLLOW: a symlink planted at FILE.part (say in /tmp) must not redirect the write.
    if offset:
        fh = os.fdopen(os.open(part, os.O_RDWR | os.O_NOFOLLOW), "r+b")
        try:
            _hash_prefix(fh, offset, hasher)
        except BaseException:
            fh.close()
            raise
        fh.seek(offset)
        fh.truncate()
        return fh
    # 0600: carves are evidence from a host and may hold secrets (auth logs, keys).
    fd = os.open(part, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
    return os.fdopen(fd, "wb")


def _write(
    answer: _Answer, part: Path, chunks: Iterable[bytes], progress: bool, label: str = ""
) -> tuple[str, int]:
    hasher = hashlib.sha256()
    size = answer.offset
    with (
        _open_part(part, answer.offset, hasher) as fh,
        tqdm(
            total=answer.total,
            initial=answer.offset,
            unit="B",
            unit_scale=True,
            unit_divisor=1024,
            disable=not progress,
            file=sys.stderr,
            desc=label or printable(part.name.removesuffix(".part")),
            leave=False,
        ) as bar,
    ):
        for chunk in chunks:
            fh.write(chunk)
            hasher.update(chunk)
            size += len(chunk)
            bar.update(len(chunk))
        fh.flush()
        os.fsync(fh.fileno())
    return hasher.hexdigest(), size


def _verify(part: Path, digest: str, declared: Mapping[str, object], expected: str | None) -> None:
    mismatches, warnings = check_sha256(digest, declared, expected)
    for message in warnings:
        warn(message)
    if mismatches:
        part.unlink(missing_ok=True)
        raise CliError(
            f"SHA-256 mismatch: the download is {digest} but {'; '.join(mismatches)}; "
            f"deleted {printable(str(part))}",
            EXIT_INTEGRITY,
        )


def _receive(
    answer: _Answer,
    carve: Mapping[str, Any],
    part: Path,
    *,
    resume: bool,
    expect: str | None,
    progress: bool,
    label: str = "",
) -> Fetched:
    response = answer.response
    chunks = _chunks(response, resume) if answer.body else ()
    digest, size = _write(answer, part, chunks, progress, label)
    if answer.total is not None and size < answer.total:
        hint = "; run the same command again to resume" if resume else ""
        raise CliError(f"download incomplete: {size} of {answer.total} bytes{hint}")
    declared = {
        "the carve record": carve.get("sha256"),
        "X-Carve-SHA256": response.headers.get("X-Carve-SHA256"),
        "the ETag": response.headers.get("ETag"),
    }
    _verify(part, digest, declared, expect)
    disposition = content_disposition_filename(response.headers.get("Content-Disposition"))
    return Fetched(digest, size, answer.offset, disposition)


def _part_size(part: Path) -> int:
    try:
        info = part.lstat()
    except FileNotFoundError:
        return 0
    return info.st_size if stat.S_ISREG(info.st_mode) else 0


def fetch_archive(
    api: Api,
    carve_id: str,
    carve: Mapping[str, Any],
    part: Path,
    *,
    resume: bool = True,
    expect: str | None = None,
    progress: bool = False,
    quiet: bool = False,
) -> Fetched:
    """Stream the archive into ``part`` and verify it; the caller renames it. The progress
    bar says which carve it is (its short id).

    With ``resume``, an existing ``part`` is continued (and its bytes re-hashed first). On a
    SHA-256 mismatch ``part`` is deleted and CliError(7) raised; on an interruption it is kept.
    """
    known = normalize_sha256(carve.get("sha256"))
    offset = _part_size(part) if resume and known else 0
    response = api.archive(carve_id, _range_headers(offset, known))
    with contextlib.closing(response):
        answer = _classify(response, offset)
        if answer is not None:
            if offset and not answer.offset:
                note("the server's copy changed or it refused to resume: starting over", quiet)
            elif answer.offset:
                note(f"resuming {printable(part.name)} at byte {answer.offset}", quiet)
            label = f"carve {printable(carve_id[:8])} archive"
            return _receive(
                answer, carve, part, resume=resume, expect=expect, progress=progress, label=label
            )
    note(f"{printable(part.name)} is longer than the archive: starting over", quiet)
    part.unlink(missing_ok=True)
    return fetch_archive(
        api, carve_id, carve, part, resume=False, expect=expect, progress=progress, quiet=quiet
    )
