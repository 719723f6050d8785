"""``extract ID PATH...`` through the member endpoint: only the chosen files' bytes travel.

The carve's manifest (``GET .../files`` answered from it) says which files the paths choose
and the SHA-256 of each; each file is then fetched alone (``GET .../files/{path}``) into a
hidden ``.part`` beside its place, checked against the manifest and the server's
``X-Carve-Member-SHA256``, and renamed. Without a whole manifest (a carve finalized before
manifests existed, or one cut short), the caller falls back to the whole archive.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tqdm import tqdm  # type: ignore[import-untyped]

from clients.carvectl.api import Api, error_from_response
from clients.carvectl.errors import EXIT_INTEGRITY, CliError
from clients.carvectl.extract import matching_selector
from clients.carvectl.fetch import CHUNK_SIZE, normalize_sha256
from clients.carvectl.render import printable
from shared import tarsafe


@dataclass
class MemberReport:
    files: list[str] = field(default_factory=list)  # written, relative to the directory
    unmatched: list[str] = field(default_factory=list)
    bytes_fetched: int = 0


def plan(
    listing: Mapping[str, Any], selectors: Sequence[str]
) -> tuple[list[dict[str, Any]], list[str]] | None:
    """The manifest's files ``selectors`` choose, and the selectors that chose none; None
    when the listing is not a whole manifest (then only the archive can say)."""
    if listing.get("source") != "manifest" or listing.get("truncated"):
        return None
    chosen: list[dict[str, Any]] = []
    used: set[str] = set()
    for member in listing.get("members") or []:
        if member.get("type") != "file" or member.get("unsafe") or member.get("superseded"):
            continue
        path = str(member.get("path") or "")
        if tarsafe.path_reason(path) is not None:
            continue
        selector = matching_selector(tarsafe.relative_path(path), selectors)
        if selector is not None:
            used.add(selector)
            chosen.append(member)
    return chosen, [s for s in selectors if s not in used]


def _place(dest: Path, path: str) -> Path:
    """Where ``path`` goes under ``dest``, its directories made; never through a link."""
    target = dest / tarsafe.relative_path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    root = dest.resolve()
    if target.parent.resolve() != root and root not in target.parent.resolve().parents:
        raise CliError(f"{printable(path)}: its directory leads outside {printable(str(dest))}")
    return target


def fetch_member(
    api: Api, carve_id: str, member: Mapping[str, Any], dest: Path, *, progress: bool
) -> int:
    """Fetch one file into its place; the bytes it took."""
    path = str(member["path"])
    target = _place(dest, path)
    part = target.with_name(f".{target.name}.carvectl-part")
    want = normalize_sha256(member.get("sha256"))
    response = api.member(carve_id, path)
    with contextlib.closing(response):
        if response.status_code != 200:
            raise error_from_response(response)
        said = normalize_sha256(response.headers.get("X-Carve-Member-SHA256"))
        digest, size = hashlib.sha256(), 0
        fd = os.open(part, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
        with (
            os.fdopen(fd, "wb") as out,
            tqdm(
                total=member.get("size"),
                unit="B",
                unit_scale=True,
                unit_divisor=1024,
                disable=not progress,
                file=sys.stderr,
                desc=f"carve {printable(carve_id[:8])} {printable(path)}",
                leave=False,
            ) as bar,
        ):
            for piece in response.iter_content(chunk_size=CHUNK_SIZE):
                out.write(piece)
                digest.update(piece)
                size += len(piece)
                bar.update(len(piece))
    got = digest.hexdigest()
    for source, value in (("the manifest", want), ("X-Carve-Member-SHA256", said)):
        if value is not None and value != got:
            part.unlink(missing_ok=True)
            raise CliError(
                f"{printable(path)}: SHA-256 {got}, but {source} says {value}", EXIT_INTEGRITY
            )
    if want is None:
        part.unlink(missing_ok=True)
        raise CliError(f"{printable(path)}: the manifest has no SHA-256 for it", EXIT_INTEGRITY)
    os.replace(part, target)
    return size


def extract_members(
    api: Api, carve_id: str, chosen: Sequence[Mapping[str, Any]], dest: Path, *, progress: bool
) -> MemberReport:
    report = MemberReport()
    for member in chosen:
        report.bytes_fetched += fetch_member(api, carve_id, member, dest, progress=progress)
        report.files.append(tarsafe.relative_path(str(member["path"])))
    return report
