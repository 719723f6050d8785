"""``carve-osquery-sim``: many simulated hosts carving at once, as a load generator."""

from __future__ import annotations

import argparse
import json
import logging
import math
import re
import shutil
import sys
import tempfile
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import uvloop

from clients.osquery_sim.archive import PIECE_SIZE, build_archive, build_synthetic_archive
from clients.osquery_sim.host import CarveResult, carve_many, client_ssl_context
from clients.osquery_sim.wire import DEFAULT_VERSION

_SIZE_UNITS = {
    "": 1,
    "b": 1,
    "kb": 10**3,
    "mb": 10**6,
    "gb": 10**9,
    "tb": 10**12,
    "kib": 2**10,
    "mib": 2**20,
    "gib": 2**30,
    "tib": 2**40,
}
_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*$")


def parse_size(text: str) -> int:
    """``"5MB"`` -> 5_000_000, ``"8KiB"`` -> 8192, ``"1024"`` -> 1024."""
    match = _SIZE_RE.match(text)
    unit = match.group(2).lower() if match else ""
    if match is None or unit not in _SIZE_UNITS:
        raise ValueError(f"bad size {text!r} (use e.g. 1024, 8KiB, 5MB, 1GiB)")
    return int(float(match.group(1)) * _SIZE_UNITS[unit])


def parse_version(text: str) -> tuple[int, int, int]:
    parts = [int(part) for part in text.strip().split(".")]
    if not 1 <= len(parts) <= 3:
        raise ValueError(f"bad version {text!r}")
    parts += [0] * (3 - len(parts))
    return parts[0], parts[1], parts[2]


def _size_arg(text: str) -> int:
    try:
        return parse_size(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc


def _version_arg(text: str) -> tuple[int, int, int]:
    try:
        return parse_version(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="carve-osquery-sim",
        description="Simulate osquery hosts uploading file carves (load generator).",
    )
    parser.add_argument("--url", required=True, help="server base URL, e.g. http://127.0.0.1:8080")
    parser.add_argument("--hosts", type=int, default=1, help="simulated hosts (default 1)")
    source = parser.add_mutually_exclusive_group()
    source.add_argument(
        "--size", type=_size_arg, help="synthetic carve per host (e.g. 5MB; default 1MiB)"
    )
    source.add_argument("--file", nargs="+", type=Path, help="real files every host carves")
    parser.add_argument("--seed", type=int, default=0, help="host i uses seed+i (synthetic)")
    parser.add_argument("--block-size", type=_size_arg, default=8192, help="default 8KiB")
    parser.add_argument("--compress", action="store_true", help="zstd level 1, as osquery")
    parser.add_argument(
        "--version",
        type=_version_arg,
        default=DEFAULT_VERSION,
        help="osquery version to behave like: 5.21 skips, 5.22 retries, 5.23 adds NodeKey",
    )
    parser.add_argument("--start-endpoint", default="/start_uploads")
    parser.add_argument("--continue-endpoint", default="/upload_blocks")
    parser.add_argument("--node-key", default="")
    parser.add_argument("--timeout", type=float, default=16.0, help="seconds per request")
    parser.add_argument("--cacert", help="CA bundle to verify the server")
    parser.add_argument("--cert", help="client certificate (mTLS)")
    parser.add_argument("--key", help="client private key (mTLS)")
    parser.add_argument("--json", action="store_true", help="print one JSON document")
    parser.add_argument("-v", "--verbose", action="count", default=0)
    return parser


def _prepare_archives(args: argparse.Namespace, workdir: Path, carve_ids: list[str]) -> list[Path]:
    compress = bool(args.compress)
    if args.file:
        files = [Path(p).resolve() for p in args.file]
        members: dict[str, bytes | Path] = {str(p): p for p in files}
        return [
            build_archive(members, workdir / str(n), carve_guid=cid, compress=compress)
            for n, cid in enumerate(carve_ids)
        ]
    size = int(args.size) if args.size is not None else PIECE_SIZE
    seed = int(args.seed)
    return [
        build_synthetic_archive(size, workdir, carve_guid=cid, compress=compress, seed=seed + n)
        for n, cid in enumerate(carve_ids)
    ]


def percentile(values: Sequence[float], fraction: float) -> float:
    """Nearest-rank percentile; 0.0 for no values."""
    if not values:
        return 0.0
    ordered = sorted(values)
    # The epsilon keeps float noise (0.29 * 100 = 28.999...) from moving the rank.
    rank = math.ceil(fraction * len(ordered) - 1e-9)
    return ordered[min(max(rank, 1), len(ordered)) - 1]


def summarize(results: Sequence[CarveResult], seconds: float) -> dict[str, Any]:
    """Totals and block latency percentiles for a batch of carves."""
    latencies = [value for result in results for value in result.latencies]
    total_bytes = sum(result.size for result in results)
    blocks = len(latencies)
    elapsed = max(seconds, 1e-9)
    return {
        "hosts": len(results),
        "ok_hosts": sum(1 for result in results if result.ok),
        "total_bytes": total_bytes,
        "seconds": round(seconds, 3),
        "mb_per_s": round(total_bytes / 1e6 / elapsed, 3),
        "blocks": blocks,
        "blocks_per_s": round(blocks / elapsed, 1),
        "p50_ms": round(percentile(latencies, 0.50) * 1000, 3),
        "p99_ms": round(percentile(latencies, 0.99) * 1000, 3),
    }


def _report(results: Sequence[CarveResult], summary: dict[str, Any], as_json: bool) -> None:
    if as_json:
        document = {"results": [r.summary_dict() for r in results], "summary": summary}
        print(json.dumps(document, indent=2))
        return
    for r in results:
        print(
            f"{r.carve_id} {r.status} size={r.size} sha256={r.sha256} "
            f"failed_blocks={len(r.failed_blocks)} error_replies={len(r.error_replies)} "
            f"requests={r.requests}"
        )
    print(
        f"hosts={summary['hosts']} ok={summary['ok_hosts']} bytes={summary['total_bytes']} "
        f"seconds={summary['seconds']} MB/s={summary['mb_per_s']} "
        f"blocks/s={summary['blocks_per_s']} p50_ms={summary['p50_ms']} "
        f"p99_ms={summary['p99_ms']}"
    )


def _run(args: argparse.Namespace, workdir: Path) -> tuple[list[CarveResult], float]:
    carve_ids = [str(uuid.uuid4()) for _ in range(int(args.hosts))]
    archives = _prepare_archives(args, workdir, carve_ids)
    ssl_context = None
    if args.cacert or args.cert or args.key:
        ssl_context = client_ssl_context(args.cacert, args.cert, args.key)
    started = time.perf_counter()
    # uvloop, as in the services: the simulator shares the cores with what it measures.
    results = uvloop.run(
        carve_many(
            str(args.url).rstrip("/"),
            archives,
            carve_ids=carve_ids,
            block_size=int(args.block_size),
            start_endpoint=str(args.start_endpoint),
            continue_endpoint=str(args.continue_endpoint),
            node_key=str(args.node_key),
            version=args.version,
            timeout=float(args.timeout),
            ssl=ssl_context,
        )
    )
    return results, time.perf_counter() - started


def main(argv: Sequence[str] | None = None) -> int:
    """Console entry point ``carve-osquery-sim``; exit 0 only if every carve is clean."""
    parser = _build_parser()
    args = parser.parse_args(argv)
    if args.hosts < 1:
        parser.error("--hosts must be >= 1")
    if args.block_size < 1:
        parser.error("--block-size must be >= 1")
    level = {0: logging.WARNING, 1: logging.INFO}.get(int(args.verbose), logging.DEBUG)
    logging.basicConfig(level=level, stream=sys.stderr, format="%(levelname)s %(message)s")
    workdir = Path(tempfile.mkdtemp(prefix="carve-osquery-sim-"))
    try:
        results, seconds = _run(args, workdir)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    _report(results, summarize(results, seconds), bool(args.json))
    return 0 if all(result.ok for result in results) else 1
