"""The matrix report's PNG plots (matplotlib, Agg: no display needed).

Every plot is drawn from the record alone and only from points that ran: a sweep whose
points did not run is drawn as an empty panel that says so, never as zeros.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # before pyplot is imported: no display here

import matplotlib.pyplot as plt
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from bench.render import size_text

Row = dict[str, Any]

# Points whose RSS over time is plotted, when they ran.
RSS_POINTS = ("H50-1M", "D1G", "R1M-2x2", "DA20")
GRID_ORDER = ("1x1", "2x1", "1x2", "2x2")
DPI = 100


def measured(points: Sequence[Row], sweep: str) -> list[Row]:
    """The points of one sweep that produced figures."""
    return [p for p in points if sweep in p.get("sweeps", ()) and "failed" not in p]


def _empty(ax: Axes, what: str) -> None:
    ax.text(0.5, 0.5, f"{what}: not run", ha="center", va="center", transform=ax.transAxes)
    ax.set_xticks([])
    ax.set_yticks([])


def _save(fig: Figure, path: Path) -> None:
    fig.tight_layout()
    fig.savefig(path, dpi=DPI)
    plt.close(fig)


def _lines(ax: Axes, rows: list[Row], x: str, ys: Sequence[tuple[str, str]]) -> None:
    rows = sorted(rows, key=lambda r: r[x])
    for key, label in ys:
        pairs = [(r[x], r[key]) for r in rows if r.get(key) is not None]
        if pairs:
            ax.plot(*zip(*pairs, strict=True), marker="o", label=label)


# --------------------------------------------------------------------------------------------
# Throughput
# --------------------------------------------------------------------------------------------


def _ceiling_marks(ax: Axes, rows: list[Row], ceilings: dict[str, Any]) -> None:
    for key, label, style in (("mongo_ceiling", "raw GridFS insert", "x--k"),
                              ("rabbit_ceiling", "raw RabbitMQ publish", "+:k")):  # fmt: skip
        pairs = sorted((r["block_size"], ceilings[r[key]]["mb_per_s"]) for r in rows)
        if pairs:
            ax.plot(*zip(*pairs, strict=True), style, label=f"{label} (ceiling)")


def block_size_plot(record: Row, path: Path) -> None:
    rows = measured(record["points"], "block-size")
    fig, (mb, blocks) = plt.subplots(1, 2, figsize=(11, 4.2))
    if not rows:
        _empty(mb, "block-size sweep")
        _empty(blocks, "block-size sweep")
        return _save(fig, path)
    _lines(
        mb, rows, "block_size", [("accepted_mb_per_s", "accepted"), ("e2e_mb_per_s", "end to end")]
    )
    _ceiling_marks(mb, rows, record["ceilings"])
    _lines(blocks, rows, "block_size", [("accepted_blocks_per_s", "accepted blocks/s")])
    for ax, unit in ((mb, "MB/s"), (blocks, "blocks/s")):
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xticks([r["block_size"] for r in rows], [size_text(r["block_size"]) for r in rows])
        ax.set_xlabel("block size")
        ax.set_ylabel(unit)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    hosts = sorted({r["hosts"] for r in rows})
    fig.suptitle(f"Throughput vs block size ({', '.join(map(str, hosts))} hosts, live)")
    return _save(fig, path)


def _hosts_panel(ax: Axes, rows: list[Row], key: str, label: str) -> None:
    if not rows:
        return _empty(ax, label)
    _lines(ax, rows, "hosts", [(key, label)])
    ax.set_xscale("log")
    ax.set_xticks([r["hosts"] for r in rows], [str(r["hosts"]) for r in rows])
    ax.set_xlabel("hosts carving at once")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    return None


def hosts_plot(record: Row, path: Path) -> None:
    big, small = measured(record["points"], "hosts-1m"), measured(record["points"], "hosts-8k")
    fig, (mb, blocks, p99) = plt.subplots(1, 3, figsize=(14, 4.2))
    _hosts_panel(mb, big, "accepted_mb_per_s", "1 MiB blocks: accepted MB/s")
    _hosts_panel(blocks, small, "accepted_blocks_per_s", "8 KiB blocks: accepted blocks/s")
    if big or small:
        _lines(p99, big, "hosts", [("p99_ms", "1 MiB blocks p99 ms")])
        _lines(p99, small, "hosts", [("p99_ms", "8 KiB blocks p99 ms")])
        p99.axhline(16000, color="r", linestyle="--", label="osquery's 16 s limit")
        p99.set_xscale("log")
        p99.set_yscale("log")
        p99.set_xlabel("hosts carving at once")
        p99.grid(True, which="both", alpha=0.3)
        p99.legend(fontsize=8)
    else:
        _empty(p99, "host sweeps")
    fig.suptitle("Throughput and block latency vs hosts (live: assembler running)")
    _save(fig, path)


def _replica_panel(ax: Axes, rows: list[Row], per_block: bool, ceilings: Row) -> None:
    title = "8 KiB blocks" if per_block else "1 MiB blocks"
    if not rows:
        return _empty(ax, title)
    rows = sorted(rows, key=lambda r: GRID_ORDER.index(r["name"].split("-")[-1]))
    unit = "blocks_per_s" if per_block else "mb_per_s"
    for offset, key, label in ((-0.2, "accepted", "accepted (assemblers paused)"),
                               (0.2, "drain", "drain (assemblers alone)")):  # fmt: skip
        bars = [(x + offset, r[f"{key}_{unit}"]) for x, r in enumerate(rows)
                if r.get(f"{key}_{unit}") is not None]  # fmt: skip
        if bars:
            xs, heights = zip(*bars, strict=True)
            ax.bar(xs, heights, width=0.4, label=label)
    mongo = ceilings[rows[0]["mongo_ceiling"]]
    raw = mongo["chunks_per_s"] if per_block else mongo["mb_per_s"]
    ax.axhline(raw, color="k", linestyle="--", label=f"raw GridFS insert ({mongo['what']})")
    ax.set_xticks(range(len(rows)), [r["name"].split("-")[-1] for r in rows])
    ax.set_xlabel("ingests x assemblers (staged)")
    ax.set_ylabel("blocks/s" if per_block else "MB/s")
    ax.set_title(title)
    ax.grid(True, axis="y", alpha=0.3)
    ax.legend(fontsize=7)
    return None


def replicas_plot(record: Row, path: Path) -> None:
    fig, (small, big) = plt.subplots(1, 2, figsize=(11, 4.2))
    points = record["points"]
    _replica_panel(small, measured(points, "replicas-8k"), True, record["ceilings"])
    _replica_panel(big, measured(points, "replicas-1m"), False, record["ceilings"])
    fig.suptitle("Throughput vs replicas (staged)")
    _save(fig, path)


# --------------------------------------------------------------------------------------------
# Over time
# --------------------------------------------------------------------------------------------


def _window(ax: Axes, row: Row) -> None:
    window = row.get("upload_window_s")
    if window:
        ax.axvspan(window[0], window[1], color="grey", alpha=0.15, label="upload")


def _rss_panel(ax: Axes, row: Row) -> None:
    for process, series in row.get("rss_series_mib", {}).items():
        if series:
            ax.plot(*zip(*series, strict=True), label=process)
    _window(ax, row)
    ax.set_title(f"{row['name']}: {row.get('purpose', '')}", fontsize=9)
    ax.set_xlabel("seconds")
    ax.set_ylabel("RSS MiB")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7)


def rss_plot(record: Row, path: Path) -> None:
    by_name = {p["name"]: p for p in record["points"] if "failed" not in p}
    rows = [by_name[name] for name in RSS_POINTS if name in by_name]
    fig, axes = plt.subplots(1, max(1, len(rows)), figsize=(4.6 * max(1, len(rows)), 4.2))
    panels = list(axes) if len(rows) > 1 else [axes]
    if not rows:
        _empty(panels[0], ", ".join(RSS_POINTS))
    for ax, row in zip(panels, rows, strict=False):
        _rss_panel(ax, row)
    fig.suptitle("RSS of every service process over time (sampled every 0.2 s)")
    _save(fig, path)


def _depth_panel(ax: Axes, rows: list[Row], title: str) -> None:
    drawn = 0
    for row in rows:
        series = row.get("queue_depth", {}).get("series") or []
        if series:
            ax.plot(*zip(*series, strict=True), label=row["name"])
            drawn += 1
    if not drawn:
        return _empty(ax, title)
    ax.set_title(title)
    ax.set_xlabel("seconds since the services were ready")
    ax.set_ylabel("messages ready in the block queue")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7)
    return None


def queue_plot(record: Row, path: Path) -> None:
    uploads = [p for p in record["points"] if p.get("kind") == "upload" and "failed" not in p]
    fig, (live, staged) = plt.subplots(1, 2, figsize=(12, 4.2))
    _depth_panel(live, [r for r in uploads if not r["staged"]], "live (assembler running)")
    _depth_panel(staged, [r for r in uploads if r["staged"]], "staged (assemblers paused)")
    fig.suptitle("RabbitMQ queue depth over time")
    _save(fig, path)


PLOTS: tuple[tuple[str, str, Callable[[Row, Path], None]], ...] = (
    ("matrix-throughput-block-size.png", "Throughput vs block size", block_size_plot),
    ("matrix-throughput-hosts.png", "Throughput and latency vs hosts", hosts_plot),
    ("matrix-throughput-replicas.png", "Throughput vs replicas (staged)", replicas_plot),
    ("matrix-rss.png", "RSS over time", rss_plot),
    ("matrix-queue-depth.png", "Queue depth over time", queue_plot),
)


def draw_all(record: Row, out_dir: Path) -> list[tuple[str, str]]:
    """Every plot into ``out_dir``: (title, file name) of each."""
    out_dir.mkdir(parents=True, exist_ok=True)
    for name, _, draw in PLOTS:
        draw(record, out_dir / name)
    return [(title, name) for name, title, _ in PLOTS]
