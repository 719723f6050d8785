"""What carvectl prints: escaped text, sizes, tables, the carve and member rows, notes.

Everything shown may come from the carved host, which may be compromised: it goes through
``printable`` so no escape sequence reaches the responder's terminal.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Collection, Iterable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from clients.carvectl import lookup


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


def warn(message: str) -> None:
    print(f"carvectl: warning: {message}", file=sys.stderr)


def note(message: str, quiet: bool) -> None:
    if not quiet:
        print(f"carvectl: {message}", file=sys.stderr)


def print_json(value: object) -> None:
    print(json.dumps(value, indent=2))


CARVE_HEADERS = ("ID", "STATUS", "PROGRESS", "SIZE", "HOST", "CARVED", "CREATED", "VERDICT")
# INDEX: the member's position in the archive, for ``carvectl member`` (any name).
FILE_HEADERS = ("PATH", "TYPE", "SIZE", "MODE", "MTIME", "INDEX", "SHA256")


def verdict_of(carve: Mapping[str, Any]) -> str:
    from clients.carvectl.triage import verdict_cell  # triage imports this module

    return verdict_cell(carve)


def carve_row(carve: Mapping[str, Any]) -> list[str]:
    return [
        str(carve.get("carve_id") or "-"),
        str(carve.get("status") or "-"),
        format_progress(carve.get("blocks_received"), carve.get("block_count")),
        human_size(carve.get("carve_size")),
        printable(str(carve.get("host") or lookup.device_cell(carve))),
        printable(lookup.what_cell(carve)),
        str(carve.get("created_at") or "-"),
        verdict_of(carve),
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
        str(member.get("index", "-")),
        str(member.get("sha256") or "-"),
    ]


def ago(when: object, now: datetime | None = None) -> str:
    """``2026-11-27T10:00:00Z (3 h ago)``: the time as the server wrote it, and how long ago."""
    if not isinstance(when, str) or not when:
        return "-"
    try:
        moment = datetime.fromisoformat(when.replace("Z", "+00:00"))
    except ValueError:
        return when
    seconds = int(((now or datetime.now(UTC)) - moment).total_seconds())
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if abs(seconds) >= size:
            return f"{when} ({seconds // size} {unit} ago)"
    return f"{when} ({seconds} s ago)"


def _manifest_line(manifest: Mapping[str, Any]) -> str:
    text = f"{manifest.get('members', '?')} members"
    if manifest.get("files") is not None:
        text += f", {manifest['files']} files"
    if manifest.get("truncated"):
        text += ", truncated"
    if manifest.get("error"):
        text += f"; not fully readable: {manifest['error']}"
    return text


def _size_line(carve: Mapping[str, Any]) -> str:
    size, block = carve.get("carve_size"), carve.get("block_size")
    text = f"{human_size(size)} ({size:,} bytes)" if isinstance(size, int) else "-"
    if carve.get("block_count") is not None:
        text += f" in {carve['block_count']} blocks of {human_size(block)}"
    return text + (f", {carve['compression']}" if carve.get("compression") else "")


def format_carve(carve: Mapping[str, Any]) -> str:
    """``show``: one labelled line per fact a responder reads, sizes and times for people
    (``--json`` has the raw record)."""
    paths = [str(p) for p in carve.get("paths") or []]
    more = int(carve.get("path_count") or len(paths)) - len(paths)
    rows: list[tuple[str, str]] = [
        ("carve", f"{carve.get('carve_id')}  ({carve.get('status')})"),
        ("host", str(carve.get("host") or lookup.device_cell(carve))),
        ("request id", str(carve.get("request_id") or "-")),
        ("carved", paths[0] if paths else "- (known once complete)"),
        *(("", path) for path in paths[1:]),
        *([("", f"+{more} more (carvectl files)")] if more > 0 else []),
        ("size", _size_line(carve)),
        ("progress", format_progress(carve.get("blocks_received"), carve.get("block_count"))),
        ("sha256", str(carve.get("sha256") or "-")),
        ("created", ago(carve.get("created_at"))),
        ("completed", ago(carve.get("completed_at"))),
    ]
    if isinstance(manifest := carve.get("manifest"), Mapping):
        rows.append(("manifest", _manifest_line(manifest)))
    if carve.get("failed_at") or carve.get("failure_reason"):
        rows.append(("failed", f"{ago(carve.get('failed_at'))}: {carve.get('failure_reason')}"))
    if carve.get("expired_at"):
        rows.append(("expired", ago(carve.get("expired_at"))))
    if carve.get("deleted_at"):
        rows.append(("deleted", f"{ago(carve['deleted_at'])} by {carve.get('deleted_by')}"))
    for hold in carve.get("holds") or []:
        placed = f"{hold.get('case')}: {hold.get('reason')} ({hold.get('placed_by')}, "
        rows.append(("legal hold", placed + f"{ago(hold.get('placed_at'))})"))
    if carve.get("cases"):
        rows.append(("cases", ", ".join(str(c) for c in carve["cases"])))
    if "expires_at" in carve:
        rows.append(("expires", ago(carve["expires_at"]) if carve["expires_at"] else "retention"))
    if isinstance(device := carve.get("device"), Mapping):
        rows.append(("device", lookup.device_line(device)))
    if carve.get("filename"):
        rows.append(("file", str(carve["filename"])))
    width = max(len(label) for label, _ in rows) + 1
    return "\n".join(
        f"{printable(label + ':' if label else ''):<{width}} {printable(value)}"
        for label, value in rows
    )
