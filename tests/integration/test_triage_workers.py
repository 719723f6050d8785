"""The scan workers as real processes (no servers): one that dies mid-scan or that runs past
its budget ends its carve as incomplete with the reason, and the next scan gets a fresh one."""

from __future__ import annotations

import asyncio
import io
import os
import signal
import tarfile
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from services.triage import pool as pool_module
from services.triage.pool import ScanPool
from services.triage.rules import RuleSet, load_rules
from services.triage.worker import ScanJob

JOB = ScanJob(zstd=False, max_member_bytes=1 << 20, max_carve_bytes=1 << 30, max_seconds=30.0,
              scan_timeout=10.0, hash_from=0)  # fmt: skip


def tar_bytes(members: dict[str, bytes]) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return out.getvalue()


@pytest.fixture
def rules(tmp_path: Path) -> RuleSet:
    (tmp_path / "r.yar").write_text('rule r { strings: $a = "MARK" condition: $a }')
    return load_rules(str(tmp_path))


async def pieces(data: bytes, pause: asyncio.Event | None = None) -> AsyncIterator[bytes]:
    """``data`` in 4 KiB pieces; after the first, wait for ``pause`` (if given) to be set."""
    for at in range(0, len(data), 4096):
        yield data[at : at + 4096]
        if pause is not None:
            await pause.wait()


async def test_a_worker_killed_mid_scan_ends_its_carve_incomplete_and_is_replaced(
    rules: RuleSet,
) -> None:
    pool = ScanPool(1)
    try:
        await pool.warm(rules)
        (pid,) = pool.pids()
        hold = asyncio.Event()
        scan = asyncio.create_task(
            pool.scan(pieces(tar_bytes({"a": b"x" * 65536}), hold), JOB, rules)
        )
        await asyncio.sleep(0.5)  # the worker has the first piece and waits for more
        os.kill(pid, signal.SIGKILL)
        hold.set()
        found = await asyncio.wait_for(scan, 30)
        assert found.stopped == "worker_died" and "exit status -9" in (found.stopped_detail or "")
        again = await pool.scan(pieces(tar_bytes({"b": b"..MARK.."})), JOB, rules)
        assert again.stopped is None and again.hit_count == 1
        assert pool.started == 2 and pool.pids() != [pid]
    finally:
        await pool.close()


async def test_a_worker_past_its_time_budget_is_killed(
    rules: RuleSet, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(pool_module, "GRACE_SECONDS", 0.5)
    pool = ScanPool(1)
    try:
        await pool.warm(rules)
        (pid,) = pool.pids()
        stalled = asyncio.Event()  # never set: the archive stops arriving after one piece
        job = ScanJob(**{**JOB.__dict__, "max_seconds": 1.0})
        found = await asyncio.wait_for(
            pool.scan(pieces(tar_bytes({"a": b"x" * 65536}), stalled), job, rules), 30
        )
        assert found.stopped == "worker_timeout"
        await asyncio.sleep(0.1)
        assert not Path(f"/proc/{pid}").exists() or "Z" in Path(f"/proc/{pid}/stat").read_text()
    finally:
        await pool.close()
