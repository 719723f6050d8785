"""The issue's targets, judged on a matrix record (``bench.matrix``).

Each target names the point that measures it and the conditions that point must meet to
count (e.g. 50 hosts, 1 MiB blocks); a point run smaller (``--quick``) or with errors gives
"not evaluated", a point not run gives "not run", never a figure. For a missed target a
"bound" line says what limits the figure, computed from the same record: CPU seconds per
block (or per MB) of every process in the phase that matters, against the machine's cores;
the raw ceilings of the same servers; the blocks the hosts keep in flight.
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from bench.render import GB, MB, KiB, MiB

Row = dict[str, Any]
Points = dict[str, Row]

OSQUERY_REQUEST_LIMIT_S = 16.0
# "Far below osquery's 16 s": taken here as a quarter of it.
P99_LIMIT_MS = OSQUERY_REQUEST_LIMIT_S / 4 * 1000
# "RSS flat": the 1 GB carve's peak RSS at most this many times the 10 MB carve's.
FLAT_RATIO = 1.25
MIB_IN_MB = MiB / MB


def dig(row: Row | None, key: str) -> Any:
    """The value at a dotted key, or None."""
    value: Any = row
    for part in key.split("."):
        value = value.get(part) if isinstance(value, dict) else None
    return value


def field(point: str, key: str, scale: float = 1.0) -> Callable[[Points], float | None]:
    def value(points: Points) -> float | None:
        found = dig(points.get(point), key)
        return None if found is None else round(float(found) * scale, 3)

    return value


def growth(small: str, large: str, key: str) -> Callable[[Points], float | None]:
    """Ratio of one figure between two points (large / small)."""

    def value(points: Points) -> float | None:
        a, b = dig(points.get(small), key), dig(points.get(large), key)
        return round(b / a, 3) if a and b is not None else None

    return value


# --------------------------------------------------------------------------------------------
# What bounds a figure
# --------------------------------------------------------------------------------------------

Bound = Callable[[Sequence[Row], Row], str]


def _cpu_per_unit(row: Row, phase: str, per_mb: bool) -> tuple[dict[str, float], str]:
    cpu = dig(row, f"cpu_s_by_phase.{phase}") or {}
    units = row["total_mb"] if per_mb else row["blocks"]
    name = "MB" if per_mb else "block"
    return {proc: seconds * 1000 / units for proc, seconds in cpu.items() if units}, name


def cpu_bound(phase: str, per_mb: bool, ceiling_field: str) -> Bound:
    """CPU per block (or MB) of every process in ``phase`` (upload or drain): what both cores
    would allow at most, and how busy they were (the rest of the time went to waiting)."""

    def bound(rows: Sequence[Row], record: Row) -> str:
        row = rows[0]
        per, unit = _cpu_per_unit(row, phase, per_mb)
        total = sum(per.values())
        if not total:
            return "no CPU figures for this point"
        cores = record["machine"]["cores"]
        seconds = row[f"{phase}_s"]
        busy = total / 1000 * (row["total_mb"] if per_mb else row["blocks"]) / seconds / cores
        parts = ", ".join(f"{proc} {ms:.2f}" for proc, ms in sorted(per.items(), key=_second))
        rate = "MB/s" if per_mb else "blocks/s"
        return (
            f"{phase}-phase CPU ms per {unit}: {parts}; {total:.2f} ms in all, so {cores} cores "
            f"allow at most {cores * 1000 / total:,.0f} {rate} with every process on this "
            f"machine; in the {seconds} s of the phase they were {busy:.0%} busy "
            f"({field_name(ceiling_field)}: {row.get(ceiling_field)})"
        )

    return bound


def _second(item: tuple[str, float]) -> float:
    return -item[1]


def field_name(key: str) -> str:
    return key.replace("_", " ")


def latency_bound(rows: Sequence[Row], record: Row) -> str:
    """Little's law: each host has one block in flight, served at the accepted rate."""
    row = rows[0]
    in_flight_mb = row["hosts"] * row["block_size"] / MB
    wait_s = in_flight_mb / row["accepted_mb_per_s"] if row["accepted_mb_per_s"] else None
    expected = f"{wait_s:.2f} s" if wait_s is not None else "unknown"
    return (
        f"{row['hosts']} hosts keep {in_flight_mb:.1f} MB of blocks in flight; at the accepted "
        f"{row['accepted_mb_per_s']} MB/s a block waits {expected} on average (Little's law); "
        f"p50 {row['p50_ms']} ms, p99 {row['p99_ms']} ms"
    )


def errors_bound(rows: Sequence[Row], record: Row) -> str:
    kinds = {k: v for row in rows for k, v in (row.get("errors") or {}).items() if v}
    return f"errors by kind: {kinds}"


def rss_bound(process: str) -> Bound:
    def bound(rows: Sequence[Row], record: Row) -> str:
        row = rows[0]
        series = dig(row, f"rss_series_mib.{process}") or []
        first = series[0][1] if series else None
        in_flight = row["hosts"] * row["block_size"] / MiB
        return (
            f"{process} RSS {first} MiB when the upload started, peak (VmHWM) "
            f"{dig(row, process + '.peak_rss_mib')} MiB; the hosts keep {in_flight:.0f} MiB of "
            "blocks in flight"
        )

    return bound


def flat_bound(process: str) -> Bound:
    def bound(rows: Sequence[Row], record: Row) -> str:
        peaks = [f"{row['name']} {dig(row, process + '.peak_rss_mib')} MiB" for row in rows]
        return f"{process} peak RSS: {', '.join(peaks)}"

    return bound


def download_rss_bound(rows: Sequence[Row], record: Row) -> str:
    row = rows[0]
    ready, peak = dig(row, "download.rss_ready_mib"), dig(row, "download.peak_rss_mib")
    per_stream = (peak - ready) / row["clients"] if ready is not None and peak else None
    each = f"{per_stream:.1f}" if per_stream is not None else "?"
    return (
        f"download RSS {ready} MiB when ready, peak {peak} MiB: about {each} MiB per "
        f"concurrent stream over {row['clients']} streams"
    )


# --------------------------------------------------------------------------------------------
# Targets
# --------------------------------------------------------------------------------------------

OPS = {"==": operator.eq, ">=": operator.ge}
Require = tuple[str, str, Any]


@dataclass(frozen=True)
class Target:
    key: str
    text: str
    points: tuple[str, ...]
    value: Callable[[Points], float | None]
    limit: float
    at_least: bool  # met when value >= limit (else when value <= limit)
    unit: str
    requires: tuple[Require, ...]  # (key, "==" or ">=", value) every point must satisfy
    bound: Bound
    judge_errors: bool = True  # a point with errors says nothing about this target

    def unmet(self, rows: Sequence[Row]) -> list[str]:
        return [
            f"{row['name']} has {key} {dig(row, key)}, needs {op} {want}"
            for row in rows
            for key, op, want in self.requires
            if dig(row, key) is None or not OPS[op](dig(row, key), want)
        ]

    def judge(self, value: float) -> bool:
        return value >= self.limit if self.at_least else value <= self.limit


def _upload(**exact: Any) -> tuple[Require, ...]:
    return tuple((key, "==", value) for key, value in exact.items())


def _rss_targets(process: str) -> list[Target]:
    return [
        Target(
            f"rss-50-hosts-{process}",
            f"50 hosts, 1 MB blocks: {process} peak RSS <= 120 MB",
            ("H50-1M",),
            field("H50-1M", f"{process}.peak_rss_mib", MIB_IN_MB),
            120,
            False,
            "MB",
            _upload(hosts=50, block_size=MiB),
            rss_bound(process),
        ),
        Target(
            f"rss-flat-{process}",
            f"RSS flat from 10 MB to 1 GB carves: {process} peak RSS of D1G / D10M <= {FLAT_RATIO}",
            ("D10M", "D100M", "D1G"),
            growth("D10M", "D1G", f"{process}.peak_rss_mib"),
            FLAT_RATIO,
            False,
            "x",
            _upload(hosts=1, block_size=MiB),
            flat_bound(process),
        ),
    ]


def _hosts_200(name: str, block: int, label: str) -> list[Target]:
    return [
        Target(
            f"200-hosts-{label}-errors",
            f"200 hosts at once, {label} blocks: no errors",
            (name,),
            field(name, "error_count"),
            0,
            False,
            "errors",
            _upload(hosts=200, block_size=block),
            errors_bound,
            judge_errors=False,
        ),
        Target(
            f"200-hosts-{label}-p99",
            f"200 hosts at once, {label} blocks: p99 block latency far below osquery's 16 s "
            f"(here: <= {P99_LIMIT_MS:,.0f} ms)",
            (name,),
            field(name, "p99_ms"),
            P99_LIMIT_MS,
            False,
            "ms",
            _upload(hosts=200, block_size=block),
            latency_bound,
        ),
    ]


def _rate_target(key: str, text: str, point: str, limit: float, per_mb: bool) -> Target:
    return Target(
        key,
        text,
        (point,),
        field(point, "accepted_mb_per_s" if per_mb else "accepted_blocks_per_s"),
        limit,
        True,
        "MB/s" if per_mb else "blocks/s",
        _upload(
            block_size=MiB if per_mb else 8 * KiB, ingests=2 if "2x" in point else 1, staged=True
        ),
        cpu_bound("upload", per_mb, "accepted_vs_rabbit_ceiling"),
    )


def _complete_target(point: str, label: str, block: int) -> Target:
    return Target(
        f"complete-vs-gridfs-{label}",
        f"{label} blocks: carves become complete at >= 0.8 x the raw GridFS write rate "
        "(staged: one assembler alone, drain rate / raw chunk inserts of the same size)",
        (point,),
        field(point, "drain_vs_mongo_ceiling"),
        0.8,
        True,
        "x ceiling",
        _upload(block_size=block, assemblers=1, staged=True),
        cpu_bound("drain", True, "drain_mb_per_s"),
    )


TARGETS: tuple[Target, ...] = (
    _rate_target(
        "8k-one-ingest",
        "8 KiB blocks: >= 4,000 blocks/s accepted with one ingest process",
        "R8K-1x1",
        4000,
        False,
    ),
    _rate_target(
        "8k-two-ingests",
        "8 KiB blocks: >= 6,000 blocks/s with two ingest processes",
        "R8K-2x1",
        6000,
        False,
    ),
    _rate_target(
        "1m-one-ingest", "1 MB blocks: >= 150 MB/s accepted (one ingest)", "R1M-1x1", 150, True
    ),
    _rate_target(
        "1m-two-ingests", "1 MB blocks: >= 150 MB/s accepted (two ingests)", "R1M-2x1", 150, True
    ),
    _complete_target("R1M-1x1", "1 MiB", MiB),
    _complete_target("R8K-1x1", "8 KiB", 8 * KiB),
    *_hosts_200("H200-8K", 8 * KiB, "8 KiB"),
    *_hosts_200("H200-1M", MiB, "1 MiB"),
    *_rss_targets("ingest"),
    *_rss_targets("assembler"),
    Target(
        "download-rss",
        "20 concurrent 1 GB downloads: download service peak RSS <= 150 MB",
        ("DA20",),
        field("DA20", "peak_rss_mb"),
        150,
        False,
        "MB",
        (("clients", "==", 20), ("bytes_each", ">=", GB), ("target", "==", "archive")),
        download_rss_bound,
    ),
)


def wrk_bound(rows: Sequence[Row], record: Row) -> str:
    """CPU per block of every process at the point: where the microseconds go."""
    return "; ".join(
        f"{row['name']}: "
        + ", ".join(f"{name} {us} us" for name, us in sorted(row["cpu_us_per_block"].items()))
        + f" per block (wrk itself {row['wrk_us_per_block']} us)"
        for row in rows
    )


# A cheap-client point counts for a target only when run at full length.
_WRK_FULL: tuple[Require, ...] = (("seconds", ">=", 5.0),)
# The ingest's CPU per MiB at 1 MiB blocks before the small-block work (W1M-c10, first full
# bench.wrk_blocks run): the issue asks that 1 MiB blocks keep it. Alternated again after the
# linger (``python -m bench.wrk_blocks --only W1M-c10 --json`` in a copy of each tree, 3
# rounds, the machine loaded by other work): 34bf45c 4.33 ms, this code 4.41 ms per MiB, a
# difference within the noise; an absolute figure from a loaded machine reads high.
INGEST_MS_PER_MIB_BEFORE = 3.5


def _wrk_cpu_target(key: str, point: str, process: str, limit: float) -> Target:
    return Target(
        key,
        f"wrk client, 8 KiB blocks, {point}: {process} CPU <= {limit:g} us per block",
        (point,),
        field(point, f"cpu_us_per_block.{process}"),
        limit,
        False,
        "us/block",
        _WRK_FULL,
        wrk_bound,
    )


WRK_TARGETS: tuple[Target, ...] = (
    _wrk_cpu_target("wrk-8k-c10-ingest", "W8K-c10", "ingest", 250),
    _wrk_cpu_target("wrk-8k-c50-ingest", "W8K-c50", "ingest", 200),
    _wrk_cpu_target("wrk-8k-c10-assembler", "W8K-c10", "assembler", 120),
    _wrk_cpu_target("wrk-8k-c50-assembler", "W8K-c50", "assembler", 120),
    Target(
        "wrk-1m-ingest",
        f"wrk client, 1 MiB blocks, W1M-c10: ingest CPU <= {INGEST_MS_PER_MIB_BEFORE} ms per MiB "
        "(no worse than before the small-block work)",
        ("W1M-c10",),
        field("W1M-c10", "ingest_cpu_ms_per_mib"),
        INGEST_MS_PER_MIB_BEFORE,
        False,
        "ms/MiB",
        _WRK_FULL,
        wrk_bound,
    ),
)


def verdict(target: Target, rows: list[Row], value: float | None) -> tuple[str, list[str]]:
    """(met | missed | not evaluated, why not evaluated)."""
    failed = [f"{row['name']} failed: {row['failed']}" for row in rows if "failed" in row]
    if failed:
        return "not evaluated", failed
    notes = target.unmet(rows)
    if target.judge_errors:
        notes += [f"{r['name']} had {r['error_count']} error(s)" for r in rows if r["error_count"]]
    if notes or value is None:
        return "not evaluated", notes or ["no value"]
    return ("met" if target.judge(value) else "missed"), []


def evaluate_one(target: Target, points: Points, record: Row) -> Row:
    base: Row = {
        "key": target.key,
        "target": target.text,
        "points": list(target.points),
        "limit": target.limit,
        "unit": target.unit,
    }
    missing = [name for name in target.points if name not in points]
    if missing:
        notes = [f"{name} not run" for name in missing]
        return {**base, "measured": None, "verdict": "not run", "notes": notes, "bound": None}
    rows = [points[name] for name in target.points]
    value = target.value(points)
    result, notes = verdict(target, rows, value)
    bound = target.bound(rows, record) if result == "missed" else None
    return {**base, "measured": value, "verdict": result, "notes": notes, "bound": bound}


def evaluate(record: Row) -> list[Row]:
    rows = [*record.get("points", []), *record.get("wrk", [])]
    points = {row["name"]: row for row in rows}
    return [evaluate_one(target, points, record) for target in (*TARGETS, *WRK_TARGETS)]
