"""CPU seconds and memory of processes, read from /proc, and the machine they run on."""

from __future__ import annotations

import asyncio
import contextlib
import os
import platform
import signal
import time
from importlib import metadata
from pathlib import Path
from typing import Any, Self

from bench.cli import log
from bench.render import KiB, MiB
from devstack.backends import Backends
from devstack.servers import Server

SAMPLE_INTERVAL = 0.2
CLK_TCK = os.sysconf("SC_CLK_TCK")


def proc_kb(path: str, key: str) -> int:
    """A ``Key:  1234 kB`` value from a /proc file (status, meminfo); 0 if absent."""
    for line in Path(path).read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    return 0


def _stat_fields(pid: int) -> list[str]:
    """Fields of /proc/<pid>/stat from field 3 (state) on; the comm may hold spaces."""
    text = Path(f"/proc/{pid}/stat").read_text()
    return text[text.rindex(")") + 2 :].split()


def _cpu_of(fields: list[str]) -> float:
    # utime and stime are fields 14 and 15 (1-based), so 11 and 12 here.
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def cpu_seconds(pid: int) -> float:
    return _cpu_of(_stat_fields(pid))


def minor_faults(pid: int) -> int:
    """Minor page faults of ``pid`` so far: pages the kernel had to map in (fresh memory
    from malloc's mmap or a regrown heap), each paid in system CPU."""
    return int(_stat_fields(pid)[7])  # field 10: minflt


def group_cpu_seconds(pgid: int) -> float:
    """CPU seconds of the live processes in process group ``pgid`` (a server and its children)."""
    total = 0.0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError, ValueError, IndexError):
            fields = _stat_fields(int(entry.name))
            if int(fields[2]) == pgid:  # field 5: pgrp
                total += _cpu_of(fields)
    return total


def backend_cpu(backends: Backends) -> dict[str, float]:
    """CPU seconds of each backend server (with its child processes), by server name."""
    return {s.name: group_cpu_seconds(s.proc.pid) for s in backends.servers if s.proc is not None}


def process_usage(pid: int, cpu_at_ready: float, sampled_kb: int) -> dict[str, float]:
    status = f"/proc/{pid}/status"
    cpu = cpu_seconds(pid)
    return {
        "peak_rss_mib": round(proc_kb(status, "VmHWM") / KiB, 1),
        "max_sampled_rss_mib": round(sampled_kb / KiB, 1),
        "rss_at_end_mib": round(proc_kb(status, "VmRSS") / KiB, 1),
        "cpu_s": round(cpu, 2),
        "cpu_s_after_ready": round(cpu - cpu_at_ready, 2),
    }


def machine_info() -> dict[str, Any]:
    cpu = platform.processor() or "unknown"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "ram_gib": round(proc_kb("/proc/meminfo", "MemTotal") / MiB, 1),
        "python": platform.python_version(),
        "kernel": platform.release(),
        "secantusdb": metadata.version("secantusdb"),
        "pymongo": metadata.version("pymongo"),
    }


class Periodic:
    """Calls ``tick()`` every SAMPLE_INTERVAL s while inside ``async with`` (first on entry)."""

    _task: asyncio.Task[None] | None = None

    def tick(self) -> None:
        raise NotImplementedError

    async def _loop(self) -> None:
        while True:
            self.tick()
            await asyncio.sleep(SAMPLE_INTERVAL)

    async def __aenter__(self) -> Self:
        self._task = asyncio.create_task(self._loop())
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task


class RssSampler(Periodic):
    """VmRSS of each process every SAMPLE_INTERVAL while inside the block: the largest, and
    the series of (seconds since ``origin``, MiB)."""

    def __init__(self, pids: dict[str, int], origin: float | None = None) -> None:
        self.pids = pids
        self.origin = time.perf_counter() if origin is None else origin
        self.max_kb = dict.fromkeys(pids, 0)
        self.series: dict[str, list[tuple[float, float]]] = {name: [] for name in pids}
        self.samples = 0

    def sample(self) -> None:
        self.samples += 1
        at = round(time.perf_counter() - self.origin, 3)
        for name, pid in self.pids.items():
            with contextlib.suppress(OSError):
                kb = proc_kb(f"/proc/{pid}/status", "VmRSS")
                self.max_kb[name] = max(self.max_kb[name], kb)
                self.series[name].append((at, round(kb / KiB, 1)))

    def series_mib(self) -> dict[str, list[list[float]]]:
        return {name: [list(point) for point in points] for name, points in self.series.items()}

    def tick(self) -> None:
        self.sample()

    async def __aexit__(self, *exc: object) -> None:
        await super().__aexit__(*exc)
        self.sample()


class MemoryGuard(Periodic):
    """Lowest MemAvailable while inside the block; kills SecantusDB below ``floor_kb``.

    SecantusDB holds a cursor's whole result in memory (a 1 GiB archive per concurrent
    download, released as it is read), so 20 concurrent whole-archive downloads can take most
    of the machine's RAM. Killing our private server is better than the kernel's OOM killer
    picking a process; the downloads then fail and the scenario is reported with the reason.
    """

    def __init__(self, server: Server, floor_kb: int) -> None:
        self.server = server
        self.floor_kb = floor_kb
        self.min_kb = proc_kb("/proc/meminfo", "MemAvailable")
        self.tripped: str | None = None

    def check(self) -> None:
        available = proc_kb("/proc/meminfo", "MemAvailable")
        self.min_kb = min(self.min_kb, available)
        if available >= self.floor_kb or self.tripped or self.server.proc is None:
            return
        self.tripped = f"MemAvailable {available // KiB} MiB < {self.floor_kb // KiB} MiB"
        log(f"memory guard: {self.tripped}: killing SecantusDB")
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.server.proc.pid, signal.SIGKILL)

    def tick(self) -> None:
        self.check()
