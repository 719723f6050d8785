"""A download scenario's report row, the RSS verdict and the text report."""

from __future__ import annotations

import statistics
from dataclasses import asdict
from typing import Any

from bench.cli import log
from bench.download_clients import Download, Expected
from bench.download_run import Context, Measured, Scenario
from bench.render import MB, MiB, columns_table, human

RSS_TARGET_MB = 150  # download service peak RSS target, MB = 10^6 bytes


def _rates(downloads: list[Download]) -> dict[str, float]:
    rates = sorted(d.mb_per_s for d in downloads) or [0.0]
    headers = sorted(d.headers_s for d in downloads) or [0.0]
    return {
        "per_download_mb_per_s_min": round(rates[0], 2),
        "per_download_mb_per_s_median": round(statistics.median(rates), 2),
        "per_download_mb_per_s_max": round(rates[-1], 2),
        "headers_s_median": round(statistics.median(headers), 3),
        "headers_s_max": round(headers[-1], 3),
        "slowest_download_s": round(max((d.elapsed_s for d in downloads), default=0.0), 2),
    }


def scenario_row(scenario: Scenario, ctx: Context, run: Measured, logs: Any) -> dict[str, Any]:
    expected = Expected.of(scenario.target, ctx.carve)
    total = sum(d.bytes for d in run.downloads)
    errors = [f"#{d.index}: {d.error}" for d in run.downloads if d.error]
    if run.guard_tripped:
        errors.insert(0, f"memory guard killed SecantusDB: {run.guard_tripped}")
    peak_mb = run.usage["peak_rss_mib"] * MiB / MB
    return {
        "name": scenario.name,
        "purpose": scenario.purpose,
        "clients": scenario.clients,
        "target": scenario.target,
        "path": expected.path,
        "bytes_each": expected.size,
        "sha256_expected": expected.sha256,
        "total_mb": round(total / MB, 1),
        "wall_s": round(run.wall_s, 2),
        "aggregate_mb_per_s": round(total / MB / run.wall_s, 2),
        **_rates(run.downloads),
        "download": {**run.usage, "rss_ready_mib": run.rss_ready_mib},
        "peak_rss_mb": round(peak_mb, 1),
        "rss_target_mb": RSS_TARGET_MB,
        # Only a scenario whose downloads all went through says anything about the target.
        "within_rss_target": None if errors else peak_mb <= RSS_TARGET_MB,
        "backend_cpu_s": run.backend_cpu,
        "secantus_max_sampled_rss_mib": run.secantus_max_rss_mib,
        "min_mem_available_mib": run.min_available_mib,
        "bench_process_cpu_s": run.bench_cpu,
        "rss_samples": run.rss_samples,
        "rss_series_mib": run.rss_series,
        "errors": errors,
        "error_count": len(errors),
        "service_log": logs,
        "downloads": [
            {**asdict(d), "mb_per_s": round(d.mb_per_s, 2), "elapsed_s": round(d.elapsed_s, 3)}
            for d in run.downloads
        ],
    }


def skipped_row(scenario: Scenario, reason: str) -> dict[str, Any]:
    log(f"{scenario.name}: skipped: {reason}")
    return {
        "name": scenario.name,
        "purpose": scenario.purpose,
        "clients": scenario.clients,
        "target": scenario.target,
        "skipped": reason,
        "within_rss_target": None,
        "errors": [f"skipped: {reason}"],
        "error_count": 1,
    }


def rss_verdict(rows: list[dict[str, Any]]) -> str:
    """Whether the download service stayed within RSS_TARGET_MB, scenario by scenario."""
    above = [row["name"] for row in rows if row["within_rss_target"] is False]
    unknown = [row["name"] for row in rows if row["within_rss_target"] is None]
    verdict = f"ABOVE {RSS_TARGET_MB} MB in {','.join(above)}" if above else "within"
    if len(unknown) == len(rows):
        return "not measured (errors in every scenario)"
    if unknown:
        verdict += f"; not measured (errors) in {','.join(unknown)}"
    return verdict


THROUGHPUT_COLUMNS = (
    ("scen", "name"), ("clients", "clients"), ("what", "target"), ("MB each", "mb_each"),
    ("tot MB", "total_mb"), ("wall s", "wall_s"), ("agg MB/s", "aggregate_mb_per_s"),
    ("min MB/s", "per_download_mb_per_s_min"), ("med MB/s", "per_download_mb_per_s_median"),
    ("max MB/s", "per_download_mb_per_s_max"), ("hdr s med", "headers_s_median"),
    ("hdr s max", "headers_s_max"), ("errors", "error_count"),
)  # fmt: skip

RESOURCE_COLUMNS = (
    ("scen", "name"), ("ready RSS MiB", "download.rss_ready_mib"),
    ("HWM MiB", "download.peak_rss_mib"), ("max RSS MiB", "download.max_sampled_rss_mib"),
    ("HWM MB", "peak_rss_mb"), ("<=150MB", "within_rss_target"),
    ("download cpu s", "download.cpu_s_after_ready"), ("secantus cpu s", "backend_cpu_s.secantus"),
    ("openbao cpu s", "backend_cpu_s.openbao"), ("bench cpu s", "bench_process_cpu_s"),
    ("secantus max RSS MiB", "secantus_max_sampled_rss_mib"),
    ("min MemAvail MiB", "min_mem_available_mib"), ("samples", "rss_samples"),
)  # fmt: skip


def render(report: dict[str, Any]) -> str:
    m, carve, seeding = report["machine"], report["carve"], report["seeding"]
    ceiling = report["read_ceiling"]
    rows = [
        {**row, "mb_each": round(row["bytes_each"] / MB, 1)} if "bytes_each" in row else row
        for row in report["scenarios"]
    ]
    return "\n".join(
        [
            f"machine: {m['cpu']}, {m['cores']} cores, {m['ram_gib']} GiB RAM, "
            f"Python {m['python']}, SecantusDB {m['secantusdb']}, PyMongo {m['pymongo']}",
            f"mode: {report['mode']}, total {report['total_seconds']} s "
            f"(backends up in {report['backend_start_s']} s)",
            f"carve: {carve['archive_size'] / MB:.1f} MB archive in {carve['block_count']} x "
            f"{human(carve['block_size'])} chunks; member {carve['member_path']} "
            f"{carve['member_size'] / MB:.1f} MB",
            f"seeding: archive built in {seeding['build_archive_s']} s, inserted in "
            f"{seeding['insert_s']} s = {seeding['insert_mb_per_s']} MB/s (insert_many of "
            f"{seeding['insert_batch_chunks']} chunks; "
            f"SecantusDB cpu {seeding['secantus_cpu_s']} s)",
            f"raw read ceiling (PyMongo, 1 chunk per batch, {ceiling['chunks']} chunks): "
            f"{ceiling['mb_per_s']} MB/s",
            "",
            "throughput (MB = 10^6 bytes; per-download MB/s from request to last byte; "
            "hdr s = time to response headers):",
            columns_table(THROUGHPUT_COLUMNS, rows),
            "",
            "download service (fresh process per scenario; HWM = VmHWM, max RSS = largest "
            "0.2 s sample; cpu during the scenario):",
            columns_table(RESOURCE_COLUMNS, rows),
            "result: "
            + ("OK" if report["ok"] else "ERRORS (see errors in the JSON)")
            + f"; download service peak RSS vs {RSS_TARGET_MB} MB: {report['rss_target']}",
        ]
    )
