"""carve-triage's scan: MB/s per core of a worker on a large carve, tar and tar.zst, with 1 rule
and with 500 generated rules; the worker's peak RSS.

    .venv/bin/python -m bench.triage_scan --size 1GiB --rounds 3

Builds one archive of ``--size`` (members of 4 MiB: random bytes, like binaries, alternating
with log-like text) as a tar and as a tar.zst (level 1, as osquery), and two rule sets: one
string rule, and 500 rules generated like real ones (text strings, hex patterns with
wildcards and jumps, a few regular expressions). Each configuration is scanned ``--rounds``
times, the configurations alternated, by the service's own pool (``ScanPool``: one worker
process fed over its pipe), from a file instead of MongoDB so the figure is the scan's own.
Per run: wall seconds, the worker's CPU seconds (/proc/<pid>/stat) and so MB/s per core of
archive (uncompressed tar bytes), and the worker's peak RSS (VmHWM). Medians; the load
average before and after (the machine is shared). Figures, not a test.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import random
import statistics
import tarfile
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path

import zstandard

from bench.cli import size_arg
from bench.procstats import cpu_seconds, machine_info, proc_kb
from services.triage.pool import ScanPool
from services.triage.rules import RuleSet, load_rules
from services.triage.worker import ScanJob

MiB = 1024 * 1024
MEMBER = 4 * MiB
WORDS = b"GET POST 200 404 user admin session login failed accepted sshd kernel eth0".split()


def _text(rng: random.Random, size: int) -> bytes:
    lines, total = [], 0
    while total < size:
        line = b"2026-12-06T10:%02d:%02dZ host%03d " % (rng.randrange(60), rng.randrange(60),
                                                        rng.randrange(999))  # fmt: skip
        line += b" ".join(rng.choice(WORDS) for _ in range(12)) + b"\n"
        lines.append(line)
        total += len(line)
    return b"".join(lines)[:size]


def build_archives(size: int, root: Path) -> tuple[Path, Path]:
    rng = random.Random(7)
    plain, packed = root / "carve.tar", root / "carve.tar.zst"
    with tarfile.open(plain, "w", format=tarfile.PAX_FORMAT) as tar:
        for index in range(max(1, size // MEMBER)):
            data = rng.randbytes(MEMBER) if index % 2 else _text(rng, MEMBER)
            info = tarfile.TarInfo(f"osquery_carve_bench/var/data/file{index:05d}.bin")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    with plain.open("rb") as src, packed.open("wb") as dst:
        zstandard.ZstdCompressor(level=1).copy_stream(src, dst)
    return plain, packed


def generated_rules(count: int, rng: random.Random) -> str:
    """``count`` rules of the kinds real rule sets hold; none should match the bench data."""
    rules = []
    for n in range(count):
        kind = n % 10
        if kind < 6:  # text strings, some nocase / wide
            strings = "\n".join(
                f'        $s{i} = "{rng.randbytes(6).hex()}_{n}_{i}"{" nocase" if i % 2 else ""}'
                for i in range(3)
            )
            condition = "2 of them"
        elif kind < 9:  # hex patterns with wildcards and jumps

            def hexes(k: int) -> str:
                return " ".join(f"{b:02X}" for b in rng.randbytes(k))

            strings = f"        $h = {{ {hexes(4)} ?? {hexes(2)} [2-8] {hexes(4)} }}"
            condition = "$h"
        else:  # a regular expression with a literal anchor
            strings = f"        $r = /{rng.randbytes(4).hex()}[0-9a-f]{{8,16}}\\.(exe|dll)/"
            condition = "$r"
        rules.append(
            f"rule gen_{n} : generated {{\n    meta:\n        id = {n}\n    strings:\n"
            f"{strings}\n    condition:\n        {condition}\n}}\n"
        )
    return "\n".join(rules)


def rule_sets(root: Path) -> dict[str, RuleSet]:
    one, many = root / "rules-1", root / "rules-500"
    one.mkdir()
    many.mkdir()
    (one / "one.yar").write_text('rule one { strings: $a = "never-in-bench-data-1" condition: $a }')
    (many / "generated.yar").write_text(generated_rules(500, random.Random(3)))
    return {"1 rule": load_rules(str(one)), "500 rules": load_rules(str(many))}


async def _chunks(path: Path) -> AsyncIterator[bytes]:
    with path.open("rb") as handle:
        while chunk := handle.read(MiB):
            yield chunk


# Members below this index have their SHA-256 in the manifest: the worker hashes none (the
# usual case); with --hash it hashes every member (a carve whose manifest was cut short).
HASH_FROM = {False: 1 << 40, True: 0}


async def scan_once(pool: ScanPool, path: Path, rules: RuleSet, hashing: bool) -> dict[str, float]:
    job = ScanJob(zstd=path.suffix == ".zst", max_member_bytes=256 * MiB,
                  max_carve_bytes=64 << 30, max_seconds=3600, scan_timeout=600,
                  hash_from=HASH_FROM[hashing])  # fmt: skip
    (pid,) = pool.pids()
    cpu0, own0, wall0 = cpu_seconds(pid), time.process_time(), time.perf_counter()
    found = await pool.scan(_chunks(path), job, rules)
    wall, cpu = time.perf_counter() - wall0, cpu_seconds(pid) - cpu0
    own = time.process_time() - own0
    assert found.stopped is None and not found.skipped and found.hit_count == 0, found.stopped
    return {"wall_s": wall, "cpu_s": cpu, "feed_cpu_s": own, "members": found.members}


async def run(size: int, rounds: int, root: Path, hashing: bool) -> dict[str, object]:
    plain, packed = build_archives(size, root)
    sets = rule_sets(root)
    tar_bytes = plain.stat().st_size
    results: dict[str, list[dict[str, float]]] = {}
    peaks: dict[str, float] = {}
    for name in sets:
        for path in (plain, packed):
            results[f"{path.name}, {name}"] = []
    for _ in range(rounds):  # alternated: every configuration once a round
        for name, rules in sets.items():
            for path in (plain, packed):
                pool = ScanPool(1)
                await pool.scan(_chunks(plain.with_suffix(".tiny")), _tiny_job(), rules)
                label = f"{path.name}, {name}"
                results[label].append(await scan_once(pool, path, rules, hashing))
                (pid,) = pool.pids()
                peaks[label] = max(
                    peaks.get(label, 0.0), proc_kb(f"/proc/{pid}/status", "VmHWM") / 1024
                )
                await pool.close()
    summary = {}
    for label, runs in results.items():
        cpu = statistics.median(r["cpu_s"] for r in runs)
        wall = statistics.median(r["wall_s"] for r in runs)
        summary[label] = {
            "tar_mb": round(tar_bytes / 1e6),
            "wall_s": round(wall, 2),
            "worker_cpu_s": round(cpu, 2),
            "mb_per_s_per_core": round(tar_bytes / 1e6 / cpu, 1),
            "mb_per_s_wall": round(tar_bytes / 1e6 / wall, 1),
            "worker_peak_rss_mib": round(peaks[label], 1),
            "feeding_cpu_s": round(statistics.median(r["feed_cpu_s"] for r in runs), 2),
        }
    return {
        "archive": {
            "tar_bytes": tar_bytes,
            "zst_bytes": packed.stat().st_size,
            "members": max(1, size // MEMBER),
        },
        "rules": {name: rules.count for name, rules in sets.items()},
        "median_of": rounds,
        "members_hashed_by_the_worker": hashing,
        "scans": summary,
    }


def _tiny_job() -> ScanJob:
    return ScanJob(zstd=False, max_member_bytes=MiB, max_carve_bytes=MiB, max_seconds=60,
                   scan_timeout=60, hash_from=0)  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=size_arg, default=size_arg("1GiB"))
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--hash", action="store_true", help="the worker hashes every member too")
    args = parser.parse_args()
    report: dict[str, object] = {"machine": machine_info(), "loadavg_before": os.getloadavg()}
    with tempfile.TemporaryDirectory(prefix="bench-triage-") as tmp:
        root = Path(tmp)
        tiny = root / "carve.tiny"
        with tarfile.open(tiny, "w") as tar:
            tar.addfile(tarfile.TarInfo("warm-up"), io.BytesIO(b""))
        report |= asyncio.run(run(args.size, args.rounds, root, args.hash))
    report["loadavg_after"] = os.getloadavg()
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
