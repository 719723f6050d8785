"""Sizes and plain-text tables for the benchmarks' reports (MB = 10^6 bytes, MiB = 2^20)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

KiB = 1024
MiB = 1024 * KiB
GiB = 1024 * MiB
MB = 1_000_000
GB = 1000 * MB
Units = Sequence[tuple[int, str]]
# The first unit that divides a size exactly names it.
DECIMAL_FIRST: Units = ((GB, "GB"), (MB, "MB"), (GiB, "GiB"), (MiB, "MiB"), (KiB, "KiB"),
                        (1000, "kB"))  # fmt: skip
BINARY_FIRST: Units = ((MiB, "MiB"), (KiB, "KiB"), (GB, "GB"), (MB, "MB"))


def size_text(size: int, units: Units = DECIMAL_FIRST, sep: str = " ") -> str:
    """A size in the first of ``units`` that divides it: 8192 -> "8 KiB", 2_000_000 -> "2 MB",
    500_000 -> "500 kB"; in bytes when none does (1,234 B)."""
    for unit, name in units:
        if size >= unit and size % unit == 0:
            return f"{size // unit}{sep}{name}"
    return f"{size:,}{sep}B"


def human(size: int) -> str:
    """A table cell's size: 8192 -> 8KiB, 1048576 -> 1MiB, 100_000_000 -> 100MB, 10**9 -> 1GB."""
    return size_text(size, BINARY_FIRST, sep="")


def table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    cells = [list(headers), *[[str(cell) for cell in row] for row in rows]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    lines = [
        "  ".join(cell.rjust(width) for cell, width in zip(row, widths, strict=True))
        for row in cells
    ]
    return "\n".join(lines)


SIZE_KEYS = ("carve_size", "block_size")


def cell(row: dict[str, Any], key: str) -> object:
    """The value at a dotted key of a report row, sizes made readable; "-" if missing."""
    value: Any = row
    for part in key.split("."):
        value = value.get(part, "-") if isinstance(value, dict) else "-"
    return human(value) if key in SIZE_KEYS else value


def columns_table(columns: Sequence[tuple[str, str]], rows: list[dict[str, Any]]) -> str:
    headers = [header for header, _ in columns]
    return table(headers, [[cell(row, key) for _, key in columns] for row in rows])
