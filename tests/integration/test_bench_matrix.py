"""The benchmark matrix's quick mode, run for real: correctness of every point, not speed.

``python -m bench.matrix --quick`` starts its own servers and services, so this runs it once
as a subprocess (a hung run is killed) and checks its JSON record, Markdown report and plots.
The checks are plain functions returning the problems they find, so one test also shows that
they catch a broken record (a carve whose SHA-256 did not match, a short download).
"""

from __future__ import annotations

import copy
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from devstack import ROOT

Row = dict[str, Any]

RUN_TIMEOUT = 240  # quick mode takes about 30 s on 2 idle cores
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
PLOTS = (
    "matrix-throughput-block-size.png",
    "matrix-throughput-hosts.png",
    "matrix-throughput-replicas.png",
    "matrix-rss.png",
    "matrix-queue-depth.png",
)
BACKENDS = ("redis", "rabbitmq", "secantus")
UPLOAD_FIGURES = (
    "accepted_mb_per_s",
    "accepted_blocks_per_s",
    "p50_ms",
    "p99_ms",
    "drain_s",
    "accepted_vs_rabbit_ceiling",
    "e2e_vs_mongo_ceiling",
    "redis_commands_per_block",
)
CEILINGS = (
    "mongo_insert_many_8k",
    "mongo_insert_many_256k",
    "mongo_insert_one_1m",
    "mongo_insert_one_8m",
    "rabbit_publish_8k",
    "rabbit_publish_256k",
    "rabbit_publish_1m",
    "rabbit_publish_8m",
    "redis_pipeline",
)

pytestmark = pytest.mark.timeout(RUN_TIMEOUT + 60)


def run_module(module: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", module, *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT,
        check=False,
    )


@pytest.fixture(scope="module")
def quick(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Row]:
    out = tmp_path_factory.mktemp("matrix")
    done = run_module("bench.matrix", "--quick", "--out-dir", str(out))
    assert done.returncode == 0, done.stderr[-4000:]
    return out, json.loads((out / "matrix-latest.json").read_text())


# --------------------------------------------------------------------------------------------
# Checks: each returns what is wrong (empty when all is well)
# --------------------------------------------------------------------------------------------


def upload_problems(row: Row) -> list[str]:
    name, hosts = row["name"], row["hosts"]
    problems = [f"{name}: no {key}" for key in UPLOAD_FIGURES if row.get(key) is None]
    if row["verified_carves"] != hosts or len(row["hosts_detail"]) != hosts:
        problems.append(f"{name}: {row['verified_carves']} of {hosts} carves verified")
    problems += [
        f"{name}: host {h['carve_id']} ended {h['status']}"
        for h in row["hosts_detail"]
        if h["status"] != "SUCCESS"
    ]
    if not row["queue_depth"]["series"]:
        problems.append(f"{name}: empty queue depth series")
    if row["staged"] and not row.get("drain_mb_per_s"):
        problems.append(f"{name}: staged without a drain rate")
    return problems + process_problems(row, list(row["processes"])) + upload_cpu_problems(row)


def process_problems(row: Row, processes: list[str]) -> list[str]:
    """Every service process has an RSS series and a peak."""
    name = row["name"]
    usage = row.get("processes") or {"download": row.get("download", {})}
    problems = [f"{name}: no RSS series of {p}" for p in processes if not row["rss_series_mib"][p]]
    return problems + [
        f"{name}: no peak RSS of {p}" for p in processes if not usage[p]["peak_rss_mib"]
    ]


def upload_cpu_problems(row: Row) -> list[str]:
    """CPU seconds of every service, backend and this process, in both phases."""
    wanted = [*row["processes"], *BACKENDS, "bench"]
    return [
        f"{row['name']}: no {phase} CPU of {p}"
        for phase in ("upload", "drain")
        for p in wanted
        if row["cpu_s_by_phase"][phase].get(p) is None
    ]


def download_cpu_problems(row: Row) -> list[str]:
    found = {
        "download": row["download"].get("cpu_s_after_ready"),
        "secantus": row["backend_cpu_s"].get("secantus"),
        "bench": row.get("bench_process_cpu_s"),
    }
    return [f"{row['name']}: no CPU of {p}" for p, cpu in found.items() if cpu is None]


def download_problems(row: Row) -> list[str]:
    name = row["name"]
    problems = [] if row["downloads"] else [f"{name}: no downloads"]
    if len(row["downloads"]) != row["clients"]:
        problems.append(f"{name}: {len(row['downloads'])} downloads for {row['clients']} clients")
    for d in row["downloads"]:
        if (d["status"], d["bytes"], d["sha256"]) != (
            200,
            row["bytes_each"],
            row["sha256_expected"],
        ):
            problems.append(f"{name} #{d['index']}: HTTP {d['status']}, {d['bytes']} bytes")
    return problems + process_problems(row, ["download"]) + download_cpu_problems(row)


def wrk_problems(row: Row) -> list[str]:
    """A cheap-client point: its figures, and every block accepted was stored."""
    name = row["name"]
    if "failed" in row:
        return [f"{name} failed: {row['failed']}"]
    problems = [f"{name}: {row['error_count']} error(s)"] if row["error_count"] else []
    problems += [f"{name}: no {key}" for key in ("requests_per_s", "p99_ms") if not row.get(key)]
    if not row["accepted_blocks"] or row["stored_chunks"] != row["accepted_blocks"]:
        problems.append(f"{name}: {row['stored_chunks']} of {row['accepted_blocks']} stored")
    cpu = row["cpu_us_per_block"]
    problems += [
        f"{name}: no CPU of {p}" for p in ("ingest", "assembler", *BACKENDS) if p not in cpu
    ]
    return problems


def point_problems(row: Row) -> list[str]:
    if "failed" in row:
        return [f"{row['name']} failed: {row['failed']}"]
    problems = [f"{row['name']}: {row['error_count']} error(s)"] if row["error_count"] else []
    checks = upload_problems if row["kind"] == "upload" else download_problems
    return problems + checks(row)


def record_problems(record: Row) -> list[str]:
    problems = [] if record["ok"] and record["error_count"] == 0 else ["record not ok"]
    problems += [f"ceiling {key} missing or 0" for key in CEILINGS
                 if not record["ceilings"].get(key, {}).get("mb_per_s")
                 and not record["ceilings"].get(key, {}).get("round_trips_per_s")]  # fmt: skip
    for row in record["points"]:
        problems += point_problems(row)
    for row in record["wrk"]:
        problems += wrk_problems(row)
    return problems


# --------------------------------------------------------------------------------------------
# Tests
# --------------------------------------------------------------------------------------------


def test_every_point_is_correct(quick: tuple[Path, Row]) -> None:
    _, record = quick
    assert record["mode"] == "quick"
    assert record_problems(record) == []


def test_quick_mode_covers_every_kind_of_point(quick: tuple[Path, Row]) -> None:
    _, record = quick
    uploads = [p for p in record["points"] if p["kind"] == "upload"]
    downloads = [p for p in record["points"] if p["kind"] == "download"]
    assert {p["block_size"] for p in uploads} >= {8 * 1024, 1024 * 1024}
    assert {p["compress"] for p in uploads} == {False, True}
    assert any(p["ingests"] == 2 and p["assemblers"] == 2 for p in uploads)
    assert any(p["staged"] for p in uploads)
    assert all(p["hosts"] >= 2 for p in uploads)
    shapes = {(p["target"], p["clients"] > 1) for p in downloads}
    assert shapes == {("archive", False), ("archive", True), ("member", False), ("member", True)}
    assert {p["block_size"] for p in record["wrk"]} == {8 * 1024, 1024 * 1024}


def test_quick_mode_judges_no_target(quick: tuple[Path, Row]) -> None:
    _, record = quick
    verdicts = {t["key"]: t["verdict"] for t in record["targets"]}
    assert verdicts and set(verdicts.values()) <= {"not run", "not evaluated"}, verdicts


def test_report_references_real_plots(quick: tuple[Path, Row]) -> None:
    out, _ = quick
    report = (out / "matrix-latest.md").read_text()
    assert report.startswith("# Benchmark matrix: quick run")
    pngs = sorted(path.name for path in out.glob("*.png"))
    assert pngs == sorted(PLOTS)
    for name in pngs:
        assert f"]({name})" in report
        data = (out / name).read_bytes()
        assert data.startswith(PNG_MAGIC) and len(data) > 10_000, name


def test_report_regenerates_from_the_json(quick: tuple[Path, Row], tmp_path: Path) -> None:
    out, _ = quick
    done = run_module("bench.report", str(out / "matrix-latest.json"), "--out-dir", str(tmp_path))
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "matrix-latest.md").read_text() == (out / "matrix-latest.md").read_text()
    assert sorted(p.name for p in tmp_path.glob("*.png")) == sorted(PLOTS)


def test_the_checks_catch_a_broken_record(quick: tuple[Path, Row]) -> None:
    _, record = quick
    broken = copy.deepcopy(record)
    upload = next(p for p in broken["points"] if p["kind"] == "upload")
    upload["errors"]["sha_mismatch"] = 1
    upload["error_count"] = 1
    upload["verified_carves"] -= 1
    download = next(p for p in broken["points"] if p["kind"] == "download")
    download["downloads"][0]["bytes"] -= 1
    cheap = broken["wrk"][0]
    cheap["stored_chunks"] -= 1
    problems = record_problems(broken)
    assert (
        f"{cheap['name']}: {cheap['stored_chunks']} of {cheap['accepted_blocks']} stored"
        in problems
    )
    assert f"{upload['name']}: 1 error(s)" in problems
    assert any("carves verified" in p for p in problems)
    assert any(p.startswith(f"{download['name']} #0") for p in problems)
