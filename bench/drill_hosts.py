"""Hosts carving through a failover, and the checks of what they and the server ended with.

Each simulated osquery host (``clients.osquery_sim``) carves again and again until told to
stop, so the load spans the fault and the recovery whatever their length. Every request's
outcome is timed (an aiohttp trace), so a drill can say how long hosts saw errors. Afterwards
every carve is checked against what its host recorded:

* acknowledged blocks lost: blocks a host got a success reply for that MongoDB lacks
  (a carve that completed with the host's SHA-256 has all of them);
* wrong bytes: a complete carve whose bytes differ from the host's, or a stored block of a
  failed carve that differs from what the host sent;
* stuck: a carve still ``receiving`` once the janitor had its time;
* osquery's conclusion per host: how many of its carves ended SUCCESS, how many failed.
"""

from __future__ import annotations

import asyncio
import collections
import hashlib
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import aiohttp
from gridfs import AsyncGridFSBucket
from gridfs.errors import NoFile

from clients.osquery_sim import STATUS_SUCCESS, CarveResult, build_synthetic_archive, carve

KiB, MiB = 1024, 1024 * 1024


@dataclass
class ErrorClock:
    """When hosts saw errors (non-2xx replies or failed connections), monotonic seconds."""

    times: list[float] = field(default_factory=list)
    replies: int = 0

    def trace(self) -> aiohttp.TraceConfig:
        config = aiohttp.TraceConfig()

        async def on_end(session: aiohttp.ClientSession, ctx: SimpleNamespace, params: Any) -> None:
            self.replies += 1
            if params.response.status >= 300:
                self.times.append(time.monotonic())

        async def on_exception(
            session: aiohttp.ClientSession, ctx: SimpleNamespace, params: Any
        ) -> None:
            self.times.append(time.monotonic())

        config.on_request_end.append(on_end)
        config.on_request_exception.append(on_exception)
        return config

    def window(self, since: float) -> tuple[int, float]:
        """(errors seen after ``since``, seconds from the first of them to the last)."""
        seen = [t for t in self.times if t >= since]
        return len(seen), (max(seen) - min(seen)) if seen else 0.0


@dataclass
class HostCarve:
    host: int
    block_size: int
    archive: Path
    result: CarveResult
    started: float  # monotonic
    finished: datetime  # the host's last reply (UTC)


@dataclass
class Fleet:
    """``hosts`` hosts, half with 8 KiB blocks and half with 1 MiB blocks."""

    hosts: int
    small_blocks: int  # blocks per carve at 8 KiB
    large_blocks: int  # blocks per carve at 1 MiB
    workdir: Path
    carves: list[HostCarve] = field(default_factory=list)
    clock: ErrorClock = field(default_factory=ErrorClock)
    only: int = 0  # every host at this block size (0: alternate 8 KiB and 1 MiB)

    def block_size(self, host: int) -> int:
        if self.only:
            return self.only
        return 8 * KiB if host % 2 == 0 else MiB

    async def run(self, front: str, stop: asyncio.Event, *, once: bool = False) -> None:
        """Every host carves until ``stop`` is set (at least once each); ``once``: one carve."""
        connector = aiohttp.TCPConnector(limit=0)
        async with aiohttp.ClientSession(
            connector=connector, trace_configs=[self.clock.trace()]
        ) as http:
            await asyncio.gather(
                *(self._host(http, front, i, stop, once) for i in range(self.hosts))
            )

    async def _host(
        self, http: aiohttp.ClientSession, front: str, i: int, stop: asyncio.Event, once: bool
    ) -> None:
        size = self.block_size(i)
        blocks = self.small_blocks if size < MiB else self.large_blocks
        n = 0
        while True:
            carve_id = str(uuid.uuid4())
            archive = await asyncio.to_thread(
                build_synthetic_archive,
                blocks * size - size // 3,
                self.workdir / f"h{i}-{n}",
                carve_guid=carve_id,
                seed=i * 1000 + n,
            )
            started = time.monotonic()
            result = await carve(
                http, front, archive, block_size=size, carve_id=carve_id,
                node_key=f"node-key-{i}", version=(5, 23, 0),
            )  # fmt: skip
            finished = datetime.now(UTC)
            self.carves.append(HostCarve(i, size, archive, result, started, finished))
            n += 1
            if once or stop.is_set():
                return


@dataclass
class Verdict:
    carves: int = 0
    acked_blocks: int = 0
    acked_lost: int = 0
    wrong_bytes: int = 0
    stuck: int = 0
    contradictions: list[str] = field(default_factory=list)
    osquery: collections.Counter[str] = field(default_factory=collections.Counter)
    per_host: dict[int, collections.Counter[str]] = field(default_factory=dict)
    ends: dict[str, Any] = field(default_factory=dict)  # carve id -> completed_at / failed_at


def acknowledged(result: CarveResult) -> list[int]:
    """Block ids the host got a success reply for (5.22+: in order, up to the first failure)."""
    if result.session_id is None:
        return []
    if result.status == STATUS_SUCCESS:
        return list(range(result.block_count))
    first_failed = result.failed_blocks[0] if result.failed_blocks else 0
    return list(range(first_failed))


async def settle(db: Any, ids: list[str], timeout: float) -> int:
    """Wait until none of ``ids`` is receiving; return how many still are at ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        left = await db["carves"].count_documents({"_id": {"$in": ids}, "status": "receiving"})
        if not left or time.monotonic() > deadline:
            return int(left)
        await asyncio.sleep(0.5)


async def check(db: Any, carves: list[HostCarve]) -> Verdict:
    """Every carve against its host's record (see the module doc)."""
    verdict = Verdict(carves=len(carves))
    for c in carves:
        concluded = "SUCCESS" if c.result.status == STATUS_SUCCESS else "failed"
        verdict.osquery[concluded] += 1
        verdict.per_host.setdefault(c.host, collections.Counter())[concluded] += 1
        await _check_one(db, c, verdict)
    return verdict


async def _check_one(db: Any, c: HostCarve, verdict: Verdict) -> None:
    result = c.result
    acked = acknowledged(result)
    verdict.acked_blocks += len(acked)
    doc = await db["carves"].find_one({"_id": result.carve_id})
    if doc is None:
        verdict.acked_lost += len(acked)
        if acked or result.status == STATUS_SUCCESS:
            verdict.contradictions.append(f"{result.carve_id}: acknowledged, server has none")
        return
    if ended := doc.get("completed_at") or doc.get("failed_at"):
        verdict.ends[result.carve_id] = ended
    status = doc["status"]
    if problem := await _problem(db, doc, result, verdict):
        verdict.contradictions.append(f"{result.carve_id}: {problem}")
    if status != "complete" and acked:
        lost, wrong = await _compare_blocks(db, c, acked)
        verdict.acked_lost += lost
        verdict.wrong_bytes += wrong


async def _problem(db: Any, doc: dict[str, Any], result: CarveResult, verdict: Verdict) -> str:
    """How the server's carve contradicts the host's record ("" when it does not)."""
    status = doc["status"]
    if status == "receiving":
        verdict.stuck += 1
        return "still receiving"
    if status == "complete":
        stored = await _stored_sha256(db, result.carve_id)
        if stored != result.sha256 or doc.get("sha256") != result.sha256:
            verdict.wrong_bytes += 1
            return "complete, with other bytes than the host's"
        return ""
    if result.status == STATUS_SUCCESS:
        return f"host SUCCESS, server {status}"
    if status != "failed" or not doc.get("failure_reason"):
        return f"{status} without a reason"
    return ""


async def _stored_sha256(db: Any, carve_id: str) -> str:
    try:
        stream = await AsyncGridFSBucket(db, bucket_name="archives").open_download_stream(carve_id)
    except NoFile:
        return "none"
    digest = hashlib.sha256()
    while piece := await stream.readchunk():
        digest.update(piece)
    return digest.hexdigest()


async def _compare_blocks(db: Any, c: HostCarve, acked: list[int]) -> tuple[int, int]:
    """(acknowledged blocks missing from MongoDB, stored blocks that differ from the host's)."""
    chunks = db["archives.chunks"].find({"files_id": c.result.carve_id}, {"n": 1, "data": 1})
    stored = {doc["n"]: bytes(doc["data"]) async for doc in chunks}
    lost = wrong = 0
    with c.archive.open("rb") as fh:
        for block_id in acked:
            if block_id not in stored:
                lost += 1
                continue
            fh.seek(block_id * c.block_size)
            if fh.read(c.block_size) != stored[block_id]:
                wrong += 1
    return lost, wrong
