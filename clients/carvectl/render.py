"""What carvectl prints: escaped text, sizes, tables, the carve and member rows, notes.

Everything shown may come from the carved host, which may be compromised: it goes through
``printable`` so no escape sequence reaches the responder's terminal.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Collection, Iterable, Mapping, Sequence
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


CARVE_HEADERS = ("ID", "STATUS", "PROGRESS", "SIZE", "COMPRESSION", "DEVICE", "CREATED")
# INDEX: the member's position in the archive, for ``carvectl member`` (any name).
FILE_HEADERS = ("PATH", "TYPE", "SIZE", "MODE", "MTIME", "INDEX", "SHA256")


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
        str(member.get("index", "-")),
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
