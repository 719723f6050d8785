"""What the console added to the API, for carvectl: devices, request ids, manifests."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

MAX_CANDIDATES = 1000  # carves looked at to tell whether an id prefix is unique
SHOWN_CANDIDATES = 10
CARVE_ID_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-")


def device_cell(carve: Mapping[str, Any]) -> str:
    device = carve.get("device")
    if isinstance(device, Mapping) and device.get("common_name"):
        return str(device["common_name"])
    return "-"


def device_line(device: Mapping[str, Any]) -> str:
    """``show``'s one line for a device: its CN, then what identifies the certificate."""
    return (
        f"{device.get('common_name') or '-'} (subject {device.get('subject_dn') or '-'}, "
        f"serial {device.get('serial') or '-'}, sha256 {device.get('fingerprint_sha256') or '-'})"
    )


def could_be_carve_id(text: str) -> bool:
    return 0 < len(text) <= 128 and text[0] not in "_-" and set(text) <= CARVE_ID_CHARS


def candidate_lines(carves: Sequence[Mapping[str, Any]]) -> list[str]:
    """The carves an ambiguous name could mean: id, host, what was carved, when."""
    lines = [
        f"  {c.get('carve_id')}  {c.get('host') or device_cell(c)}  {what_cell(c)}  "
        f"{c.get('created_at') or '-'}"
        for c in carves[:SHOWN_CANDIDATES]
    ]
    if len(carves) > SHOWN_CANDIDATES:
        lines.append(f"  ... and {len(carves) - SHOWN_CANDIDATES} more")
    return lines


def what_cell(carve: Mapping[str, Any]) -> str:
    """What was carved: the first path, and how many more (``-`` until it is complete)."""
    paths = carve.get("paths") or []
    if not paths:
        return "-"
    more = int(carve.get("path_count") or len(paths)) - 1
    return str(paths[0]) + (f" (+{more} more)" if more > 0 else "")


def manifest_hashes(members: Iterable[Mapping[str, Any]]) -> dict[str, str]:
    """Relative path -> SHA-256 of the file extraction leaves there (safe, last at its path)."""
    found: dict[str, str] = {}
    for member in members:
        if member.get("type") != "file" or member.get("unsafe") or member.get("superseded"):
            continue
        if isinstance(member.get("sha256"), str):
            found[str(member["path"]).strip("/")] = member["sha256"]
    return found


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while piece := fh.read(1024 * 1024):
            digest.update(piece)
    return digest.hexdigest()


def check_extracted(dest: Path, files: Iterable[str], hashes: Mapping[str, str]) -> list[str]:
    """Extracted files whose bytes do not hash to what the manifest says (with why)."""
    bad: list[str] = []
    for rel in sorted(files):
        want = hashes.get(rel)
        if want is None:
            continue  # not in the manifest (truncated manifest): nothing to check against
        got = sha256_of(dest / rel)
        if got != want:
            bad.append(f"{rel}: SHA-256 {got}, the manifest says {want}")
    return bad
