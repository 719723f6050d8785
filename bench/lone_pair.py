"""Two trees side by side, at the same time: one host each, the ingest's CPU per block compared.

``bench.lone_host`` runs its variants one after the other; on a machine that
others share, the load changes between two runs more than a small change to
the ingest does (the same tree measured 0.77 and 1.77 ms of ingest CPU per
block in one alternated run). Here both variants run at once on the same Redis,
RabbitMQ and SecantusDB: each its own ``carve-ingest`` and ``carve-assembler``
(own queue, database and key prefix), each fed by its own one-host simulator,
started together. Whatever else loads the machine loads both, so the ratio of
their figures within a round holds where the figures themselves do not. Each
ingest still sees one host (one block in flight): the lone-host path.

Reported per round and as medians over the rounds: blocks/s, reply p50 and
CPU ms per block of each variant's ingest and assembler (the backends serve
both and are not split), and the ratio second/first of each.

    .venv/bin/python -m bench.lone_pair --variant base=/tmp/base --variant new=. --rounds 5
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import threading
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import uvloop

from bench.cli import log, work_root
from bench.lone_host import Service, Variant, parse_variant
from bench.lone_host import _simulate as simulate
from bench.procstats import cpu_seconds
from bench.services import running_backends, service_env
from clients.osquery_sim import parse_size
from devstack import ROOT
from devstack.backends import Backends

PROCESSES = ("ingest", "assembler")
FIGURES = ("blocks_per_s", "p50_ms", "ingest", "assembler")
SETTLE = 2.0  # s after the simulators end, for the assemblers' last writes


async def run_round(
    backends: Backends, workdir: Path, variants: Sequence[Variant], size: int, seed: int
) -> dict[str, dict[str, float]]:
    services: dict[str, dict[str, Service]] = {}
    try:
        for variant in variants:
            tag = uuid.uuid4().hex[:8]
            env = service_env(backends, tag) | variant.env
            services[variant.label] = {
                name: Service(name, variant.tree, env, workdir / f"{name}-{tag}.log")
                for name in PROCESSES
            }
        for group in services.values():
            for service in group.values():
                await service.wait_ready()
        await asyncio.sleep(1.0)
        before = {
            label: {name: cpu_seconds(s.proc.pid) for name, s in group.items()}
            for label, group in services.items()
        }
        sims: dict[str, dict[str, Any]] = {}

        def host(label: str) -> None:
            sims[label] = simulate(services[label]["ingest"].url, 1, size, 8192, seed)

        threads = [threading.Thread(target=host, args=(label,)) for label in services]
        for thread in threads:
            thread.start()
        for thread in threads:
            await asyncio.to_thread(thread.join)
        await asyncio.sleep(SETTLE)
        figures: dict[str, dict[str, float]] = {}
        for label, group in services.items():
            summary = sims[label]["summary"]
            blocks = summary["blocks"]
            figures[label] = {
                "blocks_per_s": summary["blocks_per_s"],
                "p50_ms": summary["p50_ms"],
            } | {
                name: round(1e3 * (cpu_seconds(s.proc.pid) - before[label][name]) / blocks, 3)
                for name, s in group.items()
            }
    finally:
        for group in services.values():
            for service in group.values():
                service.stop()
    return figures


def summarize(rounds: list[dict[str, dict[str, float]]], first: str, second: str) -> list[str]:
    lines = []
    for figure in FIGURES:
        ratios = [r[second][figure] / r[first][figure] for r in rounds]
        a = statistics.median(r[first][figure] for r in rounds)
        b = statistics.median(r[second][figure] for r in rounds)
        lines.append(
            f"{figure}: {first} {a:.3f}, {second} {b:.3f} (medians); {second}/{first} "
            f"median {statistics.median(ratios):.3f} ({', '.join(f'{x:.3f}' for x in ratios)})"
        )
    return lines


async def run_all(backends: Backends, workdir: Path, args: argparse.Namespace) -> list[str]:
    rounds = []
    first, second = (v.label for v in args.variant)
    for r in range(args.rounds):
        figures = await run_round(backends, workdir, args.variant, args.size, r)
        rounds.append(figures)
        log(
            f"round {r + 1}: "
            + "; ".join(
                f"{label} {f['blocks_per_s']:.0f} blocks/s, p50 {f['p50_ms']:.2f} ms, "
                f"ingest {f['ingest']:.3f}, assembler {f['assembler']:.3f} ms/block"
                for label, f in figures.items()
            )
        )
    return summarize(rounds, first, second)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.lone_pair", description=__doc__)
    parser.add_argument("--variant", type=parse_variant, action="append", default=[])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--size", type=parse_size, default=parse_size("10MB"))
    args = parser.parse_args(argv)
    if len(args.variant) != 2:
        parser.error("give two --variant LABEL=TREE")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    with work_root(None, "carve-lone-pair-") as workdir:
        log(f"backends and logs under {workdir} (tree of the bench: {ROOT})")
        with running_backends(workdir / "backends") as backends:
            lines = uvloop.run(run_all(backends, workdir, args))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
