"""Profile the per-block path: CPU per block of every process, and where the ingest spends it.

Starts private Redis, RabbitMQ and SecantusDB servers, one ingest process (the assembler only
with ``--assembler``), then runs the osquery simulator as its own process while py-spy samples
the ingest (``--spy`` picks others: assembler, secantus; ``--profile-sim`` adds the
simulator). Prints blocks/s, CPU microseconds per block of the ingest, the simulator and each
backend, and the functions with the most samples,
self and inclusive. Collapsed stacks go to ``--out`` (default a temporary directory) for a
flame graph (``py-spy``'s raw format; speedscope and inferno read it).

    .venv/bin/python -m bench.profile --hosts 50 --size 2MB --block-size 8KiB
    .venv/bin/python -m bench.profile --no-py-spy ...     # CPU per block only, no sampling

Without ``--assembler`` the blocks stay in RabbitMQ: the ingest's own cost, with nothing
downstream competing for the cores.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import os
import resource
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench.cli import log
from bench.procstats import backend_cpu, cpu_seconds
from bench.services import SERVICES, running_backends, service_env, stop_service
from clients.osquery_sim import parse_size
from devstack import ROOT
from devstack.services import ServiceProcess

PY_SPY = Path(sys.executable).with_name("py-spy")
PROFILED = ("ingest", "assembler", "secantus")  # the Python processes py-spy can sample


def spy_command(out: Path, rate: int) -> list[str]:
    return [str(PY_SPY), "record", "--format", "raw", "--rate", str(rate), "--output", str(out)]


def spy(pid: int, out: Path, rate: int) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [*spy_command(out, rate), "--pid", str(pid), "--nonblocking"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def top_functions(collapsed: Path, count: int) -> dict[str, list[tuple[str, float]]]:
    """Self and inclusive share of samples per function, from py-spy's raw collapsed stacks."""
    own: collections.Counter[str] = collections.Counter()
    inclusive: collections.Counter[str] = collections.Counter()
    total = 0
    for line in collapsed.read_text().splitlines():
        stack, _, samples = line.rpartition(" ")
        if not stack:
            continue
        n = int(samples)
        frames = stack.split(";")
        total += n
        own[_short(frames[-1])] += n
        for frame in {_short(f) for f in frames}:
            inclusive[frame] += n
    if not total:
        return {"self": [], "inclusive": []}
    return {
        "self": [(f, round(100 * n / total, 1)) for f, n in own.most_common(count)],
        "inclusive": [(f, round(100 * n / total, 1)) for f, n in inclusive.most_common(count)],
    }


def _short(frame: str) -> str:
    """``handler (services/ingest/views.py:12)`` -> ``handler (ingest/views.py)``."""
    name, _, where = frame.partition(" (")
    path = where.rsplit(":", 1)[0]
    return f"{name} ({'/'.join(Path(path).parts[-2:])})"


def sim_command(url: str, args: argparse.Namespace) -> list[str]:
    command = [sys.executable, "-m", "clients.osquery_sim", "--url", url, "--json"]
    command += ["--hosts", str(args.hosts), "--size", str(args.size)]
    command += ["--block-size", str(args.block_size)]
    return command + (["--compress"] if args.compress else [])


def run_sim(url: str, args: argparse.Namespace, out: Path) -> tuple[dict[str, Any], float]:
    """The simulator as a child process; its summary and the CPU seconds it used."""
    command = sim_command(url, args)
    if args.profile_sim:
        command = [*spy_command(out / "sim.collapsed", args.rate), "--", *command]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    done = subprocess.run(command, cwd=ROOT, capture_output=True, check=False)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode != 0:
        sys.stderr.write(done.stderr.decode(errors="replace")[-2000:])
        raise SystemExit(f"simulator failed with exit status {done.returncode}")
    # py-spy, when it wraps the simulator, prints its own lines after the JSON document.
    text = done.stdout.decode()
    summary = json.JSONDecoder().raw_decode(text, text.index("{"))[0]["summary"]
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return summary, cpu


def profile(args: argparse.Namespace, out: Path) -> dict[str, Any]:
    with running_backends(out / "backends") as backends:
        env = service_env(backends, uuid.uuid4().hex[:8]) | dict(args.service_env)
        names = SERVICES if args.assembler else ("ingest",)
        procs = {n: ServiceProcess(n, env, out / f"{n}.log") for n in names}
        try:
            for proc in procs.values():
                asyncio.run(proc.wait_ready(60.0))
            pids = {n: p.proc.pid for n, p in procs.items()}
            cpu0 = {n: cpu_seconds(pid) for n, pid in pids.items()} | backend_cpu(backends)
            assert backends.mongo.proc is not None
            targets = pids | {"secantus": backends.mongo.proc.pid}
            spies = [
                spy(targets[name], out / f"{name}.collapsed", args.rate)
                for name in ([] if args.no_py_spy else args.spy)
            ]
            started = time.perf_counter()
            summary, sim_cpu = run_sim(procs["ingest"].url, args, out)
            wall = time.perf_counter() - started
            cpu1 = {n: cpu_seconds(pid) for n, pid in pids.items()} | backend_cpu(backends)
            for process in spies:
                process.send_signal(signal.SIGINT)  # py-spy writes its output on SIGINT
                process.wait(30)
        finally:
            for proc in procs.values():
                stop_service(proc)
    blocks = summary["blocks"]
    per_block = {n: round(1e6 * (cpu1[n] - cpu0.get(n, 0.0)) / blocks, 1) for n in cpu1}
    per_block["simulator"] = round(1e6 * sim_cpu / blocks, 1)
    report: dict[str, Any] = {"summary": summary, "wall_s": round(wall, 2)}
    report["cpu_us_per_block"] = per_block
    for name in (*PROFILED, "sim"):
        collapsed = out / f"{name}.collapsed"
        if collapsed.exists():
            report[f"{name}_top"] = top_functions(collapsed, args.top)
    return report


def render(report: dict[str, Any]) -> str:
    s = report["summary"]
    lines = [
        f"{s['hosts']} hosts, {s['blocks']} blocks in {s['seconds']} s: "
        f"{s['blocks_per_s']} blocks/s, {s['mb_per_s']} MB/s, p50 {s['p50_ms']} ms, "
        f"p99 {s['p99_ms']} ms",
        "CPU us per block: "
        + ", ".join(f"{k} {v}" for k, v in sorted(report["cpu_us_per_block"].items())),
    ]
    for name in (*PROFILED, "sim"):
        top = report.get(f"{name}_top")
        if not top:
            continue
        for kind in ("self", "inclusive"):
            lines.append(f"{name} {kind} (% of samples):")
            lines += [f"  {share:5.1f}  {frame}" for frame, share in top[kind]]
    return "\n".join(lines)


def _env_item(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep:
        raise argparse.ArgumentTypeError("expected KEY=VALUE")
    return key, value


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.profile", description=__doc__)
    parser.add_argument("--hosts", type=int, default=50)
    parser.add_argument("--size", default="2MB", help="carve per host (default 2MB)")
    parser.add_argument("--block-size", default="8KiB")
    parser.add_argument("--compress", action="store_true")
    parser.add_argument("--assembler", action="store_true", help="also run an assembler")
    parser.add_argument("--profile-sim", action="store_true", help="py-spy the simulator too")
    parser.add_argument(
        "--spy",
        action="append",
        choices=PROFILED,
        help="processes to sample (repeatable; default ingest; assembler needs --assembler)",
    )
    parser.add_argument("--no-py-spy", action="store_true", help="CPU figures only")
    parser.add_argument("--rate", type=int, default=200, help="py-spy samples per second")
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--out", type=Path, help="keep collapsed stacks and logs here")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    parser.add_argument(
        "--service-env", type=_env_item, action="append", default=[], metavar="KEY=VALUE"
    )
    args = parser.parse_args(argv)
    args.spy = args.spy or ["ingest"]
    if "assembler" in args.spy and not args.assembler:
        parser.error("--spy assembler needs --assembler")
    parse_size(args.size), parse_size(args.block_size)  # fail early on a typo
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    out = args.out or Path(tempfile.mkdtemp(prefix="carve-profile-"))
    out.mkdir(parents=True, exist_ok=True)
    log(f"profiling into {out}")
    report = profile(args, out)
    print(json.dumps(report, indent=2) if args.json else render(report))
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONHASHSEED", "0")
    sys.exit(main())
