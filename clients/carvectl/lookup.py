"""What the console added to the API, for carvectl: devices, request ids, manifests."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

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


def one_match(carves: Sequence[Mapping[str, Any]], request_id: str) -> str | None:
    """The carve id if exactly one carve has ``request_id``; None if none; ValueError if more."""
    if len(carves) > 1:
        ids = ", ".join(str(c.get("carve_id")) for c in carves[:5])
        raise ValueError(f"{len(carves)} carves have request id {request_id}: {ids}")
    return str(carves[0]["carve_id"]) if carves else None


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
