"""The benchmarks of one-host latency and of encryption's cost, run for real at a tiny size.

Each starts its own servers and services, so each runs once as a subprocess (a hung run is
killed). They check correctness, not speed: the benchmark ran every carve byte-exact and
reports the figures its docs quote; the numbers themselves belong to the benchmark runs in
docs/benchmarks, not to tests.
"""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

import pytest

from devstack import ROOT

RUN_TIMEOUT = 180  # about 10 s each on 2 idle cores

pytestmark = pytest.mark.timeout(RUN_TIMEOUT + 30)


def run_json(module: str, *args: str) -> dict[str, Any]:
    done = subprocess.run(
        [sys.executable, "-m", module, *args],
        cwd=ROOT, capture_output=True, text=True, timeout=RUN_TIMEOUT, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    record: dict[str, Any] = json.loads(done.stdout)
    return record


def test_lone_host_measures_one_verified_carve_per_process() -> None:
    record = run_json("bench.lone_host", "--points", "1x400KB", "--rounds", "1", "--json")
    (run,) = record["runs"]
    assert run["ok"] is True and run["verified"] == 1
    assert run["hosts"] == 1 and run["size"] == 400_000
    assert run["blocks"] >= 400_000 // 8192 and run["blocks_per_s"] > 0
    assert 0 < run["p50_ms"] <= run["p99_ms"]
    processes = {"ingest", "assembler", "rabbitmq", "redis", "secantus", "simulator"}
    assert set(run["cpu_ms_per_block"]) == processes == set(run["net_cpu_ms_per_block"])
    assert run["redis_commands_per_block"] > 0
    (median,) = record["medians"]
    assert median["ok"] is True and median["runs"] == 1


def test_lone_floor_publishes_and_marks_every_block_it_answers() -> None:
    record = run_json(
        "bench.lone_floor", "--point", "1x200KB", "--rounds", "1", "--json",
        "--modes", "http", "publish-redis",
    )  # fmt: skip
    http, marked = record["runs"]
    blocks = -(-200_000 // 8192)
    assert http["mode"] == "http" and http["ok"] is True and "queued" not in http
    # The floor did the design's per-block work: each block confirmed in the queue, marked once.
    assert marked["mode"] == "publish-redis" and marked["ok"] is True
    assert marked["queued"] == blocks and marked["marked"] == blocks
    assert marked["cpu_ms_per_block"]["rabbitmq"] > 0 and 0 < marked["p50_ms"] <= marked["p99_ms"]
    assert [m["mode"] for m in record["medians"]] == ["http", "publish-redis"]


def test_encryption_counts_vault_calls_per_carve_and_both_modes() -> None:
    record = run_json(
        "bench.encryption", "--rounds", "1", "--mib", "2", "--small-mib", "1", "--carves", "1"
    )
    calls = record["calls_per_carve"]
    # What docs/security.md promises: a carve costs its assembler one key and one data key,
    # and each download replica one unwrap.
    assert calls["assembler:create"] == 1.0
    assert calls["assembler:datakey"] == 1.0
    assert calls["download:decrypt"] == 1.0
    assert record["vault_round_trip"]["unwrap_ms_median"] > 0
    for label, blocks in (("1MiB", 2), ("8KiB", 128)):
        figures = record[label]
        assert figures["off"]["blocks"] == figures["on"]["blocks"] == blocks
        assert "extra_cpu_assembler_plus_download_pct" in figures
