"""An upload scenario's report row (rates against the ceilings) and the text report."""

from __future__ import annotations

from typing import Any

from bench.ceilings import ceiling_keys, ceiling_lines
from bench.render import MB, columns_table
from bench.services import SERVICES
from bench.upload_run import Run, Scenario
from clients.osquery_sim import percentile


def _ratio(value: float, ceiling: dict[str, Any], unit: str = "mb_per_s") -> float:
    return round(value / ceiling[unit], 3) if ceiling[unit] else 0.0


def drain_rates(
    scenario: Scenario, run: Run, ceilings: dict[str, Any], mongo_key: str
) -> dict[str, Any]:
    """Staged only: the assemblers' own rate (they did all their work after the upload)."""
    if not scenario.staged or run.drain_s <= 0:
        return {"drain_mb_per_s": None, "drain_blocks_per_s": None, "drain_vs_mongo_ceiling": None}
    drain = sum(r.size for r in run.results) / MB / run.drain_s
    return {
        "drain_mb_per_s": round(drain, 2),
        "drain_blocks_per_s": round(sum(r.block_count for r in run.results) / run.drain_s, 1),
        "drain_vs_mongo_ceiling": _ratio(drain, ceilings[mongo_key]),
    }


def redis_use(run: Run, ceilings: dict[str, Any]) -> dict[str, Any]:
    blocks = sum(r.block_count for r in run.results)
    ceiling = ceilings.get("redis_pipeline")
    return {
        "redis_commands": run.redis_commands,
        "redis_commands_per_block": round(run.redis_commands / blocks, 3) if blocks else None,
        # One sequential round trip per block would use this fraction of Redis's ceiling.
        "accepted_blocks_vs_redis_ceiling": (
            _ratio(blocks / run.upload_s, ceiling, "round_trips_per_s") if ceiling else None
        ),
    }


def throughput(scenario: Scenario, run: Run, ceilings: dict[str, Any]) -> dict[str, Any]:
    total_bytes = sum(r.size for r in run.results)
    blocks = sum(r.block_count for r in run.results)
    latencies = [value for r in run.results for value in r.latencies]
    total_s = run.upload_s + run.drain_s
    accepted, e2e = total_bytes / MB / run.upload_s, total_bytes / MB / total_s
    mongo_key, rabbit_key = ceiling_keys(scenario.block_size, ceilings)
    return {
        "total_mb": round(total_bytes / MB, 1),
        "blocks": blocks,
        "upload_s": round(run.upload_s, 2),
        "accepted_mb_per_s": round(accepted, 2),
        "accepted_blocks_per_s": round(blocks / run.upload_s, 1),
        "max_host_upload_s": round(max(r.elapsed for r in run.results), 2),
        "p50_ms": round(percentile(latencies, 0.50) * 1000, 2),
        "p99_ms": round(percentile(latencies, 0.99) * 1000, 2),
        "drain_s": round(run.drain_s, 2),
        "total_s": round(total_s, 2),
        "e2e_mb_per_s": round(e2e, 2),
        "mongo_ceiling": mongo_key,
        "accepted_vs_mongo_ceiling": _ratio(accepted, ceilings[mongo_key]),
        "e2e_vs_mongo_ceiling": _ratio(e2e, ceilings[mongo_key]),
        "rabbit_ceiling": rabbit_key,
        "accepted_vs_rabbit_ceiling": _ratio(accepted, ceilings[rabbit_key]),
        **drain_rates(scenario, run, ceilings, mongo_key),
        **redis_use(run, ceilings),
    }


def scenario_row(
    scenario: Scenario, run: Run, check: tuple[dict[str, int], int], logs: Any, ceilings: Any
) -> dict[str, Any]:
    errors, verified = check
    return {
        "name": scenario.name,
        "purpose": scenario.purpose,
        "hosts": scenario.hosts,
        "carve_size": scenario.carve_size,
        "block_size": scenario.block_size,
        "staged": scenario.staged,
        "compress": scenario.compress,
        "ingests": scenario.ingests,
        "assemblers": scenario.assemblers,
        **throughput(scenario, run, ceilings),
        "ingest": run.usage["ingest"],
        "assembler": run.usage["assembler"],
        "processes": run.usage,
        "backend_cpu_s": run.backend_cpu,
        "bench_process_cpu_s": run.bench_cpu,
        "cpu_s_by_phase": run.cpu_phases,
        "rss_samples": run.rss_samples,
        "upload_window_s": list(run.upload_window),
        "rss_series_mib": run.rss_series,
        "queue_depth": run.queue_depth,
        "settled_carves": run.settled,
        "verified_carves": verified,
        "errors": errors,
        "error_count": sum(errors.values()),
        "service_logs": logs,
        "hosts_detail": [r.summary_dict() for r in run.results],
    }


def rss_growth(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Peak RSS of D2 over D1, per service (empty unless both ran)."""
    by_name = {row["name"]: row for row in rows}
    if "D1" not in by_name or "D2" not in by_name:
        return {}
    small, large = by_name["D1"], by_name["D2"]
    return {
        name: {
            "peak_rss_ratio": round(large[name]["peak_rss_mib"] / small[name]["peak_rss_mib"], 2),
            "max_sampled_rss_ratio": round(
                large[name]["max_sampled_rss_mib"] / small[name]["max_sampled_rss_mib"], 2
            ),
            "carve_size_ratio": round(large["carve_size"] / small["carve_size"], 1),
        }
        for name in SERVICES
    }


THROUGHPUT_COLUMNS = (
    ("scen", "name"), ("hosts", "hosts"), ("carve", "carve_size"), ("block", "block_size"),
    ("tot MB", "total_mb"), ("up s", "upload_s"), ("acc MB/s", "accepted_mb_per_s"),
    ("blk/s", "accepted_blocks_per_s"), ("p50 ms", "p50_ms"), ("p99 ms", "p99_ms"),
    ("drain s", "drain_s"), ("total s", "total_s"), ("e2e MB/s", "e2e_mb_per_s"),
    ("acc/mongo", "accepted_vs_mongo_ceiling"), ("e2e/mongo", "e2e_vs_mongo_ceiling"),
    ("acc/mq", "accepted_vs_rabbit_ceiling"), ("errors", "error_count"),
)  # fmt: skip

RESOURCE_COLUMNS = (
    ("scen", "name"), ("ingest HWM MiB", "ingest.peak_rss_mib"),
    ("max RSS", "ingest.max_sampled_rss_mib"), ("cpu s", "ingest.cpu_s_after_ready"),
    ("assembler HWM MiB", "assembler.peak_rss_mib"),
    ("max RSS", "assembler.max_sampled_rss_mib"), ("cpu s", "assembler.cpu_s_after_ready"),
    ("secantus cpu s", "backend_cpu_s.secantus"), ("rabbitmq cpu s", "backend_cpu_s.rabbitmq"),
    ("redis cpu s", "backend_cpu_s.redis"), ("bench/sim cpu s", "bench_process_cpu_s"),
)  # fmt: skip


def render(report: dict[str, Any]) -> str:
    m = report["machine"]
    parts = [
        f"machine: {m['cpu']}, {m['cores']} cores, {m['ram_gib']} GiB RAM, Python {m['python']},"
        f" SecantusDB {m['secantusdb']}, PyMongo {m['pymongo']}",
        f"mode: {report['mode']}, total {report['total_seconds']} s"
        f" (backends up in {report['backend_start_s']} s)",
        "",
        "ceilings (same servers, measured before the scenarios):",
        *ceiling_lines(report["ceilings"]),
        "",
        "throughput (MB = 10^6 bytes; acc/mongo, e2e/mongo, acc/mq: fraction of the ceiling):",
        columns_table(THROUGHPUT_COLUMNS, report["scenarios"]),
        "",
        "resources (HWM = VmHWM peak RSS, max RSS = largest 0.2 s sample, cpu after ready):",
        columns_table(RESOURCE_COLUMNS, report["scenarios"]),
    ]
    for name, growth in report["rss_growth_d2_over_d1"].items():
        parts.append(
            f"D2/D1 peak RSS {name}: x{growth['peak_rss_ratio']} "
            f"(sampled x{growth['max_sampled_rss_ratio']}) for x{growth['carve_size_ratio']} size"
        )
    parts.append("result: " + ("OK" if report["ok"] else "ERRORS (see errors column / JSON)"))
    return "\n".join(parts)
