"""carvectl: the responders' command-line client of the carve download service (docs/api.md).

Log in to Vault once; the token is kept in ``$XDG_CONFIG_HOME/carvectl/token`` (mode 0600)
unless ``VAULT_TOKEN`` is set::

    carvectl login --username alice                     # Vault userpass, password prompted
    vault print token | carvectl login --method token    # any token you already hold

Find, inspect and fetch carves::

    carvectl list --status complete --since 2026-11-01 --all
    carvectl --json list | jq -r '.[].carve_id'
    carvectl show 0f4c2a1e-...
    carvectl files 0f4c2a1e-...
    carvectl get 0f4c2a1e-... --expect-sha256 <carves.sha256 from osquery>   # resumable
    carvectl extract 0f4c2a1e-... /var/log/auth.log -d ./evidence

``get`` downloads to ``FILE.part`` and resumes it with ``Range``/``If-Range`` when run again;
the file only gets its final name once its SHA-256 matches the server's (and ``--expect-sha256``).
``extract`` writes members under DIR at their original host path and refuses unsafe ones; an
archive using what osquery never writes (GNU sparse members, pax global headers, ...) or
decompressing past ``--max-bytes`` (default 16 GiB) is refused before anything is written.

Environment: ``CARVECTL_SERVER``, ``CARVECTL_CACERT``, ``VAULT_TOKEN``, ``VAULT_ADDR``,
``VAULT_CACERT``, ``CARVECTL_PASSWORD``, ``XDG_CONFIG_HOME``.

Exit codes: 0 ok, 1 server or network error, 2 usage, 3 HTTP 401 (log in again), 4 HTTP 403
(token lacks the policy), 5 HTTP 404 or no member matched, 6 HTTP 409 (carve not complete),
7 integrity failure (SHA-256 mismatch, unsafe members or the archive refused), 130 interrupted.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import getpass
import hashlib
import json
import os
import posixpath
import re
import secrets
import stat
import sys
import tarfile
import tempfile
import urllib.parse
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any, TypeVar

import hvac
import hvac.exceptions
import requests
from tqdm import tqdm  # type: ignore[import-untyped]

from clients import carvectl_lookup as lookup
from shared import tarsafe
from shared.vault import is_loopback

DEFAULT_SERVER = "http://127.0.0.1:8082"
DEFAULT_VAULT_ADDR = "http://127.0.0.1:8200"
# The download service's default CARVE_VAULT_POLICY; a deployment may name it differently.
DEFAULT_POLICY = "osquery-file-carve-file-requests"
TOKEN_HEADER = "X-Vault-Token"
STATUSES = ("receiving", "complete", "failed", "expired", "deleted")

CHUNK_SIZE = 1 << 20
# Connect, then per-read: a stalled stream fails instead of hanging a responder's terminal.
TIMEOUT = (10.0, 120.0)
# osquery's carves.sha256 when it did not hash the file.
NOT_HASHED = "-1"
SHA256_RE = re.compile(r"[0-9a-f]{64}")
MAX_FILENAME = 200

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_UNAUTHORIZED = 3
EXIT_FORBIDDEN = 4
EXIT_NOT_FOUND = 5
EXIT_NOT_COMPLETE = 6
EXIT_INTEGRITY = 7
EXIT_INTERRUPTED = 130

Carve = dict[str, Any]
T = TypeVar("T")


class CliError(Exception):
    """A failure to report as one line on stderr, with the exit code it maps to."""

    def __init__(self, message: str, code: int = EXIT_ERROR) -> None:
        super().__init__(message)
        self.message = message
        self.code = code


# --------------------------------------------------------------------------------------------
# Pure helpers
# --------------------------------------------------------------------------------------------


def printable(text: str) -> str:
    """``text`` with control characters escaped.

    Member names and other strings come from the carved host, which may be compromised: an
    escape sequence in a file name must not reach the responder's terminal.
    """
    return "".join(ch if ch.isprintable() else repr(ch)[1:-1] for ch in text)


def one_line(text: str, limit: int = 300) -> str:
    flat = " ".join(printable(part) for part in str(text).split())
    return flat if len(flat) <= limit else flat[: limit - 3] + "..."


def human_size(size: int | None) -> str:
    """Binary units with one decimal: ``512 B``, ``1.5 KiB``, ``11.4 MiB``; ``-`` if unknown."""
    if size is None or size < 0:
        return "-"
    if size < 1024:
        return f"{size} B"
    value = float(size)
    for unit in ("KiB", "MiB", "GiB", "TiB"):
        value /= 1024
        if round(value, 1) < 1024:
            return f"{value:.1f} {unit}"
    return f"{value / 1024:.1f} PiB"


def format_progress(received: int | None, count: int | None) -> str:
    """``12/12 100%``; the percentage is floored so an unfinished carve never shows 100%."""
    got = received or 0
    if not count or count <= 0:
        return f"{got}/{count if count is not None else '?'}"
    return f"{got}/{count} {got * 100 // count}%"


def format_table(
    headers: Sequence[str], rows: Iterable[Sequence[str]], *, right: Collection[int] = ()
) -> str:
    """Columns separated by two spaces, ``right`` (column indexes) right-aligned."""
    cells = [[printable(str(cell)) for cell in row] for row in rows]
    widths = [
        max([len(header), *(len(row[i]) for row in cells)]) for i, header in enumerate(headers)
    ]
    lines = []
    for row in [list(headers), *cells]:
        padded = [
            cell.rjust(widths[i]) if i in right else cell.ljust(widths[i])
            for i, cell in enumerate(row)
        ]
        lines.append("  ".join(padded).rstrip())
    return "\n".join(lines)


def format_mode(mode: int | None) -> str:
    return "-" if mode is None else f"{mode:04o}"


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


def stripped_path(name: str) -> str:
    """The member name without everything up to and including its ``osquery_carve_*`` component.

    ``/tmp/osquery_carve_<guid>/var/log/auth.log`` -> ``/var/log/auth.log`` (the original path
    on the host); a name without such a component is returned unchanged.
    """
    return tarsafe.stripped_path(name)


def relative_path(stripped: str) -> str:
    """Where a stripped path goes under the destination: without its one leading slash."""
    return tarsafe.relative_path(stripped)


def unsafe_reason(stripped: str) -> str | None:
    """Why a member with this stripped path must not be extracted, or None if its name is fine.

    A second leading slash (``//etc/passwd``) would still be absolute once the first is gone;
    tarfile would quietly strip it, but a carve that names such a path is not to be trusted.
    """
    return tarsafe.path_reason(stripped)


def normalize_selector(path: str) -> str:
    return path.strip("/")


def matching_selector(rel: str, selectors: Sequence[str]) -> str | None:
    """The selector choosing ``rel`` (exact path or a directory above it), or None.

    With no selectors everything is chosen, reported as the empty selector.
    """
    if not selectors:
        return ""
    clean = rel.strip("/")
    for selector in selectors:
        wanted = normalize_selector(selector)
        if not wanted or clean == wanted or clean.startswith(wanted + "/"):
            return selector
    return None


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


# --------------------------------------------------------------------------------------------
# Token storage
# --------------------------------------------------------------------------------------------


def token_file(env: Mapping[str, str] | None = None) -> Path:
    env = os.environ if env is None else env
    # The XDG spec says a relative XDG_CONFIG_HOME is invalid and must be ignored.
    base = env.get("XDG_CONFIG_HOME", "")
    root = Path(base) if base and os.path.isabs(base) else Path.home() / ".config"
    return root / "carvectl" / "token"


def save_token(token: str, path: Path) -> None:
    """Write ``token`` to ``path`` (mode 0600, directory 0700), replacing it atomically."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(path.parent, 0o700)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
    # O_EXCL|O_NOFOLLOW: never write the token through a symlink planted at the temporary name.
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    try:
        os.fchmod(fd, 0o600)  # an odd umask can only remove bits; make the mode exact anyway
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(token + "\n")
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def load_token(env: Mapping[str, str] | None = None) -> str | None:
    """``VAULT_TOKEN``, else the token file's content, else None."""
    env = os.environ if env is None else env
    if token := env.get("VAULT_TOKEN", "").strip():
        return token
    path = token_file(env)
    try:
        with path.open(encoding="utf-8") as fh:
            mode = os.fstat(fh.fileno()).st_mode
            token = fh.read().strip()
    except FileNotFoundError:
        return None
    if mode & 0o077:
        warn(f"{path} is readable by others (mode {stat.S_IMODE(mode):04o}): chmod 600 it")
    return token or None


# --------------------------------------------------------------------------------------------
# HTTP
# --------------------------------------------------------------------------------------------


def _response_body(response: requests.Response) -> dict[str, Any]:
    try:
        body = response.json()
    except ValueError:
        return {}
    return body if isinstance(body, dict) else {}


def _conflict_message(body: Mapping[str, Any]) -> str:
    return (
        f"carve not complete yet: {body.get('status', '?')}, "
        f"{body.get('blocks_received', '?')}/{body.get('block_count', '?')} blocks"
    )


_SIMPLE_ERRORS = {
    400: ("the server rejected the request", EXIT_USAGE),
    404: ("not found", EXIT_NOT_FOUND),
    416: ("range not satisfiable", EXIT_ERROR),
    429: ("the server is busy with this carve or with you, retry shortly", EXIT_ERROR),
    503: ("service unavailable (MongoDB or Vault unreachable)", EXIT_ERROR),
}


def error_from_response(response: requests.Response) -> CliError:
    """The one-line message and exit code for an HTTP error answer."""
    status = response.status_code
    body = _response_body(response)
    detail = one_line(str(body.get("error") or response.reason or f"HTTP {status}"))
    if status == 401:
        return CliError(
            "not logged in or token expired/revoked: run carvectl login", EXIT_UNAUTHORIZED
        )
    if status == 403:
        return CliError(
            "your Vault token lacks the policy the download service requires "
            f"(its CARVE_VAULT_POLICY, by default {DEFAULT_POLICY}): {detail}",
            EXIT_FORBIDDEN,
        )
    if status == 409:
        return CliError(_conflict_message(body), EXIT_NOT_COMPLETE)
    if status == 422:
        code = one_line(str(body.get("code") or "refused"))
        return CliError(f"the server refused the archive ({code}): {detail}", EXIT_INTEGRITY)
    if status in _SIMPLE_ERRORS:
        prefix, exit_code = _SIMPLE_ERRORS[status]
        return CliError(f"{prefix}: {detail}", exit_code)
    if 300 <= status < 400:
        # Following it would hand the token to wherever it points.
        where = one_line(response.headers.get("Location", "?"))
        return CliError(f"the server redirects to {where}; not following (check --server)")
    return CliError(f"server error (HTTP {status}): {detail}")


def _network_reason(exc: BaseException) -> str:
    # requests wraps urllib3's errors, which wrap the socket's: the innermost message is the
    # readable one ("Connection refused", "IncompleteRead(...)").
    inner: Any = exc
    for _ in range(4):
        nested = getattr(inner, "reason", None) or (inner.args[0] if inner.args else None)
        if isinstance(nested, str):
            return one_line(nested, 200)
        if not isinstance(nested, BaseException):
            break
        inner = nested
    return one_line(str(inner), 200)


class Api:
    """The download service's responder API over a caller-supplied ``requests.Session``.

    Every request carries the token in ``X-Vault-Token``, verifies TLS (``verify`` is True or a
    CA bundle, never False) and refuses redirects: requests keeps custom headers on a redirect
    to another host, so following one could leak the token.
    """

    def __init__(
        self,
        session: requests.Session,
        server: str,
        token: str | None,
        *,
        verify: str | bool = True,
        timeout: tuple[float, float] = TIMEOUT,
    ) -> None:
        self._session = session
        self.server = server.rstrip("/")
        self._token = token
        # Passed on every request: a session-level verify loses to REQUESTS_CA_BUNDLE.
        self._verify: str | bool = verify if verify else True
        self._timeout = timeout

    def __repr__(self) -> str:
        return f"Api(server={self.server!r})"

    def _url(self, *parts: str) -> str:
        quoted = "".join("/" + urllib.parse.quote(part, safe="") for part in parts)
        return f"{self.server}/api/v1/carves{quoted}"

    def request(
        self,
        url: str,
        *,
        params: Mapping[str, str | int] | None = None,
        headers: Mapping[str, str] | None = None,
        stream: bool = False,
    ) -> requests.Response:
        if not self._token:
            raise CliError(
                "not logged in: run carvectl login (or set VAULT_TOKEN)", EXIT_UNAUTHORIZED
            )
        sent = {TOKEN_HEADER: self._token, "Accept": "application/json", **(headers or {})}
        try:
            return self._session.get(
                url,
                params=params,
                headers=sent,
                stream=stream,
                verify=self._verify,
                timeout=self._timeout,
                allow_redirects=False,
            )
        except requests.exceptions.SSLError as exc:
            raise CliError(
                f"TLS verification of {self.server} failed: {_network_reason(exc)} "
                "(point --cacert or CARVECTL_CACERT at the server's CA)"
            ) from exc
        except requests.Timeout as exc:
            raise CliError(f"{self.server} did not answer in time") from exc
        except requests.RequestException as exc:
            raise CliError(f"cannot reach {self.server}: {_network_reason(exc)}") from exc

    def _json(self, url: str, params: Mapping[str, str | int] | None = None) -> dict[str, Any]:
        response = self.request(url, params=params)
        with contextlib.closing(response):
            if response.status_code != 200:
                raise error_from_response(response)
            body = _response_body(response)
        if not body:
            raise CliError(f"unexpected answer from {self.server}: not a JSON object")
        return body

    def list_carves(
        self,
        *,
        status: str | None = None,
        since: str | None = None,
        limit: int | None = None,
        cursor: str | None = None,
        device: str | None = None,
        request_id: str | None = None,
    ) -> dict[str, Any]:
        query = {"status": status, "since": since, "limit": limit, "cursor": cursor}
        query |= {"device": device, "request_id": request_id}
        return self._json(self._url(), {k: v for k, v in query.items() if v is not None})

    def carve(self, carve_id: str) -> Carve:
        return self._json(self._url(carve_id))

    def files(self, carve_id: str, limit: int | None = None) -> dict[str, Any]:
        return self._json(self._url(carve_id, "files"), {"limit": limit} if limit else None)

    def archive(self, carve_id: str, headers: Mapping[str, str]) -> requests.Response:
        """The streaming archive answer, whatever its status: the caller handles 206 and 416."""
        # identity: a Content-Encoding would make Range offsets and Content-Length mean the
        # encoded bytes, not the archive's.
        sent = {"Accept-Encoding": "identity", **headers}
        return self.request(self._url(carve_id, "archive"), headers=sent, stream=True)


# --------------------------------------------------------------------------------------------
# Verified, resumable download
# --------------------------------------------------------------------------------------------


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
        raise CliError(f"download interrupted: {_network_reason(exc)}{hint}") from exc


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


def _write(answer: _Answer, part: Path, chunks: Iterable[bytes], progress: bool) -> tuple[str, int]:
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
            desc=printable(part.name.removesuffix(".part")),
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
) -> Fetched:
    response = answer.response
    chunks = _chunks(response, resume) if answer.body else ()
    digest, size = _write(answer, part, chunks, progress)
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
    """Stream the archive into ``part`` and verify it; the caller renames it.

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
            return _receive(answer, carve, part, resume=resume, expect=expect, progress=progress)
    note(f"{printable(part.name)} is longer than the archive: starting over", quiet)
    part.unlink(missing_ok=True)
    return fetch_archive(
        api, carve_id, carve, part, resume=False, expect=expect, progress=progress, quiet=quiet
    )


# --------------------------------------------------------------------------------------------
# Safe extraction
# --------------------------------------------------------------------------------------------


@dataclasses.dataclass
class ExtractReport:
    extracted: list[str] = dataclasses.field(default_factory=list)
    refused: list[tuple[str, str]] = dataclasses.field(default_factory=list)
    unmatched: list[str] = dataclasses.field(default_factory=list)
    files: list[str] = dataclasses.field(default_factory=list)  # regular files written


def is_zstd(fh: IO[bytes]) -> bool:
    return tarsafe.is_zstd(fh)


def _through_symlink(dest: Path, rel: str, *, final: bool) -> bool:
    """Whether writing ``dest/rel`` would go through a symlink already on disk.

    data_filter checks paths with realpath, which long symlink chains defeat on Pythons before
    3.11.13 (CVE-2025-4517); never writing through a link at all closes that whole class.
    """
    path = dest
    parts = [p for p in rel.split("/") if p not in ("", ".")]
    for index, part in enumerate(parts):
        path = path / part
        if (final or index < len(parts) - 1) and path.is_symlink():
            return True
    return False


def _data_filter(member: tarfile.TarInfo, dest: str) -> tarfile.TarInfo:
    filtered = tarfile.data_filter(member, dest)
    if filtered.islnk():
        # os.link cannot replace a file the way a regular member overwrites one; only done
        # once the filter accepted the link, so a refused member never deletes anything.
        existing = os.path.join(dest, filtered.name)
        if os.path.lexists(existing) and not os.path.isdir(existing):
            os.unlink(existing)
    return filtered


_TARINFO_TYPES = {
    "file": tarfile.REGTYPE,
    "dir": tarfile.DIRTYPE,
    "symlink": tarfile.SYMTYPE,
    "hardlink": tarfile.LNKTYPE,
    "other": tarfile.CHRTYPE,  # a device or FIFO: data_filter refuses it either way
}


def _tarinfo(member: tarsafe.Member, rel: str, linkname: str) -> tarfile.TarInfo:
    """The member as a TarInfo, for tarfile.data_filter's checks (nothing else uses it)."""
    info = tarfile.TarInfo(rel)
    info.type = _TARINFO_TYPES[member.kind]
    info.size, info.mode, info.mtime = member.size, member.mode, member.mtime
    info.linkname = linkname
    return info


class _Extraction:
    """Writes the members of one pass; tarsafe parsed them, tarfile.data_filter vets each."""

    def __init__(self, tar: tarsafe.TarReader, dest: Path, selectors: Sequence[str]) -> None:
        self.tar = tar
        self.dest = dest
        self.selectors = selectors
        self.report = ExtractReport()
        self.matched: set[str] = set()
        # Regular files written by this run: the only targets a hard link may point at.
        self.files: set[str] = set()

    def member(self, member: tarsafe.Member) -> None:
        stripped = stripped_path(member.name)
        rel = relative_path(stripped)
        selector = matching_selector(rel, self.selectors)
        if selector is None:
            return
        self.matched.add(selector)
        reason = unsafe_reason(stripped)
        if reason is None and posixpath.normpath(rel) == ".":
            return  # the osquery_carve_<guid> directory itself, that is DIR
        if reason is None:
            reason = self._problem(member, rel)
        if reason is None:
            reason = self._extract(member, rel)
        if reason is not None:
            self.report.refused.append((member.name, reason))
            warn(f"refused {printable(member.name)}: {reason}")

    def _problem(self, member: tarsafe.Member, rel: str) -> str | None:
        if "\x00" in member.linkname:
            return "NUL byte in its link target"
        if _through_symlink(self.dest, rel, final=member.kind != "symlink"):
            return "its path goes through a symbolic link"
        if member.kind == "hardlink":
            target = stripped_path(member.linkname)
            if unsafe_reason(target) or _key(relative_path(target)) not in self.files:
                return "hard link to a member that was not extracted"
        return None

    def _extract(self, member: tarsafe.Member, rel: str) -> str | None:
        linkname = member.linkname
        if member.kind == "hardlink":
            # A hard link names another member, so its target carries the prefix too.
            linkname = relative_path(stripped_path(member.linkname))
        try:
            info = tarfile.data_filter(_tarinfo(member, rel, linkname), str(self.dest))
        except tarfile.FilterError as exc:
            return one_line(str(exc))
        target = self.dest / info.name
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            if member.kind == "dir":
                target.mkdir(mode=0o700, exist_ok=True)
            else:
                if target.is_symlink() or (target.exists() and not target.is_dir()):
                    target.unlink()  # a later member replaces an earlier one, as tar does
                self._write(member, info, target)
        except (OSError, OverflowError, ValueError) as exc:  # a host can write any mtime
            return one_line(f"cannot write it: {getattr(exc, 'strerror', None) or exc}")
        self.report.extracted.append(_key(rel))
        if member.kind == "file":
            self.files.add(_key(rel))
        else:
            self.files.discard(_key(rel))  # a later hard link to this path is no file of ours
        return None

    def _write(self, member: tarsafe.Member, info: tarfile.TarInfo, target: Path) -> None:
        if member.kind == "symlink":
            os.symlink(info.linkname, target)
            return
        if member.kind == "hardlink":
            # Never through a symlink: link the entry itself, and touch nothing it points at.
            os.link(self.dest / info.linkname, target, follow_symlinks=False)
            if target.is_symlink():
                return
        else:
            flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_EXCL
            with os.fdopen(os.open(target, flags, 0o600), "wb") as out:
                for piece in self.tar.data():
                    out.write(piece)
        if info.mode is not None:
            os.chmod(target, info.mode)
        os.utime(target, (member.mtime, member.mtime), follow_symlinks=False)


def _key(rel: str) -> str:
    return posixpath.normpath(rel).strip("/")


def extract_archive(
    archive: Path,
    dest: Path,
    selectors: Sequence[str] = (),
    *,
    zstd: bool = False,
    limits: tarsafe.Limits | None = None,
) -> ExtractReport:
    """Extract ``archive`` (a carve's tar, maybe zstd) under ``dest`` at stripped paths.

    The whole archive is read once first, writing nothing: a refused feature (sparse member,
    budget exceeded, ...) raises tarsafe.Refused before any file exists. Members whose names
    are unsafe, or that ``tarfile.data_filter`` rejects (links leaving ``dest``, device
    files), are refused and listed; ``selectors`` limit what is extracted.
    """
    limits = limits or tarsafe.Limits()
    dest.mkdir(parents=True, exist_ok=True)
    dest = dest.resolve()
    with archive.open("rb") as fh:
        zstd = zstd or is_zstd(fh)
        budget = tarsafe.Budget(limits)
        with tarsafe.open_tar(fh, zstd=zstd, budget=budget) as tar:
            for _ in tar:
                pass
        fh.seek(0)
        # The check pass has met the time budget: writing must not be cut short by it halfway
        # ("nothing written" holds only for the check); the byte budget still applies.
        budget.lift_deadline()
        with tarsafe.open_tar(fh, zstd=zstd, budget=budget) as tar:
            extraction = _Extraction(tar, dest, selectors)
            for member in tar:
                extraction.member(member)
    report = extraction.report
    report.unmatched = [s for s in selectors if s not in extraction.matched]
    report.files = sorted(extraction.files)
    return report


# --------------------------------------------------------------------------------------------
# Output
# --------------------------------------------------------------------------------------------


def warn(message: str) -> None:
    print(f"carvectl: warning: {message}", file=sys.stderr)


def note(message: str, quiet: bool) -> None:
    if not quiet:
        print(f"carvectl: {message}", file=sys.stderr)


def print_json(value: object) -> None:
    print(json.dumps(value, indent=2))


def _show_progress(args: argparse.Namespace) -> bool:
    return not args.quiet and sys.stderr.isatty()


CARVE_HEADERS = ("ID", "STATUS", "PROGRESS", "SIZE", "COMPRESSION", "DEVICE", "CREATED")
FILE_HEADERS = ("PATH", "TYPE", "SIZE", "MODE", "MTIME", "SHA256")


def carve_row(carve: Mapping[str, Any]) -> list[str]:
    return [
        str(carve.get("carve_id") or "-"),
        str(carve.get("status") or "-"),
        format_progress(carve.get("blocks_received"), carve.get("block_count")),
        human_size(carve.get("carve_size")),
        str(carve.get("compression") or "-"),
        printable(lookup.device_cell(carve)),
        str(carve.get("created_at") or "-"),
    ]


def file_row(member: Mapping[str, Any]) -> list[str]:
    path = str(member.get("path") or member.get("name") or "-")
    if member.get("unsafe"):
        path += f"  [unsafe: {member.get('reason') or '?'}]"
    elif member.get("superseded"):
        path += "  [superseded by a later member]"
    return [
        path,
        str(member.get("type") or "-"),
        human_size(member.get("size")),
        format_mode(member.get("mode")),
        str(member.get("mtime") or "-"),
        str(member.get("sha256") or "-"),
    ]


def format_carve(carve: Mapping[str, Any]) -> str:
    width = max((len(key) for key in carve), default=0) + 1
    lines = []
    for key, value in carve.items():
        if value is None:
            shown = "-"
        elif key == "device" and isinstance(value, dict):
            shown = lookup.device_line(value)
        elif key in ("carve_size", "block_size") and isinstance(value, int):
            shown = f"{value} ({human_size(value)})"
        elif isinstance(value, dict | list):
            shown = json.dumps(value)
        else:
            shown = str(value)
        lines.append(f"{printable(key + ':'):<{width}} {printable(shown)}")
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------
# Commands
# --------------------------------------------------------------------------------------------


def _dicts(value: object, what: str) -> list[dict[str, Any]]:
    if not isinstance(value, list) or not all(isinstance(item, dict) for item in value):
        raise CliError(f"unexpected answer from the server: {what} is not a list of objects")
    return value


def cmd_list(args: argparse.Namespace, api: Api) -> int:
    carves: list[dict[str, Any]] = []
    cursor: str | None = None
    seen: set[str] = set()
    while True:
        page = api.list_carves(
            status=args.status,
            since=args.since,
            limit=args.limit,
            cursor=cursor,
            device=args.device,
            request_id=args.request_id,
        )
        carves.extend(_dicts(page.get("carves"), "carves"))
        cursor = page.get("next_cursor") or None
        if not cursor or not args.all:
            break
        if cursor in seen:
            raise CliError("the server returned the same cursor twice: stopping")
        seen.add(cursor)
    if args.json:
        print_json(carves)
    else:
        print(format_table(CARVE_HEADERS, [carve_row(c) for c in carves], right={2, 3}))
    if cursor:
        note("more carves: add --all to list them all", args.quiet)
    return EXIT_OK


def resolve_carve(api: Api, ident: str) -> tuple[str, Carve]:
    """The carve named by a carve id, or by a request id that exactly one carve has."""
    missing = CliError(
        f"no carve {printable(ident)} (as a carve id or a request id)", EXIT_NOT_FOUND
    )
    if lookup.could_be_carve_id(ident):
        try:
            return ident, api.carve(ident)
        except CliError as exc:
            if exc.code != EXIT_NOT_FOUND:
                raise
    page = api.list_carves(request_id=ident, limit=2)
    try:
        found = lookup.one_match(_dicts(page.get("carves"), "carves"), ident)
    except ValueError as exc:
        raise CliError(f"{printable(str(exc))}: give the carve id", EXIT_USAGE) from exc
    if found is None:
        raise missing
    return found, api.carve(found)


def cmd_show(args: argparse.Namespace, api: Api) -> int:
    args.carve_id, carve = resolve_carve(api, args.carve_id)
    if args.json:
        print_json(carve)
    else:
        print(format_carve(carve))
    return EXIT_OK


def cmd_files(args: argparse.Namespace, api: Api) -> int:
    listing = api.files(args.carve_id, args.limit)
    if args.json:
        print_json(listing)
        return EXIT_OK
    members = _dicts(listing.get("members", []), "members")
    print(format_table(FILE_HEADERS, [file_row(m) for m in members], right={2}))
    if listing.get("truncated"):
        warn(f"only the first {len(members)} members are listed: raise --limit for more")
    return EXIT_OK


def default_filename(carve_id: str, carve: Mapping[str, Any]) -> str:
    if name := safe_basename(carve.get("filename")):
        return name
    suffix = ".tar.zst" if carve.get("compression") == "zstd" else ".tar"
    return f"carve_{safe_basename(carve_id) or 'unknown'}{suffix}"


def cmd_get(args: argparse.Namespace, api: Api) -> int:
    args.carve_id, carve = resolve_carve(api, args.carve_id)
    named_by_user = bool(args.output) and not Path(args.output).is_dir()
    if named_by_user:
        output = Path(args.output)
    else:
        output = Path(args.output or ".") / default_filename(args.carve_id, carve)
    part = output.with_name(output.name + ".part")
    fetched = fetch_archive(
        api,
        args.carve_id,
        carve,
        part,
        expect=args.expect_sha256,
        progress=_show_progress(args),
        quiet=args.quiet,
    )
    if not named_by_user and fetched.disposition_name:
        output = output.with_name(fetched.disposition_name)
    os.replace(part, output)
    if args.json:
        print_json(
            {
                "path": str(output),
                "sha256": fetched.sha256,
                "size": fetched.size,
                "resumed_from": fetched.resumed_from,
            }
        )
    else:
        # sha256sum's format, so the line can be fed to `sha256sum -c`.
        print(f"{fetched.sha256}  {printable(str(output))}")
    return EXIT_OK


def _temporary_archive(dest: Path) -> Path:
    # Next to DIR (not in it, so it is never taken for a member), else in the system tempdir.
    for directory in (dest.resolve().parent, None):
        try:
            fd, name = tempfile.mkstemp(prefix=".carvectl-", suffix=".part", dir=directory)
        except OSError:
            continue
        os.close(fd)
        return Path(name)
    raise CliError("cannot create a temporary file for the download")


def _extract_exit(report: ExtractReport) -> int:
    for selector in report.unmatched:
        warn(f"no member matches {printable(selector)}")
    if report.refused:
        warn(f"{len(report.refused)} member(s) refused as unsafe")
        return EXIT_INTEGRITY
    return EXIT_NOT_FOUND if report.unmatched else EXIT_OK


def _manifest_hashes(api: Api, args: argparse.Namespace) -> dict[str, str]:
    try:
        listing = api.files(args.carve_id)
    except CliError as exc:
        warn(f"files not checked against the carve's manifest: {exc.message}")
        return {}
    return lookup.manifest_hashes(_dicts(listing.get("members", []), "members"))


def cmd_extract(args: argparse.Namespace, api: Api) -> int:
    args.carve_id, carve = resolve_carve(api, args.carve_id)
    dest = Path(args.directory)
    dest.mkdir(parents=True, exist_ok=True)
    archive = _temporary_archive(dest)
    try:
        fetched = fetch_archive(
            api,
            args.carve_id,
            carve,
            archive,
            resume=False,
            expect=args.expect_sha256,
            progress=_show_progress(args),
            quiet=args.quiet,
        )
        limits = tarsafe.Limits(max_bytes=args.max_bytes, max_seconds=args.max_seconds)
        try:
            report = extract_archive(
                archive, dest, args.paths, zstd=carve.get("compression") == "zstd", limits=limits
            )
        except tarsafe.Refused as exc:
            raise CliError(
                f"the archive is refused ({exc.reason}): {one_line(exc.message)}; nothing written",
                EXIT_INTEGRITY,
            ) from exc
        except tarsafe.Malformed as exc:
            raise CliError(f"the archive cannot be read: {one_line(str(exc))}") from exc
    finally:
        archive.unlink(missing_ok=True)
    # The finalizer's manifest: every extracted file is checked against its SHA-256.
    if mismatched := lookup.check_extracted(dest, report.files, _manifest_hashes(api, args)):
        for line in mismatched:
            warn(printable(line))
        raise CliError(f"{len(mismatched)} file(s) differ from the manifest", EXIT_INTEGRITY)
    if args.json:
        print_json(
            {
                "directory": str(dest),
                "sha256": fetched.sha256,
                "extracted": report.extracted,
                "refused": [{"name": n, "reason": r} for n, r in report.refused],
                "unmatched": report.unmatched,
            }
        )
    else:
        print(f"extracted {len(report.extracted)} member(s) to {printable(str(dest))}")
    return _extract_exit(report)


def _vault_call(action: str, call: Callable[[], T]) -> T:
    try:
        return call()
    except (
        hvac.exceptions.InvalidRequest,
        hvac.exceptions.Unauthorized,
        hvac.exceptions.Forbidden,
    ) as exc:
        raise CliError(
            f"Vault refused the {action}: {one_line(str(exc))}", EXIT_UNAUTHORIZED
        ) from exc
    except hvac.exceptions.VaultError as exc:
        raise CliError(f"Vault error during the {action}: {one_line(str(exc))}") from exc
    except requests.RequestException as exc:
        raise CliError(f"cannot reach Vault for the {action}: {_network_reason(exc)}") from exc


def _ask(prompt: str, *, secret: bool, otherwise: str) -> str:
    # Without a terminal getpass would fall back to echoing whatever stdin holds.
    if not sys.stdin.isatty():
        raise CliError(f"no terminal to ask on: {otherwise}", EXIT_USAGE)
    try:
        answer = getpass.getpass(prompt) if secret else input(prompt)
    except EOFError:
        raise CliError("no answer (end of input)", EXIT_USAGE) from None
    return answer.strip()


def _userpass_token(args: argparse.Namespace, env: Mapping[str, str], client: Any) -> str:
    username = args.username or _ask("Vault username: ", secret=False, otherwise="pass --username")
    password = env.get("CARVECTL_PASSWORD") or _ask(
        f"Vault password for {username}: ", secret=True, otherwise="set CARVECTL_PASSWORD"
    )
    if not username or not password:
        raise CliError("a username and a password are needed", EXIT_USAGE)
    result = _vault_call("login", lambda: client.auth.userpass.login(username, password))
    token = result.get("auth", {}).get("client_token") if isinstance(result, dict) else None
    if not isinstance(token, str) or not token:
        raise CliError("Vault's login answer holds no client token")
    return token


def _stdin_token() -> str:
    if sys.stdin.isatty():
        token = _ask("Vault token: ", secret=True, otherwise="pipe the token in")
    else:
        token = sys.stdin.readline()
    if not token.strip():
        raise CliError("no token on standard input", EXIT_USAGE)
    return token.strip()


def cmd_login(args: argparse.Namespace, env: Mapping[str, str]) -> int:
    address = args.vault_addr or env.get("VAULT_ADDR") or DEFAULT_VAULT_ADDR
    verify: str | bool = env.get("VAULT_CACERT") or True
    # token="" stops hvac from picking up VAULT_TOKEN or ~/.vault-token for the login call.
    client = hvac.Client(url=address, token="", verify=verify, timeout=30)
    if args.method == "userpass":
        token = _userpass_token(args, env, client)
    else:
        token = _stdin_token()
    client.token = token
    lookup = _vault_call("token lookup", client.auth.token.lookup_self)
    data = lookup.get("data") if isinstance(lookup, dict) else None
    if not isinstance(data, dict):
        raise CliError("Vault's token lookup answer holds no data")
    path = token_file(env)
    save_token(token, path)
    return _report_login(args, env, data, path)


def _report_login(
    args: argparse.Namespace, env: Mapping[str, str], data: Mapping[str, Any], path: Path
) -> int:
    policies = list(data.get("policies") or [])
    identity = list(data.get("identity_policies") or [])
    if args.json:
        print_json(
            {
                "display_name": data.get("display_name"),
                "policies": policies,
                "identity_policies": identity,
                "expire_time": data.get("expire_time"),
                "token_file": str(path),
            }
        )
    else:
        print(f"logged in as {printable(str(data.get('display_name') or '?'))}")
        print(f"policies: {printable(', '.join(map(str, policies))) or '-'}")
        if identity:
            print(f"identity policies: {printable(', '.join(map(str, identity)))}")
        print(f"expires: {printable(str(data.get('expire_time') or 'never'))}")
        print(f"token saved to {path}")
    if DEFAULT_POLICY not in policies + identity:
        note(f"the token lacks {DEFAULT_POLICY}, the download service's default policy", args.quiet)
    if env.get("VAULT_TOKEN"):
        warn("VAULT_TOKEN is set and is used instead of the saved token")
    return EXIT_OK


# --------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------


def _bounded_int(maximum: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
        if not 1 <= value <= maximum:
            raise argparse.ArgumentTypeError(f"must be between 1 and {maximum}")
        return value

    return parse


def _sha256_arg(text: str) -> str:
    value = text.strip().lower()
    if value == NOT_HASHED or SHA256_RE.fullmatch(value):
        return value
    raise argparse.ArgumentTypeError("expected 64 hex digits (or -1, osquery's 'not hashed')")


def _since_arg(text: str) -> str:
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an ISO 8601 time: {text!r}") from None
    # Sent with an explicit offset so the server never has to guess what a naive time means.
    return (moment if moment.tzinfo else moment.replace(tzinfo=UTC)).isoformat()


def _add_common(parser: argparse.ArgumentParser, env: Mapping[str, str], *, top: bool) -> None:
    # The sub-parsers repeat the options with SUPPRESS defaults, so `carvectl list --json`
    # works as well as `carvectl --json list` without one resetting the other.
    def default(value: object) -> object:
        return value if top else argparse.SUPPRESS

    server = env.get("CARVECTL_SERVER") or DEFAULT_SERVER
    parser.add_argument(
        "--server",
        default=default(server),
        help=f"download service URL (env CARVECTL_SERVER, now {server})",
    )
    parser.add_argument(
        "--cacert",
        default=default(env.get("CARVECTL_CACERT") or None),
        help="CA bundle to verify the server with (env CARVECTL_CACERT)",
    )
    parser.add_argument(
        "--json", action="store_true", default=default(False), help="machine-readable output"
    )
    parser.add_argument(
        "--quiet", "-q", action="store_true", default=default(False), help="no progress or notes"
    )


def _add_commands(sub: Any, env: Mapping[str, str]) -> None:
    def command(name: str, handler: object, help_text: str) -> argparse.ArgumentParser:
        parser: argparse.ArgumentParser = sub.add_parser(name, help=help_text)
        _add_common(parser, env, top=False)
        parser.set_defaults(handler=handler)
        return parser

    login = command("login", cmd_login, "log in to Vault and save the token")
    login.add_argument("--method", choices=("userpass", "token"), default="userpass")
    login.add_argument("--username", "-u")
    login.add_argument(
        "--vault-addr", help=f"Vault URL (env VAULT_ADDR, default {DEFAULT_VAULT_ADDR})"
    )

    listing = command("list", cmd_list, "list carves, newest first")
    listing.add_argument("--status", choices=STATUSES)
    listing.add_argument("--since", type=_since_arg, help="ISO 8601; naive times are UTC")
    listing.add_argument("--limit", type=_bounded_int(1000), help="page size (1-1000)")
    listing.add_argument("--all", action="store_true", help="follow next_cursor to the end")
    listing.add_argument("--device", help="device certificate CN, or its SHA-256 fingerprint")
    listing.add_argument("--request-id", help="the request id osquery's query printed")

    show = command("show", cmd_show, "show one carve")
    show.add_argument("carve_id", metavar="ID")

    files = command("files", cmd_files, "list the members of a carve's archive")
    files.add_argument("carve_id", metavar="ID")
    files.add_argument("--limit", type=_bounded_int(100000))

    get = command("get", cmd_get, "download a carve's archive (resumable, verified)")
    get.add_argument("carve_id", metavar="ID")
    get.add_argument("-o", "--output", metavar="FILE", help="default: the server's file name")
    get.add_argument("--expect-sha256", type=_sha256_arg, metavar="HEX")

    extract = command("extract", cmd_extract, "download a carve and extract it safely")
    extract.add_argument("carve_id", metavar="ID")
    extract.add_argument("paths", nargs="*", metavar="PATH", help="only these paths or dirs")
    extract.add_argument("-d", "--directory", required=True, metavar="DIR")
    extract.add_argument("--expect-sha256", type=_sha256_arg, metavar="HEX")
    defaults = tarsafe.Limits()
    extract.add_argument(
        "--max-bytes",
        type=_bounded_int(1 << 62),
        default=defaults.max_bytes,
        help=f"decompressed bytes allowed per pass (default {defaults.max_bytes}, 16 GiB)",
    )
    extract.add_argument(
        "--max-seconds",
        type=float,
        default=defaults.max_seconds,
        help=f"seconds the extraction may take (default {defaults.max_seconds})",
    )


def build_parser(env: Mapping[str, str] | None = None) -> argparse.ArgumentParser:
    env = os.environ if env is None else env
    parser = argparse.ArgumentParser(
        prog="carvectl",
        description="Client of the osquery carve download service.",
        epilog="exit codes: 0 ok, 1 server/network, 2 usage, 3 HTTP 401, 4 HTTP 403, "
        "5 HTTP 404, 6 not complete (409), 7 integrity",
    )
    _add_common(parser, env, top=True)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_commands(sub, env)
    return parser


def _make_api(args: argparse.Namespace, session: requests.Session, env: Mapping[str, str]) -> Api:
    parsed = urllib.parse.urlsplit(args.server)
    if parsed.scheme not in ("http", "https") or not parsed.hostname:
        raise CliError(f"--server must be an http(s) URL, got {args.server!r}", EXIT_USAGE)
    if args.cacert and not Path(args.cacert).is_file():
        raise CliError(f"--cacert: no such file {args.cacert!r}", EXIT_USAGE)
    token = load_token(env)
    if token and parsed.scheme == "http" and not is_loopback(parsed.hostname):
        warn(f"sending your Vault token to {parsed.hostname} over plain HTTP")
    return Api(session, args.server, token, verify=args.cacert or True)


def _dispatch(
    args: argparse.Namespace, session: requests.Session | None, env: Mapping[str, str]
) -> int:
    if args.command == "login":
        return cmd_login(args, env)
    with contextlib.ExitStack() as stack:
        if session is None:
            session = stack.enter_context(requests.Session())
        handler: Callable[[argparse.Namespace, Api], int] = args.handler
        return handler(args, _make_api(args, session, env))


def run(
    argv: Sequence[str] | None = None,
    session: requests.Session | None = None,
    env: Mapping[str, str] | None = None,
) -> int:
    """``main`` with the seams tests need: the HTTP session and the environment."""
    env = os.environ if env is None else env
    try:
        args = build_parser(env).parse_args(argv)
    except SystemExit as exc:  # argparse exits on --help (0) and on usage errors (2)
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE
    try:
        return _dispatch(args, session, env)
    except CliError as exc:
        print(f"carvectl: {exc.message}", file=sys.stderr)
        return exc.code
    except OSError as exc:
        where = f": {printable(str(exc.filename))}" if exc.filename else ""
        print(f"carvectl: {exc.strerror or exc}{where}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        print("carvectl: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


def main(argv: Sequence[str] | None = None) -> int:
    return run(argv)


if __name__ == "__main__":
    sys.exit(main())
